//! The `FILES` connector: a directory of Parquet, CSV or JSON files as a source (each file read
//! once, new files picked up) and as an exactly-once sink (files per epoch, renamed into place
//! once the epoch's checkpoint is durable).
//!
//! | option | as | meaning |
//! |---|---|---|
//! | `path` | both | a directory; for a source also a glob in its last part (`/in/*.csv`) |
//! | `format` | both | `parquet`, `csv` or `json` (one JSON object per line) |
//! | `csv.field-delimiter` | both | one character, default `,` |
//! | `csv.header` | both | whether CSV files start with a header line (default `true`; without one, columns are by position) |
//! | `source.monitor-interval` | source | how often to look for new files (default `1s`); `0` reads the files present and ends the input |
//! | `on_error` | source | a file that cannot be decoded: `fail` (default) or `skip` |

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::connector::Options;
use crate::error::{Error, Result};

mod format;
mod sink;
mod source;

pub(crate) use sink::FilesSink;
pub(crate) use source::FilesSource;

/// The format of the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Parquet,
    Csv { delimiter: u8, header: bool },
    Json,
}

impl Format {
    fn from_options(o: &mut Options) -> Result<Format> {
        let f = o.required("format")?;
        let delimiter = o.byte("csv.field-delimiter", b',')?;
        let header = o.bool("csv.header", true)?;
        match f.trim().to_ascii_lowercase().as_str() {
            "parquet" => Ok(Format::Parquet),
            "csv" => Ok(Format::Csv { delimiter, header }),
            "json" => Ok(Format::Json),
            other => Err(Error::invalid_argument(format!(
                "FILES: format '{}' is not one of parquet, csv, json",
                crate::error::clip(other)
            ))),
        }
    }

    /// The extensions a directory source reads, the first one the extension a sink writes.
    fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Parquet => &["parquet"],
            Format::Csv { .. } => &["csv"],
            Format::Json => &["json", "jsonl", "ndjson"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv { .. } => "csv",
            Format::Json => "json",
        }
    }
}

/// `path` split into a directory and an optional file-name pattern (`*` and `?`).
fn split_path(path: &str) -> (PathBuf, Option<String>) {
    let p = Path::new(path);
    match (p.parent(), p.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) if name.contains(['*', '?']) => {
            let dir = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
            (dir, Some(name.to_string()))
        }
        _ => (p.to_path_buf(), None),
    }
}

/// Whether `name` matches `pattern` (`*`: any run of characters, `?`: one character).
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A sink's staging directory inside `dir`: `.laminar-staging/<sink>` (letters, digits, `-`
/// and `_` of the name kept, the rest hex-escaped), hidden from readers that skip dot names.
pub(crate) fn staging_dir(dir: &Path, sink: &str) -> PathBuf {
    let name: String = sink
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    dir.join(".laminar-staging").join(name)
}

/// Removes every file in a sink's staging directory (a missing directory is empty).
pub(crate) fn clear_staging(staging: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(staging) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("cannot list", staging, e)),
    };
    for e in entries.flatten() {
        let p = e.path();
        std::fs::remove_file(&p).map_err(|e| io_error("cannot remove the staged file", &p, e))?;
    }
    Ok(())
}

/// An I/O error naming the file.
pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(crate::error::ErrorKind::Io, format!("{what} '{}': {e}", path.display()))
}

/// The default interval at which a source looks for new files.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("*.csv", "a.csv"));
        assert!(wildcard("*.csv", ".csv"));
        assert!(!wildcard("*.csv", "a.csv.tmp"));
        assert!(wildcard("part-??.json", "part-01.json"));
        assert!(!wildcard("part-??.json", "part-1.json"));
        assert!(wildcard("a*b*c", "aXXbYYc"));
        assert!(!wildcard("a*b*c", "aXXbYY"));
        assert!(wildcard("*", "anything"));
    }

    #[test]
    fn paths_split_at_a_glob() {
        assert_eq!(split_path("/in/*.csv"), (PathBuf::from("/in"), Some("*.csv".into())));
        assert_eq!(split_path("/in/data"), (PathBuf::from("/in/data"), None));
        assert_eq!(split_path("*.csv"), (PathBuf::from("."), Some("*.csv".into())));
    }
}
