//! Database configuration: one list of string keys with units, the same in every language
//! (DESIGN §5). Unknown keys and malformed values are errors, never silently ignored.

use std::time::Duration;

use crate::error::{Error, Result};

/// Durability level chosen at open (DESIGN §4).
///
/// - `Memory`: nothing on disk; everything is lost when the process ends.
/// - `Checkpoint`: catalog statements are logged at once; operator state, watermarks and source
///   positions are written at each checkpoint; pushes since the last checkpoint are lost in a crash.
/// - `Wal`: as `Checkpoint`, and every push is in the write-ahead log (group-committed, fsync'd)
///   before it returns: no acknowledged row is ever lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Memory,
    Checkpoint,
    Wal,
}

/// What writes a durable database's log and checkpoint files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring where the kernel offers it (Linux), else `Std`.
    Auto,
    /// io_uring (Linux): each write and its data sync are submitted together; an error at open
    /// where it is not available.
    IoUring,
    /// `write` + `fdatasync`.
    Std,
}

/// What opening a durable database does with a write-ahead log that is damaged (DESIGN §4).
///
/// A record cut short at the end of the newest log segment (a write a crash interrupted, never
/// acknowledged) is dropped under both rules. Damage that loses records the log proves were
/// written — a bad record with intact ones after it, a bad record in an older segment, a segment
/// shorter than the sequence numbers of the next one show — is what they differ on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRecovery {
    /// Opening fails with `IO`, naming the file, the byte offset and what is wrong (the default).
    Strict,
    /// Opening skips the damaged bytes, replays every intact record (also those after the
    /// damage), reports what was lost in [`crate::RecoveryInfo::warnings`], and takes a
    /// checkpoint so that the next open no longer needs the damaged log.
    Salvage,
}

/// Where keyed operator state lives (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateBackend {
    /// In-memory hash tables (the default).
    Memory,
    /// In memory up to `state_cache_size` per operator, the rest spilled to RocksDB (in the
    /// database directory, or a temporary one for `":memory:"`). Windowed and non-windowed
    /// GROUP BY aggregates with keys spill; other operators keep their state in memory. Needs a
    /// build with the cargo feature `rocksdb`.
    RocksDb,
}

/// What a push does when its source queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFullPolicy {
    /// Wait for room (the default): lossless back-pressure on the writer.
    Block,
    /// Return a `RESOURCE_EXHAUSTED` error at once; nothing of the batch is applied.
    Fail,
}

/// What happens when a subscriber stops reading and its buffer fills (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// End that subscription with a "lagged: N batches unread" error on its next read.
    Lag,
    /// Push back on the pipeline (and so on the writers) until the subscriber reads.
    Block,
}

