//! `memory_limit` holds for state that nothing bounds (issue 27): an unbounded `COUNT(DISTINCT)`,
//! a join without a time bound, session windows that never close, and a subscriber that never
//! reads. Each case runs in a child process of its own (this binary, one ignored test), so that
//! the peak resident set (`VmHWM`) is that case's; it pushes rows until its stream (or its
//! subscription) ends with RESOURCE_EXHAUSTED naming the operator, checks that the database still
//! answers, and prints its figures. The parent asserts that the growth of the peak RSS over the
//! RSS before the first row stays below the limit plus a stated overhead.

mod common;

use std::process::Command;

use common::{KVT, kvt};
use laminar_core::{Config, Database, ErrorKind, Next, OnFull, SubscribeOptions};

/// The limit every case runs under.
const LIMIT: u64 = 64 << 20;
/// What the process may hold above the operators' counted state: the batch in flight and its
/// outputs, DataFusion's per-batch buffers, and the allocator's free pages that are not
/// returned to the system.
const OVERHEAD: u64 = 64 << 20;

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Pushes 8,192-row batches made by `rows(i)` until `ended` says the case ended, or fails after
/// `max` batches. Returns the number of batches pushed.
fn push_until(
    db: &Database,
    source: &str,
    max: u64,
    rows: impl Fn(u64) -> Vec<(i64, i64, i64)>,
    ended: impl Fn() -> bool,
) -> u64 {
    let mut w = db.writer(source).unwrap();
    for i in 0..max {
        if w.write(kvt(&rows(i))).is_err() {
            return i;
        }
        if i % 16 == 15 {
            w.flush().unwrap();
            if ended() {
                return i + 1;
            }
        }
    }
    w.flush().unwrap();
    assert!(ended(), "{max} batches pushed and the case did not end");
    max
}

fn stream_failure(db: &Database, stream: &str) -> Option<String> {
    db.metrics().unwrap().streams.iter().find(|s| s.name == stream).and_then(|s| s.failed.clone())
}

const BATCH: i64 = 8192;

/// One case, in this process: prints `RESULT <case> base_kb=… peak_kb=… error=…`.
fn run_case(case: &str) {
    let mut c = Config::default();
    c.set("workers", "1").unwrap();
    c.set("memory_limit", &LIMIT.to_string()).unwrap();
    let db = Database::open(":memory:", c).unwrap();
    db.execute(KVT).unwrap();
    db.execute("CREATE SOURCE r (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)").unwrap();
    let (stream, sql) = match case {
        // Every value distinct, one group: the set of seen values grows without end.
        "count_distinct" => ("d", "CREATE STREAM d AS SELECT k, COUNT(DISTINCT v) AS n FROM s GROUP BY k"),
        // An equi-join with no time bound, the other side silent: every row is kept.
        "join" => ("j", "CREATE STREAM j AS SELECT s.k, s.v, r.v AS w FROM s JOIN r ON s.k = r.k"),
        // A session per key that never closes (event time stands still, so no gap passes).
        "session" => (
            "w",
            "CREATE STREAM w AS SELECT k, COUNT(*) AS n, SUM(v) AS t FROM s GROUP BY k, SESSION(ts, INTERVAL '1' HOUR)",
        ),
        "subscriber" => ("p", "CREATE STREAM p AS SELECT k, v, ts FROM s"),
        other => panic!("unknown case {other}"),
    };
    db.execute(sql).unwrap();
    // A subscriber that never reads, with a buffer far larger than the limit in batches.
    let sub = (case == "subscriber").then(|| {
        db.subscribe_with(
            "p",
            SubscribeOptions { buffer_size: Some(1 << 20), on_full: Some(OnFull::Lag), ..Default::default() },
        )
        .unwrap()
    });
    let base = status_kb("VmRSS:");
    let rows = |i: u64| -> Vec<(i64, i64, i64)> {
        let i = i as i64;
        (0..BATCH)
            .map(|j| {
                let n = i * BATCH + j;
                match case {
                    "count_distinct" => (1, n, 1000),
                    "session" => (n, 1, 1000),
                    _ => (n, n, 1000 + n),
                }
            })
            .collect()
    };
    let error = match &sub {
        None => {
            push_until(&db, "s", 20_000, rows, || stream_failure(&db, stream).is_some());
            stream_failure(&db, stream).unwrap()
        }
        Some(sub) => {
            // 1,500 batches of 8,192 rows are about 300 MB: far past the limit if all were held.
            let mut w = db.writer("s").unwrap();
            for i in 0..1500 {
                w.write(kvt(&rows(i))).unwrap();
            }
            w.flush().unwrap();
            let mut e = None;
            loop {
                match sub.try_next() {
                    Ok(Next::Batch(_)) => {}
                    Ok(Next::Empty) | Ok(Next::End) => break,
                    Err(err) => {
                        assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
                        e = Some(err.to_string());
                        break;
                    }
                }
            }
            e.expect("the subscription ended with an error")
        }
    };
    let peak = status_kb("VmHWM:");
    // The database answers after the failure.
    db.execute("CREATE STREAM after AS SELECT k FROM s").unwrap();
    assert_eq!(db.query("SELECT 1 + 1 AS two").unwrap()[0].num_rows(), 1);
    println!("RESULT {case} base_kb={base} peak_kb={peak} error={}", error.replace('\n', " "));
}

#[test]
#[ignore = "run by memory_limit_holds_for_unbounded_state, one case per child process"]
fn memory_limit_case_child() {
    run_case(&std::env::var("LAMINAR_MEMORY_CASE").expect("LAMINAR_MEMORY_CASE"));
}

#[test]
fn memory_limit_holds_for_unbounded_state() {
    let exe = std::env::current_exe().unwrap();
    let mut failures = vec![];
    // (case, what the error names). COUNT(DISTINCT) in a non-windowed aggregate emits after
    // every batch: its current counts are read without copying the distinct values (before the
    // engine counted DISTINCT itself, each batch copied all of them, twice, and the peak RSS
    // reached +270 to +340 MiB over a 64 MiB limit).
    for (case, names) in [
        ("count_distinct", "operator"),
        ("join", "operator"),
        ("session", "operator"),
        ("subscriber", "subscription to 'p'"),
    ] {
        let out = Command::new(&exe)
            .args(["--exact", "memory_limit_case_child", "--include-ignored", "--nocapture", "--test-threads", "1"])
            .env("LAMINAR_MEMORY_CASE", case)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "case {case} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let line = stdout
            .lines()
            .find_map(|l| l.find("RESULT ").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {line}"))
                .parse()
                .unwrap()
        };
        let (base, peak) = (field("base_kb=") * 1024, field("peak_kb=") * 1024);
        let error = line.split_once("error=").unwrap().1;
        println!(
            "memory_limit {case}: peak RSS {} MiB over a base of {} MiB (+{} MiB; limit {} MiB): {error}",
            peak >> 20,
            base >> 20,
            peak.saturating_sub(base) >> 20,
            LIMIT >> 20
        );
        if !error.contains(names) || !error.contains("memory_limit") {
            failures.push(format!("case {case}: {error}"));
        }
        if peak.saturating_sub(base) >= LIMIT + OVERHEAD {
            failures.push(format!(
                "case {case}: the peak RSS grew by {} MiB, over the limit of {} MiB plus {} MiB",
                peak.saturating_sub(base) >> 20,
                LIMIT >> 20,
                OVERHEAD >> 20
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
