//! The FILES connector: directories of CSV, JSON and Parquet files read as sources (each file
//! once, new files picked up, across a crash), a windowed aggregate over their union sunk to
//! Parquet files exactly once, compared with DataFusion over the same rows.
#![cfg(feature = "files")]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{difference, iso, kvt, rows_in, sorted, tmpdir, tumble_10s_oracle as oracle, wait_rows};
use laminar_core::arrow::array::{Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database, ErrorKind};
use rand::{Rng, SeedableRng};

type Row = (i64, i64, i64); // k, v, ts (ms)

/// The sentinel key: one row per source far in the future closes every real window.
const SENTINEL: i64 = -1;
const FUTURE_MS: i64 = 4_000_000_000_000;

/// Writes `rows` as one file of `format` into `dir`, under a hidden name first, then renamed
/// into place (as a producer of such a directory should).
fn write_file(dir: &Path, name: &str, format: &str, rows: &[Row]) {
    fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    match format {
        "csv" => {
            let mut s = String::from("ts,k,v,extra\n"); // columns by name, in another order, one extra
            for r in rows {
                s.push_str(&format!("{},{},{},x\n", iso(r.2), r.0, r.1));
            }
            fs::write(&tmp, s).unwrap();
        }
        "json" => {
            let mut s = String::new();
            for r in rows {
                s.push_str(&format!("{{\"k\": {}, \"v\": {}, \"ts\": \"{}\", \"other\": true}}\n", r.0, r.1, iso(r.2)));
            }
            fs::write(&tmp, s).unwrap();
        }
        "parquet" => {
            let b = kvt(rows);
            let f = fs::File::create(&tmp).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(f, b.schema(), None).unwrap();
            w.write(&b).unwrap();
            w.close().unwrap();
        }
        _ => unreachable!(),
    }
    fs::rename(&tmp, dir.join(format!("{name}.{format}"))).unwrap();
}

fn read_parquet_dir(dir: &Path) -> (Vec<RecordBatch>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in &files {
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(fs::File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in r {
            out.push(b.unwrap());
        }
    }
    (out, files)
}

const SQL: &str = "
    CREATE SOURCE a (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
        FROM FILES WITH ('path' = '{A}', 'format' = 'csv', 'source.monitor-interval' = '50ms');
    CREATE SOURCE b (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
        FROM FILES WITH ('path' = '{B}/*.json', 'format' = 'json', 'source.monitor-interval' = '50ms');
    CREATE SOURCE c (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
        FROM FILES WITH ('path' = '{C}', 'format' = 'parquet', 'source.monitor-interval' = '50ms');
    CREATE STREAM all_rows AS SELECT k, v, ts FROM a UNION ALL SELECT k, v, ts FROM b UNION ALL SELECT k, v, ts FROM c;
    CREATE STREAM agg AS SELECT k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
        FROM all_rows GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND);
    CREATE SINK out FROM agg INTO FILES WITH ('path' = '{OUT}', 'format' = 'parquet');";

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        Dirs { root: tmpdir(name) }
    }
    fn input(&self, s: &str) -> PathBuf {
        self.root.join("in").join(s)
    }
    fn out(&self) -> PathBuf {
        self.root.join("out")
    }
    fn db(&self) -> String {
        self.root.join("db").display().to_string()
    }
    fn sql(&self) -> String {
        SQL.replace("{A}", &self.input("a").display().to_string())
            .replace("{B}", &self.input("b").display().to_string())
            .replace("{C}", &self.input("c").display().to_string())
            .replace("{OUT}", &self.out().display().to_string())
    }
}

fn random_rows(rng: &mut rand::rngs::SmallRng, n: usize, t0: i64) -> Vec<Row> {
    (0..n).map(|i| (rng.random_range(0..5), rng.random_range(-100..100), t0 + i as i64 * 37)).collect()
}

#[test]
fn files_sources_and_an_exactly_once_parquet_sink_match_datafusion_across_restarts() {
    let d = Dirs::new("files-e2e");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut all: Vec<Row> = vec![];
    let mut expected_in = 0u64;
    let formats = [("a", "csv"), ("b", "json"), ("c", "parquet")];
    // Files present before the sources exist.
    for (i, (s, f)) in formats.iter().enumerate() {
        let rows = random_rows(&mut rng, 300, 1_000_000 + i as i64);
        write_file(&d.input(s), "f000", f, &rows);
        expected_in += rows.len() as u64;
        all.extend(rows);
    }
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "0").unwrap(); // checkpoints by hand below
    let db = Database::open(&d.db(), cfg.clone()).unwrap();
    db.execute(&d.sql()).unwrap();
    wait_rows(&db, expected_in);
    db.checkpoint().unwrap();
    // Files added while it runs are picked up; two restarts in between, one of them a crash
    // after a checkpoint (the sink's staged results of the open epoch are discarded and made
    // again by the replay from the recorded file positions).
    let mut db = db;
    for round in 1..=4 {
        for (i, (s, f)) in formats.iter().enumerate() {
            let rows = random_rows(&mut rng, 200, 1_000_000 + round * 20_000 + i as i64);
            write_file(&d.input(s), &format!("f{round:03}"), f, &rows);
            expected_in += rows.len() as u64;
            all.extend(rows);
        }
        match round {
            2 => {
                // A crash: the rows read since the last checkpoint are read again.
                wait_rows(&db, expected_in);
                db.close_abruptly();
                // The readers resume from the positions of the last checkpoint as soon as
                // `open` returns; the final count below shows nothing was read twice.
                db = Database::open(&d.db(), cfg.clone()).unwrap();
            }
            3 => {
                wait_rows(&db, expected_in);
                db.close();
                db = Database::open(&d.db(), cfg.clone()).unwrap();
            }
            _ => {}
        }
        wait_rows(&db, expected_in);
        db.checkpoint().unwrap();
    }
    // Each file once: every row read exactly once over the restarts.
    assert_eq!(rows_in(&db), expected_in);
    // The sentinels close every real window.
    for (s, f) in formats {
        write_file(&d.input(s), "zzz", f, &[(SENTINEL, 0, FUTURE_MS)]);
    }
    wait_rows(&db, expected_in + 3);
    db.checkpoint().unwrap();
    db.close();

    let (batches, files) = read_parquet_dir(&d.out());
    assert!(!files.is_empty());
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("part-") && name.ends_with(".parquet"), "{name}");
    }
    let got: Vec<String> = sorted(&batches).into_iter().filter(|r| !r.starts_with(&format!("{SENTINEL}|"))).collect();
    let want = oracle(&all);
    assert_eq!(got, want, "{}", difference(&got, &want));
    // Nothing left staged once every checkpoint committed.
    let staged: Vec<_> = fs::read_dir(d.out().join(".laminar-staging").join("out")).unwrap().flatten().collect();
    assert!(staged.is_empty(), "{staged:?}");
    let _ = fs::remove_dir_all(&d.root);
}