/// Every setting, with its documented default. Build one with [`Config::default`] and
/// [`Config::set`] (string key/values, as the C ABI and the bindings do).
#[derive(Debug, Clone)]
pub struct Config {
    pub storage_dir: Option<String>,
    /// None: `memory` for `":memory:"`, `wal` for a database opened on a path.
    pub durability: Option<Durability>,
    /// Time between periodic checkpoints. None: 10 s on a durable database.
    pub checkpoint_interval: Option<Duration>,
    /// Checkpoints kept on disk (the newest ones). Default 3, at least 1.
    pub checkpoints_retained: usize,
    /// What writes the log and checkpoint files. Default `Auto`.
    pub io_backend: IoBackend,
    /// What opening does with a damaged write-ahead log. Default `Strict`.
    pub wal_recovery: WalRecovery,
    /// Where keyed operator state lives. Default `Memory`.
    pub state_backend: StateBackend,
    /// With `state_backend` RocksDB: bytes of state an aggregate keeps in memory before it spills
    /// to RocksDB. Default 256 MiB.
    pub state_cache_size: usize,
    /// Worker threads for keyed operator state. Default: cores − 1 (at least 1).
    pub workers: usize,
    /// Bytes of operator state allowed before a query fails with RESOURCE_EXHAUSTED. None: no limit.
    pub memory_limit: Option<usize>,
    /// Batches a subscription buffers before the on_full rule applies. Default 1024.
    pub buffer_size: usize,
    /// Default idle timeout for sources that do not set one. None: sources never go idle.
    pub idle_timeout: Option<Duration>,
    /// Events (batches or watermarks) a source queue holds before a push waits. Default 64.
    pub queue_capacity: usize,
    pub queue_full: QueueFullPolicy,
    pub on_full: OnFull,
    /// Rows of recent input each source keeps for ad-hoc `SELECT … FROM source`. Default 65,536.
    pub source_retention: usize,
    /// Where to serve the Prometheus text exposition over HTTP (`GET /metrics`), e.g.
    /// `127.0.0.1:9464`. None (the default): no endpoint; `metrics_text()` still works.
    pub metrics_addr: Option<String>,
    /// Group mode (scale-out over processes): a directory every member of the consumer group
    /// reaches (a shared file system), where each partition's state and checkpoints live. None
    /// (the default): a stand-alone database.
    pub shared_dir: Option<String>,
    /// User-defined functions the database's SQL can call ([`Config::register_scalar_function`]);
    /// registered here, they are there while a durable database replays its catalog.
    pub functions: crate::functions::Functions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage_dir: None,
            durability: None,
            checkpoint_interval: None,
            checkpoints_retained: 3,
            io_backend: IoBackend::Auto,
            wal_recovery: WalRecovery::Strict,
            state_backend: StateBackend::Memory,
            state_cache_size: 256 * 1024 * 1024,
            workers: default_workers(),
            memory_limit: None,
            buffer_size: 1024,
            idle_timeout: None,
            queue_capacity: 64,
            queue_full: QueueFullPolicy::Block,
            on_full: OnFull::Lag,
            source_retention: 65_536,
            metrics_addr: None,
            shared_dir: None,
            functions: Default::default(),
        }
    }
}

/// The keys [`Config::set`] accepts, in documentation order.
pub const CONFIG_KEYS: &[&str] = &[
    "storage_dir",
    "durability",
    "checkpoint_interval",
    "checkpoint_interval_ms",
    "checkpoints_retained",
    "io_backend",
    "wal_recovery",
    "state_backend",
    "state_cache_size",
    "workers",
    "memory_limit",
    "buffer_size",
    "idle_timeout",
    "queue_capacity",
    "queue_full",
    "on_full",
    "source_retention",
    "metrics_addr",
    "shared_dir",
];

/// The default worker count: one per core, minus the core the pipeline thread itself occupies
/// (it runs window assignment, emission and, with one worker, the aggregation too).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).saturating_sub(1).max(1)
}

