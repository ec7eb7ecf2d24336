//! The `FILES` source: every file of a directory (or matching a glob) is a partition, read once,
//! in name order as files appear. A file's position is the rows read from it, then `finished`;
//! a restarted source skips finished files and the rows already read of a partly read one.
//!
//! A file is read when it is listed, so it must be complete by then: write it elsewhere (or
//! under a name starting with `.` or `_`, which is ignored) and rename it into the directory.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::iter::Peekable;
use std::path::PathBuf;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::format::{self, Batches};
use super::{Format, MONITOR_INTERVAL, io_error, split_path, wildcard};
use crate::connector::{FINISHED, OnError, Options, Poll, Position, Positions, SourceReader};
use crate::error::{Error, ErrorKind, Result, clip};
use crate::runtime::ingest::conform;

pub(crate) struct FilesSource {
    source: String,
    schema: SchemaRef,
    path: String,
    dir: PathBuf,
    pattern: Option<String>,
    format: Format,
    on_error: OnError,
    /// None: read the files present once, then end the input.
    monitor: Option<Duration>,
    /// Files read to their end (or skipped).
    finished: BTreeSet<String>,
    /// Rows already read of partly read files (from a restored position).
    started: HashMap<String, usize>,
    /// Files listed and not yet opened, in name order.
    queue: VecDeque<String>,
    current: Option<Reading>,
    /// The directory was listed at least once (a bounded source ends after its first listing).
    listed: bool,
    pub(crate) files_skipped: u64,
}

struct Reading {
    name: String,
    batches: Peekable<Batches>,
    /// Rows of the file read so far (including those skipped on a resume).
    rows: usize,
    /// Rows still to skip: read before a restart.
    skip: usize,
}

impl FilesSource {
    pub(crate) fn new(source: &str, schema: SchemaRef, mut o: Options) -> Result<FilesSource> {
        let path = o.required("path")?;
        let format = Format::from_options(&mut o)?;
        let monitor = o.duration("source.monitor-interval", MONITOR_INTERVAL)?;
        let on_error = OnError::from_options(&mut o, false)?;
        o.finish()?;
        let (dir, pattern) = split_path(&path);
        Ok(FilesSource {
            source: source.to_string(),
            schema,
            path,
            dir,
            pattern,
            format,
            on_error,
            monitor: (!monitor.is_zero()).then_some(monitor),
            finished: BTreeSet::new(),
            started: HashMap::new(),
            queue: VecDeque::new(),
            current: None,
            listed: false,
            files_skipped: 0,
        })
    }

    /// Lists the files not read yet, in name order.
    fn list(&mut self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error("cannot list the directory", &self.dir, e))?;
        let mut found = vec![];
        for e in entries {
            let e = e.map_err(|e| io_error("cannot list the directory", &self.dir, e))?;
            let Ok(name) = e.file_name().into_string() else { continue };
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let wanted = match &self.pattern {
                Some(p) => wildcard(p, &name),
                None => name
                    .rsplit_once('.')
                    .is_some_and(|(_, ext)| self.format.extensions().iter().any(|x| x.eq_ignore_ascii_case(ext))),
            };
            if !wanted || self.finished.contains(&name) || self.queue.contains(&name) {
                continue;
            }
            if self.current.as_ref().is_some_and(|c| c.name == name) {
                continue;
            }
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                found.push(name);
            }
        }
        found.sort();
        self.queue.extend(found);
        self.listed = true;
        Ok(())
    }

    /// A file that cannot be decoded: the error (on_error = fail) or skipped (on_error = skip).
    fn bad_file(&mut self, name: String, e: Error) -> Result<Poll> {
        let e = if e.kind() == ErrorKind::Io { e } else { Error::invalid_data(e.message().to_string()) };
        match self.on_error {
            OnError::Fail => Err(e.context(format!("file '{}'", clip(&name)))),
            OnError::Skip | OnError::DeadLetter => {
                self.files_skipped += 1;
                log::warn!(target: "laminardb", "FILES source '{}': skipped file '{}' (on_error = 'skip'): {e}", self.source, clip(&name));
                self.current = None;
                self.finished.insert(name.clone());
                let empty = RecordBatch::new_empty(self.schema.clone());
                Ok(Poll::Data(empty, Position { partition: name, offset: String::new(), finished: true }))
            }
        }
    }
}

impl SourceReader for FilesSource {
    fn describe(&self) -> String {
        format!("FILES '{}' ({})", clip(&self.path), self.format.name())
    }

    fn open(&mut self, positions: &Positions) -> Result<()> {
        for (file, pos) in positions {
            if pos == FINISHED {
                self.finished.insert(file.clone());
            } else {
                let rows = pos.parse::<usize>().map_err(|_| {
                    Error::invalid_data(format!(
                        "FILES source '{}': bad position '{}' of file '{}'",
                        self.source,
                        clip(pos),
                        clip(file)
                    ))
                })?;
                self.started.insert(file.clone(), rows);
            }
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll> {
        loop {
            if let Some(cur) = &mut self.current {
                let Some(next) = cur.batches.next() else {
                    // An empty file, or one whose rows were all read before a restart.
                    let name = cur.name.clone();
                    let rows = cur.rows;
                    self.current = None;
                    self.finished.insert(name.clone());
                    let empty = RecordBatch::new_empty(self.schema.clone());
                    return Ok(Poll::Data(
                        empty,
                        Position { partition: name, offset: rows.to_string(), finished: true },
                    ));
                };
                let batch = match next.and_then(|b| conform(&self.source, &self.schema, &b)) {
                    Ok(b) => b,
                    Err(e) => {
                        let name = cur.name.clone();
                        return self.bad_file(name, e);
                    }
                };
                let mut batch = batch;
                cur.rows += batch.num_rows();
                if cur.skip > 0 {
                    let drop = cur.skip.min(batch.num_rows());
                    cur.skip -= drop;
                    batch = batch.slice(drop, batch.num_rows() - drop);
                }
                let finished = cur.batches.peek().is_none();
                let pos = Position { partition: cur.name.clone(), offset: cur.rows.to_string(), finished };
                if finished {
                    let name = cur.name.clone();
                    self.current = None;
                    self.finished.insert(name);
                }
                return Ok(Poll::Data(batch, pos));
            }
            if let Some(name) = self.queue.pop_front() {
                let path = self.dir.join(&name);
                match format::read(self.format, &path, &self.schema) {
                    Ok(batches) => {
                        let skip = self.started.remove(&name).unwrap_or(0);
                        self.current = Some(Reading { name, batches: batches.peekable(), rows: 0, skip });
                    }
                    Err(e) if e.kind() == ErrorKind::Io && !path.exists() => continue, // removed meanwhile
                    Err(e) if e.kind() == ErrorKind::Io => {
                        self.queue.push_front(name); // retried
                        return Err(e);
                    }
                    Err(e) => return self.bad_file(name, e),
                }
                continue;
            }
            if self.listed && self.monitor.is_none() {
                return Ok(Poll::End);
            }
            self.list()?;
            if self.queue.is_empty() {
                return Ok(if self.monitor.is_none() { Poll::End } else { Poll::Pending });
            }
        }
    }

    fn poll_interval(&self) -> Duration {
        self.monitor.unwrap_or(MONITOR_INTERVAL)
    }
}
