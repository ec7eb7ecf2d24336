//! Durability (DESIGN §4, issue 6): reopening recovers catalog, state, views and positions;
//! torn and corrupt checkpoints fall back; a full disk refuses changes without losing
//! acknowledged ones; a changed pipeline is an error; subscribers resume exactly once; and a
//! child process killed with SIGKILL at random points loses and duplicates nothing.
//!
//! The reference for every comparison is the same workload run on an in-memory database, or
//! DataFusion over the rows that were acknowledged (the batch oracle).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use laminar_core::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database, ErrorKind, SubscribeOptions};

const ROWS: u64 = 200; // rows per pushed batch

/// Batch `i` of orders: ids i*ROWS.., 13 keys, 20 ms apart in event time.
fn orders(i: u64) -> RecordBatch {
    let ids: Vec<i64> = (i * ROWS..(i + 1) * ROWS).map(|x| x as i64).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from_iter_values(ids.iter().copied())) as ArrayRef),
        ("k", Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| x % 13))) as ArrayRef),
        ("amount", Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| (x * 7) % 100)))),
        ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(ids.iter().map(|x| x * 20_000))) as ArrayRef),
    ])
    .unwrap()
}

/// Batch `i` of payments: the same ids except every third, 300 ms after their order.
fn payments(i: u64) -> RecordBatch {
    let ids: Vec<i64> = (i * ROWS..(i + 1) * ROWS).map(|x| x as i64).filter(|x| x % 3 != 0).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from_iter_values(ids.iter().copied())) as ArrayRef),
        ("paid", Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| (x * 3) % 50)))),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from_iter_values(ids.iter().map(|x| x * 20_000 + 300_000))) as ArrayRef,
        ),
    ])
    .unwrap()
}

const DDL: &[&str] = &[
    "CREATE SOURCE IF NOT EXISTS orders (id BIGINT NOT NULL, k BIGINT NOT NULL, amount BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)",
    "CREATE SOURCE IF NOT EXISTS payments (id BIGINT NOT NULL, paid BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS totals AS SELECT k, COUNT(*) AS n, SUM(amount) AS s, window_start FROM orders GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)",
    "CREATE STREAM IF NOT EXISTS matched AS SELECT o.k, o.ts, p.paid FROM orders o JOIN payments p ON o.id = p.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '1' SECOND",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS paid AS SELECT k, COUNT(*) AS n, SUM(paid) AS s, window_start FROM matched GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)",
    // Blocks of 300 orders (6 s, one and a half batches) take turns over 7 keys: each block is
    // one session, open across batch boundaries (and checkpoints), closed 3 s after it ends.
    "CREATE MATERIALIZED VIEW IF NOT EXISTS order_sessions AS SELECT id / 300 % 7 AS g, COUNT(*) AS n, SUM(amount) AS s, window_start, window_end FROM orders GROUP BY id / 300 % 7, SESSION(ts, INTERVAL '1' SECOND) EMIT CHANGES",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS order_hops AS SELECT k, COUNT(*) AS n, SUM(amount) AS s, window_start FROM orders GROUP BY k, HOP(ts, INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)",
];

/// The oracle's SQL for the two views, over tables `orders` and `payments`.
const ORACLE: &[(&str, &str)] = &[
    (
        "totals",
        "SELECT k, COUNT(*) AS n, SUM(amount) AS s, date_bin(INTERVAL '1' SECOND, ts, TIMESTAMP '1970-01-01') AS window_start FROM orders GROUP BY 1, 4",
    ),
    (
        "paid",
        "SELECT o.k, COUNT(*) AS n, SUM(p.paid) AS s, date_bin(INTERVAL '1' SECOND, o.ts, TIMESTAMP '1970-01-01') AS window_start FROM orders o JOIN payments p ON o.id = p.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '1' SECOND GROUP BY 1, 4",
    ),
];

fn open(dir: &Path, level: &str, interval: &str) -> Database {
    open_with_state(dir, level, interval, "memory")
}

/// With `state` "rocksdb", aggregates keep 2 KB of state in memory and spill the rest.
fn open_with_state(dir: &Path, level: &str, interval: &str, state: &str) -> Database {
    let mut c = Config::default();
    c.set("durability", level).unwrap();
    c.set("checkpoint_interval", interval).unwrap();
    c.set("workers", "2").unwrap();
    c.set("state_backend", state).unwrap();
    c.set("state_cache_size", "2KB").unwrap();
    Database::open(dir.to_str().unwrap(), c).unwrap()
}

fn create(db: &Database) {
    for d in DDL {
        db.execute(d).unwrap();
    }
}

fn view(db: &Database, name: &str) -> Vec<String> {
    sorted(&db.query(&format!("SELECT * FROM {name}")).unwrap())
}

fn rows_in(db: &Database, source: &str) -> u64 {
    db.metrics().unwrap().sources.iter().find(|s| s.name == source).unwrap().rows_in
}

/// Batches pushed so far of each source, read back from the database (the child's resume point).
fn progress(db: &Database) -> (u64, u64) {
    let (ro, rp) = (rows_in(db, "orders"), rows_in(db, "payments"));
    assert_eq!(ro % ROWS, 0, "orders rows {ro} are not whole batches");
    // Payments batches hold the ids not divisible by 3: batches 0..n hold n*ROWS - ceil(n*ROWS/3).
    let n = (0..).find(|n| n * ROWS - (n * ROWS).div_ceil(3) >= rp).unwrap();
    assert_eq!(n * ROWS - (n * ROWS).div_ceil(3), rp, "payments rows {rp} are not whole batches");
    (ro / ROWS, n)
}

fn finish(db: &Database) {
    db.writer("orders").unwrap().finish().unwrap();
    db.writer("payments").unwrap().finish().unwrap();
    db.flush().unwrap();
}

/// Every view of a database fed batches 0..n of both sources, on a fresh in-memory database.
fn reference(n_orders: u64, n_payments: u64) -> Vec<Vec<String>> {
    let db = Database::open_in_memory().unwrap();
    create(&db);
    let (mut o, mut p) = (db.writer("orders").unwrap(), db.writer("payments").unwrap());
    for i in 0..n_orders.max(n_payments) {
        if i < n_orders {
            o.write(orders(i)).unwrap();
        }
        if i < n_payments {
            p.write(payments(i)).unwrap();
        }
    }
    finish(&db);
    vec![view(&db, "totals"), view(&db, "paid")]
}

/// The `order_sessions` and `order_hops` views of a fresh in-memory database fed orders batches
/// 0..n (they read only orders).
fn orders_reference(n_orders: u64) -> (Vec<String>, Vec<String>) {
    let db = Database::open_in_memory().unwrap();
    create(&db);
    let mut o = db.writer("orders").unwrap();
    for i in 0..n_orders {
        o.write(orders(i)).unwrap();
    }
    finish(&db);
    (view(&db, "order_sessions"), view(&db, "order_hops"))
}

