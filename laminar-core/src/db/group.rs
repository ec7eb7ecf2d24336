//! Group mode (DESIGN §7): several processes run one pipeline as one Kafka consumer group, the
//! way Kafka Streams does, with no cluster protocol of LaminarDB's own.
//!
//! A database opened with `shared_dir` is a **member**. Its own engine holds the catalog only:
//! statements are checked and run there (plans, options, the key rule below); its objects'
//! definitions in creation order are the *script* every task follows. The member's
//! **coordinator** joins the group named by the sources' `properties.group.id`
//! (cooperative-sticky assignment; static membership with `properties.group.instance.id`),
//! subscribed to the first source's topic, the *lead* topic; it fetches nothing itself (its
//! partitions are paused). For each partition `p` of the lead topic Kafka assigns it, the member
//! opens a **task**: a database at `<shared_dir>/<group>/p<p>` (durability `checkpoint`, one
//! worker) brought to the script (`reconcile`), whose KAFKA sources read partition `p` of their
//! topics (every topic of a group has as many partitions: co-partitioned) and whose KAFKA sinks
//! write under a transactional id of the partition's (with the group's name in it by default).
//! Opening the directory recovers the partition's latest checkpoint (state, offsets, the sink's
//! open epoch) wherever it was written; a partition never checkpointed starts at the group's
//! committed offsets (`scan.startup.mode = 'group-offsets'`) or as the source's startup mode says.
//!
//! Each epoch's transaction of a task's sink carries the epoch's results and the input offsets
//! they were computed from, committed as the group's offsets (`send_offsets_to_transaction`):
//! with one sink, the group's committed offsets are what a `read_committed` consumer has seen the
//! results of (with several, each sink commits them in its own transaction), and the group's lag
//! is what monitoring tools show. Recovery goes by the partition's checkpoint, never by them. On revocation (a cooperative rebalance, or the
//! member leaving) the task takes a checkpoint, commits it and closes before the partition is
//! handed on; after a member dies, the next owner's sink fences the dead one's producer by the
//! transactional id (its open transaction is aborted) and the restored checkpoint decides
//! whether that epoch's results are written again.
//!
//! The key rule: every operator keeping state per key is keyed by the message key `_key` (each
//! task sees one partition, and a key lives in one partition). A query keyed otherwise is refused
//! with an error that says so; no repartitioning topic is made.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;

use super::{Clock, Database, ExecuteResult};
use crate::config::{Config, Durability};
use crate::error::{Error, ErrorKind, Result, clip};
use crate::sql::{ParsedStatement, Statement};

/// A partition a member owns, as `SHOW PARTITIONS` and [`super::Metrics::partitions`] give it.
#[derive(Debug, Clone)]
pub struct GroupPartition {
    /// The lead topic (the first source's); the task reads this partition of every source's topic.
    pub topic: String,
    pub partition: i32,
    /// `running`, `opening`, or `failed: <why>`.
    pub state: String,
    /// The next offset the task reads of the lead topic, once known.
    pub position: Option<i64>,
    /// Records of the lead topic's partition not read yet, as of the task's last lag check.
    pub lag: Option<i64>,
    /// Milliseconds since this member was assigned the partition.
    pub owned_ms: u64,
    /// The task's last completed checkpoint's epoch (0: none yet).
    pub epoch: u64,
}

/// What a task database knows of its group: the partition it owns and the group.
#[derive(Clone)]
pub(crate) struct TaskScope {
    pub(crate) partition: i32,
    pub(crate) group: String,
}

impl TaskScope {
    /// The next offset of the task's partition of each KAFKA source's topic, as of the engine's
    /// current positions (at a checkpoint: the epoch's). Once a checkpoint: the topics come from
    /// the sources' definitions.
    pub(super) fn offsets(&self, eng: &super::engine::Engine) -> Vec<(String, i32, i64)> {
        let key = self.partition.to_string();
        eng.sources
            .values()
            .filter_map(|s| {
                let o = s.positions.get(&key)?.parse::<i64>().ok().filter(|o| *o >= 0)?;
                let Ok(Statement::CreateSource(c)) = crate::sql::parse_one(&s.sql).map(|p| p.statement) else {
                    return None;
                };
                if !c.connector.is_some_and(|k| k.eq_ignore_ascii_case("kafka")) {
                    return None;
                }
                Some((c.options.get("topic")?.clone(), self.partition, o))
            })
            .collect()
    }
}

