//! The database handle and its pipeline driver.
//!
//! ```text
//!  writer.write ─validate─► permit (bounded per source) ─► driver queue ─► driver thread
//!                                                                           │ for each stream reading
//!                                                                           │ the source, in DDL order:
//!                                                                           │   operators → output
//!                                                                           ▼
//!                                     subscribers (bounded) ◄── emission ──► MV store, downstream streams
//! ```
//! One driver thread per database applies events in push order, so emission points are
//! deterministic: the output of one pushed batch, then the output of the watermark it advanced.
//! Keyed operator state is partitioned over the worker pool (`workers`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use parking_lot::Mutex;

use crate::config::{Config, Durability, QueueFullPolicy};
use crate::connector::{self, Position, Positions, Sink, SourceReader};
use crate::durable::{self, CheckpointStats, LogWriter, Record, Store};
use crate::error::{Error, ErrorKind, Result, nearest_name};
use crate::operator::window::{TimeScale, event_times};
use crate::operator::{LateRows, NO_WATERMARK, OpCtx, StreamKind};
use crate::pipeline::Node;
use crate::plan::{PlanOptions, RelationInfo, plan_continuous};
use crate::runtime::ingest::{conform, normalize_schema};
use crate::runtime::mv::MvStore;
use crate::runtime::subscription::{
    Delivered, Pending, PushEvent, PushSubscription, SubscribeOptions, SubscriberSlot, Subscription, new_pair,
    send_pending,
};
use crate::sql::{self, CreateSource, CreateStream, ObjectKind, Statement, WatermarkDelay};

/// A processing-time clock. Tests drive [`ManualClock`] by hand; everything else uses the system's.
pub trait Clock: Send + Sync {
    /// Milliseconds on this clock.
    fn now_ms(&self) -> i64;
    /// Whether the driver should sleep on the system clock until deadlines.
    fn is_manual(&self) -> bool {
        false
    }
}

struct SystemClock(Instant);
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        self.0.elapsed().as_millis() as i64
    }
}

/// A clock that moves only when told to ([`Database::advance_clock`]).
#[derive(Default)]
pub struct ManualClock(AtomicU64);
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Acquire) as i64
    }
    fn is_manual(&self) -> bool {
        true
    }
}

/// Result of [`Database::execute`].
#[derive(Debug, Clone, Default)]
pub struct ExecuteResult {
    /// Rows returned by SHOW, DESCRIBE, EXPLAIN or SELECT (empty for DDL).
    pub batches: Vec<RecordBatch>,
    /// Schema of `batches` for statements that return rows (even when no row matched); None for
    /// DDL and INSERT.
    pub schema: Option<SchemaRef>,
    /// Rows inserted by INSERT.
    pub rows_affected: u64,
    /// What a DDL statement did ("created stream 'x'").
    pub message: String,
}

/// Metrics of one source.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    pub name: String,
    pub rows_in: u64,
    pub batches_in: u64,
    /// Rows dropped as late by the streams reading this source (every window closed).
    pub rows_late: u64,
    /// Watermark in epoch milliseconds, if any.
    pub watermark_ms: Option<i64>,
    /// Events (batches, watermarks) waiting in the source queue.
    pub queue_depth: u64,
}

/// Metrics of one stream or materialized view.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    pub name: String,
    pub rows_out: u64,
    pub batches_out: u64,
    pub rows_late: u64,
    pub late_pairs: u64,
    /// Bytes of operator state in memory.
    pub state_bytes: u64,
    /// Groups of aggregate state spilled to the RocksDB state backend (0 with `memory`).
    pub spilled_groups: u64,
    pub watermark_ms: Option<i64>,
    pub failed: Option<String>,
    /// Subscriptions that have not been cancelled or dropped.
    pub subscribers: u64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub sources: Vec<SourceMetrics>,
    pub streams: Vec<StreamMetrics>,
    pub sinks: Vec<SinkMetrics>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub events_processed: u64,
}

/// Metrics of one sink.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    pub name: String,
    /// Rows and batches written to the sink (on a database with checkpoints, published once
    /// their epoch's checkpoint is durable).
    pub rows_out: u64,
    pub batches_out: u64,
    /// Why the sink stopped, once it has failed (checkpoints fail until it is dropped).
    pub failed: Option<String>,
}

/// Description of a catalog object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub name: String,
    pub kind: ObjectKind,
    /// Schema as subscribers see it (with `__weight` for changelogs).
    pub schema: SchemaRef,
    pub stream_kind: StreamKind,
    pub sql: String,
    /// The sources and streams a stream reads (empty for a source).
    pub inputs: Vec<String>,
}

enum Event {
    /// A pushed batch; `seq` orders it among logged changes (0 on an in-memory database);
    /// `position` is the source's position after it (a connector's offset), if it has one.
    Batch {
        q: Arc<SourceQueue>,
        batch: RecordBatch,
        seq: u64,
        position: Option<Position>,
    },
    /// A connector's reader gave up: the streams reading its source fail with the error.
    SourceFailed {
        q: Arc<SourceQueue>,
        error: Error,
    },
    Watermark {
        q: Arc<SourceQueue>,
        us: i64,
        seq: u64,
    },
    Sync(Sender<()>),
    /// Take a checkpoint after every event queued before this one (an aligned barrier: one
    /// pipeline thread applies events in order).
    Checkpoint(Sender<Result<CheckpointStats>>),
    /// A manual clock moved to this time (ms); processing time advances in queue order.
    Tick(i64),
    Shutdown,
}

/// The bounded queue of one source: permits in a bounded channel (lock-free), events in the
/// driver's queue.
pub(crate) struct SourceQueue {
    name: String,
    schema: SchemaRef,
    permits_tx: Sender<()>,
    permits_rx: Receiver<()>,
    dropped: AtomicBool,
}

struct SourceRt {
    queue: Arc<SourceQueue>,
    sql: String,
    time: Option<(usize, TimeScale, i64)>, // column, scale, delay µs
    watermark: i64,
    retained: VecDeque<RecordBatch>,
    retained_rows: usize,
    rows_in: u64,
    batches_in: u64,
    rows_late: u64,
    /// `CREATE TABLE`: the current rows by key.
    table: Option<crate::runtime::table::TableState>,
    /// `idle_timeout` (ms of processing time) and when the source last had data or a watermark.
    idle_timeout_ms: Option<i64>,
    last_active_ms: i64,
    /// No data for `idle_timeout`: the source no longer holds back the watermark of what reads it.
    idle: bool,
    /// A connector source's recorded positions (partition → offset) after the last applied
    /// batches: checkpointed, and where its reader resumes after a restart.
    positions: Positions,
    /// Per-partition watermarks of the partitions still being read (a connector source's
    /// watermark is the minimum over them; finished partitions drop out).
    partition_wm: HashMap<String, i64>,
    /// The highest watermark of a finished partition: the source's watermark once none is left.
    finished_wm: i64,
}

/// A sink: writes the output of its input (a stream, view, source or table) through a connector,
/// committed with the checkpoints.
struct SinkRt {
    sql: String,
    input: String,
    sink: Box<dyn Sink>,
    /// `FILES '/out' (parquet)`.
    describe: String,
    rows_out: u64,
    batches_out: u64,
    /// A write, prepare or commit failed: nothing more is written, and checkpoints fail (they
    /// could not include this sink's results) until the sink is dropped.
    failed: Option<Error>,
    /// In-memory databases (no checkpoints): each write is its own epoch, committed at once.
    writes: u64,
}

struct StreamRt {
    sql: String,
    materialized: bool,
    inputs: Vec<String>,
    root: Node,
    /// Column of the output known to be at or past the watermark for on-time rows.
    time_col: Option<usize>,
    kind: StreamKind,
    output_schema: SchemaRef,
    logical_schema: SchemaRef,
    late_to: Option<String>,
    subscribers: Vec<SubscriberSlot>,
    mv: Option<MvStore>,
    watermark: i64,
    rows_out: u64,
    batches_out: u64,
    rows_late: u64,
    late_pairs: u64,
    failed: Option<Error>,
    /// A failed stream's plan fingerprint, kept when its operators (and their state) are freed.
    frozen_fingerprint: Option<String>,
    tick: Option<(i64, i64)>, // period ms, next due ms
    /// A LATE DATA TO target: has no operators, receives late rows.
    is_late_sink: bool,
    /// Durable databases: the results emitted since the last checkpoint (this epoch's), written
    /// with the next checkpoint so subscribers can resume from an epoch.
    history: Vec<RecordBatch>,
    /// Durable databases: the first epoch whose results are kept for resuming subscribers. None
    /// until the stream is first subscribed to (results nobody subscribed to are not kept).
    history_since: Option<u64>,
    /// A result was emitted since the last checkpoint.
    emitted_this_epoch: bool,
}

struct Engine {
    sources: HashMap<String, SourceRt>,
    streams: HashMap<String, StreamRt>,
    sinks: std::collections::BTreeMap<String, SinkRt>,
    /// Streams in creation order (a stream only reads what existed before it).
    order: Vec<String>,
    events: u64,
    /// Batches for `on_full = block` subscribers whose buffers were full; the driver sends them
    /// after releasing the engine lock, before the next event.
    pending: Vec<Pending>,
    /// Sequence number of the last logged change applied (durable databases).
    applied_seq: u64,
    /// The last completed checkpoint (0: none); results emitted now belong to `epoch + 1`.
    epoch: u64,
    /// Processing time (ms) of the next periodic checkpoint.
    next_checkpoint_ms: Option<i64>,
}

pub(crate) struct DbInner {
    config: Config,
    closed: AtomicBool,
    engine: Mutex<Engine>,
    tx: Sender<Event>,
    driver: Mutex<Option<std::thread::JoinHandle<()>>>,
    pool: Option<rayon::ThreadPool>,
    clock: Arc<dyn Clock>,
    runtime: tokio::runtime::Runtime,
    durable: Option<Durable>,
    /// Set while recovery replays the log: connectors wait to start until it is done.
    recovering: AtomicBool,
    /// Connector sources created while recovering, started once recovery is done (at the
    /// positions it restored).
    deferred_readers: Mutex<Vec<(Arc<SourceQueue>, Box<dyn SourceReader>)>>,
    /// Committables of the sinks in the checkpoint being restored, by sink name: the sink's
    /// CREATE publishes them (see `connector::Sink::recover`).
    restored_sinks: Mutex<HashMap<String, Vec<u8>>>,
    /// The RocksDB state backend (`state_backend = 'rocksdb'`).
    state: Option<Arc<crate::state_store::StateStore>>,
}

/// What reopening a durable database did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryInfo {
    /// The checkpoint restored, if any.
    pub epoch: Option<u64>,
    /// Log records replayed past it.
    pub records_replayed: u64,
    /// Torn or corrupt files skipped: an unusable checkpoint, a torn log tail dropped, log
    /// damage skipped with `wal_recovery = 'salvage'` and what it lost (also logged when the
    /// database opens: one `log::warn!` each, target `"laminardb"`).
    pub warnings: Vec<String>,
    /// Time to restore and replay, in milliseconds.
    pub millis: f64,
}

/// The on-disk side of a database opened with durability `checkpoint` or `wal`.
struct Durable {
    store: Store,
    level: Durability,
    log: Mutex<LogState>,
    log_cv: parking_lot::Condvar,
    /// Held for writing by a catalog statement from before it runs until it is logged; a
    /// checkpoint (which must see the catalog and the log position agree) waits for it.
    ddl: parking_lot::RwLock<()>,
    /// Start a new log segment at the next commit (after a checkpoint, so old ones can go).
    rotate: AtomicBool,
    interval_ms: Option<i64>,
    retain: usize,
    recovery: Mutex<RecoveryInfo>,
    last_checkpoint: Mutex<Option<CheckpointStats>>,
}

/// The write-ahead log's group commit. Pushers frame their records into `buf` under the lock and
/// wait; one of them (the leader) writes and fsyncs the whole group with the lock released, then
/// hands the group's events to the pipeline in sequence order: a change reaches the pipeline
/// only once it is durable.
struct LogState {
    writer: Option<LogWriter>,
    buf: Vec<u8>,
    buf_first: u64,
    pending: Vec<Event>,
    next_seq: u64,
    durable: u64,
    committing: bool,
    /// A failed write or fsync: the log's state on disk is unknown, so every later change is
    /// refused until the database is reopened (recovery finds what did reach the disk).
    failed: Option<Error>,
}

/// An open LaminarDB database. Cheap to clone; all clones share one engine. Thread-safe.
#[derive(Clone)]
pub struct Database {
    inner: Arc<DbInner>,
}

impl Database {
    /// Opens an in-memory database (`":memory:"`) with the default configuration.
    pub fn open_in_memory() -> Result<Database> {
        Self::open(":memory:", Config::default())
    }

    /// Opens a database: `":memory:"` (nothing on disk), or a directory (created if missing) with
    /// durability `checkpoint` or `wal` (the default for a path). Reopening a directory recovers
    /// its catalog, operator state, watermarks and source positions from the newest intact
    /// checkpoint and replays the write-ahead log past it; see [`Database::recovery`].
    pub fn open(path: &str, config: Config) -> Result<Database> {
        Self::open_with_clock(path, config, Arc::new(SystemClock(Instant::now())))
    }

