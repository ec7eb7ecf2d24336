//! Engine behaviour: golden outputs per EMIT mode (expected rows written from the semantics in
//! DESIGN §3, compared per emission point as multisets), single-row push volume, schema mismatch,
//! catalog statements, errors.

mod common;

use std::time::Duration;

use common::*;
use laminar_core::arrow::array::{ArrayRef, Int64Array, StringArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Database, ErrorKind, ManualClock, Next};

const T: &str = "1970-01-01T00:00:";

fn s(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    v.sort();
    v
}

/// Pushes `rows` and returns the rows of the emission(s) they caused.
fn step(db: &Database, sub: &laminar_core::Subscription, rows: &[(i64, i64, i64)]) -> Vec<String> {
    let mut w = db.writer("s").unwrap();
    w.write(kvt(rows)).unwrap();
    w.flush().unwrap();
    sorted(&drain(sub))
}

fn setup(emit: &str) -> (Database, laminar_core::Subscription) {
    let db = db(2);
    db.execute(KVT).unwrap();
    db.execute(&format!(
        "CREATE STREAM c AS SELECT k, SUM(v) AS sv, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND) {emit}"
    ))
    .unwrap();
    let sub = db.subscribe("c").unwrap();
    (db, sub)
}

#[test]
fn golden_emit_on_window_close() {
    let (db, sub) = setup("EMIT ON WINDOW CLOSE");
    assert_eq!(step(&db, &sub, &[(1, 1, 1000), (1, 2, 2000), (2, 5, 3000)]), s(&[]));
    // watermark = 14s - 5s = 9s < 10s: nothing fires.
    assert_eq!(step(&db, &sub, &[(1, 4, 14000)]), s(&[]));
    // watermark 15s passes the end of [0,10).
    assert_eq!(step(&db, &sub, &[(2, 1, 20000)]), s(&[&format!("1|3|{T}00"), &format!("2|5|{T}00")]));
    // A row for the closed window is late: dropped and counted.
    assert_eq!(step(&db, &sub, &[(1, 100, 5000)]), s(&[]));
    let m = db.metrics().unwrap();
    assert_eq!(m.streams.iter().find(|x| x.name == "c").unwrap().rows_late, 1);
    assert_eq!(m.sources[0].rows_late, 1);
}

#[test]
fn golden_emit_on_window_close_with_lateness_corrects() {
    let (db, sub) = setup("EMIT ON WINDOW CLOSE ALLOW LATENESS INTERVAL '10' SECOND");
    assert_eq!(step(&db, &sub, &[(1, 1, 1000), (1, 2, 16000)]), s(&[&format!("1|1|{T}00|1")]));
    // Late but allowed: the window's row is retracted and corrected in one emission.
    assert_eq!(step(&db, &sub, &[(1, 10, 9000)]), s(&[&format!("1|1|{T}00|-1"), &format!("1|11|{T}00|1")]));
    // Watermark 21s closes [0,10) for good (end + lateness = 20s): now it is late.
    assert_eq!(step(&db, &sub, &[(2, 1, 26000)]), s(&[&format!("1|2|{T}10|1")]));
    assert_eq!(step(&db, &sub, &[(1, 50, 9500)]), s(&[]));
}

#[test]
fn golden_emit_final() {
    let (db, sub) = setup("EMIT FINAL ALLOW LATENESS INTERVAL '5' SECOND");
    assert_eq!(step(&db, &sub, &[(1, 1, 1000), (1, 2, 16000)]), s(&[]));
    assert_eq!(step(&db, &sub, &[(1, 10, 9000)]), s(&[]));
    // watermark 20s >= 10s + 5s: one final row including the late-but-allowed value.
    assert_eq!(step(&db, &sub, &[(1, 1, 25000)]), s(&[&format!("1|11|{T}00")]));
}

