//! The database handle: [`Database`], the public API, and what its calls delegate to. A pushed
//! batch takes this path, one file per step:
//!
//! ```text
//!  writer.rs   SourceWriter::write ─validate─► permit (bounded per source)
//!  wal.rs        └─► (durable databases) group commit: framed, written and fsynced with others
//!  driver.rs         └─► driver queue ─► driver thread: for each stream reading the source, in
//!                        creation order: operators → emission ─► subscribers (bounded), stored
//!                        view, sinks, downstream streams; watermarks close windows
//! ```
//! One driver thread per database applies events in push order, so emission points are
//! deterministic: the output of one pushed batch, then the output of the watermark it advanced.
//! Keyed operator state is partitioned over the worker pool (`workers`). Beside the path:
//! `engine.rs` (the state the driver owns), `ddl.rs` (catalog statements), `query.rs` (one-shot
//! SELECT, INSERT, DELETE), `checkpoint.rs` and `catalog.rs` (taking a checkpoint),
//! `recovery.rs` (reopening), `metrics.rs`, `clock.rs`.

mod catalog;
mod checkpoint;
mod clock;
mod ddl;
mod driver;
mod engine;
mod group;
mod metrics;
mod query;
mod recovery;
mod telemetry;
mod wal;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;

use crate::config::{Config, Durability};
use crate::connector::{self, Positions};
use crate::durable::{self, CheckpointStats, Record, Store};
use crate::error::{Error, Result, nearest_name};
use crate::operator::NO_WATERMARK;
use crate::runtime::subscription::{PushEvent, PushSubscription, SubscribeOptions, Subscription, new_pair};
use crate::sql::{self, Statement};