#[test]
fn a_crash_leaves_no_partial_or_uncommitted_file_visible() {
    let d = Dirs::new("files-crash");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let mut cfg = Config::default();
    cfg.set("durability", "wal").unwrap();
    cfg.set("checkpoint_interval", "0").unwrap();
    let db = Database::open(&d.db(), cfg.clone()).unwrap();
    db.execute(
        "CREATE SOURCE s (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts);
         CREATE SINK raw FROM s INTO FILES WITH (path = '{OUT}', format = 'csv')"
            .replace("{OUT}", &d.out().display().to_string())
            .as_str(),
    )
    .unwrap();
    let mut w = db.writer("s").unwrap();
    let first = random_rows(&mut rng, 100, 0);
    w.write(kvt(&first)).unwrap();
    db.checkpoint().unwrap();
    let committed: BTreeSet<_> = fs::read_dir(d.out()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(committed.iter().filter(|n| n.to_str().unwrap().ends_with(".csv")).count(), 1);
    // Written after the checkpoint: staged, not visible; the crash discards the staged file and
    // the log replays the rows into a new one, committed by the next checkpoint.
    let second = random_rows(&mut rng, 50, 10_000);
    w.write(kvt(&second)).unwrap();
    db.flush().unwrap();
    let visible: BTreeSet<_> = fs::read_dir(d.out()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(visible, committed, "an uncommitted file is visible");
    drop(w);
    db.close_abruptly();
    let db = Database::open(&d.db(), cfg).unwrap();
    db.checkpoint().unwrap();
    let mut text = String::new();
    let mut n = 0;
    for e in fs::read_dir(d.out()).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "csv") {
            n += 1;
            text.push_str(&fs::read_to_string(e.path()).unwrap());
        }
    }
    assert_eq!(n, 2);
    let data_lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("k,")).collect();
    assert_eq!(data_lines.len(), first.len() + second.len(), "each row exactly once:\n{text}");
    db.close();
    let _ = fs::remove_dir_all(&d.root);
}

