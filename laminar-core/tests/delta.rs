//! The DELTA connector: a windowed aggregate and a plain stream (partitioned, with small rolled
//! files) sunk to Delta tables across checkpoints and a reopen, the tables' logs checked (one
//! commit per epoch that wrote rows, each with the sink's `txn`), and the tables read back by
//! the DELTA source and compared with DataFusion over the same rows. Python's `deltalake` and
//! polars read the same kind of tables in bindings/python/tests/test_delta_connector.py.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use laminar_core::{Config, Database, ErrorKind};
use rand::{Rng, SeedableRng};

type Row = (i64, i64, i64);

const PIPELINE: &str = "
    CREATE SOURCE ev (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
    CREATE STREAM agg AS SELECT k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
        FROM ev GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND);
    CREATE STREAM raw AS SELECT k, v, ts FROM ev;
    CREATE SINK agg_out FROM agg INTO DELTA WITH ('path' = '{AGG}', 'sink.compact-every' = '2');
    CREATE SINK raw_out FROM raw INTO DELTA WITH ('path' = 'file://{RAW}', 'partition-by' = 'k',
        'sink.rolling-policy.file-size' = '1KB');";

fn durable() -> Config {
    let mut c = Config::default();
    c.set("durability", "checkpoint").unwrap();
    c.set("checkpoint_interval", "0").unwrap(); // checkpoints by hand
    c
}

/// The commits of a table's log: version → its actions (one JSON object per line).
fn commits(table: &Path) -> BTreeMap<u64, Vec<serde_json::Value>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(table.join("_delta_log")).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        let Some(v) = name.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok()) else { continue };
        let text = std::fs::read_to_string(e.path()).unwrap();
        out.insert(v, text.lines().map(|l| serde_json::from_str(l).unwrap()).collect());
    }
    out
}

/// Checks the log: versions 0..=n with no gap, version 0 creates the table, every later one is
/// one epoch of `app_id` (a txn, epochs strictly increasing) adding files that exist and that no
/// other commit adds, or a compaction (OPTIMIZE: no txn, files removed and one added, all with
/// dataChange = false). Returns the number of epoch commits.
fn check_log(table: &Path, app_id: &str) -> usize {
    check_log_and_compactions(table, app_id).0
}

fn check_log_and_compactions(table: &Path, app_id: &str) -> (usize, usize) {
    let log = commits(table);
    assert_eq!(log.keys().copied().collect::<Vec<_>>(), (0..log.len() as u64).collect::<Vec<_>>(), "gaps");
    assert!(log[&0].iter().any(|a| a.get("metaData").is_some()) && log[&0].iter().any(|a| a.get("protocol").is_some()));
    let mut last_epoch = 0;
    let mut seen = std::collections::HashSet::new();
    let mut live = std::collections::HashSet::new();
    let mut compactions = 0;
    for (v, actions) in log.range(1..) {
        let op = actions.iter().find_map(|a| a.pointer("/commitInfo/operation")).and_then(|o| o.as_str());
        if op == Some("OPTIMIZE") {
            compactions += 1;
            assert!(actions.iter().all(|a| a.get("txn").is_none()), "version {v}");
            let removed: Vec<String> = actions
                .iter()
                .filter_map(|a| a.get("remove"))
                .map(|r| uri_decode(r["path"].as_str().unwrap()))
                .collect();
            let added: Vec<&serde_json::Value> = actions.iter().filter_map(|a| a.get("add")).collect();
            assert!(removed.len() >= 2 && added.len() == 1, "version {v}: {actions:?}");
            for r in &removed {
                assert!(live.remove(r), "version {v} removes '{r}', which is not live");
            }
            assert!(actions.iter().filter_map(|a| a.get("remove").or(a.get("add"))).all(|a| a["dataChange"] == false));
            let p = uri_decode(added[0]["path"].as_str().unwrap());
            assert!(table.join(&p).is_file() && seen.insert(p.clone()));
            live.insert(p);
            continue;
        }
        let txns: Vec<&serde_json::Value> = actions.iter().filter_map(|a| a.get("txn")).collect();
        assert_eq!(txns.len(), 1, "version {v}: {actions:?}");
        assert_eq!(txns[0]["appId"], app_id);
        let epoch = txns[0]["version"].as_i64().unwrap();
        assert!(epoch > last_epoch, "version {v}: epoch {epoch} after {last_epoch}: one commit per epoch");
        last_epoch = epoch;
        let adds: Vec<&serde_json::Value> = actions.iter().filter_map(|a| a.get("add")).collect();
        assert!(!adds.is_empty(), "version {v} adds nothing");
        for a in adds {
            let p = uri_decode(a["path"].as_str().unwrap());
            assert!(table.join(&p).is_file(), "version {v} adds '{p}', which is not there");
            assert!(seen.insert(p.clone()), "'{p}' added twice");
            live.insert(p.clone());
            assert_eq!(std::fs::metadata(table.join(&p)).unwrap().len(), a["size"].as_u64().unwrap());
        }
    }
    (log.len() - 1 - compactions, compactions)
}

