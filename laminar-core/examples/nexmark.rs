//! Nexmark runner (NEXMARK.md §3–§5): per query, pushes N generated events through the engine
//! and prints events/s, CPU-seconds used (getrusage), events/s per CPU-second, peak RSS, and the
//! generator's own cost measured apart, beside the published per-core figures of §4.
//!
//!     cargo run --release -p laminar-core --example nexmark -- --events 10000000
//!
//! Options: --events N (10,000,000), --workers W (engine default), --batch B (8,192 events per
//! generated chunk), --rate R (events per second of event time, 10,000,000 as published),
//! --queries q0,q1,… (all; q5r and q7r are the window-function rewrites of q5 and q7),
//! --duckdb PYTHON (also run every query as DuckDB batch SQL over the same events, one thread,
//! by `benches/peers/duckdb_nexmark.py` under that Python interpreter, which needs `duckdb` and
//! `pyarrow`; its events per CPU-second and ours ÷ its are printed beside ours),
//! --flink PYTHON (also run every query in Apache Flink SQL over the same events, PyFlink's local
//! mini-cluster at parallelism 1 and 2, by `benches/peers/flink_nexmark.py` under that Python,
//! which `scripts/peers-env.sh` makes; its events per CPU-second, JVM included, and ours ÷ its).

use std::sync::atomic::{AtomicBool, Ordering};
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use laminar_core::nexmark::{NexmarkBatches, NexmarkConfig, NexmarkGenerator};
use laminar_core::{Config, Database};

use laminar_core::nexmark::queries::{Q0, Q1, Q2, Q3, Q4, Q5, Q5_REWRITE, Q7, Q7_REWRITE, Q8, SOURCES};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// (name, SQL, published best per core (K ev/s), target per core)
const QUERIES: [(&str, &str, &str, u64); 10] = [
    ("q0", Q0, "436 (Feldera)", 1_000),
    ("q1", Q1, "436 (Feldera)", 1_000),
    ("q2", Q2, "436 (Feldera)", 1_000),
    ("q3", Q3, "413 (Feldera)", 800),
    ("q4", Q4, "265 (Feldera)", 500),
    ("q5", Q5, "412 (Feldera)", 800),
    ("q7", Q7, "196 (Feldera)", 400),
    ("q8", Q8, "415 (Feldera)", 800),
    ("q5r", Q5_REWRITE, "412 (Feldera, q5)", 800),
    ("q7r", Q7_REWRITE, "196 (Feldera, q7)", 400),
];

#[cfg(target_os = "linux")]
mod usage {
    #[repr(C)]
    struct Timeval {
        sec: i64,
        usec: i64,
    }
    #[repr(C)]
    struct Rusage {
        utime: Timeval,
        stime: Timeval,
        maxrss: i64,
        rest: [i64; 13],
    }
    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
    /// (CPU seconds used by the process so far, peak RSS in MiB).
    pub fn now() -> (f64, f64) {
        let mut r = std::mem::MaybeUninit::<Rusage>::zeroed();
        // SAFETY: RUSAGE_SELF (0) with a struct of the kernel's layout on Linux.
        if unsafe { getrusage(0, r.as_mut_ptr()) } != 0 {
            return (0.0, 0.0);
        }
        // SAFETY: getrusage filled it.
        let r = unsafe { r.assume_init() };
        let cpu = r.utime.sec as f64 + r.utime.usec as f64 / 1e6 + r.stime.sec as f64 + r.stime.usec as f64 / 1e6;
        (cpu, r.maxrss as f64 / 1024.0)
    }
}

#[cfg(not(target_os = "linux"))]
mod usage {
    pub fn now() -> (f64, f64) {
        (0.0, 0.0)
    }
}

struct Args {
    events: u64,
    workers: Option<usize>,
    batch: u64,
    rate: u64,
    queries: Vec<String>,
    duckdb: Option<String>,
    flink: Option<String>,
}

fn parse_args() -> BoxResult<Args> {
    let mut a = Args {
        events: 10_000_000,
        workers: None,
        batch: 8192,
        rate: 10_000_000,
        queries: vec![],
        duckdb: None,
        flink: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--workers" => a.workers = Some(value()?.parse()?),
            "--batch" => a.batch = value()?.parse()?,
            "--rate" => a.rate = value()?.parse()?,
            "--duckdb" => a.duckdb = Some(value()?),
            "--flink" => a.flink = Some(value()?),
            "--queries" => {
                a.queries = value()?.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(q) = a.queries.iter().find(|q| !QUERIES.iter().any(|(n, ..)| n == q)) {
                    let known: Vec<&str> = QUERIES.iter().map(|(n, ..)| *n).collect();
                    return Err(format!("unknown query '{q}' (known: {})", known.join(",")).into());
                }
            }
            _ => {
                return Err(format!(
                    "unknown option {flag}; options: --events --workers --batch --rate --queries --duckdb --flink"
                )
                .into());
            }
        }
    }
    Ok(a)
}