#[test]
fn bad_files_fail_the_source_or_are_skipped_and_options_are_checked() {
    let d = Dirs::new("files-bad");
    let db = Database::open_in_memory().unwrap();
    // Option checks at CREATE.
    let e = db
        .execute("CREATE SOURCE s (k BIGINT) FROM FILES WITH (path = '/x', format = 'csv', 'source.monitor-intervall' = '1s')")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("did you mean 'source.monitor-interval'"), "{e}");
    let e = db.execute("CREATE SOURCE s (k BIGINT) FROM FILES WITH (path = '/x', format = 'xml')").unwrap_err();
    assert!(e.message().contains("parquet, csv, json"), "{e}");
    let e = db.execute("CREATE SOURCE s (k BIGINT) FROM FILES WITH (format = 'csv')").unwrap_err();
    assert!(e.message().contains("'path' is required"), "{e}");
    let e = db.execute("CREATE SINK x FROM nothing INTO FILES WITH (path = '/x', format = 'csv')").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // on_error = 'fail': the stream reading the source fails, naming the file.
    let dir = d.input("bad");
    write_file(&dir, "a", "csv", &[(1, 1, 1000)]);
    fs::write(dir.join("b.csv"), "ts,k,v\n1970-01-01T00:00:02,notanumber,1\n").unwrap();
    write_file(&dir, "c", "csv", &[(3, 3, 3000)]);
    let sql = |name: &str, on_error: &str| {
        format!(
            "CREATE SOURCE {name} (k BIGINT, v BIGINT, ts TIMESTAMP) FROM FILES WITH (path = '{}', format = 'csv', on_error = '{on_error}', 'source.monitor-interval' = '0');
             CREATE STREAM {name}_out AS SELECT k FROM {name}",
            dir.display()
        )
    };
    db.execute(&sql("f", "fail")).unwrap();
    let sub = db.subscribe("f_out").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        match sub.next_timeout(Duration::from_millis(100)) {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the bad file did not fail the stream"),
        }
    };
    assert!(err.message().contains("b.csv"), "{err}");
    // on_error = 'skip': the other files' rows, then the end of input.
    db.execute(&sql("g", "skip")).unwrap();
    common::wait_until_finished(&db, "g", 60);
    assert_eq!(db.metrics().unwrap().sources.iter().find(|s| s.name == "g").unwrap().rows_in, 2);
    let _ = fs::remove_dir_all(&d.root);
}

#[test]
fn show_sinks_drop_sink_and_dependencies() {
    let d = Dirs::new("files-ddl");
    let db = Database::open_in_memory().unwrap();
    db.execute(&format!(
        "CREATE SOURCE s (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts);
         CREATE STREAM t AS SELECT k FROM s;
         CREATE SINK o FROM t INTO FILES WITH (path = '{}', format = 'json')",
        d.out().display()
    ))
    .unwrap();
    assert_eq!(db.list(laminar_core::ObjectKind::Sink).unwrap(), vec!["o".to_string()]);
    let shown = db.execute("SHOW SINKS").unwrap();
    assert_eq!(shown.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert!(db.execute("SHOW CREATE SINK o").unwrap().batches[0].num_rows() == 1);
    // In memory, results are committed as they come: one JSON file per emitted batch.
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from(vec![1, 2])), Arc::new(TimestampMicrosecondArray::from(vec![1_000, 2_000]))],
    )
    .unwrap();
    db.writer("s").unwrap().write(b).unwrap();
    db.flush().unwrap();
    let json: Vec<_> = fs::read_dir(d.out())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".json"))
        .collect();
    assert_eq!(json.len(), 1);
    assert_eq!(fs::read_to_string(json[0].path()).unwrap(), "{\"k\":1}\n{\"k\":2}\n");
    // A stream a sink reads cannot be dropped without CASCADE.
    let e = db.execute("DROP STREAM t").unwrap_err();
    assert!(e.message().contains("'o'"), "{e}");
    db.execute("DROP SINK o").unwrap();
    assert!(db.list(laminar_core::ObjectKind::Sink).unwrap().is_empty());
    db.execute(&format!("CREATE SINK o2 FROM t INTO FILES WITH (path = '{}', format = 'csv')", d.out().display()))
        .unwrap();
    db.execute("DROP STREAM t CASCADE").unwrap();
    assert!(db.list(laminar_core::ObjectKind::Sink).unwrap().is_empty());
    let _ = fs::remove_dir_all(&d.root);
}
