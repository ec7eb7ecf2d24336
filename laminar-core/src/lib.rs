//! LaminarDB: an embedded streaming SQL database on Apache Arrow and DataFusion.
//!
//! ```no_run
//! use laminar_core::Database;
//! let db = Database::open_in_memory()?;
//! db.execute("CREATE SOURCE trades (sym VARCHAR, price DOUBLE, ts TIMESTAMP,
//!             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")?;
//! db.execute("CREATE STREAM vwap AS SELECT sym, AVG(price) AS avg_price, window_start
//!             FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '1' MINUTE)")?;
//! let sub = db.subscribe("vwap")?;
//! # Ok::<(), laminar_core::Error>(())
//! ```

pub mod config;
mod connector;
mod db;
mod df_fixes;
mod df_session;
mod durable;
pub mod error;
mod functions;
#[doc(hidden)]
pub mod fuzz;
mod ipc;
pub mod nexmark;
pub mod operator;
pub mod panic_guard;
mod pipeline;
mod plan;
pub mod runtime;
pub mod sql;
mod state_store;
mod util;

pub use config::{Config, Durability, IoBackend, OnFull, QueueFullPolicy, StateBackend, WalRecovery};
pub use connector::PartitionStats;
pub use db::{
    CheckpointMetrics, Clock, Database, ExecuteResult, GroupPartition, Histogram, ManualClock, Metrics, ObjectInfo,
    OperatorMetrics, RecoveryInfo, SinkMetrics, SourceMetrics, SourceWriter, StreamMetrics, WriterInterrupt,
};
pub use durable::CheckpointStats;
pub use error::{Error, ErrorKind, FunctionError, Result, SqlPosition};
pub use functions::Functions;
pub use ipc::read_ipc_stream;
pub use operator::{NO_WATERMARK, StreamKind, WEIGHT_COLUMN};
pub use runtime::ingest::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
pub use runtime::subscription::{Canceller, Next, PushEvent, PushSubscription, SubscribeOptions, Subscription};
pub use sql::{EmitMode, ObjectKind};
/// Whether this build has the RocksDB state backend (cargo feature `rocksdb`).
pub use state_store::AVAILABLE as ROCKSDB_AVAILABLE;

/// Re-exported so users build batches with the same Arrow the engine uses.
pub use datafusion::arrow;
/// The DataFusion error an [`Error`] keeps as its source (`std::error::Error::source`), for downcasting.
pub use datafusion::error::DataFusionError;

/// The library version, `MAJOR.MINOR.PATCH`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