/// One partition's task.
struct Task {
    db: Option<Database>,
    since: Instant,
    error: Option<String>,
    /// A task that failed to open is tried again from then on.
    retry_at: Option<Instant>,
}

/// How long after a failed open a task's partition is tried again.
const RETRY_OPEN: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
struct GroupState {
    /// The member's catalog as (name, definition), in creation order: what every task runs.
    script: Vec<(String, String)>,
    /// Counts the changes of `script`.
    version: u64,
    /// The group id (`properties.group.id` of the sources).
    group_id: Option<String>,
    /// The sources, with their topics: the first is the lead topic.
    sources: Vec<(String, String)>,
    /// The client settings of the first source (`bootstrap.servers` and the `properties.*`).
    client: Vec<(String, String)>,
    /// Partitions owned, by number.
    tasks: BTreeMap<i32, Task>,
}

/// A member of a consumer group: the state the member database shares with its coordinator.
pub(crate) struct Group {
    shared_dir: PathBuf,
    /// The member's configuration, from which each task's is made.
    config: Config,
    clock: Arc<dyn Clock>,
    state: Mutex<GroupState>,
    stop: AtomicBool,
    /// Close the tasks as a crash would (tests).
    abrupt: AtomicBool,
    coordinator: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// `Database::open` with `shared_dir`: the member database, its engine the catalog only.
pub(super) fn open_member(path: &str, config: Config, clock: Arc<dyn Clock>) -> Result<Database> {
    if !cfg!(feature = "kafka") {
        return Err(Error::invalid_argument(
            "config 'shared_dir' (group mode) needs the KAFKA connector, and this build has no `kafka` feature",
        ));
    }
    let shared = config.shared_dir.clone().unwrap_or_default();
    if config.durability == Some(Durability::Memory) {
        return Err(Error::invalid_argument(
            "group mode (shared_dir) keeps each partition's state in checkpoints under shared_dir: durability 'memory' cannot be used with it",
        ));
    }
    let shared_dir = PathBuf::from(&shared);
    std::fs::create_dir_all(&shared_dir)
        .map_err(|e| Error::new(ErrorKind::Io, format!("shared_dir '{}': {e}", clip(&shared))))?;
    // The member's own directory holds nothing of the pipeline's (its state is per partition, in
    // shared_dir); it is made so that the path means the same as for any database.
    if path != ":memory:" {
        std::fs::create_dir_all(path).map_err(|e| Error::new(ErrorKind::Io, format!("'{}': {e}", clip(path))))?;
    }
    let group = Arc::new(Group {
        shared_dir,
        config: config.clone(),
        clock: clock.clone(),
        state: Mutex::new(GroupState::default()),
        stop: AtomicBool::new(false),
        abrupt: AtomicBool::new(false),
        coordinator: Mutex::new(None),
    });
    let mut catalog = config;
    catalog.shared_dir = None;
    catalog.storage_dir = None;
    catalog.durability = None;
    catalog.workers = 1;
    Database::open_impl(":memory:", catalog, clock, Some(group), None)
}

/// A database's objects as (name, definition), in an order they can be created in: sources
/// (by name), streams and views in creation order, sinks.
fn catalog_defs(db: &Database) -> Vec<(String, String)> {
    let eng = db.inner.engine.lock();
    let mut names: Vec<&String> = eng.sources.keys().collect();
    names.sort();
    let mut v: Vec<(String, String)> = names.into_iter().map(|n| (n.clone(), eng.sources[n].sql.clone())).collect();
    for n in &eng.order {
        let s = &eng.streams[n];
        if !s.is_late_sink {
            v.push((n.clone(), s.sql.clone()));
        }
    }
    v.extend(eng.sinks.iter().map(|(n, k)| (n.clone(), k.sql.clone())));
    v
}

/// What tells two definitions apart: the statement without IF NOT EXISTS / OR REPLACE and, for
/// a source, without static membership's `group.instance.id` (one per member).
fn definition(sql: &str) -> String {
    match crate::sql::parse_one(sql).map(|p| p.statement) {
        Ok(Statement::CreateSource(mut c)) => {
            c.options.remove("properties.group.instance.id");
            c.if_not_exists = false;
            c.or_replace = false;
            c.columns_sql = c.columns_sql.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{c:?}")
        }
        _ => super::ddl::definition_key(sql),
    }
}

/// Brings a task (its catalog as its checkpoint restored it) to the member's definitions: an
/// object defined the same is kept with its state; one defined otherwise is dropped (with what
/// depends on it) and made anew; one the member no longer has is dropped. New sources do not
/// start reading here (the caller starts them once the whole pipeline is there).
fn reconcile(task: &Database, defs: &[(String, String)]) -> Result<()> {
    let gone: Vec<String> =
        catalog_defs(task).into_iter().map(|d| d.0).filter(|n| !defs.iter().any(|d| d.0 == *n)).collect();
    if !gone.is_empty() {
        task.drop_objects(None, gone, true, true)?;
    }
    for (name, sql) in defs {
        let current = catalog_defs(task).into_iter().find(|d| d.0 == *name);
        match current {
            Some((_, have)) if definition(&have) == definition(sql) => continue,
            Some(_) => {
                task.drop_objects(None, vec![name.clone()], true, true)?;
            }
            None => {}
        }
        task.execute_deferred(sql)?;
    }
    Ok(())
}

fn group_error(what: impl std::fmt::Display) -> Error {
    Error::invalid_argument(format!("group mode (shared_dir): {what}"))
}

impl Group {
    /// Runs statements on a member: the catalog checks and runs them, then every task is brought
    /// to the catalog's definitions (and only then do new sources start reading, so a script
    /// that creates a source and what reads it sees every row).
    pub(super) fn execute(self: &Arc<Self>, db: &Database, stmts: Vec<ParsedStatement>) -> Result<ExecuteResult> {
        let mut last = ExecuteResult::default();
        let mut changed = false;
        let run = || -> Result<()> {
            for s in stmts {
                let text = s.text;
                last = match s.statement {
                    Statement::CreateSource(cs) => {
                        let (group_id, topic, client) = self.check_source(&cs)?;
                        let name = cs.name.clone();
                        self.check_co_partitioned(&name, &topic, &client)?;
                        let r = db.execute_statement(Statement::CreateSource(cs), &text)?;
                        let mut st = self.state.lock();
                        if st.group_id.is_none() {
                            st.group_id = Some(group_id);
                            st.client = client;
                        }
                        match st.sources.iter_mut().find(|(n, _)| *n == name) {
                            Some(s) => s.1 = topic,
                            None => st.sources.push((name, topic)),
                        }
                        changed = true;
                        r
                    }
                    Statement::CreateSink(cs) => {
                        if !cs.connector.eq_ignore_ascii_case("kafka") {
                            return Err(group_error(format!(
                                "sink '{}': a group writes its results through KAFKA sinks (a transactional id per partition fences a member that was replaced); {} sinks are not supported here",
                                cs.name, cs.connector
                            )));
                        }
                        if cs
                            .options
                            .get("sink.delivery-guarantee")
                            .is_some_and(|g| !g.trim().eq_ignore_ascii_case("exactly-once"))
                        {
                            return Err(group_error(format!(
                                "sink '{}': a group's sinks are exactly-once (each epoch's transaction also commits the group's offsets); 'sink.delivery-guarantee' cannot be changed",
                                cs.name
                            )));
                        }
                        changed = true;
                        db.execute_statement(Statement::CreateSink(cs), &text)?
                    }
                    st @ (Statement::CreateStream(_) | Statement::Drop { .. }) => {
                        changed = true;
                        let r = db.execute_statement(st, &text)?;
                        // A dropped source is no longer one of the group's inputs (the lead
                        // topic, the one the group is subscribed to, stays).
                        let present: Vec<String> = db.inner.engine.lock().sources.keys().cloned().collect();
                        let mut st = self.state.lock();
                        let lead = st.sources.first().cloned();
                        st.sources.retain(|(n, _)| present.contains(n) || Some(n) == lead.as_ref().map(|l| &l.0));
                        r
                    }
                    Statement::ShowPartitions => self.show_partitions()?,
                    Statement::Insert { .. } | Statement::Delete { .. } | Statement::Query(_) => {
                        return Err(group_error(
                            "a member's rows live in the tasks of the partitions it owns, which move between members: INSERT, DELETE and SELECT are not supported; read the results from the sinks' topics",
                        ));
                    }
                    other => db.execute_statement(other, &text)?,
                };
            }
            Ok(())
        };
        let res = run();
        // What ran before a failed statement stays, as on any database: the tasks follow it.
        let synced = if changed { self.sync_tasks(db) } else { Ok(()) };
        self.start_coordinator();
        res?;
        synced?;
        Ok(last)
    }