#[test]
fn golden_emit_on_update() {
    let (db, sub) = setup("EMIT ON UPDATE");
    assert_eq!(step(&db, &sub, &[(1, 1, 1000), (2, 2, 2000)]), s(&[&format!("1|1|{T}00"), &format!("2|2|{T}00")]));
    // Only the changed group; a row that leaves the value unchanged (v = 0) emits nothing.
    assert_eq!(step(&db, &sub, &[(1, 5, 3000)]), s(&[&format!("1|6|{T}00")]));
    assert_eq!(step(&db, &sub, &[(2, 0, 3000)]), s(&[]));
    let info = db.object("c").unwrap();
    assert_eq!(info.stream_kind.to_string(), "upsert by (k, window_start)");
}

#[test]
fn golden_emit_changes() {
    let (db, sub) = setup("EMIT CHANGES");
    assert_eq!(step(&db, &sub, &[(1, 1, 1000)]), s(&[&format!("1|1|{T}00|1")]));
    assert_eq!(
        step(&db, &sub, &[(1, 5, 3000), (2, 7, 3000)]),
        s(&[&format!("1|1|{T}00|-1"), &format!("1|6|{T}00|1"), &format!("2|7|{T}00|1")])
    );
    // Non-windowed GROUP BY is a changelog by default.
    db.execute("CREATE STREAM g AS SELECT k, COUNT(*) AS n FROM s GROUP BY k").unwrap();
    let g = db.subscribe("g").unwrap();
    assert_eq!(step(&db, &g, &[(1, 0, 4000), (1, 0, 4000)]), s(&["1|2|1"]));
    assert_eq!(step(&db, &g, &[(1, 0, 4000)]), s(&["1|2|-1", "1|3|1"]));
}

#[test]
fn golden_emit_every_with_manual_clock() {
    let clock = std::sync::Arc::new(ManualClock::default());
    let db = Database::open_with_clock(":memory:", laminar_core::Config::default(), clock).unwrap();
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM c AS SELECT k, COUNT(*) AS n, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND) EMIT EVERY INTERVAL '2' SECOND").unwrap();
    let sub = db.subscribe("c").unwrap();
    assert_eq!(step(&db, &sub, &[(1, 0, 1000), (1, 0, 2000)]), s(&[]));
    db.advance_clock(Duration::from_millis(1999)).unwrap();
    assert_eq!(sorted(&drain(&sub)), s(&[]), "not due before 2s of processing time");
    db.advance_clock(Duration::from_millis(1)).unwrap();
    assert_eq!(sorted(&drain(&sub)), s(&[&format!("1|2|{T}00")]));
    db.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(sorted(&drain(&sub)), s(&[]), "nothing changed since the last emission");
    // The window still closes on the watermark, flushing what changed.
    assert_eq!(step(&db, &sub, &[(1, 0, 3000), (2, 0, 30000)]), s(&[&format!("1|3|{T}00")]));
}

#[test]
fn late_data_to_stream_receives_late_pairs() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM c AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, HOP(ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) LATE DATA TO late_rows").unwrap();
    let late = db.subscribe("late_rows").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 1, 21000)])).unwrap(); // watermark 16s: [0,10) and [5,15) closed
    w.write(kvt(&[(7, 7, 9000)])).unwrap(); // in [0,10) and [5,15): both closed
    w.write(kvt(&[(8, 8, 12000)])).unwrap(); // [5,15) closed, [10,20) open
    w.flush().unwrap();
    let got = sorted(&drain(&late));
    assert_eq!(
        got,
        s(&[&format!("7|7|{T}09|{T}00|{T}10"), &format!("7|7|{T}09|{T}05|{T}15"), &format!("8|8|{T}12|{T}05|{T}15"),])
    );
    let m = db.metrics().unwrap();
    let c = m.streams.iter().find(|x| x.name == "c").unwrap();
    assert_eq!((c.rows_late, c.late_pairs), (1, 3), "row 7 late for every window, 3 pairs in all");
}

