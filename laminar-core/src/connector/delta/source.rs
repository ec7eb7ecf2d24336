//! The `DELTA` source: the table's snapshot at the version current when the source first starts
//! (its files in path order), then the files each later version adds (`add` actions with
//! `dataChange`, in log order; a compaction's rewritten files are not read again). Every data
//! file is a partition whose position is the rows read from it, then `finished`; the first
//! version read is recorded as a finished partition named `@snapshot=<version>`, so a reopened
//! source rebuilds the same list of files and reads each row once.
//!
//! A version that removes data (a DELETE, an overwrite) cannot be expressed as appended rows:
//! the source fails, naming the version and its operation. Partition columns are filled in from
//! the files' partition values; a declared column that an older file lacks is null there.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::iter::Peekable;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, StringArray, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::log::{self, Action, AddFile, Snapshot};
use super::table_dir;
use crate::connector::{FINISHED, Options, Poll, Position, Positions, SourceReader};
use crate::error::{Error, ErrorKind, Result, clip};
use crate::runtime::ingest::conform;

const SNAPSHOT: &str = "@snapshot=";
const BATCH_ROWS: usize = 8192;

type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

pub(crate) struct DeltaSource {
    what: String,
    source: String,
    schema: SchemaRef,
    path: String,
    dir: PathBuf,
    /// None: read the snapshot, then end the input.
    monitor: Option<Duration>,
    /// The version whose snapshot is read first (restored, or chosen at the first poll).
    snapshot: Option<u64>,
    /// The latest version whose files are queued (None: the snapshot is not loaded yet).
    version: Option<u64>,
    partition_columns: Vec<String>,
    finished: BTreeSet<String>,
    started: HashMap<String, usize>,
    queue: VecDeque<AddFile>,
    current: Option<Reading>,
}

struct Reading {
    name: String,
    batches: Peekable<Batches>,
    rows: usize,
    skip: usize,
}

impl DeltaSource {
    pub(crate) fn new(source: &str, schema: SchemaRef, mut o: Options) -> Result<DeltaSource> {
        let what = format!("DELTA source '{source}'");
        let path = o.required("path")?;
        let dir = table_dir(&what, &path)?;
        let monitor = o.duration("source.monitor-interval", Duration::from_secs(1))?;
        o.finish()?;
        Ok(DeltaSource {
            what,
            source: source.to_string(),
            schema,
            path,
            dir,
            monitor: (!monitor.is_zero()).then_some(monitor),
            snapshot: None,
            version: None,
            partition_columns: vec![],
            finished: BTreeSet::new(),
            started: HashMap::new(),
            queue: VecDeque::new(),
            current: None,
        })
    }

    fn queue_file(&mut self, f: AddFile) {
        if !self.finished.contains(&f.path) && !self.queue.iter().any(|q| q.path == f.path) {
            self.queue.push_back(f);
        }
    }

    /// Loads the snapshot to start from; Ok(false) while there is no table yet.
    fn load_snapshot(&mut self) -> Result<bool> {
        let Some(snap) = Snapshot::load_at(&self.dir, self.snapshot)? else {
            if self.monitor.is_none() {
                return Err(Error::not_found(format!("{}: no Delta table at '{}'", self.what, clip(&self.path))));
            }
            return Ok(false);
        };
        snap.check_readable(&self.dir, &self.what)?;
        self.partition_columns = snap.metadata.partition_columns.clone();
        for f in snap.files.into_values() {
            self.queue_file(f);
        }
        self.snapshot = Some(snap.version);
        self.version = Some(snap.version);
        Ok(true)
    }

    /// Queues the files of the versions after the last one read; Ok(false) when there are none.
    fn follow(&mut self) -> Result<bool> {
        let known = self.version.expect("snapshot loaded");
        let commits = log::commits_after(&self.dir, known)?;
        if commits.is_empty() {
            return Ok(false);
        }
        for (v, actions) in commits {
            let op = actions.iter().find_map(|a| match a {
                Action::Operation(o) => Some(o.clone()),
                _ => None,
            });
            for a in actions {
                match a {
                    Action::Add(f) if f.deletion_vector => {
                        return Err(Error::not_implemented(format!(
                            "{}: version {v} of the Delta table adds file '{}' with a deletion vector, which LaminarDB does not read",
                            self.what,
                            clip(&f.path)
                        )));
                    }
                    Action::Add(f) if f.data_change => self.queue_file(f),
                    Action::Remove { path, data_change: true } => {
                        return Err(Error::invalid_data(format!(
                            "{}: version {v} of the Delta table at '{}' removes rows ({}, file '{}'); the source reads appended rows only",
                            self.what,
                            clip(&self.path),
                            op.as_deref().unwrap_or("an unnamed operation"),
                            clip(&path)
                        )));
                    }
                    Action::Metadata(m) => self.partition_columns = m.partition_columns,
                    Action::Protocol(p) => p.check_readable(&self.dir, &self.what)?,
                    _ => {}
                }
            }
            self.version = Some(v);
        }
        Ok(true)
    }

