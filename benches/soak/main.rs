//! Soak benchmark (issue 27): LaminarDB under steady load for a long while, killed and reopened
//! on a schedule, against the Kafka broker of `scripts/services.sh start kafka` (`$LAMINAR_KAFKA`
//! or `<target dir>/services.env`). Not a CI test; CI runs a 2-minute smoke of it.
//!
//! A producer thread writes JSON records to two topics at a steady rate, every record a function
//! of its sequence number (so the oracle needs nothing but the count): `orders` (`id`, `k` over
//! 1,000 keys, `v`, `ts` = 1 ms of event time per record) and `payments` (a payment for every third
//! order, 3 s after it for even ids and 5 s after it for odd ones). A worker process (this
//! program with `--worker`) opens a durable database (`durability = checkpoint`) holding:
//!
//! - `w1`: per key, a 1-minute TUMBLE (COUNT, SUM, MIN(id), MAX(id)), EMIT ON WINDOW CLOSE, sunk
//!   to a Kafka topic exactly-once;
//! - `paid`: the interval join of orders and payments (`p.ts BETWEEN o.ts AND o.ts + 4 s`, so the
//!   5-second payments never match), sunk to a Kafka topic exactly-once;
//! - a subscriber to `paid` that reads for 2–10 s, lets go and subscribes again;
//! - random DDL every 3–12 s: a filter or a windowed aggregate over `orders` created, the oldest
//!   dropped when more than three exist.
//!
//! Every `--kill-every` seconds the worker is killed with SIGKILL and started again on the same
//! directory. Every `--report-every` seconds a line prints the worker's RSS, open file
//! descriptors, and the sizes of its directory, WAL and checkpoints. At the end the producer
//! writes a record far ahead in event time to every partition (the windows close), the worker is
//! closed once its outputs are complete, and a `read_committed` consumer reads both output topics:
//! each must equal the oracle computed here from the records produced — every row exactly once
//! across the kills. The run fails (exit 1) otherwise.
//!
//! ```text
//! scripts/services.sh start kafka
//! cargo run --release -p laminar-core --features kafka --example soak -- --seconds 1800
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use laminar_core::arrow::array::{Array, StringArray};
use laminar_core::{Config, Database, Next};
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[path = "../../laminar-core/examples/common/kafka.rs"]
mod kafka;
use kafka::{broker, create_topic, ts_text};

const PARTITIONS: u64 = 4;
const KEYS: u64 = 1000;
/// Event time of record 0, in epoch milliseconds.
const T0: u64 = 1_700_000_000_000;

/// Record `i` of `orders`: (key, v).
fn order(i: u64) -> (u64, u64) {
    (i.wrapping_mul(2_654_435_761) % KEYS, i % 97)
}

/// The payment of order `i`, if it has one: (amount, delay in ms).
fn payment(i: u64) -> Option<(u64, u64)> {
    i.is_multiple_of(3).then_some((i % 50, if i.is_multiple_of(2) { 3000 } else { 5000 }))
}

// ---------------------------------------------------------------------------------------------
// The worker: one process life of the database.

struct WorkerArgs {
    dir: String,
    broker: String,
    orders: String,
    payments: String,
    out_w1: String,
    out_paid: String,
    seed: u64,
}