struct Run {
    wall: Duration,
    cpu: f64,
    rows_out: u64,
}

fn run_query(sql: &str, chunks: &[NexmarkBatches], workers: Option<usize>) -> BoxResult<Run> {
    let mut cfg = Config::default();
    if let Some(w) = workers {
        cfg.set("workers", &w.to_string())?;
    }
    cfg.set("buffer_size", "65536")?;
    let db = Database::open(":memory:", cfg)?;
    for (_, ddl) in SOURCES {
        db.execute(ddl)?;
    }
    db.execute(&format!("CREATE STREAM q AS {sql}"))?;
    let sub = db.subscribe("q")?;
    // A consumer that counts and drops the output (a blackhole sink).
    let done = Arc::new(AtomicBool::new(false));
    let drain = common::spawn_drain(sub, done.clone(), 0u64, |n, b| {
        *n += b.num_rows() as u64;
        Ok(())
    });
    let (mut wp, mut wa, mut wb) = (db.writer("person")?, db.writer("auction")?, db.writer("bid")?);
    let (cpu0, _) = usage::now();
    let t0 = Instant::now();
    for c in chunks {
        if c.person.num_rows() > 0 {
            wp.write(c.person.clone())?;
        }
        if c.auction.num_rows() > 0 {
            wa.write(c.auction.clone())?;
        }
        if c.bid.num_rows() > 0 {
            wb.write(c.bid.clone())?;
        }
    }
    wp.finish()?;
    wa.finish()?;
    wb.finish()?;
    wb.flush()?; // every result is now in the subscription's buffer
    done.store(true, Ordering::Release);
    let rows_out = common::join_drain(drain)?;
    let wall = t0.elapsed();
    if let Some(f) = db.metrics()?.streams.iter().find_map(|s| s.failed.clone()) {
        return Err(f.into());
    }
    let (cpu1, _) = usage::now();
    db.close();
    Ok(Run { wall, cpu: cpu1 - cpu0, rows_out })
}

/// Per query: (rows when the peer counts them, CPU-s), or the peer's error. A peer that reports a
/// fixed cost per job (`"(fixed)"`: Flink's submission and mini-cluster) has it taken off here.
type PeerResults = std::collections::HashMap<String, Result<(Option<u64>, f64), String>>;

