//! Durability benchmark (issue 6), in one run:
//! 1. push throughput at durability `memory`, `checkpoint` and `wal` — the same batches through
//!    the same windowed aggregate — and the ratios to `memory`, with one pusher and with several
//!    (the log's group commit shares an fsync between concurrent pushers);
//! 2. checkpoint time and size for `--keys` keys of window state, and of a second checkpoint of
//!    the same state (unchanged objects are not written again);
//! 3. recovery time of that database;
//! 4. in builds with the RocksDB state backend (cargo feature `rocksdb`): push throughput
//!    through the same aggregate with state in memory and with state spilled to RocksDB past
//!    `--state-cache` bytes, in memory, and the state each keeps in memory.
//!
//! `cargo run --release -p laminar-core --example durability_bench -- --batches 400 --keys 1000000`
//! Options: --batches N (of --batch-rows rows each, default 400 × 8192), --batch-rows,
//! --pushers P (default 4), --keys K (default 1,000,000), --dir D (default: the temp directory),
//! --state-cache SIZE (default 16MB).

use std::sync::Arc;
use std::time::Instant;

use laminar_core::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database};

struct Args {
    batches: usize,
    batch_rows: usize,
    pushers: usize,
    keys: usize,
    dir: std::path::PathBuf,
    state_cache: String,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        batches: 400,
        batch_rows: 8192,
        pushers: 4,
        keys: 1_000_000,
        dir: std::env::temp_dir(),
        state_cache: "16MB".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        let num = |s: String| {
            s.parse::<usize>()
                .map_err(|_| format!("{k}: expected a positive integer, got '{s}'"))
                .and_then(|n| if n == 0 { Err(format!("{k} must be positive")) } else { Ok(n) })
        };
        match k.as_str() {
            "--batches" => a.batches = num(v()?)?,
            "--batch-rows" => a.batch_rows = num(v()?)?,
            "--pushers" => a.pushers = num(v()?)?,
            "--keys" => a.keys = num(v()?)?,
            "--dir" => a.dir = v()?.into(),
            "--state-cache" => a.state_cache = v()?,
            _ => {
                return Err(format!(
                    "unknown option '{k}' (known: --batches --batch-rows --pushers --keys --dir --state-cache)"
                ));
            }
        }
    }
    Ok(a)
}

const SOURCE: &str = "CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)";
const AGG: &str = "CREATE STREAM agg AS SELECT k, COUNT(*) AS n, SUM(v) AS sv, window_start FROM s GROUP BY k, TUMBLE(ts, INTERVAL '1' HOUR)";

/// Batch `i`: `rows` rows with keys `first_key..` (mod `keys`), event time in the first hour.
fn batch(i: usize, rows: usize, keys: usize) -> RecordBatch {
    let first = i * rows;
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(Int64Array::from_iter_values((first..first + rows).map(|x| (x % keys) as i64))) as ArrayRef),
        ("v", Arc::new(Int64Array::from_iter_values((first..first + rows).map(|x| (x % 97) as i64))) as ArrayRef),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from_iter_values((first..first + rows).map(|x| (x % 3_000_000) as i64)))
                as ArrayRef,
        ),
    ])
    .expect("batch")
}

fn open(level: &str, io: &str, dir: &std::path::Path) -> Result<Database, String> {
    open_with(level, io, dir, &[])
}

fn open_with(level: &str, io: &str, dir: &std::path::Path, extra: &[(&str, &str)]) -> Result<Database, String> {
    let mut c = Config::default();
    c.set("durability", level).map_err(|e| e.to_string())?;
    c.set("io_backend", io).map_err(|e| e.to_string())?;
    for (k, v) in extra {
        c.set(k, v).map_err(|e| e.to_string())?;
    }
    let path = if level == "memory" {
        ":memory:".to_string()
    } else {
        let _ = std::fs::remove_dir_all(dir);
        dir.to_string_lossy().to_string()
    };
    Database::open(&path, c).map_err(|e| e.to_string())
}

