//! Bad input from a careless or hostile user (issue "bad input must never crash the host"): each
//! test pins one defect found from outside, and failed before its fix.

mod common;

use common::*;
use laminar_core::{Database, ErrorKind};

/// Runs `f` on a thread with the stack a spawned Rust thread gets by default (2 MiB), so a
/// recursion the engine does not bound shows up as a crash of the test, not a pass.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap()
}

fn chain(op: &str, n: usize) -> String {
    let mut s = String::with_capacity(n * (op.len() + 1));
    s.push('1');
    for _ in 1..n {
        s.push_str(op);
        s.push('1');
    }
    s
}

#[test]
fn long_flat_expressions_are_refused_not_a_stack_overflow() {
    on_small_stack(|| {
        let db = db(1);
        db.execute(KVT).unwrap();
        for n in [3_000, 100_000] {
            let e = db.query(&format!("SELECT {}", chain("+", n))).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::SqlSyntax, "{e}");
            assert!(e.message().contains("too deeply nested"), "{e}");
            assert!(e.position().is_some(), "{e}");
            let e =
                db.execute(&format!("CREATE STREAM x AS SELECT k, {} AS v FROM s", chain(" OR v = ", n))).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::SqlSyntax, "{e}");
        }
        let unions = vec!["SELECT 1 AS a"; 5_000].join(" UNION ALL ");
        assert_eq!(db.query(&unions).unwrap_err().kind(), ErrorKind::SqlSyntax);
        let nots = format!("SELECT {} true", "NOT ".repeat(5_000));
        assert_eq!(db.query(&nots).unwrap_err().kind(), ErrorKind::SqlSyntax);
    });
}

#[test]
fn expressions_up_to_the_limit_run_on_a_small_stack() {
    // The deepest accepted chain is planned, optimised and evaluated on a 2 MiB stack, ad hoc
    // and in a stream, and gives the right answer.
    on_small_stack(|| {
        let n = laminar_core::sql::MAX_EXPR_DEPTH;
        let db = db(1);
        db.execute(KVT).unwrap();
        let b = db.query(&format!("SELECT {} AS total", chain("+", n + 1))).unwrap();
        assert_eq!(sorted(&b), vec![(n + 1).to_string()]);
        db.execute(&format!("CREATE STREAM x AS SELECT k, {} AS v FROM s", chain(" + v + ", n / 2))).unwrap();
        let sub = db.subscribe("x").unwrap();
        let mut w = db.writer("s").unwrap();
        w.write(kvt(&[(1, 2, 1000)])).unwrap();
        w.flush().unwrap();
        // 1 + v + 1 + v + … with n/2 - 1 ones after the first and as many v's.
        let terms = n / 2 - 1;
        assert_eq!(sorted(&drain(&sub)), vec![format!("1|{}", 1 + terms + 2 * terms)]);
        // Parenthesised and nested forms are bounded the same way.
        let nested = format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(sorted(&db.query(&nested).unwrap()), vec!["1".to_string()]);
    });
}

#[test]
fn a_typo_of_a_huge_name_answers_at_once() {
    let db = db(1);
    let huge = "s".repeat(200_000);
    db.execute(&format!("CREATE SOURCE \"{huge}\" (a BIGINT)")).unwrap();
    db.execute("CREATE SOURCE other (a BIGINT)").unwrap();
    let near = format!("{huge}x");
    // Unbounded, the suggestion alone is 4·10^10 steps under the engine lock: the test binary's
    // time limit fails it.
    let e = db.writer(&near).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // The name is echoed clipped, not 200,000 characters long.
    assert!(e.message().len() < 600, "{}", e.message().len());
    let e = db.execute(&format!("INSERT INTO \"{near}\" VALUES (1)")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().len() < 600, "{}", e.message().len());
    let e = db.writer("othr").err().unwrap();
    assert!(e.message().contains("did you mean 'other'"), "{e}");
}

