//! POSTGRES_CDC benchmark (issue 18), against the server of `scripts/services.sh start postgres`
//! (`$LAMINAR_POSTGRES` or `<target dir>/services.env`). In one run, over the same WAL:
//!
//!  (a) `pg_recvlogical` reading the changes of `--updates` row updates raw (pgoutput bytes to
//!      /dev/null) from a slot of its own: changes/s;
//!  (b) LaminarDB reopened after the same updates, reading them from its slot into the CDC table
//!      (decoded, converted to Arrow, applied per transaction) until the table's `SUM(v)` equals
//!      the server's: changes/s, and the ratio (b) / (a) (target ≥ 0.5).
//!
//! And the POSTGRES sink, in the same run, over `--sink-rows` rows (id, k, v, s, ts):
//!
//!  (c) `psql \copy` of the rows from a CSV file into a table: rows/s;
//!  (d) LaminarDB pushing the same rows (8,192-row batches) through a `POSTGRES` sink in
//!      `append` mode at durability `checkpoint`, a checkpoint (one Postgres transaction, binary
//!      COPY) every 131,072 rows, timed until the last checkpoint's commit returned: rows/s, and
//!      the ratio (d) / (c) (target ≥ 0.8).
//!
//! The updates are written while both readers are stopped (`UPDATE … SET v = v + 1` over
//! `--rows` rows, 10,000 rows per transaction), so each reader's time is its own. The initial
//! snapshot's rows/s is printed too.
//!
//! ```text
//! scripts/services.sh start postgres
//! cargo run --release -p laminar-core --features postgres --example pg_cdc_bench -- --updates 1000000
//! ```
//! Figures from a debug build are only a smoke test.

use std::error::Error;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use laminar_core::{Config, Database};

type BoxResult<T> = Result<T, Box<dyn Error>>;