fn worker(a: WorkerArgs) -> BoxResult<()> {
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint")?;
    cfg.set("checkpoint_interval", "5s")?;
    let db = Database::open(&a.dir, cfg)?;
    let b = &a.broker;
    db.execute(&format!(
        "CREATE SOURCE IF NOT EXISTS orders (id BIGINT, k BIGINT, v BIGINT, ts TIMESTAMP,
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             FROM KAFKA WITH (topic = '{}', 'properties.bootstrap.servers' = '{b}', format = 'json',
                 'scan.startup.mode' = 'earliest-offset');
         CREATE SOURCE IF NOT EXISTS payments (id BIGINT, amt BIGINT, ts TIMESTAMP,
             WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
             FROM KAFKA WITH (topic = '{}', 'properties.bootstrap.servers' = '{b}', format = 'json',
                 'scan.startup.mode' = 'earliest-offset');
         CREATE STREAM IF NOT EXISTS w1 AS SELECT k, COUNT(*) AS c, SUM(v) AS s, MIN(id) AS first_id,
             MAX(id) AS last_id FROM orders GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE;
         CREATE STREAM IF NOT EXISTS paid AS SELECT o.id, o.k, p.amt FROM orders o JOIN payments p
             ON o.id = p.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '4' SECOND;
         CREATE SINK IF NOT EXISTS w1_out FROM w1 INTO KAFKA WITH (topic = '{}',
             'properties.bootstrap.servers' = '{b}', format = 'json');
         CREATE SINK IF NOT EXISTS paid_out FROM paid INTO KAFKA WITH (topic = '{}',
             'properties.bootstrap.servers' = '{b}', format = 'json')",
        a.orders, a.payments, a.out_w1, a.out_paid
    ))?;
    // The DDL streams a previous life left (they are durable too).
    let mut tmp: Vec<u64> = vec![];
    for batch in db.execute("SHOW STREAMS")?.batches {
        let names = batch.column(0).as_any().downcast_ref::<StringArray>().ok_or("SHOW STREAMS: no names")?;
        for i in 0..names.len() {
            if let Some(n) = names.value(i).strip_prefix("tmp_").and_then(|n| n.parse().ok()) {
                tmp.push(n);
            }
        }
    }
    tmp.sort_unstable();
    println!("READY");
    let stop = AtomicBool::new(false);
    let (subs, sub_rows, ddl) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let result = std::thread::scope(|s| -> BoxResult<()> {
        // A subscriber that comes and goes.
        let subscriber = s.spawn(|| -> BoxResult<()> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
            while !stop.load(Ordering::Relaxed) {
                let sub = db.subscribe("paid")?;
                subs.fetch_add(1, Ordering::Relaxed);
                let until = Instant::now() + Duration::from_millis(rng.random_range(2000..10_000));
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    match sub.next_timeout(Duration::from_millis(200))? {
                        Next::Batch(b) => _ = sub_rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed),
                        Next::Empty => {}
                        Next::End => return Err("the subscription to paid ended".into()),
                    }
                }
            }
            Ok(())
        });
        // Random DDL.
        let ddl_thread = s.spawn(|| -> BoxResult<()> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0x5eed);
            let mut next = tmp.last().map_or(0, |n| n + 1);
            let mut tmp = tmp.clone();
            while !stop.load(Ordering::Relaxed) {
                let wait = Instant::now() + Duration::from_millis(rng.random_range(3000..12_000));
                while Instant::now() < wait && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sql = match rng.random_range(0..3) {
                    0 => format!("CREATE STREAM tmp_{next} AS SELECT id, k FROM orders WHERE v = {}", rng.random_range(0..97)),
                    1 => format!(
                        "CREATE STREAM tmp_{next} AS SELECT k % 10 AS g, COUNT(*) AS c FROM orders GROUP BY k % 10, TUMBLE(ts, INTERVAL '{}' SECOND)",
                        rng.random_range(1..30)
                    ),
                    _ => format!(
                        "CREATE STREAM tmp_{next} AS SELECT o.k, p.amt FROM orders o JOIN payments p ON o.id = p.id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '{}' SECOND",
                        rng.random_range(1..10)
                    ),
                };
                db.execute(&sql).map_err(|e| format!("{sql}: {e}"))?;
                tmp.push(next);
                next += 1;
                ddl.fetch_add(1, Ordering::Relaxed);
                while tmp.len() > 3 {
                    let old = tmp.remove(0);
                    db.execute(&format!("DROP STREAM tmp_{old}")).map_err(|e| format!("DROP STREAM tmp_{old}: {e}"))?;
                    ddl.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        });
        // STOP on standard input (or its end) closes the database.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        loop {
            if rx.recv_timeout(Duration::from_secs(1)).is_ok() {
                break;
            }
            let m = db.metrics()?;
            let late: u64 = m.sources.iter().map(|s| s.rows_late).sum();
            let failed: Vec<String> = m.sinks.iter().filter_map(|s| s.failed.clone()).collect();
            if !failed.is_empty() {
                return Err(format!("a sink failed: {}", failed.join("; ")).into());
            }
            if subscriber.is_finished() || ddl_thread.is_finished() {
                break;
            }
            println!(
                "PROGRESS {} {late} {} {} {} {}",
                m.rows_in,
                subs.load(Ordering::Relaxed),
                sub_rows.load(Ordering::Relaxed),
                ddl.load(Ordering::Relaxed),
                m.checkpoints.completed
            );
        }
        stop.store(true, Ordering::Relaxed);
        subscriber.join().map_err(|_| "the subscriber panicked")??;
        ddl_thread.join().map_err(|_| "the DDL thread panicked")??;
        Ok(())
    });
    db.close();
    result?;
    println!("CLOSED");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The driver.

