//! The `DELTA` connector: a Delta Lake table on a local file system as an exactly-once sink (one
//! Delta commit per checkpoint epoch, carrying a `txn` action with the sink's id) and as a source
//! (the table's current snapshot, then each new version's appended files).
//!
//! The transaction log is read and written here (`log.rs`), on the `parquet` crate the FILES
//! connector builds anyway, rather than through the `deltalake` crate: the sink needs commits,
//! `txn` and `add` actions and the source needs log replay, and `deltalake` 1.x would add its own
//! DataFusion-facing stack (delta_kernel, object_store, its datafusion feature's full DataFusion)
//! to a cold build that CI must keep under an hour. What that leaves out is listed in the README:
//! object stores (S3, GCS, Azure), reading tables whose JSON log was cleaned up after a
//! checkpoint, deletion vectors, column mapping, and writing checkpoints.
//!
//! | option | as | meaning |
//! |---|---|---|
//! | `path` | both | the table's directory (`file://` or a plain path) |
//! | `partition-by` | sink | comma-separated partition columns when the sink creates the table (an existing table keeps its own) |
//! | `sink.rolling-policy.file-size` | sink | a data file is finished once it reaches this size (default `128MB`); an epoch's files are finished at its checkpoint anyway |
//! | `sink.id` | sink | the `txn` application id (default `laminardb:<sink name>`); unique per writer of a table |
//! | `sink.compact-every` | sink | every N epochs, rewrite small files into one per partition directory (`OPTIMIZE`, `dataChange = false`; default `0`: never) |
//! | `sink.mode` | sink | `append` (the only mode: a changelog's rows are appended with their `__weight` column) |
//! | `source.monitor-interval` | source | how often to look for new versions (default `1s`); `0` reads the current snapshot and ends the input |

use std::path::PathBuf;

use crate::error::{Error, Result, clip};

mod log;
mod sink;
mod source;

pub(crate) use sink::DeltaSink;
pub(crate) use source::DeltaSource;

/// The table directory of `path` (a plain path or a `file://` URL); object-store URLs are
/// refused, naming what this build reads.
fn table_dir(what: &str, path: &str) -> Result<PathBuf> {
    let p = path.trim();
    if let Some(rest) = p.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if let Some((scheme, _)) = p.split_once("://") {
        return Err(Error::not_implemented(format!(
            "{what}: path '{}' is on '{}', and this build reads and writes Delta tables on local file systems only (a plain path or file://)",
            clip(p),
            clip(scheme)
        )));
    }
    if p.is_empty() {
        return Err(Error::invalid_argument(format!("{what}: option 'path' is empty")));
    }
    Ok(PathBuf::from(p))
}
