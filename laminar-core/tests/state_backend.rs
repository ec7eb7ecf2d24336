//! The RocksDB state backend (DESIGN §4, issue 6): aggregates whose state passes
//! `state_cache_size` spill groups to RocksDB and give the same results as the in-memory backend
//! and as DataFusion over the same rows; spilled state is checkpointed and recovered.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use laminar_core::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database, ErrorKind};

const SOURCE: &str = "CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)";
const KEYS: i64 = 6_000;
const BATCH: i64 = 2_000;

/// Batch `i`: keys spread over KEYS (a new mix each batch), event time 25 ms per row with a
/// row every 7th that is 9 s late (late for ALLOW LATENESS windows, on time within 5 s
/// watermark delay otherwise).
fn batch(i: i64) -> RecordBatch {
    let ids: Vec<i64> = (i * BATCH..(i + 1) * BATCH).collect();
    let ts = |x: i64| if x % 7 == 3 { (x * 25 - 9_000).max(0) } else { x * 25 };
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| (x * 7919) % KEYS))) as ArrayRef),
        ("v", Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| (x * 31) % 1000 - 200)))),
        ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(ids.iter().map(|&x| ts(x) * 1000))) as ArrayRef),
    ])
    .unwrap()
}

/// (view name, continuous query, the oracle's query over table `s`, or "" where the engine drops
/// late rows the oracle would count: those views are compared with the in-memory backend).
const VIEWS: &[(&str, &str, &str)] = &[
    (
        "w_close",
        "SELECT k, COUNT(*) AS n, SUM(v) AS sv, AVG(v) AS av, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '20' SECOND)",
        "",
    ),
    (
        "w_final",
        "SELECT k % 3000 AS g, COUNT(*) AS n, SUM(v) AS sv, window_start FROM s GROUP BY k % 3000, HOP(ts, INTERVAL '10' SECOND, INTERVAL '20' SECOND) EMIT FINAL",
        "",
    ),
    (
        // Rows 9 s late are within ALLOW LATENESS: fired windows take them as -old/+new.
        "w_late",
        "SELECT k, COUNT(*) AS n, SUM(v) AS sv, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS av, COUNT(DISTINCT v % 7) AS d, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '20' SECOND) ALLOW LATENESS INTERVAL '10' SECOND",
        "SELECT k, COUNT(*) AS n, SUM(v) AS sv, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS av, COUNT(DISTINCT v % 7) AS d, date_bin(INTERVAL '20' SECOND, ts, TIMESTAMP '1970-01-01') AS window_start FROM s GROUP BY k, 8",
    ),
    (
        "totals",
        "SELECT k % 4000 AS g, COUNT(*) AS n, SUM(v) AS sv, MIN(v) AS lo FROM s GROUP BY k % 4000",
        "SELECT k % 4000 AS g, COUNT(*) AS n, SUM(v) AS sv, MIN(v) AS lo FROM s GROUP BY 1",
    ),
];

fn config(state: &str, workers: usize) -> Config {
    let mut c = Config::default();
    c.set("workers", &workers.to_string()).unwrap();
    c.set("state_backend", state).unwrap();
    c.set("state_cache_size", "64KB").unwrap();
    c
}

fn create(db: &Database) {
    db.execute(SOURCE).unwrap();
    for (name, q, _) in VIEWS {
        db.execute(&format!("CREATE MATERIALIZED VIEW {name} AS {q}")).unwrap();
    }
}

fn views(db: &Database) -> Vec<Vec<String>> {
    VIEWS.iter().map(|(name, _, _)| sorted(&db.query(&format!("SELECT * FROM {name}")).unwrap())).collect()
}

fn metric(db: &Database, f: impl Fn(&laminar_core::StreamMetrics) -> u64) -> u64 {
    db.metrics().unwrap().streams.iter().map(f).sum()
}

/// Pushes batches `from..to`; returns the most state bytes in memory seen after a batch and
/// the most groups spilled.
fn push(db: &Database, from: i64, to: i64) -> (u64, u64) {
    let mut w = db.writer("s").unwrap();
    let (mut bytes, mut spilled) = (0, 0);
    for i in from..to {
        w.write(batch(i)).unwrap();
        db.flush().unwrap();
        bytes = bytes.max(metric(db, |s| s.state_bytes));
        spilled = spilled.max(metric(db, |s| s.spilled_groups));
    }
    (bytes, spilled)
}

fn finish(db: &Database) {
    db.writer("s").unwrap().finish().unwrap();
    db.flush().unwrap();
}