/// Every committed value of `topic`, read by a `read_committed` consumer up to the partitions'
/// ends.
fn read_committed(b: &str, topic: &str) -> BoxResult<Vec<String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("group.id", format!("soak-reader-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        let (_, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        ends.insert(p.id(), hi);
    }
    c.assign(&tpl)?;
    let mut out = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Done when every partition's position reached its end (transaction markers included).
        let pos = c.position()?;
        let done = ends.iter().all(|(p, hi)| match pos.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= *hi,
            _ => *hi == 0,
        });
        if done {
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(format!("reading {topic}: not at its end after 120 s").into());
        }
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m?;
            if let Some(v) = m.payload() {
                out.push(String::from_utf8(v.to_vec())?);
            }
        }
    }
}

/// `{"a": 1, "b": 2}` → "1|2" in the order of `cols`.
fn row(json: &str, cols: &[&str]) -> BoxResult<String> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let mut parts = vec![];
    for c in cols {
        parts.push(v.get(*c).map(|x| x.to_string()).ok_or_else(|| format!("no {c} in {json}"))?);
    }
    Ok(parts.join("|"))
}

/// What the two sinks must hold for records 0..n: W1's rows and the join's, sorted.
fn oracle(n: u64) -> (Vec<String>, Vec<String>) {
    let mut w: BTreeMap<(u64, u64), (u64, u64, u64, u64)> = BTreeMap::new();
    let mut paid = vec![];
    for i in 0..n {
        let (k, v) = order(i);
        let e = w.entry((k, (T0 + i) / 60_000)).or_insert((0, 0, u64::MAX, 0));
        e.0 += 1;
        e.1 += v;
        e.2 = e.2.min(i);
        e.3 = e.3.max(i);
        if let Some((amt, delay)) = payment(i)
            && delay <= 4000
        {
            paid.push(format!("{i}|{k}|{amt}"));
        }
    }
    let mut w1: Vec<String> = w.iter().map(|((k, _), (c, s, lo, hi))| format!("{k}|{c}|{s}|{lo}|{hi}")).collect();
    w1.sort();
    paid.sort();
    (w1, paid)
}

/// Sizes of everything under `p`, in bytes.
fn du(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok());
    kb.unwrap_or(0.0) / 1024.0
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_worker(args: &[String], log: &Path) -> BoxResult<Worker> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--worker")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(log)?))
        .spawn()?;
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let w = Worker { child, lines };
    match w.lines.recv_timeout(Duration::from_secs(180)) {
        Ok(l) if l == "READY" => Ok(w),
        other => Err(format!(
            "the worker did not start ({other:?}); its log {}:\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        )
        .into()),
    }
}

#[derive(Default, Clone)]
struct Progress {
    rows_in: u64,
    late: u64,
    subs: u64,
    sub_rows: u64,
    ddl: u64,
    checkpoints: u64,
}