    /// Opens a database whose processing-time clock is `clock` (tests use [`ManualClock`]).
    pub fn open_with_clock(path: &str, config: Config, clock: Arc<dyn Clock>) -> Result<Database> {
        if path.is_empty() {
            return Err(Error::invalid_argument(
                "the path is empty: open ':memory:' for an in-memory database, or a directory",
            ));
        }
        let dir = match (path, &config.storage_dir) {
            (":memory:", None) => None,
            (":memory:", Some(d)) => Some(d.clone()),
            (p, _) => Some(p.to_string()),
        };
        let level = config.durability.unwrap_or(if dir.is_some() { Durability::Wal } else { Durability::Memory });
        let durable = match (&dir, level) {
            (None, Durability::Memory) => None,
            (None, _) => {
                return Err(Error::invalid_argument(
                    "durability 'checkpoint' and 'wal' need a directory: open a path (or set storage_dir), not ':memory:'",
                ));
            }
            (Some(d), Durability::Memory) => {
                return Err(Error::invalid_argument(format!(
                    "opening '{d}' with durability 'memory' would store nothing there; open ':memory:', or choose durability 'checkpoint' or 'wal'"
                )));
            }
            (Some(d), level) => {
                let store = Store::open(std::path::Path::new(d), config.io_backend)?;
                let interval = config.checkpoint_interval.unwrap_or(Duration::from_secs(10));
                Some(Durable {
                    store,
                    level,
                    log: Mutex::new(LogState {
                        writer: None,
                        buf: vec![],
                        buf_first: 0,
                        pending: vec![],
                        next_seq: 1,
                        durable: 0,
                        committing: false,
                        failed: None,
                    }),
                    log_cv: parking_lot::Condvar::new(),
                    ddl: parking_lot::RwLock::new(()),
                    rotate: AtomicBool::new(false),
                    interval_ms: (!interval.is_zero()).then(|| interval.as_millis().max(1) as i64),
                    retain: config.checkpoints_retained.max(1),
                    recovery: Mutex::new(RecoveryInfo::default()),
                    last_checkpoint: Mutex::new(None),
                })
            }
        };
        let state = match (config.state_backend, &durable) {
            (crate::config::StateBackend::Memory, _) => None,
            // Opened by recovery, from the checkpoint it restores.
            (crate::config::StateBackend::RocksDb, Some(d)) => {
                Some(Arc::new(crate::state_store::StateStore::new(d.store.live_state_dir(), false)?))
            }
            (crate::config::StateBackend::RocksDb, None) => {
                Some(Arc::new(crate::state_store::StateStore::temporary()?))
            }
        };
        let pool = if config.workers > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(config.workers)
                    .thread_name(|i| format!("laminar-worker-{i}"))
                    .build()
                    .map_err(|e| Error::internal(format!("cannot start worker threads: {e}")))?,
            )
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("laminar-io")
            .enable_time()
            .build()
            .map_err(|e| Error::internal(format!("cannot start the I/O runtime: {e}")))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let inner = Arc::new(DbInner {
            config,
            closed: AtomicBool::new(false),
            engine: Mutex::new(Engine {
                sources: HashMap::new(),
                streams: HashMap::new(),
                sinks: Default::default(),
                order: vec![],
                events: 0,
                pending: vec![],
                applied_seq: 0,
                epoch: 0,
                next_checkpoint_ms: None,
            }),
            tx,
            driver: Mutex::new(None),
            pool,
            clock,
            runtime,
            durable,
            recovering: AtomicBool::new(false),
            deferred_readers: Mutex::new(vec![]),
            restored_sinks: Mutex::new(HashMap::new()),
            state,
        });
        let weak = Arc::downgrade(&inner);
        // Read on this thread: the driver may start after the caller has already moved the clock.
        let start_ms = inner.clock.now_ms();
        let handle = std::thread::Builder::new()
            .name("laminar-pipeline".into())
            .spawn(move || driver_loop(weak, rx, start_ms))
            .map_err(|e| Error::internal(format!("cannot start the pipeline thread: {e}")))?;
        *inner.driver.lock() = Some(handle);
        let db = Database { inner };
        if db.inner.durable.is_some()
            && let Err(e) = db.recover()
        {
            db.close_without_checkpoint();
            return Err(e.context(format!("recovering '{}'", dir.unwrap_or_default())));
        }
        Ok(db)
    }

    /// What opening this database recovered (durable databases; None for in-memory ones).
    pub fn recovery(&self) -> Option<RecoveryInfo> {
        self.inner.durable.as_ref().map(|d| d.recovery.lock().clone())
    }

    /// `"io_uring"` or `"std"`: what writes this durable database's files (None in memory).
    pub fn io_backend(&self) -> Option<&'static str> {
        self.inner.durable.as_ref().map(|d| d.store.io_name())
    }

    /// Statistics of the last checkpoint taken since this database was opened.
    pub fn last_checkpoint(&self) -> Option<CheckpointStats> {
        self.inner.durable.as_ref().and_then(|d| d.last_checkpoint.lock().clone())
    }

    /// The last completed checkpoint's epoch (0: none yet). Results emitted now belong to the
    /// next epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.engine.lock().epoch
    }

    /// Tests: from now on, writes to this database's files fail with "No space left on device"
    /// once `bytes` more bytes have been written (None: never). Simulates a full disk.
    #[doc(hidden)]
    pub fn simulate_disk_full_after(&self, bytes: Option<u64>) {
        if let Some(d) = &self.inner.durable {
            d.store.faults.set_budget(bytes);
        }
    }

    /// Restores the newest intact checkpoint, replays the log past it, then starts connectors.
    fn recover(&self) -> Result<()> {
        let d = self.inner.durable.as_ref().expect("durable");
        let t0 = Instant::now();
        let mut info = RecoveryInfo::default();
        self.inner.recovering.store(true, Ordering::Release);
        let mut after = 0;
        let latest = durable::load_latest(&d.store, &mut info.warnings)?;
        match (&self.inner.state, latest.as_ref().and_then(|l| l.state_dir.as_ref())) {
            (Some(st), from) => st.reset(from.map(|(d, files)| (d.as_path(), files.as_slice())))?,
            (None, Some(_)) => {
                return Err(Error::invalid_argument(format!(
                    "checkpoint {} keeps operator state in RocksDB: open it with state_backend = 'rocksdb'",
                    latest.as_ref().map_or(0, |l| l.epoch)
                )));
            }
            (None, None) => {}
        }
        if let Some(l) = latest {
            info.epoch = Some(l.epoch);
            after = l.seq;
            self.restore_checkpoint(l)?;
        }
        let mut replayed = 0u64;
        let log = durable::replay_log(
            &d.store.wal_dir(),
            after,
            self.inner.config.wal_recovery,
            &mut info.warnings,
            |seq, rec| {
                replayed += 1;
                self.replay(seq, rec)
            },
        )?;
        let last = log.last;
        self.flush()?;
        {
            let mut st = d.log.lock();
            st.next_seq = last + 1;
            st.durable = last;
            let every_seq = d.level == Durability::Wal;
            st.writer = Some(LogWriter::create(
                &d.store.wal_dir(),
                last + 1,
                every_seq,
                d.store.faults.clone(),
                durable::Io::new(d.store.io_backend)?,
            )?);
        }
        {
            let mut eng = self.inner.engine.lock();
            eng.applied_seq = eng.applied_seq.max(last);
            eng.next_checkpoint_ms = d.interval_ms.map(|i| self.inner.clock.now_ms() + i);
        }
        self.inner.recovering.store(false, Ordering::Release);
        if log.lost {
            // Salvaged: a checkpoint covers what was recovered, so the next open no longer
            // needs the damaged log (and finds nothing to report).
            if let Err(e) = self.checkpoint() {
                info.warnings.push(format!(
                    "the checkpoint after salvaging the log failed ({e}); the next open will meet the damaged log again"
                ));
            }
        }
        self.start_deferred_readers()?;
        info.records_replayed = replayed;
        info.millis = t0.elapsed().as_secs_f64() * 1000.0;
        for w in &info.warnings {
            log::warn!(target: "laminardb", "{w}");
        }
        *d.recovery.lock() = info;
        Ok(())
    }

    /// Recreates the catalog of a checkpoint and loads every object's state into it.
    fn restore_checkpoint(&self, mut l: durable::Loaded) -> Result<()> {
        let epoch = l.epoch;
        let bad = |m: String| Error::new(ErrorKind::Io, format!("checkpoint {epoch}: {m}"));
        let catalog = l
            .objects
            .remove("catalog")
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| bad("no catalog".into()))?;
        let rows = catalog::read(&catalog).map_err(|e| bad(e.to_string()))?;
        // The sinks' committables, published by their CREATE below, before any result flows.
        let mut committables = HashMap::new();
        for key in l.objects.keys().filter(|k| k.starts_with("sink:")).cloned().collect::<Vec<_>>() {
            let lists = l.objects.remove(&key).unwrap_or_default();
            let c = lists
                .first()
                .and_then(|l| l.first())
                .and_then(|b| b.column(0).as_binary_opt::<i32>().filter(|a| a.len() == 1).map(|a| a.value(0).to_vec()))
                .ok_or_else(|| bad(format!("malformed committable of {key}")))?;
            committables.insert(key["sink:".len()..].to_string(), c);
        }
        *self.inner.restored_sinks.lock() = committables;
        for r in &rows {
            if r.kind != "late" {
                for st in sql::parse_sql(&r.sql)? {
                    self.execute_statement(st.statement, &st.text)
                        .map_err(|e| e.context(format!("checkpoint {epoch}: recreating '{}'", r.name)))?;
                }
            }
        }
        let mut eng = self.inner.engine.lock();
        for r in rows {
            if r.kind == "source" || r.kind == "table" {
                let s = eng
                    .sources
                    .get_mut(&r.name)
                    .ok_or_else(|| bad(format!("source '{}' missing after its CREATE", r.name)))?;
                let mut lists = l.objects.remove(&format!("source:{}", r.name)).unwrap_or_default().into_iter();
                if let (Some(t), Some(rows)) = (s.table.as_mut(), lists.next()) {
                    for b in &rows {
                        t.upsert(b)?;
                    }
                }
                for b in lists.next().unwrap_or_default() {
                    s.retained_rows += b.num_rows();
                    s.retained.push_back(b);
                }
                trim_retained(&mut s.retained, &mut s.retained_rows, self.inner.config.source_retention);
                s.watermark = r.watermark;
                s.rows_in = r.rows_in;
                s.batches_in = r.batches_in;
                s.rows_late = r.rows_late;
                s.positions = r.positions;
            } else if r.kind == "sink" {
                if let Some(k) = eng.sinks.get_mut(&r.name) {
                    k.rows_out = r.rows_out;
                    k.batches_out = r.batches_out;
                }
            } else {
                let s = eng
                    .streams
                    .get_mut(&r.name)
                    .ok_or_else(|| bad(format!("stream '{}' missing after its CREATE", r.name)))?;
                if r.kind != "late" {
                    let now = fingerprint(s);
                    if !same_plan(&now, &r.fingerprint) {
                        return Err(Error::invalid_state(format!(
                            "checkpoint {epoch}: '{}' plans differently in this version of LaminarDB than when its state was saved, so that state cannot be loaded safely.\nsaved:\n{}\nnow:\n{}\nOpen the database with the version that wrote it, or remove '{}' to start over",
                            r.name,
                            r.fingerprint,
                            now,
                            self.inner.durable.as_ref().map(|d| d.store.root.display().to_string()).unwrap_or_default()
                        )));
                    }
                    let mut lists = l.objects.remove(&format!("stream:{}", r.name)).unwrap_or_default();
                    let mv_state = lists.pop().ok_or_else(|| bad(format!("no state for '{}'", r.name)))?;
                    // A failed stream's operators are not restored: it never runs again (and
                    // its checkpoint may hold no operator state, freed when it failed).
                    if r.failed.is_none() {
                        s.restore_ops(lists)
                            .map_err(|e| e.context(format!("checkpoint {epoch}: restoring '{}'", r.name)))?;
                    }
                    if let Some(mv) = &mut s.mv {
                        mv.restore(mv_state)?;
                    }
                }
                s.watermark = r.watermark;
                s.rows_out = r.rows_out;
                s.batches_out = r.batches_out;
                s.rows_late = r.rows_late;
                s.late_pairs = r.late_pairs;
                s.history_since = r.history_since;
                if let Some((kind, msg)) = r.failed {
                    let kind = ErrorKind::from_name(&kind).unwrap_or(ErrorKind::Internal);
                    s.failed = Some(Error::new(kind, msg).with_failed_stream(r.name.clone()));
                }
            }
        }
        eng.epoch = l.epoch;
        eng.applied_seq = l.seq;
        self.inner.restored_sinks.lock().clear();
        Ok(())
    }

    /// Applies one logged change during recovery, as it was applied before.
    fn replay(&self, seq: u64, rec: Record) -> Result<()> {
        let queue = |name: &str| -> Result<Arc<SourceQueue>> {
            let eng = self.inner.engine.lock();
            eng.sources.get(name).map(|s| s.queue.clone()).ok_or_else(|| {
                Error::new(ErrorKind::Io, format!("log record {seq}: no source '{name}' to replay it into"))
            })
        };
        match rec {
            Record::Ddl { sql } => {
                self.flush()?;
                for st in sql::parse_sql(&sql)? {
                    self.execute_statement(st.statement, &st.text)
                        .map_err(|e| e.context(format!("replaying log record {seq} ({sql})")))?;
                }
                let mut eng = self.inner.engine.lock();
                eng.applied_seq = eng.applied_seq.max(seq);
            }
            Record::Delete { table, rows } => {
                self.flush()?;
                self.apply_delete(&table, &[rows])?;
                let mut eng = self.inner.engine.lock();
                eng.applied_seq = eng.applied_seq.max(seq);
            }
            Record::Batch { source, position, batch } => {
                let q = queue(&source)?;
                self.inner.tx.send(Event::Batch { q, batch, seq, position }).map_err(|_| Error::closed())?;
            }
            Record::Watermark { source, us } => {
                let q = queue(&source)?;
                self.inner.tx.send(Event::Watermark { q, us, seq }).map_err(|_| Error::closed())?;
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) { Err(Error::closed()) } else { Ok(()) }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Stops the pipeline; every later call returns CLOSED. Subscriptions end. Idempotent.
    /// A durable database takes a last checkpoint first (so reopening replays nothing); if that
    /// fails, the log still holds every acknowledged change.
    pub fn close(&self) {
        if self.inner.durable.is_some()
            && !self.is_closed()
            && let Err(e) = self.checkpoint()
        {
            log::warn!(target: "laminardb", "the checkpoint at close failed ({e}); the next open replays the log instead");
        }
        self.close_without_checkpoint();
    }

    /// Tests: closes like a crash would leave things — no last checkpoint, nothing flushed
    /// beyond what the log already holds — but releases the directory so it can be reopened in
    /// this process.
    #[doc(hidden)]
    pub fn close_abruptly(&self) {
        self.close_without_checkpoint();
    }

    fn close_without_checkpoint(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.inner.tx.send(Event::Shutdown);
        if let Some(h) = self.inner.driver.lock().take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
        let mut eng = self.inner.engine.lock();
        for s in eng.streams.values_mut() {
            s.subscribers.clear();
        }
        drop(eng);
        if let Some(s) = &self.inner.state {
            s.close();
        }
        if let Some(d) = &self.inner.durable {
            d.store.release();
        }
    }

    /// Runs one or more `;`-separated statements; returns the result of the last.
    pub fn execute(&self, sql_text: &str) -> Result<ExecuteResult> {
        self.check_open()?;
        let stmts = sql::parse_sql(sql_text)?;
        if stmts.is_empty() {
            return Err(Error::syntax("empty SQL statement"));
        }
        let res = self.execute_statements(stmts);
        let started = self.start_deferred_readers();
        let last = res?;
        started?;
        Ok(last)
    }

    fn execute_statements(&self, stmts: Vec<sql::ParsedStatement>) -> Result<ExecuteResult> {
        let mut last = ExecuteResult::default();
        for s in stmts {
            last = match &self.inner.durable {
                Some(d)
                    if matches!(
                        s.statement,
                        Statement::CreateSource(_)
                            | Statement::CreateStream(_)
                            | Statement::CreateSink(_)
                            | Statement::Drop { .. }
                            | Statement::Delete { .. }
                    ) =>
                {
                    self.execute_logged(d, s.statement, &s.text)?
                }
                _ => self.execute_statement(s.statement, &s.text)?,
            };
            if last.schema.is_none() {
                last.schema = last.batches.first().map(|b| b.schema());
            }
        }
        Ok(last)
    }

    /// Runs a catalog statement or a DELETE on a durable database at one point of the change
    /// order: after every change logged before it has been applied, before any logged after it;
    /// then logs it (a DELETE only at level `wal`, like pushes).
    fn execute_logged(&self, d: &Durable, stmt: Statement, text: &str) -> Result<ExecuteResult> {
        let _catalog = d.ddl.write();
        let mut st = d.log.lock();
        d.drain(&mut st, &self.inner.tx)?;
        self.flush()?;
        let (res, rec) = match stmt {
            Statement::Delete { table, selection } => {
                let (res, rows) = self.delete_where(&table, selection)?;
                let rec = if res.rows_affected > 0 && d.level == Durability::Wal {
                    let schema = rows[0].schema();
                    Some(Record::Delete { table, rows: datafusion::arrow::compute::concat_batches(&schema, &rows)? })
                } else {
                    None
                };
                (res, rec)
            }
            other => (self.execute_statement(other, text)?, Some(Record::Ddl { sql: text.to_string() })),
        };
        if let Some(rec) = rec {
            let seq = d.log_now(&mut st, &self.inner.tx, &rec)?;
            let mut eng = self.inner.engine.lock();
            eng.applied_seq = eng.applied_seq.max(seq);
        }
        Ok(res)
    }

    fn execute_statement(&self, stmt: Statement, text: &str) -> Result<ExecuteResult> {
        match stmt {
            Statement::CreateSource(cs) => self.create_source(cs, text),
            Statement::CreateStream(cs) => self.create_stream(cs, text),
            Statement::CreateSink(cs) => self.create_sink(cs, text),
            Statement::Drop { kind, names, if_exists, cascade } => self.drop_objects(kind, names, if_exists, cascade),
            Statement::Show(kind) => self.show(kind),
            Statement::Describe(name) => self.describe(&name),
            Statement::ShowCreate(name) => {
                let info = self.object(&name)?;
                let b = RecordBatch::try_from_iter(vec![
                    ("name", Arc::new(StringArray::from(vec![info.name])) as ArrayRef),
                    ("sql", Arc::new(StringArray::from(vec![info.sql])) as ArrayRef),
                ])?;
                Ok(ExecuteResult { batches: vec![b], ..Default::default() })
            }
            Statement::Explain(inner) => self.explain(*inner),
            Statement::Insert { table, columns, source } => self.insert_values(&table, &columns, *source),
            Statement::Delete { table, selection } => self.delete_where(&table, selection).map(|r| r.0),
            Statement::Query(q) => {
                let (schema, batches) = self.run_query(*q)?;
                Ok(ExecuteResult { batches, schema: Some(schema), ..Default::default() })
            }
            Statement::Checkpoint => {
                self.checkpoint().map(|_| ExecuteResult { message: "checkpoint taken".into(), ..Default::default() })
            }
        }
    }

    fn relations(&self, eng: &Engine) -> HashMap<String, RelationInfo> {
        let mut m = HashMap::new();
        for (n, s) in &eng.sources {
            let kind = if s.table.is_some() { StreamKind::Changelog } else { StreamKind::AppendOnly };
            m.insert(n.clone(), RelationInfo { schema: s.queue.schema.clone(), kind, time_col: s.time.map(|t| t.0) });
        }
        for (n, s) in &eng.streams {
            m.insert(
                n.clone(),
                RelationInfo { schema: s.logical_schema.clone(), kind: s.kind.clone(), time_col: s.time_col },
            );
        }
        m
    }

    fn name_taken(eng: &Engine, name: &str) -> Option<&'static str> {
        if eng.sources.contains_key(name) {
            Some("source")
        } else if let Some(s) = eng.streams.get(name) {
            Some(if s.materialized { "materialized view" } else { "stream" })
        } else if eng.sinks.contains_key(name) {
            Some("sink")
        } else {
            None
        }
    }

    fn create_source(&self, cs: CreateSource, text: &str) -> Result<ExecuteResult> {
        check_name(if cs.table { "table" } else { "source" }, &cs.name)?;
        if cs.connector.is_none()
            && let Some(k) = cs.options.keys().find(|k| *k != "idle_timeout")
        {
            return Err(Error::invalid_argument(format!(
                "unknown source option '{}' (known: idle_timeout; a connector's options go with FROM <connector> WITH (…))",
                crate::error::clip(k)
            )));
        }
        let idle_timeout = match cs.options.get("idle_timeout") {
            Some(v) => Some(
                crate::config::parse_duration(v).map_err(|m| Error::invalid_argument(format!("idle_timeout: {m}")))?,
            ),
            None => self.inner.config.idle_timeout,
        };
        // DataFusion's own type mapping, through a CREATE TABLE plan.
        let schema = {
            let ctx = crate::plan::session_context();
            let sql_text = format!("CREATE TABLE __laminar_schema {}", cs.columns_sql);
            let plan = futures::executor::block_on(ctx.state().create_logical_plan(&sql_text))?;
            normalize_schema(plan.schema().as_arrow())
        };
        let mut seen = std::collections::HashSet::new();
        for f in schema.fields() {
            check_name("column", f.name())?;
            if !seen.insert(f.name().as_str()) {
                return Err(Error::plan(format!(
                    "{} '{}' declares column '{}' more than once",
                    if cs.table { "table" } else { "source" },
                    cs.name,
                    f.name()
                )));
            }
        }
        // A table's key columns are NOT NULL: a pushed NULL key is refused with the batch.
        let (schema, table) = if cs.table {
            let mut key_idx = vec![];
            for k in &cs.primary_key {
                let i = schema.index_of(k).map_err(|_| {
                    let hint = nearest_name(k, schema.fields().iter().map(|f| f.name().as_str()))
                        .map(|n| format!("; did you mean '{n}'?"))
                        .unwrap_or_default();
                    Error::plan(format!("PRIMARY KEY column '{k}' is not a column of table '{}'{hint}", cs.name))
                })?;
                if key_idx.contains(&i) {
                    return Err(Error::plan(format!("PRIMARY KEY names '{k}' twice")));
                }
                key_idx.push(i);
            }
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() && !key_idx.contains(&i)))
                .collect();
            let schema: SchemaRef = Arc::new(Schema::new(fields));
            let t = crate::runtime::table::TableState::try_new(schema.clone(), key_idx)?;
            (schema, Some(t))
        } else {
            (schema, None)
        };
        // The connector checks its options (and the columns it can fill) now, before anything exists.
        let reader = match cs.connector.as_deref() {
            None => None,
            Some(kind) => Some(connector::source_for(kind, &cs.name, &schema, &cs.options, &["idle_timeout"])?),
        };
        let time = match &cs.watermark {
            None => None,
            Some(w) => {
                let idx = schema.index_of(&w.column).map_err(|_| {
                    Error::plan(format!("WATERMARK FOR '{}': no such column in source '{}'", w.column, cs.name))
                })?;
                let dt = schema.field(idx).data_type();
                let scale = TimeScale::for_type(dt).ok_or_else(|| {
                    Error::plan(format!(
                        "WATERMARK FOR '{}': column is {dt}, expected TIMESTAMP or BIGINT (epoch milliseconds)",
                        w.column
                    ))
                })?;
                let delay = match (w.delay, dt) {
                    (WatermarkDelay::None, _) => 0,
                    (WatermarkDelay::IntervalMicros(us), DataType::Timestamp(..)) => us,
                    (WatermarkDelay::Integer(ms), DataType::Int64) => ms.saturating_mul(1000),
                    (WatermarkDelay::IntervalMicros(us), DataType::Int64) => us,
                    (WatermarkDelay::IntervalMicros(us), _) => us,
                    (WatermarkDelay::Integer(_), _) => {
                        return Err(Error::plan(format!(
                            "WATERMARK FOR '{}': a TIMESTAMP column takes an INTERVAL delay, e.g. {} - INTERVAL '5' SECOND",
                            w.column, w.column
                        )));
                    }
                };
                if delay < 0 {
                    return Err(Error::plan("the watermark delay cannot be negative"));
                }
                Some((idx, scale, delay))
            }
        };
        let mut eng = self.inner.engine.lock();
        if let Some(what) = Self::name_taken(&eng, &cs.name) {
            if cs.if_not_exists {
                self.check_same_definition(&eng, &cs.name, text)?;
                return Ok(ExecuteResult {
                    message: format!("{what} '{}' already exists", cs.name),
                    ..Default::default()
                });
            }
            if !(cs.or_replace && what == "source") {
                return Err(Error::already_exists(format!("a {what} named '{}' already exists", cs.name)));
            }
            if eng.streams.values().any(|s| s.inputs.contains(&cs.name)) {
                return Err(Error::invalid_state(format!(
                    "cannot replace source '{}': streams read it (DROP … CASCADE first)",
                    cs.name
                )));
            }
            if let Some(old) = eng.sources.remove(&cs.name) {
                old.queue.dropped.store(true, Ordering::Release);
            }
        }
        let (permits_tx, permits_rx) = crossbeam_channel::bounded(self.inner.config.queue_capacity);
        let queue = Arc::new(SourceQueue {
            name: cs.name.clone(),
            schema,
            permits_tx,
            permits_rx,
            dropped: AtomicBool::new(false),
        });
        eng.sources.insert(
            cs.name.clone(),
            SourceRt {
                queue: queue.clone(),
                sql: text.to_string(),
                time,
                watermark: NO_WATERMARK,
                retained: VecDeque::new(),
                retained_rows: 0,
                rows_in: 0,
                batches_in: 0,
                rows_late: 0,
                table,
                idle_timeout_ms: idle_timeout.map(|d| d.as_millis().max(1) as i64),
                last_active_ms: self.inner.clock.now_ms(),
                idle: false,
                positions: Positions::new(),
                partition_wm: HashMap::new(),
                finished_wm: NO_WATERMARK,
            },
        );
        drop(eng);
        if let Some(reader) = reader {
            // Started at the end of the `execute` call (or of recovery, which knows how far the
            // source had got).
            self.inner.deferred_readers.lock().push((queue, reader));
        }
        Ok(ExecuteResult {
            message: format!("created {} '{}'", if cs.table { "table" } else { "source" }, cs.name),
            ..Default::default()
        })
    }

    /// Starts the readers of the connector sources created since the last call, at the positions
    /// their sources hold (restored by recovery, empty for a new source). Called once recovery is
    /// done and at the end of each `execute`, so a script that creates a source and the streams
    /// and sinks over it sees every row the source reads.
    fn start_deferred_readers(&self) -> Result<()> {
        let mut first_err = None;
        for (queue, reader) in std::mem::take(&mut *self.inner.deferred_readers.lock()) {
            if queue.dropped.load(Ordering::Acquire) {
                continue; // dropped or replaced since
            }
            let positions = self.inner.engine.lock().sources.get(&queue.name).map(|s| s.positions.clone());
            if let Err(e) = self.start_reader(queue, reader, positions.unwrap_or_default()) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Starts a connector source's reader thread at `positions`. It holds the database weakly:
    /// dropping the last handle (or closing, or dropping the source) stops it.
    fn start_reader(&self, queue: Arc<SourceQueue>, reader: Box<dyn SourceReader>, positions: Positions) -> Result<()> {
        let name = queue.name.clone();
        let out = ConnectorOutput { db: Arc::downgrade(&self.inner), queue };
        connector::run_source(&name, reader, positions, Box::new(out), connector::RETRY_TIMEOUT)
    }

    /// `CREATE SINK name FROM input INTO <connector> WITH (…)`.
    fn create_sink(&self, cs: sql::CreateSink, text: &str) -> Result<ExecuteResult> {
        check_name("sink", &cs.name)?;
        let mut eng = self.inner.engine.lock();
        if let Some(what) = Self::name_taken(&eng, &cs.name) {
            if cs.if_not_exists {
                self.check_same_definition(&eng, &cs.name, text)?;
                return Ok(ExecuteResult {
                    message: format!("{what} '{}' already exists", cs.name),
                    ..Default::default()
                });
            }
            if !(cs.or_replace && what == "sink") {
                return Err(Error::already_exists(format!("a {what} named '{}' already exists", cs.name)));
            }
        }
        let schema = if let Some(s) = eng.sources.get(&cs.input) {
            s.queue.schema.clone()
        } else if let Some(s) = eng.streams.get(&cs.input) {
            s.output_schema.clone()
        } else {
            let all: Vec<String> = eng.sources.keys().chain(eng.streams.keys()).cloned().collect();
            let hint = nearest_name(&cs.input, all.iter().map(String::as_str))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            let what = if eng.sinks.contains_key(&cs.input) { " (a sink has no output to write)" } else { "" };
            return Err(Error::not_found(format!(
                "sink '{}': no stream, view, source or table named '{}'{what}{hint}",
                cs.name,
                crate::error::clip(&cs.input)
            )));
        };
        let mut sink = connector::sink_for(&cs.connector, &cs.name, &schema, &cs.options)?;
        if let Some(old) = eng.sinks.remove(&cs.name) {
            drop_sink(&cs.name, old);
        }
        // A sink recreated from a checkpoint publishes that checkpoint's results (if a crash came
        // between the checkpoint and its commit); any other discards what an earlier run staged.
        let restored = self.inner.restored_sinks.lock().remove(&cs.name);
        sink.recover(restored.as_deref()).map_err(|e| e.context(format!("sink '{}'", cs.name)))?;
        let describe = sink.describe();
        eng.sinks.insert(
            cs.name.clone(),
            SinkRt {
                sql: text.to_string(),
                input: cs.input.clone(),
                sink,
                describe,
                rows_out: 0,
                batches_out: 0,
                failed: None,
                writes: 0,
            },
        );
        Ok(ExecuteResult { message: format!("created sink '{}'", cs.name), ..Default::default() })
    }

    /// `CREATE … IF NOT EXISTS x` on a durable database where `x` exists with another
    /// definition (typically recovered from disk, created by an older version of the program):
    /// an error, not a silent keep of the old pipeline. The migration is `CREATE OR REPLACE`
    /// (or DROP), which starts that object's state afresh.
    fn check_same_definition(&self, eng: &Engine, name: &str, text: &str) -> Result<()> {
        if self.inner.durable.is_none() {
            return Ok(());
        }
        let old = eng
            .sources
            .get(name)
            .map(|s| s.sql.clone())
            .or_else(|| eng.streams.get(name).map(|s| s.sql.clone()))
            .or_else(|| eng.sinks.get(name).map(|s| s.sql.clone()))
            .unwrap_or_default();
        if definition_key(&old) == definition_key(text) {
            return Ok(());
        }
        Err(Error::invalid_state(format!(
            "'{name}' already exists with a different definition (kept in '{}'):\n  {}\nThe pipeline changed: use CREATE OR REPLACE (or DROP first) to replace it; its state starts afresh",
            self.inner.durable.as_ref().map(|d| d.store.root.display().to_string()).unwrap_or_default(),
            old.trim()
        )))
    }

    fn plan_stream(&self, eng: &Engine, cs: &CreateStream) -> Result<crate::plan::PlannedQuery> {
        let opts = PlanOptions {
            emit: cs.emit,
            lateness_us: cs.allowed_lateness.map(|d| d.as_micros() as i64).unwrap_or(0),
            state_ttl_us: cs.state_ttl.map(|d| d.as_micros() as i64),
            keep_all_columns: cs.late_data_to.is_some(),
            partitions: self.inner.config.workers,
            state: self.inner.state.clone().map(|s| (s, self.inner.config.state_cache_size)),
        };
        plan_continuous((*cs.query).clone(), &self.relations(eng), &opts)
    }

    fn create_stream(&self, cs: CreateStream, text: &str) -> Result<ExecuteResult> {
        check_name(if cs.materialized { "materialized view" } else { "stream" }, &cs.name)?;
        let noun = if cs.materialized { "materialized view" } else { "stream" };
        let mut eng = self.inner.engine.lock();
        if let Some(what) = Self::name_taken(&eng, &cs.name) {
            if cs.if_not_exists {
                self.check_same_definition(&eng, &cs.name, text)?;
                return Ok(ExecuteResult {
                    message: format!("{what} '{}' already exists", cs.name),
                    ..Default::default()
                });
            }
            if !cs.or_replace || what == "source" {
                return Err(Error::already_exists(format!("a {what} named '{}' already exists", cs.name)));
            }
            if eng.streams.values().any(|s| s.inputs.contains(&cs.name)) {
                return Err(Error::invalid_state(format!("cannot replace '{}': other streams read it", cs.name)));
            }
            eng.streams.remove(&cs.name);
            eng.order.retain(|n| n != &cs.name);
        }
        let planned = self.plan_stream(&eng, &cs)?;
        if let Some(late) = &cs.late_data_to {
            let Some(late_schema) = planned.late_schema.clone() else {
                return Err(Error::plan("LATE DATA TO needs a windowed query"));
            };
            match eng.streams.get(late) {
                Some(s) if s.is_late_sink && s.output_schema == late_schema => {}
                Some(_) => {
                    return Err(Error::already_exists(format!(
                        "'{late}' exists and is not a late-data stream of the same shape"
                    )));
                }
                None if eng.sources.contains_key(late) => {
                    return Err(Error::already_exists(format!(
                        "'{late}' is a source; LATE DATA TO needs a new stream name"
                    )));
                }
                None => {
                    eng.streams
                        .insert(late.clone(), StreamRt::late_sink(late_schema, format!("-- late rows of {}", cs.name)));
                    eng.order.push(late.clone());
                }
            }
        }
        let logical_schema = match planned.kind {
            StreamKind::Changelog => {
                let f = planned.output_schema.fields();
                Arc::new(Schema::new(f[..f.len() - 1].to_vec()))
            }
            _ => planned.output_schema.clone(),
        };
        // A window whose input already has a watermark starts from it.
        let watermark = combined_watermark(&eng, &planned.inputs);
        let tick = planned.root.operators().iter().find_map(|o| o.tick_interval()).map(|d| {
            let p = d.as_millis().max(1) as i64;
            (p, self.inner.clock.now_ms() + p)
        });
        let mv = if cs.materialized { Some(MvStore::new(logical_schema.clone(), &planned.kind)?) } else { None };
        eng.streams.insert(
            cs.name.clone(),
            StreamRt {
                sql: text.to_string(),
                materialized: cs.materialized,
                inputs: planned.inputs,
                root: planned.root,
                time_col: planned.time_col,
                kind: planned.kind,
                output_schema: planned.output_schema,
                logical_schema,
                late_to: cs.late_data_to.clone(),
                subscribers: vec![],
                mv,
                watermark,
                rows_out: 0,
                batches_out: 0,
                rows_late: 0,
                late_pairs: 0,
                failed: None,
                frozen_fingerprint: None,
                tick,
                is_late_sink: false,
                history: vec![],
                history_since: None,
                emitted_this_epoch: false,
            },
        );
        eng.order.push(cs.name.clone());
        Ok(ExecuteResult { message: format!("created {noun} '{}'", cs.name), ..Default::default() })
    }

    fn drop_objects(
        &self,
        kind: Option<ObjectKind>,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    ) -> Result<ExecuteResult> {
        let mut eng = self.inner.engine.lock();
        let mut dropped = vec![];
        for name in names {
            let actual = if let Some(s) = eng.sources.get(&name) {
                Some(if s.table.is_some() { ObjectKind::Table } else { ObjectKind::Source })
            } else if eng.sinks.contains_key(&name) {
                Some(ObjectKind::Sink)
            } else {
                eng.streams
                    .get(&name)
                    .map(|s| if s.materialized { ObjectKind::MaterializedView } else { ObjectKind::Stream })
            };
            let Some(actual) = actual else {
                if if_exists {
                    continue;
                }
                let all: Vec<String> =
                    eng.sources.keys().chain(eng.streams.keys()).chain(eng.sinks.keys()).cloned().collect();
                let hint = nearest_name(&name, all.iter().map(String::as_str))
                    .map(|n| format!("; did you mean '{n}'?"))
                    .unwrap_or_default();
                return Err(Error::not_found(format!("no source, stream, table, view or sink named '{name}'{hint}")));
            };
            if let Some(k) = kind
                && k != actual
            {
                return Err(Error::invalid_argument(format!("'{name}' is a {}, not a {}", actual.noun(), k.noun())));
            }
            // Dependents, transitively.
            let mut doomed = vec![name.clone()];
            let mut i = 0;
            while i < doomed.len() {
                let d = doomed[i].clone();
                for n in &eng.order {
                    if eng.streams[n].inputs.contains(&d) && !doomed.contains(n) {
                        doomed.push(n.clone());
                    }
                }
                i += 1;
            }
            // The sinks writing what is dropped go with it.
            let sinks: Vec<String> =
                eng.sinks.iter().filter(|(_, k)| doomed.contains(&k.input)).map(|(n, _)| n.clone()).collect();
            doomed.extend(sinks);
            if doomed.len() > 1 && !cascade {
                return Err(Error::invalid_state(format!(
                    "cannot drop '{name}': {} depend on it ({}); use DROP … CASCADE",
                    doomed.len() - 1,
                    doomed[1..].iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
                )));
            }
            for d in doomed {
                if let Some(s) = eng.sources.remove(&d) {
                    s.queue.dropped.store(true, Ordering::Release);
                }
                if let Some(k) = eng.sinks.remove(&d) {
                    drop_sink(&d, k);
                }
                eng.streams.remove(&d);
                eng.order.retain(|n| n != &d);
                dropped.push(d);
            }
        }
        Ok(ExecuteResult {
            message: format!("dropped {}", if dropped.is_empty() { "nothing".into() } else { dropped.join(", ") }),
            ..Default::default()
        })
    }

    /// Names of the objects of a kind, sorted.
    pub fn list(&self, kind: ObjectKind) -> Result<Vec<String>> {
        self.check_open()?;
        let eng = self.inner.engine.lock();
        let mut v: Vec<String> = match kind {
            ObjectKind::Source => {
                eng.sources.iter().filter(|(_, s)| s.table.is_none()).map(|(n, _)| n.clone()).collect()
            }
            ObjectKind::Table => {
                eng.sources.iter().filter(|(_, s)| s.table.is_some()).map(|(n, _)| n.clone()).collect()
            }
            ObjectKind::Stream => eng.streams.iter().filter(|(_, s)| !s.materialized).map(|(n, _)| n.clone()).collect(),
            ObjectKind::MaterializedView => {
                eng.streams.iter().filter(|(_, s)| s.materialized).map(|(n, _)| n.clone()).collect()
            }
            ObjectKind::Sink => eng.sinks.keys().cloned().collect(),
        };
        v.sort();
        Ok(v)
    }

    fn show(&self, kind: ObjectKind) -> Result<ExecuteResult> {
        if kind == ObjectKind::Sink {
            self.check_open()?;
            let eng = self.inner.engine.lock();
            let col = |f: &dyn Fn(&SinkRt) -> String| {
                Arc::new(StringArray::from_iter_values(eng.sinks.values().map(f))) as ArrayRef
            };
            let b = RecordBatch::try_from_iter(vec![
                ("name", Arc::new(StringArray::from_iter_values(eng.sinks.keys())) as ArrayRef),
                ("input", col(&|k| k.input.clone())),
                ("connector", col(&|k| k.describe.clone())),
                ("rows_out", Arc::new(Int64Array::from_iter_values(eng.sinks.values().map(|k| k.rows_out as i64)))),
                (
                    "failed",
                    Arc::new(StringArray::from_iter(
                        eng.sinks.values().map(|k| k.failed.as_ref().map(|e| e.to_string())),
                    )),
                ),
            ])?;
            return Ok(ExecuteResult { batches: vec![b], ..Default::default() });
        }
        let names = self.list(kind)?;
        let b = RecordBatch::try_from_iter(vec![("name", Arc::new(StringArray::from(names)) as ArrayRef)])?;
        Ok(ExecuteResult { batches: vec![b], ..Default::default() })
    }

    /// Describes a source, stream or materialized view.
    pub fn object(&self, name: &str) -> Result<ObjectInfo> {
        self.check_open()?;
        let eng = self.inner.engine.lock();
        if let Some(s) = eng.sources.get(name) {
            let (kind, stream_kind) = match &s.table {
                Some(t) => (ObjectKind::Table, StreamKind::Upsert { key: t.key_names() }),
                None => (ObjectKind::Source, StreamKind::AppendOnly),
            };
            return Ok(ObjectInfo {
                name: name.into(),
                kind,
                schema: s.queue.schema.clone(),
                stream_kind,
                sql: s.sql.clone(),
                inputs: vec![],
            });
        }
        if let Some(s) = eng.streams.get(name) {
            return Ok(ObjectInfo {
                name: name.into(),
                kind: if s.materialized { ObjectKind::MaterializedView } else { ObjectKind::Stream },
                schema: s.output_schema.clone(),
                stream_kind: s.kind.clone(),
                sql: s.sql.clone(),
                inputs: s.inputs.clone(),
            });
        }
        if let Some(k) = eng.sinks.get(name) {
            // What the sink writes: its input's output.
            let (schema, stream_kind) = if let Some(s) = eng.streams.get(&k.input) {
                (s.output_schema.clone(), s.kind.clone())
            } else if let Some(s) = eng.sources.get(&k.input) {
                let kind = match &s.table {
                    Some(t) => StreamKind::Upsert { key: t.key_names() },
                    None => StreamKind::AppendOnly,
                };
                (s.queue.schema.clone(), kind)
            } else {
                (Arc::new(Schema::empty()), StreamKind::AppendOnly)
            };
            return Ok(ObjectInfo {
                name: name.into(),
                kind: ObjectKind::Sink,
                schema,
                stream_kind,
                sql: k.sql.clone(),
                inputs: vec![k.input.clone()],
            });
        }
        let all: Vec<String> = eng.sources.keys().chain(eng.streams.keys()).chain(eng.sinks.keys()).cloned().collect();
        let hint = nearest_name(name, all.iter().map(String::as_str))
            .map(|n| format!("; did you mean '{n}'?"))
            .unwrap_or_default();
        Err(Error::not_found(format!("no source, stream, table, view or sink named '{name}'{hint}")))
    }

    fn describe(&self, name: &str) -> Result<ExecuteResult> {
        let info = self.object(name)?;
        let f = info.schema.fields();
        let b = RecordBatch::try_from_iter(vec![
            ("column_name", Arc::new(StringArray::from_iter_values(f.iter().map(|f| f.name().clone()))) as ArrayRef),
            ("data_type", Arc::new(StringArray::from_iter_values(f.iter().map(|f| f.data_type().to_string())))),
            (
                "is_nullable",
                Arc::new(StringArray::from_iter_values(f.iter().map(|f| if f.is_nullable() { "YES" } else { "NO" }))),
            ),
            (
                "kind",
                Arc::new(StringArray::from_iter_values(
                    f.iter().map(|_| format!("{} {}", info.kind.noun(), info.stream_kind)),
                )),
            ),
        ])?;
        Ok(ExecuteResult { batches: vec![b], ..Default::default() })
    }

    fn explain(&self, inner: Statement) -> Result<ExecuteResult> {
        let eng = self.inner.engine.lock();
        let lines = match inner {
            Statement::CreateStream(cs) => {
                let p = self.plan_stream(&eng, &cs)?;
                let mut lines = vec![format!("Stream {} [{}]", cs.name, p.kind)];
                p.root.explain(1, &mut lines);
                lines
            }
            Statement::Query(q) => {
                let plan = crate::plan::logical_plan(*q, &self.relations(&eng), &[])?;
                vec!["Ad-hoc query (DataFusion over snapshots)".to_string(), plan.display_indent().to_string()]
            }
            _ => unreachable!("parser admits only these"),
        };
        let b = RecordBatch::try_from_iter(vec![("plan", Arc::new(StringArray::from(lines)) as ArrayRef)])?;
        Ok(ExecuteResult { batches: vec![b], ..Default::default() })
    }

    /// Runs an ad-hoc query over snapshots of sources (their retained rows) and materialized views.
    pub fn query(&self, sql_text: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.query_with_schema(sql_text)?.1)
    }

    /// Like [`Database::query`], with the result's schema (known even when no row matched).
    pub fn query_with_schema(&self, sql_text: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.check_open()?;
        match sql::parse_one(sql_text)?.statement {
            Statement::Query(q) => self.run_query(*q),
            _ => Err(Error::invalid_argument("query() takes a SELECT; use execute() for other statements")),
        }
    }

    /// Takes a checkpoint of everything pushed before this call and returns its epoch. An
    /// in-memory database answers INVALID_STATE.
    pub fn checkpoint(&self) -> Result<i64> {
        Ok(self.checkpoint_stats()?.epoch as i64)
    }

    /// Like [`Database::checkpoint`], with what the checkpoint wrote.
    pub fn checkpoint_stats(&self) -> Result<CheckpointStats> {
        self.check_open()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.tx.send(Event::Checkpoint(tx)).map_err(|_| Error::closed())?;
        rx.recv().map_err(|_| Error::closed())?
    }

    fn run_query(&self, q: datafusion::sql::sqlparser::ast::Query) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.check_open()?;
        let ctx = crate::plan::session_context();
        {
            let eng = self.inner.engine.lock();
            for (n, s) in &eng.sources {
                let data: Vec<RecordBatch> = match &s.table {
                    Some(t) => t.snapshot()?,
                    None => s.retained.iter().cloned().collect(),
                };
                ctx.register_table(n.as_str(), Arc::new(MemTable::try_new(s.queue.schema.clone(), vec![data])?))?;
            }
            for (n, s) in &eng.streams {
                // A failed view is not registered: its rows stopped being right when it failed,
                // so a read of it fails with the stream's error (below) instead of stale rows.
                if let (Some(mv), None) = (&s.mv, &s.failed) {
                    ctx.register_table(
                        n.as_str(),
                        Arc::new(MemTable::try_new(s.logical_schema.clone(), vec![mv.snapshot()?])?),
                    )?;
                }
            }
        }
        let functions = table_function_names(&q);
        let stmt = datafusion::sql::parser::Statement::Statement(Box::new(
            datafusion::sql::sqlparser::ast::Statement::Query(Box::new(q)),
        ));
        // The relations the query names (CTEs excluded), to explain a missing one structurally.
        let mut refs = ctx.state().resolve_table_references(&stmt)?;
        refs.retain(|r| !functions.iter().any(|f| f.eq_ignore_ascii_case(r.table())));
        let ctx2 = ctx.clone();
        let res = self.inner.runtime.block_on(async move {
            let plan = ctx.state().statement_to_plan(stmt).await?;
            let df = ctx.execute_logical_plan(plan).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            Ok::<_, datafusion::error::DataFusionError>((schema, df.collect().await?))
        });
        res.map_err(|e| {
            let err: Error = e.into();
            // Only a planning error about a relation that is not registered is explained: a
            // failed view, a plain stream (keeps no state), or a misspelling. The kind and the
            // DataFusion source stay the original error's.
            let Some(missing) = refs.iter().find(|r| !ctx2.table_exist((*r).clone()).unwrap_or(true)) else {
                return err;
            };
            let n = missing.table();
            let eng = self.inner.engine.lock();
            if let Some(s) = eng.streams.get(n) {
                if let Some(f) = &s.failed {
                    let what = if s.mv.is_some() { "materialized view" } else { "stream" };
                    return f.clone().with_message(format!("{what} '{n}' has failed: {}", f.message()));
                }
                if s.mv.is_none() {
                    return Error::invalid_argument(format!(
                        "stream '{n}' keeps no queryable state; subscribe to it, or create it as a MATERIALIZED VIEW to query it"
                    ))
                    .with_source(Arc::new(err));
                }
            }
            if eng.sources.contains_key(n) || eng.streams.contains_key(n) {
                return err; // a qualified name (another catalog or schema)
            }
            let names: Vec<String> = eng.sources.keys().chain(eng.streams.keys()).cloned().collect();
            drop(eng);
            match nearest_name(n, names.iter().map(String::as_str)) {
                Some(near) => {
                    let msg = format!("{}; did you mean '{near}'?", err.message());
                    err.with_message(msg)
                }
                None => err,
            }
        })
    }

    fn insert_values(
        &self,
        table: &str,
        columns: &[String],
        source: datafusion::sql::sqlparser::ast::Query,
    ) -> Result<ExecuteResult> {
        let (schema, _) = self.target(table, "INSERT INTO")?;
        let (_, batches) = self.run_query(source)?;
        let targets: Vec<usize> = if columns.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            columns
                .iter()
                .map(|c| schema.index_of(c).map_err(|_| Error::plan(format!("source '{table}' has no column '{c}'"))))
                .collect::<Result<_>>()?
        };
        let mut total = 0u64;
        let mut writer = self.writer(table)?;
        for b in batches {
            if b.num_columns() != targets.len() {
                return Err(Error::plan(format!(
                    "INSERT has {} values per row for {} columns",
                    b.num_columns(),
                    targets.len()
                )));
            }
            let n = b.num_rows();
            let mut cols: Vec<ArrayRef> = vec![];
            for (i, f) in schema.fields().iter().enumerate() {
                let col = match targets.iter().position(|&t| t == i) {
                    Some(p) => strict_cast(b.column(p), f.data_type())
                        .map_err(|e| e.context(format!("INSERT INTO '{table}', column '{}'", f.name())))?,
                    None => datafusion::arrow::array::new_null_array(f.data_type(), n),
                };
                cols.push(col);
            }
            let batch = RecordBatch::try_new_with_options(
                Arc::new(Schema::new(
                    schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
                )),
                cols,
                &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            writer.write(batch)?;
            total += n as u64;
        }
        writer.flush()?;
        Ok(ExecuteResult { rows_affected: total, message: format!("inserted {total} rows"), ..Default::default() })
    }

    /// The schema of the source or table `name` that `statement` writes, and whether it is a table;
    /// a clear error for a stream or an unknown name.
    fn target(&self, name: &str, statement: &str) -> Result<(SchemaRef, bool)> {
        {
            let eng = self.inner.engine.lock();
            if let Some(s) = eng.sources.get(name) {
                return Ok((s.queue.schema.clone(), s.table.is_some()));
            }
            if eng.streams.contains_key(name) {
                return Err(Error::invalid_argument(format!(
                    "cannot {statement} '{name}': it is a stream; write into a source or table"
                )));
            }
        }
        // object() takes the engine lock itself.
        Err(self.object(name).err().unwrap_or_else(|| Error::not_found(name.to_string())))
    }

    /// `DELETE FROM table [WHERE …]`: removes the matching rows of a table (after every push made
    /// before the call is applied) and retracts them downstream.
    /// The result, and the rows removed (for the log).
    fn delete_where(
        &self,
        table: &str,
        selection: Option<datafusion::sql::sqlparser::ast::Expr>,
    ) -> Result<(ExecuteResult, Vec<RecordBatch>)> {
        self.flush()?;
        let rows = self.delete_rows_matching(table, selection)?;
        let removed = self.apply_delete(table, &rows)?;
        Ok((
            ExecuteResult { rows_affected: removed, message: format!("deleted {removed} rows"), ..Default::default() },
            rows,
        ))
    }

    /// The rows of `table` a DELETE's WHERE matches, read like an ad-hoc query over its rows.
    fn delete_rows_matching(
        &self,
        table: &str,
        selection: Option<datafusion::sql::sqlparser::ast::Expr>,
    ) -> Result<Vec<RecordBatch>> {
        let q = crate::sql::parse_one(&format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))?;
        let crate::sql::Statement::Query(mut query) = q.statement else { unreachable!("a SELECT") };
        if let datafusion::sql::sqlparser::ast::SetExpr::Select(sel) = query.body.as_mut() {
            sel.selection = selection;
        }
        if !self.target(table, "DELETE FROM")?.1 {
            return Err(Error::invalid_argument(format!(
                "cannot DELETE FROM '{table}': it is an append-only source; DELETE works on tables"
            )));
        }
        let (_, rows) = self.run_query(*query)?;
        Ok(rows.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Removes the rows of `table` with the keys of `rows` and retracts them downstream.
    fn apply_delete(&self, table: &str, rows: &[RecordBatch]) -> Result<u64> {
        let mut eng = self.inner.engine.lock();
        let mut removed = 0u64;
        let name = table.to_string();
        let mut result = Ok(());
        guarded(&self.inner, &mut eng, table, |inner, eng| {
            let Some(s) = eng.sources.get_mut(&name) else { return };
            let Some(t) = s.table.as_mut() else { return };
            match t.delete_rows(rows) {
                Ok(Some(changes)) => {
                    removed = (changes.num_rows()) as u64;
                    feed(inner, eng, &name, &[changes]);
                }
                Ok(None) => {}
                Err(e) => result = Err(e),
            }
        });
        release_and_send_pending(eng, &self.inner.closed);
        result?;
        Ok(removed)
    }

    /// A writer that pushes batches into `source`. A writer belongs to one thread at a time.
    pub fn writer(&self, source: &str) -> Result<SourceWriter> {
        self.check_open()?;
        let eng = self.inner.engine.lock();
        let Some(s) = eng.sources.get(source) else {
            // The message is made after the lock is released: nobody waits on a typo.
            let names: Vec<String> = eng.sources.keys().cloned().collect();
            let views: Vec<String> = eng.streams.keys().cloned().collect();
            drop(eng);
            if views.iter().any(|v| v == source) {
                return Err(Error::invalid_argument(format!(
                    "'{}' is a stream or view, not a source: rows are pushed into sources",
                    crate::error::clip(source)
                )));
            }
            let hint = nearest_name(source, names.iter().map(String::as_str))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            return Err(Error::not_found(format!("no source named '{}'{hint}", crate::error::clip(source))));
        };
        Ok(SourceWriter {
            db: self.clone(),
            queue: s.queue.clone(),
            interrupts: Arc::new(AtomicU64::new(0)),
            connector: false,
        })
    }

    /// Subscribes to a stream or materialized view: every result emitted after this returns.
    pub fn subscribe(&self, name: &str) -> Result<Subscription> {
        self.subscribe_with(name, SubscribeOptions::default())
    }

    pub fn subscribe_with(&self, name: &str, opts: SubscribeOptions) -> Result<Subscription> {
        self.check_open()?;
        let mut eng = self.inner.engine.lock();
        if eng.sources.contains_key(name) {
            return Err(Error::invalid_argument(format!(
                "'{name}' is a source; subscribe to a stream over it (CREATE STREAM … AS SELECT * FROM {name})"
            )));
        }
        let names: Vec<String> = eng.streams.keys().cloned().collect();
        let epoch_now = eng.epoch + 1;
        let s = eng.streams.get_mut(name).ok_or_else(|| {
            let hint = nearest_name(name, names.iter().map(String::as_str))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            Error::not_found(format!("no stream named '{name}'{hint}"))
        })?;
        if let Some(e) = &s.failed {
            return Err(e.clone().with_message(format!("stream '{name}' has failed: {}", e.message())));
        }
        // From this subscription on, the stream's results are kept for resuming (durable
        // databases); the current epoch counts only if nothing of it was emitted before.
        let history_since = s.history_since.unwrap_or(if s.emitted_this_epoch { epoch_now + 1 } else { epoch_now });
        let mut backlog: Vec<(u64, RecordBatch)> = vec![];
        if let Some(k) = opts.resume_after_epoch {
            let Some(d) = &self.inner.durable else {
                return Err(Error::invalid_argument(
                    "resume_after_epoch needs a durable database (durability 'checkpoint' or 'wal')",
                ));
            };
            let last = eng.epoch;
            if k > last {
                return Err(Error::invalid_argument(format!(
                    "cannot resume '{name}' after epoch {k}: the last checkpoint is epoch {last}"
                )));
            }
            if k + 1 < history_since {
                return Err(Error::invalid_argument(format!(
                    "cannot resume '{name}' after epoch {k}: its results are kept from epoch {history_since} on (from its first subscription); resume after epoch {} or later",
                    history_since - 1
                )));
            }
            let kept = durable::epochs(&d.store)?;
            let object = format!("outputs:{name}");
            for e in k + 1..=last {
                if !kept.contains(&e) {
                    return Err(Error::not_found(format!(
                        "the results of epoch {e} of '{name}' are no longer kept (checkpoints kept: {}); resume after epoch {} or later, or raise checkpoints_retained",
                        kept.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
                        kept.first().map(|f| f.saturating_sub(1)).unwrap_or(last)
                    )));
                }
                if let Some(l) = durable::load_objects(&d.store, e, &[object.as_str()])? {
                    backlog.extend(l.objects.into_values().flatten().flatten().map(|b| (e, b)));
                }
            }
            let s = eng.streams.get(name).expect("found above");
            backlog.extend(s.history.iter().map(|b| (last + 1, b.clone())));
        }
        let durable = self.inner.durable.is_some();
        let s = eng.streams.get_mut(name).expect("found above");
        if durable {
            s.history_since = Some(history_since);
        }
        let cap = opts.buffer_size.unwrap_or(self.inner.config.buffer_size);
        let on_full = opts.on_full.unwrap_or(self.inner.config.on_full);
        let (slot, sub) = new_pair(name, s.output_schema.clone(), cap + backlog.len(), on_full);
        for m in backlog {
            let _ = slot.tx.try_send(m);
        }
        s.subscribers.push(slot);
        prune_subscribers(&mut eng);
        Ok(sub)
    }

    /// Subscribes with a callback run on an engine-owned thread. `initial_credits` bounds how many
    /// batches are delivered before [`PushSubscription::request`] grants more (`u64::MAX`: no bound).
    pub fn subscribe_push(
        &self,
        name: &str,
        opts: SubscribeOptions,
        initial_credits: u64,
        callback: impl FnMut(PushEvent) + Send + 'static,
    ) -> Result<PushSubscription> {
        let sub = self.subscribe_with(name, opts)?;
        PushSubscription::spawn(sub, initial_credits, Box::new(callback))
    }

    /// Waits until every event pushed before this call has been processed and emitted.
    pub fn flush(&self) -> Result<()> {
        self.check_open()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.tx.send(Event::Sync(tx)).map_err(|_| Error::closed())?;
        rx.recv().map_err(|_| Error::closed())
    }

    /// Moves a [`ManualClock`] forward and runs the `EMIT EVERY` emissions that became due.
    pub fn advance_clock(&self, by: Duration) -> Result<()> {
        self.check_open()?;
        if !self.inner.clock.is_manual() {
            return Err(Error::invalid_state("advance_clock needs a database opened with a ManualClock"));
        }
        // Only ManualClock reports is_manual; its counter is the first field.
        let clock = Arc::as_ptr(&self.inner.clock) as *const ManualClock;
        // SAFETY: is_manual() is true only for ManualClock, so the pointer has that type.
        let now =
            unsafe { (*clock).0.fetch_add(by.as_millis() as u64, Ordering::AcqRel) } as i64 + by.as_millis() as i64;
        self.inner.tx.send(Event::Tick(now)).map_err(|_| Error::closed())?;
        self.flush()
    }

    pub fn metrics(&self) -> Result<Metrics> {
        self.check_open()?;
        let mut eng = self.inner.engine.lock();
        prune_subscribers(&mut eng);
        let ms = |w: i64| (w != NO_WATERMARK).then(|| if w == i64::MAX { i64::MAX } else { w.div_euclid(1000) });
        let mut sources: Vec<SourceMetrics> = eng
            .sources
            .iter()
            .map(|(n, s)| SourceMetrics {
                name: n.clone(),
                rows_in: s.rows_in,
                batches_in: s.batches_in,
                rows_late: s.rows_late,
                watermark_ms: ms(s.watermark),
                queue_depth: s.queue.permits_tx.len() as u64,
            })
            .collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let mut streams: Vec<StreamMetrics> = eng
            .streams
            .iter()
            .map(|(n, s)| StreamMetrics {
                name: n.clone(),
                rows_out: s.rows_out,
                batches_out: s.batches_out,
                rows_late: s.rows_late,
                late_pairs: s.late_pairs,
                state_bytes: s.root.operators().iter().map(|o| o.state_size() as u64).sum(),
                spilled_groups: s.root.operators().iter().map(|o| o.spilled_groups()).sum(),
                watermark_ms: ms(s.watermark),
                failed: s.failed.as_ref().map(|e| e.to_string()),
                subscribers: s.subscribers.len() as u64,
            })
            .collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        let sinks = eng
            .sinks
            .iter()
            .map(|(n, k)| SinkMetrics {
                name: n.clone(),
                rows_out: k.rows_out,
                batches_out: k.batches_out,
                failed: k.failed.as_ref().map(|e| e.to_string()),
            })
            .collect();
        Ok(Metrics {
            rows_in: sources.iter().map(|s| s.rows_in).sum(),
            rows_out: streams.iter().map(|s| s.rows_out).sum(),
            events_processed: eng.events,
            sources,
            streams,
            sinks,
        })
    }

    /// Metrics as one Arrow batch: `(kind, name, metric, value)` rows.
    pub fn metrics_batch(&self) -> Result<RecordBatch> {
        let m = self.metrics()?;
        let (mut kind, mut name, mut metric, mut value) = (vec![], vec![], vec![], vec![]);
        let mut push = |k: &str, n: &str, m: &str, v: Option<i64>| {
            kind.push(k.to_string());
            name.push(n.to_string());
            metric.push(m.to_string());
            value.push(v);
        };
        for s in &m.sources {
            push("source", &s.name, "rows_in", Some(s.rows_in as i64));
            push("source", &s.name, "rows_late", Some(s.rows_late as i64));
            push("source", &s.name, "watermark_ms", s.watermark_ms);
            push("source", &s.name, "queue_depth", Some(s.queue_depth as i64));
        }
        for s in &m.streams {
            push("stream", &s.name, "rows_out", Some(s.rows_out as i64));
            push("stream", &s.name, "rows_late", Some(s.rows_late as i64));
            push("stream", &s.name, "late_pairs", Some(s.late_pairs as i64));
            push("stream", &s.name, "state_bytes", Some(s.state_bytes as i64));
            push("stream", &s.name, "spilled_groups", Some(s.spilled_groups as i64));
            push("stream", &s.name, "watermark_ms", s.watermark_ms);
            push("stream", &s.name, "subscribers", Some(s.subscribers as i64));
            push("stream", &s.name, "failed", Some(i64::from(s.failed.is_some())));
        }
        for k in &m.sinks {
            push("sink", &k.name, "rows_out", Some(k.rows_out as i64));
            push("sink", &k.name, "batches_out", Some(k.batches_out as i64));
            push("sink", &k.name, "failed", Some(i64::from(k.failed.is_some())));
        }
        push("pipeline", "", "rows_in", Some(m.rows_in as i64));
        push("pipeline", "", "rows_out", Some(m.rows_out as i64));
        push("pipeline", "", "events_processed", Some(m.events_processed as i64));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("kind", DataType::Utf8, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("metric", DataType::Utf8, false),
                Field::new("value", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(kind)),
                Arc::new(StringArray::from(name)),
                Arc::new(StringArray::from(metric)),
                Arc::new(Int64Array::from(value)),
            ],
        )?)
    }

    /// Snapshot of every operator's state of a stream, as Arrow batches per operator.
    pub fn snapshot_stream(&self, name: &str) -> Result<Vec<Vec<RecordBatch>>> {
        self.flush()?;
        let mut eng = self.inner.engine.lock();
        let s = eng.streams.get_mut(name).ok_or_else(|| Error::not_found(format!("no stream named '{name}'")))?;
        let spilled: u64 = s.root.operators().iter().map(|o| o.spilled_groups()).sum();
        if spilled > 0 {
            return Err(Error::invalid_state(format!(
                "'{name}' has {spilled} groups of state in the RocksDB state backend, which a snapshot cannot carry; checkpoints (durable databases) save it"
            )));
        }
        s.snapshot_ops()
    }

    /// Restores operator state taken by [`Database::snapshot_stream`] into a stream of the same plan.
    pub fn restore_stream(&self, name: &str, state: Vec<Vec<RecordBatch>>) -> Result<()> {
        self.flush()?;
        let mut eng = self.inner.engine.lock();
        let s = eng.streams.get_mut(name).ok_or_else(|| Error::not_found(format!("no stream named '{name}'")))?;
        if state.iter().flatten().any(crate::operator::aggregate::is_spill_meta) {
            return Err(Error::invalid_argument(
                "this state refers to groups in a RocksDB state backend: only checkpoint recovery can load it",
            ));
        }
        s.restore_ops(state)
    }
}