use checkpoint::*;
use clock::*;
pub use clock::{Clock, ManualClock};
pub use ddl::ObjectInfo;
use driver::*;
use engine::*;
pub use group::GroupPartition;
pub use metrics::{Metrics, OperatorMetrics, SinkMetrics, SourceMetrics, StreamMetrics};
pub use recovery::RecoveryInfo;
pub use telemetry::{CheckpointMetrics, Histogram};
use wal::*;
use writer::*;
pub use writer::{SourceWriter, WriterInterrupt};

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
        if config.shared_dir.is_some() {
            return group::open_member(path, config, clock);
        }
        Self::open_impl(path, config, clock, None, None)
    }

    /// Opens a database; `group`: the member a group-mode database is (its engine holds the
    /// catalog only); `task`: the partition a member's task owns.
    pub(super) fn open_impl(
        path: &str,
        config: Config,
        clock: Arc<dyn Clock>,
        group: Option<Arc<group::Group>>,
        task: Option<group::TaskScope>,
    ) -> Result<Database> {
        if path.is_empty() {
            return Err(Error::invalid_argument(
                "the path is empty: open ':memory:' for an in-memory database, or a directory",
            ));
        }
        // With `storage_dir`, a relative path names the database inside it (the established
        // meaning of `open("name", storage_dir=…)`); an absolute path stands alone.
        let dir = match (path, &config.storage_dir) {
            (":memory:", None) => None,
            (":memory:", Some(d)) => Some(d.clone()),
            (p, Some(d)) if std::path::Path::new(p).is_relative() => {
                Some(std::path::Path::new(d).join(p).to_string_lossy().into_owned())
            }
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
            functions: parking_lot::RwLock::new(config.functions.clone()),
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
            telemetry: telemetry::Telemetry::new(),
            group,
            task,
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
        if let Err(e) = db.start_metrics_server() {
            db.close();
            return Err(e);
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

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Group mode: the rows are in the tasks of the partitions this member owns, which move.
    fn not_in_group(&self, what: &str) -> Result<()> {
        if self.inner.group.is_some() {
            return Err(Error::invalid_state(format!(
                "group mode (shared_dir): {what} is not supported on a group member; its rows live in the tasks of the partitions it owns, which move between members (read results from the sinks' topics)"
            )));
        }
        Ok(())
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
        if let Some(g) = &self.inner.group
            && !self.is_closed()
        {
            g.shutdown(false);
        }
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
        if let Some(g) = &self.inner.group
            && !self.is_closed()
        {
            g.shutdown(true);
        }
        self.close_without_checkpoint();
    }

    fn close_without_checkpoint(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.inner.tx.send(Event::Shutdown);
        self.stop_metrics_server();
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
        if let Some(g) = &self.inner.group {
            return g.execute(self, stmts);
        }
        let res = self.execute_statements(stmts);
        let started = self.start_deferred_readers();
        let last = res?;
        started?;
        Ok(last)
    }

    /// Runs statements like [`Database::execute`], without starting the readers of the sources
    /// they create (a group's task starts them once its whole pipeline is there).
    pub(super) fn execute_deferred(&self, sql_text: &str) -> Result<ExecuteResult> {
        self.check_open()?;
        self.execute_statements(sql::parse_sql(sql_text)?)
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
            Statement::ShowPartitions => Err(Error::invalid_state(
                "SHOW PARTITIONS lists the partitions a consumer group's member owns; this database was opened without 'shared_dir' (group mode)",
            )),
            Statement::ShowFunctions => {
                let list = self.inner.functions.read().list();
                let b = RecordBatch::try_from_iter(vec![
                    ("name", Arc::new(StringArray::from_iter_values(list.iter().map(|f| f.0.as_str()))) as ArrayRef),
                    ("kind", Arc::new(StringArray::from_iter_values(list.iter().map(|f| f.1))) as ArrayRef),
                    (
                        "signature",
                        Arc::new(StringArray::from_iter_values(list.iter().map(|f| f.2.as_str()))) as ArrayRef,
                    ),
                ])?;
                Ok(ExecuteResult { batches: vec![b], ..Default::default() })
            }
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
            Statement::ExplainAnalyze(name) => self.explain_analyze(&name),
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

    /// Runs an ad-hoc query over snapshots of sources (their retained rows) and materialized views.
    pub fn query(&self, sql_text: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.query_with_schema(sql_text)?.1)
    }

    /// Like [`Database::query`], with the result's schema (known even when no row matched).
    pub fn query_with_schema(&self, sql_text: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.check_open()?;
        self.not_in_group("SELECT")?;
        match sql::parse_one(sql_text)?.statement {
            Statement::Query(q) => self.run_query(*q),
            _ => Err(Error::invalid_argument("query() takes a SELECT; use execute() for other statements")),
        }
    }

    /// Registers a scalar function (DataFusion's `ScalarUDF`) that statements from now on can call
    /// by its lowercase `name()`: continuous queries and ad-hoc SQL alike. Streams already
    /// created keep the function they were planned with. A durable database replays its
    /// streams' statements when it reopens, before this can be called: register their
    /// functions in the [`Config`] ([`Config::register_scalar_function`]); a stream whose
    /// function is missing then fails the open with `PLAN` naming it.
    pub fn register_scalar_function(&self, f: datafusion::logical_expr::ScalarUDF) -> Result<()> {
        self.check_open()?;
        self.inner.functions.write().add_scalar(f)
    }

    /// Registers an aggregate function (DataFusion's `AggregateUDF`), as
    /// [`Database::register_scalar_function`] does a scalar one. In windows it is evaluated per
    /// window; over a changelog input (an aggregate that updates, a join that retracts) it is
    /// refused when the statement is planned (only COUNT, SUM, AVG, MIN and MAX take retractions).
    pub fn register_aggregate_function(&self, f: datafusion::logical_expr::AggregateUDF) -> Result<()> {
        self.check_open()?;
        self.inner.functions.write().add_aggregate(f)
    }

    /// Takes a checkpoint of everything pushed before this call and returns its epoch. An
    /// in-memory database answers INVALID_STATE.
    pub fn checkpoint(&self) -> Result<i64> {
        Ok(self.checkpoint_stats()?.epoch as i64)
    }

    /// Like [`Database::checkpoint`], with what the checkpoint wrote.
    pub fn checkpoint_stats(&self) -> Result<CheckpointStats> {
        self.check_open()?;
        if let Some(g) = &self.inner.group {
            // Each partition it owns, in its own directory under shared_dir.
            return g.checkpoint_tasks();
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.tx.send(Event::Checkpoint(tx)).map_err(|_| Error::closed())?;
        rx.recv().map_err(|_| Error::closed())?
    }

    /// A writer that pushes batches into `source`. A writer belongs to one thread at a time.
    pub fn writer(&self, source: &str) -> Result<SourceWriter> {
        self.check_open()?;
        self.not_in_group("pushing rows")?;
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
        self.not_in_group("a subscription")?;
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
        let limit = self.inner.config.memory_limit.map(|l| l as u64);
        let (slot, sub) = new_pair(name, s.output_schema.clone(), cap + backlog.len(), on_full, limit);
        for m in backlog {
            slot.preload(m);
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