/// Rows per second pushing `batches` (shared round-robin by `pushers` threads) until processed.
fn push_rate(level: &str, io: &str, a: &Args, pushers: usize, batches: &Arc<Vec<RecordBatch>>) -> Result<f64, String> {
    let dir = a.dir.join(format!("laminar-durability-bench-{level}-{}", std::process::id()));
    let db = open(level, io, &dir)?;
    db.execute(SOURCE).map_err(|e| e.to_string())?;
    db.execute(AGG).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..pushers)
        .map(|p| {
            let (db, batches) = (db.clone(), batches.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut w = db.writer("s").map_err(|e| e.to_string())?;
                for b in batches.iter().skip(p).step_by(pushers) {
                    w.write(b.clone()).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a pusher panicked".to_string())??;
    }
    db.flush().map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    db.close_abruptly();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows as f64 / secs)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("durability_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = args()?;
    println!(
        "durability_bench: {} batches of {} rows, keys {}, files under {}",
        a.batches,
        a.batch_rows,
        a.keys,
        a.dir.display()
    );
    let batches = Arc::new((0..a.batches).map(|i| batch(i, a.batch_rows, a.keys)).collect::<Vec<_>>());

    println!("\n1. push throughput (rows/s, pushed and processed through a windowed aggregate)");
    // io_uring where this kernel offers it (the engine's `auto`), always the portable path.
    let uring = {
        let dir = a.dir.join(format!("laminar-durability-bench-probe-{}", std::process::id()));
        let ok = open("wal", "io_uring", &dir).map(|db| db.close_abruptly()).is_ok();
        let _ = std::fs::remove_dir_all(&dir);
        ok
    };
    let ios: Vec<&str> = if uring { vec!["io_uring", "std"] } else { vec!["std"] };
    if !uring {
        println!("(io_uring is not available here: only write + fdatasync is measured)");
    }
    println!("{:<12} {:>9} {:>8} {:>14} {:>10}", "durability", "io", "pushers", "rows/s", "vs memory");
    for pushers in [1, a.pushers] {
        let base = push_rate("memory", "std", &a, pushers, &batches)?;
        println!("{:<12} {:>9} {pushers:>8} {base:>14.0} {:>10.2}", "memory", "-", 1.0);
        for level in ["checkpoint", "wal"] {
            for io in &ios {
                let r = push_rate(level, io, &a, pushers, &batches)?;
                println!("{level:<12} {io:>9} {pushers:>8} {r:>14.0} {:>10.2}", r / base);
            }
        }
        if pushers == a.pushers {
            break;
        }
    }
    println!(
        "(wal: each push returns once its rows are in the log and synced: io_uring submits the write and fdatasync linked, std calls write + fdatasync)"
    );

    println!("\n2. checkpoint of {} keys of window state", a.keys);
    let dir = a.dir.join(format!("laminar-durability-bench-state-{}", std::process::id()));
    let db = open("wal", "auto", &dir)?;
    db.execute(SOURCE).map_err(|e| e.to_string())?;
    db.execute(AGG).map_err(|e| e.to_string())?;
    {
        let mut w = db.writer("s").map_err(|e| e.to_string())?;
        let per = a.batch_rows.min(a.keys);
        let mut i = 0;
        while i * per < a.keys {
            w.write(batch(i, per.min(a.keys - i * per), a.keys)).map_err(|e| e.to_string())?;
            i += 1;
        }
    }
    db.flush().map_err(|e| e.to_string())?;
    let state_bytes: u64 = db.metrics().map_err(|e| e.to_string())?.streams.iter().map(|s| s.state_bytes).sum();
    let t0 = Instant::now();
    let first = db.checkpoint_stats().map_err(|e| e.to_string())?;
    let t_first = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let second = db.checkpoint_stats().map_err(|e| e.to_string())?;
    let t_second = t0.elapsed().as_secs_f64();
    println!(
        "in-memory state: {:.1} MB; files written with {}",
        state_bytes as f64 / 1e6,
        db.io_backend().unwrap_or("-")
    );
    println!(
        "checkpoint {}: {:.3} s, {:.1} MB on disk, {:.1} MB written",
        first.epoch,
        t_first,
        first.bytes_total as f64 / 1e6,
        first.bytes_written as f64 / 1e6
    );
    println!(
        "checkpoint {} (state unchanged): {:.3} s, {:.1} MB written, {} of {} objects reused",
        second.epoch,
        t_second,
        second.bytes_written as f64 / 1e6,
        second.objects_reused,
        second.objects
    );
    db.close_abruptly();

    println!("\n3. recovery of that database");
    let t0 = Instant::now();
    let mut c = Config::default();
    c.set("durability", "wal").map_err(|e| e.to_string())?;
    let db = Database::open(&dir.to_string_lossy(), c).map_err(|e| e.to_string())?;
    let open_secs = t0.elapsed().as_secs_f64();
    let info = db.recovery().ok_or("no recovery info")?;
    let restored: u64 = db.metrics().map_err(|e| e.to_string())?.streams.iter().map(|s| s.state_bytes).sum();
    println!(
        "open: {:.3} s (restore + replay {:.1} ms, checkpoint {:?}, {} log records replayed); state {:.1} MB",
        open_secs,
        info.millis,
        info.epoch,
        info.records_replayed,
        restored as f64 / 1e6
    );
    if restored == 0 {
        return Err("the recovered database holds no window state".into());
    }
    db.close_abruptly();
    let _ = std::fs::remove_dir_all(&dir);

    if laminar_core::ROCKSDB_AVAILABLE {
        println!(
            "\n4. state backend: the batches of 1. (keys {}) through the aggregate, durability memory, 1 pusher",
            a.keys
        );
        println!(
            "{:<28} {:>14} {:>10} {:>16} {:>16}",
            "state_backend", "rows/s", "vs memory", "peak MB in mem", "groups spilled"
        );
        let mut base = 0.0;
        for (backend, cache) in [("memory", "0"), ("rocksdb", a.state_cache.as_str())] {
            let db = open_with("memory", "auto", &a.dir, &[("state_backend", backend), ("state_cache_size", cache)])?;
            db.execute(SOURCE).map_err(|e| e.to_string())?;
            db.execute(AGG).map_err(|e| e.to_string())?;
            let mut w = db.writer("s").map_err(|e| e.to_string())?;
            let (mut peak, mut spilled) = (0u64, 0u64);
            let t0 = Instant::now();
            for (i, b) in batches.iter().enumerate() {
                w.write(b.clone()).map_err(|e| e.to_string())?;
                if i % 16 == 15 || i + 1 == batches.len() {
                    db.flush().map_err(|e| e.to_string())?;
                    let m = db.metrics().map_err(|e| e.to_string())?;
                    peak = peak.max(m.streams.iter().map(|s| s.state_bytes).sum());
                    spilled = spilled.max(m.streams.iter().map(|s| s.spilled_groups).sum());
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let rate = rows as f64 / secs;
            if backend == "memory" {
                base = rate;
            }
            let label = if backend == "memory" { "memory".to_string() } else { format!("rocksdb (cache {cache})") };
            println!("{label:<28} {rate:>14.0} {:>10.2} {:>16.3} {spilled:>16}", rate / base, peak as f64 / 1e6);
            drop(w);
            db.close();
        }
        println!(
            "(peaks sampled every 16 batches; the cache is per aggregate: spilling starts past it and goes down to half of it)"
        );
    } else {
        println!("\n4. state backend: not measured (built without the cargo feature 'rocksdb')");
    }
    Ok(())
}