/// One line on what a key means, its unit and its default, for documentation and for
/// `laminar_config_get_flag`.
pub fn describe_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "storage_dir" => {
            "directory for checkpoints and the write-ahead log of a database opened as ':memory:'; a relative path opened with it names a database inside it (default: none)"
        }
        "durability" => {
            "memory | checkpoint | wal (default: memory for ':memory:', wal for a path); checkpoint: pushes since the last checkpoint are lost in a crash; wal: every push is durable before it returns"
        }
        "checkpoint_interval" => {
            "time between periodic checkpoints of a durable database, e.g. '10s' (default 10s; '0' turns periodic checkpoints off)"
        }
        "checkpoints_retained" => "checkpoints kept on disk, the newest (default 3, at least 1)",
        "io_backend" => {
            "auto | io_uring | std: what writes the log and checkpoint files (default auto: io_uring where the kernel offers it, else write + fdatasync)"
        }
        "checkpoint_interval_ms" => "checkpoint_interval in milliseconds",
        "wal_recovery" => {
            "strict | salvage: what opening does when the write-ahead log lost records it proves were written (default strict: an IO error naming the file and byte offset; salvage: open anyway, replay every intact record and report what was lost in the recovery warnings); a record cut short at the end of the newest segment, never acknowledged, is dropped either way"
        }
        "workers" => {
            "worker threads for keyed operator state, 1..=1024 (default: cores - 1, at least 1; the pipeline thread uses the other)"
        }
        "state_backend" => {
            "memory | rocksdb: where keyed aggregate state lives (default memory; rocksdb spills what passes state_cache_size to RocksDB, in builds with the cargo feature 'rocksdb')"
        }
        "state_cache_size" => {
            "with state_backend rocksdb: state an aggregate keeps in memory before spilling, e.g. '64MB' (default 256MiB)"
        }
        "memory_limit" => {
            "operator state allowed before a query fails with RESOURCE_EXHAUSTED, and the unread bytes an on_full = lag subscription may hold, e.g. '512MB' (default: no limit)"
        }
        "buffer_size" => "batches a subscription buffers before on_full applies (default 1024)",
        "idle_timeout" => {
            "default idle timeout of sources, e.g. '30s': a source without data that long stops holding back the watermark of the queries reading it (default: none)"
        }
        "queue_capacity" => "events a source queue holds before a push waits (default 64)",
        "queue_full" => "block | fail: what a push does when its source queue is full (default block)",
        "on_full" => {
            "lag | block: what a full subscription buffer does (default lag: the subscription ends with an error)"
        }
        "source_retention" => "rows of recent input each source keeps for ad-hoc SELECT (default 65536)",
        "shared_dir" => {
            "group mode: a directory every member of the KAFKA sources' consumer group reaches, holding each partition's state and checkpoints; the member runs the pipeline for the partitions Kafka assigns it (default: none, a stand-alone database)"
        }
        "metrics_addr" => {
            "host:port to serve Prometheus metrics on (GET /metrics); empty or unset: no endpoint (default)"
        }
        _ => return None,
    })
}

impl Config {
    /// Registers a scalar function (DataFusion's `ScalarUDF`) for every database opened with this
    /// config, called in SQL by its lowercase `name()`. A name of a built-in function is refused.
    pub fn register_scalar_function(&mut self, f: datafusion::logical_expr::ScalarUDF) -> Result<()> {
        self.functions.add_scalar(f)
    }

    /// Registers an aggregate function (DataFusion's `AggregateUDF`), as
    /// [`Config::register_scalar_function`] does a scalar one.
    pub fn register_aggregate_function(&mut self, f: datafusion::logical_expr::AggregateUDF) -> Result<()> {
        self.functions.add_aggregate(f)
    }

