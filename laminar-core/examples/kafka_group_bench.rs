//! Group mode benchmark (issue 24), against the broker of `scripts/services.sh start kafka`. In
//! one run, on one 12-partition topic of W1-shaped JSON records (key `(i × 2654435761) mod 1000`
//! in partition `key mod 12`, value `(i × 7919) mod 1000`, time `base + i` ms):
//!
//!  (a) throughput: 1, 2 and 3 member processes (this program run again with `--member`) share
//!      a per-key 1-minute TUMBLE (COUNT, SUM, AVG) over the topic into an exactly-once KAFKA
//!      sink, a fresh group each time. Printed: records/s from the members' start (joining the
//!      group and opening the tasks included) until the group's committed offsets reach the
//!      topic's end (they are committed in the sinks' transactions, every 1 s checkpoint, so
//!      "committed" means results published), when the first commit came, and records per
//!      CPU-second of the members together. On a machine with fewer cores than members +
//!      broker, this shows the overhead of more members, not a speed-up.
//!  (b) the rebalance pause: 3 members on a topic fed at a steady rate; one is killed (SIGKILL);
//!      printed: for each of its partitions, the time from the kill until that partition's
//!      committed offset moves again (at least the group's `session.timeout.ms`, here 6 s, for
//!      Kafka to notice the death, then the new owner's restore and its first checkpoint).
//!
//! ```text
//! scripts/services.sh start kafka
//! cargo run --release -p laminar-core --features kafka --example kafka_group_bench -- --records 2000000
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use laminar_core::{Config, Database};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[path = "common/kafka.rs"]
mod kafka;
use kafka::{broker, create_topic, ts_text};