#[test]
fn extreme_timestamps_are_refused_at_push_and_windows_keep_running() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute(
        "CREATE STREAM t AS SELECT k, COUNT(*) AS n, window_end FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)",
    )
    .unwrap();
    db.execute("CREATE STREAM h AS SELECT k, COUNT(*) AS n, window_end FROM s GROUP BY k, HOP(ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND)").unwrap();
    db.execute("CREATE STREAM se AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, SESSION(ts, INTERVAL '10' SECOND)")
        .unwrap();
    let mut w = db.writer("s").unwrap();
    for us in [
        i64::MAX,
        i64::MIN,
        i64::MAX - 1_000_000,
        laminar_core::MAX_TIMESTAMP_US + 1,
        laminar_core::MIN_TIMESTAMP_US - 1,
    ] {
        let b = laminar_core::arrow::record_batch::RecordBatch::try_from_iter(vec![
            (
                "k",
                std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![1, 1]))
                    as laminar_core::arrow::array::ArrayRef,
            ),
            ("v", std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![1, 1]))),
            ("ts", std::sync::Arc::new(laminar_core::arrow::array::TimestampMicrosecondArray::from(vec![0, us]))),
        ])
        .unwrap();
        let e = w.write(b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        assert!(e.message().contains("'ts' at row 1") && e.message().contains("years 1 to 9999"), "{e}");
    }
    // The edges of the range are fine, and every window stream still runs.
    let ok = laminar_core::arrow::record_batch::RecordBatch::try_from_iter(vec![
        (
            "k",
            std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![1, 1]))
                as laminar_core::arrow::array::ArrayRef,
        ),
        ("v", std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![1, 1]))),
        (
            "ts",
            std::sync::Arc::new(laminar_core::arrow::array::TimestampMicrosecondArray::from(vec![
                laminar_core::MIN_TIMESTAMP_US,
                laminar_core::MAX_TIMESTAMP_US,
            ])),
        ),
    ])
    .unwrap();
    w.write(ok).unwrap();
    w.flush().unwrap();
    let m = db.metrics().unwrap();
    for s in &m.streams {
        assert_eq!(s.failed, None, "stream {}", s.name);
    }
    // SQL INSERT takes the same path.
    let e = db.execute("INSERT INTO s VALUES (1, 1, '20000-01-01 00:00:00')").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidData), "{e}");
}

#[test]
fn window_shapes_that_explode_are_refused_at_create() {
    let db = db(1);
    db.execute(KVT).unwrap();
    let e = db.execute("CREATE STREAM g AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, HOP(ts, INTERVAL '20' SECOND, INTERVAL '10' SECOND)").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Plan);
    assert!(e.message().contains("larger than its size"), "{e}");
    let e = db.execute("CREATE STREAM g AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, HOP(ts, INTERVAL '1' MILLISECOND, INTERVAL '1' DAY)").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Plan);
    assert!(e.message().contains("86400000 windows"), "{e}");
    let e = db.execute("CREATE STREAM g AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, HOP(ts, INTERVAL '1' MILLISECOND, INTERVAL '2' MINUTE)").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Plan);
    // A shape at the limit is accepted.
    db.execute("CREATE STREAM g AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, HOP(ts, INTERVAL '1' SECOND, INTERVAL '10000' SECOND)").unwrap();
}

#[test]
fn duplicate_column_names_are_refused() {
    let db = db(1);
    let e = db.execute("CREATE SOURCE dc (a BIGINT, a VARCHAR)").unwrap_err();
    assert!(e.message().contains("column 'a' more than once"), "{e}");
    assert!(db.list(laminar_core::ObjectKind::Source).unwrap().is_empty());
    db.execute(KVT).unwrap();
    let b = laminar_core::arrow::record_batch::RecordBatch::try_new_with_options(
        std::sync::Arc::new(laminar_core::arrow::datatypes::Schema::new(vec![
            laminar_core::arrow::datatypes::Field::new("k", laminar_core::arrow::datatypes::DataType::Int64, false),
            laminar_core::arrow::datatypes::Field::new("v", laminar_core::arrow::datatypes::DataType::Int64, true),
            laminar_core::arrow::datatypes::Field::new("v", laminar_core::arrow::datatypes::DataType::Int64, true),
        ])),
        vec![
            std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![1])),
            std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![1])),
            std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![2])),
        ],
        &Default::default(),
    )
    .unwrap();
    let e = db.writer("s").unwrap().write(b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.message().contains("more than one column named 'v'"), "{e}");
}

