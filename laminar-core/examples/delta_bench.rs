//! Delta sink benchmark (issue 19): rows per second into a DELTA sink beside the bare Parquet
//! writer (the `parquet` crate's `ArrowWriter`, which DataFusion's and delta-rs's Parquet writers
//! are built on) writing the same batches, in one run.
//!
//! ```text
//! cargo run --release -p laminar-core --features delta --example delta_bench -- --rows 4000000
//! ```
//!
//! W1's rows (k = i × 2654435761 mod 1000, v = i × 7919 mod 1000, ts = base + i ms), 8,192-row
//! batches.
//! (a) LaminarDB: a source sunk INTO DELTA at durability `checkpoint` (a Delta commit per
//!     checkpoint, every `--interval`), pushed, flushed and checkpointed: rows per second from the
//!     first push to the last commit. The table's row count (the `numRecords` of its files) is
//!     checked against the input.
//! (b) the bare writer: the same batches into one Snappy Parquet file, fsynced.
//! (c) the ratio (a) / (b). Best of 3 runs each, alternating.

use std::sync::Arc;
use std::time::{Duration, Instant};

use laminar_core::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn batches(rows: usize) -> Vec<RecordBatch> {
    let mut out = vec![];
    let mut i = 0usize;
    while i < rows {
        let r = (i as i64)..(rows.min(i + 8192) as i64);
        out.push(
            RecordBatch::try_from_iter(vec![
                ("k", Arc::new(Int64Array::from_iter_values(r.clone().map(|x| (x * 2654435761) % 1000))) as ArrayRef),
                ("v", Arc::new(Int64Array::from_iter_values(r.clone().map(|x| (x * 7919) % 1000))) as ArrayRef),
                (
                    "ts",
                    Arc::new(TimestampMicrosecondArray::from_iter_values(
                        r.clone().map(|x| (1_700_000_000_000 + x) * 1000),
                    )) as ArrayRef,
                ),
            ])
            .expect("batch"),
        );
        i += 8192;
    }
    out
}

/// The rows the table's log says its files hold.
fn table_rows(table: &std::path::Path) -> BoxResult<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(table.join("_delta_log"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            for line in std::fs::read_to_string(&p)?.lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                if let Some(s) = v.pointer("/add/stats").and_then(|s| s.as_str()) {
                    let s: serde_json::Value = serde_json::from_str(s)?;
                    n += s["numRecords"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    Ok(n)
}

fn laminar(batches: &[RecordBatch], rows: usize, dir: &std::path::Path, interval: &str) -> BoxResult<Duration> {
    let _ = std::fs::remove_dir_all(dir);
    let mut c = Config::default();
    c.set("durability", "checkpoint")?;
    c.set("checkpoint_interval", interval)?;
    let db = Database::open(dir.join("db").to_str().ok_or("path")?, c)?;
    let table = dir.join("table");
    db.execute(&format!(
        "CREATE SOURCE ev (k BIGINT, v BIGINT, ts TIMESTAMP); CREATE SINK out FROM ev INTO DELTA WITH ('path' = '{}')",
        table.display()
    ))?;
    let start = Instant::now();
    let mut w = db.writer("ev")?;
    for b in batches {
        w.write(b.clone())?;
    }
    drop(w);
    db.flush()?;
    db.checkpoint()?;
    let took = start.elapsed();
    db.close();
    let got = table_rows(&table)?;
    if got != rows as u64 {
        return Err(format!("the table holds {got} rows, not {rows}").into());
    }
    Ok(took)
}

fn bare(batches: &[RecordBatch], dir: &std::path::Path) -> BoxResult<Duration> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let start = Instant::now();
    let file = std::fs::File::create(dir.join("bare.parquet"))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    let f = w.into_inner()?;
    f.sync_all()?;
    Ok(start.elapsed())
}

fn main() -> BoxResult<()> {
    let mut rows = 2_000_000usize;
    let mut interval = "1s".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => rows = args.next().ok_or("--rows N")?.parse()?,
            "--interval" => interval = args.next().ok_or("--interval D")?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let input = batches(rows);
    let dir = std::env::temp_dir().join(format!("laminar-delta-bench-{}", std::process::id()));
    let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        best_a = best_a.min(laminar(&input, rows, &dir.join("a"), &interval)?);
        best_b = best_b.min(bare(&input, &dir.join("b"))?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("Delta sink benchmark: {rows} rows (W1 columns k, v, ts), 8192-row batches, best of 3");
    println!(
        "(a) LaminarDB source INTO DELTA (checkpoint every {interval}): {:>12.0} rows/s ({:.3} s)",
        rate(best_a),
        best_a.as_secs_f64()
    );
    println!(
        "(b) bare parquet ArrowWriter, one Snappy file:            {:>12.0} rows/s ({:.3} s)",
        rate(best_b),
        best_b.as_secs_f64()
    );
    println!("(c) ratio (a) / (b): {:.2} (target >= 0.8)", rate(best_a) / rate(best_b));
    Ok(())
}