impl StreamRt {
    /// Every operator's state, in plan order.
    fn snapshot_ops(&mut self) -> Result<Vec<Vec<RecordBatch>>> {
        self.root.operators_mut().into_iter().map(|o| o.snapshot()).collect()
    }

    /// Loads state taken by [`StreamRt::snapshot_ops`] from a stream of the same plan.
    fn restore_ops(&mut self, state: Vec<Vec<RecordBatch>>) -> Result<()> {
        let mut ops = self.root.operators_mut();
        if state.len() != ops.len() {
            return Err(Error::invalid_argument(format!(
                "the state holds {} operators, the plan has {}: it was taken from a different plan",
                state.len(),
                ops.len()
            )));
        }
        for (op, st) in ops.iter_mut().zip(state) {
            op.restore(st)?;
        }
        Ok(())
    }

    fn late_sink(schema: SchemaRef, sql: String) -> StreamRt {
        StreamRt {
            sql,
            materialized: false,
            inputs: vec![],
            root: Node::leaf(String::new()),
            time_col: None,
            kind: StreamKind::AppendOnly,
            output_schema: schema.clone(),
            logical_schema: schema,
            late_to: None,
            subscribers: vec![],
            mv: None,
            watermark: NO_WATERMARK,
            rows_out: 0,
            batches_out: 0,
            rows_late: 0,
            late_pairs: 0,
            failed: None,
            frozen_fingerprint: None,
            tick: None,
            is_late_sink: true,
            history: vec![],
            history_since: None,
            emitted_this_epoch: false,
        }
    }
}