#[test]
fn sql_insert_casts_are_strict() {
    let db = db(1);
    db.execute("CREATE SOURCE s (n BIGINT, ts TIMESTAMP, v VARCHAR)").unwrap();
    for values in
        ["('abc', NULL, 'x')", "(NULL, 'not a time', 'x')", "(1.9, NULL, 'x')", "(99999999999999999999, NULL, 'x')"]
    {
        let e = db.execute(&format!("INSERT INTO s VALUES {values}")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{values}: {e}");
        assert!(e.message().contains("column 'n'") || e.message().contains("column 'ts'"), "{values}: {e}");
    }
    db.execute("INSERT INTO s VALUES (2.0, '2024-01-01 00:00:00', 'ok'), (NULL, NULL, NULL)").unwrap();
    assert_eq!(sorted(&db.query("SELECT n, v FROM s").unwrap()), vec!["2|ok".to_string(), "|".to_string()]);
}

#[test]
fn a_failed_view_fails_reads_instead_of_answering_stale_rows() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE MATERIALIZED VIEW mv AS SELECT k, 10 / v AS x FROM s").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 2, 1000)])).unwrap();
    w.flush().unwrap();
    assert_eq!(sorted(&db.query("SELECT k, x FROM mv").unwrap()), vec!["1|5".to_string()]);
    w.write(kvt(&[(2, 0, 2000)])).unwrap(); // division by zero fails the view
    w.flush().unwrap();
    let m = db.metrics().unwrap();
    assert!(m.streams.iter().find(|s| s.name == "mv").unwrap().failed.is_some());
    let e = db.query("SELECT k, x FROM mv").unwrap_err();
    assert!(e.message().contains("'mv' has failed"), "{e}");
}

#[test]
fn source_retention_keeps_exactly_the_last_rows() {
    let db = db(1);
    db.execute(KVT).unwrap();
    let n = 200_000i64;
    let rows: Vec<(i64, i64, i64)> = (0..n).map(|i| (i, 1, i)).collect();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&rows)).unwrap();
    w.flush().unwrap();
    let b = db.query("SELECT COUNT(*) AS c, MIN(k) AS lo, MAX(k) AS hi FROM s").unwrap();
    assert_eq!(sorted(&b), vec![format!("65536|{}|{}", n - 65536, n - 1)]);
}

#[test]
fn messages_say_what_is_wrong() {
    let db = db(1);
    db.execute("CREATE SOURCE trades (k BIGINT, v BIGINT)").unwrap();
    db.execute("CREATE MATERIALIZED VIEW mv AS SELECT k FROM trades").unwrap();
    // An ad-hoc query gets the same suggestion as an insert.
    let e = db.query("SELECT * FROM trade").unwrap_err();
    assert!(e.message().contains("did you mean 'trades'"), "{e}");
    // A one-letter column is not a misspelling of a two-letter one.
    let zz = laminar_core::arrow::record_batch::RecordBatch::try_from_iter(vec![(
        "zz",
        std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from(vec![1]))
            as laminar_core::arrow::array::ArrayRef,
    )])
    .unwrap();
    let e = db.writer("trades").unwrap().write(zz).unwrap_err();
    assert!(e.message().contains("no column 'zz'") && !e.message().contains("did you mean"), "{e}");
    // Pushing into a view says it is a view.
    let e = db.writer("mv").err().unwrap();
    assert!(e.message().contains("not a source"), "{e}");
    let e = db.execute("INSERT INTO mv VALUES (1)").unwrap_err();
    assert!(e.message().contains("it is a stream"), "{e}");
    // An empty path is not a quiet in-memory database; empty and NUL names are refused.
    let e = Database::open("", laminar_core::Config::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(db.execute("CREATE SOURCE \"\" (a BIGINT)").is_err());
    assert!(db.execute("CREATE SOURCE \"a\0b\" (a BIGINT)").is_err());
    assert!(db.execute("CREATE SOURCE ok (\"\" BIGINT)").is_err());
    assert!(db.execute("CREATE STREAM \"\" AS SELECT k FROM trades").is_err());
    assert_eq!(db.list(laminar_core::ObjectKind::Source).unwrap(), vec!["trades".to_string()]);
}

