//! The pipeline's state: the events the driver applies, each source's queue and runtime state,
//! each stream's operators and subscribers, each sink, and `DbInner`, what every handle shares.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;

use crate::config::Config;
use crate::connector::{Position, Positions, Sink, SourceReader};
use crate::durable::CheckpointStats;
use crate::error::{Error, Result};
use crate::operator::window::TimeScale;
use crate::operator::{NO_WATERMARK, StreamKind};
use crate::pipeline::Node;
use crate::runtime::mv::MvStore;
use crate::runtime::subscription::{Pending, SubscriberSlot};

use super::*;

pub(super) enum Event {
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
    pub(super) name: String,
    pub(super) schema: SchemaRef,
    pub(super) permits_tx: Sender<()>,
    pub(super) permits_rx: Receiver<()>,
    pub(super) dropped: AtomicBool,
    /// The source's positions in the latest durable checkpoint, until its reader takes them.
    pub(super) checkpointed: parking_lot::Mutex<Option<Positions>>,
    /// Nanoseconds writers waited for room in this queue (back-pressure).
    pub(super) blocked_ns: std::sync::atomic::AtomicU64,
}

pub(super) struct SourceRt {
    pub(super) queue: Arc<SourceQueue>,
    pub(super) sql: String,
    pub(super) time: Option<(usize, TimeScale, i64)>, // column, scale, delay µs
    pub(super) watermark: i64,
    pub(super) retained: VecDeque<RecordBatch>,
    pub(super) retained_rows: usize,
    pub(super) rows_in: u64,
    pub(super) batches_in: u64,
    /// Arrow bytes of the batches applied.
    pub(super) bytes_in: u64,
    pub(super) rows_late: u64,
    /// `CREATE TABLE`: the current rows by key.
    pub(super) table: Option<crate::runtime::table::TableState>,
    /// `idle_timeout` (ms of processing time) and when the source last had data or a watermark.
    pub(super) idle_timeout_ms: Option<i64>,
    pub(super) last_active_ms: i64,
    /// No data for `idle_timeout`: the source no longer holds back the watermark of what reads it.
    pub(super) idle: bool,
    /// A connector source's recorded positions (partition → offset) after the last applied
    /// batches: checkpointed, and where its reader resumes after a restart.
    pub(super) positions: Positions,
    /// `on_error = 'dead_letter'`: the source receiving the records that do not decode.
    pub(super) dead_letter: Option<String>,
    /// Per-partition watermarks of the partitions still being read (a connector source's
    /// watermark is the minimum over them; finished partitions drop out).
    pub(super) partition_wm: HashMap<String, i64>,
    /// The highest watermark of a finished partition: the source's watermark once none is left.
    pub(super) finished_wm: i64,
    /// A connector reader's per-partition counters.
    pub(super) stats: Option<crate::connector::SourceStats>,
}

/// A sink: writes the output of its input (a stream, view, source or table) through a connector,
/// committed with the checkpoints.
pub(super) struct SinkRt {
    pub(super) sql: String,
    pub(super) input: String,
    pub(super) sink: Box<dyn Sink>,
    /// `FILES '/out' (parquet)`.
    pub(super) describe: String,
    pub(super) rows_out: u64,
    pub(super) batches_out: u64,
    pub(super) bytes_out: u64,
    /// A write, prepare or commit failed: nothing more is written, and checkpoints fail (they
    /// could not include this sink's results) until the sink is dropped.
    pub(super) failed: Option<Error>,
    /// In-memory databases (no checkpoints): each write is its own epoch, committed at once.
    pub(super) writes: u64,
}

pub(super) struct StreamRt {
    pub(super) sql: String,
    pub(super) materialized: bool,
    pub(super) inputs: Vec<String>,
    pub(super) root: Node,
    /// Column of the output known to be at or past the watermark for on-time rows.
    pub(super) time_col: Option<usize>,
    pub(super) kind: StreamKind,
    /// A changelog's key (a GROUP BY's columns, as the output names them), when known: what a
    /// sink upserts by when it is not told.
    pub(super) changelog_key: Option<Vec<String>>,
    pub(super) output_schema: SchemaRef,
    pub(super) logical_schema: SchemaRef,
    pub(super) late_to: Option<String>,
    pub(super) subscribers: Vec<SubscriberSlot>,
    pub(super) mv: Option<MvStore>,
    pub(super) watermark: i64,
    pub(super) rows_out: u64,
    pub(super) batches_out: u64,
    pub(super) bytes_out: u64,
    pub(super) rows_late: u64,
    pub(super) late_pairs: u64,
    pub(super) failed: Option<Error>,
    /// A failed stream's plan fingerprint, kept when its operators (and their state) are freed.
    pub(super) frozen_fingerprint: Option<String>,
    pub(super) tick: Option<(i64, i64)>, // period ms, next due ms
    /// A LATE DATA TO target: has no operators, receives late rows.
    pub(super) is_late_sink: bool,
    /// Durable databases: the results emitted since the last checkpoint (this epoch's), written
    /// with the next checkpoint so subscribers can resume from an epoch.
    pub(super) history: Vec<RecordBatch>,
    /// Durable databases: the first epoch whose results are kept for resuming subscribers. None
    /// until the stream is first subscribed to (results nobody subscribed to are not kept).
    pub(super) history_since: Option<u64>,
    /// A result was emitted since the last checkpoint.
    pub(super) emitted_this_epoch: bool,
}