fn run(state: &str, workers: usize, n: i64) -> (Vec<Vec<String>>, u64, u64) {
    let db = Database::open(":memory:", config(state, workers)).unwrap();
    create(&db);
    let (bytes, spilled) = push(&db, 0, n);
    finish(&db);
    (views(&db), bytes, spilled)
}

/// DataFusion over batches 0..n, for the views that have an oracle query.
fn oracle(n: i64) -> Vec<Option<Vec<String>>> {
    use datafusion::datasource::MemTable;
    let ctx = datafusion::prelude::SessionContext::new();
    let rows: Vec<RecordBatch> = (0..n).map(batch).collect();
    ctx.register_table("s", Arc::new(MemTable::try_new(batch(0).schema(), vec![rows]).unwrap())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    VIEWS
        .iter()
        .map(|(_, _, q)| {
            (!q.is_empty()).then(|| sorted(&rt.block_on(async { ctx.sql(q).await.unwrap().collect().await.unwrap() })))
        })
        .collect()
}

fn assert_same(what: &str, got: &[Vec<String>], want: &[Vec<String>]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: view {}: {}", VIEWS[i].0, difference(g, w));
    }
}

#[cfg(feature = "rocksdb")]
#[test]
fn spilled_aggregates_equal_memory_and_the_batch_oracle() {
    let n = 40;
    let (mem, mem_bytes, mem_spilled) = run("memory", 1, n);
    assert_eq!(mem_spilled, 0);
    // The in-memory engine against DataFusion first, for the views that drop no late row.
    for (i, want) in oracle(n).into_iter().enumerate() {
        if let Some(want) = want {
            assert!(mem[i] == want, "memory backend vs oracle: view {}: {}", VIEWS[i].0, difference(&mem[i], &want));
        }
    }
    for workers in [1, 3] {
        let (got, bytes, spilled) = run("rocksdb", workers, n);
        assert_same(&format!("rocksdb, {workers} workers"), &got, &mem);
        assert!(spilled > 1000, "{workers} workers: only {spilled} groups were ever spilled");
        assert!(
            bytes * 4 < mem_bytes,
            "{workers} workers: {bytes} bytes of state in memory with a 64 KB cache, {mem_bytes} without spilling"
        );
        eprintln!(
            "{workers} workers: peak state in memory {bytes} B (memory backend {mem_bytes} B), peak spilled groups {spilled}"
        );
    }
}

fn open(dir: &Path, state: &str) -> Result<Database, laminar_core::Error> {
    open_workers(dir, state, 2)
}

fn open_workers(dir: &Path, state: &str, workers: usize) -> Result<Database, laminar_core::Error> {
    let mut c = config(state, workers);
    c.set("checkpoint_interval", "0").unwrap();
    Database::open(dir.to_str().unwrap(), c)
}

#[cfg(feature = "rocksdb")]
#[test]
fn spilled_state_is_checkpointed_and_recovered() {
    let n = 30;
    let (want, _, _) = run("memory", 1, n);
    let dir = tmpdir("recover");
    let db = open(&dir, "rocksdb").unwrap();
    create(&db);
    push(&db, 0, 10);
    assert!(metric(&db, |s| s.spilled_groups) > 0, "nothing spilled before the checkpoint");
    db.checkpoint().unwrap();
    let st = db.last_checkpoint().unwrap();
    assert!(st.bytes_total > 0);
    // What RocksDB holds shows in the metrics: at least a key of 8 bytes per spilled group.
    let spilled = metric(&db, |s| s.spilled_groups);
    let held = db.metrics().unwrap().state_backend_bytes.expect("a figure with state_backend = 'rocksdb'");
    assert!(held >= spilled * 8, "{held} bytes for {spilled} spilled groups");
    let text = db.metrics_text().unwrap();
    assert!(text.lines().any(|l| l.starts_with("laminardb_state_backend_bytes ")), "{text}");
    push(&db, 10, 20);
    // A crash: the spills since the checkpoint are in the live RocksDB instance only, which the
    // next open throws away (the log replays batches 10..20 over the checkpoint's copy).
    db.close_abruptly();
    let state_dirs = std::fs::read_dir(dir.join("checkpoints").join("state")).unwrap().count();
    assert_eq!(state_dirs, 1, "one checkpoint, one state directory");

    let e = open(&dir, "memory").err().expect("a rocksdb checkpoint opened with the memory backend");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("state_backend = 'rocksdb'"), "{e}");

    // Reopened with 3 workers instead of 2: the spilled groups move to the partitions their
    // keys go to now.
    let db = open_workers(&dir, "rocksdb", 3).unwrap();
    assert_eq!(db.recovery().unwrap().epoch, Some(1));
    assert!(metric(&db, |s| s.spilled_groups) > 0, "no spilled group after the reopen");
    push(&db, 20, n);
    finish(&db);
    assert_same("recovered from a checkpoint with spilled state", &views(&db), &want);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "rocksdb")]