    /// Brings every running task to the member's catalog. A task that cannot follow is closed
    /// as a crash would leave it (its last checkpoint stays good) and opened again later.
    fn sync_tasks(&self, db: &Database) -> Result<()> {
        let defs = catalog_defs(db);
        let mut st = self.state.lock();
        st.script = defs.clone();
        st.version += 1;
        let mut first = None;
        for (p, t) in st.tasks.iter_mut() {
            let Some(task) = &t.db else { continue };
            let r = reconcile(task, &defs).and_then(|_| task.start_deferred_readers());
            if let Err(e) = r {
                let e = e.context(format!("the task of partition {p}"));
                log::warn!(target: "laminardb", "group mode: {e}; the task is opened again in {} s", RETRY_OPEN.as_secs());
                t.error = Some(e.message().to_string());
                t.retry_at = Some(Instant::now() + RETRY_OPEN);
                if let Some(task) = t.db.take() {
                    task.close_abruptly();
                }
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// A source of a group: KAFKA, one topic, the group's `properties.group.id`.
    fn check_source(&self, cs: &crate::sql::CreateSource) -> Result<(String, String, Vec<(String, String)>)> {
        if cs.table {
            return Err(group_error(format!(
                "table '{}': tables are not partitioned by a group; declare a source (CREATE SOURCE … FROM KAFKA)",
                cs.name
            )));
        }
        if !cs.connector.as_deref().is_some_and(|k| k.eq_ignore_ascii_case("kafka")) {
            return Err(group_error(format!(
                "source '{}': every source of a group reads a KAFKA topic with the group's 'properties.group.id' (a pushed source has no partitions to share out)",
                cs.name
            )));
        }
        let Some(topic) = cs.options.get("topic") else {
            return Err(group_error(format!(
                "source '{}': give 'topic' (a group reads one topic per source; 'topic-pattern' is not supported)",
                cs.name
            )));
        };
        let Some(group_id) = cs.options.get("properties.group.id") else {
            return Err(group_error(format!(
                "source '{}': option 'properties.group.id' is required (the consumer group the members share)",
                cs.name
            )));
        };
        if let Some(g) = &self.state.lock().group_id
            && g != group_id
        {
            return Err(group_error(format!(
                "source '{}': its group '{}' is not the member's group '{}' (a member belongs to one group)",
                cs.name,
                clip(group_id),
                clip(g)
            )));
        }
        let mut client = vec![];
        for (k, v) in &cs.options {
            if let Some(p) = k.strip_prefix("properties.") {
                client.push((p.to_string(), v.clone()));
            }
        }
        Ok((group_id.clone(), topic.clone(), client))
    }

    /// Every topic of the group has as many partitions as the lead topic, `topic` (of source
    /// `name`, about to be created) included.
    fn check_co_partitioned(&self, name: &str, topic: &str, client: &[(String, String)]) -> Result<()> {
        let (mut sources, known) = {
            let st = self.state.lock();
            (st.sources.clone(), st.client.clone())
        };
        sources.retain(|(n, _)| n != name);
        sources.push((name.to_string(), topic.to_string()));
        if sources.len() < 2 {
            return Ok(());
        }
        let client = if known.is_empty() { client.to_vec() } else { known };
        let counts = coordinator::partition_counts(&client, sources.iter().map(|s| s.1.as_str()))?;
        let (lead, n) = (&sources[0], counts[0]);
        for ((source, t), m) in sources.iter().zip(&counts).skip(1) {
            if *m != n {
                return Err(group_error(format!(
                    "source '{source}' is not co-partitioned with source '{}': topic '{}' has {m} partitions and topic '{}' has {n}; the members share partitions by number, so every topic of a group needs as many partitions, keyed alike",
                    lead.0,
                    clip(t),
                    clip(&lead.1)
                )));
            }
        }
        Ok(())
    }

    fn task_dir(&self, group_id: &str, p: i32) -> PathBuf {
        let safe: String =
            group_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        self.shared_dir.join(safe).join(format!("p{p}"))
    }

    /// Opens partition `p`'s task: recovers its directory, then brings it to the member's
    /// catalog; the version of the catalog it followed.
    fn open_task(&self, p: i32) -> Result<(Database, u64)> {
        let (dir, script, version, scope) = {
            let st = self.state.lock();
            let group = st.group_id.clone().unwrap_or_default();
            let scope = TaskScope { partition: p, group: group.clone() };
            (self.task_dir(&group, p), st.script.clone(), st.version, scope)
        };
        let mut cfg = self.config.clone();
        cfg.shared_dir = None;
        cfg.storage_dir = None;
        cfg.metrics_addr = None;
        cfg.workers = 1;
        // Kafka sources are replayed from the checkpoint's offsets: no log is needed.
        cfg.durability = Some(Durability::Checkpoint);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::new(ErrorKind::Io, format!("creating '{}': {e}", dir.display())))?;
        let path = dir.to_string_lossy().into_owned();
        // The partition's last owner may still be letting go of the directory (its revocation
        // checkpoint), or a replaced member's process may still be exiting.
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let db = loop {
            match Database::open_impl(&path, cfg.clone(), self.clock.clone(), None, Some(scope.clone())) {
                Ok(db) => break db,
                Err(e)
                    if e.kind() == ErrorKind::InvalidState
                        && e.message().contains("open in another process")
                        && Instant::now() < deadline
                        && !self.stop.load(Ordering::Acquire) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        };
        if let Err(e) = reconcile(&db, &script).and_then(|_| db.start_deferred_readers()) {
            // Its last checkpoint stays as it was: nothing half-built is checkpointed.
            db.close_abruptly();
            return Err(e.context(format!("bringing the task of partition {p} to the member's pipeline")));
        }
        Ok((db, version))
    }

    /// Checkpoints every running task: what they wrote added up, the highest epoch.
    pub(super) fn checkpoint_tasks(&self) -> Result<crate::durable::CheckpointStats> {
        let dbs: Vec<Database> = self.state.lock().tasks.values().filter_map(|t| t.db.clone()).collect();
        let mut all = crate::durable::CheckpointStats::default();
        for db in &dbs {
            let s = db.checkpoint_stats()?;
            all.epoch = all.epoch.max(s.epoch);
            all.bytes_total += s.bytes_total;
            all.bytes_written += s.bytes_written;
            all.objects += s.objects;
            all.objects_reused += s.objects_reused;
        }
        Ok(all)
    }

    /// Closes partition `p`'s task: a checkpoint (whose sink transaction commits) and close.
    fn close_task(&self, p: i32) {
        let t = self.state.lock().tasks.remove(&p);
        if let Some(Task { db: Some(db), .. }) = t {
            if self.abrupt.load(Ordering::Acquire) {
                db.close_abruptly();
            } else {
                db.close();
            }
        }
    }

    fn partitions(&self) -> Vec<GroupPartition> {
        let ((lead_source, lead), tasks): ((String, String), Vec<(i32, Option<Database>, Instant, Option<String>)>) = {
            let st = self.state.lock();
            (
                st.sources.first().cloned().unwrap_or_default(),
                st.tasks.iter().map(|(p, t)| (*p, t.db.clone(), t.since, t.error.clone())).collect(),
            )
        };
        tasks
            .into_iter()
            .map(|(p, db, since, error)| {
                let stats = db.as_ref().and_then(|d| d.metrics().ok()).and_then(|m| {
                    m.sources
                        .into_iter()
                        .find(|s| s.name == lead_source)
                        .and_then(|s| s.partitions.into_iter().find(|(k, _)| *k == p.to_string()).map(|x| x.1))
                });
                GroupPartition {
                    topic: lead.clone(),
                    partition: p,
                    state: match (&db, error) {
                        (_, Some(e)) => format!("failed: {e}"),
                        (Some(_), None) => "running".into(),
                        (None, None) => "opening".into(),
                    },
                    position: stats.as_ref().and_then(|s| s.position),
                    lag: stats.as_ref().and_then(|s| s.lag),
                    owned_ms: since.elapsed().as_millis() as u64,
                    epoch: db.as_ref().map_or(0, Database::epoch),
                }
            })
            .collect()
    }

    fn show_partitions(&self) -> Result<ExecuteResult> {
        let ps = self.partitions();
        let opt = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let b = RecordBatch::try_from_iter(vec![
            ("topic", Arc::new(StringArray::from_iter_values(ps.iter().map(|p| p.topic.as_str()))) as ArrayRef),
            ("partition", Arc::new(Int64Array::from_iter_values(ps.iter().map(|p| p.partition as i64))) as ArrayRef),
            ("state", Arc::new(StringArray::from_iter_values(ps.iter().map(|p| p.state.as_str()))) as ArrayRef),
            ("position", opt(ps.iter().map(|p| p.position).collect())),
            ("lag", opt(ps.iter().map(|p| p.lag).collect())),
            ("owned_ms", Arc::new(Int64Array::from_iter_values(ps.iter().map(|p| p.owned_ms as i64))) as ArrayRef),
            ("epoch", Arc::new(Int64Array::from_iter_values(ps.iter().map(|p| p.epoch as i64))) as ArrayRef),
        ])?;
        Ok(ExecuteResult { schema: Some(b.schema()), batches: vec![b], ..Default::default() })
    }

    /// A member's metrics: its tasks' counters added up (each task's partitions listed under its
    /// sources), and the partitions it owns.
    pub(super) fn merge_metrics(&self, m: &mut super::Metrics) {
        let dbs: Vec<Database> = self.state.lock().tasks.values().filter_map(|t| t.db.clone()).collect();
        let min_wm = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) | (None, x) => x,
        };
        for db in dbs {
            let Ok(t) = db.metrics() else { continue };
            for s in t.sources {
                if let Some(x) = m.sources.iter_mut().find(|x| x.name == s.name) {
                    x.rows_in += s.rows_in;
                    x.batches_in += s.batches_in;
                    x.bytes_in += s.bytes_in;
                    x.rows_late += s.rows_late;
                    x.queue_depth += s.queue_depth;
                    x.blocked_ns += s.blocked_ns;
                    x.watermark_ms = min_wm(x.watermark_ms, s.watermark_ms);
                    x.partitions.extend(s.partitions);
                }
            }
            for s in t.streams {
                if let Some(x) = m.streams.iter_mut().find(|x| x.name == s.name) {
                    x.rows_out += s.rows_out;
                    x.batches_out += s.batches_out;
                    x.bytes_out += s.bytes_out;
                    x.rows_late += s.rows_late;
                    x.late_pairs += s.late_pairs;
                    x.state_bytes += s.state_bytes;
                    x.watermark_ms = min_wm(x.watermark_ms, s.watermark_ms);
                    if x.failed.is_none() {
                        x.failed = s.failed;
                    }
                }
            }
            for s in t.sinks {
                if let Some(x) = m.sinks.iter_mut().find(|x| x.name == s.name) {
                    x.rows_out += s.rows_out;
                    x.batches_out += s.batches_out;
                    x.bytes_out += s.bytes_out;
                    if x.failed.is_none() {
                        x.failed = s.failed;
                    }
                    for (k, v) in s.counters {
                        match x.counters.iter_mut().find(|c| c.0 == k) {
                            Some(c) => c.1 += v,
                            None => x.counters.push((k, v)),
                        }
                    }
                }
            }
            m.events_processed += t.events_processed;
        }
        for s in &mut m.sources {
            s.partitions.sort_by_key(|(k, _)| k.parse::<i64>().unwrap_or(i64::MAX));
        }
        m.rows_in = m.sources.iter().map(|s| s.rows_in).sum();
        m.rows_out = m.streams.iter().map(|s| s.rows_out).sum();
        m.partitions = self.partitions();
    }

    /// Starts the coordinator once the group has a source.
    fn start_coordinator(self: &Arc<Self>) {
        if self.stop.load(Ordering::Acquire) || self.state.lock().sources.is_empty() {
            return;
        }
        let mut c = self.coordinator.lock();
        if c.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        match std::thread::Builder::new().name("laminar-group".into()).spawn(move || coordinator::run(weak)) {
            Ok(h) => *c = Some(h),
            Err(e) => log::warn!(target: "laminardb", "group mode: cannot start the coordinator thread: {e}"),
        }
    }

    /// Leaves the group: every task checkpoints and closes, its sinks' last transactions
    /// committing the group's offsets (`abrupt`: closes as a crash would); then the coordinator
    /// leaves (a static member stays in the group until its session times out).
    pub(super) fn shutdown(&self, abrupt: bool) {
        self.abrupt.store(abrupt, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.coordinator.lock().take() {
            let _ = h.join();
        }
        let owned: Vec<i32> = self.state.lock().tasks.keys().copied().collect();
        for p in owned {
            self.close_task(p);
        }
    }
}

#[cfg(feature = "kafka")]
mod coordinator {
    use std::sync::Weak;
    use std::time::Duration;

    use rdkafka::ClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};

    use super::*;

    /// The partition counts of `topics`, in order.
    pub(super) fn partition_counts<'a>(
        client: &[(String, String)],
        topics: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<i32>> {
        let mut cfg = ClientConfig::new();
        for (k, v) in client {
            cfg.set(k, v);
        }
        cfg.remove("group.instance.id");
        let c: BaseConsumer = cfg.create().map_err(|e| group_error(format!("the sources' client settings: {e}")))?;
        let servers = client.iter().find(|c| c.0 == "bootstrap.servers").map_or("", |c| c.1.as_str());
        topics
            .map(|t| {
                // A topic created a moment ago may not be in every broker's metadata yet.
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match crate::connector::kafka::topic_must_exist(c.client(), t, servers) {
                        Err(e) if e.kind() == ErrorKind::NotFound && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        r => return r,
                    }
                }
            })
            .collect::<Result<Vec<i32>>>()
    }