/// A handle that pushes into one source. Not shareable across threads at once (`&mut self`);
/// use one writer per thread.
pub struct SourceWriter {
    db: Database,
    queue: Arc<SourceQueue>,
    interrupts: Arc<AtomicU64>,
    /// A connector's reader (see [`ConnectorOutput`]), not a user's writer.
    connector: bool,
}

/// Interrupts a write of one [`SourceWriter`] that is waiting for room in a full source queue;
/// that write returns CANCELLED with nothing applied, and the writer stays usable. Any thread.
#[derive(Clone)]
pub struct WriterInterrupt(Arc<AtomicU64>);

impl WriterInterrupt {
    /// Interrupts the write in progress, if any (a write that starts later is not affected).
    pub fn interrupt(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl SourceWriter {
    /// A handle that interrupts this writer's blocked writes from another thread.
    pub fn interrupter(&self) -> WriterInterrupt {
        WriterInterrupt(self.interrupts.clone())
    }

    pub fn source_name(&self) -> &str {
        &self.queue.name
    }
    pub fn schema(&self) -> SchemaRef {
        self.queue.schema.clone()
    }

    /// Queues one change: waits for room in the source queue, then hands it to the pipeline —
    /// on a `wal` database after its log record `rec` is durable.
    fn enqueue(&self, rec: impl FnOnce() -> Record, make: impl FnOnce(u64) -> Event) -> Result<()> {
        let generation = self.interrupts.load(Ordering::Acquire);
        self.db.check_open()?;
        let prepared = match &self.db.inner.durable {
            Some(d) if d.level == Durability::Wal => Some(durable::prepare(&rec())?),
            _ => None,
        };
        if self.queue.dropped.load(Ordering::Acquire) {
            return Err(Error::not_found(format!("source '{}' was dropped", self.queue.name)));
        }
        // A connector's reader always waits for room: a full queue pauses reading.
        let policy = if self.connector { QueueFullPolicy::Block } else { self.db.inner.config.queue_full };
        match policy {
            QueueFullPolicy::Fail => self.queue.permits_tx.try_send(()).map_err(|_| {
                Error::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "source '{}' queue is full (queue_full = fail); nothing of this push was applied",
                        self.queue.name
                    ),
                )
            })?,
            QueueFullPolicy::Block => loop {
                match self.queue.permits_tx.send_timeout((), Duration::from_millis(20)) {
                    Ok(()) => break,
                    Err(_) => {
                        self.db.check_open()?;
                        if self.interrupts.load(Ordering::Acquire) != generation {
                            return Err(Error::cancelled(format!(
                                "the write into '{}' was interrupted while its queue was full; nothing of it was applied",
                                self.queue.name
                            )));
                        }
                        if self.queue.dropped.load(Ordering::Acquire) {
                            return Err(Error::not_found(format!("source '{}' was dropped", self.queue.name)));
                        }
                    }
                }
            },
        }
        let res = match &self.db.inner.durable {
            None => self.db.inner.tx.send(make(0)).map_err(|_| Error::closed()),
            Some(d) => d.submit(&self.db.inner.tx, prepared, make),
        };
        if res.is_err() {
            // The change never reached the pipeline: give its queue slot back.
            let _ = self.queue.permits_rx.try_recv();
        }
        res
    }