pub(super) struct Engine {
    pub(super) sources: HashMap<String, SourceRt>,
    pub(super) streams: HashMap<String, StreamRt>,
    pub(super) sinks: std::collections::BTreeMap<String, SinkRt>,
    /// Streams in creation order (a stream only reads what existed before it).
    pub(super) order: Vec<String>,
    pub(super) events: u64,
    /// Batches for `on_full = block` subscribers whose buffers were full; the driver sends them
    /// after releasing the engine lock, before the next event.
    pub(super) pending: Vec<Pending>,
    /// Sequence number of the last logged change applied (durable databases).
    pub(super) applied_seq: u64,
    /// The last completed checkpoint (0: none); results emitted now belong to `epoch + 1`.
    pub(super) epoch: u64,
    /// Processing time (ms) of the next periodic checkpoint.
    pub(super) next_checkpoint_ms: Option<i64>,
}

pub(crate) struct DbInner {
    pub(super) config: Config,
    /// The user-defined functions: the config's, and those registered since.
    pub(super) functions: parking_lot::RwLock<crate::functions::Functions>,
    pub(super) closed: AtomicBool,
    pub(super) engine: Mutex<Engine>,
    pub(super) tx: Sender<Event>,
    pub(super) driver: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) pool: Option<rayon::ThreadPool>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) durable: Option<Durable>,
    /// Set while recovery replays the log: connectors wait to start until it is done.
    pub(super) recovering: AtomicBool,
    /// Connector sources created while recovering, started once recovery is done (at the
    /// positions it restored).
    pub(super) deferred_readers: Mutex<Vec<(Arc<SourceQueue>, Box<dyn SourceReader>)>>,
    /// Committables of the sinks in the checkpoint being restored, by sink name: the sink's
    /// CREATE publishes them (see `connector::Sink::recover`).
    pub(super) restored_sinks: Mutex<HashMap<String, Vec<u8>>>,
    /// The RocksDB state backend (`state_backend = 'rocksdb'`).
    pub(super) state: Option<Arc<crate::state_store::StateStore>>,
    /// Checkpoint and back-pressure counters, and the metrics endpoint.
    pub(super) telemetry: super::telemetry::Telemetry,
    /// Group mode (`shared_dir`): this database is a member of a consumer group; its own engine
    /// holds the catalog only, and each partition it owns runs in a task (see `group.rs`).
    pub(super) group: Option<Arc<super::group::Group>>,
    /// A task of a group member: the partition it owns (its KAFKA sources read that partition of
    /// each topic; its KAFKA sinks write under a transactional id of the partition's).
    pub(super) task: Option<super::group::TaskScope>,
}

impl StreamRt {
    /// Every operator's state, in plan order.
    pub(super) fn snapshot_ops(&mut self) -> Result<Vec<Vec<RecordBatch>>> {
        self.root.operators_mut().into_iter().map(|o| o.snapshot()).collect()
    }

    /// Loads state taken by [`StreamRt::snapshot_ops`] from a stream of the same plan.
    pub(super) fn restore_ops(&mut self, state: Vec<Vec<RecordBatch>>) -> Result<()> {
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

    pub(super) fn late_sink(schema: SchemaRef, sql: String) -> StreamRt {
        StreamRt {
            sql,
            materialized: false,
            inputs: vec![],
            root: Node::leaf(String::new()),
            time_col: None,
            kind: StreamKind::AppendOnly,
            changelog_key: None,
            output_schema: schema.clone(),
            logical_schema: schema,
            late_to: None,
            subscribers: vec![],
            mv: None,
            watermark: NO_WATERMARK,
            rows_out: 0,
            batches_out: 0,
            bytes_out: 0,
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

/// Drops the pipeline's end of every cancelled or dropped subscription, freeing its buffer. Run
/// at each subscribe and metrics read, besides each emission, so that an idle stream does not
/// keep them until it next emits.
pub(super) fn prune_subscribers(eng: &mut Engine) {
    for st in eng.streams.values_mut() {
        st.subscribers.retain(|x| !x.is_gone());
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.tx.send(Event::Shutdown);
    }
}
