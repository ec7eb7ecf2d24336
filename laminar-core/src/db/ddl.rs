//! Catalog statements: CREATE SOURCE/TABLE/STREAM/MATERIALIZED VIEW/SINK, DROP, SHOW,
//! DESCRIBE, EXPLAIN, and the catalog lookups they share.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::connector::{self, Positions, SourceReader};
use crate::error::{Error, Result, nearest_name};
use crate::operator::window::TimeScale;
use crate::operator::{NO_WATERMARK, StreamKind};
use crate::plan::{PlanOptions, RelationInfo, plan_continuous};
use crate::runtime::ingest::normalize_schema;
use crate::runtime::mv::MvStore;
use crate::sql::{self, CreateSource, CreateStream, ObjectKind, Statement, WatermarkDelay};

use super::*;

/// Description of a catalog object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub name: String,
    pub kind: ObjectKind,
    /// Schema as subscribers see it (with `__weight` for changelogs).
    pub schema: SchemaRef,
    pub stream_kind: StreamKind,
    pub sql: String,
    /// The sources and streams a stream reads (empty for a source).
    pub inputs: Vec<String>,
}

/// A statement's definition without IF NOT EXISTS / OR REPLACE and with layout normalised, to
/// tell whether two CREATEs define the same object.
pub(super) fn definition_key(text: &str) -> String {
    match sql::parse_one(text).map(|p| p.statement) {
        Ok(Statement::CreateSource(mut c)) => {
            c.if_not_exists = false;
            c.or_replace = false;
            c.columns_sql = c.columns_sql.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{c:?}")
        }
        Ok(Statement::CreateStream(c)) => format!(
            "{} {} {:?} {:?} {:?} {:?} {}",
            c.name, c.materialized, c.emit, c.allowed_lateness, c.late_data_to, c.state_ttl, c.query
        ),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// A name a user can write, read back and pass through C: not empty, no NUL character.
pub(super) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::plan(format!("a {what} name must not be empty")));
    }
    if name.contains('\0') {
        return Err(Error::plan(format!(
            "the {what} name '{}' contains a NUL character",
            crate::error::clip(&name.replace('\0', "\\0"))
        )));
    }
    Ok(())
}

impl Database {
    pub(super) fn relations(&self, eng: &Engine) -> HashMap<String, RelationInfo> {
        let mut m = HashMap::new();
        for (n, s) in &eng.sources {
            let kind = if s.table.is_some() { StreamKind::Changelog } else { StreamKind::AppendOnly };
            m.insert(n.clone(), RelationInfo { schema: s.queue.schema.clone(), kind, time_col: s.time.map(|t| t.0) });
        }
        for (n, s) in &eng.streams {
            m.insert(
                n.clone(),
                RelationInfo { schema: s.logical_schema.clone(), kind: s.kind.clone(), time_col: s.time_col },
            );
        }
        m
    }

