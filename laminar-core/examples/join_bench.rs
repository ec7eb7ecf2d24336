//! Join benchmark (issue 9): streaming join throughput beside a DataFusion batch hash join of the
//! same rows, in one run.
//!
//! ```text
//! cargo run --release -p laminar-core --example join_bench -- --rows 2000000
//! ```
//!
//! Two inputs `a` and `b` of `--rows` rows each (v; ts one row per millisecond per side, up to
//! 1 s out of order; k shared by 4 consecutive rows of each side, modulo `--keys`, so a key's rows
//! on both sides lie close in time — orders and their payments), 8,192-row batches, pushed
//! alternately. Fewer keys (`--keys`) make DataFusion's time-blind hash join quadratic per key.
//! (a) interval join `a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts - 1 s AND a.ts + 2 s`: push,
//!     finish, drain; input rows (both sides) per second; output rows checked against (b).
//! (b) DataFusion: the same SQL over MemTables of the same batches; input rows per second.
//! (c) the ratio (a) / (b).
//! (d) ASOF join `a ASOF JOIN b MATCH_CONDITION(a.ts >= b.ts) ON a.k = b.k`, streaming; input rows
//!     per second; every left row comes out once (checked).
//! (e) the ratio (d) / (b) (DataFusion has no ASOF join; its hash join of the same rows is the
//!     yardstick). Best of 3 runs each, alternating.
//! (f) with `--duckdb <python>`: DuckDB's `ASOF LEFT JOIN` of the same rows (every left row once,
//!     as LaminarDB's), best of 3 on one thread, by `benches/peers/duckdb_query.py` over the
//!     batches written as Arrow IPC; input rows per second and the ratio (d) / (f).

use std::sync::atomic::{AtomicBool, Ordering};
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use laminar_core::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const ASOF_SQL: &str = "SELECT a.k, a.v, b.v AS bv, a.ts FROM a ASOF JOIN b MATCH_CONDITION(a.ts >= b.ts) ON a.k = b.k";

const SQL: &str = "SELECT a.k, a.v, b.v AS bv, a.ts, b.ts AS bts FROM a JOIN b ON a.k = b.k \
                   AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND";

fn batches(rows: usize, keys: i64, salt: i64) -> Vec<RecordBatch> {
    let mut out = vec![];
    let mut i = 0i64;
    while (i as usize) < rows {
        let n = 8192.min(rows - i as usize) as i64;
        let r = i..i + n;
        let k = r.clone().map(|x| (x / 4).rem_euclid(keys));
        let ts = r.clone().map(|x| (x - (x * 31 + salt) % 1000) * 1000);
        out.push(
            RecordBatch::try_from_iter(vec![
                ("k", Arc::new(Int64Array::from_iter_values(k)) as ArrayRef),
                ("v", Arc::new(Int64Array::from_iter_values(r.clone())) as ArrayRef),
                ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(ts)) as ArrayRef),
            ])
            .expect("batch"),
        );
        i += n;
    }
    out
}

fn engine(sql: &str, a: &[RecordBatch], b: &[RecordBatch]) -> BoxResult<(Duration, u64)> {
    let mut cfg = Config::default();
    cfg.set("buffer_size", "65536")?;
    let db = Database::open(":memory:", cfg)?;
    for n in ["a", "b"] {
        db.execute(&format!(
            "CREATE SOURCE {n} (k BIGINT NOT NULL, v BIGINT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
        ))?;
    }
    db.execute(&format!("CREATE STREAM j AS {sql}"))?;
    let sub = db.subscribe("j")?;
    // A consumer that counts and drops the output (a blackhole sink).
    let done = Arc::new(AtomicBool::new(false));
    let drain = common::spawn_drain(sub, done.clone(), 0u64, |n, b| {
        *n += b.num_rows() as u64;
        Ok(())
    });
    let (mut wa, mut wb) = (db.writer("a")?, db.writer("b")?);
    let t0 = Instant::now();
    for (x, y) in a.iter().zip(b) {
        wa.write(x.clone())?;
        wb.write(y.clone())?;
    }
    wa.finish()?;
    wb.finish()?;
    wb.flush()?;
    done.store(true, Ordering::Release);
    let rows_out = common::join_drain(drain)?;
    let el = t0.elapsed();
    if let Some(f) = db.metrics()?.streams.iter().find_map(|s| s.failed.clone()) {
        return Err(f.into());
    }
    Ok((el, rows_out))
}

