//! Incremental operators over Arrow batches.
//!
//! Every operator implements [`Operator`]. The planner arranges a query's operators in a tree of
//! nodes (`pipeline`): a node's input is a relation, a join of two child nodes or a union of
//! several, and on top of it sits a chain of single-input operators (window assignment, stateless
//! steps, aggregates, OVER). Join and union operators take each input's batches through
//! `process_side`. `pipeline` feeds batches and watermarks in at the leaves and passes each
//! operator's output to the next, up to the root.
//!
//! This file holds the trait, the context an operator runs with ([`OpCtx`], [`LateRows`]), the
//! kinds of stream ([`StreamKind`]), the weight column and the no-watermark sentinel; each operator
//! has its own module.
//!
//! Contract of the trait (read before writing an operator):
//! - `process_batch` sees each input batch exactly once, in arrival order, and returns the rows
//!   that this batch makes the operator emit (for `EMIT ON UPDATE` / `CHANGES`: the changed groups;
//!   for stateless operators: the transformed rows). It does no work before it is called.
//! - `on_watermark` is called with a strictly increasing event-time watermark (µs since the epoch)
//!   after the batch that advanced it; it returns the rows of every window that fires or closes.
//!   WARNING: an operator must never emit a row for a window *after* closing it, and must decide
//!   lateness with the watermark as it stood *before* the current batch (`OpCtx::watermark`).
//! - `on_tick` is called on processing-time deadlines the operator asked for with `tick_interval`.
//! - Errors are returned, never panicked; the engine fails the query and tells its subscribers.
//! - `snapshot` / `restore` move all of the operator's state in and out as Arrow batches, the one
//!   state interface checkpoints are built on.
//!
//! Changelog batches carry a trailing `__weight` Int64 column (+1 insert, −1 retraction).

pub(crate) mod aggregate;
pub(crate) mod asof;
pub(crate) mod join;
pub(crate) mod over;
pub(crate) mod retract;
pub(crate) mod session;
pub(crate) mod stateless;
pub(crate) mod union;
pub(crate) mod window;

use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;

/// The name of the Z-set weight column of changelog streams.
pub const WEIGHT_COLUMN: &str = "__weight";

/// Sentinel for "no watermark yet".
pub const NO_WATERMARK: i64 = i64::MIN;

/// Late (row, window) pairs found while processing one batch.
#[derive(Default)]
pub(crate) struct LateRows {
    /// Rows (input columns plus window_start/window_end) of late pairs, for `LATE DATA TO`.
    pub batches: Vec<RecordBatch>,
    /// Rows that were late for every window they belong to (or had no event time).
    pub rows: u64,
    /// (row, window) pairs dropped as late.
    pub pairs: u64,
}

/// What an operator may read or report while it runs.
pub(crate) struct OpCtx<'a> {
    /// The operator's input watermark before the current batch (µs), or [`NO_WATERMARK`].
    pub watermark: i64,
    pub late: &'a mut LateRows,
    /// Worker pool for partitioned state; `None` runs everything on the calling thread.
    pub pool: Option<&'a rayon::ThreadPool>,
    /// `memory_limit`: checked after each batch an operator takes, so that one pushed batch
    /// that multiplies (a HOP window per row, in chunks) fails the query as its state grows.
    pub memory_limit: Option<usize>,
}

/// How the rows of a stream are to be read (DESIGN §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamKind {
    /// Rows are only ever added.
    AppendOnly,
    /// Rows carry `__weight`: +1 insert, −1 retraction.
    Changelog,
    /// Each row replaces the previous row with the same key (the named columns).
    Upsert { key: Vec<String> },
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamKind::AppendOnly => f.write_str("append-only"),
            StreamKind::Changelog => f.write_str("changelog"),
            StreamKind::Upsert { key } => write!(f, "upsert by ({})", key.join(", ")),
        }
    }
}

pub(crate) trait Operator: Send {
    /// One line for EXPLAIN.
    fn explain(&self) -> String;
    fn process_batch(&mut self, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>>;
    /// Two-input operators (joins): a batch of the left (0) or right (1) input.
    fn process_side(&mut self, _side: usize, _batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        Err(crate::error::Error::internal(format!("{} has one input", self.explain())))
    }
    fn on_watermark(&mut self, _watermark: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        Ok(vec![])
    }
    /// A filter `rank <= n` sits above this operator's single ranking function: keep only what
    /// can rank within n. Returns whether the operator took the hint.
    fn limit_rank(&mut self, _n: u64) -> bool {
        false
    }
    /// Processing-time period this operator wants `on_tick` called with, if any.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }
    fn on_tick(&mut self, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        Ok(vec![])
    }
    /// Approximate bytes of state held.
    fn state_size(&self) -> usize {
        0
    }
    /// Groups held in the RocksDB state backend rather than in memory.
    fn spilled_groups(&self) -> u64 {
        0
    }
    /// All state as Arrow batches (empty for stateless operators).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(vec![])
    }
    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(crate::error::Error::internal(format!("{} has no state to restore", self.explain())))
        }
    }
}