    /// Pushes a batch: validated and converted to the source schema (all or nothing), then queued.
    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.write_at(batch, None)
    }

    /// A connector's write: `position` is its partition's position after this batch, recorded
    /// with it (in checkpoints and the log) so recovery resumes the connector there. A batch of
    /// no rows with a position moves the position only (a partition finished, rows skipped).
    fn write_at(&mut self, batch: RecordBatch, position: Option<Position>) -> Result<()> {
        self.db.check_open()?;
        let batch = conform(&self.queue.name, &self.queue.schema, &batch)?;
        if batch.num_rows() == 0 && position.is_none() {
            return Ok(());
        }
        self.push(batch, position)
    }

    fn push(&self, batch: RecordBatch, position: Option<Position>) -> Result<()> {
        let q = self.queue.clone();
        let logged = batch.clone();
        let logged_position = position.clone();
        self.enqueue(
            || Record::Batch { source: self.queue.name.clone(), position: logged_position, batch: logged },
            move |seq| Event::Batch { q, batch, seq, position },
        )
    }

    /// Advances the source's watermark to `ms` (epoch milliseconds); never moves it back.
    /// `i64::MAX` means end of input.
    pub fn watermark(&mut self, ms: i64) -> Result<()> {
        let us = if ms == i64::MAX { i64::MAX } else { ms.saturating_mul(1000) };
        self.push_watermark(us)
    }

    fn push_watermark(&self, us: i64) -> Result<()> {
        let q = self.queue.clone();
        self.enqueue(
            || Record::Watermark { source: self.queue.name.clone(), us },
            move |seq| Event::Watermark { q, us, seq },
        )
    }

    /// Marks the end of input: closes every window that depends only on finished sources.
    pub fn finish(&mut self) -> Result<()> {
        self.push_watermark(i64::MAX)
    }

    /// The source's current watermark in epoch milliseconds (after what has been processed).
    pub fn current_watermark(&self) -> Result<Option<i64>> {
        let eng = self.db.inner.engine.lock();
        let w = eng.sources.get(&self.queue.name).map(|s| s.watermark).unwrap_or(NO_WATERMARK);
        Ok((w != NO_WATERMARK).then(|| if w == i64::MAX { i64::MAX } else { w.div_euclid(1000) }))
    }

    /// Waits until everything pushed so far has been processed.
    pub fn flush(&mut self) -> Result<()> {
        self.db.flush()
    }
}