    struct Ctx {
        group: Weak<Group>,
    }

    impl ClientContext for Ctx {}

    impl ConsumerContext for Ctx {
        fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
            let (Some(g), Rebalance::Revoke(tpl)) = (self.group.upgrade(), r) else { return };
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            if parts.is_empty() {
                return;
            }
            log::info!(target: "laminardb", "group mode: partitions {parts:?} revoked; checkpointing and closing their tasks");
            for p in &parts {
                g.close_task(*p);
            }
        }

        fn post_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
            let (Some(g), Rebalance::Assign(tpl)) = (self.group.upgrade(), r) else { return };
            if tpl.count() == 0 {
                return;
            }
            // The member fetches nothing itself: its tasks read their partitions.
            if let Err(e) = c.pause(tpl) {
                log::warn!(target: "laminardb", "group mode: pausing the assigned partitions: {e}");
            }
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            log::info!(target: "laminardb", "group mode: partitions {parts:?} assigned");
            let now = Instant::now();
            let mut st = g.state.lock();
            for p in parts {
                st.tasks.entry(p).or_insert(Task { db: None, since: now, error: None, retry_at: None });
            }
        }
    }

    pub(super) fn run(group: Weak<Group>) {
        let Some(g) = group.upgrade() else { return };
        let (group_id, lead, client) = {
            let st = g.state.lock();
            match st.sources.first() {
                Some(lead) => (st.group_id.clone().unwrap_or_default(), lead.1.clone(), st.client.clone()),
                None => return,
            }
        };
        let mut cfg = ClientConfig::new();
        for (k, v) in &client {
            cfg.set(k, v);
        }
        cfg.set("group.id", &group_id).set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
        let is_static = cfg.get("group.instance.id").is_some_and(|v| !v.is_empty());
        if cfg.get("partition.assignment.strategy").is_none() {
            cfg.set("partition.assignment.strategy", "cooperative-sticky");
        }
        let consumer: BaseConsumer<Ctx> = match cfg.create_with_context(Ctx { group: group.clone() }) {
            Ok(c) => c,
            Err(e) => {
                log::warn!(target: "laminardb", "group mode: cannot create the group's consumer: {e}");
                return;
            }
        };
        if let Err(e) = consumer.subscribe(&[lead.as_str()]) {
            log::warn!(target: "laminardb", "group mode: cannot join group '{group_id}': {e}");
            return;
        }
        log::info!(target: "laminardb", "group mode: joining group '{group_id}' on topic '{lead}'");
        drop(g);
        loop {
            let Some(g) = group.upgrade() else { break };
            if g.stop.load(Ordering::Acquire) {
                // Leaving: the tasks let go first (a checkpoint each, whose transactions commit
                // the group's offsets), then the member leaves the group.
                let owned: Vec<i32> = g.state.lock().tasks.keys().copied().collect();
                for p in &owned {
                    g.close_task(*p);
                }
                // A static member (group.instance.id) does not leave: Kafka keeps its partitions
                // for it until `session.timeout.ms`, so a restart gets them back without a
                // rebalance. Any other member leaves now, and its partitions move at once.
                if !is_static {
                    consumer.unsubscribe();
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                break;
            }
            // Its partitions are paused: a poll serves the group's callbacks, and fetches nothing.
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                if matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::Fatal)) {
                    // A fatal error (a static member fenced by another with its instance id):
                    // this member stops processing its partitions; the other has them.
                    log::warn!(target: "laminardb", "group mode: the group's consumer failed: {e}; closing the tasks");
                    let owned: Vec<i32> = g.state.lock().tasks.keys().copied().collect();
                    for p in owned {
                        g.close_task(p);
                    }
                    break;
                }
                log::debug!(target: "laminardb", "group mode: {e}");
            }
            // Open the tasks of the partitions assigned (retrying those that failed to open).
            let pending: Vec<i32> = g
                .state
                .lock()
                .tasks
                .iter()
                .filter(|(_, t)| t.db.is_none() && t.retry_at.is_none_or(|r| Instant::now() >= r))
                .map(|(p, _)| *p)
                .collect();
            // Opened side by side: each waits on its sink's transactional set-up and its recovery.
            let opened: Vec<(i32, Result<(Database, u64)>, Instant)> = std::thread::scope(|s| {
                let handles: Vec<_> = pending
                    .iter()
                    .map(|p| {
                        let g = &g;
                        s.spawn(move || {
                            let t0 = Instant::now();
                            (*p, g.open_task(*p), t0)
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            for (p, opened, t0) in opened {
                let mut st = g.state.lock();
                // The member's catalog changed while the task opened (under this lock it cannot).
                let (script, version) = (st.script.clone(), st.version);
                let opened = opened.and_then(|(db, v)| {
                    if v == version {
                        return Ok(db);
                    }
                    match reconcile(&db, &script).and_then(|_| db.start_deferred_readers()) {
                        Ok(()) => Ok(db),
                        Err(e) => {
                            db.close_abruptly();
                            Err(e)
                        }
                    }
                });
                match (opened, st.tasks.get_mut(&p)) {
                    (Ok(db), Some(t)) => {
                        log::info!(target: "laminardb", "group mode: partition {p} running (restored epoch {}, {} ms)", db.epoch(), t0.elapsed().as_millis());
                        t.error = None;
                        t.retry_at = None;
                        t.db = Some(db);
                    }
                    (Ok(db), None) => {
                        drop(st);
                        db.close(); // revoked meanwhile
                    }
                    (Err(e), Some(t)) => {
                        log::warn!(target: "laminardb", "group mode: the task of partition {p} cannot start (tried again in {} s): {e}", RETRY_OPEN.as_secs());
                        t.error = Some(e.message().to_string());
                        t.retry_at = Some(Instant::now() + RETRY_OPEN);
                    }
                    (Err(_), None) => {}
                }
            }
        }
    }
}

#[cfg(not(feature = "kafka"))]
mod coordinator {
    use super::*;

    pub(super) fn partition_counts<'a>(
        _client: &[(String, String)],
        _topics: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<i32>> {
        Err(group_error("this build has no KAFKA connector"))
    }

    pub(super) fn run(_group: std::sync::Weak<Group>) {}
}
