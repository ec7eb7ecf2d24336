//! The `DELTA` sink. Results are written as Parquet files into a staging directory inside the
//! table (`.laminar-staging/<sink>/`, which Delta readers never list: they read the log); at a
//! checkpoint the open files are finished and fsynced and their names go into the checkpoint;
//! once the checkpoint is durable the files are renamed into the table (into their partition
//! directories) and one commit adds them, with a `txn` action (application id = `sink.id`,
//! version = the epoch). After a crash, the restored checkpoint's files are renamed again (a no-op
//! when done) and committed unless the log's `txn` for the sink already holds that epoch; every
//! later staged file is deleted (the replay writes those results again). An epoch that wrote no
//! rows makes no commit.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Value, json};

use super::log::{self, Action, AddFile, Metadata, Snapshot};
use super::table_dir;
use crate::connector::{Options, Sink};
use crate::error::{Error, ErrorKind, Result, clip};

/// The values of the partition columns of one group of rows (None: null).
type PartKey = Vec<Option<String>>;

pub(crate) struct DeltaSink {
    what: String,
    path: String,
    dir: PathBuf,
    staging: PathBuf,
    input: SchemaRef,
    app_id: String,
    /// Partition columns (names, and indices in the input), as the table has them.
    partition_by: Vec<String>,
    part_idx: Vec<usize>,
    /// The other columns, written to the data files with their physical types.
    data_idx: Vec<usize>,
    file_schema: SchemaRef,
    /// Input columns the table declares NOT NULL.
    not_null: Vec<usize>,
    roll_bytes: usize,
    run: String,
    open: HashMap<PartKey, OpenFile>,
    prepared: Vec<StagedFile>,
    files: u64,
    /// The latest version of the log this sink has read or written.
    version: u64,
    /// The latest `txn` version of `app_id` in the log.
    txn: Option<i64>,
    committed: u64,
    rows: u64,
    /// `sink.compact-every`: epochs between compactions of small files (0: never).
    compact_every: u64,
    since_compact: u64,
    compactions: u64,
    /// The table's live data files (path → file), kept up to date with every commit read or
    /// written, for compaction.
    live: BTreeMap<String, AddFile>,
}

struct OpenFile {
    staged: StagedFile,
    writer: parquet::arrow::ArrowWriter<File>,
}

/// A data file: its name in staging, its path in the table, its partition values.
#[derive(Clone)]
struct StagedFile {
    name: String,
    rel: String,
    values: Vec<Option<String>>,
    size: u64,
    rows: u64,
}