/// Where a connector's reader puts its batches: the source's queue, like a user's writer, but
/// always waiting for room and holding the database weakly (the reader thread does not keep a
/// dropped database alive).
struct ConnectorOutput {
    db: std::sync::Weak<DbInner>,
    queue: Arc<SourceQueue>,
}

impl ConnectorOutput {
    fn writer(&self) -> Result<SourceWriter> {
        let inner = self.db.upgrade().ok_or_else(Error::closed)?;
        Ok(SourceWriter {
            db: Database { inner },
            queue: self.queue.clone(),
            interrupts: Arc::new(AtomicU64::new(0)),
            connector: true,
        })
    }
}

impl connector::SourceOutput for ConnectorOutput {
    fn write(&mut self, batch: RecordBatch, position: Position) -> Result<()> {
        self.writer()?.write_at(batch, Some(position))
    }

    fn finish(&mut self) -> Result<()> {
        self.writer()?.finish()
    }

    fn stopped(&self) -> bool {
        self.queue.dropped.load(Ordering::Acquire)
            || self.db.upgrade().is_none_or(|inner| inner.closed.load(Ordering::Acquire))
    }

    fn fail(&mut self, error: Error) {
        if let Some(inner) = self.db.upgrade() {
            let _ = inner.tx.send(Event::SourceFailed { q: self.queue.clone(), error });
        }
    }
}

impl Durable {
    /// Orders one change among the logged ones and, when `rec` is given (level `wal`), returns
    /// once its record is durable and the change has been handed to the pipeline.
    fn submit(
        &self,
        tx: &Sender<Event>,
        rec: Option<durable::Prepared>,
        make: impl FnOnce(u64) -> Event,
    ) -> Result<()> {
        let mut st = self.log.lock();
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        let Some(p) = rec else {
            let seq = st.next_seq;
            st.next_seq += 1;
            return tx.send(make(seq)).map_err(|_| Error::closed());
        };
        let seq = Self::buffer(&mut st, &p);
        st.pending.push(make(seq));
        self.wait_durable(&mut st, seq, tx)
    }

    /// Numbers a prepared record and frames it into the group being gathered; its number.
    fn buffer(st: &mut LogState, p: &durable::Prepared) -> u64 {
        let seq = st.next_seq;
        st.next_seq += 1;
        if st.buf.is_empty() {
            st.buf_first = seq;
        }
        durable::frame(&mut st.buf, seq, p);
        seq
    }

    fn wait_durable(&self, st: &mut parking_lot::MutexGuard<'_, LogState>, seq: u64, tx: &Sender<Event>) -> Result<()> {
        loop {
            if st.durable >= seq {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.committing {
                self.log_cv.wait(st);
            } else {
                self.commit(st, tx);
            }
        }
    }

    /// Writes and fsyncs the buffered group with the lock released, then hands its events to
    /// the pipeline in order.
    fn commit(&self, st: &mut parking_lot::MutexGuard<'_, LogState>, tx: &Sender<Event>) {
        let upto = st.next_seq - 1;
        if st.buf.is_empty() {
            st.durable = st.durable.max(upto);
            return;
        }
        let buf = std::mem::take(&mut st.buf);
        let first = st.buf_first;
        let events = std::mem::take(&mut st.pending);
        let mut writer = st.writer.take();
        st.committing = true;
        let rotate = self.rotate.swap(false, Ordering::AcqRel);
        let res = parking_lot::MutexGuard::unlocked(st, || match &mut writer {
            Some(w) => w.append(first, &buf, rotate),
            None => Err(Error::closed()),
        });
        st.writer = writer;
        st.committing = false;
        match res {
            Ok(()) => {
                st.durable = st.durable.max(upto);
                for ev in events {
                    let _ = tx.send(ev);
                }
            }
            Err(e) => {
                st.failed = Some(Error::new(
                    e.kind(),
                    format!(
                        "{}; nothing of the changes in this commit was applied, and the database refuses changes until it is reopened",
                        e.message()
                    ),
                ));
            }
        }
        self.log_cv.notify_all();
    }

    /// Commits what is buffered and waits for commits in flight: afterwards every logged change
    /// is in the pipeline's queue.
    fn drain(&self, st: &mut parking_lot::MutexGuard<'_, LogState>, tx: &Sender<Event>) -> Result<()> {
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.committing {
                self.log_cv.wait(st);
            } else if !st.buf.is_empty() {
                self.commit(st, tx);
            } else {
                return Ok(());
            }
        }
    }

    /// Logs `rec` now and waits until it is durable; its sequence number.
    fn log_now(&self, st: &mut parking_lot::MutexGuard<'_, LogState>, tx: &Sender<Event>, rec: &Record) -> Result<u64> {
        let seq = Self::buffer(st, &durable::prepare(rec)?);
        self.wait_durable(st, seq, tx)?;
        Ok(seq)
    }
}

/// Takes a checkpoint on the pipeline thread, between two events: the catalog, every source's
/// table rows, retained rows, watermark and position, every stream's operator state, stored view
/// and this epoch's results. `Ok(None)`: a catalog statement is in progress, try again.
fn take_checkpoint(inner: &DbInner, eng: &mut Engine) -> Result<Option<CheckpointStats>> {
    let Some(d) = &inner.durable else {
        return Err(Error::invalid_state("checkpointing is not enabled: this database has durability 'memory'"));
    };
    let Some(_catalog) = d.ddl.try_read() else { return Ok(None) };
    let epoch = eng.epoch + 1;
    let mut objects: Vec<(String, Vec<u8>)> = vec![];
    objects.push(("catalog".into(), durable::encode_lists(&[vec![catalog::batch(eng)?]])?));
    let mut names: Vec<&String> = eng.sources.keys().collect();
    names.sort();
    for n in names {
        let s = &eng.sources[n];
        let table = match &s.table {
            Some(t) => t.snapshot()?,
            None => vec![],
        };
        let retained: Vec<RecordBatch> = s.retained.iter().cloned().collect();
        objects.push((format!("source:{n}"), durable::encode_lists(&[table, retained])?));
    }
    let order = eng.order.clone();
    for n in &order {
        let s = eng.streams.get_mut(n).expect("ordered");
        if !s.is_late_sink {
            let mut lists = s.snapshot_ops()?;
            lists.push(match &s.mv {
                Some(mv) => mv.state()?,
                None => vec![],
            });
            objects.push((format!("stream:{n}"), durable::encode_lists(&lists)?));
        }
        if s.history_since.is_some() {
            // Cleared only once the checkpoint is written: a failed one keeps this epoch's results.
            objects.push((format!("outputs:{n}"), durable::encode_lists(std::slice::from_ref(&s.history))?));
        }
    }
    // Phase one of the sinks' commit: what each wrote this epoch, made durable, named in the
    // checkpoint. A failed sink fails the checkpoint: it could not include that sink's results.
    let mut commits = vec![];
    for (n, k) in eng.sinks.iter_mut() {
        if let Some(e) = &k.failed {
            return Err(Error::invalid_state(format!(
                "{e}; checkpoints cannot include its results until it is dropped (DROP SINK {n}), and reopening the database resumes it from the last checkpoint"
            )));
        }
        let c = match k.sink.prepare_commit(epoch) {
            Ok(c) => c,
            Err(e) => {
                fail_sink(n, k, e);
                return Err(k.failed.clone().expect("failed"));
            }
        };
        let b = RecordBatch::try_from_iter(vec![(
            "committable",
            Arc::new(datafusion::arrow::array::BinaryArray::from_vec(vec![&c])) as ArrayRef,
        )])?;
        objects.push((format!("sink:{n}"), durable::encode_lists(&[vec![b]])?));
        commits.push((n.clone(), c));
    }
    let (stats, oldest_seq) =
        durable::write_checkpoint(&d.store, epoch, eng.applied_seq, objects, inner.state.as_deref(), d.retain)?;
    eng.epoch = epoch;
    // Phase two, now that the checkpoint is durable: publish. A failure here loses nothing (a
    // restart publishes the checkpoint's committables again), but the sink stops.
    for (n, c) in commits {
        if let Some(k) = eng.sinks.get_mut(&n)
            && let Err(e) = k.sink.commit(epoch, &c)
        {
            fail_sink(&n, k, e);
        }
    }
    for s in eng.streams.values_mut() {
        s.history.clear();
        s.emitted_this_epoch = false;
    }
    d.rotate.store(true, Ordering::Release);
    if oldest_seq > 0
        && let Err(e) = durable::truncate_log(&d.store.wal_dir(), oldest_seq)
    {
        log::warn!(target: "laminardb", "removing old log segments: {e}");
    }
    *d.last_checkpoint.lock() = Some(stats.clone());
    Ok(Some(stats))
}