    /// The batches of data file `f`, with the source's columns (partition columns from its
    /// partition values, columns the file lacks as nulls), conformed to the declared types.
    fn read(&self, f: &AddFile) -> Result<Batches> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let path = self.dir.join(&f.path);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::invalid_data(format!(
                    "data file '{}' of the Delta table is listed in its log but missing (vacuumed?)",
                    clip(&f.path)
                )));
            }
            Err(e) => return Err(Error::new(ErrorKind::Io, format!("cannot open '{}': {e}", path.display()))),
        };
        let name = f.path.clone();
        let decode = move |e: String| Error::invalid_data(format!("data file '{}': {e}", clip(&name)));
        let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| decode(e.to_string()))?;
        let file_schema = b.schema().clone();
        let mut cols: Vec<usize> =
            self.schema.fields().iter().filter_map(|fd| file_schema.index_of(fd.name()).ok()).collect();
        cols.sort_unstable();
        let mask = parquet::arrow::ProjectionMask::roots(b.parquet_schema(), cols);
        let reader = b.with_batch_size(BATCH_ROWS).with_projection(mask).build().map_err(|e| decode(e.to_string()))?;
        // How each declared column is made.
        enum Col {
            File(String),
            Partition(Option<String>),
            Null,
        }
        let mut plan = vec![];
        for fd in self.schema.fields() {
            plan.push(if file_schema.index_of(fd.name()).is_ok() {
                Col::File(fd.name().clone())
            } else if self.partition_columns.contains(fd.name()) {
                // An empty partition value is null (PROTOCOL.md).
                Col::Partition(f.partition_values.get(fd.name()).cloned().flatten().filter(|v| !v.is_empty()))
            } else if fd.is_nullable() {
                Col::Null
            } else {
                return Err(decode(format!(
                    "no column '{}', which the source declares NOT NULL (the file has: {})",
                    fd.name(),
                    clip(&file_schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "))
                )));
            });
        }
        let schema = self.schema.clone();
        let source = self.source.clone();
        let decode2 = decode.clone();
        Ok(Box::new(reader.map(move |r| {
            let b = r.map_err(|e| decode2(e.to_string()))?;
            let n = b.num_rows();
            let mut fields = vec![];
            let mut arrays: Vec<ArrayRef> = vec![];
            for (fd, c) in schema.fields().iter().zip(&plan) {
                let a = match c {
                    Col::File(name) => b.column(b.schema().index_of(name).expect("projected")).clone(),
                    Col::Partition(Some(v)) => {
                        let s = StringArray::from_iter_values(std::iter::repeat_n(v.as_str(), n));
                        cast(&s, fd.data_type())
                            .map_err(|e| decode2(format!("partition value '{}' of '{}': {e}", clip(v), fd.name())))?
                    }
                    Col::Partition(None) | Col::Null => new_null_array(fd.data_type(), n),
                };
                fields.push(Field::new(fd.name(), a.data_type().clone(), true));
                arrays.push(a);
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
            conform(&source, &schema, &batch)
        })))
    }
}

impl SourceReader for DeltaSource {
    fn describe(&self) -> String {
        format!("DELTA '{}'", clip(&self.path))
    }

    fn open(&mut self, positions: &Positions) -> Result<()> {
        for (part, pos) in positions {
            if let Some(v) = part.strip_prefix(SNAPSHOT) {
                self.snapshot = Some(v.parse().map_err(|_| {
                    Error::invalid_data(format!("{}: bad snapshot version '{}' in the checkpoint", self.what, clip(v)))
                })?);
            } else if pos == FINISHED {
                self.finished.insert(part.clone());
            } else {
                let rows = pos.parse::<usize>().map_err(|_| {
                    Error::invalid_data(format!("{}: bad position '{}' of file '{}'", self.what, clip(pos), clip(part)))
                })?;
                self.started.insert(part.clone(), rows);
            }
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll> {
        loop {
            if let Some(cur) = &mut self.current {
                let Some(next) = cur.batches.next() else {
                    let (name, rows) = (cur.name.clone(), cur.rows);
                    self.current = None;
                    self.finished.insert(name.clone());
                    let empty = RecordBatch::new_empty(self.schema.clone());
                    return Ok(Poll::Data(
                        empty,
                        Position { partition: name, offset: rows.to_string(), finished: true },
                    ));
                };
                let mut batch = next.map_err(|e| e.context(&self.what))?;
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
            if let Some(f) = self.queue.pop_front() {
                match self.read(&f) {
                    Ok(batches) => {
                        let skip = self.started.remove(&f.path).unwrap_or(0);
                        self.current = Some(Reading { name: f.path, batches: batches.peekable(), rows: 0, skip });
                        continue;
                    }
                    Err(e) => {
                        if e.kind() == ErrorKind::Io {
                            self.queue.push_front(f); // retried
                        }
                        return Err(e);
                    }
                }
            }
            if self.version.is_none() {
                if !self.load_snapshot()? {
                    return Ok(Poll::Pending);
                }
                // Recorded first, so a reopened source starts from the same snapshot.
                let marker = format!("{SNAPSHOT}{}", self.snapshot.expect("loaded"));
                let empty = RecordBatch::new_empty(self.schema.clone());
                return Ok(Poll::Data(empty, Position { partition: marker, offset: String::new(), finished: true }));
            }
            if self.monitor.is_none() {
                return Ok(Poll::End);
            }
            if !self.follow()? {
                return Ok(Poll::Pending);
            }
            if self.queue.is_empty() {
                return Ok(Poll::Pending);
            }
        }
    }

    fn poll_interval(&self) -> Duration {
        self.monitor.unwrap_or(Duration::from_secs(1))
    }
}