/// A log path (a URI) as a file path.
fn uri_decode(s: &str) -> String {
    let mut out = vec![];
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads a Delta table with the DELTA source (to its current end) into sorted rows.
fn read_back(table: &Path, columns: &str) -> Vec<String> {
    let db = db(1);
    db.execute(&format!(
        "CREATE SOURCE t ({columns}) FROM DELTA WITH ('path' = '{}', 'source.monitor-interval' = '0');
         CREATE MATERIALIZED VIEW t_all AS SELECT * FROM t;",
        table.display()
    ))
    .unwrap();
    wait_until_finished(&db, "t", 60);
    db.flush().unwrap();
    let got = sorted(&db.query("SELECT * FROM t_all").unwrap());
    db.close();
    got
}

fn random_rows(rng: &mut rand::rngs::SmallRng, n: usize, t0: i64) -> Vec<Row> {
    (0..n).map(|i| (rng.random_range(0..4), rng.random_range(-100..100), t0 + i as i64 * 53)).collect()
}

#[test]
fn a_windowed_aggregate_and_a_plain_stream_round_trip_through_delta_tables() {
    let root = tmpdir("delta-e2e");
    let (agg, raw, dbdir) = (root.join("agg"), root.join("raw"), root.join("db"));
    let sql = PIPELINE.replace("{AGG}", &agg.display().to_string()).replace("{RAW}", &raw.display().to_string());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let mut all: Vec<Row> = vec![];
    let mut t0 = 1_700_000_000_000;
    let mut db = Database::open(dbdir.to_str().unwrap(), durable()).unwrap();
    db.execute(&sql).unwrap();
    for round in 0..4 {
        let rows = random_rows(&mut rng, 700, t0);
        t0 += 700 * 53;
        let mut w = db.writer("ev").unwrap();
        for chunk in rows.chunks(100) {
            w.write(kvt(chunk)).unwrap();
        }
        drop(w);
        all.extend(rows);
        db.flush().unwrap();
        db.checkpoint().unwrap();
        if round == 1 {
            // Reopened from the checkpoint: the sinks carry on from the log they find.
            db.close();
            db = Database::open(dbdir.to_str().unwrap(), durable()).unwrap();
        }
    }
    db.writer("ev").unwrap().finish().unwrap();
    db.flush().unwrap();
    db.checkpoint().unwrap();
    // A checkpoint with nothing new makes no commit.
    db.checkpoint().unwrap();
    db.close();

    // The aggregate's small files were compacted every 2 epochs.
    let (agg_commits, compactions) = check_log_and_compactions(&agg, "laminardb:agg_out");
    assert!(compactions >= 2, "{compactions} compactions");
    let raw_commits = check_log(&raw, "laminardb:raw_out");
    assert!(agg_commits >= 4, "{agg_commits} commits");
    assert_eq!(raw_commits, 4, "one commit per checkpoint that had rows");
    // The plain stream's files were rolled at 1 KB, in one directory per key.
    let raw_files: usize = commits(&raw).values().flatten().filter(|a| a.get("add").is_some()).count();
    assert!(raw_files > 16, "{raw_files} files");
    assert!(raw.join("k=0").is_dir() && raw.join("k=3").is_dir());

    let want = tumble_10s_oracle(&all);
    let got = read_back(&agg, "k BIGINT, ws TIMESTAMP, s BIGINT, n BIGINT");
    assert_eq!(got, want, "{}", difference(&got, &want));
    let mut want_raw: Vec<String> = sorted(&[kvt(&all)]);
    want_raw.sort();
    let got_raw = read_back(&raw, "k BIGINT, v BIGINT, ts TIMESTAMP");
    assert_eq!(got_raw.len(), all.len());
    assert_eq!(got_raw, want_raw, "{}", difference(&got_raw, &want_raw));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_existing_table_must_fit_and_object_stores_are_refused() {
    let root = tmpdir("delta-fit");
    let t = root.join("t");
    let db = db(1);
    db.execute(&format!(
        "CREATE SOURCE s (a BIGINT, b VARCHAR); CREATE SINK one FROM s INTO DELTA WITH ('path' = '{}')",
        t.display()
    ))
    .unwrap();
    db.execute("CREATE SOURCE s2 (a BIGINT, b DOUBLE)").unwrap();
    let e = db.execute(&format!("CREATE SINK two FROM s2 INTO DELTA WITH ('path' = '{}')", t.display())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("column 'b' is string in the table and double in the input"), "{e}");
    let e = db
        .execute(&format!(
            "CREATE SINK three FROM s INTO DELTA WITH ('path' = '{}', 'partition-by' = 'a')",
            t.display()
        ))
        .unwrap_err();
    assert!(e.message().contains("partitioned by ()"), "{e}");
    let e = db.execute("CREATE SINK four FROM s INTO DELTA WITH ('path' = 's3://bucket/t')").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotImplemented, "{e}");
    assert!(e.message().contains("local file systems only"), "{e}");
    let e =
        db.execute("CREATE SINK five FROM s INTO DELTA WITH ('path' = '/tmp/x', 'sink.mode' = 'upsert')").unwrap_err();
    assert!(e.message().contains("__weight"), "{e}");
    let e = db.execute("CREATE SINK six FROM s INTO DELTA WITH ('pth' = '/tmp/x')").unwrap_err();
    assert!(e.message().contains("'pth' is not an option; did you mean 'path'?"), "{e}");
    // The source of a table that is not there: a bounded read says so.
    // (One statement list: the reader starts once the view reading it exists.)
    db.execute(&format!(
        "CREATE SOURCE gone (a BIGINT) FROM DELTA WITH ('path' = '{}', 'source.monitor-interval' = '0');
         CREATE MATERIALIZED VIEW g AS SELECT * FROM gone",
        root.join("nothing").display()
    ))
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match db.query("SELECT * FROM g") {
            Err(e) => {
                assert!(e.message().contains("no Delta table at"), "{e}");
                break;
            }
            Ok(_) => {
                assert!(std::time::Instant::now() < deadline, "the source never failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    db.close();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_commit_lost_in_a_crash_is_made_once_at_recovery() {
    // Between a durable checkpoint and its Delta commit, the process stops (an abrupt close
    // right after the checkpoint's files are staged cannot be timed from outside, so the test
    // removes the last commit, as if it never happened, and moves its files back to staging).
    let root = tmpdir("delta-crash");
    let (t, dbdir) = (root.join("t"), root.join("db"));
    let mut db = Database::open(dbdir.to_str().unwrap(), durable()).unwrap();
    db.execute(&format!(
        "CREATE SOURCE ev (k BIGINT, v BIGINT, ts TIMESTAMP);
         CREATE SINK out FROM ev INTO DELTA WITH ('path' = '{}')",
        t.display()
    ))
    .unwrap();
    let rows: Vec<Row> = (0..100).map(|i| (i % 3, i, 1_700_000_000_000 + i)).collect();
    for chunk in rows.chunks(25) {
        db.writer("ev").unwrap().write(kvt(chunk)).unwrap();
        db.flush().unwrap();
        db.checkpoint().unwrap();
    }
    db.close_abruptly();
    let log = commits(&t);
    let last = *log.keys().max().unwrap();
    assert_eq!(last, 4);
    // Undo version 4: its files back to staging, its commit gone.
    let staging: PathBuf = t.join(".laminar-staging").join("out");
    std::fs::create_dir_all(&staging).unwrap();
    for a in log[&last].iter().filter_map(|a| a.get("add")) {
        let p = a["path"].as_str().unwrap();
        std::fs::rename(t.join(p), staging.join(p)).unwrap();
    }
    std::fs::remove_file(t.join("_delta_log").join(format!("{last:020}.json"))).unwrap();
    // Also a file staged after the checkpoint, never committed: recovery deletes it.
    std::fs::write(staging.join("part-9999999999-x-00001.snappy.parquet"), b"partial").unwrap();
    db = Database::open(dbdir.to_str().unwrap(), durable()).unwrap();
    assert_eq!(check_log(&t, "laminardb:out"), 4, "the lost commit made again, once");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "staging emptied");
    db.close();
    // Reopened again with the commit in place: nothing more.
    Database::open(dbdir.to_str().unwrap(), durable()).unwrap().close();
    assert_eq!(check_log(&t, "laminardb:out"), 4);
    let got = read_back(&t, "k BIGINT, v BIGINT, ts TIMESTAMP");
    assert_eq!(got, sorted(&[kvt(&rows)]));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_sink_created_again_starts_its_epochs_afresh() {
    // A second database (epochs from 1 again) sinks into a table whose log has the first one's
    // txn for the same sink.id at a higher epoch: its first commit must not look done already.
    let root = tmpdir("delta-again");
    let t = root.join("t");
    let rows: Vec<Row> = (0..60).map(|i| (i % 2, i, 1_700_000_000_000 + i)).collect();
    let run = |dir: &str, rows: &[Row], checkpoints: usize| {
        let db = Database::open(root.join(dir).to_str().unwrap(), durable()).unwrap();
        db.execute(&format!(
            "CREATE SOURCE IF NOT EXISTS ev (k BIGINT, v BIGINT, ts TIMESTAMP);
             CREATE SINK IF NOT EXISTS out FROM ev INTO DELTA WITH ('path' = '{}', 'sink.id' = 'shared')",
            t.display()
        ))
        .unwrap();
        for chunk in rows.chunks(rows.len().div_ceil(checkpoints)) {
            db.writer("ev").unwrap().write(kvt(chunk)).unwrap();
            db.flush().unwrap();
            db.checkpoint().unwrap();
        }
        db
    };
    run("db1", &rows[..30], 5).close();
    let log = commits(&t);
    assert_eq!(log.len(), 6);
    // The second database: crashes right after its first checkpoint's commit is undone, as in
    // a_commit_lost_in_a_crash_is_made_once_at_recovery.
    let db = run("db2", &rows[30..40], 1);
    db.close_abruptly();
    let log = commits(&t);
    let last = *log.keys().max().unwrap();
    let reset = &log[&(last - 1)];
    assert!(
        reset.iter().any(|a| a.get("txn").is_some_and(|x| x["version"] == 0)),
        "a reset commit before the new epochs: {reset:?}"
    );
    let staging = t.join(".laminar-staging").join("out");
    for a in log[&last].iter().filter_map(|a| a.get("add")) {
        let p = a["path"].as_str().unwrap();
        std::fs::rename(t.join(p), staging.join(p)).unwrap();
    }
    std::fs::remove_file(t.join("_delta_log").join(format!("{last:020}.json"))).unwrap();
    let db = run("db2", &rows[40..], 2);
    db.close();
    let got = read_back(&t, "k BIGINT, v BIGINT, ts TIMESTAMP");
    assert_eq!(got, sorted(&[kvt(&rows)]), "the second database's first epoch committed at recovery");
    let _ = std::fs::remove_dir_all(&root);
}