#[test]
fn a_corrupt_state_file_falls_back_to_the_previous_checkpoint() {
    let n = 24;
    let (want, _, _) = run("memory", 1, n);
    let dir = tmpdir("corrupt");
    let db = open(&dir, "rocksdb").unwrap();
    create(&db);
    push(&db, 0, 8);
    db.checkpoint().unwrap();
    push(&db, 8, 16);
    db.checkpoint().unwrap();
    db.close_abruptly();
    // Damage a file of checkpoint 2's RocksDB copy that RocksDB does not checksum itself and
    // that is checkpoint 2's own (RocksDB copies its MANIFEST into each checkpoint; SST and
    // OPTIONS files are hard links shared with the checkpoints and the instance that have them).
    use std::os::unix::fs::MetadataExt;
    let state2 = dir.join("checkpoints").join("state").join(format!("{:020}", 2));
    let victim = std::fs::read_dir(&state2)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST")
                && std::fs::metadata(p).unwrap().nlink() == 1
        })
        .expect("a MANIFEST file of checkpoint 2 alone");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let db = open(&dir, "rocksdb").unwrap();
    let info = db.recovery().unwrap();
    assert_eq!(info.epoch, Some(1), "{info:?}");
    assert_eq!(info.warnings.len(), 1, "{info:?}");
    assert!(info.warnings[0].contains("fails its checksum"), "{info:?}");
    push(&db, 16, n);
    finish(&db);
    assert_same("after falling back past a corrupt state file", &views(&db), &want);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "rocksdb")]
#[test]
fn a_dropped_view_takes_its_spilled_state_with_it() {
    let db = Database::open(":memory:", config("rocksdb", 1)).unwrap();
    create(&db);
    push(&db, 0, 6);
    assert!(metric(&db, |s| s.spilled_groups) > 0);
    let e = db.snapshot_stream("w_close").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "a snapshot cannot carry spilled groups: {e}");
    for (name, _, _) in VIEWS {
        db.execute(&format!("DROP MATERIALIZED VIEW {name}")).unwrap();
    }
    // Recreated under the same names: fresh state, nothing of the old groups comes back.
    for (name, q, _) in VIEWS {
        db.execute(&format!("CREATE MATERIALIZED VIEW {name} AS {q}")).unwrap();
    }
    push(&db, 6, 12);
    finish(&db);
    let fresh = Database::open(":memory:", config("memory", 1)).unwrap();
    create(&fresh);
    let mut w = fresh.writer("s").unwrap();
    for i in 6..12 {
        w.write(batch(i)).unwrap();
    }
    drop(w);
    finish(&fresh);
    assert_same("views recreated after a DROP", &views(&db), &views(&fresh));
}

/// In-memory state re-partitions too: a durable database reopened with another `workers`
/// (the default is cores − 1, so another machine) loads its checkpoint and goes on.
#[test]
fn reopening_with_another_worker_count_repartitions_in_memory_state() {
    let n = 24;
    let (want, _, _) = run("memory", 1, n);
    let dir = tmpdir("workers");
    let db = open_workers(&dir, "memory", 2).unwrap();
    create(&db);
    push(&db, 0, 10);
    db.checkpoint().unwrap();
    db.close_abruptly();
    let db = open_workers(&dir, "memory", 3).unwrap();
    assert_eq!(db.recovery().unwrap().epoch, Some(1));
    push(&db, 10, n);
    finish(&db);
    assert_same("reopened with 3 workers instead of 2", &views(&db), &want);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_backend_is_checked_at_open() {
    let mut c = Config::default();
    let e = c.set("state_backend", "leveldb").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    c.set("state_backend", "rocksdb").unwrap();
    // Read at run time: the answer depends on the build's features.
    let available = std::hint::black_box(laminar_core::ROCKSDB_AVAILABLE);
    match Database::open(":memory:", c) {
        Ok(db) => assert!(available, "opened without the backend: {}", db.epoch()),
        Err(e) => {
            assert!(!available, "{e}");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.message().contains("cargo feature 'rocksdb'"), "{e}");
        }
    }
}