const PARTITIONS: i32 = 12;

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--member") {
        return member(Path::new(&args[1]), &args[2], &std::fs::read_to_string(&args[3])?);
    }
    let mut records: u64 = 300_000;
    let mut feed_seconds: u64 = 20;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--records" => records = it.next().ok_or("--records N")?.parse()?,
            "--feed-seconds" => feed_seconds = it.next().ok_or("--feed-seconds N")?.parse()?,
            other => return Err(format!("unknown argument {other} (use --records N, --feed-seconds N)").into()),
        }
    }
    let b = broker()?;
    let run = format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let root = std::env::temp_dir().join(format!("laminar-group-bench-{run}"));
    std::fs::create_dir_all(&root)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("group mode benchmark: {records} records, {PARTITIONS} partitions, {cores} cores");

    // (a) throughput with 1, 2, 3 members over the same records.
    let input = format!("group-bench-in-{run}");
    create_topic(&b, &input, PARTITIONS)?;
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &b).set("linger.ms", "20").create()?;
    let mut ends = vec![0i64; PARTITIONS as usize];
    for i in 0..records {
        send_w1(&p, &input, i, &mut ends);
    }
    p.flush(Duration::from_secs(60))?;
    let mut base = 0.0;
    for members in 1..=3 {
        let (group, output) = (format!("group-bench-{members}-{run}"), format!("group-bench-out-{members}-{run}"));
        create_topic(&b, &output, 1)?;
        let sql = pipeline(&b, &input, &output, &group);
        let dir = root.join(format!("a{members}"));
        let sql_file = root.join(format!("a{members}.sql"));
        std::fs::write(&sql_file, &sql)?;
        let t0 = Instant::now();
        let mut ms: Vec<Member> = (0..members)
            .map(|m| Member::start(&dir, &format!("m{m}"), &dir.join("shared"), &sql_file))
            .collect::<BoxResult<_>>()?;
        let (first, last) = wait_committed(&b, &group, &input, &ends, t0, Duration::from_secs(600))?;
        let cpu: f64 = ms.iter().map(Member::cpu_seconds).sum();
        for m in ms.iter_mut() {
            m.leave()?;
        }
        let secs = last.as_secs_f64().max(1e-3);
        let rate = records as f64 / secs;
        if members == 1 {
            base = rate;
        }
        println!(
            "  {members} member(s): {:>9.0} records/s ({:.2} s from the members' start to the last commit, the first after {:.2} s), {:>9.0} records per CPU-second of the members, {:.2}x one member",
            rate,
            secs,
            first.as_secs_f64(),
            records as f64 / cpu.max(1e-3),
            rate / base
        );
    }
    if cores < 5 {
        println!(
            "  ({cores} cores for up to 3 members and the broker: these figures show what more members cost, not a speed-up)"
        );
    }

    // (b) the rebalance pause: a steady feed, 3 members, one killed.
    let input = format!("group-bench-feed-{run}");
    let (group, output) = (format!("group-bench-kill-{run}"), format!("group-bench-kill-out-{run}"));
    create_topic(&b, &input, PARTITIONS)?;
    create_topic(&b, &output, 1)?;
    let sql = pipeline(&b, &input, &output, &group);
    let dir = root.join("b");
    let sql_file = root.join("b.sql");
    std::fs::write(&sql_file, &sql)?;
    let mut ms: Vec<Member> = (0..3)
        .map(|m| Member::start(&dir, &format!("m{m}"), &dir.join("shared"), &sql_file))
        .collect::<BoxResult<_>>()?;
    let stop_feed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (b, input, stop) = (b.clone(), input.clone(), stop_feed.clone());
        std::thread::spawn(move || -> BoxResult<u64> {
            let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &b).set("linger.ms", "5").create()?;
            let mut ends = vec![0i64; PARTITIONS as usize];
            let mut i = 0u64;
            let t0 = Instant::now();
            // 2,000 records a second: every partition moves several times a second.
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let due = t0.elapsed().as_millis() as u64 * 2;
                while i < due {
                    send_w1(&p, &input, i, &mut ends);
                    i += 1;
                }
                p.poll(Duration::from_millis(5));
            }
            p.flush(Duration::from_secs(30))?;
            Ok(i)
        })
    };
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).set("group.id", &group).create()?;
    // Steady state: every partition committed at least twice, members all owning partitions.
    let warm = Instant::now();
    loop {
        let owned: Vec<usize> = ms.iter().map(|m| m.status().len()).collect();
        if owned.iter().sum::<usize>() == PARTITIONS as usize
            && owned.iter().all(|n| *n > 0)
            && committed(&c, &input)?.iter().all(|o| *o > 0)
        {
            break;
        }
        if warm.elapsed() > Duration::from_secs(120) {
            return Err(format!("the group did not settle in 120 s: {owned:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(feed_seconds.min(5)));
    let victim = ms.remove(0);
    let parts: Vec<i32> = victim.status().iter().map(|s| s.0).collect();
    let at_kill = committed(&c, &input)?;
    let t_kill = Instant::now();
    drop(victim); // SIGKILL
    let mut resumed: Vec<Option<Duration>> = vec![None; parts.len()];
    while resumed.iter().any(Option::is_none) && t_kill.elapsed() < Duration::from_secs(120) {
        let now = committed(&c, &input)?;
        for (i, p) in parts.iter().enumerate() {
            if resumed[i].is_none() && now[*p as usize] > at_kill[*p as usize] {
                resumed[i] = Some(t_kill.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_feed.store(true, std::sync::atomic::Ordering::Release);
    let fed = feeder.join().map_err(|_| "the feeder panicked")??;
    let pauses: Vec<String> = parts
        .iter()
        .zip(&resumed)
        .map(|(p, d)| match d {
            Some(d) => format!("p{p} {:.2} s", d.as_secs_f64()),
            None => format!("p{p} not resumed in 120 s"),
        })
        .collect();
    let worst = resumed.iter().flatten().max().map_or(f64::NAN, Duration::as_secs_f64);
    println!(
        "  rebalance pause after a SIGKILL (3 members, 2,000 records/s fed, session.timeout.ms 6000, checkpoints every 1 s): {worst:.2} s until all of its partitions committed again ({})",
        pauses.join(", ")
    );
    for m in ms.iter_mut() {
        m.leave()?;
    }
    println!("  ({fed} records fed during the pause run)");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// W1's event `i`, in the partition of its key.
fn send_w1(p: &BaseProducer, topic: &str, i: u64, ends: &mut [i64]) {
    let key = (i * 2_654_435_761) % 1000;
    let value = (i * 7919) % 1000;
    let part = (key % PARTITIONS as u64) as i32;
    let payload = format!("{{\"v\": {value}, \"ts\": \"{}\"}}", ts_text(1_700_000_000_000 + i));
    let k = key.to_string();
    let mut rec = BaseRecord::<str, str>::to(topic).partition(part).key(&k).payload(&payload);
    loop {
        match p.send(rec) {
            Ok(()) => break,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(5));
            }
        }
    }
    ends[part as usize] += 1;
}

fn pipeline(b: &str, input: &str, output: &str, group: &str) -> String {
    format!(
        "CREATE SOURCE s (_key VARCHAR, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
             FROM KAFKA WITH (topic = '{input}', 'properties.bootstrap.servers' = '{b}', format = 'json',
                 'properties.group.id' = '{group}', 'scan.startup.mode' = 'group-offsets',
                 'properties.session.timeout.ms' = '6000', 'properties.heartbeat.interval.ms' = '500');
         CREATE STREAM w AS SELECT _key AS k, window_start AS ws, COUNT(*) AS n, SUM(v) AS s, AVG(v) AS a
             FROM s GROUP BY _key, TUMBLE(ts, INTERVAL '1' MINUTE);
         CREATE SINK out FROM w INTO KAFKA WITH (topic = '{output}', 'properties.bootstrap.servers' = '{b}', key = 'k')"
    )
}

/// The group's committed offset of each partition (-1: none).
fn committed(c: &BaseConsumer, topic: &str) -> BoxResult<Vec<i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    Ok(c.committed_offsets(tpl, Duration::from_secs(10))?
        .elements()
        .iter()
        .map(|e| if let Offset::Offset(o) = e.offset() { o } else { -1 })
        .collect())
}

/// Waits until the group's committed offsets reach `ends`: (first commit, last), since `t0`.
fn wait_committed(
    b: &str,
    group: &str,
    topic: &str,
    ends: &[i64],
    t0: Instant,
    limit: Duration,
) -> BoxResult<(Duration, Duration)> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", b).set("group.id", group).create()?;
    let mut first = None;
    loop {
        let now = committed(&c, topic)?;
        if first.is_none() && now.iter().any(|o| *o > 0) {
            first = Some(t0.elapsed());
        }
        if now.iter().zip(ends).all(|(o, e)| o >= e) {
            return Ok((first.unwrap_or_default(), t0.elapsed()));
        }
        if t0.elapsed() > limit {
            return Err(format!("group '{group}' did not commit every record in {limit:?}: {now:?} of {ends:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A member process of this benchmark.
struct Member {
    dir: PathBuf,
    child: std::process::Child,
}

impl Member {
    fn start(root: &Path, name: &str, shared: &Path, sql_file: &Path) -> BoxResult<Member> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("--member")
            .arg(&dir)
            .arg(shared)
            .arg(sql_file)
            .spawn()?;
        Ok(Member { dir, child })
    }

    /// (partition, position) of the partitions the member owns, as it last wrote them.
    fn status(&self) -> Vec<(i32, i64)> {
        std::fs::read_to_string(self.dir.join("status"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
            .collect()
    }

    /// CPU seconds (user + system) the member process has used.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    fn leave(&mut self) -> BoxResult<()> {
        std::fs::write(self.dir.join("stop"), "")?;
        let t = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t.elapsed() > Duration::from_secs(60) {
                return Err(format!("member {} did not leave in 60 s", self.dir.display()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--member DIR SHARED SQL_FILE`: one member; writes the partitions it owns to DIR/status every
/// 100 ms; leaves the group when DIR/stop appears.
fn member(dir: &Path, shared: &str, sql: &str) -> BoxResult<()> {
    let mut cfg = Config::default();
    cfg.set("shared_dir", shared)?;
    cfg.set("checkpoint_interval", "1s")?;
    let db = Database::open(&dir.display().to_string(), cfg)?;
    db.execute(sql)?;
    let parent = std::os::unix::process::parent_id();
    loop {
        if std::os::unix::process::parent_id() != parent {
            return Ok(()); // the benchmark is gone: so is this member
        }
        if dir.join("stop").exists() {
            db.close();
            return Ok(());
        }
        let mut text = String::new();
        for b in db.execute("SHOW PARTITIONS")?.batches {
            let p = b.column(1).as_any().downcast_ref::<laminar_core::arrow::array::Int64Array>().ok_or("partition")?;
            for i in 0..b.num_rows() {
                text.push_str(&format!("{} 0\n", p.value(i)));
            }
        }
        std::fs::write(dir.join("status.tmp"), text)?;
        std::fs::rename(dir.join("status.tmp"), dir.join("status"))?;
        std::thread::sleep(Duration::from_millis(100));
    }
}