#[test]
fn a_million_single_row_pushes_lose_nothing() {
    let db = db(1);
    db.execute("CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT)").unwrap();
    db.execute("CREATE STREAM t AS SELECT COUNT(*) AS n, SUM(v) AS sv FROM s").unwrap();
    let sub = db
        .subscribe_with(
            "t",
            laminar_core::SubscribeOptions {
                buffer_size: Some(16),
                on_full: Some(laminar_core::OnFull::Block),
                ..Default::default()
            },
        )
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut last = (0i64, 0i64);
        while let Some(b) = sub.next().unwrap() {
            let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            let w = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                if w.value(i) == 1 {
                    last = (n.value(i), v.value(i));
                }
            }
            if last.0 == 1_000_000 {
                break;
            }
        }
        last
    });
    let mut w = db.writer("s").unwrap();
    const N: i64 = 1_000_000;
    for i in 0..N {
        let b = RecordBatch::try_from_iter(vec![
            ("k", std::sync::Arc::new(Int64Array::from(vec![i])) as ArrayRef),
            ("v", std::sync::Arc::new(Int64Array::from(vec![i % 7])) as ArrayRef),
        ])
        .unwrap();
        w.write(b).unwrap();
    }
    w.flush().unwrap();
    let expect_sum: i64 = (0..N).map(|i| i % 7).sum();
    assert_eq!(reader.join().unwrap(), (N, expect_sum));
    assert_eq!(db.metrics().unwrap().sources[0].rows_in, N as u64);
}