fn datafusion(a: &[RecordBatch], b: &[RecordBatch], rt: &tokio::runtime::Runtime) -> BoxResult<(Duration, u64)> {
    let ctx = SessionContext::new();
    ctx.register_table("a", Arc::new(MemTable::try_new(a[0].schema(), vec![a.to_vec()])?))?;
    ctx.register_table("b", Arc::new(MemTable::try_new(b[0].schema(), vec![b.to_vec()])?))?;
    let t0 = Instant::now();
    let out = rt.block_on(async { ctx.sql(SQL).await?.collect().await })?;
    Ok((t0.elapsed(), out.iter().map(|b| b.num_rows() as u64).sum()))
}

/// DuckDB's ASOF LEFT JOIN of the same rows: (best wall time, rows out).
fn duckdb_asof(python: &str, a: &[RecordBatch], b: &[RecordBatch]) -> BoxResult<(Duration, u64)> {
    use laminar_core::arrow::ipc::writer::FileWriter;
    let dir = std::env::temp_dir().join(format!("laminar-join-duckdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, batches) in [("a", a), ("b", b)] {
        let f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.arrow")))?);
        let mut w = FileWriter::try_new(f, &batches[0].schema())?;
        for x in batches {
            w.write(x)?;
        }
        w.finish()?;
    }
    let sql = "SELECT a.k, a.v, b.v AS bv, a.ts FROM a ASOF LEFT JOIN b ON a.k = b.k AND a.ts >= b.ts";
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/peers/duckdb_query.py");
    let out = std::process::Command::new(python).arg(&script).arg(&dir).arg(sql).arg("3").output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.map_err(|e| format!("running {python} {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr)).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((Duration::from_secs_f64(v["wall"].as_f64().ok_or("no wall")?), v["rows"].as_u64().ok_or("no rows")?))
}

fn main() -> BoxResult<()> {
    let mut rows = 1_000_000usize;
    let mut keys = i64::MAX;
    let mut duckdb: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => rows = args.next().ok_or("--rows N")?.parse()?,
            "--keys" => keys = args.next().ok_or("--keys N")?.parse()?,
            "--duckdb" => duckdb = Some(args.next().ok_or("--duckdb PYTHON")?),
            other => {
                return Err(format!("unknown option {other}; options: --rows N, --keys N, --duckdb PYTHON").into());
            }
        }
    }
    let (a, b) = (batches(rows, keys, 17), batches(rows, keys, 91));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build()?;
    println!(
        "join benchmark: {rows} rows per side, keys of 4 consecutive rows modulo {keys}, 8192-row batches, {} cores, build {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        if cfg!(debug_assertions) { "debug (figures meaningless)" } else { "release" }
    );
    let (mut best_e, mut best_d, mut best_x) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut out_e, mut out_d, mut out_x) = (0, 0, 0);
    for _ in 0..3 {
        let (t, n) = engine(SQL, &a, &b)?;
        best_e = best_e.min(t);
        out_e = n;
        let (t, n) = engine(ASOF_SQL, &a, &b)?;
        best_x = best_x.min(t);
        out_x = n;
        let (t, n) = datafusion(&a, &b, &rt)?;
        best_d = best_d.min(t);
        out_d = n;
    }
    let total = 2.0 * rows as f64;
    let (re, rd, rx) = (total / best_e.as_secs_f64(), total / best_d.as_secs_f64(), total / best_x.as_secs_f64());
    println!(
        "(a) interval join, streaming:      {:>8.2} M input rows/s ({out_e} rows out) {}",
        re / 1e6,
        if out_e == out_d { "OK" } else { "MISMATCH" }
    );
    println!("(b) DataFusion batch hash join:    {:>8.2} M input rows/s ({out_d} rows out)", rd / 1e6);
    println!("(c) ratio (a)/(b):                 {:>8.2}", re / rd);
    println!(
        "(d) ASOF join, streaming:          {:>8.2} M input rows/s ({out_x} rows out) {}",
        rx / 1e6,
        if out_x == rows as u64 { "OK" } else { "MISMATCH" }
    );
    println!("(e) ratio (d)/(b):                 {:>8.2}", rx / rd);
    if let Some(py) = &duckdb {
        let (t, n) = duckdb_asof(py, &a, &b)?;
        let rf = total / t.as_secs_f64();
        println!(
            "(f) DuckDB ASOF LEFT JOIN, 1 thread: {:>6.2} M input rows/s ({n} rows out) {}",
            rf / 1e6,
            if n == rows as u64 { "OK" } else { "MISMATCH" }
        );
        println!("    ratio (d)/(f):                 {:>8.2}", rx / rf);
    }
    if out_e != out_d {
        return Err("the streaming join's output differs from DataFusion's".into());
    }
    if out_x != rows as u64 {
        return Err("the ASOF join did not emit every left row once".into());
    }
    Ok(())
}