#[test]
fn min_max_of_infinities_are_infinite() {
    let db = db(1);
    db.execute("CREATE SOURCE f (k BIGINT, x DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts)").unwrap();
    db.execute("CREATE MATERIALIZED VIEW m AS SELECT k, MIN(x) AS lo, MAX(x) AS hi FROM f GROUP BY k").unwrap();
    db.execute("INSERT INTO f VALUES (1, 'inf'::DOUBLE, '2024-01-01 00:00:00'), (2, '-inf'::DOUBLE, '2024-01-01 00:00:00'), (3, 1.5, '2024-01-01 00:00:00')").unwrap();
    let want = vec!["1|inf|inf".to_string(), "2|-inf|-inf".to_string(), "3|1.5|1.5".to_string()];
    assert_eq!(sorted(&db.query("SELECT k, lo, hi FROM m").unwrap()), want, "materialized view");
    assert_eq!(sorted(&db.query("SELECT k, MIN(x), MAX(x) FROM f GROUP BY k").unwrap()), want, "ad hoc");
}

#[test]
fn cancelled_and_dropped_subscriptions_let_go_at_once() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM idle AS SELECT k, v FROM s").unwrap();
    let subs = |db: &Database| db.metrics().unwrap().streams.iter().find(|s| s.name == "idle").unwrap().subscribers;
    let keep = db.subscribe("idle").unwrap();
    for i in 0..3_000 {
        let sub = db.subscribe("idle").unwrap();
        if i % 2 == 0 {
            sub.cancel();
        } // else dropped without cancel()
        drop(sub);
    }
    // On an idle stream (no emission since), only the live subscription remains registered.
    let _probe = db.subscribe("idle").unwrap();
    assert_eq!(subs(&db), 2);
    drop(_probe);
    assert_eq!(subs(&db), 1);
    // And the live one still works.
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 2, 1000)])).unwrap();
    w.flush().unwrap();
    assert_eq!(sorted(&drain(&keep)), vec!["1|2".to_string()]);
}

#[test]
fn memory_limit_is_checked_inside_a_batch_that_multiplies() {
    let mut c = laminar_core::Config::default();
    c.set("workers", "1").unwrap();
    c.set("memory_limit", "10MB").unwrap();
    let db = Database::open(":memory:", c).unwrap();
    db.execute(KVT).unwrap();
    // 10,000 windows per row, every row its own key: 2,000 rows would be 20 M groups.
    db.execute("CREATE STREAM h AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, HOP(ts, INTERVAL '1' SECOND, INTERVAL '10000' SECOND)").unwrap();
    let rows: Vec<(i64, i64, i64)> = (0..2_000).map(|i| (i, 1, i * 1000)).collect();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&rows)).unwrap();
    w.flush().unwrap();
    let m = db.metrics().unwrap();
    let failed = m.streams.iter().find(|s| s.name == "h").unwrap().failed.clone().expect("the stream failed");
    assert!(failed.contains("exceeds memory_limit"), "{failed}");
    // It stopped at the first piece over the limit (about 1 M groups), not after all 20 M.
    let used: u64 = failed.split("state of ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(used < 400 << 20, "{used} bytes");
}

#[test]
fn quoted_names_with_quotes_stay_one_name() {
    let db = db(1);
    db.execute(r#"CREATE SOURCE "we""ird" ("c"" BIGINT, ""d" DECIMAL(10, 2), ts TIMESTAMP)"#).unwrap();
    let info = db.object("we\"ird").unwrap();
    let names: Vec<&str> = info.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["c\" BIGINT, \"d", "ts"]);
}

#[test]
fn deep_prefix_chains_get_a_clear_message() {
    let db = db(1);
    let e = db.query(&format!("SELECT {} true", "NOT ".repeat(60))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SqlSyntax);
    assert!(
        e.message().contains("NOT (or signs) in a row") && !e.message().contains("after the end of the statement"),
        "{e}"
    );
    // Forty are fine (and mean what they say).
    assert_eq!(
        sorted(&db.query(&format!("SELECT {} true AS b", "NOT ".repeat(40))).unwrap()),
        vec!["true".to_string()]
    );
}