/// Whether two fingerprints describe the same operators. The number of partitions (the
/// `workers` setting) may differ: every operator re-partitions its state when it loads it.
fn same_plan(a: &str, b: &str) -> bool {
    let strip =
        |s: &str| -> String { s.split(' ').filter(|w| !w.starts_with("partitions=")).collect::<Vec<_>>().join(" ") };
    strip(a) == strip(b)
}

/// What must match for a stream's saved operator state to load into its plan: the operators,
/// as EXPLAIN describes them.
fn fingerprint(s: &StreamRt) -> String {
    if let Some(f) = &s.frozen_fingerprint {
        return f.clone();
    }
    let mut lines = vec![];
    s.root.explain(0, &mut lines);
    lines.join("\n")
}

/// A statement's definition without IF NOT EXISTS / OR REPLACE and with layout normalised, to
/// tell whether two CREATEs define the same object.
fn definition_key(text: &str) -> String {
    match sql::parse_one(text).map(|p| p.statement) {
        Ok(Statement::CreateSource(mut c)) => {
            c.if_not_exists = false;
            c.or_replace = false;
            c.columns_sql = c.columns_sql.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{c:?}")
        }
        Ok(Statement::CreateStream(c)) => format!(
            "{} {} {:?} {:?} {:?} {:?} {}",
            c.name, c.materialized, c.emit, c.allowed_lateness, c.late_data_to, c.state_ttl, c.query
        ),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// The catalog of a checkpoint as one Arrow batch: one row per object, in creation order
/// (sources first; a stream only reads what exists before it).
mod catalog {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;

    pub(super) struct Row {
        pub kind: String,
        pub name: String,
        pub sql: String,
        pub fingerprint: String,
        pub watermark: i64,
        pub rows_in: u64,
        pub batches_in: u64,
        pub rows_late: u64,
        pub rows_out: u64,
        pub batches_out: u64,
        pub late_pairs: u64,
        pub positions: Positions,
        pub history_since: Option<u64>,
        /// A failed stream's error: it stays failed after recovery (its state stopped there).
        pub failed: Option<(String, String)>,
    }

    pub(super) fn read(b: &RecordBatch) -> Result<Vec<Row>> {
        let col =
            |n: &str| b.column_by_name(n).ok_or_else(|| Error::invalid_data(format!("catalog column '{n}' missing")));
        let (kind, name, sql, fp) = (
            col("kind")?.as_string::<i32>(),
            col("name")?.as_string::<i32>(),
            col("sql")?.as_string::<i32>(),
            col("fingerprint")?.as_string::<i32>(),
        );
        let int = |n: &str| -> Result<Vec<Option<i64>>> { Ok(col(n)?.as_primitive::<Int64Type>().iter().collect()) };
        let (wm, ri, bi, rl, ro, bo, lp) = (
            int("watermark")?,
            int("rows_in")?,
            int("batches_in")?,
            int("rows_late")?,
            int("rows_out")?,
            int("batches_out")?,
            int("late_pairs")?,
        );
        // Connector positions: `positions` (partition → offset); a catalog of an older version
        // has the NEXMARK generator's event number in `position` (one partition, "0").
        let mut positions = vec![Positions::new(); b.num_rows()];
        if let Some(c) = b.column_by_name("positions") {
            let c = c.as_string::<i32>();
            for (i, p) in positions.iter_mut().enumerate() {
                if !c.is_null(i) {
                    *p = connector::decode_positions(c.value(i))?;
                }
            }
        } else if b.column_by_name("position").is_some() {
            for (i, p) in int("position")?.into_iter().enumerate() {
                if let Some(p) = p {
                    positions[i].insert("0".into(), p.to_string());
                }
            }
        }
        let hs = int("history_since")?;
        let (fk, fm) = (col("failed_kind")?.as_string::<i32>(), col("failed")?.as_string::<i32>());
        let u = |v: Option<i64>| v.unwrap_or(0) as u64;
        Ok((0..b.num_rows())
            .map(|i| Row {
                kind: kind.value(i).to_string(),
                name: name.value(i).to_string(),
                sql: sql.value(i).to_string(),
                fingerprint: fp.value(i).to_string(),
                watermark: wm[i].unwrap_or(NO_WATERMARK),
                rows_in: u(ri[i]),
                batches_in: u(bi[i]),
                rows_late: u(rl[i]),
                rows_out: u(ro[i]),
                batches_out: u(bo[i]),
                late_pairs: u(lp[i]),
                positions: std::mem::take(&mut positions[i]),
                history_since: hs[i].map(|p| p as u64),
                failed: (!fm.is_null(i)).then(|| (fk.value(i).to_string(), fm.value(i).to_string())),
            })
            .collect())
    }

    pub(super) fn batch(eng: &Engine) -> Result<RecordBatch> {
        let mut rows: Vec<Row> = vec![];
        let mut names: Vec<&String> = eng.sources.keys().collect();
        names.sort();
        for n in names {
            let s = &eng.sources[n];
            rows.push(Row {
                kind: if s.table.is_some() { "table" } else { "source" }.into(),
                name: n.clone(),
                sql: s.sql.clone(),
                fingerprint: String::new(),
                watermark: s.watermark,
                rows_in: s.rows_in,
                batches_in: s.batches_in,
                rows_late: s.rows_late,
                rows_out: 0,
                batches_out: 0,
                late_pairs: 0,
                positions: s.positions.clone(),
                history_since: None,
                failed: None,
            });
        }
        for n in &eng.order {
            let s = &eng.streams[n];
            rows.push(Row {
                kind: if s.is_late_sink {
                    "late"
                } else if s.materialized {
                    "view"
                } else {
                    "stream"
                }
                .into(),
                name: n.clone(),
                sql: s.sql.clone(),
                fingerprint: if s.is_late_sink { String::new() } else { fingerprint(s) },
                watermark: s.watermark,
                rows_in: 0,
                batches_in: 0,
                rows_late: s.rows_late,
                rows_out: s.rows_out,
                batches_out: s.batches_out,
                late_pairs: s.late_pairs,
                positions: Positions::new(),
                history_since: s.history_since,
                failed: s.failed.as_ref().map(|e| (e.kind().name().to_string(), e.message().to_string())),
            });
        }
        // Sinks last: each reads a stream or source above it.
        for (n, k) in &eng.sinks {
            rows.push(Row {
                kind: "sink".into(),
                name: n.clone(),
                sql: k.sql.clone(),
                fingerprint: String::new(),
                watermark: NO_WATERMARK,
                rows_in: 0,
                batches_in: 0,
                rows_late: 0,
                rows_out: k.rows_out,
                batches_out: k.batches_out,
                late_pairs: 0,
                positions: Positions::new(),
                history_since: None,
                failed: None,
            });
        }
        let strs = |f: &dyn Fn(&Row) -> String| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
        let ints = |f: &dyn Fn(&Row) -> Option<i64>| Arc::new(Int64Array::from_iter(rows.iter().map(f))) as ArrayRef;
        Ok(RecordBatch::try_from_iter(vec![
            ("kind", strs(&|r| r.kind.clone())),
            ("name", strs(&|r| r.name.clone())),
            ("sql", strs(&|r| r.sql.clone())),
            ("fingerprint", strs(&|r| r.fingerprint.clone())),
            ("watermark", ints(&|r| Some(r.watermark))),
            ("rows_in", ints(&|r| Some(r.rows_in as i64))),
            ("batches_in", ints(&|r| Some(r.batches_in as i64))),
            ("rows_late", ints(&|r| Some(r.rows_late as i64))),
            ("rows_out", ints(&|r| Some(r.rows_out as i64))),
            ("batches_out", ints(&|r| Some(r.batches_out as i64))),
            ("late_pairs", ints(&|r| Some(r.late_pairs as i64))),
            ("positions", strs(&|r| connector::encode_positions(&r.positions))),
            ("history_since", ints(&|r| r.history_since.map(|p| p as i64))),
            (
                "failed_kind",
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.failed.as_ref().map(|f| f.0.clone()))))
                    as ArrayRef,
            ),
            (
                "failed",
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.failed.as_ref().map(|f| f.1.clone()))))
                    as ArrayRef,
            ),
        ])?)
    }
}

fn input_watermark(eng: &Engine, name: &str) -> i64 {
    if let Some(s) = eng.sources.get(name) {
        s.watermark
    } else if let Some(s) = eng.streams.get(name) {
        s.watermark
    } else {
        NO_WATERMARK
    }
}

/// The watermark of a query: the minimum over its inputs, leaving out idle sources (DESIGN §3:
/// a source with `idle_timeout` stops holding it back after that long without data) unless every
/// input is idle.
fn combined_watermark(eng: &Engine, inputs: &[String]) -> i64 {
    let active =
        inputs.iter().filter(|i| !eng.sources.get(*i).is_some_and(|s| s.idle)).map(|i| input_watermark(eng, i)).min();
    active.or_else(|| inputs.iter().map(|i| input_watermark(eng, i)).min()).unwrap_or(NO_WATERMARK)
}

/// The next time (ms) a source could become idle.
fn idle_deadline(eng: &Engine) -> Option<i64> {
    eng.sources.values().filter(|s| !s.idle).filter_map(|s| s.idle_timeout_ms.map(|t| s.last_active_ms + t)).min()
}

/// A source had data or a watermark at `now`: it is active again.
fn mark_active(eng: &mut Engine, source: &str, now: i64) {
    if let Some(s) = eng.sources.get_mut(source) {
        s.last_active_ms = now;
        s.idle = false;
    }
}

/// Marks sources idle whose `idle_timeout` has passed without data, and lets what reads them move
/// on.
fn check_idle(inner: &DbInner, eng: &mut Engine, now: i64) {
    let due: Vec<String> = eng
        .sources
        .iter()
        .filter(|(_, s)| !s.idle && s.idle_timeout_ms.is_some_and(|t| now - s.last_active_ms >= t))
        .map(|(n, _)| n.clone())
        .collect();
    for n in due {
        if let Some(s) = eng.sources.get_mut(&n) {
            s.idle = true;
        }
        guarded(inner, eng, &n, |inner, eng| propagate_watermark(inner, eng, &n));
    }
}

// ---------------------------------------------------------------- the driver

fn driver_loop(db: std::sync::Weak<DbInner>, rx: Receiver<Event>, start_ms: i64) {
    // With a manual clock, processing time moves only when its Tick event is processed, so events
    // pushed before an advance are processed at the earlier time.
    let mut manual_now = start_ms;
    loop {
        let timeout = {
            let Some(inner) = db.upgrade() else { return };
            let eng = inner.engine.lock();
            let next = eng
                .streams
                .values()
                .filter_map(|s| s.tick.map(|t| t.1))
                .chain(idle_deadline(&eng))
                .chain(eng.next_checkpoint_ms)
                .min();
            match (next, inner.clock.is_manual()) {
                (Some(due), false) => Some(Duration::from_millis((due - inner.clock.now_ms()).max(0) as u64)),
                _ => None,
            }
        };
        let ev = match timeout {
            Some(t) => match rx.recv_timeout(t) {
                Ok(ev) => Some(ev),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(_) => return,
            },
            None => match rx.recv() {
                Ok(ev) => Some(ev),
                Err(_) => return,
            },
        };
        let Some(inner) = db.upgrade() else { return };
        let mut eng = inner.engine.lock();
        match ev {
            Some(Event::Shutdown) => return,
            Some(Event::Sync(ack)) => {
                drop(eng);
                let _ = ack.send(());
                continue;
            }
            Some(Event::Batch { q, batch, seq, position }) => {
                let _ = q.permits_rx.try_recv();
                eng.applied_seq = eng.applied_seq.max(seq);
                if !q.dropped.load(Ordering::Acquire) {
                    eng.events += 1;
                    let now = if inner.clock.is_manual() { manual_now } else { inner.clock.now_ms() };
                    mark_active(&mut eng, &q.name, now);
                    guarded(&inner, &mut eng, &q.name, |inner, eng| {
                        on_source_batch(inner, eng, &q.name, batch, position)
                    });
                }
            }
            Some(Event::SourceFailed { q, error }) if !q.dropped.load(Ordering::Acquire) => {
                fail_readers(&mut eng, &q.name, error);
            }
            Some(Event::SourceFailed { .. }) => {}
            Some(Event::Checkpoint(reply)) => match take_checkpoint(&inner, &mut eng) {
                Ok(Some(stats)) => {
                    let _ = reply.send(Ok(stats));
                }
                Ok(None) => {
                    // A catalog statement is between its run and its log record: ask again
                    // behind the events it waits for.
                    let _ = inner.tx.send(Event::Checkpoint(reply));
                    drop(eng);
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Some(Event::Watermark { q, us: wm, seq }) => {
                let _ = q.permits_rx.try_recv();
                eng.applied_seq = eng.applied_seq.max(seq);
                if !q.dropped.load(Ordering::Acquire) {
                    eng.events += 1;
                    let now = if inner.clock.is_manual() { manual_now } else { inner.clock.now_ms() };
                    mark_active(&mut eng, &q.name, now);
                    guarded(&inner, &mut eng, &q.name, |inner, eng| advance_source_watermark(inner, eng, &q.name, wm));
                }
            }
            Some(Event::Tick(now)) => manual_now = manual_now.max(now),
            None => {}
        }
        let now = if inner.clock.is_manual() { manual_now } else { inner.clock.now_ms() };
        run_ticks(&inner, &mut eng, now);
        check_idle(&inner, &mut eng, now);
        if let (Some(due), Some(d)) = (eng.next_checkpoint_ms, &inner.durable)
            && now >= due
            && !inner.recovering.load(Ordering::Acquire)
        {
            match take_checkpoint(&inner, &mut eng) {
                Ok(Some(_)) => eng.next_checkpoint_ms = d.interval_ms.map(|i| now + i),
                Ok(None) => eng.next_checkpoint_ms = Some(now + 5),
                Err(e) => {
                    log::warn!(target: "laminardb", "periodic checkpoint failed: {e}; the log keeps every change, retrying after the interval");
                    eng.next_checkpoint_ms = d.interval_ms.map(|i| now + i);
                }
            }
        }
        release_and_send_pending(eng, &inner.closed);
    }
}

/// Releases the engine lock, then waits for slow `on_full = block` subscribers, so they (and
/// everyone else) can still call into the database meanwhile.
/// A name a user can write, read back and pass through C: not empty, no NUL character.
fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::plan(format!("a {what} name must not be empty")));
    }
    if name.contains('\0') {
        return Err(Error::plan(format!(
            "the {what} name '{}' contains a NUL character",
            crate::error::clip(&name.replace('\0', "\\0"))
        )));
    }
    Ok(())
}

