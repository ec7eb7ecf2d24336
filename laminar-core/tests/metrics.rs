//! Observability (issue 23): the Prometheus text exposition counts what was pushed and passes
//! `promtool check metrics`; the HTTP endpoint serves it and frees its port on close;
//! `EXPLAIN ANALYZE` shows per-operator counts that add up to the rows pushed.
//!
//! The figures are checked against numbers computed here from the rows pushed (rows, matched
//! pairs, windows), never against the engine's own output.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use laminar_core::arrow::array::{Array, ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database, ErrorKind};

/// Samples of an exposition: `name{labels}` (as written) → value. Comments are skipped.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line without a value: {line:?}"));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("a sample value that is not a number: {line:?}")),
        };
        assert!(out.insert(key.to_string(), v).is_none(), "sample {key} appears twice");
    }
    out
}

fn get(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key).unwrap_or_else(|| {
        let near: Vec<&String> = s.keys().filter(|k| k.starts_with(key.split('{').next().unwrap())).collect();
        panic!("no sample {key}; samples of that family: {near:?}")
    })
}

/// `promtool check metrics` over `text`: required in CI (the test script installs Prometheus),
/// skipped with a note elsewhere when promtool is missing.
fn promtool_check(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is required in CI (scripts/test.sh installs prometheus): {e}"
            );
            eprintln!("promtool not found ({e}); `promtool check metrics` skipped");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool prints lint findings (and still exits 0 for some); there must be none.
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(findings.trim().is_empty(), "promtool check metrics found:\n{findings}");
}

/// (k, v, ts ms) rows: `n` of them, 250 ms apart, 7 keys.
fn kvt_rows(from: i64, n: i64) -> Vec<(i64, i64, i64)> {
    (from..from + n).map(|i| (i % 7, i * 3 % 11, i * 250)).collect()
}