#[test]
fn a_failed_stream_is_named_on_its_errors() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM x AS SELECT k, 10 / v AS y FROM s").unwrap();
    db.execute("CREATE MATERIALIZED VIEW mv AS SELECT k, 10 / v AS y FROM s").unwrap();
    let sub = db.subscribe("x").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 0, 1000)])).unwrap(); // division by zero fails both
    w.flush().unwrap();
    let e = loop {
        match sub.next() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the subscription ended without the stream's error"),
            Err(e) => break e,
        }
    };
    // The kind stays the failure's; the error names the stream that failed.
    assert_eq!((e.kind(), e.failed_stream()), (ErrorKind::InvalidData, Some("x")), "{e}");
    let e = db.subscribe("x").err().unwrap();
    assert_eq!(e.failed_stream(), Some("x"), "{e}");
    let e = db.query("SELECT * FROM mv").unwrap_err();
    assert_eq!((e.kind(), e.failed_stream()), (ErrorKind::InvalidData, Some("mv")), "{e}");
    assert!(e.message().contains("materialized view 'mv' has failed"), "{e}");
    // Errors that are not a stream's failure name none.
    assert_eq!(db.query("SELECT * FROM nope").unwrap_err().failed_stream(), None);
    assert_eq!(db.execute("INSERT INTO s VALUES ('x', 1, 1)").unwrap_err().failed_stream(), None);
}

#[test]
fn datafusion_errors_are_kept_as_the_source() {
    use laminar_core::DataFusionError;
    use std::error::Error as _;
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM plain AS SELECT k FROM s").unwrap();
    let e = db.query("SELECT no_such_column FROM s").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Plan, "{e}");
    let df = e.source().and_then(|s| s.downcast_ref::<DataFusionError>()).expect("a DataFusion source");
    assert!(matches!(df.find_root(), DataFusionError::SchemaError(..)), "{df:?}");
    // A missing table: the kind and source stay DataFusion's, with a suggestion added.
    let e = db.query("SELECT * FROM ss").unwrap_err();
    assert!(e.message().contains("did you mean 's'"), "{e}");
    assert!(e.source().and_then(|s| s.downcast_ref::<DataFusionError>()).is_some(), "{e:?}");
    // The structural check is on the relation, not the text: a column named like a table.
    let e = db.query("SELECT plain FROM s").unwrap_err();
    assert!(!e.message().contains("keeps no queryable state"), "{e}");
    let e = db.query("WITH plain AS (SELECT 1 AS a) SELECT a FROM plain").unwrap();
    assert_eq!(e.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let e = db.query("SELECT * FROM plain(1)").unwrap_err();
    assert!(!e.message().contains("keeps no queryable state"), "a table function is not the stream: {e}");
    let e = db.query("SELECT * FROM plain").unwrap_err();
    assert!(e.message().contains("keeps no queryable state"), "{e}");
}

#[test]
fn a_failed_stream_frees_its_state_and_stays_failed_across_a_checkpoint() {
    let dir = tmpdir("failed-frees");
    let open = || {
        let mut c = laminar_core::Config::default();
        c.set("workers", "1").unwrap();
        Database::open(dir.to_str().unwrap(), c).unwrap()
    };
    let db = open();
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM agg AS SELECT k, SUM(10 / v) AS x FROM s GROUP BY k").unwrap();
    db.execute("CREATE STREAM fine AS SELECT k, COUNT(*) AS n FROM s GROUP BY k").unwrap();
    let state =
        |db: &Database, n: &str| db.metrics().unwrap().streams.iter().find(|s| s.name == n).unwrap().state_bytes;
    let rows: Vec<(i64, i64, i64)> = (0..20_000).map(|i| (i, 1, i)).collect();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&rows)).unwrap();
    w.flush().unwrap();
    let before = state(&db, "agg");
    assert!(before > 100_000, "{before}");
    w.write(kvt(&[(1, 0, 30_000)])).unwrap(); // 10 / 0 fails the stream
    w.flush().unwrap();
    let m = db.metrics().unwrap();
    assert!(m.streams.iter().find(|s| s.name == "agg").unwrap().failed.is_some());
    assert_eq!(state(&db, "agg"), 0, "the failed stream's state is freed");
    assert!(state(&db, "fine") > 100_000, "other streams keep theirs");
    // A checkpoint and a reopen keep it failed, and the healthy stream's state.
    db.checkpoint().unwrap();
    db.close();
    let db = open();
    let m = db.metrics().unwrap();
    assert!(m.streams.iter().find(|s| s.name == "agg").unwrap().failed.is_some());
    assert!(state(&db, "fine") > 100_000);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}