    pub(super) fn name_taken(eng: &Engine, name: &str) -> Option<&'static str> {
        if eng.sources.contains_key(name) {
            Some("source")
        } else if let Some(s) = eng.streams.get(name) {
            Some(if s.materialized { "materialized view" } else { "stream" })
        } else if eng.sinks.contains_key(name) {
            Some("sink")
        } else {
            None
        }
    }

    pub(super) fn create_source(&self, cs: CreateSource, text: &str) -> Result<ExecuteResult> {
        check_name(if cs.table { "table" } else { "source" }, &cs.name)?;
        if cs.connector.is_none()
            && let Some(k) = cs.options.keys().find(|k| *k != "idle_timeout")
        {
            return Err(Error::invalid_argument(format!(
                "unknown source option '{}' (known: idle_timeout; a connector's options go with FROM <connector> WITH (…))",
                crate::error::clip(k)
            )));
        }
        let idle_timeout = match cs.options.get("idle_timeout") {
            Some(v) => Some(
                crate::config::parse_duration(v).map_err(|m| Error::invalid_argument(format!("idle_timeout: {m}")))?,
            ),
            None => self.inner.config.idle_timeout,
        };
        // DataFusion's own type mapping, through a CREATE TABLE plan.
        let schema = {
            let ctx = crate::plan::session_context();
            let sql_text = format!("CREATE TABLE __laminar_schema {}", cs.columns_sql);
            let plan = futures::executor::block_on(ctx.state().create_logical_plan(&sql_text))?;
            normalize_schema(plan.schema().as_arrow())
        };
        let mut seen = std::collections::HashSet::new();
        for f in schema.fields() {
            check_name("column", f.name())?;
            if !seen.insert(f.name().as_str()) {
                return Err(Error::plan(format!(
                    "{} '{}' declares column '{}' more than once",
                    if cs.table { "table" } else { "source" },
                    cs.name,
                    f.name()
                )));
            }
        }
        // A table's key columns are NOT NULL: a pushed NULL key is refused with the batch.
        let (schema, table) = if cs.table {
            let mut key_idx = vec![];
            for k in &cs.primary_key {
                let i = schema.index_of(k).map_err(|_| {
                    let hint = nearest_name(k, schema.fields().iter().map(|f| f.name().as_str()))
                        .map(|n| format!("; did you mean '{n}'?"))
                        .unwrap_or_default();
                    Error::plan(format!("PRIMARY KEY column '{k}' is not a column of table '{}'{hint}", cs.name))
                })?;
                if key_idx.contains(&i) {
                    return Err(Error::plan(format!("PRIMARY KEY names '{k}' twice")));
                }
                key_idx.push(i);
            }
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() && !key_idx.contains(&i)))
                .collect();
            let schema: SchemaRef = Arc::new(Schema::new(fields));
            let t = crate::runtime::table::TableState::try_new(schema.clone(), key_idx)?;
            (schema, Some(t))
        } else {
            (schema, None)
        };
        let mut cs = cs;
        self.task_options("source", &cs.name, cs.connector.as_deref(), &mut cs.options)?;
        // The connector checks its options (and the columns it can fill) now, before anything exists.
        let mut reader = match cs.connector.as_deref() {
            None => None,
            Some(kind) => Some(connector::source_for(
                kind,
                &cs.name,
                &schema,
                cs.table.then_some(cs.primary_key.as_slice()),
                &cs.options,
                &["idle_timeout"],
            )?),
        };
        if let Some(r) = reader.as_mut() {
            r.checkpoints_retained(self.inner.config.checkpoints_retained.max(1));
        }
        if !cs.table && cs.connector.as_deref().is_some_and(|k| k.eq_ignore_ascii_case("postgres_cdc")) {
            return Err(Error::invalid_argument(format!(
                "source '{}': POSTGRES_CDC reads a table's changes: declare it as CREATE TABLE … (…, PRIMARY KEY (…)) FROM POSTGRES_CDC WITH (…), with the captured table's primary key",
                cs.name
            )));
        }
        if !cs.table && cs.options.get("format").is_some_and(|f| f.trim().eq_ignore_ascii_case("debezium-json")) {
            return Err(Error::invalid_argument(format!(
                "source '{}': format 'debezium-json' reads changes: declare it as CREATE TABLE … PRIMARY KEY (…) FROM …, whose rows the changes upsert and delete",
                cs.name
            )));
        }
        if let Some(r) = reader.as_mut().filter(|_| !self.inner.recovering.load(Ordering::Acquire)) {
            r.check().map_err(|e| e.context(format!("source '{}' ({})", cs.name, r.describe())))?;
        }
        // `on_error = 'dead_letter'`: the source receiving the records that do not decode, created
        // now unless it exists (with the dead-letter columns: several sources may share one).
        let dead_letter = match (&reader, cs.options.get("dead_letter")) {
            (Some(_), Some(n)) => Some(n.clone()),
            _ => None,
        };
        if let Some(n) = &dead_letter {
            self.ensure_dead_letter_source(&cs.name, n)?;
        }
        let time = match &cs.watermark {
            None => None,
            Some(w) => {
                let idx = schema.index_of(&w.column).map_err(|_| {
                    Error::plan(format!("WATERMARK FOR '{}': no such column in source '{}'", w.column, cs.name))
                })?;
                let dt = schema.field(idx).data_type();
                let scale = TimeScale::for_type(dt).ok_or_else(|| {
                    Error::plan(format!(
                        "WATERMARK FOR '{}': column is {dt}, expected TIMESTAMP or BIGINT (epoch milliseconds)",
                        w.column
                    ))
                })?;
                let delay = match (w.delay, dt) {
                    (WatermarkDelay::None, _) => 0,
                    (WatermarkDelay::IntervalMicros(us), DataType::Timestamp(..)) => us,
                    (WatermarkDelay::Integer(ms), DataType::Int64) => ms.saturating_mul(1000),
                    (WatermarkDelay::IntervalMicros(us), DataType::Int64) => us,
                    (WatermarkDelay::IntervalMicros(us), _) => us,
                    (WatermarkDelay::Integer(_), _) => {
                        return Err(Error::plan(format!(
                            "WATERMARK FOR '{}': a TIMESTAMP column takes an INTERVAL delay, e.g. {} - INTERVAL '5' SECOND",
                            w.column, w.column
                        )));
                    }
                };
                if delay < 0 {
                    return Err(Error::plan("the watermark delay cannot be negative"));
                }
                Some((idx, scale, delay))
            }
        };
        let mut eng = self.inner.engine.lock();
        if let Some(what) = Self::name_taken(&eng, &cs.name) {
            if cs.if_not_exists {
                self.check_same_definition(&eng, &cs.name, text)?;
                return Ok(ExecuteResult {
                    message: format!("{what} '{}' already exists", cs.name),
                    ..Default::default()
                });
            }
            if !(cs.or_replace && what == "source") {
                return Err(Error::already_exists(format!("a {what} named '{}' already exists", cs.name)));
            }
            if eng.streams.values().any(|s| s.inputs.contains(&cs.name)) {
                return Err(Error::invalid_state(format!(
                    "cannot replace source '{}': streams read it (DROP … CASCADE first)",
                    cs.name
                )));
            }
            if let Some(old) = eng.sources.remove(&cs.name) {
                old.queue.dropped.store(true, Ordering::Release);
            }
        }
        let (permits_tx, permits_rx) = crossbeam_channel::bounded(self.inner.config.queue_capacity);
        let queue = Arc::new(SourceQueue {
            name: cs.name.clone(),
            schema,
            permits_tx,
            permits_rx,
            dropped: AtomicBool::new(false),
            checkpointed: parking_lot::Mutex::new(None),
            blocked_ns: Default::default(),
        });
        eng.sources.insert(
            cs.name.clone(),
            SourceRt {
                queue: queue.clone(),
                sql: text.to_string(),
                time,
                watermark: NO_WATERMARK,
                retained: VecDeque::new(),
                retained_rows: 0,
                rows_in: 0,
                batches_in: 0,
                bytes_in: 0,
                rows_late: 0,
                table,
                idle_timeout_ms: idle_timeout.map(|d| d.as_millis().max(1) as i64),
                last_active_ms: self.inner.clock.now_ms(),
                idle: false,
                positions: Positions::new(),
                partition_wm: HashMap::new(),
                finished_wm: NO_WATERMARK,
                stats: reader.as_ref().and_then(|r| r.stats()),
                dead_letter,
            },
        );
        drop(eng);
        if let Some(reader) = reader {
            // Started at the end of the `execute` call (or of recovery, which knows how far the
            // source had got).
            self.inner.deferred_readers.lock().push((queue, reader));
        }
        Ok(ExecuteResult {
            message: format!("created {} '{}'", if cs.table { "table" } else { "source" }, cs.name),
            ..Default::default()
        })
    }

    /// Creates the dead-letter source `name` of source `of`, or checks that the existing one has
    /// the dead-letter columns.
    fn ensure_dead_letter_source(&self, of: &str, name: &str) -> Result<()> {
        check_name("source", name)?;
        if name == of {
            return Err(Error::invalid_argument(format!(
                "source '{of}': option 'dead_letter' names the source itself; name another source"
            )));
        }
        let want = connector::dead_letter_schema();
        {
            let eng = self.inner.engine.lock();
            if let Some(s) = eng.sources.get(name) {
                let same = s.table.is_none()
                    && s.queue.schema.fields().len() == want.fields().len()
                    && s.queue
                        .schema
                        .fields()
                        .iter()
                        .zip(want.fields())
                        .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
                if same {
                    return Ok(());
                }
                return Err(Error::invalid_argument(format!(
                    "source '{of}': dead_letter '{name}' is a source whose columns are not the dead-letter columns ({})",
                    connector::DEAD_LETTER_COLUMNS
                )));
            }
            if let Some(what) = Self::name_taken(&eng, name) {
                return Err(Error::already_exists(format!(
                    "source '{of}': dead_letter '{name}' is a {what}; name a source, or a name not in use"
                )));
            }
        }
        let text = format!(
            "CREATE SOURCE IF NOT EXISTS \"{}\" ({})",
            name.replace('"', "\"\""),
            connector::DEAD_LETTER_COLUMNS
        );
        for st in sql::parse_sql(&text)? {
            self.execute_statement(st.statement, &st.text)?;
        }
        Ok(())
    }

    /// Refuses the options only the engine sets (`__laminar.…`), and sets them in a group
    /// member's task: its KAFKA sources read its partition, its KAFKA sinks write under a
    /// transactional id of the partition's.
    fn task_options(
        &self,
        what: &str,
        name: &str,
        connector: Option<&str>,
        options: &mut std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        if let Some(k) = options.keys().find(|k| k.starts_with("__laminar.")) {
            return Err(Error::invalid_argument(format!(
                "{what} '{name}': option '{}' is reserved for the engine",
                crate::error::clip(k)
            )));
        }
        if let (Some(t), Some(c)) = (self.inner.task.as_ref(), connector)
            && c.eq_ignore_ascii_case("kafka")
        {
            options.insert(connector::TASK_PARTITION_OPTION.into(), t.partition.to_string());
            if what == "sink" {
                options.insert(connector::TASK_GROUP_OPTION.into(), t.group.clone());
            }
        }
        Ok(())
    }

    /// Starts the readers of the connector sources created since the last call, at the positions
    /// their sources hold (restored by recovery, empty for a new source). Called once recovery is
    /// done and at the end of each `execute`, so a script that creates a source and the streams
    /// and sinks over it sees every row the source reads.
    pub(super) fn start_deferred_readers(&self) -> Result<()> {
        if self.inner.group.is_some() {
            // A group member's catalog reads nothing: its tasks do.
            self.inner.deferred_readers.lock().clear();
            return Ok(());
        }
        let mut first_err = None;
        for (queue, reader) in std::mem::take(&mut *self.inner.deferred_readers.lock()) {
            if queue.dropped.load(Ordering::Acquire) {
                continue; // dropped or replaced since
            }
            let positions = self.inner.engine.lock().sources.get(&queue.name).map(|s| s.positions.clone());
            if let Err(e) = self.start_reader(queue, reader, positions.unwrap_or_default()) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Starts a connector source's reader thread at `positions`. It holds the database weakly:
    /// dropping the last handle (or closing, or dropping the source) stops it.
    pub(super) fn start_reader(
        &self,
        queue: Arc<SourceQueue>,
        reader: Box<dyn SourceReader>,
        positions: Positions,
    ) -> Result<()> {
        let name = queue.name.clone();
        // The dead-letter source, and how far each partition's records already went to it (a
        // replay after recovery gives them again; those are not written twice).
        let dead_letter = {
            let eng = self.inner.engine.lock();
            eng.sources
                .get(&name)
                .and_then(|s| s.dead_letter.as_ref())
                .and_then(|d| eng.sources.get(d))
                .map(|d| (d.queue.clone(), d.positions.clone()))
        };
        let out = ConnectorOutput { db: Arc::downgrade(&self.inner), queue, dead_letter };
        connector::run_source(&name, reader, positions, Box::new(out), connector::RETRY_TIMEOUT)
    }

    /// `CREATE SINK name FROM input INTO <connector> WITH (…)`.
    pub(super) fn create_sink(&self, cs: sql::CreateSink, text: &str) -> Result<ExecuteResult> {
        check_name("sink", &cs.name)?;
        let mut eng = self.inner.engine.lock();
        if let Some(what) = Self::name_taken(&eng, &cs.name) {
            if cs.if_not_exists {
                self.check_same_definition(&eng, &cs.name, text)?;
                return Ok(ExecuteResult {
                    message: format!("{what} '{}' already exists", cs.name),
                    ..Default::default()
                });
            }
            if !(cs.or_replace && what == "sink") {
                return Err(Error::already_exists(format!("a {what} named '{}' already exists", cs.name)));
            }
        }
        let (schema, key) = if let Some(s) = eng.sources.get(&cs.input) {
            (s.queue.schema.clone(), s.table.as_ref().map(|t| t.key_names()))
        } else if let Some(s) = eng.streams.get(&cs.input) {
            let key = match &s.kind {
                StreamKind::Upsert { key } => Some(key.clone()),
                StreamKind::Changelog => s.changelog_key.clone(),
                StreamKind::AppendOnly => None,
            };
            (s.output_schema.clone(), key)
        } else {
            let all: Vec<String> = eng.sources.keys().chain(eng.streams.keys()).cloned().collect();
            let hint = nearest_name(&cs.input, all.iter().map(String::as_str))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            let what = if eng.sinks.contains_key(&cs.input) { " (a sink has no output to write)" } else { "" };
            return Err(Error::not_found(format!(
                "sink '{}': no stream, view, source or table named '{}'{what}{hint}",
                cs.name,
                crate::error::clip(&cs.input)
            )));
        };
        let mut cs = cs;
        self.task_options("sink", &cs.name, Some(&cs.connector), &mut cs.options)?;
        let mut sink = connector::sink_for(&cs.connector, &cs.name, &schema, key.as_deref(), &cs.options)?;
        if let Some(old) = eng.sinks.remove(&cs.name) {
            drop_sink(&cs.name, old);
        }
        // A sink recreated from a checkpoint publishes that checkpoint's results (if a crash came
        // between the checkpoint and its commit); any other discards what an earlier run staged.
        let restored = self.inner.restored_sinks.lock().remove(&cs.name);
        let describe = sink.describe();
        let mut failed = None;
        // A group member's catalog never writes: only its tasks' sinks connect.
        let recovered = if self.inner.group.is_some() { Ok(()) } else { sink.recover(restored.as_deref()) };
        if let Err(e) = recovered {
            let e = e.context(format!("sink '{}' ({describe})", cs.name));
            if !self.inner.recovering.load(Ordering::Acquire) {
                return Err(e);
            }
            // Reopening with the sink's server down: the database opens, the sink is failed
            // (checkpoints fail, so its restored results stay in the last checkpoint) until the
            // database is reopened with the server up, or the sink is dropped.
            log::warn!(target: "laminardb", "{e}");
            failed = Some(e);
        }
        eng.sinks.insert(
            cs.name.clone(),
            SinkRt {
                sql: text.to_string(),
                input: cs.input.clone(),
                sink,
                describe,
                rows_out: 0,
                batches_out: 0,
                bytes_out: 0,
                failed,
                writes: 0,
            },
        );
        Ok(ExecuteResult { message: format!("created sink '{}'", cs.name), ..Default::default() })
    }

    /// `CREATE … IF NOT EXISTS x` on a durable database where `x` exists with another
    /// definition (typically recovered from disk, created by an older version of the program):
    /// an error, not a silent keep of the old pipeline. The migration is `CREATE OR REPLACE`
    /// (or DROP), which starts that object's state afresh.
    pub(super) fn check_same_definition(&self, eng: &Engine, name: &str, text: &str) -> Result<()> {
        if self.inner.durable.is_none() {
            return Ok(());
        }
        let old = eng
            .sources
            .get(name)
            .map(|s| s.sql.clone())
            .or_else(|| eng.streams.get(name).map(|s| s.sql.clone()))
            .or_else(|| eng.sinks.get(name).map(|s| s.sql.clone()))
            .unwrap_or_default();
        if definition_key(&old) == definition_key(text) {
            return Ok(());
        }
        Err(Error::invalid_state(format!(
            "'{name}' already exists with a different definition (kept in '{}'):\n  {}\nThe pipeline changed: use CREATE OR REPLACE (or DROP first) to replace it; its state starts afresh",
            self.inner.durable.as_ref().map(|d| d.store.root.display().to_string()).unwrap_or_default(),
            old.trim()
        )))
    }

    pub(super) fn plan_stream(&self, eng: &Engine, cs: &CreateStream) -> Result<crate::plan::PlannedQuery> {
        let opts = PlanOptions {
            emit: cs.emit,
            lateness_us: cs.allowed_lateness.map(|d| d.as_micros() as i64).unwrap_or(0),
            state_ttl_us: cs.state_ttl.map(|d| d.as_micros() as i64),
            keep_all_columns: cs.late_data_to.is_some(),
            partitions: self.inner.config.workers,
            state: self.inner.state.clone().map(|s| (s, self.inner.config.state_cache_size)),
            functions: self.inner.functions.read().clone(),
            partition_key: (self.inner.group.is_some() || self.inner.task.is_some()).then_some("_key"),
        };
        plan_continuous((*cs.query).clone(), &self.relations(eng), &opts)
    }

    pub(super) fn create_stream(&self, cs: CreateStream, text: &str) -> Result<ExecuteResult> {
        check_name(if cs.materialized { "materialized view" } else { "stream" }, &cs.name)?;
        let noun = if cs.materialized { "materialized view" } else { "stream" };
        let mut eng = self.inner.engine.lock();
        if let Some(what) = Self::name_taken(&eng, &cs.name) {
            if cs.if_not_exists {
                self.check_same_definition(&eng, &cs.name, text)?;
                return Ok(ExecuteResult {
                    message: format!("{what} '{}' already exists", cs.name),
                    ..Default::default()
                });
            }
            if !cs.or_replace || what == "source" {
                return Err(Error::already_exists(format!("a {what} named '{}' already exists", cs.name)));
            }
            if eng.streams.values().any(|s| s.inputs.contains(&cs.name)) {
                return Err(Error::invalid_state(format!("cannot replace '{}': other streams read it", cs.name)));
            }
            eng.streams.remove(&cs.name);
            eng.order.retain(|n| n != &cs.name);
        }
        let planned = self.plan_stream(&eng, &cs)?;
        if let Some(late) = &cs.late_data_to {
            let Some(late_schema) = planned.late_schema.clone() else {
                return Err(Error::plan("LATE DATA TO needs a windowed query"));
            };
            match eng.streams.get(late) {
                Some(s) if s.is_late_sink && s.output_schema == late_schema => {}
                Some(_) => {
                    return Err(Error::already_exists(format!(
                        "'{late}' exists and is not a late-data stream of the same shape"
                    )));
                }
                None if eng.sources.contains_key(late) => {
                    return Err(Error::already_exists(format!(
                        "'{late}' is a source; LATE DATA TO needs a new stream name"
                    )));
                }
                None => {
                    eng.streams
                        .insert(late.clone(), StreamRt::late_sink(late_schema, format!("-- late rows of {}", cs.name)));
                    eng.order.push(late.clone());
                }
            }
        }
        let logical_schema = match planned.kind {
            StreamKind::Changelog => {
                let f = planned.output_schema.fields();
                Arc::new(Schema::new(f[..f.len() - 1].to_vec()))
            }
            _ => planned.output_schema.clone(),
        };
        // A window whose input already has a watermark starts from it.
        let watermark = combined_watermark(&eng, &planned.inputs);
        let tick = planned.root.operators().iter().find_map(|o| o.tick_interval()).map(|d| {
            let p = d.as_millis().max(1) as i64;
            (p, self.inner.clock.now_ms() + p)
        });
        let mv = if cs.materialized { Some(MvStore::new(logical_schema.clone(), &planned.kind)?) } else { None };
        eng.streams.insert(
            cs.name.clone(),
            StreamRt {
                sql: text.to_string(),
                materialized: cs.materialized,
                inputs: planned.inputs,
                root: planned.root,
                time_col: planned.time_col,
                kind: planned.kind,
                changelog_key: planned.changelog_key,
                output_schema: planned.output_schema,
                logical_schema,
                late_to: cs.late_data_to.clone(),
                subscribers: vec![],
                mv,
                watermark,
                rows_out: 0,
                batches_out: 0,
                bytes_out: 0,
                rows_late: 0,
                late_pairs: 0,
                failed: None,
                frozen_fingerprint: None,
                tick,
                is_late_sink: false,
                history: vec![],
                history_since: None,
                emitted_this_epoch: false,
            },
        );
        eng.order.push(cs.name.clone());
        Ok(ExecuteResult { message: format!("created {noun} '{}'", cs.name), ..Default::default() })
    }

    pub(super) fn drop_objects(
        &self,
        kind: Option<ObjectKind>,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    ) -> Result<ExecuteResult> {
        let mut eng = self.inner.engine.lock();
        let mut dropped = vec![];
        for name in names {
            let actual = if let Some(s) = eng.sources.get(&name) {
                Some(if s.table.is_some() { ObjectKind::Table } else { ObjectKind::Source })
            } else if eng.sinks.contains_key(&name) {
                Some(ObjectKind::Sink)
            } else {
                eng.streams
                    .get(&name)
                    .map(|s| if s.materialized { ObjectKind::MaterializedView } else { ObjectKind::Stream })
            };
            let Some(actual) = actual else {
                if if_exists {
                    continue;
                }
                let all: Vec<String> =
                    eng.sources.keys().chain(eng.streams.keys()).chain(eng.sinks.keys()).cloned().collect();
                let hint = nearest_name(&name, all.iter().map(String::as_str))
                    .map(|n| format!("; did you mean '{n}'?"))
                    .unwrap_or_default();
                return Err(Error::not_found(format!("no source, stream, table, view or sink named '{name}'{hint}")));
            };
            if let Some(k) = kind
                && k != actual
            {
                return Err(Error::invalid_argument(format!("'{name}' is a {}, not a {}", actual.noun(), k.noun())));
            }
            // Dependents, transitively.
            let mut doomed = vec![name.clone()];
            let mut i = 0;
            while i < doomed.len() {
                let d = doomed[i].clone();
                for n in &eng.order {
                    if eng.streams[n].inputs.contains(&d) && !doomed.contains(n) {
                        doomed.push(n.clone());
                    }
                }
                i += 1;
            }
            // The sinks writing what is dropped go with it.
            let sinks: Vec<String> =
                eng.sinks.iter().filter(|(_, k)| doomed.contains(&k.input)).map(|(n, _)| n.clone()).collect();
            doomed.extend(sinks);
            if doomed.len() > 1 && !cascade {
                return Err(Error::invalid_state(format!(
                    "cannot drop '{name}': {} depend on it ({}); use DROP … CASCADE",
                    doomed.len() - 1,
                    doomed[1..].iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
                )));
            }
            for d in doomed {
                if let Some(s) = eng.sources.remove(&d) {
                    s.queue.dropped.store(true, Ordering::Release);
                }
                if let Some(k) = eng.sinks.remove(&d) {
                    drop_sink(&d, k);
                }
                eng.streams.remove(&d);
                eng.order.retain(|n| n != &d);
                dropped.push(d);
            }
        }
        Ok(ExecuteResult {
            message: format!("dropped {}", if dropped.is_empty() { "nothing".into() } else { dropped.join(", ") }),
            ..Default::default()
        })
    }

    /// Names of the objects of a kind, sorted.
    pub fn list(&self, kind: ObjectKind) -> Result<Vec<String>> {
        self.check_open()?;
        let eng = self.inner.engine.lock();
        let mut v: Vec<String> = match kind {
            ObjectKind::Source => {
                eng.sources.iter().filter(|(_, s)| s.table.is_none()).map(|(n, _)| n.clone()).collect()
            }
            ObjectKind::Table => {
                eng.sources.iter().filter(|(_, s)| s.table.is_some()).map(|(n, _)| n.clone()).collect()
            }
            ObjectKind::Stream => eng.streams.iter().filter(|(_, s)| !s.materialized).map(|(n, _)| n.clone()).collect(),
            ObjectKind::MaterializedView => {
                eng.streams.iter().filter(|(_, s)| s.materialized).map(|(n, _)| n.clone()).collect()
            }
            ObjectKind::Sink => eng.sinks.keys().cloned().collect(),
        };
        v.sort();
        Ok(v)
    }

    pub(super) fn show(&self, kind: ObjectKind) -> Result<ExecuteResult> {
        if kind == ObjectKind::Sink {
            self.check_open()?;
            let eng = self.inner.engine.lock();
            let col = |f: &dyn Fn(&SinkRt) -> String| {
                Arc::new(StringArray::from_iter_values(eng.sinks.values().map(f))) as ArrayRef
            };
            let b = RecordBatch::try_from_iter(vec![
                ("name", Arc::new(StringArray::from_iter_values(eng.sinks.keys())) as ArrayRef),
                ("input", col(&|k| k.input.clone())),
                ("connector", col(&|k| k.describe.clone())),
                ("rows_out", Arc::new(Int64Array::from_iter_values(eng.sinks.values().map(|k| k.rows_out as i64)))),
                (
                    "failed",
                    Arc::new(StringArray::from_iter(
                        eng.sinks.values().map(|k| k.failed.as_ref().map(|e| e.to_string())),
                    )),
                ),
            ])?;
            return Ok(ExecuteResult { batches: vec![b], ..Default::default() });
        }
        let names = self.list(kind)?;
        let b = RecordBatch::try_from_iter(vec![("name", Arc::new(StringArray::from(names)) as ArrayRef)])?;
        Ok(ExecuteResult { batches: vec![b], ..Default::default() })
    }

    /// Describes a source, stream or materialized view.
    pub fn object(&self, name: &str) -> Result<ObjectInfo> {
        self.check_open()?;
        let eng = self.inner.engine.lock();
        if let Some(s) = eng.sources.get(name) {
            let (kind, stream_kind) = match &s.table {
                Some(t) => (ObjectKind::Table, StreamKind::Upsert { key: t.key_names() }),
                None => (ObjectKind::Source, StreamKind::AppendOnly),
            };
            return Ok(ObjectInfo {
                name: name.into(),
                kind,
                schema: s.queue.schema.clone(),
                stream_kind,
                sql: s.sql.clone(),
                inputs: vec![],
            });
        }
        if let Some(s) = eng.streams.get(name) {
            return Ok(ObjectInfo {
                name: name.into(),
                kind: if s.materialized { ObjectKind::MaterializedView } else { ObjectKind::Stream },
                schema: s.output_schema.clone(),
                stream_kind: s.kind.clone(),
                sql: s.sql.clone(),
                inputs: s.inputs.clone(),
            });
        }
        if let Some(k) = eng.sinks.get(name) {
            // What the sink writes: its input's output.
            let (schema, stream_kind) = if let Some(s) = eng.streams.get(&k.input) {
                (s.output_schema.clone(), s.kind.clone())
            } else if let Some(s) = eng.sources.get(&k.input) {
                let kind = match &s.table {
                    Some(t) => StreamKind::Upsert { key: t.key_names() },
                    None => StreamKind::AppendOnly,
                };
                (s.queue.schema.clone(), kind)
            } else {
                (Arc::new(Schema::empty()), StreamKind::AppendOnly)
            };
            return Ok(ObjectInfo {
                name: name.into(),
                kind: ObjectKind::Sink,
                schema,
                stream_kind,
                sql: k.sql.clone(),
                inputs: vec![k.input.clone()],
            });
        }
        let all: Vec<String> = eng.sources.keys().chain(eng.streams.keys()).chain(eng.sinks.keys()).cloned().collect();
        let hint = nearest_name(name, all.iter().map(String::as_str))
            .map(|n| format!("; did you mean '{n}'?"))
            .unwrap_or_default();
        Err(Error::not_found(format!("no source, stream, table, view or sink named '{name}'{hint}")))
    }

    pub(super) fn describe(&self, name: &str) -> Result<ExecuteResult> {
        let info = self.object(name)?;
        let f = info.schema.fields();
        let b = RecordBatch::try_from_iter(vec![
            ("column_name", Arc::new(StringArray::from_iter_values(f.iter().map(|f| f.name().clone()))) as ArrayRef),
            ("data_type", Arc::new(StringArray::from_iter_values(f.iter().map(|f| f.data_type().to_string())))),
            (
                "is_nullable",
                Arc::new(StringArray::from_iter_values(f.iter().map(|f| if f.is_nullable() { "YES" } else { "NO" }))),
            ),
            (
                "kind",
                Arc::new(StringArray::from_iter_values(
                    f.iter().map(|_| format!("{} {}", info.kind.noun(), info.stream_kind)),
                )),
            ),
        ])?;
        Ok(ExecuteResult { batches: vec![b], ..Default::default() })
    }

    /// `EXPLAIN ANALYZE name`: the running stream's operator tree (root first, as EXPLAIN
    /// shows it), one row per line, with each operator's rows in and out, time spent, state
    /// bytes, and the stream's watermark (a query has one watermark, which every operator of it
    /// sees). The same table as text in `message`.
    pub(super) fn explain_analyze(&self, name: &str) -> Result<ExecuteResult> {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let eng = self.inner.engine.lock();
        let Some(s) = eng.streams.get(name) else {
            let what = if eng.sources.contains_key(name) { "a source, which has no operators" } else { "not a stream" };
            let names: Vec<&String> = eng.streams.keys().collect();
            let hint = nearest_name(name, names.iter().map(|n| n.as_str()))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            let kind = if what.starts_with('a') {
                crate::error::ErrorKind::InvalidArgument
            } else {
                crate::error::ErrorKind::NotFound
            };
            return Err(Error::new(
                kind,
                format!(
                    "EXPLAIN ANALYZE takes a running stream or materialized view; '{}' is {what}{hint}",
                    crate::error::clip(name)
                ),
            ));
        };
        // Epoch milliseconds; i64::MAX once every input has ended (as in `metrics()`).
        let wm = (s.watermark != NO_WATERMARK).then_some(if s.watermark == i64::MAX {
            i64::MAX
        } else {
            s.watermark.div_euclid(1000)
        });
        let mut lines = vec![];
        s.root.explain_analyzed(1, &mut lines);
        let (mut text, mut rin, mut rout, mut busy, mut state, mut wms) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        text.push(format!("Stream {name} [{}]", s.kind));
        rin.push(None);
        rout.push(Some(s.rows_out as i64));
        busy.push(None);
        state.push(Some(s.root.operators().iter().map(|o| o.state_size() as i64).sum::<i64>()));
        wms.push(wm);
        for (depth, line, op) in lines {
            text.push(format!("{}{line}", "  ".repeat(depth)));
            match op {
                Some((o, st)) => {
                    rin.push(Some(st.rows_in as i64));
                    rout.push(Some(st.rows_out as i64));
                    busy.push(Some(st.busy_ns as i64));
                    state.push(Some(o.state_size() as i64));
                    wms.push(wm);
                }
                None => {
                    // An input: what entered this stream from it is what its first operator
                    // received; shown on that operator's line.
                    rin.push(None);
                    rout.push(None);
                    busy.push(None);
                    state.push(None);
                    wms.push(None);
                }
            }
        }
        let mut message = String::new();
        for i in 0..text.len() {
            let mut extra = vec![];
            if let Some(v) = rin[i] {
                extra.push(format!("rows_in={v}"));
            }
            if let Some(v) = rout[i] {
                extra.push(format!("rows_out={v}"));
            }
            if let Some(v) = busy[i] {
                extra.push(format!("time={:.3}ms", v as f64 / 1e6));
            }
            if let Some(v) = state[i] {
                extra.push(format!("state_bytes={v}"));
            }
            if i == 0
                && let Some(w) = wm
            {
                extra.push(if w == i64::MAX {
                    "watermark=end of input".to_string()
                } else {
                    format!("watermark_ms={w}")
                });
            }
            message.push_str(&text[i]);
            if !extra.is_empty() {
                message.push_str(&format!("  [{}]", extra.join(" ")));
            }
            message.push('\n');
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan", DataType::Utf8, false),
            Field::new("rows_in", DataType::Int64, true),
            Field::new("rows_out", DataType::Int64, true),
            Field::new("busy_ns", DataType::Int64, true),
            Field::new("state_bytes", DataType::Int64, true),
            Field::new("watermark_ms", DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(text)),
                Arc::new(Int64Array::from(rin)),
                Arc::new(Int64Array::from(rout)),
                Arc::new(Int64Array::from(busy)),
                Arc::new(Int64Array::from(state)),
                Arc::new(Int64Array::from(wms)),
            ],
        )?;
        Ok(ExecuteResult { batches: vec![b], schema: Some(schema), message, ..Default::default() })
    }

    pub(super) fn explain(&self, inner: Statement) -> Result<ExecuteResult> {
        let eng = self.inner.engine.lock();
        let lines = match inner {
            Statement::CreateStream(cs) => {
                let p = self.plan_stream(&eng, &cs)?;
                let mut lines = vec![format!("Stream {} [{}]", cs.name, p.kind)];
                p.root.explain(1, &mut lines);
                lines
            }
            Statement::Query(q) => {
                let functions = self.inner.functions.read().clone();
                let plan = crate::plan::logical_plan(*q, &self.relations(&eng), &[], &functions)?;
                vec!["Ad-hoc query (DataFusion over snapshots)".to_string(), plan.display_indent().to_string()]
            }
            _ => unreachable!("parser admits only these"),
        };
        let b = RecordBatch::try_from_iter(vec![("plan", Arc::new(StringArray::from(lines)) as ArrayRef)])?;
        Ok(ExecuteResult { batches: vec![b], ..Default::default() })
    }
}