#[test]
fn the_text_exposition_counts_what_was_pushed_and_passes_promtool() {
    let dir = tmpdir("metrics-text");
    let mut c = Config::default();
    c.set("workers", "2").unwrap();
    c.set("durability", "checkpoint").unwrap();
    let db = Database::open(dir.to_str().unwrap(), c).unwrap();
    db.execute(KVT).unwrap();
    db.execute("CREATE MATERIALIZED VIEW agg AS SELECT k, SUM(v) AS s, COUNT(*) AS n, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)")
        .unwrap();
    db.execute("CREATE STREAM big AS SELECT k, v, ts FROM s WHERE v > 5").unwrap();
    let sub = db.subscribe("big").unwrap();

    let all: Vec<(i64, i64, i64)> = kvt_rows(0, 3000);
    let mut w = db.writer("s").unwrap();
    let mut bytes = 0u64;
    for chunk in all.chunks(1000) {
        let b = kvt(chunk);
        bytes += b.get_array_memory_size() as u64;
        w.write(b).unwrap();
    }
    wait_rows(&db, all.len() as u64);
    db.checkpoint().unwrap();
    w.write(kvt(&[(1, 1, 10)])).unwrap(); // late: behind the watermark, dropped and counted
    w.finish().unwrap();
    wait_until_finished(&db, "s", 60);
    db.flush().unwrap();
    db.checkpoint().unwrap();

    let text = db.metrics_text().unwrap();
    promtool_check(&text);
    let s = samples(&text);
    assert_eq!(get(&s, r#"laminardb_source_records_total{source="s"}"#), 3001.0);
    assert_eq!(get(&s, r#"laminardb_source_batches_total{source="s"}"#), 4.0);
    let b = get(&s, r#"laminardb_source_bytes_total{source="s"}"#);
    assert!(b >= (3000 * 24) as f64 && b <= (bytes + 10_000) as f64, "source bytes {b}; the batches held {bytes}");
    assert_eq!(get(&s, r#"laminardb_source_late_records_total{source="s"}"#), 1.0);
    // The finished source's watermark is the end of time; an idle flag is 0 or 1.
    let idle = get(&s, r#"laminardb_source_idle{source="s"}"#);
    assert!(idle == 0.0 || idle == 1.0);

    // Windows closed: one row per (key, 10 s window) of the rows pushed.
    let windows: BTreeSet<(i64, i64)> = all.iter().map(|r| (r.0, r.2.div_euclid(10_000))).collect();
    assert_eq!(tumble_10s_oracle(&all).len(), windows.len());
    assert_eq!(get(&s, r#"laminardb_stream_records_total{stream="agg"}"#), windows.len() as f64);
    let filtered = all.iter().filter(|r| r.1 > 5).count();
    assert_eq!(get(&s, r#"laminardb_stream_records_total{stream="big"}"#), filtered as f64);
    let got: usize = drain(&sub).iter().map(|b| b.num_rows()).sum();
    assert_eq!(got, filtered, "the subscription received what the stream counted");
    assert_eq!(get(&s, r#"laminardb_stream_subscriptions{stream="big"}"#), 1.0);
    assert_eq!(get(&s, r#"laminardb_stream_failed{stream="agg"}"#), 0.0);

    // Operators: the filter of `big` saw every row (a late row too: a stream without a window
    // keeps it) and let `filtered` through.
    let ops: Vec<(&String, &f64)> =
        s.iter().filter(|(k, _)| k.starts_with("laminardb_operator_records_in_total{stream=\"big\"")).collect();
    assert!(!ops.is_empty(), "no operator counters for 'big'");
    assert!(ops.iter().any(|(_, v)| **v == 3001.0), "no operator of 'big' counts 3001 rows in: {ops:?}");
    let outs: Vec<(&String, &f64)> =
        s.iter().filter(|(k, _)| k.starts_with("laminardb_operator_records_out_total{stream=\"big\"")).collect();
    assert!(
        outs.iter().any(|(_, v)| **v == filtered as f64),
        "no operator of 'big' counts {filtered} rows out: {outs:?}"
    );

    // Checkpoints: two completed, the histograms saw both, buckets are cumulative.
    assert_eq!(get(&s, "laminardb_checkpoints_completed_total"), 2.0);
    assert_eq!(get(&s, "laminardb_checkpoints_failed_total"), 0.0);
    // No RocksDB state backend: its family is declared, with no sample.
    assert!(text.contains("# TYPE laminardb_state_backend_bytes gauge"));
    assert!(!s.contains_key("laminardb_state_backend_bytes"));
    for h in ["laminardb_checkpoint_duration_seconds", "laminardb_checkpoint_size_bytes"] {
        assert_eq!(get(&s, &format!("{h}_count")), 2.0, "{h}");
        assert_eq!(get(&s, &format!("{h}_bucket{{le=\"+Inf\"}}")), 2.0, "{h}");
        let buckets: Vec<f64> =
            s.iter().filter(|(k, _)| k.starts_with(&format!("{h}_bucket"))).map(|(_, v)| *v).collect();
        assert!(buckets.len() > 5, "{h}: {buckets:?}");
        assert!(get(&s, &format!("{h}_sum")) > 0.0, "{h}_sum");
    }
    let stats = db.last_checkpoint().unwrap();
    assert_eq!(get(&s, "laminardb_checkpoint_epoch"), stats.epoch as f64);
    let since = get(&s, "laminardb_seconds_since_last_checkpoint");
    assert!((0.0..60.0).contains(&since), "seconds since the last checkpoint: {since}");
    let at = get(&s, "laminardb_last_checkpoint_timestamp_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - at).abs() < 60.0, "last checkpoint at {at}, now {now}");

    // The Arrow metrics batch holds the same figures.
    let m = db.metrics().unwrap();
    let src = m.sources.iter().find(|x| x.name == "s").unwrap();
    assert_eq!((src.rows_in, src.bytes_in as f64), (3001, b));
    assert_eq!(m.checkpoints.completed, 2);
    drop(sub);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/1.0 request; (status code, headers, body).
fn http(addr: std::net::SocketAddr, request: &str) -> (u32, String, String) {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {resp:?}"));
    let code: u32 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

#[test]
fn the_endpoint_serves_the_exposition_and_frees_its_port_on_close() {
    let mut c = Config::default();
    c.set("workers", "1").unwrap();
    c.set("metrics_addr", "127.0.0.1:0").unwrap();
    let db = Database::open(":memory:", c).unwrap();
    let addr = db.metrics_endpoint().expect("an endpoint with metrics_addr set");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    db.execute(KVT).unwrap();
    db.writer("s").unwrap().write(kvt(&kvt_rows(0, 100))).unwrap();
    wait_rows(&db, 100);

    let (code, head, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    let s = samples(&body);
    assert_eq!(get(&s, r#"laminardb_source_records_total{source="s"}"#), 100.0);
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .expect("a Content-Length");
    assert_eq!(len, body.len());
    assert_eq!(http(addr, "GET / HTTP/1.0\r\n\r\n").0, 200);
    assert_eq!(http(addr, "GET /other HTTP/1.0\r\n\r\n").0, 404);
    assert_eq!(http(addr, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").0, 405);

    // A second database cannot take the same address: open fails and says which key.
    let mut c2 = Config::default();
    c2.set("metrics_addr", &addr.to_string()).unwrap();
    let e = Database::open(":memory:", c2).err().expect("a second endpoint on the same address");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("metrics_addr"), "{e}");

    db.close();
    // The port is free again once close returns.
    std::net::TcpListener::bind(addr).expect("the endpoint's port is free after close");
    assert!(Config::default().set("metrics_addr", "not an address").is_err());
}

#[test]
fn without_metrics_addr_there_is_no_endpoint() {
    let db = db(1);
    assert!(db.metrics_endpoint().is_none());
    let text = db.metrics_text().unwrap();
    assert!(text.contains("# TYPE laminardb_checkpoints_completed_total counter"), "{text}");
    promtool_check(&text);
}

const ROWS: i64 = 240;

fn orders(i: i64) -> RecordBatch {
    let ids: Vec<i64> = (i * ROWS..(i + 1) * ROWS).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from_iter_values(ids.iter().copied())) as ArrayRef),
        ("k", Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| x % 13))) as ArrayRef),
        ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(ids.iter().map(|x| x * 20_000))) as ArrayRef),
    ])
    .unwrap()
}

/// Payments for the ids not divisible by 3, 300 ms after their order; ids divisible by 7 pay
/// 1.5 s late (outside the join's interval).
fn payments(i: i64) -> RecordBatch {
    let ids: Vec<i64> = (i * ROWS..(i + 1) * ROWS).filter(|x| x % 3 != 0).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from_iter_values(ids.iter().copied())) as ArrayRef),
        ("paid", Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| x % 50))) as ArrayRef),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                ids.iter().map(|x| x * 20_000 + if x % 7 == 0 { 1_500_000 } else { 300_000 }),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

/// One line of EXPLAIN ANALYZE: depth, text, rows in, rows out.
#[derive(Debug)]
struct Line {
    depth: usize,
    text: String,
    rows_in: Option<i64>,
    rows_out: Option<i64>,
}

fn analyze(db: &Database, stream: &str) -> (Vec<Line>, String) {
    let r = db.execute(&format!("EXPLAIN ANALYZE {stream}")).unwrap();
    assert_eq!(r.batches.len(), 1, "EXPLAIN ANALYZE returns one batch");
    let batch = r.batches[0].clone();
    let col = |n: &str| batch.column_by_name(n).unwrap_or_else(|| panic!("no column {n}: {:?}", batch.schema()));
    let plan = col("plan").as_any().downcast_ref::<StringArray>().unwrap().clone();
    let rin = col("rows_in").as_any().downcast_ref::<Int64Array>().unwrap().clone();
    let rout = col("rows_out").as_any().downcast_ref::<Int64Array>().unwrap().clone();
    for n in ["busy_ns", "state_bytes", "watermark_ms"] {
        col(n);
    }
    let lines = (0..batch.num_rows())
        .map(|i| {
            let t = plan.value(i);
            let trimmed = t.trim_start();
            Line {
                depth: (t.len() - trimmed.len()) / 2,
                text: trimmed.to_string(),
                rows_in: rin.is_valid(i).then(|| rin.value(i)),
                rows_out: rout.is_valid(i).then(|| rout.value(i)),
            }
        })
        .collect();
    (lines, r.message.clone())
}

/// Checks that every operator's rows in are its children's rows out and an input's the rows
/// that entered it (`inputs`); the join's (rows in, rows out) and the aggregate's rows out.
fn check_tree(
    db: &Database,
    stream: &str,
    inputs: &[(&str, i64)],
    workers: usize,
) -> (Option<i64>, Option<i64>, Option<i64>) {
    let (lines, text) = analyze(db, stream);
    let ctx = format!("{stream}, workers={workers}\n{text}");
    assert!(lines[0].text.starts_with(&format!("Stream {stream}")), "{ctx}");
    let mut checked_inputs = 0;
    let (mut join, mut agg_out) = ((None, None), None);
    for (p, line) in lines.iter().enumerate().skip(1) {
        if line.text.starts_with("Input: ") {
            assert_eq!(line.rows_in, None, "{ctx}");
            continue;
        }
        let children: Vec<&Line> =
            lines[p + 1..].iter().take_while(|l| l.depth > line.depth).filter(|l| l.depth == line.depth + 1).collect();
        assert!(!children.is_empty(), "operator line {p} has no input: {ctx}");
        let want: i64 = children
            .iter()
            .map(|c| match c.text.strip_prefix("Input: ") {
                Some(name) => {
                    inputs
                        .iter()
                        .find(|(n, _)| name.starts_with(n))
                        .unwrap_or_else(|| panic!("unknown input {name}: {ctx}"))
                        .1
                }
                None => c.rows_out.unwrap(),
            })
            .sum();
        checked_inputs += children.iter().filter(|c| c.text.starts_with("Input: ")).count();
        assert_eq!(line.rows_in, Some(want), "line {p} ({}): {ctx}", line.text);
        let lower = line.text.to_ascii_lowercase();
        if lower.contains("join") {
            join = (line.rows_in, line.rows_out);
        }
        if lower.contains("aggregate") || lower.contains("window") {
            agg_out = agg_out.or(line.rows_out);
        }
    }
    assert!(checked_inputs >= 1, "an input appears under an operator: {ctx}");
    assert!(text.contains("rows_in=") && text.contains("state_bytes="), "{ctx}");
    assert!(text.lines().next().unwrap().contains("watermark=end of input"), "every input has ended: {ctx}");
    (join.0, join.1, agg_out)
}

fn explain_analyze_adds_up(workers: usize) {
    let db = db(workers);
    db.execute("CREATE SOURCE orders (id BIGINT NOT NULL, k BIGINT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)").unwrap();
    db.execute("CREATE SOURCE payments (id BIGINT NOT NULL, paid BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)").unwrap();
    db.execute(
        "CREATE STREAM matched AS SELECT o.k, o.ts, p.paid \
         FROM orders o JOIN payments p ON o.id = p.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '1' SECOND",
    )
    .unwrap();
    db.execute("CREATE STREAM paid AS SELECT k, COUNT(*) AS n, SUM(paid) AS s, window_start FROM matched GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)")
        .unwrap();
    let sub = db.subscribe("paid").unwrap();
    let (mut o, mut p) = (db.writer("orders").unwrap(), db.writer("payments").unwrap());
    let (mut pushed_o, mut pushed_p) = (0i64, 0i64);
    for i in 0..10 {
        let (a, b) = (orders(i), payments(i));
        pushed_o += a.num_rows() as i64;
        pushed_p += b.num_rows() as i64;
        o.write(a).unwrap();
        p.write(b).unwrap();
    }
    o.finish().unwrap();
    p.finish().unwrap();
    wait_until_finished(&db, "orders", 60);
    wait_until_finished(&db, "payments", 60);
    db.flush().unwrap();

    // What should come out, from the rows pushed: pairs within the interval, and their windows.
    let matched: Vec<i64> = (0..pushed_o).filter(|x| x % 3 != 0 && x % 7 != 0).collect();
    let windows: BTreeSet<(i64, i64)> = matched.iter().map(|x| (x % 13, x * 20 / 1000)).collect();
    let got: usize = drain(&sub).iter().map(|b| b.num_rows()).sum();
    assert_eq!(got, windows.len(), "rows of 'paid' vs windows of the matched pairs");

    let inputs = [("orders", pushed_o), ("payments", pushed_p), ("matched", matched.len() as i64)];
    let (join_in, join_out, _) = check_tree(&db, "matched", &inputs, workers);
    assert_eq!(join_in, Some(pushed_o + pushed_p), "the join read every row pushed");
    assert_eq!(join_out, Some(matched.len() as i64), "the join's rows out are the matched pairs");
    let (_, _, agg_out) = check_tree(&db, "paid", &inputs, workers);
    assert_eq!(agg_out, Some(windows.len() as i64), "the aggregate's rows out are the windows");
    let (lines, _) = analyze(&db, "paid");
    assert_eq!(lines[0].rows_out, Some(windows.len() as i64));

    // A source has no operators; an unknown name is NOT_FOUND.
    assert_eq!(db.execute("EXPLAIN ANALYZE orders").unwrap_err().kind(), ErrorKind::InvalidArgument);
    let e = db.execute("EXPLAIN ANALYZE pai").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("did you mean 'paid'"), "{e}");
}

#[test]
fn explain_analyze_counts_add_up_to_the_rows_pushed() {
    explain_analyze_adds_up(1);
}

#[test]
fn explain_analyze_counts_add_up_with_parallel_workers() {
    explain_analyze_adds_up(3);
}