/// Drops the pipeline's end of every cancelled or dropped subscription, freeing its buffer. Run
/// at each subscribe and metrics read, besides each emission, so that an idle stream does not
/// keep them until it next emits.
fn prune_subscribers(eng: &mut Engine) {
    for st in eng.streams.values_mut() {
        st.subscribers.retain(|x| !x.is_gone());
    }
}

/// Keeps the last `retention` rows of a source: whole batches dropped from the front, then the
/// oldest remaining batch cut to the rows still wanted and copied (a slice alone would keep the
/// whole batch's memory).
fn trim_retained(retained: &mut VecDeque<RecordBatch>, rows: &mut usize, retention: usize) {
    while *rows > retention {
        let Some(front) = retained.front() else { return };
        let excess = *rows - retention;
        if front.num_rows() <= excess {
            *rows -= front.num_rows();
            retained.pop_front();
            continue;
        }
        let keep = front.slice(excess, front.num_rows() - excess);
        match datafusion::arrow::compute::concat_batches(&keep.schema(), [&keep]) {
            Ok(copy) => {
                *rows -= excess;
                retained[0] = copy;
            }
            Err(_) => return, // cannot happen (one batch, its own schema); keep the rows then
        }
    }
}

/// A cast for SQL INSERT values that refuses what a push would refuse: a value that does not
/// parse or fit ('abc' or an overflowing literal into BIGINT, 'not a time' into TIMESTAMP) is an
/// error instead of NULL, and so is a fraction into an integer column (1.9 into BIGINT).
fn strict_cast(col: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    use datafusion::arrow::compute::{CastOptions, cast_with_options};
    let from = col.data_type();
    if from.is_floating() && to.is_integer() {
        let f = datafusion::arrow::compute::cast(col, &DataType::Float64)?;
        let f = f.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        if let Some((row, v)) =
            f.iter().enumerate().find_map(|(i, v)| v.filter(|v| v.fract() != 0.0 || !v.is_finite()).map(|v| (i, v)))
        {
            return Err(Error::invalid_data(format!("row {row}: {v} is not a whole number; {to} holds integers only")));
        }
    }
    let out = cast_with_options(col, to, &CastOptions { safe: false, ..Default::default() })
        .map_err(|e| Error::invalid_data(e.to_string()))?;
    if out.null_count() > col.null_count() {
        let row = (0..out.len()).find(|&i| out.is_null(i) && !col.is_null(i)).unwrap_or(0);
        return Err(Error::invalid_data(format!("row {row}: the value does not convert to {to}")));
    }
    Ok(out)
}

fn release_and_send_pending(mut eng: parking_lot::MutexGuard<'_, Engine>, closed: &AtomicBool) {
    let pending = std::mem::take(&mut eng.pending);
    drop(eng);
    if !pending.is_empty() {
        send_pending(pending, closed);
    }
}

/// Fails every stream that reads `source` (and has not failed already).
fn fail_readers(eng: &mut Engine, source: &str, e: Error) {
    let names: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].inputs.iter().any(|i| i == source)).cloned().collect();
    for n in names {
        let s = eng.streams.get_mut(&n).expect("listed");
        if s.failed.is_none() {
            fail_stream(s, &n, e.clone());
        }
    }
}

/// Runs one event; a panic (a bug) fails the streams reading the source instead of the pipeline.
fn guarded(inner: &DbInner, eng: &mut Engine, source: &str, f: impl FnOnce(&DbInner, &mut Engine)) {
    let r = crate::panic_guard::caught(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(inner, eng))));
    if let Err(p) = r {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        fail_readers(eng, source, Error::internal(format!("internal error (a bug in LaminarDB): {msg}")));
    }
}

/// Applies one batch of a source (`position`: a connector's, of the batch's partition).
fn on_source_batch(inner: &DbInner, eng: &mut Engine, source: &str, batch: RecordBatch, position: Option<Position>) {
    let retention = inner.config.source_retention;
    let Some(s) = eng.sources.get_mut(source) else { return };
    // The highest event time of the batch, less the delay.
    let batch_wm = s.time.and_then(|(col, scale, delay)| {
        let (times, nulls) = event_times(batch.column(col), scale).ok()?;
        let max = times
            .iter()
            .enumerate()
            .filter(|(i, _)| nulls.as_ref().is_none_or(|n| n.is_valid(*i)))
            .map(|(_, t)| *t)
            .max()?;
        Some(max.saturating_sub(delay))
    });
    // The watermark this batch implies; applied after the batch is processed. A connector's
    // source holds per-partition watermarks: the source's is the minimum over the partitions
    // still being read (the highest of the finished ones once none is left).
    let new_wm = match position {
        None => batch_wm,
        Some(p) => {
            if let Some(w) = batch_wm {
                let e = s.partition_wm.entry(p.partition.clone()).or_insert(NO_WATERMARK);
                *e = (*e).max(w);
            }
            if p.finished
                && let Some(w) = s.partition_wm.remove(&p.partition)
            {
                s.finished_wm = s.finished_wm.max(w);
            }
            s.positions.insert(p.partition.clone(), p.recorded().to_string());
            let wm = s.partition_wm.values().copied().min().unwrap_or(s.finished_wm);
            (s.time.is_some() && wm != NO_WATERMARK).then_some(wm)
        }
    };
    if batch.num_rows() > 0 {
        s.rows_in += batch.num_rows() as u64;
        s.batches_in += 1;
        if let Some(t) = &mut s.table {
            // A table turns upserts into its changelog: −old (when the key had a row), +new.
            match t.upsert(&batch) {
                Ok(Some(changes)) => feed(inner, eng, source, &[changes]),
                Ok(None) => {}
                Err(e) => fail_readers(eng, source, e),
            }
        } else {
            if retention > 0 {
                s.retained_rows += batch.num_rows();
                s.retained.push_back(batch.clone());
                trim_retained(&mut s.retained, &mut s.retained_rows, retention);
            }
            feed(inner, eng, source, &[batch]);
        }
    }
    if let Some(wm) = new_wm {
        advance_source_watermark(inner, eng, source, wm);
    }
}

/// Feeds `batches` (output of `from`) to every stream that reads `from`, recursively.
fn feed(inner: &DbInner, eng: &mut Engine, from: &str, batches: &[RecordBatch]) {
    if batches.is_empty() {
        return;
    }
    write_sinks(inner, eng, from, batches);
    let readers: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].inputs.iter().any(|i| i == from)).cloned().collect();
    for name in readers {
        let mut outputs = vec![];
        let mut late = LateRows::default();
        {
            let s = eng.streams.get_mut(&name).expect("listed");
            if s.failed.is_some() {
                continue;
            }
            let mut ctx = OpCtx {
                watermark: s.watermark,
                late: &mut late,
                pool: inner.pool.as_ref(),
                memory_limit: inner.config.memory_limit,
            };
            let res = (|| -> Result<()> {
                for b in batches {
                    outputs.extend(s.root.process(from, b, &mut ctx)?);
                }
                Ok(())
            })();
            if let Err(e) = res {
                fail_stream(s, &name, e);
                continue;
            }
        }
        after_run(inner, eng, &name, from, outputs, late);
    }
}

/// Writes `batches` (output of `from`) into every sink of `from`. On a database with checkpoints
/// they belong to the open epoch and are published once its checkpoint is durable; without
/// checkpoints each write is committed at once.
fn write_sinks(inner: &DbInner, eng: &mut Engine, from: &str, batches: &[RecordBatch]) {
    let epoch = eng.epoch + 1;
    for (name, k) in eng.sinks.iter_mut().filter(|(_, k)| k.input == from && k.failed.is_none()) {
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            let res = if inner.durable.is_some() {
                k.sink.write(epoch, b)
            } else {
                k.writes += 1;
                let e = k.writes;
                k.sink.write(e, b).and_then(|_| k.sink.prepare_commit(e)).and_then(|c| k.sink.commit(e, &c))
            };
            if let Err(e) = res {
                fail_sink(name, k, e);
                break;
            }
            k.rows_out += b.num_rows() as u64;
            k.batches_out += 1;
        }
    }
}

/// A sink failed: it writes nothing more and every checkpoint fails until it is dropped, so the
/// results it did not write are not lost (a restart from the last checkpoint produces them again).
fn fail_sink(name: &str, k: &mut SinkRt, e: Error) {
    let e = e.context(format!("sink '{name}' ({}) failed", k.describe));
    log::warn!(target: "laminardb", "{e}");
    k.failed = Some(e);
}

/// DROP SINK (or the drop of its input): discards what it staged and did not commit.
fn drop_sink(name: &str, mut k: SinkRt) {
    if let Err(e) = k.sink.abort() {
        log::warn!(target: "laminardb", "dropping sink '{name}': {e}");
    }
}

/// The names called as table functions in `q` (`FROM f(1)`): DataFusion lists them among the
/// relations, but a missing one is a missing function, not a missing table.
fn table_function_names(q: &datafusion::sql::sqlparser::ast::Query) -> Vec<String> {
    use datafusion::sql::sqlparser::ast::{TableFactor, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Names(Vec<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, args: Some(_), .. } = t
                && let Some(id) = name.0.last().and_then(|p| p.as_ident())
            {
                self.0.push(id.value.clone());
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(vec![]);
    let _ = q.visit(&mut names);
    names.0
}

/// Marks the stream failed: its subscribers get `e` (after what they have buffered), and every
/// later use of the stream fails with it. The error names the stream ([`Error::failed_stream`]).
fn fail_stream(s: &mut StreamRt, name: &str, e: Error) {
    let e = e.context(format!("stream '{name}' failed")).with_failed_stream(name);
    for sub in s.subscribers.drain(..) {
        sub.fail(e.clone()); // reported after the batches already buffered
    }
    s.failed = Some(e);
    // A failed stream never runs again: free its operators' state now, not at DROP. Its plan's
    // fingerprint is kept for checkpoints; state spilled to RocksDB stays until DROP, which finds
    // it through the operators.
    if s.root.operators().iter().all(|o| o.spilled_groups() == 0) {
        s.frozen_fingerprint = Some(fingerprint(s));
        s.root = Node::leaf(String::new());
    }
}

/// Delivers a stream's output, accounts late rows, checks the memory limit, feeds dependents.
fn after_run(
    inner: &DbInner,
    eng: &mut Engine,
    name: &str,
    source_of_input: &str,
    outputs: Vec<RecordBatch>,
    late: LateRows,
) {
    let late_target = {
        let s = eng.streams.get_mut(name).expect("exists");
        s.rows_late += late.rows;
        s.late_pairs += late.pairs;
        if let Some(limit) = inner.config.memory_limit {
            let ops = s.root.operators();
            let used: usize = ops.iter().map(|o| o.state_size()).sum();
            if used > limit {
                let op = ops.iter().max_by_key(|o| o.state_size()).map(|o| o.explain()).unwrap_or_default();
                let e = Error::new(
                    ErrorKind::ResourceExhausted,
                    format!("state of {used} bytes exceeds memory_limit {limit} in operator {op}"),
                );
                fail_stream(s, name, e);
                return;
            }
        }
        s.late_to.clone()
    };
    if late.rows > 0
        && let Some(src) = eng.sources.get_mut(source_of_input)
    {
        src.rows_late += late.rows;
    }
    if let Some(t) = late_target
        && !late.batches.is_empty()
    {
        emit(inner, eng, &t, late.batches);
    }
    emit(inner, eng, name, outputs);
}

/// Sends one emission of `name` to its subscribers and MV store, then to the streams reading it.
fn emit(inner: &DbInner, eng: &mut Engine, name: &str, outputs: Vec<RecordBatch>) {
    let outputs: Vec<RecordBatch> = outputs.into_iter().filter(|b| b.num_rows() > 0).collect();
    if outputs.is_empty() {
        return;
    }
    let batch = if outputs.len() == 1 {
        outputs.into_iter().next().expect("one")
    } else {
        match datafusion::arrow::compute::concat_batches(&outputs[0].schema(), &outputs) {
            Ok(b) => b,
            Err(e) => {
                let s = eng.streams.get_mut(name).expect("exists");
                fail_stream(s, name, e.into());
                return;
            }
        }
    };
    {
        let Engine { streams, pending, epoch, .. } = &mut *eng;
        let Some(s) = streams.get_mut(name) else { return };
        s.rows_out += batch.num_rows() as u64;
        s.batches_out += 1;
        if let Some(mv) = &mut s.mv
            && let Err(e) = mv.apply(&batch)
        {
            fail_stream(s, name, e);
            return;
        }
        if inner.durable.is_some() {
            s.emitted_this_epoch = true;
            if s.history_since.is_some() {
                s.history.push(batch.clone());
            }
        }
        let epoch = *epoch + 1;
        s.subscribers.retain(|sub| matches!(sub.deliver((epoch, batch.clone()), pending), Delivered::Ok));
    }
    // Dependents read the logical columns; changelog weights stay with the batch.
    feed(inner, eng, name, &[batch]);
}

fn advance_source_watermark(inner: &DbInner, eng: &mut Engine, source: &str, wm: i64) {
    let Some(s) = eng.sources.get_mut(source) else { return };
    if wm <= s.watermark {
        return;
    }
    s.watermark = wm;
    propagate_watermark(inner, eng, source);
}

/// Recomputes the watermark of every stream reading `from`; runs window closes where it advanced.
fn propagate_watermark(inner: &DbInner, eng: &mut Engine, from: &str) {
    let readers: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].inputs.iter().any(|i| i == from)).cloned().collect();
    for name in readers {
        let wm = combined_watermark(eng, &eng.streams[&name].inputs);
        let mut outputs = vec![];
        let mut late = LateRows::default();
        {
            let s = eng.streams.get_mut(&name).expect("listed");
            if wm <= s.watermark || s.failed.is_some() {
                continue;
            }
            let mut ctx = OpCtx {
                watermark: s.watermark,
                late: &mut late,
                pool: inner.pool.as_ref(),
                memory_limit: inner.config.memory_limit,
            };
            let res = s.root.on_watermark(wm, &mut ctx).map(|o| outputs.extend(o));
            s.watermark = wm;
            if let Err(e) = res {
                fail_stream(s, &name, e);
                continue;
            }
        }
        after_run(inner, eng, &name, from, outputs, late);
        propagate_watermark(inner, eng, &name);
    }
}

fn run_ticks(inner: &DbInner, eng: &mut Engine, now: i64) {
    let due: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].tick.is_some_and(|t| t.1 <= now)).cloned().collect();
    for name in due {
        let mut outputs = vec![];
        let mut late = LateRows::default();
        {
            let s = eng.streams.get_mut(&name).expect("listed");
            let (period, mut next) = s.tick.expect("due");
            while next <= now {
                next += period;
            }
            s.tick = Some((period, next));
            if s.failed.is_some() {
                continue;
            }
            let mut ctx = OpCtx {
                watermark: s.watermark,
                late: &mut late,
                pool: inner.pool.as_ref(),
                memory_limit: inner.config.memory_limit,
            };
            let res = s.root.on_tick(&mut ctx).map(|o| outputs.extend(o));
            if let Err(e) = res {
                fail_stream(s, &name, e);
                continue;
            }
        }
        let src = eng.streams[&name].inputs.first().cloned().unwrap_or_default();
        after_run(inner, eng, &name, &src, outputs, late);
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.tx.send(Event::Shutdown);
    }
}