fn parse_progress(l: &str) -> Option<Progress> {
    let v: Vec<u64> = l.strip_prefix("PROGRESS ")?.split(' ').filter_map(|x| x.parse().ok()).collect();
    (v.len() == 6).then(|| Progress {
        rows_in: v[0],
        late: v[1],
        subs: v[2],
        sub_rows: v[3],
        ddl: v[4],
        checkpoints: v[5],
    })
}

fn main() -> BoxResult<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--worker") {
        let a = &argv[1..];
        if a.len() != 7 {
            return Err("--worker DIR BROKER ORDERS PAYMENTS OUT_W1 OUT_PAID SEED".into());
        }
        return worker(WorkerArgs {
            dir: a[0].clone(),
            broker: a[1].clone(),
            orders: a[2].clone(),
            payments: a[3].clone(),
            out_w1: a[4].clone(),
            out_paid: a[5].clone(),
            seed: a[6].parse()?,
        });
    }
    let (mut seconds, mut kill_every, mut rate, mut report_every, mut seed) = (1800u64, 300u64, 20_000u64, 30u64, 1u64);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> BoxResult<u64> { Ok(it.next().ok_or(format!("{name} N"))?.parse()?) };
        match a.as_str() {
            "--seconds" => seconds = num("--seconds")?,
            "--kill-every" => kill_every = num("--kill-every")?,
            "--rate" => rate = num("--rate")?,
            "--report-every" => report_every = num("--report-every")?,
            "--seed" => seed = num("--seed")?,
            other => {
                return Err(format!(
                    "unknown argument {other} (use --seconds N, --kill-every N, --rate N records/s, --report-every N, --seed N)"
                )
                .into());
            }
        }
    }
    let b = broker()?;
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let topics = ["orders", "payments", "w1", "paid"].map(|t| format!("soak-{t}-{run}"));
    for t in &topics {
        create_topic(&b, t, PARTITIONS as i32)?;
    }
    let dir = std::env::temp_dir().join(format!("laminar-soak-{run}"));
    let log = std::env::temp_dir().join(format!("laminar-soak-{run}.log"));
    println!(
        "soak: {seconds} s at {rate} orders/s (+ a payment per 3), SIGKILL every {kill_every} s, broker {b}, database {}, worker log {}",
        dir.display(),
        log.display()
    );

    // The producer: `rate` orders a second, paced every 10 ms.
    let produced = Arc::new(AtomicU64::new(0));
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let (b, produced, stop) = (b.clone(), produced.clone(), stop_producing.clone());
        let (orders, payments) = (topics[0].clone(), topics[1].clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .set("enable.idempotence", "true")
                .set("linger.ms", "10")
                .create()
                .map_err(|e| e.to_string())?;
            let send = |topic: &str, part: i32, value: &str| {
                let mut rec = BaseRecord::<(), str>::to(topic).partition(part).payload(value);
                loop {
                    match p.send(rec) {
                        Ok(()) => return,
                        Err((_, r)) => {
                            rec = r;
                            p.poll(Duration::from_millis(5));
                        }
                    }
                }
            };
            let start = Instant::now();
            let mut i = 0u64;
            // Payments wait until the orders reach their event time: each topic is written in
            // event-time order.
            let mut pending: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while i < due {
                    let (k, v) = order(i);
                    let part = (i % PARTITIONS) as i32;
                    send(
                        &orders,
                        part,
                        &format!("{{\"id\": {i}, \"k\": {k}, \"v\": {v}, \"ts\": \"{}\"}}", ts_text(T0 + i)),
                    );
                    if let Some((_, delay)) = payment(i) {
                        pending.push(Reverse((T0 + i + delay, i)));
                    }
                    while let Some(&Reverse((at, j))) = pending.peek() {
                        if at > T0 + i {
                            break;
                        }
                        pending.pop();
                        let (amt, _) = payment(j).unwrap();
                        send(
                            &payments,
                            (j % PARTITIONS) as i32,
                            &format!("{{\"id\": {j}, \"amt\": {amt}, \"ts\": \"{}\"}}", ts_text(at)),
                        );
                    }
                    i += 1;
                }
                p.poll(Duration::ZERO);
                produced.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            // The rest of the payments, then a record far ahead on every partition of both
            // topics: every window closes and the join's state goes.
            while let Some(Reverse((at, j))) = pending.pop() {
                let (amt, _) = payment(j).unwrap();
                send(
                    &payments,
                    (j % PARTITIONS) as i32,
                    &format!("{{\"id\": {j}, \"amt\": {amt}, \"ts\": \"{}\"}}", ts_text(at)),
                );
            }
            let far = ts_text(T0 + i + 3_600_000);
            for part in 0..PARTITIONS as i32 {
                send(&orders, part, &format!("{{\"id\": -1, \"k\": -1, \"v\": 0, \"ts\": \"{far}\"}}"));
                send(&payments, part, &format!("{{\"id\": -2, \"amt\": 0, \"ts\": \"{far}\"}}"));
            }
            p.flush(Duration::from_secs(60)).map_err(|e| e.to_string())?;
            produced.store(i, Ordering::Relaxed);
            Ok(i)
        })
    };

    let args: Vec<String> = vec![dir.display().to_string(), b.clone()]
        .into_iter()
        .chain(topics.iter().cloned())
        .chain([seed.to_string()])
        .collect();
    let mut w = start_worker(&args, &log)?;
    let t0 = Instant::now();
    let (mut next_kill, mut next_report) = (kill_every, 0u64);
    let (mut kills, mut last) = (0u32, Progress::default());
    let mut samples: Vec<(u64, f64, usize, u64, u64, u64)> = vec![];
    println!(
        "{:>6} {:>10} {:>10} {:>8} {:>5} {:>9} {:>8} {:>9} {:>5} {:>5} {:>9} {:>5} {:>5}",
        "t(s)",
        "produced",
        "read",
        "RSS(MB)",
        "fds",
        "dir(MB)",
        "WAL(MB)",
        "ckpt(MB)",
        "ckpts",
        "subs",
        "sub rows",
        "ddl",
        "kills"
    );
    let mut report = |t: u64, w: &Worker, last: &Progress, kills: u32| {
        let pid = w.child.id();
        let (rss, fd) = (rss_mb(pid), fds(pid));
        let (all, wal, ck) = (du(&dir), du(&dir.join("wal")), du(&dir.join("checkpoints")));
        println!(
            "{t:>6} {:>10} {:>10} {rss:>8.1} {fd:>5} {:>9.1} {:>8.1} {:>9.1} {:>5} {:>5} {:>9} {:>5} {kills:>5}",
            produced.load(Ordering::Relaxed),
            last.rows_in,
            all as f64 / 1e6,
            wal as f64 / 1e6,
            ck as f64 / 1e6,
            last.checkpoints,
            last.subs,
            last.sub_rows,
            last.ddl,
        );
        samples.push((t, rss, fd, all, wal, ck));
    };
    while t0.elapsed().as_secs() < seconds {
        while let Ok(l) = w.lines.try_recv() {
            if let Some(p) = parse_progress(&l) {
                if p.late > 0 {
                    return Err(format!("{} rows were late (none should be)", p.late).into());
                }
                last = p;
            }
        }
        if let Some(status) = w.child.try_wait()? {
            return Err(format!(
                "the worker exited ({status}); its log {}:\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
            .into());
        }
        let t = t0.elapsed().as_secs();
        if t >= next_report {
            report(t, &w, &last, kills);
            next_report += report_every;
        }
        if t >= next_kill {
            // SIGKILL, then the same directory opened again.
            drop(w);
            kills += 1;
            last = Progress::default();
            w = start_worker(&args, &log)?;
            next_kill += kill_every;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_producing.store(true, Ordering::Relaxed);
    let n = producer_thread.join().map_err(|_| "the producer panicked")??;
    let (want_w1, want_paid) = oracle(n);
    println!("produced {n} orders; waiting for {} W1 rows and {} join rows", want_w1.len(), want_paid.len());

    // Wait until both sinks hold as many rows as the oracle (or stop growing), then close.
    let wait_until = Instant::now() + Duration::from_secs(600);
    let (mut got_w1, mut got_paid);
    loop {
        got_w1 = read_committed(&b, &topics[2])?;
        got_paid = read_committed(&b, &topics[3])?;
        if got_w1.len() >= want_w1.len() && got_paid.len() >= want_paid.len() {
            break;
        }
        if Instant::now() > wait_until {
            break;
        }
        while let Ok(l) = w.lines.try_recv() {
            if let Some(p) = parse_progress(&l) {
                last = p;
            }
        }
        if w.child.try_wait()?.is_some() {
            return Err(
                format!("the worker exited; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()).into()
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    report(t0.elapsed().as_secs(), &w, &last, kills);
    writeln!(w.child.stdin.as_mut().unwrap(), "STOP")?;
    let closed = w.lines.recv_timeout(Duration::from_secs(120)).ok();
    let mut closed_ok = false;
    for l in closed.into_iter().chain(w.lines.iter()) {
        closed_ok |= l == "CLOSED";
    }
    if !w.child.wait()?.success() || !closed_ok {
        return Err(format!(
            "the worker did not close cleanly; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
        .into());
    }

    // RSS, fds and sizes after warm-up (the second half of the samples): their spread.
    let half = &samples[samples.len() / 2..];
    let span = |f: &dyn Fn(&(u64, f64, usize, u64, u64, u64)) -> f64| {
        let v: Vec<f64> = half.iter().map(f).collect();
        (v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max))
    };
    let (r0, r1) = span(&|s| s.1);
    let (f0, f1) = span(&|s| s.2 as f64);
    let (d0, d1) = span(&|s| s.3 as f64 / 1e6);
    println!(
        "after warm-up ({} samples): RSS {r0:.0}–{r1:.0} MB, fds {f0:.0}–{f1:.0}, directory {d0:.1}–{d1:.1} MB; {kills} SIGKILLs",
        half.len()
    );

    // The outputs against the oracle: every row exactly once.
    let mut g1 =
        got_w1.iter().map(|j| row(j, &["k", "c", "s", "first_id", "last_id"])).collect::<BoxResult<Vec<_>>>()?;
    g1.retain(|r| !r.starts_with("-1|"));
    g1.sort();
    let mut g2 = got_paid.iter().map(|j| row(j, &["id", "k", "amt"])).collect::<BoxResult<Vec<_>>>()?;
    g2.sort();
    let mut ok = true;
    for (name, got, want) in [("w1", &g1, &want_w1), ("paid", &g2, &want_paid)] {
        if got == want {
            println!("{name}: {} rows, equal to the oracle", got.len());
        } else {
            ok = false;
            let (missing, extra) = diff(got, want);
            println!(
                "{name}: {} rows, the oracle {}: {} missing (first {:?}), {} extra or duplicated (first {:?})",
                got.len(),
                want.len(),
                missing.len(),
                missing.iter().take(3).collect::<Vec<_>>(),
                extra.len(),
                extra.iter().take(3).collect::<Vec<_>>()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !ok {
        return Err(format!("the outputs differ from the oracle (worker log {})", log.display()).into());
    }
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// (missing from `got`, extra in `got`) between two sorted lists, duplicates counted.
fn diff(got: &[String], want: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut i, mut j) = (0, 0);
    let (mut missing, mut extra) = (vec![], vec![]);
    while i < got.len() || j < want.len() {
        match (got.get(i), want.get(j)) {
            (Some(g), Some(w)) if g == w => {
                i += 1;
                j += 1;
            }
            (Some(g), Some(w)) if g < w => {
                extra.push(g.clone());
                i += 1;
            }
            (Some(_), Some(w)) => {
                missing.push(w.clone());
                j += 1;
            }
            (Some(g), None) => {
                extra.push(g.clone());
                i += 1;
            }
            (None, Some(w)) => {
                missing.push(w.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (missing, extra)
}
