//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod pg;

use std::sync::Arc;

use rand::Rng;

use laminar_core::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::arrow::util::display::array_value_to_string;
use laminar_core::{Database, Next, Subscription};

/// A batch of (k BIGINT, v BIGINT, ts TIMESTAMP) rows; ts in milliseconds.
pub fn kvt(rows: &[(i64, i64, i64)]) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef),
        ("v", Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef),
        ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2 * 1000))) as ArrayRef),
    ])
    .unwrap()
}

/// A row of (id, k, v, ts) with nullable k and v; ts in milliseconds.
pub type IdKvtRow = (i64, Option<i64>, Option<i64>, i64);

/// A batch of (id BIGINT, k BIGINT, v BIGINT, ts TIMESTAMP) rows.
pub fn id_kvt_batch(rows: &[IdKvtRow]) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from_iter_values(rows.iter().map(|x| x.0))) as ArrayRef),
        ("k", Arc::new(Int64Array::from_iter(rows.iter().map(|x| x.1))) as ArrayRef),
        ("v", Arc::new(Int64Array::from_iter(rows.iter().map(|x| x.2))) as ArrayRef),
        ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|x| x.3 * 1000))) as ArrayRef),
    ])
    .unwrap()
}

/// Every row of the batches rendered as strings, one Vec per row.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = vec![];
    for b in batches {
        for r in 0..b.num_rows() {
            out.push(b.columns().iter().map(|c| array_value_to_string(c, r).unwrap()).collect());
        }
    }
    out
}

/// Rows as sorted strings "a|b|c" (a multiset compare).
pub fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let mut v: Vec<String> = rows(batches).into_iter().map(|r| r.join("|")).collect();
    v.sort();
    v
}

/// Everything the subscription has buffered now (call after `flush`).
pub fn drain(sub: &Subscription) -> Vec<RecordBatch> {
    let mut out = vec![];
    loop {
        match sub.try_next().unwrap() {
            Next::Batch(b) => out.push(b),
            Next::Empty | Next::End => return out,
        }
    }
}

pub fn db(workers: usize) -> Database {
    let mut c = laminar_core::Config::default();
    c.set("workers", &workers.to_string()).unwrap();
    Database::open(":memory:", c).unwrap()
}

pub const KVT: &str = "CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)";

/// A short account of how two sorted row lists differ (the lists themselves can be long).
pub fn difference(got: &[String], want: &[String]) -> String {
    let only_got: Vec<&String> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
    let only_want: Vec<&String> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
    format!(
        "{} rows vs {} expected; unexpected (first 5): {only_got:?}; missing (first 5): {only_want:?}",
        got.len(),
        want.len()
    )
}