#[test]
fn schema_mismatch_is_rejected_whole_and_pipeline_lives() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM p AS SELECT k, v FROM s WHERE v > 0").unwrap();
    let sub = db.subscribe("p").unwrap();
    let mut w = db.writer("s").unwrap();
    let bad = RecordBatch::try_from_iter(vec![
        ("k", std::sync::Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ("v", std::sync::Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("ts", std::sync::Arc::new(Int64Array::from(vec![1])) as ArrayRef),
    ])
    .unwrap();
    let e = w.write(bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.message().contains("column 'k' expects Int64, got Utf8"), "{e}");
    w.write(kvt(&[(1, 5, 1000), (2, 0, 1000)])).unwrap();
    w.flush().unwrap();
    assert_eq!(sorted(&drain(&sub)), s(&["1|5"]));
    assert_eq!(db.metrics().unwrap().sources[0].rows_in, 2, "nothing of the bad batch was applied");
}

#[test]
fn catalog_statements_and_errors() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE MATERIALIZED VIEW mv AS SELECT k, SUM(v) AS sv FROM s GROUP BY k").unwrap();
    db.execute("CREATE STREAM f AS SELECT k FROM s").unwrap();
    db.execute("CREATE STREAM ff AS SELECT k FROM f WHERE k > 1").unwrap();
    let names =
        |sql: &str| rows(&db.execute(sql).unwrap().batches).into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
    assert_eq!(names("SHOW SOURCES"), vec!["s"]);
    assert_eq!(names("SHOW STREAMS"), vec!["f", "ff"]);
    assert_eq!(names("SHOW MATERIALIZED VIEWS"), vec!["mv"]);
    let d = rows(&db.execute("DESCRIBE mv").unwrap().batches);
    assert_eq!(d[0][..3], ["k".to_string(), "Int64".into(), "NO".into()]);
    assert!(d[0][3].contains("changelog"));
    assert!(rows(&db.execute("SHOW CREATE mv").unwrap().batches)[0][1].starts_with("CREATE MATERIALIZED VIEW mv"));
    let plan = rows(
        &db.execute("EXPLAIN CREATE STREAM x AS SELECT k, COUNT(*) FROM s GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)")
            .unwrap()
            .batches,
    );
    let text: Vec<String> = plan.into_iter().map(|r| r[0].clone()).collect();
    assert!(
        text[0].contains("append-only")
            && text.iter().any(|l| l.contains("WindowAggregate"))
            && text.iter().any(|l| l.contains("TUMBLE(1m)")),
        "{text:?}"
    );
    // INSERT + ad-hoc SELECT over the MV and the source's retained rows.
    let r = db.execute("INSERT INTO s VALUES (1, 10, '2024-01-01T00:00:00'), (1, 5, '2024-01-01T00:00:01'), (2, 1, '2024-01-01T00:00:02')").unwrap();
    assert_eq!(r.rows_affected, 3);
    assert_eq!(sorted(&db.query("SELECT k, sv FROM mv").unwrap()), s(&["1|15", "2|1"]));
    assert_eq!(sorted(&db.query("SELECT COUNT(*) FROM s").unwrap()), s(&["3"]));
    let e = db.query("SELECT * FROM f").unwrap_err();
    assert!(e.message().contains("MATERIALIZED VIEW"), "{e}");
    // Errors: kinds, positions, suggestions.
    let e = db.execute("CREATE STREAM y AS SELECT k FROM ss").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().contains("did you mean 's'"), "{e}");
    let e = db.execute("SELECT k\n FROM s WHERE (").unwrap_err();
    assert_eq!((e.kind(), e.position().map(|p| p.line)), (ErrorKind::SqlSyntax, Some(2)));
    assert_eq!(db.execute(KVT).unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(db.execute("DROP STREAM f").unwrap_err().kind(), ErrorKind::InvalidState);
    db.execute("DROP STREAM f CASCADE").unwrap();
    assert_eq!(names("SHOW STREAMS"), Vec::<String>::new());
    db.execute("DROP STREAM IF EXISTS nope").unwrap();
    assert_eq!(db.execute("CHECKPOINT").unwrap_err().kind(), ErrorKind::InvalidState);
    db.close();
    assert_eq!(db.execute("SHOW SOURCES").unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn subscription_cancel_timeout_and_lag() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM p AS SELECT k FROM s").unwrap();
    let sub =
        db.subscribe_with("p", laminar_core::SubscribeOptions { buffer_size: Some(2), ..Default::default() }).unwrap();
    assert!(matches!(sub.next_timeout(Duration::from_millis(20)).unwrap(), Next::Empty));
    let c = sub.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        c.cancel();
    });
    assert!(sub.next().unwrap().is_none(), "cancel from another thread ends a blocked read");
    t.join().unwrap();
    let slow =
        db.subscribe_with("p", laminar_core::SubscribeOptions { buffer_size: Some(2), ..Default::default() }).unwrap();
    let mut w = db.writer("s").unwrap();
    for i in 0..5 {
        w.write(kvt(&[(i, 0, 0)])).unwrap();
    }
    w.flush().unwrap();
    let e = slow.next().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
    assert!(e.message().contains("lagged: 3 batches unread"), "{e}");
}

#[test]
fn snapshot_restore_continues_exactly() {
    let make = || {
        let db = db(2);
        db.execute(KVT).unwrap();
        db.execute("CREATE STREAM c AS SELECT k, COUNT(*) AS n, AVG(v) AS a, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)").unwrap();
        db
    };
    let a = make();
    let mut w = a.writer("s").unwrap();
    w.write(kvt(&[(1, 1, 1000), (2, 4, 2000), (1, 3, 12000)])).unwrap();
    let snap = a.snapshot_stream("c").unwrap();
    let b = make();
    b.restore_stream("c", snap).unwrap();
    let (sa, sb) = (a.subscribe("c").unwrap(), b.subscribe("c").unwrap());
    for db in [&a, &b] {
        let mut w = db.writer("s").unwrap();
        w.write(kvt(&[(1, 5, 3000), (3, 1, 14000)])).unwrap();
        w.finish().unwrap();
        w.flush().unwrap();
    }
    let (ra, rb) = (sorted(&drain(&sa)), sorted(&drain(&sb)));
    assert_eq!(ra, rb);
    assert!(ra.contains(&format!("1|2|3.0|{T}00")), "{ra:?}");
}