/// DataFusion over the same rows: the batch oracle.
fn oracle(n_orders: u64, n_payments: u64) -> Vec<Vec<String>> {
    use datafusion::datasource::MemTable;
    let ctx = datafusion::prelude::SessionContext::new();
    let o: Vec<RecordBatch> = (0..n_orders).map(orders).collect();
    let p: Vec<RecordBatch> = (0..n_payments).map(payments).collect();
    ctx.register_table("orders", Arc::new(MemTable::try_new(orders(0).schema(), vec![o]).unwrap())).unwrap();
    ctx.register_table("payments", Arc::new(MemTable::try_new(payments(0).schema(), vec![p]).unwrap())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    ORACLE
        .iter()
        .map(|(_, q)| {
            let out = rt.block_on(async { ctx.sql(q).await.unwrap().collect().await.unwrap() });
            sorted(&out)
        })
        .collect()
}

#[test]
fn the_reference_run_equals_the_batch_oracle() {
    // The in-memory reference the other tests compare against is itself right.
    assert_eq!(reference(12, 9), oracle(12, 9));
}

#[test]
fn reopen_recovers_catalog_state_views_and_log() {
    for level in ["wal", "checkpoint"] {
        let dir = tmpdir(&format!("reopen-{level}"));
        let db = open(&dir, level, "0");
        create(&db);
        db.execute("CREATE TABLE prices (sym VARCHAR PRIMARY KEY, px BIGINT)").unwrap();
        db.execute("INSERT INTO prices VALUES ('a', 1), ('b', 2), ('c', 3)").unwrap();
        db.execute("DELETE FROM prices WHERE sym = 'b'").unwrap();
        let (mut o, mut p) = (db.writer("orders").unwrap(), db.writer("payments").unwrap());
        for i in 0..6 {
            o.write(orders(i)).unwrap();
            p.write(payments(i)).unwrap();
        }
        assert_eq!(db.checkpoint().unwrap(), 1);
        for i in 6..10 {
            o.write(orders(i)).unwrap();
            p.write(payments(i)).unwrap();
        }
        db.execute("CREATE STREAM late_ddl AS SELECT id FROM orders").unwrap();
        db.flush().unwrap();
        let before = vec![view(&db, "totals"), view(&db, "paid")];
        db.close_abruptly();

        let db = open(&dir, level, "0");
        let info = db.recovery().unwrap();
        assert_eq!(info.epoch, Some(1), "{info:?}");
        assert!(info.warnings.is_empty(), "{info:?}");
        // DDL after the checkpoint is durable at both levels.
        assert!(db.list(laminar_core::ObjectKind::Stream).unwrap().contains(&"late_ddl".to_string()));
        assert_eq!(sorted(&db.query("SELECT * FROM prices").unwrap()), vec!["a|1", "c|3"]);
        let (no, np) = progress(&db);
        if level == "wal" {
            // Every acknowledged push is back, and the views are exactly as before the crash.
            assert_eq!((no, np), (10, 10));
            assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], before);
        } else {
            // Pushes since the checkpoint are lost, state is that of the checkpoint.
            assert_eq!((no, np), (6, 6));
        }
        // The pipeline goes on from where it is, and ends where a run without a crash ends.
        let (mut o, mut p) = (db.writer("orders").unwrap(), db.writer("payments").unwrap());
        for i in no..14 {
            o.write(orders(i)).unwrap();
        }
        for i in np..14 {
            p.write(payments(i)).unwrap();
        }
        finish(&db);
        assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], oracle(14, 14), "level {level}");
        db.close();
        // A clean close checkpoints: the next open replays nothing.
        let db = open(&dir, level, "0");
        assert_eq!(db.recovery().unwrap().records_replayed, 0);
        assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], oracle(14, 14));
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_directory_locked_by_another_process_is_refused_and_free_once_it_ends() {
    let dir = tmpdir("lock-process");
    open(&dir, "wal", "0").close();
    // util-linux's flock(1) holds the directory's LOCK file the way a second LaminarDB would.
    let mut child = Command::new("flock")
        .arg("--no-fork") // the lock stays with the process we kill
        .arg(dir.join("LOCK"))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = loop {
        match Database::open(dir.to_str().unwrap(), Config::default()) {
            Err(e) => break e,
            // flock(1) has not taken it yet.
            Ok(db) => db.close(),
        }
        assert!(Instant::now() < deadline, "flock(1) never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.message().contains("open in another process"), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    Database::open(dir.to_str().unwrap(), Config::default()).unwrap().close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tmpdir("lock");
    let db = open(&dir, "wal", "0");
    let e = Database::open(dir.to_str().unwrap(), Config::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.message().contains("already open in this process"), "{e}");
    // The same directory under another spelling is the same database.
    let other = format!("{}/../{}", dir.display(), dir.file_name().unwrap().to_str().unwrap());
    let e = Database::open(&other, Config::default()).err().unwrap();
    assert!(e.message().contains("already open in this process"), "{e}");
    db.close();
    // A refused open takes nothing: after close, both spellings open.
    Database::open(&other, Config::default()).unwrap().close();
    Database::open(dir.to_str().unwrap(), Config::default()).unwrap().close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn memory_durability_on_a_path_and_wal_in_memory_are_refused() {
    let mut c = Config::default();
    c.set("durability", "memory").unwrap();
    let e = Database::open("/tmp/laminar-never-created", c).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let mut c = Config::default();
    c.set("durability", "wal").unwrap();
    let e = Database::open(":memory:", c).err().unwrap();
    assert!(e.message().contains("need a directory"), "{e}");
    let e = Database::open_in_memory().unwrap().checkpoint().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);
}

/// Pushes batches a..b of both sources and returns after each is acknowledged.
fn push(db: &Database, a: u64, b: u64) {
    let (mut o, mut p) = (db.writer("orders").unwrap(), db.writer("payments").unwrap());
    for i in a..b {
        o.write(orders(i)).unwrap();
        p.write(payments(i)).unwrap();
    }
}

fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-"))
        .collect();
    v.sort();
    v
}

#[test]
fn torn_or_corrupt_latest_checkpoint_falls_back_to_the_previous_one() {
    #[derive(Debug, Clone, Copy)]
    enum Damage {
        TornManifest,
        FlippedManifestByte,
        CorruptBlob,
        MissingBlob,
    }
    for damage in [Damage::TornManifest, Damage::FlippedManifestByte, Damage::CorruptBlob, Damage::MissingBlob] {
        let dir = tmpdir(&format!("damage-{damage:?}"));
        let db = open(&dir, "wal", "0");
        create(&db);
        push(&db, 0, 4);
        db.checkpoint().unwrap();
        push(&db, 4, 8);
        db.checkpoint().unwrap();
        push(&db, 8, 10);
        db.close_abruptly();
        let latest = manifests(&dir).pop().unwrap();
        let text = std::fs::read_to_string(&latest).unwrap();
        match damage {
            Damage::TornManifest => std::fs::write(&latest, &text[..text.len() / 2]).unwrap(),
            Damage::FlippedManifestByte => std::fs::write(&latest, text.replacen("seq ", "seq 1", 1)).unwrap(),
            Damage::CorruptBlob | Damage::MissingBlob => {
                // A blob only the latest checkpoint uses: its `paid` view state changed.
                let line = text
                    .lines()
                    .find(|l| {
                        l.starts_with("object ")
                            && l.contains(&"stream:paid".bytes().map(|b| format!("{b:02x}")).collect::<String>())
                    })
                    .unwrap();
                let blob = dir.join("checkpoints").join("blobs").join(line.split(' ').nth(2).unwrap());
                if matches!(damage, Damage::MissingBlob) {
                    std::fs::remove_file(&blob).unwrap();
                } else {
                    let mut bytes = std::fs::read(&blob).unwrap();
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0x5a;
                    std::fs::write(&blob, bytes).unwrap();
                }
            }
        }
        let db = open(&dir, "wal", "0");
        let info = db.recovery().unwrap();
        assert_eq!(info.epoch, Some(1), "{damage:?}: {info:?}");
        assert_eq!(info.warnings.len(), 1, "{damage:?}: {info:?}");
        assert!(info.warnings[0].contains("checkpoint 2"), "{damage:?}: {info:?}");
        // The log from the older checkpoint on was kept, so nothing acknowledged is lost.
        assert_eq!(progress(&db), (10, 10), "{damage:?}");
        finish(&db);
        assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], oracle(10, 10), "{damage:?}");
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The blob file of `object` in the newest checkpoint of `dir`.
fn newest_blob(dir: &Path, object: &str) -> PathBuf {
    let text = std::fs::read_to_string(manifests(dir).pop().unwrap()).unwrap();
    let hex: String = object.bytes().map(|b| format!("{b:02x}")).collect();
    let line = text.lines().find(|l| l.starts_with(&format!("object {hex} "))).unwrap();
    dir.join("checkpoints").join("blobs").join(line.split(' ').nth(2).unwrap())
}

#[test]
fn a_checkpoint_after_a_fallback_never_reuses_the_corrupt_file() {
    // Checkpoint 2's `paid` state is corrupted; recovery falls back to 1 and replays the log to
    // exactly checkpoint 2's state, so the next checkpoint has the same content as the corrupt
    // file: it must write it again, not refer to the damaged one.
    let dir = tmpdir("no-corrupt-reuse");
    let db = open(&dir, "wal", "0");
    create(&db);
    push(&db, 0, 2);
    db.checkpoint().unwrap();
    push(&db, 2, 4);
    db.checkpoint().unwrap();
    db.close_abruptly();
    let blob = newest_blob(&dir, "stream:paid");
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&blob, bytes).unwrap();
    let db = open(&dir, "wal", "0");
    assert_eq!(db.recovery().unwrap().epoch, Some(1));
    assert_eq!(db.checkpoint().unwrap(), 2);
    db.close_abruptly();
    let db = open(&dir, "wal", "0");
    let info = db.recovery().unwrap();
    assert!(info.warnings.is_empty() && info.epoch == Some(2), "{info:?}");
    finish(&db);
    assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], oracle(4, 4));
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_checkpoint_unusable_is_an_error_not_an_empty_database() {
    let dir = tmpdir("all-damaged");
    let db = open(&dir, "wal", "0");
    create(&db);
    push(&db, 0, 2);
    db.checkpoint().unwrap();
    db.close_abruptly();
    for m in manifests(&dir) {
        std::fs::write(&m, "LAMINARDB CHECKPOINT 1\nepoch 1\n").unwrap();
    }
    let e = Database::open(dir.to_str().unwrap(), Config::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.message().contains("no intact checkpoint"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_refuses_changes_and_loses_no_acknowledged_row() {
    let dir = tmpdir("full");
    let db = open(&dir, "wal", "0");
    create(&db);
    push(&db, 0, 3);
    db.flush().unwrap();
    let before = view(&db, "totals");
    db.simulate_disk_full_after(Some(100));
    let mut o = db.writer("orders").unwrap();
    let e = o.write(orders(3)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.message().contains("No space left on device"), "{e}");
    // Nothing of the refused push was applied, and later changes are refused too.
    db.flush().unwrap();
    assert_eq!(view(&db, "totals"), before);
    assert_eq!(rows_in(&db, "orders"), 3 * ROWS);
    assert_eq!(o.write(orders(3)).unwrap_err().kind(), ErrorKind::Io);
    let e = db.execute("CREATE STREAM x AS SELECT id FROM orders").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    // A checkpoint fails cleanly too (the disk is still full).
    assert_eq!(db.checkpoint().unwrap_err().kind(), ErrorKind::Io);
    db.close_abruptly();
    // Space again: everything acknowledged is there.
    let db = open(&dir, "wal", "0");
    assert_eq!(progress(&db), (3, 3));
    assert!(!db.list(laminar_core::ObjectKind::Stream).unwrap().contains(&"x".to_string()));
    finish(&db);
    assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], oracle(3, 3));
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_that_hits_a_full_disk_leaves_the_previous_one_usable() {
    let dir = tmpdir("full-checkpoint");
    let db = open(&dir, "wal", "0");
    create(&db);
    let sub = db.subscribe("totals").unwrap();
    push(&db, 0, 3);
    db.checkpoint().unwrap();
    drain(&sub); // epoch 1's results
    push(&db, 3, 5);
    db.flush().unwrap();
    let epoch2: Vec<String> = sorted(&drain(&sub));
    assert!(!epoch2.is_empty());
    db.simulate_disk_full_after(Some(300));
    let e = db.checkpoint().unwrap_err();
    assert!(e.message().contains("No space left"), "{e}");
    // Space again: the next checkpoint still holds the results of the epoch the failed one
    // would have closed, so a subscriber can resume after epoch 1.
    db.simulate_disk_full_after(None);
    assert_eq!(db.checkpoint().unwrap(), 2);
    db.close_abruptly();
    let db = open(&dir, "wal", "0");
    assert_eq!(db.recovery().unwrap().epoch, Some(2));
    assert_eq!(progress(&db), (5, 5));
    let resumed =
        db.subscribe_with("totals", SubscribeOptions { resume_after_epoch: Some(1), ..Default::default() }).unwrap();
    let got = sorted(&drain(&resumed));
    assert!(got == epoch2, "{}", difference(&got, &epoch2));
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reopening_with_a_changed_pipeline_is_an_error_until_it_is_replaced() {
    let dir = tmpdir("changed");
    let db = open(&dir, "wal", "0");
    create(&db);
    push(&db, 0, 3);
    db.close();
    let db = open(&dir, "wal", "0");
    // The same program again: IF NOT EXISTS with the same definitions (layout aside) is fine.
    create(&db);
    db.execute("CREATE MATERIALIZED VIEW IF NOT EXISTS totals AS SELECT k, COUNT(*) AS n, SUM(amount) AS s, window_start\n  FROM orders GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)").unwrap();
    // A changed view: a clear error naming what exists, never the old pipeline kept silently.
    let e = db
        .execute("CREATE MATERIALIZED VIEW IF NOT EXISTS totals AS SELECT k, COUNT(*) AS n, MAX(amount) AS s, window_start FROM orders GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.message().contains("different definition") && e.message().contains("CREATE OR REPLACE"), "{e}");
    let e = db.execute("CREATE SOURCE IF NOT EXISTS orders (id BIGINT NOT NULL, ts TIMESTAMP NOT NULL)").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    // The documented migration: replace it; its state starts afresh (and that is durable too).
    db.execute("CREATE OR REPLACE MATERIALIZED VIEW totals AS SELECT k, COUNT(*) AS n, MAX(amount) AS s, window_start FROM orders GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)").unwrap();
    push(&db, 3, 5);
    db.close_abruptly();
    let db = open(&dir, "wal", "0");
    let sql = db.object("totals").unwrap().sql;
    assert!(sql.contains("MAX(amount)"), "{sql}");
    finish(&db);
    // The replaced view saw only what came after it: the same as a fresh view fed those rows.
    let fresh = Database::open_in_memory().unwrap();
    create(&fresh);
    fresh.execute("CREATE OR REPLACE MATERIALIZED VIEW totals AS SELECT k, COUNT(*) AS n, MAX(amount) AS s, window_start FROM orders GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)").unwrap();
    let mut o = fresh.writer("orders").unwrap();
    for i in 3..5 {
        o.write(orders(i)).unwrap();
    }
    finish(&fresh);
    assert_eq!(view(&db, "totals"), view(&fresh, "totals"));
    assert_eq!(view(&db, "paid"), oracle(5, 5)[1]);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn subscribers_resume_from_their_last_epoch_and_see_each_result_once() {
    let dir = tmpdir("resume");
    let db = open(&dir, "wal", "0");
    create(&db);
    let sub = db.subscribe("totals").unwrap();
    let mut seen: Vec<(u64, Vec<String>)> = vec![];
    let read = |sub: &laminar_core::Subscription, seen: &mut Vec<(u64, Vec<String>)>| {
        while let laminar_core::Next::Batch(b) = sub.try_next().unwrap() {
            seen.push((sub.epoch(), sorted(&[b])));
        }
    };
    push(&db, 0, 4);
    db.flush().unwrap();
    read(&sub, &mut seen);
    assert_eq!(db.checkpoint().unwrap(), 1);
    push(&db, 4, 8);
    db.flush().unwrap();
    read(&sub, &mut seen);
    assert_eq!(db.checkpoint().unwrap(), 2);
    push(&db, 8, 11);
    db.flush().unwrap();
    read(&sub, &mut seen);
    assert!(
        seen.iter().any(|s| s.0 == 1) && seen.iter().any(|s| s.0 == 2) && seen.iter().any(|s| s.0 == 3),
        "{:?}",
        seen.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    // The consumer committed its work up to epoch 1 only; then the process died.
    let committed: Vec<String> = seen.iter().filter(|s| s.0 <= 1).flat_map(|s| s.1.clone()).collect();
    drop(sub);
    db.close_abruptly();

    let db = open(&dir, "wal", "0");
    // `paid` never had a subscriber: its results were not kept, and resuming it says so.
    let e = db
        .subscribe_with("paid", SubscribeOptions { resume_after_epoch: Some(1), ..Default::default() })
        .err()
        .unwrap();
    assert!(e.message().contains("kept from epoch"), "{e}");
    let sub =
        db.subscribe_with("totals", SubscribeOptions { resume_after_epoch: Some(1), ..Default::default() }).unwrap();
    push(&db, 11, 14);
    finish(&db);
    let mut all = committed;
    let mut epochs = vec![];
    while let laminar_core::Next::Batch(b) = sub.try_next().unwrap() {
        epochs.push(sub.epoch());
        all.extend(sorted(&[b]));
    }
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]) && epochs[0] == 2, "{epochs:?}");
    all.sort();
    // Every window result exactly once: what was committed plus what was resumed.
    assert_eq!(all, oracle(14, 14)[0]);
    // An epoch that is gone, or one in the future, is refused with a reason.
    let e = db
        .subscribe_with("totals", SubscribeOptions { resume_after_epoch: Some(99), ..Default::default() })
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ SESSION windows (issues 16, 26)

const CLICKS: &str = "CREATE SOURCE IF NOT EXISTS clicks (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)";

/// SESSION views in every EMIT mode that keeps session state across batches, and an unrelated
/// TUMBLE view over the same source.
const CLICK_VIEWS: &[(&str, &str)] = &[
    (
        "sessions",
        "SELECT k, COUNT(*) AS n, SUM(v) AS s, MAX(v) AS m, AVG(v) AS a, window_start, window_end FROM clicks GROUP BY k, SESSION(ts, INTERVAL '1' SECOND)",
    ),
    (
        "session_changes",
        "SELECT k, COUNT(*) AS n, COUNT(DISTINCT v) AS d, window_start, window_end FROM clicks GROUP BY k, SESSION(ts, INTERVAL '1' SECOND) EMIT CHANGES",
    ),
    (
        "session_late",
        "SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start, window_end FROM clicks GROUP BY k, SESSION(ts, INTERVAL '1' SECOND) ALLOW LATENESS INTERVAL '5' SECOND",
    ),
    (
        "session_final",
        "SELECT k, COUNT(*) AS n, MIN(v) AS lo, window_start FROM clicks GROUP BY k, SESSION(ts, INTERVAL '1' SECOND) EMIT FINAL ALLOW LATENESS INTERVAL '5' SECOND",
    ),
    (
        "ticks",
        "SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start FROM clicks GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)",
    ),
];

/// Start of batch `i` of clicks in event time (ms): 3 s per batch and a 2 s pause before every
/// even batch.
fn click_base(i: u64) -> i64 {
    (3000 * i + (i / 2) * 2000) as i64
}

/// Batch `i` of clicks. Keys 0..3 get a row every 600 ms, so each of their sessions spans an even
/// batch and the next odd one (the pause ends it). Besides:
/// - key 100: two sessions in each even batch (at +0.1 s and +1.6 s) that a row of the next
///   batch (+0.85 s) merges into one;
/// - key 200: a session in each odd batch that fires after the next batch and takes a row two
///   batches later (within ALLOW LATENESS; late for the views without it);
/// - key 300: a session in each even batch that closes (lateness 0) after the next batch; a row
///   overlapping it two batches later is late for it, though not by its own event time.
fn clicks(i: u64) -> RecordBatch {
    let b = click_base(i);
    let mut rows: Vec<(i64, i64, i64)> = (0..20u64)
        .map(|r| {
            let id = i * 20 + r;
            ((id % 4) as i64, (id * 7 % 10) as i64, b + r as i64 * 150)
        })
        .collect();
    if i.is_multiple_of(2) {
        rows.extend([(100, 1, b + 100), (100, 2, b + 1600), (300, 6, b + 2800)]);
        if i >= 2 {
            rows.push((300, 7, click_base(i - 2) + 3000));
        }
    } else {
        rows.extend([(100, 3, click_base(i - 1) + 850), (200, 4, b + 100)]);
        if i >= 3 {
            rows.push((200, 5, click_base(i - 2) + 600));
        }
    }
    kvt(&rows)
}

fn create_clicks(db: &Database) {
    db.execute(CLICKS).unwrap();
    for (name, sql) in CLICK_VIEWS {
        db.execute(&format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {name} AS {sql}")).unwrap();
    }
}

fn click_views(db: &Database) -> Vec<Vec<String>> {
    CLICK_VIEWS.iter().map(|(name, _)| view(db, name)).collect()
}

/// Every click view equals `want`, or a short account of the first that does not.
fn assert_click_views(got: &[Vec<String>], want: &[Vec<String>], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: view {}: {}", CLICK_VIEWS[i].0, difference(g, w));
    }
}

fn push_clicks(db: &Database, a: u64, b: u64) {
    let mut w = db.writer("clicks").unwrap();
    for i in a..b {
        w.write(clicks(i)).unwrap();
    }
}

/// Batches of clicks the database holds (from its row count).
fn clicks_progress(db: &Database) -> u64 {
    let rows = rows_in(db, "clicks");
    let mut n = 0;
    let mut sum = 0;
    while sum < rows {
        sum += clicks(n).num_rows() as u64;
        n += 1;
    }
    assert_eq!(sum, rows, "clicks rows {rows} are not whole batches");
    n
}

/// Every click view of a fresh in-memory database fed batches 0..n in one go.
fn click_reference(n: u64) -> Vec<Vec<String>> {
    let db = Database::open_in_memory().unwrap();
    create_clicks(&db);
    push_clicks(&db, 0, n);
    db.writer("clicks").unwrap().finish().unwrap();
    db.flush().unwrap();
    // The cases the data is made for do happen.
    let counts =
        |v: &str, k: i64| -> Vec<String> { sorted(&db.query(&format!("SELECT n FROM {v} WHERE k = {k}")).unwrap()) };
    assert!(
        counts("sessions", 100).iter().all(|n| n == "3"),
        "key 100's sessions merge: {:?}",
        counts("sessions", 100)
    );
    assert!(counts("session_late", 200).contains(&"2".to_string()), "key 200 takes rows within lateness");
    assert!(counts("sessions", 200).iter().all(|n| n == "1"), "key 200's later rows are late without lateness");
    assert!(counts("session_late", 300).contains(&"2".to_string()), "key 300 takes rows within lateness");
    assert!(counts("sessions", 300).iter().all(|n| n == "1"), "key 300's later rows overlap a closed session");
    click_views(&db)
}

#[test]
fn session_windows_checkpoint_and_recover_exactly() {
    // A SESSION window used to fail every checkpoint of its database (NOT_IMPLEMENTED), so a
    // durable database lost everything since it opened in a crash, the unrelated TUMBLE view too.
    // Now its open sessions (accumulators, what was emitted), closed bounds and watermark are part
    // of the checkpoint: sessions open across it merge after recovery exactly as without a crash.
    const N: u64 = 12;
    let want = click_reference(N);
    for level in ["wal", "checkpoint"] {
        // After an even batch: key 100's two sessions are open, key 200's fired one takes a row
        // next; after an odd batch: key 300's session is closed and the next batch overlaps it.
        for at in [5, 6] {
            let dir = tmpdir(&format!("sessions-{level}-{at}"));
            let db = open(&dir, level, "0");
            create_clicks(&db);
            push_clicks(&db, 0, at);
            assert_eq!(db.checkpoint().unwrap(), 1, "{level}, checkpoint after {at} batches");
            db.flush().unwrap();
            let at_checkpoint = click_views(&db);
            push_clicks(&db, at, at + 3);
            db.flush().unwrap();
            let before = click_views(&db);
            db.close_abruptly();

            let db = open(&dir, level, "0");
            let info = db.recovery().unwrap();
            assert_eq!(info.epoch, Some(1), "{level}/{at}: {info:?}");
            assert!(info.warnings.is_empty(), "{level}/{at}: {info:?}");
            let n = clicks_progress(&db);
            if level == "wal" {
                assert_eq!(n, at + 3);
                assert_click_views(&click_views(&db), &before, &format!("{level}/{at}: after recovery"));
            } else {
                assert_eq!(n, at);
                assert_click_views(&click_views(&db), &at_checkpoint, &format!("{level}/{at}: after recovery"));
            }
            push_clicks(&db, n, N);
            db.writer("clicks").unwrap().finish().unwrap();
            db.flush().unwrap();
            assert_click_views(&click_views(&db), &want, &format!("{level}/{at}: at the end"));
            // The close checkpoint succeeds too: the next open replays nothing.
            db.close();
            let db = open(&dir, level, "0");
            let info = db.recovery().unwrap();
            assert_eq!((info.epoch, info.records_replayed), (Some(2), 0), "{level}/{at}: {info:?}");
            assert_click_views(&click_views(&db), &want, &format!("{level}/{at}: after a clean close"));
            db.close();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[test]
fn checkpoint_durability_keeps_rows_before_a_periodic_checkpoint_with_a_session_view() {
    // Issue 26: with durability 'checkpoint', rows pushed before a periodic checkpoint survive a
    // crash; a SESSION view in the database used to make every checkpoint fail, so every view —
    // the unrelated TUMBLE view too — came back empty.
    let dir = tmpdir("sessions-periodic");
    let db = open(&dir, "checkpoint", "20ms");
    create_clicks(&db);
    push_clicks(&db, 0, 5);
    db.flush().unwrap();
    // A periodic checkpoint taken after every push was applied.
    let epoch = |db: &Database| db.last_checkpoint().map_or(0, |s| s.epoch);
    let (e0, deadline) = (epoch(&db), Instant::now() + Duration::from_secs(10));
    while epoch(&db) <= e0 {
        assert!(Instant::now() < deadline, "no periodic checkpoint completed in 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = click_views(&db);
    db.close_abruptly();
    let db = open(&dir, "checkpoint", "0");
    assert_eq!(clicks_progress(&db), 5);
    assert_click_views(&click_views(&db), &before, "after recovery");
    assert!(!view(&db, "ticks").is_empty());
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ the SIGKILL crash test

/// The child of `sigkill_crash_rounds`: opens the `wal` database, creates the pipeline if it is
/// new, then pushes the deterministic stream from where the database says it got to, printing
/// `ACK <orders batches> <payments batches>` after each acknowledged push, until it is killed.
#[test]
#[ignore = "run by sigkill_crash_rounds as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var("LAMINAR_CRASH_DIR") else { return };
    let interval = std::env::var("LAMINAR_CRASH_INTERVAL").unwrap_or_else(|_| "50ms".into());
    let state = std::env::var("LAMINAR_CRASH_STATE").unwrap_or_else(|_| "memory".into());
    let db = open_with_state(Path::new(&dir), "wal", &interval, &state);
    create(&db);
    let (mut no, mut np) = progress(&db);
    println!("READY {no} {np}");
    let (mut o, mut p) = (db.writer("orders").unwrap(), db.writer("payments").unwrap());
    // Bounded even if the parent dies without killing it.
    let t0 = Instant::now();
    while no < 20_000 && t0.elapsed() < Duration::from_secs(30) {
        // Alternate, so the two sources are never more than one batch apart.
        if np < no {
            p.write(payments(np)).unwrap();
            np += 1;
        } else {
            o.write(orders(no)).unwrap();
            no += 1;
        }
        println!("ACK {no} {np}");
    }
    println!("DONE");
}

/// Kills the child if the parent test fails while it runs.
struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_crash_rounds() {
    let rounds: u64 = std::env::var("LAMINAR_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    crash_rounds("memory", rounds);
}

/// The same with the RocksDB state backend and 2 KB of aggregate state in memory: spilled
/// groups are checkpointed with RocksDB's files and the live instance is rebuilt at each open.
#[cfg(feature = "rocksdb")]
#[test]
fn sigkill_crash_rounds_rocksdb_state() {
    let rounds: u64 = std::env::var("LAMINAR_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    crash_rounds("rocksdb", rounds);
}

fn crash_rounds(state: &str, rounds: u64) {
    let dir = tmpdir(&format!("sigkill-{state}"));
    let exe = std::env::current_exe().unwrap();
    let mut acked = (0u64, 0u64);
    let mut rng_state = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
    let mut rand = move |n: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    let t0 = Instant::now();
    let child_log = std::env::temp_dir().join(format!("laminar-crash-child-{state}-{}.log", std::process::id()));
    for round in 0..rounds {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args(["--exact", "crash_child", "--include-ignored", "--nocapture", "--test-threads", "1"])
                .env("LAMINAR_CRASH_DIR", &dir)
                .env("LAMINAR_CRASH_STATE", state)
                .env("LAMINAR_CRASH_INTERVAL", format!("{}ms", 20 + rand(60)))
                .stdout(Stdio::piped())
                .stderr(Stdio::from(std::fs::File::create(&child_log).unwrap()))
                .spawn()
                .unwrap(),
        );
        let out = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until it has recovered, then let it run a random while and kill it.
        let ready = loop {
            let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|e| {
                panic!(
                    "round {round}: the child did not report READY ({e}); its stderr:\n{}",
                    std::fs::read_to_string(&child_log).unwrap_or_default()
                )
            });
            // The test harness may print "test crash_child ... " in front of it.
            if let Some(i) = line.find("READY ") {
                break line[i..].to_string();
            }
        };
        let start: Vec<u64> = ready.split(' ').skip(1).map(|v| v.parse().unwrap()).collect();
        // Recovery kept every acknowledged push of the rounds before (and nothing more than one
        // unacknowledged push per source).
        assert!(
            start[0] >= acked.0 && start[1] >= acked.1,
            "round {round}: recovered {start:?} < acknowledged {acked:?}"
        );
        assert!(
            start[0] <= acked.0 + 1 && start[1] <= acked.1 + 1,
            "round {round}: recovered {start:?} > acknowledged {acked:?} + 1"
        );
        acked = (start[0], start[1]);
        std::thread::sleep(Duration::from_millis(10 + rand(150)));
        drop(child); // SIGKILL, then wait
        for line in rx.iter() {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                acked = (v[0], v[1]);
            }
        }
        reader.join().unwrap();
    }
    // The last reopen: nothing acknowledged lost, nothing duplicated, views equal the oracle.
    let db = open_with_state(&dir, "wal", "0", state);
    let spilled: u64 = db.metrics().unwrap().streams.iter().map(|s| s.spilled_groups).sum();
    // With a 2 KB cache the open windows' groups cannot all be in memory: some were recovered
    // from RocksDB's checkpointed files.
    assert!(state == "memory" || spilled > 0, "nothing spilled with a 2 KB cache");
    let (no, np) = progress(&db);
    assert!(
        no >= acked.0 && np >= acked.1 && no <= acked.0 + 1 && np <= acked.1 + 1,
        "recovered ({no}, {np}) vs acknowledged {acked:?}"
    );
    assert_eq!(rows_in(&db, "orders"), no * ROWS, "rows counted once");
    finish(&db);
    let got = [view(&db, "totals"), view(&db, "paid")];
    let want = oracle(no, np);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "view {}: after {rounds} SIGKILL rounds, {}", ORACLE[i].0, difference(g, w));
    }
    let (sessions, hops) = orders_reference(no);
    let h = view(&db, "order_hops");
    assert!(!hops.is_empty() && h == hops, "view order_hops: after {rounds} SIGKILL rounds, {}", difference(&h, &hops));
    let g = view(&db, "order_sessions");
    assert!(g == sessions, "view order_sessions: after {rounds} SIGKILL rounds, {}", difference(&g, &sessions));
    eprintln!(
        "sigkill crash rounds ({state} state): {rounds} rounds in {:.1}s, {} + {} batches of {ROWS} rows acknowledged, {spilled} groups spilled at the last reopen, views equal the oracle ({} + {} rows), sessions an in-memory run ({} rows)",
        t0.elapsed().as_secs_f64(),
        acked.0,
        acked.1,
        want[0].len(),
        want[1].len(),
        sessions.len()
    );
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&child_log);
}

#[test]
fn both_io_backends_write_a_log_and_checkpoints_that_recover() {
    let uring_available = {
        let dir = tmpdir("probe");
        let mut c = Config::default();
        c.set("io_backend", "io_uring").unwrap();
        let r = Database::open(dir.to_str().unwrap(), c);
        let ok = match r {
            Ok(db) => {
                assert_eq!(db.io_backend(), Some("io_uring"));
                db.close();
                true
            }
            Err(e) => {
                // Refused with a reason, never a silent fallback when io_uring was asked for.
                assert_eq!(e.kind(), ErrorKind::NotImplemented, "{e}");
                false
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        ok
    };
    let backends: &[&str] = if uring_available { &["std", "io_uring"] } else { &["std"] };
    for io in backends {
        let dir = tmpdir(&format!("io-{io}"));
        let open_io = || {
            let mut c = Config::default();
            c.set("io_backend", io).unwrap();
            c.set("checkpoint_interval", "0").unwrap();
            Database::open(dir.to_str().unwrap(), c).unwrap()
        };
        let db = open_io();
        assert_eq!(db.io_backend(), Some(*io));
        create(&db);
        push(&db, 0, 5);
        db.checkpoint().unwrap();
        push(&db, 5, 9);
        db.close_abruptly();
        let db = open_io();
        assert_eq!(db.recovery().unwrap().epoch, Some(1));
        assert_eq!(progress(&db), (9, 9), "{io}");
        finish(&db);
        assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], oracle(9, 9), "{io}");
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("io backends tested: {backends:?}");
}

#[test]
fn a_failed_stream_stays_failed_after_recovery() {
    // A stream that failed (here: its state passed memory_limit) stopped processing; reopening
    // must not bring it back with the state it had when it stopped, as if nothing was missed.
    let dir = tmpdir("failed");
    let open_limited = || {
        let mut c = Config::default();
        c.set("checkpoint_interval", "0").unwrap();
        c.set("memory_limit", "200KB").unwrap();
        Database::open(dir.to_str().unwrap(), c).unwrap()
    };
    let db = open_limited();
    db.execute(DDL[0]).unwrap();
    db.execute("CREATE STREAM per_id AS SELECT id, COUNT(*) AS n FROM orders GROUP BY id").unwrap();
    let mut o = db.writer("orders").unwrap();
    for i in 0..40 {
        o.write(orders(i)).unwrap();
    }
    db.flush().unwrap();
    let failed = db.metrics().unwrap().streams.iter().find(|s| s.name == "per_id").unwrap().failed.clone();
    assert!(failed.as_deref().is_some_and(|f| f.contains("memory_limit")), "{failed:?}");
    db.close();
    let db = open_limited();
    let m = db.metrics().unwrap();
    let again = m.streams.iter().find(|s| s.name == "per_id").unwrap().failed.clone();
    assert_eq!(again, failed, "the failure is recovered with the stream");
    let e = db.subscribe("per_id").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert_eq!(e.failed_stream(), Some("per_id"), "the recovered failure still names its stream");
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_connector_resumes_at_its_recovered_position() {
    // The NEXMARK source records its event number with each batch; a crash in the middle of the
    // feed, then a reopen, continues from there: every bid exactly once.
    let dir = tmpdir("nexmark");
    let bid = laminar_core::nexmark::queries::SOURCES[2].1;
    let ddl = format!("{bid} FROM NEXMARK WITH (events = '300000', batch = '2000', rate = '1000', seed = '3')");
    let db = open(&dir, "wal", "50ms");
    db.execute(&ddl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_in(&db, "bid") < 20_000 {
        assert!(Instant::now() < deadline, "the feed did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    db.close_abruptly();
    let db = open(&dir, "wal", "50ms");
    let at_reopen = rows_in(&db, "bid");
    eprintln!("nexmark feed: {at_reopen} bids recovered at the reopen");
    // 46 of every 50 generated events are bids.
    assert_eq!(wait_until_finished(&db, "bid", 60), 276_000, "every bid once (reopened at {at_reopen})");
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_pushers_share_the_group_commit_and_lose_nothing() {
    // Four threads push into one source at once (their records share fsyncs), with periodic
    // checkpoints running; after an abrupt close, every acknowledged batch is there exactly once.
    let dir = tmpdir("concurrent");
    let db = open(&dir, "wal", "5ms");
    create(&db);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut o = db.writer("orders").unwrap();
                // Thread t pushes batches t, t+4, t+8, … (disjoint ids).
                for i in (t..120).step_by(4) {
                    o.write(orders(i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    db.close_abruptly();
    let db = open(&dir, "wal", "0");
    assert_eq!(rows_in(&db, "orders"), 120 * ROWS);
    // The batches arrived interleaved; `totals` counts each order once whatever the order (rows
    // behind the watermark as late are reported, so compare against the engine's own late count).
    db.writer("orders").unwrap().finish().unwrap();
    db.flush().unwrap();
    let late = db.metrics().unwrap().streams.iter().find(|s| s.name == "totals").unwrap().rows_late;
    let n: i64 = db.query("SELECT SUM(n) AS n FROM totals").unwrap()[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n as u64 + late, 120 * ROWS, "every acknowledged order counted once or reported late");
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ a damaged write-ahead log

/// The write-ahead log segments of `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal" || x == "log"))
        .collect();
    v.sort();
    v
}

/// The byte offset and length of every record of a log segment (`[len u32][crc u32][len bytes]`).
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut v = vec![];
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        v.push((pos, 8 + len));
        pos += 8 + len;
    }
    v
}

/// Opens `dir` (durability wal, no periodic checkpoints) with `wal_recovery = rule`.
fn open_recovering(dir: &Path, rule: &str) -> laminar_core::Result<Database> {
    let mut c = Config::default();
    c.set("durability", "wal").unwrap();
    c.set("checkpoint_interval", "0").unwrap();
    c.set("workers", "2").unwrap();
    c.set("wal_recovery", rule).unwrap();
    Database::open(dir.to_str().unwrap(), c)
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_newest_segment_is_an_error_unless_salvaged() {
    let dir = tmpdir("wal-flip");
    let db = open(&dir, "wal", "0");
    create(&db);
    push(&db, 0, 6);
    db.close_abruptly();
    let segs = segments(&dir);
    assert_eq!(segs.len(), 1, "{segs:?}");
    let seg = &segs[0];
    let mut bytes = std::fs::read(seg).unwrap();
    let recs = records(&bytes);
    assert_eq!(recs.len(), DDL.len() + 12);
    // The record holding the segment's middle byte: a pushed batch with intact records after it.
    let i = recs.iter().position(|(at, len)| (*at..at + len).contains(&(bytes.len() / 2))).unwrap();
    assert!(i >= DDL.len() && i + 1 < recs.len(), "record {i}");
    let (at, len) = recs[i];
    bytes[at + len / 2] ^= 0x20;
    std::fs::write(seg, &bytes).unwrap();
    let seg_name = seg.file_name().unwrap().to_string_lossy().to_string();

    // Strict (the default): an IO error naming the file and the offset, and how to salvage.
    let e = Database::open(dir.to_str().unwrap(), Config::default()).err().expect("a damaged log must not open");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.message().contains(&seg_name) && e.message().contains(&format!("byte {at}")), "{e}");
    assert!(e.message().contains("wal_recovery") && e.message().contains("salvage"), "{e}");
    // Still refused the second time: nothing was repaired or dropped by the failed open.
    assert_eq!(open_recovering(&dir, "strict").err().unwrap().kind(), ErrorKind::Io);
    assert_eq!(std::fs::read(seg).unwrap(), bytes);

    // Salvage: opens, reports the loss with its counts, replays the records after the damage.
    let db = open_recovering(&dir, "salvage").unwrap();
    let info = db.recovery().unwrap();
    assert_eq!(info.warnings.len(), 1, "{info:?}");
    let w = &info.warnings[0];
    assert!(
        w.contains(&seg_name)
            && w.contains(&format!("byte {at}"))
            && w.contains(&format!("{len} bytes"))
            && w.contains(" 1 record ("),
        "{w}"
    );
    assert_eq!(info.records_replayed as usize, recs.len() - 1, "{info:?}");
    // Record i is batch (i - 5) / 2 of orders (even) or payments (odd); everything else is back.
    let lost_batch = ((i - DDL.len()) / 2) as u64;
    let (want_o, want_p) = if (i - DDL.len()).is_multiple_of(2) {
        (5 * ROWS, payments_rows(6))
    } else {
        (6 * ROWS, payments_rows(6) - payments(lost_batch).num_rows() as u64)
    };
    assert_eq!((rows_in(&db, "orders"), rows_in(&db, "payments")), (want_o, want_p));
    db.close_abruptly();
    // The salvaging open took a checkpoint: the damaged log is no longer needed.
    let db = open_recovering(&dir, "strict").unwrap();
    let info = db.recovery().unwrap();
    assert!(info.warnings.is_empty() && info.epoch == Some(1), "{info:?}");
    assert_eq!((rows_in(&db, "orders"), rows_in(&db, "payments")), (want_o, want_p));
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rows of payments batches 0..n.
fn payments_rows(n: u64) -> u64 {
    (0..n).map(|i| payments(i).num_rows() as u64).sum()
}

#[test]
fn a_segment_shorter_than_the_next_one_proves_is_an_error_unless_salvaged() {
    for cut in ["empty", "last two records"] {
        let dir = tmpdir(&format!("wal-short-{}", cut.replace(' ', "-")));
        let db = open(&dir, "wal", "0");
        create(&db);
        push(&db, 0, 2);
        db.checkpoint().unwrap();
        push(&db, 2, 5); // six records in a new segment
        db.close_abruptly();
        // A reopen starts the next segment after them: its name proves how far the log went.
        let db = open(&dir, "wal", "0");
        assert_eq!(progress(&db), (5, 5));
        db.close_abruptly();
        let segs = segments(&dir);
        assert_eq!(segs.len(), 3, "{segs:?}");
        let seg = &segs[1];
        let bytes = std::fs::read(seg).unwrap();
        let recs = records(&bytes);
        assert_eq!(recs.len(), 6);
        let (keep, lost) = if cut == "empty" { (0, 6) } else { (recs[4].0, 2) };
        std::fs::write(seg, &bytes[..keep]).unwrap();
        let seg_name = seg.file_name().unwrap().to_string_lossy().to_string();

        let e =
            Database::open(dir.to_str().unwrap(), Config::default()).err().expect("a truncated segment must not open");
        assert_eq!(e.kind(), ErrorKind::Io, "{cut}: {e}");
        assert!(e.message().contains(&seg_name) && e.message().contains(&format!("byte {keep}")), "{cut}: {e}");
        assert!(e.message().contains(&format!(" {lost} records (")) && e.message().contains("salvage"), "{cut}: {e}");

        let db = open_recovering(&dir, "salvage").unwrap();
        let info = db.recovery().unwrap();
        assert_eq!(info.warnings.len(), 1, "{cut}: {info:?}");
        assert!(
            info.warnings[0].contains(&seg_name) && info.warnings[0].contains(&format!(" {lost} records (")),
            "{cut}: {info:?}"
        );
        let want = if cut == "empty" { (2, 2) } else { (4, 4) };
        assert_eq!(progress(&db), want, "{cut}");
        db.close();
        let db = open_recovering(&dir, "strict").unwrap();
        assert!(db.recovery().unwrap().warnings.is_empty());
        assert_eq!(progress(&db), want, "{cut}");
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_torn_tail_of_the_newest_segment_is_dropped_with_a_truthful_warning() {
    for tail in ["cut short", "zeros"] {
        let dir = tmpdir(&format!("wal-torn-{}", tail.replace(' ', "-")));
        let db = open(&dir, "wal", "0");
        create(&db);
        push(&db, 0, 3);
        db.close_abruptly();
        let seg = segments(&dir).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let (last_at, _) = *records(&bytes).last().unwrap();
        let want = if tail == "cut short" {
            // The last record (payments batch 2) lost its last 10 bytes: a write a crash cut.
            bytes.truncate(bytes.len() - 10);
            (3, 2)
        } else {
            // The file grew but the data never reached the disk (a power cut): zeros.
            bytes.extend_from_slice(&[0u8; 4096]);
            (3, 3)
        };
        let torn_at = if tail == "cut short" { last_at } else { bytes.len() - 4096 };
        std::fs::write(&seg, &bytes).unwrap();
        let db = open(&dir, "wal", "0");
        let info = db.recovery().unwrap();
        assert_eq!(info.warnings.len(), 1, "{tail}: {info:?}");
        let w = &info.warnings[0];
        assert!(
            w.contains(&seg.file_name().unwrap().to_string_lossy().to_string())
                && w.contains(&format!("byte {torn_at}")),
            "{tail}: {w}"
        );
        assert!(w.contains("never acknowledged") && !w.contains("the rest of this log segment"), "{tail}: {w}");
        assert_eq!(progress(&db), want, "{tail}");
        // The pipeline goes on (the dropped push is pushed again), and later opens find a clean log.
        if want.1 == 2 {
            db.writer("payments").unwrap().write(payments(2)).unwrap();
        }
        push(&db, 3, 6);
        db.close_abruptly();
        let db = open(&dir, "wal", "0");
        let info = db.recovery().unwrap();
        assert!(info.warnings.is_empty(), "{tail}: {info:?}");
        let (o, p) = progress(&db);
        assert_eq!((o, p), (6, 6), "{tail}");
        finish(&db);
        assert_eq!(vec![view(&db, "totals"), view(&db, "paid")], oracle(6, 6), "{tail}");
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn salvage_skips_the_records_that_depended_on_a_lost_one() {
    // The damaged record is CREATE SOURCE orders: the views over orders and the pushes into it
    // cannot be replayed without it; they are skipped and counted, payments is recovered.
    let dir = tmpdir("wal-lost-ddl");
    let db = open(&dir, "wal", "0");
    create(&db);
    push(&db, 0, 2);
    db.close_abruptly();
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let (at, len) = records(&bytes)[0];
    bytes[at + len - 1] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let e = open_recovering(&dir, "strict").err().unwrap();
    assert!(e.message().contains("byte 0") && e.message().contains(" 1 record (sequence numbers 1 to 1)"), "{e}");
    let db = open_recovering(&dir, "salvage").unwrap();
    let info = db.recovery().unwrap();
    assert_eq!(info.warnings.len(), 2, "{info:?}");
    // totals, matched, paid, order_sessions and order_hops (over orders), and orders batches 0 and 1.
    assert!(
        info.warnings[1].contains("7 intact log records after the damage could not be replayed")
            && info.warnings[1].contains("orders"),
        "{info:?}"
    );
    assert_eq!(db.list(laminar_core::ObjectKind::Source).unwrap(), vec!["payments".to_string()]);
    assert_eq!(rows_in(&db, "payments"), payments_rows(2));
    db.close();
    let db = open_recovering(&dir, "strict").unwrap();
    assert!(db.recovery().unwrap().warnings.is_empty());
    assert_eq!(rows_in(&db, "payments"), payments_rows(2));
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `storage_dir` with a relative path: the database is that path inside the directory (the
/// established Python package's `open("name", storage_dir=…)`), so two names are two databases
/// and a reopen by name recovers; an absolute path ignores `storage_dir`.
#[test]
fn a_relative_path_with_storage_dir_names_a_database_inside_it() {
    let root = tmpdir("storage-dir-names");
    let mut c = Config::default();
    c.set("storage_dir", root.to_str().unwrap()).unwrap();
    let a = Database::open("first", c.clone()).unwrap();
    a.execute("CREATE SOURCE s (x BIGINT)").unwrap();
    a.execute("INSERT INTO s VALUES (1), (2)").unwrap();
    a.close();
    assert!(root.join("first").is_dir(), "the database lives in storage_dir/first");
    assert!(!std::path::Path::new("first").exists(), "nothing in the working directory");
    // Another name is another database; the first reopens with its rows.
    let b = Database::open("second", c.clone()).unwrap();
    assert!(b.execute("SELECT * FROM s").is_err(), "'second' has no source s");
    b.close();
    let a = Database::open("first", c.clone()).unwrap();
    assert_eq!(sorted(&a.query("SELECT x FROM s").unwrap()), vec!["1", "2"]);
    a.close();
    // An absolute path stands alone.
    let abs = root.join("elsewhere");
    let d = Database::open(abs.to_str().unwrap(), c).unwrap();
    d.close();
    assert!(abs.is_dir());
    let _ = std::fs::remove_dir_all(&root);
}