/// Writes the generated events as Arrow IPC files (person.arrow, auction.arrow, bid.arrow) and the
/// queries as LaminarDB runs them (queries.json) into a fresh directory, for the peers' scripts.
fn write_peer_input(chunks: &[NexmarkBatches]) -> BoxResult<std::path::PathBuf> {
    use laminar_core::arrow::ipc::writer::FileWriter;
    let dir = std::env::temp_dir().join(format!("laminar-nexmark-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kinds: [(&str, fn(&NexmarkBatches) -> &laminar_core::arrow::record_batch::RecordBatch); 3] =
        [("person", |c| &c.person), ("auction", |c| &c.auction), ("bid", |c| &c.bid)];
    for (name, get) in kinds {
        let file = std::fs::File::create(dir.join(format!("{name}.arrow")))?;
        let mut w = FileWriter::try_new(std::io::BufWriter::new(file), &get(&chunks[0]).schema())?;
        for c in chunks {
            if get(c).num_rows() > 0 {
                w.write(get(c))?;
            }
        }
        w.finish()?;
    }
    let texts: Vec<(&str, &str)> = QUERIES.iter().map(|(n, sql, ..)| (*n, *sql)).collect();
    std::fs::write(dir.join("queries.json"), serde_json::to_string(&texts)?)?;
    Ok(dir)
}

/// Runs a peer's script (`benches/peers/<script>`) over the directory of [`write_peer_input`] and
/// reads the JSON line it prints per query.
fn run_peer(python: &str, script: &str, dir: &std::path::Path, extra: &[String]) -> BoxResult<PeerResults> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/peers").join(script);
    eprintln!("running {} {}", script.display(), extra.join(" "));
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir)
        .args(extra)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running {python} {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status).into());
    }
    let mut res = PeerResults::new();
    let mut fixed = 0.0;
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let name = v["query"].as_str().ok_or("no query name")?.to_string();
        let cpu = v["cpu"].as_f64().unwrap_or(f64::NAN);
        if name == "(fixed)" {
            fixed = cpu;
            eprintln!("{}: a job's fixed cost {cpu:.2} CPU-s, taken off each query's", script.display());
            continue;
        }
        let r = match v["error"].as_str() {
            Some(e) => Err(e.to_string()),
            None => Ok((v["rows"].as_u64(), cpu - fixed)),
        };
        res.insert(name, r);
    }
    Ok(res)
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexmark: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> BoxResult<()> {
    let args = parse_args()?;
    let generator = NexmarkGenerator::new(NexmarkConfig { first_event_rate: args.rate, ..Default::default() });
    let (gcpu0, _) = usage::now();
    let g0 = Instant::now();
    let mut chunks = vec![];
    let mut first = 0;
    while first < args.events {
        let n = args.batch.min(args.events - first);
        chunks.push(generator.generate(first, n)?);
        first += n;
    }
    let gen_wall = g0.elapsed();
    let (gcpu1, _) = usage::now();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut peers: Vec<(String, PeerResults)> = vec![];
    if args.duckdb.is_some() || args.flink.is_some() {
        let dir = write_peer_input(&chunks)?;
        let run = (|| -> BoxResult<()> {
            if let Some(py) = &args.duckdb {
                peers.push(("DuckDB".into(), run_peer(py, "duckdb_nexmark.py", &dir, &[args.queries.join(",")])?));
            }
            if let Some(py) = &args.flink {
                for p in [1, 2] {
                    let extra = [args.queries.join(","), p.to_string()];
                    peers.push((format!("Flink p{p}"), run_peer(py, "flink_nexmark.py", &dir, &extra)?));
                }
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        run?;
    }
    println!(
        "Nexmark: {} events, chunks of {}, event-time rate {} ev/s, workers {}, cores {cores}, build {}",
        args.events,
        args.batch,
        args.rate,
        args.workers.map(|w| w.to_string()).unwrap_or_else(|| "default".into()),
        if cfg!(debug_assertions) { "debug (figures meaningless)" } else { "release" }
    );
    println!(
        "generator (not counted below): {:.2} s wall, {:.2} CPU-s, {:.0} K events/s",
        gen_wall.as_secs_f64(),
        gcpu1 - gcpu0,
        args.events as f64 / gen_wall.as_secs_f64() / 1e3
    );
    print!(
        "\n{:<5} {:>12} {:>10} {:>14} {:>9} {:>16} {:>10} {:>15} {:>10}",
        "query",
        "rows out",
        "wall s",
        "K events/s",
        "CPU-s",
        "K ev/s per CPU-s",
        "peak MiB",
        "best published",
        "target"
    );
    for (peer, _) in &peers {
        print!(
            " {:>12} {:>24} {:>14}",
            format!("{peer} rows"),
            format!("{peer} K ev/s per CPU-s"),
            format!("ours ÷ {peer}")
        );
    }
    println!();
    for (name, sql, published, target) in QUERIES {
        if !args.queries.is_empty() && !args.queries.iter().any(|q| q == name) {
            continue;
        }
        let r = run_query(sql, &chunks, args.workers)?;
        let (_, peak) = usage::now();
        let rate = args.events as f64 / r.wall.as_secs_f64() / 1e3;
        let per_cpu = if r.cpu > 0.0 { args.events as f64 / r.cpu / 1e3 } else { f64::NAN };
        print!(
            "{name:<5} {:>12} {:>10.2} {:>14.0} {:>9.2} {:>16.0} {:>10.0} {:>15} {:>10}",
            r.rows_out,
            r.wall.as_secs_f64(),
            rate,
            r.cpu,
            per_cpu,
            peak,
            published,
            format!("≥ {target}")
        );
        let mut errors = vec![];
        for (peer, res) in &peers {
            match res.get(name) {
                Some(Ok((rows, cpu))) => {
                    let theirs = args.events as f64 / cpu / 1e3;
                    let rows = rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
                    print!(" {rows:>12} {theirs:>24.0} {:>14.2}", per_cpu / theirs);
                }
                Some(Err(e)) => {
                    print!(" {:>12} {:>24} {:>14}", "failed", "-", "-");
                    errors.push(format!("{peer}: {e}"));
                }
                None => print!(" {:>12} {:>24} {:>14}", "-", "-", "-"),
            }
        }
        println!();
        for e in errors {
            println!("      {e}");
        }
    }
    println!(
        "\nper CPU-s = events ÷ CPU seconds the process used during the query (getrusage), as Flink's Throughput/Cores; peak MiB is the process's peak RSS so far (getrusage never lowers it: a query's own peak only when it exceeds the earlier ones), generator included."
    );
    if peers.iter().any(|(p, _)| p == "DuckDB") {
        println!(
            "DuckDB: the same events as Arrow tables in memory, each query as batch SQL (window table functions spelt out as a row per window), one thread, its result fetched as Arrow; CPU-s of its process during the query (rows differ where LaminarDB emits changes: q4's updates, for instance)."
        );
    }
    if args.flink.is_some() {
        println!(
            "Flink p1/p2: Flink SQL in PyFlink's local mini-cluster at parallelism 1 and 2, streaming mode, the same events from CSV files (written before the clock starts), the query text as LaminarDB runs it, into a blackhole sink (rows not counted); CPU-s of the Python process and its JVM during the job, less a job's fixed cost (the least of three jobs over an empty file: submission, planning, the mini-cluster's start and stop)."
        );
    }
    Ok(())
}