    /// Sets one key from its string form (`"5s"`, `"512MB"`, `"4"`, `"wal"`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |what: &str| Error::invalid_argument(format!("config '{key}': {what}, got '{value}'"));
        match key {
            "storage_dir" => self.storage_dir = Some(value.to_string()),
            "durability" => {
                self.durability = Some(match value.to_ascii_lowercase().as_str() {
                    "memory" => Durability::Memory,
                    "checkpoint" => Durability::Checkpoint,
                    "wal" => Durability::Wal,
                    _ => return Err(bad("expected memory, checkpoint or wal")),
                })
            }
            "checkpoint_interval" => self.checkpoint_interval = Some(parse_duration(value).map_err(|m| bad(&m))?),
            "checkpoint_interval_ms" => {
                let ms: u64 = value.trim().parse().map_err(|_| bad("expected milliseconds"))?;
                self.checkpoint_interval = Some(Duration::from_millis(ms))
            }
            "io_backend" => {
                self.io_backend = match value.to_ascii_lowercase().as_str() {
                    "auto" => IoBackend::Auto,
                    "io_uring" | "uring" => IoBackend::IoUring,
                    "std" => IoBackend::Std,
                    _ => return Err(bad("expected auto, io_uring or std")),
                }
            }
            "wal_recovery" => {
                self.wal_recovery = match value.to_ascii_lowercase().as_str() {
                    "strict" => WalRecovery::Strict,
                    "salvage" => WalRecovery::Salvage,
                    _ => return Err(bad("expected strict or salvage")),
                }
            }
            "checkpoints_retained" => {
                self.checkpoints_retained = parse_positive(value).ok_or_else(|| bad("expected a positive integer"))?
            }
            "workers" => {
                let n: usize = value.trim().parse().map_err(|_| bad("expected a positive integer"))?;
                if n == 0 || n > 1024 {
                    return Err(bad("expected 1..=1024"));
                }
                self.workers = n
            }
            "state_backend" => {
                self.state_backend = match value.to_ascii_lowercase().as_str() {
                    "memory" => StateBackend::Memory,
                    "rocksdb" => StateBackend::RocksDb,
                    _ => return Err(bad("expected memory or rocksdb")),
                }
            }
            "state_cache_size" => self.state_cache_size = parse_bytes(value).map_err(|m| bad(&m))?,
            "memory_limit" => self.memory_limit = Some(parse_bytes(value).map_err(|m| bad(&m))?),
            "buffer_size" => {
                self.buffer_size = parse_positive(value).ok_or_else(|| bad("expected a positive integer"))?
            }
            "idle_timeout" => self.idle_timeout = Some(parse_duration(value).map_err(|m| bad(&m))?),
            "queue_capacity" => {
                self.queue_capacity = parse_positive(value).ok_or_else(|| bad("expected a positive integer"))?
            }
            "queue_full" => {
                self.queue_full = match value.to_ascii_lowercase().as_str() {
                    "block" => QueueFullPolicy::Block,
                    "fail" => QueueFullPolicy::Fail,
                    _ => return Err(bad("expected block or fail")),
                }
            }
            "on_full" => self.on_full = parse_on_full(value).ok_or_else(|| bad("expected lag or block"))?,
            "source_retention" => {
                self.source_retention = value.trim().parse().map_err(|_| bad("expected a row count"))?
            }
            "shared_dir" => {
                let v = value.trim();
                self.shared_dir = (!v.is_empty()).then(|| v.to_string());
            }
            "metrics_addr" => {
                let v = value.trim();
                if v.is_empty() {
                    self.metrics_addr = None;
                } else {
                    use std::net::ToSocketAddrs;
                    v.to_socket_addrs().map_err(|e| bad(&format!("expected host:port ({e})")))?;
                    self.metrics_addr = Some(v.to_string());
                }
            }
            _ => {
                let hint = crate::error::nearest_name(key, CONFIG_KEYS.iter().copied())
                    .map(|k| format!("; did you mean '{k}'?"))
                    .unwrap_or_default();
                return Err(Error::invalid_argument(format!(
                    "unknown config key '{key}'{hint} (known keys: {})",
                    CONFIG_KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The current value of a key in the string form [`Config::set`] accepts.
    pub fn get(&self, key: &str) -> Option<String> {
        let d = |d: Option<Duration>| d.map(|d| format!("{}ms", d.as_millis()));
        Some(match key {
            "storage_dir" => self.storage_dir.clone()?,
            "durability" => match self.durability? {
                Durability::Memory => "memory",
                Durability::Checkpoint => "checkpoint",
                Durability::Wal => "wal",
            }
            .to_string(),
            "checkpoint_interval" => d(self.checkpoint_interval)?,
            "checkpoint_interval_ms" => self.checkpoint_interval?.as_millis().to_string(),
            "checkpoints_retained" => self.checkpoints_retained.to_string(),
            "io_backend" => match self.io_backend {
                IoBackend::Auto => "auto",
                IoBackend::IoUring => "io_uring",
                IoBackend::Std => "std",
            }
            .to_string(),
            "wal_recovery" => match self.wal_recovery {
                WalRecovery::Strict => "strict",
                WalRecovery::Salvage => "salvage",
            }
            .to_string(),
            "workers" => self.workers.to_string(),
            "state_backend" => match self.state_backend {
                StateBackend::Memory => "memory",
                StateBackend::RocksDb => "rocksdb",
            }
            .to_string(),
            "state_cache_size" => self.state_cache_size.to_string(),
            "memory_limit" => self.memory_limit?.to_string(),
            "metrics_addr" => self.metrics_addr.clone()?,
            "shared_dir" => self.shared_dir.clone()?,
            "buffer_size" => self.buffer_size.to_string(),
            "idle_timeout" => d(self.idle_timeout)?,
            "queue_capacity" => self.queue_capacity.to_string(),
            "queue_full" => match self.queue_full {
                QueueFullPolicy::Block => "block",
                QueueFullPolicy::Fail => "fail",
            }
            .to_string(),
            "on_full" => match self.on_full {
                OnFull::Lag => "lag",
                OnFull::Block => "block",
            }
            .to_string(),
            "source_retention" => self.source_retention.to_string(),
            _ => return None,
        })
    }
}

pub(crate) fn parse_on_full(v: &str) -> Option<OnFull> {
    match v.to_ascii_lowercase().as_str() {
        "lag" => Some(OnFull::Lag),
        "block" => Some(OnFull::Block),
        _ => None,
    }
}

fn parse_positive(v: &str) -> Option<usize> {
    v.trim().parse::<usize>().ok().filter(|n| *n > 0)
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1.5s"`; a bare number is milliseconds.
pub fn parse_duration(v: &str) -> std::result::Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| "expected a duration such as '5s' or '250ms'".to_string())?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => n / 1000.0,
        "us" | "µs" => n / 1e6,
        "s" | "sec" | "second" | "seconds" => n,
        "m" | "min" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        u => return Err(format!("unknown duration unit '{u}'")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err("expected a non-negative duration".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `"512MB"`, `"2GiB"`, `"1000"` (bytes).
pub fn parse_bytes(v: &str) -> std::result::Result<usize, String> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| "expected a size such as '512MB'".to_string())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" | "k" => 1024.0,
        "mb" => 1e6,
        "mib" | "m" => 1024.0 * 1024.0,
        "gb" => 1e9,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit '{u}'")),
    };
    Ok((n * mult) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_bad_values() {
        let mut c = Config::default();
        c.set("checkpoint_interval", "5s").unwrap();
        assert_eq!(c.checkpoint_interval, Some(Duration::from_secs(5)));
        c.set("workers", "4").unwrap();
        assert_eq!(c.get("workers").as_deref(), Some("4"));
        c.set("memory_limit", "2MiB").unwrap();
        assert_eq!(c.memory_limit, Some(2 * 1024 * 1024));
        assert!(c.set("workers", "0").is_err());
        assert!(c.set("durability", "paper").is_err());
        let e = c.set("buffer_sise", "10").unwrap_err();
        assert!(e.message().contains("did you mean 'buffer_size'"), "{e}");
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn wal_recovery_is_strict_by_default_and_validated() {
        let mut c = Config::default();
        assert_eq!(c.wal_recovery, WalRecovery::Strict);
        assert_eq!(c.get("wal_recovery").as_deref(), Some("strict"));
        c.set("wal_recovery", "Salvage").unwrap();
        assert_eq!(c.wal_recovery, WalRecovery::Salvage);
        assert_eq!(c.get("wal_recovery").as_deref(), Some("salvage"));
        let e = c.set("wal_recovery", "ignore").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
        assert!(e.message().contains("expected strict or salvage") && e.message().contains("'ignore'"), "{e}");
        assert_eq!(c.wal_recovery, WalRecovery::Salvage, "a rejected value changes nothing");
        assert!(CONFIG_KEYS.contains(&"wal_recovery") && describe_key("wal_recovery").is_some());
        let e = c.set("wal_recovry", "strict").unwrap_err();
        assert!(e.message().contains("did you mean 'wal_recovery'"), "{e}");
    }
}