impl DeltaSink {
    pub(crate) fn new(sink: &str, input: SchemaRef, mut o: Options) -> Result<DeltaSink> {
        let what = format!("DELTA sink '{sink}'");
        let path = o.required("path")?;
        let dir = table_dir(&what, &path)?;
        let partition_by: Vec<String> = o
            .get("partition-by")
            .map(|p| p.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
            .unwrap_or_default();
        let roll_bytes = match o.get("sink.rolling-policy.file-size") {
            None => 128 << 20,
            Some(v) => crate::config::parse_bytes(&v)
                .map_err(|m| Error::invalid_argument(format!("{what}: option 'sink.rolling-policy.file-size': {m}")))?,
        };
        let app_id = o.get("sink.id").unwrap_or_else(|| format!("laminardb:{sink}"));
        let compact_every = match o.get("sink.compact-every") {
            None => 0,
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                Error::invalid_argument(format!(
                    "{what}: option 'sink.compact-every' is '{}'; expected a number of epochs (0: never)",
                    clip(&v)
                ))
            })?,
        };
        o.choice("sink.mode", &["append"], "append").map_err(|e| {
            Error::not_implemented(format!(
                "{}; an upsert (MERGE) into Delta is not available yet: a changelog is appended with its __weight column",
                e.message()
            ))
        })?;
        o.finish()?;
        for f in input.fields() {
            if log::delta_type(f.data_type()).is_none() {
                return Err(Error::not_implemented(format!(
                    "{what}: column '{}' is of type {}, which has no Delta type here (supported: booleans, integers, floats, decimals, strings, binary, dates, timestamps)",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        let staging = crate::connector::files::staging_dir(&dir, sink);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let run = format!("{:012x}", (nanos as u64 ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff);
        let mut s = DeltaSink {
            what,
            path,
            dir,
            staging,
            input,
            app_id,
            partition_by: vec![],
            part_idx: vec![],
            data_idx: vec![],
            file_schema: Arc::new(Schema::empty()),
            not_null: vec![],
            roll_bytes: roll_bytes.max(1),
            run,
            open: HashMap::new(),
            prepared: vec![],
            files: 0,
            version: 0,
            txn: None,
            committed: 0,
            rows: 0,
            compact_every,
            since_compact: 0,
            compactions: 0,
            live: BTreeMap::new(),
        };
        s.set_partitions(partition_by)?;
        Ok(s)
    }

    fn set_partitions(&mut self, cols: Vec<String>) -> Result<()> {
        let mut part_idx = vec![];
        for c in &cols {
            let i = self.input.index_of(c).map_err(|_| {
                Error::invalid_argument(format!(
                    "{}: partition column '{}' is not a column of the input",
                    self.what,
                    clip(c)
                ))
            })?;
            let t = self.input.field(i).data_type();
            let ok = matches!(
                t,
                DataType::Boolean
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Date32
            );
            if !ok {
                return Err(Error::not_implemented(format!(
                    "{}: partition column '{c}' is of type {t}; partition by booleans, integers, strings or dates",
                    self.what
                )));
            }
            part_idx.push(i);
        }
        self.data_idx = (0..self.input.fields().len()).filter(|i| !part_idx.contains(i)).collect();
        self.file_schema = Arc::new(Schema::new(
            self.data_idx
                .iter()
                .map(|&i| {
                    let f = self.input.field(i);
                    Field::new(f.name(), log::physical_type(f.data_type()), f.is_nullable())
                })
                .collect::<Vec<_>>(),
        ));
        self.partition_by = cols;
        self.part_idx = part_idx;
        Ok(())
    }

    /// The table's schema for the input, as `metaData.schemaString` holds it.
    fn schema_string(&self) -> String {
        let fields: Vec<Value> = self.input.fields().iter().filter_map(|f| log::delta_field(f)).collect();
        json!({"type": "struct", "fields": fields}).to_string()
    }

    fn protocol(&self) -> Value {
        let ntz = self.input.fields().iter().any(|f| matches!(f.data_type(), DataType::Timestamp(_, None)));
        if ntz {
            json!({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["timestampNtz"], "writerFeatures": ["timestampNtz"]}})
        } else {
            json!({"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}})
        }
    }

    fn commit_info(&self, operation: &str, parameters: Value) -> Value {
        json!({"commitInfo": {
            "timestamp": log::now_ms(),
            "operation": operation,
            "operationParameters": parameters,
            "engineInfo": concat!("LaminarDB/", env!("CARGO_PKG_VERSION")),
            "isBlindAppend": true,
        }})
    }

    /// Creates the table at version 0 when there is none; checks it otherwise.
    fn open_table(&mut self) -> Result<()> {
        loop {
            if let Some(snap) = Snapshot::load(&self.dir)? {
                snap.check_writable(&self.dir, &self.what)?;
                self.check_table(&snap.metadata)?;
                self.version = snap.version;
                self.txn = snap.txns.get(&self.app_id).copied();
                self.live = snap.files;
                return Ok(());
            }
            std::fs::create_dir_all(&self.dir).map_err(|e| io("cannot create the table directory", &self.dir, e))?;
            let meta = json!({"metaData": {
                "id": log::uuid(),
                "format": {"provider": "parquet", "options": {}},
                "schemaString": self.schema_string(),
                "partitionColumns": self.partition_by,
                "configuration": {},
                "createdTime": log::now_ms(),
            }});
            let info = self.commit_info(
                "CREATE TABLE",
                json!({"mode": "ErrorIfExists", "partitionBy": serde_json::to_string(&self.partition_by).unwrap_or_default()}),
            );
            // Another writer may create it at the same moment: then check theirs.
            log::try_commit(&self.dir, 0, &[info, self.protocol(), meta])?;
        }
    }

    /// The table's columns must be the input's: the same names and Delta types (any order), and
    /// its partition columns those of `partition-by` when the option is given.
    fn check_table(&mut self, m: &Metadata) -> Result<()> {
        let mismatch = |detail: String| {
            let table: Vec<String> = m.fields.iter().map(|f| format!("{} {}", f.name, log::type_name(&f.ty))).collect();
            let ours: Vec<String> = self
                .input
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), log::delta_type(f.data_type()).unwrap_or_default()))
                .collect();
            Error::invalid_argument(format!(
                "{}: the Delta table at '{}' does not fit the input: {detail} (table: {}; input: {})",
                self.what,
                clip(&self.path),
                clip(&table.join(", ")),
                clip(&ours.join(", "))
            ))
        };
        let mut not_null = vec![];
        for f in &m.fields {
            let Ok(i) = self.input.index_of(&f.name) else {
                return Err(mismatch(format!("the input has no column '{}'", f.name)));
            };
            let ours = log::delta_type(self.input.field(i).data_type()).unwrap_or_default();
            if Value::String(ours.clone()) != f.ty {
                return Err(mismatch(format!(
                    "column '{}' is {} in the table and {ours} in the input",
                    f.name,
                    log::type_name(&f.ty)
                )));
            }
            if !f.nullable && self.input.field(i).is_nullable() {
                not_null.push(i);
            }
        }
        if let Some(extra) = self.input.fields().iter().find(|f| !m.fields.iter().any(|t| &t.name == f.name())) {
            return Err(mismatch(format!("the table has no column '{}'", extra.name())));
        }
        if !self.partition_by.is_empty() && self.partition_by != m.partition_columns {
            return Err(mismatch(format!(
                "the table is partitioned by ({}), partition-by says ({})",
                m.partition_columns.join(", "),
                self.partition_by.join(", ")
            )));
        }
        self.set_partitions(m.partition_columns.clone())?;
        self.not_null = not_null;
        Ok(())
    }

    /// Reads the commits other writers made since the last one seen: a changed schema or
    /// protocol is checked again, and a `txn` of this sink's id written by someone else is an
    /// error (two writers with one `sink.id`) unless `recovering`.
    fn catch_up(&mut self, recovering: bool) -> Result<()> {
        for (v, actions) in log::commits_after(&self.dir, self.version)? {
            for a in actions {
                match a {
                    Action::Txn { app_id, version } if app_id == self.app_id => {
                        if !recovering {
                            return Err(Error::invalid_state(format!(
                                "{}: version {v} of the Delta table at '{}' was committed by another writer with the same sink.id '{}'; give each writer its own sink.id",
                                self.what,
                                clip(&self.path),
                                clip(&self.app_id)
                            )));
                        }
                        self.txn = Some(version);
                    }
                    Action::Add(f) => {
                        self.live.insert(f.path.clone(), f);
                    }
                    Action::Remove { path, .. } => {
                        self.live.remove(&path);
                    }
                    Action::Metadata(m) => {
                        m.check_writable(&self.dir, &self.what)?;
                        self.check_table(&m)?;
                    }
                    Action::Protocol(p) => p.check_writable(&self.dir, &self.what)?,
                    _ => {}
                }
            }
            self.version = v;
        }
        Ok(())
    }

    /// Commits `actions` with a `txn` of `epoch` at the next free version. With `recovering`,
    /// nothing is written when the log's `txn` for this sink already holds `epoch` (the commit
    /// went through before a crash). Returns whether it wrote a commit.
    fn commit_log(&mut self, epoch: i64, actions: Vec<Value>, recovering: bool) -> Result<bool> {
        loop {
            self.catch_up(recovering)?;
            if recovering && self.txn.is_some_and(|t| t >= epoch) {
                return Ok(false);
            }
            let mut all = Vec::with_capacity(actions.len() + 1);
            all.push(json!({"txn": {"appId": self.app_id, "version": epoch, "lastUpdated": log::now_ms()}}));
            all.extend(actions.iter().cloned());
            if log::try_commit(&self.dir, self.version + 1, &all)? {
                self.version += 1;
                self.txn = Some(epoch);
                return Ok(true);
            }
        }
    }

    /// Splits `batch` by its partition values: (values, the rows' data columns, physical types).
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(PartKey, RecordBatch)>> {
        let data = |rows: Option<&UInt32Array>| -> Result<RecordBatch> {
            let cols = self
                .data_idx
                .iter()
                .zip(self.file_schema.fields())
                .map(|(&i, f)| {
                    let c = match rows {
                        Some(r) => take(batch.column(i).as_ref(), r, None)?,
                        None => batch.column(i).clone(),
                    };
                    Ok(if c.data_type() == f.data_type() { c } else { cast(&c, f.data_type())? })
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            Ok(RecordBatch::try_new(self.file_schema.clone(), cols)?)
        };
        if self.part_idx.is_empty() {
            return Ok(vec![(vec![], data(None)?)]);
        }
        let values: Vec<ArrayRef> = self
            .part_idx
            .iter()
            .map(|&i| cast(batch.column(i), &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        let values: Vec<&StringArray> =
            values.iter().map(|a| a.as_any().downcast_ref::<StringArray>().expect("cast to Utf8")).collect();
        let mut groups: BTreeMap<PartKey, Vec<u32>> = BTreeMap::new();
        for r in 0..batch.num_rows() {
            // An empty string is null in Delta's partition values (PROTOCOL.md).
            let key: PartKey = values
                .iter()
                .map(|v| (v.is_valid(r) && !v.value(r).is_empty()).then(|| v.value(r).to_string()))
                .collect();
            groups.entry(key).or_default().push(r as u32);
        }
        groups.into_iter().map(|(k, rows)| Ok((k, data(Some(&UInt32Array::from(rows)))?))).collect()
    }

    fn finish(&mut self, key: &PartKey) -> Result<()> {
        let Some(f) = self.open.remove(key) else { return Ok(()) };
        let path = self.staging.join(&f.staged.name);
        let mut file = f
            .writer
            .into_inner()
            .map_err(|e| Error::new(ErrorKind::Io, format!("{}: writing '{}': {e}", self.what, path.display())))?;
        let synced = file.flush().and_then(|_| file.sync_all()).and_then(|_| file.metadata());
        let meta = synced.map_err(|e| io("cannot write", &path, e))?;
        let mut staged = f.staged;
        staged.size = meta.len();
        self.prepared.push(staged);
        Ok(())
    }

    fn publish(&self, f: &StagedFile) -> Result<()> {
        let (from, to) = (self.staging.join(&f.name), self.dir.join(&f.rel));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            // Moved before a crash: moving again is a no-op.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) => Err(io("cannot move the finished file", &from, e)),
        }
    }

    /// Moves `files` into the table and commits them as `epoch`.
    fn publish_and_commit(&mut self, epoch: u64, files: &[StagedFile], recovering: bool) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        // Every directory a file went into, and its parents up to the table's (a partition
        // directory created now must itself be durable in its parent before the commit).
        let mut dirs = std::collections::BTreeSet::new();
        for f in files {
            self.publish(f)?;
            let mut d = self.dir.join(&f.rel).parent().map(PathBuf::from).unwrap_or_else(|| self.dir.clone());
            loop {
                dirs.insert(d.clone());
                if d == self.dir || !d.starts_with(&self.dir) {
                    break;
                }
                match d.parent() {
                    Some(p) => d = p.to_path_buf(),
                    None => break,
                }
            }
        }
        for d in &dirs {
            log::sync_dir(d)?;
        }
        let now = log::now_ms();
        let mut actions = vec![self.commit_info(
            "STREAMING UPDATE",
            json!({"outputMode": "Append", "queryId": self.app_id, "epochId": epoch.to_string()}),
        )];
        for f in files {
            let pv: serde_json::Map<String, Value> = self
                .partition_by
                .iter()
                .zip(&f.values)
                .map(|(c, v)| (c.clone(), v.clone().map(Value::String).unwrap_or(Value::Null)))
                .collect();
            actions.push(json!({"add": {
                "path": log::percent_encode(&f.rel),
                "partitionValues": pv,
                "size": f.size,
                "modificationTime": now,
                "dataChange": true,
                "stats": json!({"numRecords": f.rows}).to_string(),
            }}));
        }
        if self.commit_log(epoch as i64, actions, recovering)? {
            self.committed += 1;
            self.rows += files.iter().map(|f| f.rows).sum::<u64>();
            for f in files {
                let values = self.partition_by.iter().cloned().zip(f.values.iter().cloned()).collect();
                let add = AddFile {
                    path: f.rel.clone(),
                    partition_values: values,
                    data_change: true,
                    deletion_vector: false,
                    size: f.size,
                };
                self.live.insert(f.rel.clone(), add);
            }
            self.since_compact += 1;
            if self.compact_every > 0 && self.since_compact >= self.compact_every {
                self.since_compact = 0;
                // The epoch is committed whatever happens here: a failed compaction leaves
                // the small files as they are (and at most an orphan file no commit names).
                if let Err(e) = self.compact() {
                    ::log::warn!(target: "laminardb", "{}: compaction skipped: {e}", self.what);
                }
            }
        }
        Ok(())
    }

    /// Rewrites the table's small files (under half the rolling size), per partition directory,
    /// into files of up to the rolling size: one commit removing them and adding the new file,
    /// both with `dataChange = false` (readers of changes, the DELTA source among them, skip it).
    /// Files whose columns differ from what this sink writes are left alone.
    fn compact(&mut self) -> Result<()> {
        let small = (self.roll_bytes as u64 / 2).max(1);
        let mut groups: BTreeMap<String, Vec<AddFile>> = BTreeMap::new();
        for f in self.live.values().filter(|f| f.size < small && !f.deletion_vector) {
            let dir = f.path.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
            groups.entry(dir).or_default().push(f.clone());
        }
        for (dir, files) in groups {
            let (mut pick, mut total) = (vec![], 0);
            for f in files {
                if total + f.size > self.roll_bytes as u64 && pick.len() >= 2 {
                    break;
                }
                total += f.size;
                pick.push(f);
            }
            if pick.len() >= 2 {
                self.compact_group(&dir, pick)?;
            }
        }
        Ok(())
    }

    fn compact_group(&mut self, dir: &str, pick: Vec<AddFile>) -> Result<()> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        self.files += 1;
        let name = format!("part-compact-{}-{:05}.snappy.parquet", self.run, self.files);
        std::fs::create_dir_all(&self.staging).map_err(|e| io("cannot create", &self.staging, e))?;
        let staged = self.staging.join(&name);
        let file = File::create(&staged).map_err(|e| io("cannot create", &staged, e))?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, self.file_schema.clone(), Some(props))
            .map_err(|e| Error::internal(format!("parquet writer: {e}")))?;
        let mut rows = 0u64;
        let same = |a: &Schema, b: &Schema| {
            a.fields().len() == b.fields().len()
                && a.fields()
                    .iter()
                    .zip(b.fields())
                    .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
        };
        for f in &pick {
            let path = self.dir.join(&f.path);
            let bad = |e: String| Error::invalid_data(format!("compacting '{}': {e}", path.display()));
            let r =
                ParquetRecordBatchReaderBuilder::try_new(File::open(&path).map_err(|e| io("cannot open", &path, e))?)
                    .map_err(|e| bad(e.to_string()))?;
            if !same(r.schema(), &self.file_schema) {
                drop(writer);
                let _ = std::fs::remove_file(&staged);
                return Ok(());
            }
            for b in r.build().map_err(|e| bad(e.to_string()))? {
                let b = b.map_err(|e| bad(e.to_string()))?;
                rows += b.num_rows() as u64;
                writer.write(&b).map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", self.what)))?;
            }
        }
        let mut file = writer
            .into_inner()
            .map_err(|e| Error::new(ErrorKind::Io, format!("{}: writing '{}': {e}", self.what, staged.display())))?;
        let size = file
            .flush()
            .and_then(|_| file.sync_all())
            .and_then(|_| file.metadata())
            .map_err(|e| io("cannot write", &staged, e))?
            .len();
        let rel = if dir.is_empty() { name.clone() } else { format!("{dir}/{name}") };
        let values = pick[0].partition_values.clone();
        self.publish(&StagedFile { name, rel: rel.clone(), values: vec![], size, rows })?;
        log::sync_dir(self.dir.join(&rel).parent().unwrap_or(&self.dir))?;
        let now = log::now_ms();
        let pv: serde_json::Map<String, Value> =
            values.iter().map(|(k, v)| (k.clone(), v.clone().map(Value::String).unwrap_or(Value::Null))).collect();
        let mut actions = vec![json!({"commitInfo": {
            "timestamp": now,
            "operation": "OPTIMIZE",
            "operationParameters": {"targetSize": self.roll_bytes.to_string()},
            "engineInfo": concat!("LaminarDB/", env!("CARGO_PKG_VERSION")),
            "isBlindAppend": false,
        }})];
        for f in &pick {
            actions.push(json!({"remove": {
                "path": log::percent_encode(&f.path),
                "deletionTimestamp": now,
                "dataChange": false,
                "extendedFileMetadata": true,
                "partitionValues": pv,
                "size": f.size,
            }}));
        }
        actions.push(json!({"add": {
            "path": log::percent_encode(&rel),
            "partitionValues": pv,
            "size": size,
            "modificationTime": now,
            "dataChange": false,
            "stats": json!({"numRecords": rows}).to_string(),
        }}));
        loop {
            self.catch_up(false)?;
            // Another writer removed one of the files meanwhile: its rows are elsewhere now.
            if pick.iter().any(|f| !self.live.contains_key(&f.path)) {
                let _ = std::fs::remove_file(self.dir.join(&rel));
                return Ok(());
            }
            if log::try_commit(&self.dir, self.version + 1, &actions)? {
                self.version += 1;
                for f in &pick {
                    self.live.remove(&f.path);
                }
                let add = AddFile {
                    path: rel.clone(),
                    partition_values: values,
                    data_change: false,
                    deletion_vector: false,
                    size,
                };
                self.live.insert(rel, add);
                self.compactions += 1;
                return Ok(());
            }
        }
    }

    fn clear_staging(&mut self) -> Result<()> {
        self.open.clear();
        self.prepared.clear();
        crate::connector::files::clear_staging(&self.staging)
    }
}

use crate::connector::files::io_error as io;

fn encode(epoch: u64, files: &[StagedFile]) -> Vec<u8> {
    let files: Vec<Value> = files
        .iter()
        .map(|f| json!({"name": f.name, "rel": f.rel, "values": f.values, "size": f.size, "rows": f.rows}))
        .collect();
    json!({"epoch": epoch, "files": files}).to_string().into_bytes()
}

fn decode(c: &[u8]) -> Result<(u64, Vec<StagedFile>)> {
    let bad = || Error::invalid_data("a DELTA sink's committable in the checkpoint is malformed");
    let v: Value = serde_json::from_slice(c).map_err(|_| bad())?;
    let epoch = v.get("epoch").and_then(Value::as_u64).ok_or_else(bad)?;
    let files = v
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|f| {
            Some(StagedFile {
                name: f.get("name")?.as_str()?.to_string(),
                rel: f.get("rel")?.as_str()?.to_string(),
                values: f.get("values")?.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect(),
                size: f.get("size")?.as_u64()?,
                rows: f.get("rows")?.as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    Ok((epoch, files))
}

impl Sink for DeltaSink {
    fn describe(&self) -> String {
        format!("DELTA '{}' (append, exactly-once, txn app id '{}')", clip(&self.path), clip(&self.app_id))
    }

    fn write(&mut self, epoch: u64, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(&i) = self.not_null.iter().find(|&&i| batch.column(i).null_count() > 0) {
            return Err(Error::invalid_data(format!(
                "{}: column '{}' is NOT NULL in the Delta table and a result has a null there",
                self.what,
                self.input.field(i).name()
            )));
        }
        for (key, rows) in self.split(batch)? {
            if !self.open.contains_key(&key) {
                self.files += 1;
                std::fs::create_dir_all(&self.staging).map_err(|e| io("cannot create", &self.staging, e))?;
                let name = format!("part-{epoch:010}-{}-{:05}.snappy.parquet", self.run, self.files);
                let dir: Vec<String> = self
                    .partition_by
                    .iter()
                    .zip(&key)
                    .map(|(c, v)| format!("{}={}", log::hive_escape(Some(c)), log::hive_escape(v.as_deref())))
                    .collect();
                let rel = if dir.is_empty() { name.clone() } else { format!("{}/{name}", dir.join("/")) };
                let path = self.staging.join(&name);
                let file = File::create(&path).map_err(|e| io("cannot create", &path, e))?;
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                let writer = parquet::arrow::ArrowWriter::try_new(file, self.file_schema.clone(), Some(props))
                    .map_err(|e| Error::internal(format!("parquet writer: {e}")))?;
                let staged = StagedFile { name, rel, values: key.clone(), size: 0, rows: 0 };
                self.open.insert(key.clone(), OpenFile { staged, writer });
            }
            let f = self.open.get_mut(&key).expect("opened");
            f.writer.write(&rows).map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", self.what)))?;
            f.staged.rows += rows.num_rows() as u64;
            if f.writer.bytes_written() + f.writer.in_progress_size() >= self.roll_bytes {
                self.finish(&key)?;
            }
        }
        Ok(())
    }

    fn prepare_commit(&mut self, epoch: u64) -> Result<Vec<u8>> {
        let keys: Vec<PartKey> = self.open.keys().cloned().collect();
        for k in keys {
            self.finish(&k)?;
        }
        if self.prepared.is_empty() {
            return Ok(vec![]);
        }
        log::sync_dir(&self.staging)?;
        Ok(encode(epoch, &self.prepared))
    }

    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<()> {
        if committable.is_empty() {
            return Ok(());
        }
        let (e, files) = decode(committable)?;
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let _ = epoch; // the committable's own epoch is the one prepared
        self.publish_and_commit(e, &files, false)?;
        self.prepared.retain(|p| !names.contains(&p.name.as_str()));
        Ok(())
    }

    fn recover(&mut self, restored: Option<&[u8]>) -> Result<()> {
        self.open_table()?;
        match restored {
            // Created now, or after the last checkpoint: its epochs start afresh, so an earlier
            // sink's txn for this id (higher epochs) must not make a commit look done.
            None => {
                // (open_table just read the log to its end: self.txn is the latest.)
                if self.txn.is_some_and(|t| t > 0) {
                    let info = self.commit_info("SET TRANSACTION", json!({"appId": self.app_id, "version": "0"}));
                    self.commit_log(0, vec![info], false)?;
                }
            }
            Some([]) => {}
            Some(c) => {
                let (epoch, files) = decode(c)?;
                // Committed before the crash: nothing to move (its files may since have been
                // compacted away and vacuumed).
                self.catch_up(true)?;
                if self.txn.is_some_and(|t| t >= epoch as i64) {
                    return self.clear_staging();
                }
                for f in &files {
                    self.publish(f).map_err(|e| {
                        Error::new(
                            ErrorKind::Io,
                            format!("{} (a file of the restored checkpoint is missing)", e.message()),
                        )
                    })?;
                }
                self.publish_and_commit(epoch, &files, true)?;
            }
        }
        self.clear_staging()
    }

    fn abort(&mut self) -> Result<()> {
        self.clear_staging()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("epochs_committed", self.committed),
            ("rows_written", self.rows),
            ("table_version", self.version),
            ("compactions", self.compactions),
        ]
    }
}