/// A SESSION window's state (open sessions' accumulators, the rows already emitted, sessions
/// fired but within ALLOW LATENESS, closed bounds) moves through snapshot/restore: a database
/// restored from another's snapshot merges, retracts and corrects exactly as the original does.
#[test]
fn session_snapshot_restore_continues_exactly() {
    for emit in ["EMIT CHANGES", "EMIT ON WINDOW CLOSE ALLOW LATENESS INTERVAL '10' SECOND", "EMIT FINAL", ""] {
        let make = || {
            let db = db(1);
            db.execute(KVT).unwrap();
            db.execute(&format!(
                "CREATE STREAM c AS SELECT k, COUNT(*) AS n, SUM(v) AS sv, AVG(v) AS a, COUNT(DISTINCT v) AS d, window_start, window_end FROM s GROUP BY k, SESSION(ts, INTERVAL '1' SECOND) {emit}"
            ))
            .unwrap();
            db
        };
        let a = make();
        let mut w = a.writer("s").unwrap();
        // Key 1: sessions [1, 2) (fired by the watermark, 6 s), [9, 10) and [10.5, 12); key 2: [9.5, 10.5).
        w.write(kvt(&[(1, 1, 1000), (1, 2, 9000), (1, 3, 10500), (2, 5, 9500), (1, 4, 11000)])).unwrap();
        w.flush().unwrap();
        let snap = a.snapshot_stream("c").unwrap();
        let b = make();
        // The stream's watermark is not part of its operators' state: give `b` the same (6 s).
        b.writer("s").unwrap().watermark(6000).unwrap();
        b.restore_stream("c", snap.clone()).unwrap();
        let (sa, sb) = (a.subscribe("c").unwrap(), b.subscribe("c").unwrap());
        for db in [&a, &b] {
            let mut w = db.writer("s").unwrap();
            // 1.8 s overlaps the first session (corrects it within lateness, late otherwise);
            // 9.9 s merges key 1's two later sessions; 16 s moves the watermark on.
            w.write(kvt(&[(1, 6, 1800), (1, 7, 9900), (2, 8, 9600), (3, 1, 16000)])).unwrap();
            w.finish().unwrap();
            w.flush().unwrap();
        }
        let (ra, rb) = (sorted(&drain(&sa)), sorted(&drain(&sb)));
        assert!(!ra.is_empty(), "{emit}");
        assert_eq!(ra, rb, "{emit}");
        let rows_late = |db: &Database| db.metrics().unwrap().streams.iter().find(|x| x.name == "c").unwrap().rows_late;
        assert_eq!(rows_late(&a), rows_late(&b), "{emit}");
        // The merge of key 1's restored sessions: one session of 4 rows from 9 s to 12 s.
        assert!(ra.iter().any(|r| r.starts_with(&format!("1|4|16|4.0|4|{T}09|{T}12"))), "{emit}: {ra:?}");
        if emit == "EMIT CHANGES" {
            // Both sessions emitted before the snapshot are retracted by the restored database.
            assert!(rb.contains(&format!("1|1|2|2.0|1|{T}09|{T}10|-1")), "{rb:?}");
            assert!(rb.contains(&format!("1|2|7|3.5|2|{T}10.500|{T}12|-1")), "{rb:?}");
        }
        // A snapshot that does not fit is refused with a reason, not a panic.
        let mut bad = snap;
        let op = bad.iter().position(|l| !l.is_empty()).unwrap();
        bad[op].pop();
        let e = b.restore_stream("c", bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
}

/// Non-windowed EMIT EVERY: each tick emits only the groups whose value changed.
#[test]
fn golden_emit_every_non_windowed() {
    use std::sync::Arc;
    let clock = Arc::new(laminar_core::ManualClock::default());
    let db = laminar_core::Database::open_with_clock(":memory:", laminar_core::Config::default(), clock).unwrap();
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM c AS SELECT k, MAX(v) AS m FROM s GROUP BY k EMIT EVERY INTERVAL '1' SECOND").unwrap();
    let sub = db.subscribe("c").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 10, 1000), (2, 20, 2000)])).unwrap();
    db.advance_clock(std::time::Duration::from_secs(1)).unwrap();
    let a = sorted(&drain(&sub));
    w.write(kvt(&[(1, 30, 3000), (3, 5, 2000)])).unwrap();
    db.advance_clock(std::time::Duration::from_secs(1)).unwrap();
    let b = sorted(&drain(&sub));
    assert_eq!((a, b), (vec!["1|10".to_string(), "2|20".to_string()], vec!["1|30".to_string(), "3|5".to_string()]));
}