fn server_url() -> BoxResult<String> {
    if let Ok(u) = std::env::var("LAMINAR_POSTGRES") {
        return Ok(u);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(root.join("target"));
    let env = std::fs::read_to_string(target.join("services.env")).unwrap_or_default();
    env.lines()
        .find_map(|l| l.strip_prefix("LAMINAR_POSTGRES="))
        .map(str::to_string)
        .ok_or_else(|| "no PostgreSQL: run scripts/services.sh start postgres".into())
}

/// Runs an SQL script with `psql`; its output, unaligned, tuples only.
fn psql(url: &str, script: &str) -> BoxResult<String> {
    let mut child = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("psql failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// `pg_recvlogical` on PATH, else under /usr/lib/postgresql/*/bin.
fn pg_recvlogical() -> BoxResult<String> {
    if Command::new("pg_recvlogical").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok("pg_recvlogical".into());
    }
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    dirs.iter()
        .rev()
        .map(|d| d.join("bin/pg_recvlogical"))
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
        .ok_or_else(|| "pg_recvlogical not found".into())
}

fn main() -> BoxResult<()> {
    let mut updates: u64 = 1_000_000;
    let mut rows: u64 = 100_000;
    let mut sink_rows: u64 = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--updates" => updates = args.next().ok_or("--updates N")?.parse()?,
            "--rows" => rows = args.next().ok_or("--rows N")?.parse()?,
            "--sink-rows" => sink_rows = args.next().ok_or("--sink-rows N")?.parse()?,
            other => return Err(format!("unknown argument {other} (use --updates N, --rows N, --sink-rows N)").into()),
        }
    }
    let rows = rows.clamp(1, updates.max(1));
    let url = server_url()?;
    let rest = url.strip_prefix("postgres://").ok_or("a postgres:// URL")?;
    let (cred, rest) = rest.split_once('@').ok_or("user:password@")?;
    let (user, password) = cred.split_once(':').ok_or("user:password")?;
    let (hostport, dbname) = rest.split_once('/').ok_or("host:port/db")?;
    let (host, port) = hostport.split_once(':').ok_or("host:port")?;
    let id = std::process::id();
    let (table, slot, raw) = (format!("bench_cdc_{id}"), format!("bench_lam_{id}"), format!("bench_raw_{id}"));
    // A closed reader's walsender can hold its slot a moment longer: end it, drop, check, for up
    // to 10 s (a slot left behind counts against the server's max_replication_slots for good).
    let cleanup = |url: &str| {
        let names = format!("('{slot}', '{raw}')");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = psql(
                url,
                &format!(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name IN {names} AND active_pid IS NOT NULL;
                     SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN {names} AND NOT active;"
                ),
            );
            let left = psql(url, &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name IN {names}"));
            if left.map(|l| l.trim() == "0").unwrap_or(false) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = psql(url, &format!("DROP PUBLICATION IF EXISTS {slot}; DROP TABLE IF EXISTS {table};"));
    };
    println!("POSTGRES_CDC benchmark: {updates} row updates over {rows} rows, server {host}:{port}");
    psql(
        &url,
        &format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, v BIGINT NOT NULL, s TEXT);
             INSERT INTO {table} SELECT g, g, md5(g::text) FROM generate_series(1, {rows}) g;"
        ),
    )?;
    let dir = std::env::temp_dir().join(format!("laminar-pg-cdc-bench-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint")?;
    cfg.set("checkpoint_interval", "1h")?;
    let count = |db: &Database| -> u64 {
        db.metrics()
            .ok()
            .and_then(|m| m.sources.into_iter().find(|s| s.name == "t"))
            .map(|s| s.partitions.iter().map(|(_, p)| p.records).sum())
            .unwrap_or(0)
    };
    let wait = |what: &str, deadline: Instant, mut done: Box<dyn FnMut() -> BoxResult<bool> + '_>| -> BoxResult<()> {
        while !done()? {
            if Instant::now() > deadline {
                return Err(format!("{what}: not done after the time limit").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };

    // The snapshot.
    let t0 = Instant::now();
    let db = Database::open(&dir_s, cfg.clone())?;
    db.execute(&format!(
        "CREATE TABLE t (id INT, v BIGINT, s VARCHAR, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH (hostname = '{host}', port = '{port}', username = '{user}', password = '{password}', 'database-name' = '{dbname}', 'table-name' = '{table}', 'slot.name' = '{slot}', 'publication.name' = '{slot}')"
    ))?;
    // Read (the reader's count), then in the table (so that the checkpoint below covers it).
    wait("the snapshot", Instant::now() + Duration::from_secs(600), Box::new(|| Ok(count(&db) >= rows)))?;
    wait(
        "the snapshot in the table",
        Instant::now() + Duration::from_secs(600),
        Box::new(|| {
            db.flush()?;
            let b = db.query("SELECT COUNT(*) AS n FROM t")?;
            Ok(b.first().and_then(|b| {
                b.column(0).as_any().downcast_ref::<laminar_core::arrow::array::Int64Array>().map(|a| a.value(0))
            }) == Some(rows as i64))
        }),
    )?;
    let snap = t0.elapsed().as_secs_f64();
    println!(
        "snapshot: {rows} rows in {snap:.2} s ({:.0} rows/s, connecting and creating the slot included)",
        rows as f64 / snap
    );
    db.checkpoint()?;
    db.close();

    // The updates, with both readers stopped.
    psql(&url, &format!("SELECT pg_create_logical_replication_slot('{raw}', 'pgoutput')"))?;
    let mut script = String::new();
    let per_txn = 10_000u64;
    let mut left = updates;
    while left > 0 {
        let mut lo = 1;
        while lo <= rows && left > 0 {
            let n = per_txn.min(left).min(rows - lo + 1);
            script.push_str(&format!("UPDATE {table} SET v = v + 1 WHERE id BETWEEN {lo} AND {};\n", lo + n - 1));
            lo += n;
            left -= n;
        }
    }
    let t0 = Instant::now();
    psql(&url, &script)?;
    let w = t0.elapsed().as_secs_f64();
    let end = psql(&url, "SELECT pg_current_wal_lsn()")?;
    let want_sum: i64 = psql(&url, &format!("SELECT SUM(v) FROM {table}"))?.parse()?;
    println!("writer (psql, for scale): {updates} updates in {w:.2} s ({:.0}/s); WAL end {end}", updates as f64 / w);

    // (a) pg_recvlogical, raw.
    let t0 = Instant::now();
    let mut child = Command::new(pg_recvlogical()?)
        .args(["-d", url.as_str(), "--slot", raw.as_str(), "--start", "--endpos", end.as_str(), "--no-loop"])
        .args(["-o", "proto_version=1", "-o", &format!("publication_names={slot}"), "-f", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            cleanup(&url);
            return Err("pg_recvlogical did not finish in 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let raw_s = t0.elapsed().as_secs_f64();
    if !status.success() {
        let mut e = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut e);
        cleanup(&url);
        return Err(format!("pg_recvlogical failed: {e}").into());
    }
    let raw_rate = updates as f64 / raw_s;
    println!("(a) pg_recvlogical, raw to /dev/null: {raw_s:.2} s, {raw_rate:.0} changes/s");

    // (b) LaminarDB, from its checkpoint.
    let t0 = Instant::now();
    let db = Database::open(&dir_s, cfg)?;
    wait("LaminarDB", Instant::now() + Duration::from_secs(600), Box::new(|| Ok(count(&db) >= updates)))?;
    let read_s = t0.elapsed().as_secs_f64();
    wait(
        "the table",
        Instant::now() + Duration::from_secs(600),
        Box::new(|| {
            db.flush()?;
            let b = db.query("SELECT SUM(v) AS s FROM t")?;
            let got = b.first().and_then(|b| {
                b.column(0).as_any().downcast_ref::<laminar_core::arrow::array::Int64Array>().map(|a| a.value(0))
            });
            Ok(got == Some(want_sum))
        }),
    )?;
    let lam_s = t0.elapsed().as_secs_f64();
    let lam_rate = updates as f64 / lam_s;
    println!(
        "(b) LaminarDB POSTGRES_CDC into the table: read in {read_s:.2} s, applied (SUM(v) equal to the server's) in {lam_s:.2} s, {lam_rate:.0} changes/s"
    );
    println!("ratio (b) / (a): {:.2} (target >= 0.5)", lam_rate / raw_rate);
    db.close();
    cleanup(&url);
    let _ = std::fs::remove_dir_all(&dir);
    sink_bench(&url, sink_rows)
}

/// (c) and (d): `psql \copy` beside the POSTGRES sink, the same rows.
fn sink_bench(url: &str, n: u64) -> BoxResult<()> {
    use laminar_core::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use laminar_core::arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    let id = std::process::id();
    let (copied, sunk) = (format!("bench_copy_{id}"), format!("bench_sink_{id}"));
    let cols =
        "id bigint NOT NULL, k bigint NOT NULL, v double precision NOT NULL, s text NOT NULL, ts timestamp NOT NULL";
    psql(url, &format!("CREATE TABLE {copied} ({cols}); CREATE TABLE {sunk} ({cols});"))?;
    let row = |i: u64| {
        (
            i as i64,
            ((i * 2_654_435_761) % 1000) as i64,
            (i % 997) as f64 * 0.5,
            format!("item-{}", i % 10_000),
            1_700_000_000_000_000i64 + i as i64 * 1000,
        )
    };
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(8192)
        .map(|lo| {
            let r: Vec<_> = (lo..(lo + 8192).min(n)).map(row).collect();
            RecordBatch::try_from_iter(vec![
                ("id", Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.0))) as ArrayRef),
                ("k", Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.1))) as ArrayRef),
                ("v", Arc::new(Float64Array::from_iter_values(r.iter().map(|x| x.2))) as ArrayRef),
                ("s", Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.3.as_str()))) as ArrayRef),
                ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(r.iter().map(|x| x.4))) as ArrayRef),
            ])
            .unwrap()
        })
        .collect();
    // (c) psql \copy from a CSV file of the same rows, written beforehand (Arrow's CSV writer).
    let csv = std::env::temp_dir().join(format!("laminar-pg-sink-bench-{id}.csv"));
    {
        let mut wr = laminar_core::arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(std::io::BufWriter::new(std::fs::File::create(&csv)?));
        for b in &batches {
            wr.write(b)?;
        }
    }
    let t0 = Instant::now();
    psql(url, &format!("\\copy {copied} (id, k, v, s, ts) FROM '{}' CSV", csv.display()))?;
    let copy_s = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&csv);
    let copy_rate = n as f64 / copy_s;
    println!("(c) psql \\copy of {n} rows (CSV): {copy_s:.2} s, {copy_rate:.0} rows/s");
    // (d) the POSTGRES sink.
    let dir = std::env::temp_dir().join(format!("laminar-pg-sink-bench-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint")?;
    cfg.set("checkpoint_interval", "1h")?;
    let db = Database::open(&dir.display().to_string(), cfg)?;
    db.execute(&format!(
        "CREATE SOURCE src (id BIGINT NOT NULL, k BIGINT NOT NULL, v DOUBLE NOT NULL, s VARCHAR NOT NULL, ts TIMESTAMP NOT NULL);
         CREATE SINK out FROM src INTO POSTGRES WITH (url = '{url}', 'table-name' = '{sunk}', 'sink.mode' = 'append')"
    ))?;
    let mut w = db.writer("src")?;
    let t0 = Instant::now();
    for (i, b) in batches.into_iter().enumerate() {
        w.write(b)?;
        if (i + 1) % 16 == 0 {
            db.flush()?;
            db.checkpoint()?;
        }
    }
    db.flush()?;
    db.checkpoint()?;
    let sink_s = t0.elapsed().as_secs_f64();
    db.close();
    let got: u64 = psql(url, &format!("SELECT count(*) FROM {sunk}"))?.parse()?;
    let same = psql(url, &format!("SELECT count(*) FROM (SELECT * FROM {copied} EXCEPT ALL SELECT * FROM {sunk}) d"))?;
    if got != n || same != "0" {
        return Err(format!("the sink's table has {got} rows ({same} differ from the \\copy's); expected {n}").into());
    }
    let sink_rate = n as f64 / sink_s;
    println!(
        "(d) LaminarDB POSTGRES sink (append, exactly-once, binary COPY, a checkpoint per 131,072 rows): {sink_s:.2} s, {sink_rate:.0} rows/s; the table equals the \\copy's"
    );
    println!("ratio (d) / (c): {:.2} (target >= 0.8)", sink_rate / copy_rate);
    let _ = psql(
        url,
        &format!(
            "DROP TABLE {copied}; DROP TABLE {sunk}; DELETE FROM laminardb_sink_offsets WHERE sink_id = 'out:public.{sunk}'"
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