/// A fresh (removed if it exists) directory path for a test database, unique per process.
pub fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("laminar-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Waits (up to `secs`) until `source` has ended its input (watermark at the end of time, as a
/// finished NEXMARK feed leaves it); its rows_in.
pub fn wait_until_finished(db: &Database, source: &str, secs: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let m = db.metrics().unwrap();
        let src = m.sources.iter().find(|s| s.name == source).unwrap();
        if src.watermark_ms == Some(i64::MAX) {
            return src.rows_in;
        }
        assert!(std::time::Instant::now() < deadline, "'{source}' did not finish in {secs} s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The seeds of a randomized suite: the one in `seed_var` (a replay), else `default_cases` of them
/// (or the count in `cases_var`) from `base` on.
pub fn case_seeds(seed_var: &str, cases_var: &str, default_cases: u64, base: u64) -> Vec<u64> {
    match std::env::var(seed_var) {
        Ok(s) => vec![s.parse().expect("a seed is a number")],
        Err(_) => {
            let cases = std::env::var(cases_var).ok().and_then(|s| s.parse().ok()).unwrap_or(default_cases);
            (0..cases).map(|i| base + i).collect()
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmm` for epoch milliseconds (UTC), via Arrow's own formatting.
pub fn iso(ms: i64) -> String {
    let a = TimestampMicrosecondArray::from_iter_values([ms * 1000]);
    array_value_to_string(&a, 0).unwrap()
}

/// Rows read by every source of `db`.
pub fn rows_in(db: &Database) -> u64 {
    db.metrics().unwrap().sources.iter().map(|s| s.rows_in).sum()
}

/// Waits (up to 120 s) until the sources of `db` have read `n` rows, then until they are applied.
pub fn wait_rows(db: &Database, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while rows_in(db) < n {
        assert!(std::time::Instant::now() < deadline, "read {} of {n} rows in 120 s", rows_in(db));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    db.flush().unwrap();
}

/// DataFusion over (k, v, ts ms) rows: each key's 10-second tumbling windows' SUM(v) and COUNT,
/// as `k|window start|sum|count`.
pub fn tumble_10s_oracle(rows: &[(i64, i64, i64)]) -> Vec<String> {
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new();
        let b = kvt(rows);
        ctx.register_table("t", Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).unwrap())).unwrap();
        let df = ctx
            .sql(
                "SELECT k, date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') AS ws, \
                 SUM(v) AS s, COUNT(*) AS n FROM t GROUP BY 1, 2",
            )
            .await
            .unwrap();
        sorted(&df.collect().await.unwrap())
    })
}

/// Lines logged with target "laminardb" at INFO or above, once [`capture_info_logs`] installed
/// the capturing logger.
pub static INFO_LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct InfoCapture;

impl log::Log for InfoCapture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target() == "laminardb" && m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            INFO_LINES.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// Installs the logger that fills [`INFO_LINES`] (a process has one logger: the first call
/// installs it, later calls keep it).
pub fn capture_info_logs() {
    if log::set_logger(&InfoCapture).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Text of `len` characters from [a-z0-9] (barely compressible: PostgreSQL keeps a long one out
/// of line, TOASTed).
pub fn random_text(rng: &mut impl Rng, len: usize) -> String {
    const C: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len).map(|_| C[rng.random_range(0..C.len())] as char).collect()
}

/// Random transactions over two tables, `{c}` (id INT PRIMARY KEY, tier INT, big TEXT) and
/// `{a}` (id INT PRIMARY KEY, cust INT, balance BIGINT), some touching both: inserts (a customer
/// now and then with a TOASTed `big`), updates leaving `big` unchanged, key changes, accounts
/// moved between customers, deletes, 1 in 20 rolled back.
pub fn two_table_transactions(rng: &mut impl Rng, c: &str, a: &str, n: usize, next: &mut i32) -> String {
    let mut s = String::with_capacity(n * 120);
    let pick = |rng: &mut dyn rand::RngCore, hi: i32| rng.random_range(1..hi.max(2));
    for _ in 0..n {
        s.push_str("BEGIN;\n");
        for _ in 0..rng.random_range(1..4) {
            let hi = *next;
            match rng.random_range(0..100) {
                0..20 => {
                    *next += 1;
                    let big = if rng.random_range(0..10) == 0 { random_text(rng, 3000) } else { random_text(rng, 6) };
                    s.push_str(&format!("INSERT INTO {c} VALUES ({}, {}, '{big}');\n", *next, rng.random_range(0..5)));
                }
                20..45 => {
                    *next += 1;
                    s.push_str(&format!(
                        "INSERT INTO {a} VALUES ({}, {}, {});\n",
                        *next,
                        pick(rng, hi),
                        rng.random_range(-500..5000)
                    ));
                }
                45..60 => s.push_str(&format!(
                    "UPDATE {a} SET balance = balance + {} WHERE id = {};\n",
                    rng.random_range(-100..100),
                    pick(rng, hi)
                )),
                60..68 => {
                    s.push_str(&format!("UPDATE {a} SET cust = {} WHERE id = {};\n", pick(rng, hi), pick(rng, hi)))
                }
                68..76 => s.push_str(&format!(
                    "UPDATE {c} SET tier = {} WHERE id = {};\n",
                    rng.random_range(0..5),
                    pick(rng, hi)
                )),
                76..80 => {
                    *next += 1;
                    s.push_str(&format!("UPDATE {c} SET id = {} WHERE id = {};\n", *next, pick(rng, hi)));
                }
                80..88 => s.push_str(&format!("DELETE FROM {a} WHERE id = {};\n", pick(rng, hi))),
                88..93 => s.push_str(&format!("DELETE FROM {c} WHERE id = {};\n", pick(rng, hi))),
                _ => s.push_str(&format!(
                    "UPDATE {a} SET balance = balance * 2 WHERE cust = {} AND abs(balance) < 100000;\n",
                    pick(rng, hi)
                )),
            }
        }
        // A statement on a key that is not there changes nothing; a duplicate key ends the
        // transaction with an error, which psql (ON_ERROR_STOP off) and mariadb (--force) report
        // and go on from.
        s.push_str(if rng.random_range(0..20) == 0 { "ROLLBACK;\n" } else { "COMMIT;\n" });
    }
    s
}