/// Column types may be written the way pyarrow prints them (the established Python package's
/// spelling), in SQL as in the Python dict form: each becomes its SQL type.
#[test]
fn arrow_type_names_declare_columns() {
    use laminar_core::arrow::datatypes::{DataType, TimeUnit};
    let db = Database::open_in_memory().unwrap();
    db.execute(
        "CREATE SOURCE e (a int16, b INT32, c int64, d uint8, f float32, g float64, h string, i large_string, j bool, k timestamp[ms], l timestamp[us, tz=UTC], m date32, n decimal128(10, 2), o BIGINT NOT NULL, ts timestamp[ms], WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    )
    .unwrap();
    let s = db.object("e").unwrap().schema;
    let got: Vec<(String, DataType)> = s.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let want = vec![
        ("a", DataType::Int16),
        ("b", DataType::Int32),
        ("c", DataType::Int64),
        ("d", DataType::UInt8),
        ("f", DataType::Float32),
        ("g", DataType::Float64),
        ("h", DataType::Utf8),
        ("i", DataType::Utf8),
        ("j", DataType::Boolean),
        ("k", ts.clone()),
        ("l", got[10].1.clone()),
        ("m", DataType::Date32),
        ("n", DataType::Decimal128(10, 2)),
        ("o", DataType::Int64),
        ("ts", ts),
    ];
    let want: Vec<(String, DataType)> = want.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
    assert_eq!(got, want);
    assert!(matches!(got[10].1, DataType::Timestamp(..)), "{:?}", got[10].1);
    assert!(!s.field(13).is_nullable(), "NOT NULL after an Arrow name is kept");
    // A name that is no type is still an error naming it.
    let e = db.execute("CREATE SOURCE bad (a int65)").unwrap_err();
    assert!(e.message().to_lowercase().contains("int65"), "{e}");
}

/// Random (k, v, ts ms) rows, ts increasing with some disorder, totals per (window, k) distinct
/// (v is a distinct power-of-two-free spread), for ranking without ties.
fn ranked_rows(n: usize) -> Vec<(i64, i64, i64)> {
    (0..n as i64)
        .map(|i| {
            let h = (i as u64).wrapping_mul(2_654_435_761);
            ((h % 7) as i64, 1 + (h % 1000) as i64 * 1000 + i, i * 97 + (h % 500) as i64)
        })
        .collect()
}

/// Issue 20's gaps: a top-N per window whose inner aggregate projects window_start only (plain
/// and as a WITH clause), and GROUP BY … TUMBLE over a subquery (nested, with a renamed column
/// and a filter): each equals the same query written with both bounds, or over the source
/// directly, and the top-N equals an oracle computed here.
#[test]
fn top_n_by_window_start_only_and_windows_over_subqueries() {
    let rows = ranked_rows(3000);
    let end = rows.iter().map(|r| r.2).max().unwrap() + 60_000;
    let run = |query: &str| -> Vec<String> {
        let db = db(2);
        db.execute(KVT).unwrap();
        db.execute(&format!("CREATE MATERIALIZED VIEW q AS {query}")).unwrap();
        let mut w = db.writer("s").unwrap();
        for c in rows.chunks(500) {
            w.write(kvt(c)).unwrap();
        }
        w.write(kvt(&[(99, 0, end)])).unwrap();
        w.flush().unwrap();
        sorted(&db.query("SELECT * FROM q").unwrap())
    };
    let inner = "SELECT k, SUM(v) AS total, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)";
    let ranked = |from: &str| {
        format!(
            "SELECT k, total, window_start, rn FROM (SELECT k, total, window_start, ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY total DESC) AS rn FROM {from}) WHERE rn <= 3"
        )
    };
    let start_only = run(&ranked(&format!("({inner})")));
    let with_form = run(&format!("WITH w AS ({inner}) {}", ranked("w")));
    let both = run(&ranked(
        "(SELECT k, SUM(v) AS total, window_start, window_end FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND))",
    ));
    // The oracle: totals per (window, k), the top 3 of each window.
    let mut tot: std::collections::BTreeMap<(i64, i64), i64> = Default::default();
    for r in &rows {
        *tot.entry((r.2.div_euclid(10_000) * 10_000, r.0)).or_default() += r.1;
    }
    let mut by_win: std::collections::BTreeMap<i64, Vec<(i64, i64)>> = Default::default();
    for ((w, k), t) in tot {
        by_win.entry(w).or_default().push((t, k));
    }
    let mut want = vec![];
    for (w, mut v) in by_win {
        v.sort_by(|a, b| b.cmp(a));
        for (i, (t, k)) in v.iter().take(3).enumerate() {
            want.push(format!("{k}|{t}|{}|{}", iso(w), i + 1));
        }
    }
    want.sort();
    assert_eq!(start_only, want, "{}", difference(&start_only, &want));
    assert_eq!(with_form, want);
    assert_eq!(both, want);

    // GROUP BY TUMBLE over subqueries.
    let direct = run(
        "SELECT k, COUNT(*) AS n, SUM(v) AS sv, window_start FROM s WHERE v % 3 <> 0 GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)",
    );
    let sub = run(
        "SELECT k, COUNT(*) AS n, SUM(v) AS sv, window_start FROM (SELECT k, v, ts FROM s WHERE v % 3 <> 0) GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)",
    );
    let nested = run(
        "SELECT x.key AS k, COUNT(*) AS n, SUM(x.val) AS sv, window_start FROM (SELECT key, val, t FROM (SELECT k AS key, v AS val, ts AS t FROM s) WHERE val % 3 <> 0) AS x GROUP BY x.key, TUMBLE(x.t, INTERVAL '10' SECOND)",
    );
    let star = run(
        "SELECT k, COUNT(*) AS n, SUM(v) AS sv, window_start FROM (SELECT * FROM s WHERE v % 3 <> 0) GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)",
    );
    assert!(direct.len() > 100, "{}", direct.len());
    assert_eq!(sub, direct, "{}", difference(&sub, &direct));
    assert_eq!(nested, direct, "{}", difference(&nested, &direct));
    assert_eq!(star, direct);
    // What cannot be windowed says why.
    let db = db(1);
    db.execute(KVT).unwrap();
    let e = db
        .execute("CREATE STREAM bad AS SELECT k, COUNT(*) AS n FROM (SELECT k, ts + INTERVAL '1' SECOND AS ts FROM s) GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)")
        .unwrap_err();
    assert!(e.message().contains("passed through unchanged"), "{e}");
    let e = db
        .execute("CREATE STREAM bad AS SELECT k, COUNT(*) AS n FROM (SELECT k, MAX(ts) AS ts FROM s GROUP BY k) GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)")
        .unwrap_err();
    assert!(e.message().contains("must not aggregate"), "{e}");
}
