//! The KAFKA connector against a real broker (`scripts/services.sh start kafka`; its address is
//! read from `$LAMINAR_KAFKA` or `<target dir>/services.env`). Events are produced and results
//! read back by plain rdkafka clients outside the engine (a non-transactional producer, a
//! `read_committed` consumer), and compared with DataFusion over the same events.
#![cfg(feature = "kafka")]

mod common;

use std::time::{Duration, Instant};

use common::{difference, iso, rows_in, sorted, tumble_10s_oracle as oracle, wait_rows};
use laminar_core::{Config, Database, ErrorKind};
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// The group-mode tests run several members (processes, with a dozen Kafka clients each): they
/// run alone, the other tests side by side, so that none waits on a broker busy with another's
/// rebalances.
static HEAVY: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The broker of `scripts/services.sh start kafka`.
fn broker() -> String {
    if let Ok(b) = std::env::var("LAMINAR_KAFKA") {
        return b;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(root.join("target"));
    let env = std::fs::read_to_string(target.join("services.env")).unwrap_or_default();
    env.lines().find_map(|l| l.strip_prefix("LAMINAR_KAFKA=")).map(str::to_string).unwrap_or_else(|| {
        panic!(
            "no Kafka broker: run `scripts/services.sh start kafka` (it writes LAMINAR_KAFKA to {}/services.env)",
            target.display()
        )
    })
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{n}", std::process::id())
}

fn create_topic(b: &str, name: &str, partitions: i32) {
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", b).create().unwrap();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = futures::executor::block_on(admin.create_topics(&[t], &AdminOptions::new())).unwrap();
    for r in res {
        r.unwrap();
    }
    // The broker answers before every metadata request sees the topic: wait until one does, so
    // that a reader opening next finds all of it.
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", b).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = c.fetch_metadata(Some(name), Duration::from_secs(5)).unwrap();
        let t = md.topics().iter().find(|t| t.name() == name);
        if t.is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize) {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} not in the metadata 30 s after its creation");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn producer(b: &str) -> BaseProducer {
    ClientConfig::new().set("bootstrap.servers", b).set("linger.ms", "5").create().unwrap()
}

fn send(p: &BaseProducer, topic: &str, partition: i32, value: &str) {
    let mut rec = BaseRecord::<(), str>::to(topic).partition(partition).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

/// Every committed record of `topic` (all partitions), read by a `read_committed` consumer up to
/// the partitions' ends.
fn read_committed(b: &str, topic: &str) -> Vec<String> {
    read_records(b, topic).into_iter().map(|(_, v)| v.unwrap_or_default()).collect()
}

/// Every committed record of `topic` as (key, value), `None` for a missing key or a tombstone.
fn read_records(b: &str, topic: &str) -> Vec<(Option<String>, Option<String>)> {
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8(b).unwrap());
    read_bytes(b, topic).into_iter().map(|(k, v)| (text(k), text(v))).collect()
}

/// Every committed record of `topic` as (key, value) bytes.
fn read_bytes(b: &str, topic: &str) -> Vec<(Option<Vec<u8>>, Option<Vec<u8>>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = vec![];
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
        ends.push(c.fetch_watermarks(topic, *p, Duration::from_secs(10)).unwrap().1);
    }
    c.assign(&tpl).unwrap();
    let mut out = vec![];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
        }
        let pos = c.position().unwrap();
        let done = parts.iter().zip(&ends).all(|(p, end)| match pos.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= *end,
            _ => *end == 0,
        });
        if done {
            return out;
        }
        assert!(Instant::now() < deadline, "reading '{topic}' back did not reach the partitions' ends in 60 s");
    }
}

type Row = (i64, i64, i64); // k, v, ts (ms)

const PARTITIONS: i32 = 4;

/// Events over 4 partitions, out of order within each partition by less than the watermark's
/// 1 s delay (none is late).
fn events(rng: &mut rand::rngs::SmallRng, n: usize, t0: i64) -> Vec<(i32, Row)> {
    (0..n)
        .map(|i| {
            let ts = t0 + i as i64 * 3 + rng.random_range(0..500);
            (rng.random_range(0..PARTITIONS), (rng.random_range(0..5), rng.random_range(-100..100), ts))
        })
        .collect()
}

fn json(r: &Row) -> String {
    format!("{{\"k\": {}, \"v\": {}, \"ts\": \"{}\"}}", r.0, r.1, iso(r.2))
}

#[test]
fn kafka_to_windowed_aggregate_to_kafka_exactly_once_across_a_crash_and_a_restart() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&b, &input, PARTITIONS);
    create_topic(&b, &output, 1);
    let dir = common_tmp("kafka-e2e");
    let sql = format!(
        "CREATE SOURCE s (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             FROM KAFKA WITH (topic = '{input}', 'properties.bootstrap.servers' = '{b}', format = 'json');
         CREATE STREAM agg AS SELECT k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
             FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND);
         CREATE SINK out FROM agg INTO KAFKA WITH (topic = '{output}', 'properties.bootstrap.servers' = '{b}', key = 'k')"
    );
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "0").unwrap();
    let p = producer(&b);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let mut all: Vec<Row> = vec![];
    let mut db = Database::open(&dir, cfg.clone()).unwrap();
    db.execute(&sql).unwrap();
    for round in 0..5 {
        let evs = events(&mut rng, 3000, 1_000_000 + round * 20_000);
        for (part, r) in &evs {
            send(&p, &input, *part, &json(r));
        }
        p.flush(Duration::from_secs(30)).unwrap();
        all.extend(evs.iter().map(|e| e.1));
        match round {
            2 => {
                // A crash: what was read since the checkpoint is read again, and the sink's open
                // transaction is aborted by the next incarnation.
                wait_rows(&db, all.len() as u64);
                db.close_abruptly();
                db = Database::open(&dir, cfg.clone()).unwrap();
            }
            3 => {
                wait_rows(&db, all.len() as u64);
                db.close();
                db = Database::open(&dir, cfg.clone()).unwrap();
            }
            _ => {}
        }
        wait_rows(&db, all.len() as u64);
        db.checkpoint().unwrap();
    }
    assert_eq!(rows_in(&db), all.len() as u64, "each record read once");
    // A record far in the future on every partition closes every window.
    for part in 0..PARTITIONS {
        send(&p, &input, part, &json(&(-1, 0, 4_000_000_000_000)));
    }
    p.flush(Duration::from_secs(30)).unwrap();
    wait_rows(&db, all.len() as u64 + PARTITIONS as u64);
    db.checkpoint().unwrap();
    let m = db.metrics().unwrap();
    assert_eq!(m.sources[0].rows_late, 0);
    let committed = m.sinks[0].counters.iter().find(|c| c.0 == "transactions_committed").map(|c| c.1);
    assert!(committed.is_some_and(|n| n >= 1), "{:?}", m.sinks[0]);
    db.close();

    let got: Vec<String> = {
        let mut v: Vec<String> = read_committed(&b, &output)
            .iter()
            .map(|line| {
                let j: serde_like::Obj = serde_like::parse(line);
                format!("{}|{}|{}|{}", j.get("k"), j.get("ws").trim_matches('"'), j.get("s"), j.get("n"))
            })
            .filter(|r| !r.starts_with("-1|"))
            .collect();
        v.sort();
        v
    };
    let want = oracle(&all);
    assert_eq!(got, want, "{}", difference(&got, &want));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_topic_bad_records_and_options_give_clear_errors() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let db = Database::open_in_memory().unwrap();
    // A sink's topic is checked at CREATE SINK.
    db.execute("CREATE SOURCE src (k BIGINT, v BIGINT)").unwrap();
    let e = db
        .execute(&format!(
            "CREATE SINK o FROM src INTO KAFKA WITH (topic = '{}', 'properties.bootstrap.servers' = '{b}')",
            unique("no-such-topic")
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("does not exist on brokers"), "{e}");
    // Options.
    let e = db
        .execute(&format!(
            "CREATE SOURCE x (a BIGINT) FROM KAFKA WITH (topic = 't', 'properties.bootstrap.servers' = '{b}', 'scan.startup.mod' = 'earliest-offset')"
        ))
        .unwrap_err();
    assert!(e.message().contains("did you mean 'scan.startup.mode'"), "{e}");
    let e = db.execute("CREATE SOURCE x (a BIGINT) FROM KAFKA WITH (topic = 't')").unwrap_err();
    assert!(e.message().contains("'properties.bootstrap.servers' is required"), "{e}");

    // A missing source topic fails the streams reading the source, naming the topic.
    let missing = unique("missing");
    db.execute(&format!(
        "CREATE SOURCE m (a BIGINT) FROM KAFKA WITH (topic = '{missing}', 'properties.bootstrap.servers' = '{b}');
         CREATE STREAM ms AS SELECT a FROM m"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = db.metrics().unwrap();
        if let Some(f) = m.streams.iter().find(|s| s.name == "ms").and_then(|s| s.failed.clone()) {
            assert!(f.contains(&missing) && f.contains("does not exist"), "{f}");
            break;
        }
        assert!(Instant::now() < deadline, "the stream over a missing topic did not fail");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Malformed records: `skip` drops them (and reads the rest, with the metadata columns);
    // `fail` stops with the partition and offset.
    let topic = unique("bad");
    create_topic(&b, &topic, 1);
    let p = producer(&b);
    for i in 0..10 {
        let v = if i == 4 { "{not json".to_string() } else { format!("{{\"a\": {i}}}") };
        send(&p, &topic, 0, &v);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    db.execute(&format!(
        "CREATE SOURCE ok (a BIGINT, _partition INT, _offset BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', on_error = 'skip');
         CREATE MATERIALIZED VIEW okv AS SELECT a, _partition, _offset FROM ok;
         CREATE SOURCE bad (a BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}');
         CREATE STREAM bads AS SELECT a FROM bad"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        db.flush().unwrap();
        let m = db.metrics().unwrap();
        let ok_rows = m.sources.iter().find(|s| s.name == "ok").unwrap().rows_in;
        let failed = m.streams.iter().find(|s| s.name == "bads").and_then(|s| s.failed.clone());
        if let (9, Some(f)) = (ok_rows, &failed) {
            assert!(f.contains("partition 0 offset 4"), "{f}");
            break;
        }
        assert!(Instant::now() < deadline, "ok read {ok_rows} rows; bads failed: {failed:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The reader's counters: every record read, one malformed, the next offset 10.
    let m = db.metrics().unwrap();
    let ok = m.sources.iter().find(|s| s.name == "ok").unwrap();
    let (p, st) = &ok.partitions[0];
    assert_eq!((p.as_str(), st.records, st.malformed, st.position), ("0", 10, 1, Some(10)), "{st:?}");
    let rows = sorted(&db.query("SELECT a, _partition, _offset FROM okv").unwrap());
    let want: Vec<String> = (0..10).filter(|i| *i != 4).map(|i| format!("{i}|0|{i}")).collect();
    let mut want = want;
    want.sort();
    assert_eq!(rows, want);
}

fn common_tmp(name: &str) -> String {
    common::tmpdir(name).display().to_string()
}

/// A tiny reader of the flat JSON objects the sink writes (numbers and strings only), so the
/// test does not read them with the engine's own decoder.
mod serde_like {
    use std::collections::HashMap;
    pub struct Obj(HashMap<String, String>);
    impl Obj {
        pub fn get(&self, k: &str) -> &str {
            self.0.get(k).map(String::as_str).unwrap_or_else(|| panic!("no '{k}' in {:?}", self.0))
        }
    }
    pub fn parse(s: &str) -> Obj {
        let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
        let mut m = HashMap::new();
        for part in inner.split(',') {
            let (k, v) = part.split_once(':').unwrap_or_else(|| panic!("not a flat object: {s}"));
            m.insert(k.trim().trim_matches('"').to_string(), v.trim().to_string());
        }
        Obj(m)
    }
}

fn send_at(p: &BaseProducer, topic: &str, partition: i32, ts_ms: i64, value: &str) {
    let rec = BaseRecord::<(), str>::to(topic).partition(partition).timestamp(ts_ms).payload(value);
    p.send(rec).map_err(|(e, _)| e).unwrap();
}

fn mv_rows(db: &Database, sql: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = sorted(&db.query(sql).unwrap());
        if rows.len() >= n {
            return rows;
        }
        assert!(Instant::now() < deadline, "{} of {n} rows: {rows:?}", rows.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn topic_pattern_the_topic_column_and_startup_modes() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let u = unique("pat");
    let (ta, tb) = (format!("{u}-a"), format!("{u}-b"));
    create_topic(&b, &ta, 2);
    create_topic(&b, &tb, 1);
    let p = producer(&b);
    for i in 0..4 {
        send_at(&p, &ta, 0, 1000 + i, &format!("{{\"x\": {i}}}"));
    }
    send_at(&p, &ta, 1, 1000, "{\"x\": 4}");
    for i in 10..13 {
        send_at(&p, &tb, 0, 5000 + i, &format!("{{\"x\": {i}}}"));
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let db = Database::open_in_memory().unwrap();
    // Both topics, with the topic, partition and offset of each record.
    db.execute(&format!(
        "CREATE SOURCE both (x BIGINT, _topic VARCHAR, _partition INT, _offset BIGINT)
             FROM KAFKA WITH ('topic-pattern' = '{u}-[ab]', 'properties.bootstrap.servers' = '{b}');
         CREATE MATERIALIZED VIEW both_v AS SELECT x, _topic, _partition, _offset FROM both"
    ))
    .unwrap();
    let rows = mv_rows(&db, "SELECT x, _topic, _partition, _offset FROM both_v", 8);
    let mut want: Vec<String> = (0..4).map(|i| format!("{i}|{ta}|0|{i}")).collect();
    want.push(format!("4|{ta}|1|0"));
    want.extend((10..13).map(|i| format!("{i}|{tb}|0|{}", i - 10)));
    want.sort();
    assert_eq!(rows, want);
    let m = db.metrics().unwrap();
    let parts: Vec<&str> = m.sources[0].partitions.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(parts, vec![format!("{ta}/0"), format!("{ta}/1"), format!("{tb}/0")]);
    let e = db
        .execute(&format!(
            "CREATE SOURCE bad (x BIGINT) FROM KAFKA WITH (topic = 't', 'topic-pattern' = 'u', 'properties.bootstrap.servers' = '{b}')"
        ))
        .unwrap_err();
    assert!(e.message().contains("'topic' or 'topic-pattern', not both"), "{e}");

    // From a time: the records of `ta` at or after 1002 ms.
    db.execute(&format!(
        "CREATE SOURCE since (x BIGINT) FROM KAFKA WITH (topic = '{ta}', 'properties.bootstrap.servers' = '{b}',
             'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '1002');
         CREATE MATERIALIZED VIEW since_v AS SELECT x FROM since"
    ))
    .unwrap();
    assert_eq!(mv_rows(&db, "SELECT x FROM since_v", 2), vec!["2", "3"]);

    // From the end: nothing already in the topic, then what is written while it runs.
    db.execute(&format!(
        "CREATE SOURCE latest (x BIGINT) FROM KAFKA WITH (topic = '{tb}', 'properties.bootstrap.servers' = '{b}',
             'scan.startup.mode' = 'latest-offset');
         CREATE MATERIALIZED VIEW latest_v AS SELECT x FROM latest"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut x = 100;
    while sorted(&db.query("SELECT x FROM latest_v").unwrap()).is_empty() {
        assert!(Instant::now() < deadline, "the latest-offset source read nothing written after it started");
        send_at(&p, &tb, 0, 9000, &format!("{{\"x\": {x}}}"));
        p.flush(Duration::from_secs(10)).unwrap();
        x += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = sorted(&db.query("SELECT x FROM latest_v").unwrap());
    assert!(rows.iter().all(|r| r.parse::<i64>().unwrap() >= 100), "{rows:?}");
}

/// Partition discovery: topics created after the reader opened that match `topic-pattern`, and
/// partitions added to a topic being read, are found while it runs and read from their
/// beginning although the source starts at the latest offset; a partition found with nothing
/// read yet is read from its beginning after a restart too; nothing twice.
#[test]
fn new_topics_and_partitions_are_found_while_the_source_runs() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let u = unique("disc");
    let (ta, tb, tc) = (format!("{u}-a"), format!("{u}-b"), format!("{u}-c"));
    create_topic(&b, &ta, 1);
    let p = producer(&b);
    for i in 0..4 {
        send(&p, &ta, 0, &format!("{{\"x\": {i}}}"));
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let dir = common_tmp("kafka-discovery");
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "0").unwrap();
    let db = Database::open(&dir, cfg.clone()).unwrap();
    db.execute(&format!(
        "CREATE SOURCE s (x BIGINT, _topic VARCHAR, _partition INT) FROM KAFKA WITH (
             'topic-pattern' = '{u}-.*', 'properties.bootstrap.servers' = '{b}',
             'scan.startup.mode' = 'latest-offset', 'scan.topic-partition-discovery.interval' = '200ms');
         CREATE MATERIALIZED VIEW v AS SELECT x, _topic, _partition FROM s"
    ))
    .unwrap();
    let partitions = |db: &Database| -> Vec<String> {
        db.metrics().unwrap().sources[0].partitions.iter().map(|(k, _)| k.clone()).collect()
    };
    // The reader has opened (and resolved the pattern) once its partition has counters.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partitions(&db).contains(&format!("{ta}/0")) {
        assert!(Instant::now() < deadline, "the reader did not open: {:?}", partitions(&db));
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new topic of two partitions, and two partitions added to the one being read.
    create_topic(&b, &tb, 2);
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    let more = rdkafka::admin::NewPartitions::new(&ta, 3);
    for r in futures::executor::block_on(admin.create_partitions(&[more], &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
    let p = producer(&b); // one that knows the new partitions
    send(&p, &tb, 0, "{\"x\": 20}");
    send(&p, &tb, 1, "{\"x\": 21}");
    send(&p, &ta, 1, "{\"x\": 30}");
    send(&p, &ta, 2, "{\"x\": 31}");
    p.flush(Duration::from_secs(30)).unwrap();
    let mut want = vec![format!("20|{tb}|0"), format!("21|{tb}|1"), format!("30|{ta}|1"), format!("31|{ta}|2")];
    want.sort();
    assert_eq!(
        mv_rows(&db, "SELECT x, _topic, _partition FROM v", 4),
        want,
        "the records already in {ta}/0 are not read (latest-offset)"
    );
    let mut parts = partitions(&db);
    parts.sort();
    let mut want_parts =
        vec![format!("{ta}/0"), format!("{ta}/1"), format!("{ta}/2"), format!("{tb}/0"), format!("{tb}/1")];
    want_parts.sort();
    assert_eq!(parts, want_parts);

    // A topic found while the source runs, with nothing in it before a restart.
    create_topic(&b, &tc, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partitions(&db).contains(&format!("{tc}/0")) {
        assert!(Instant::now() < deadline, "{tc} was not found: {:?}", partitions(&db));
        std::thread::sleep(Duration::from_millis(50));
    }
    // A record read after the new partition was named: once it is in, so is the name.
    send(&p, &ta, 0, "{\"x\": 49}");
    p.flush(Duration::from_secs(30)).unwrap();
    mv_rows(&db, "SELECT x FROM v", 5);
    db.checkpoint().unwrap();
    db.close();
    send(&p, &tc, 0, "{\"x\": 50}");
    p.flush(Duration::from_secs(30)).unwrap();
    let db = Database::open(&dir, cfg).unwrap();
    want.push(format!("49|{ta}|0"));
    want.push(format!("50|{tc}|0"));
    want.sort();
    assert_eq!(mv_rows(&db, "SELECT x, _topic, _partition FROM v", 6), want);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sorted(&db.query("SELECT x, _topic, _partition FROM v").unwrap()), want, "nothing read twice");
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// 1 % of the records malformed: `skip` counts them, `dead_letter` gives each (payload, key,
/// partition, offset, error) to a source of its own; the totals add up to the input, a restart
/// from the checkpoint gives none twice, and each checkpoint's offsets become the consumer
/// group's committed offsets.
#[test]
fn one_percent_malformed_skip_and_dead_letter_add_up_and_group_offsets_follow_checkpoints() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let topic = unique("dlq");
    create_topic(&b, &topic, 2);
    let p = producer(&b);
    // Record i goes to partition i % 2; every 100th is not JSON.
    let value = |i: usize| if i % 100 == 7 { format!("{{broken {i}") } else { format!("{{\"a\": {i}}}") };
    let write = |from: usize, to: usize| {
        for i in from..to {
            let v = value(i);
            let rec = BaseRecord::<str, str>::to(&topic).partition((i % 2) as i32).key("k").payload(&v);
            p.send(rec).map_err(|(e, _)| e).unwrap();
            if i % 500 == 0 {
                p.poll(Duration::ZERO);
            }
        }
        p.flush(Duration::from_secs(30)).unwrap();
    };
    write(0, 2000);
    let dir = common_tmp("kafka-dlq");
    let open = || {
        let mut cfg = Config::default();
        cfg.set("durability", "checkpoint").unwrap();
        cfg.set("checkpoint_interval", "1h").unwrap();
        Database::open(&dir, cfg).unwrap()
    };
    let group = unique("group");
    let db = open();
    db.execute(&format!(
        "CREATE SOURCE s (a BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}',
             'properties.group.id' = '{group}', on_error = 'dead_letter', dead_letter = 's_bad');
         CREATE MATERIALIZED VIEW good AS SELECT a FROM s;
         CREATE MATERIALIZED VIEW bad AS SELECT source_name, partition_name, record_position,
             CAST(record_key AS VARCHAR) AS k, CAST(payload AS VARCHAR) AS payload, error FROM s_bad;
         CREATE SOURCE sk (a BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', on_error = 'skip');
         CREATE MATERIALIZED VIEW skipped AS SELECT a FROM sk"
    ))
    .unwrap();
    // `since`: where this run's reader started (its counters count from there).
    let check = |db: &Database, n: usize, since: usize| {
        let bad_want: Vec<usize> = (0..n).filter(|i| i % 100 == 7).collect();
        let good = mv_rows(db, "SELECT a FROM good", n - bad_want.len());
        let bad =
            mv_rows(db, "SELECT record_position, partition_name, k, payload, source_name FROM bad", bad_want.len());
        assert_eq!(good.len() + bad.len(), n, "good {} + dead letters {} != {n}", good.len(), bad.len());
        let mut want_good: Vec<String> = (0..n).filter(|i| i % 100 != 7).map(|i| i.to_string()).collect();
        want_good.sort();
        assert_eq!(good, want_good);
        // Partition p holds records p, p+2, …: record i is at offset i / 2.
        let mut want_bad: Vec<String> =
            bad_want.iter().map(|i| format!("{}|{}|k|{}|s", i / 2, i % 2, value(*i))).collect();
        want_bad.sort();
        assert_eq!(bad, want_bad);
        let errors = sorted(&db.query("SELECT error FROM bad").unwrap());
        assert!(errors.iter().all(|e| !e.is_empty()), "{errors:?}");
        let m = db.metrics().unwrap();
        let s = m.sources.iter().find(|s| s.name == "s").unwrap();
        let malformed: u64 = s.partitions.iter().map(|(_, st)| st.malformed).sum();
        assert_eq!(malformed as usize, bad_want.iter().filter(|i| **i >= since).count());
    };
    check(&db, 2000, 0);
    // `skip` over the same records: counted, not read.
    let skipped = mv_rows(&db, "SELECT a FROM skipped", 1980);
    assert_eq!(skipped.len(), 1980);
    let m = db.metrics().unwrap();
    let sk = m.sources.iter().find(|s| s.name == "sk").unwrap();
    assert_eq!(sk.partitions.iter().map(|(_, st)| st.malformed).sum::<u64>(), 20);

    // A checkpoint: its offsets (1000 per partition) become the group's committed offsets.
    db.checkpoint().unwrap();
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    tpl.add_partition(&topic, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = c.committed_offsets(tpl.clone(), Duration::from_secs(10)).unwrap();
        let offs: Vec<Offset> = got.elements().iter().map(|e| e.offset()).collect();
        if offs == vec![Offset::Offset(1000), Offset::Offset(1000)] {
            break;
        }
        assert!(Instant::now() < deadline, "the group's committed offsets are {offs:?}, not 1000 and 1000");
        std::thread::sleep(Duration::from_millis(100));
    }

    // More records, some read before the crash (not checkpointed); after the restart the
    // replay from the checkpoint gives every dead letter once.
    write(2000, 2300);
    check(&db, 2300, 0);
    db.close_abruptly();
    write(2300, 2400);
    // Reopened: the reader starts at the checkpoint's offsets (1000 and 1000), so it reads
    // records 2000.. again, and their dead letters are not repeated.
    let db = open();
    check(&db, 2400, 2000);
    // A second dead-letter option naming something that is not a dead-letter source.
    let e = db
        .execute(&format!(
            "CREATE SOURCE s2 (a BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', on_error = 'dead_letter', dead_letter = 'good')"
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = db
        .execute(&format!(
            "CREATE SOURCE s3 (a BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', on_error = 'dead_letter')"
        ))
        .unwrap_err();
    assert!(e.message().contains("needs the option 'dead_letter'"), "{e}");
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A changelog stream (a table's rows: inserts, an update, a delete) into two sinks keyed by
/// `k`: `json` upserts (the update one record, the delete a tombstone) and `debezium-json`
/// envelopes (c, u, d), read back by an independent consumer.
#[test]
fn a_changelog_stream_as_upserts_with_tombstones_and_as_debezium_envelopes() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let (up, dbz, plain) = (unique("upsert"), unique("debezium"), unique("weights"));
    for t in [&up, &dbz, &plain] {
        create_topic(&b, t, 1);
    }
    let db = Database::open_in_memory().unwrap();
    db.execute(&format!(
        "CREATE TABLE t (k BIGINT, v BIGINT, PRIMARY KEY (k));
         CREATE STREAM tv AS SELECT k, v FROM t;
         CREATE SINK up FROM tv INTO KAFKA WITH (topic = '{up}', 'properties.bootstrap.servers' = '{b}', key = 'k');
         CREATE SINK dbz FROM tv INTO KAFKA WITH (topic = '{dbz}', 'properties.bootstrap.servers' = '{b}', key = 'k', format = 'debezium-json');
         CREATE SINK plain FROM tv INTO KAFKA WITH (topic = '{plain}', 'properties.bootstrap.servers' = '{b}')"
    ))
    .unwrap();
    for stmt in [
        "INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)",
        "INSERT INTO t VALUES (2, 21)",
        "DELETE FROM t WHERE k = 3",
        "INSERT INTO t VALUES (4, 40)",
    ] {
        db.execute(stmt).unwrap();
        db.flush().unwrap();
    }
    let key = |k: i64| Some(format!("{{\"k\":{k}}}"));
    let row = |k: i64, v: i64| format!("{{\"k\":{k},\"v\":{v}}}");
    // Upserts: one record per change of a key; the delete a tombstone.
    let got = read_records(&b, &up);
    let mut by_key: std::collections::BTreeMap<String, Vec<Option<String>>> = Default::default();
    for (k, v) in got {
        by_key.entry(k.expect("every record has a key")).or_default().push(v);
    }
    let want: std::collections::BTreeMap<String, Vec<Option<String>>> = [
        (key(1).unwrap(), vec![Some(row(1, 10))]),
        (key(2).unwrap(), vec![Some(row(2, 20)), Some(row(2, 21))]),
        (key(3).unwrap(), vec![Some(row(3, 30)), None]),
        (key(4).unwrap(), vec![Some(row(4, 40))]),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_key, want);
    // Debezium: c, u (before and after), d (before).
    let got: Vec<(Option<String>, Option<String>)> = read_records(&b, &dbz);
    let env = |before: Option<String>, after: Option<String>, op: &str| {
        Some(format!(
            "{{\"before\":{},\"after\":{},\"op\":\"{op}\"}}",
            before.unwrap_or("null".into()),
            after.unwrap_or("null".into())
        ))
    };
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want = vec![
        (key(1), env(None, Some(row(1, 10)), "c")),
        (key(2), env(None, Some(row(2, 20)), "c")),
        (key(3), env(None, Some(row(3, 30)), "c")),
        (key(2), env(Some(row(2, 20)), Some(row(2, 21)), "u")),
        (key(3), env(Some(row(3, 30)), None, "d")),
        (key(4), env(None, Some(row(4, 40)), "c")),
    ];
    // Per key, in order.
    for k in 1..=4 {
        let g: Vec<_> = got.iter().filter(|(kk, _)| *kk == key(k)).collect();
        let w: Vec<_> = want.iter().filter(|(kk, _)| *kk == key(k)).collect();
        assert_eq!(g, w, "key {k}");
    }
    want.sort();
    assert_eq!(got_sorted, want);
    // No key: each row with its weight.
    let got = read_committed(&b, &plain);
    let mut got = got;
    got.sort();
    let mut want: Vec<String> = ["1,10,1", "2,20,1", "3,30,1", "2,20,-1", "2,21,1", "3,30,-1", "4,40,1"]
        .iter()
        .map(|r| {
            let p: Vec<&str> = r.split(',').collect();
            format!("{{\"k\":{},\"v\":{},\"__weight\":{}}}", p[0], p[1], p[2])
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    // The upsert topic read back into a `json` table: the tombstone deletes key 3.
    let back = Database::open_in_memory().unwrap();
    back.execute(&format!(
        "CREATE TABLE t2 (k BIGINT, v BIGINT, PRIMARY KEY (k)) FROM KAFKA WITH (topic = '{up}', 'properties.bootstrap.servers' = '{b}', format = 'json', 'scan.startup.mode' = 'earliest-offset')"
    ))
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        back.flush().unwrap();
        let got = sorted(&back.query("SELECT k, v FROM t2").unwrap());
        if got == ["1|10", "2|21", "4|40"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the table read back holds {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = back.metrics().unwrap();
    let malformed: u64 = m.sources[0].partitions.iter().map(|(_, p)| p.malformed).sum();
    assert_eq!(malformed, 0, "a tombstone is a delete, not a malformed record");
}

/// Debezium change envelopes (c, r, u, d, and the tombstones after deletes) from two partitions
/// into a table: its rows, and an aggregate over it, equal to the changes applied in order by a
/// map in the test.
#[test]
fn debezium_json_into_a_table_upserts_and_deletes() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let topic = unique("dbz-in");
    create_topic(&b, &topic, 2);
    let p = producer(&b);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
    let mut model: std::collections::BTreeMap<i64, (String, i64)> = Default::default();
    let row = |id: i64, name: &str, amount: i64| format!("{{\"id\":{id},\"name\":\"{name}\",\"amount\":{amount}}}");
    for step in 0..3000 {
        let id: i64 = rng.random_range(0..200);
        let key = format!("{{\"id\":{id}}}");
        let part = (id % 2) as i32;
        let amount: i64 = rng.random_range(-1000..1000);
        let name = format!("n{step}");
        let (value, tombstone) = match (model.get(&id).cloned(), rng.random_range(0..10)) {
            (None, 0) => {
                (format!("{{\"before\":null,\"after\":{},\"op\":\"r\",\"ts_ms\":1}}", row(id, &name, amount)), false)
            }
            (None, _) => (format!("{{\"before\":null,\"after\":{},\"op\":\"c\"}}", row(id, &name, amount)), false),
            (Some((n, a)), 0..=2) => (format!("{{\"before\":{},\"after\":null,\"op\":\"d\"}}", row(id, &n, a)), true),
            (Some((n, a)), _) => {
                (format!("{{\"before\":{},\"after\":{},\"op\":\"u\"}}", row(id, &n, a), row(id, &name, amount)), false)
            }
        };
        if tombstone {
            model.remove(&id);
        } else {
            model.insert(id, (name, amount));
        }
        let rec = BaseRecord::<str, str>::to(&topic).partition(part).key(&key).payload(&value);
        p.send(rec).map_err(|(e, _)| e).unwrap();
        if tombstone {
            p.send(BaseRecord::<str, str>::to(&topic).partition(part).key(&key)).map_err(|(e, _)| e).unwrap();
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    // At durability `wal`: each batch, with its deletes, in the log, which a reopen replays.
    let dir = common_tmp("kafka-dbz");
    let open = || {
        let mut cfg = Config::default();
        cfg.set("durability", "wal").unwrap();
        Database::open(&dir, cfg).unwrap()
    };
    let db = open();
    // Not into an append-only source.
    let e = db
        .execute(&format!(
            "CREATE SOURCE x (id BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', format = 'debezium-json')"
        ))
        .unwrap_err();
    assert!(e.message().contains("CREATE TABLE"), "{e}");
    db.execute(&format!(
        "CREATE TABLE t (id BIGINT, name VARCHAR, amount BIGINT, PRIMARY KEY (id))
             FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', format = 'debezium-json');
         CREATE MATERIALIZED VIEW totals AS SELECT COUNT(*) AS n, SUM(amount) AS s FROM t"
    ))
    .unwrap();
    let want_rows: Vec<String> = model.iter().map(|(id, (n, a))| format!("{id}|{n}|{a}")).collect();
    let mut want_rows = want_rows;
    want_rows.sort();
    let want_totals = vec![format!("{}|{}", model.len(), model.values().map(|v| v.1).sum::<i64>())];
    let check = |db: &Database| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            db.flush().unwrap();
            let rows = sorted(&db.query("SELECT id, name, amount FROM t").unwrap());
            let totals = sorted(&db.query("SELECT n, s FROM totals").unwrap());
            if rows == want_rows && totals == want_totals {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "table has {} rows (want {}), totals {totals:?} (want {want_totals:?})",
                rows.len(),
                want_rows.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    check(&db);
    db.close_abruptly();
    let db = open();
    check(&db);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in for a Confluent schema registry, the documented REST subset that readers and
/// writers use: `GET /schemas/ids/{id}` answers `{"schema": "<the schema's JSON text>"}` for a
/// known id, 404 for others; `POST /subjects/{subject}/versions` with `{"schema": "…"}`
/// registers the schema (the same text again gets the same id) and answers `{"id": N}`.
/// Returns its URL.
fn stand_in_registry(schemas: Vec<(u32, String)>) -> String {
    stand_in_registry_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), schemas)
}

type Registered = std::sync::Arc<std::sync::Mutex<Vec<(u32, String, String)>>>;

fn stand_in_registry_on(l: std::net::TcpListener, schemas: Vec<(u32, String)>) -> String {
    let reg: Registered =
        std::sync::Arc::new(std::sync::Mutex::new(schemas.into_iter().map(|(i, s)| (i, String::new(), s)).collect()));
    stand_in_registry_shared(l, reg)
}

/// The stand-in registry over `reg`: (id, subject, schema) of every schema it holds.
fn stand_in_registry_shared(l: std::net::TcpListener, reg: Registered) -> String {
    use std::io::{Read, Write};
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            // The request line and headers, up to the blank line, then Content-Length bytes.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            let head_end = loop {
                if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&req[..head_end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while req.len() < head_end + len {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = String::from_utf8_lossy(&req[head_end..]).to_string();
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
            let ok = |body: String| {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let not_found = || {
                let body = "{\"error_code\":40403,\"message\":\"Schema not found\"}";
                format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            };
            let mut reg = reg.lock().unwrap();
            let resp = if method == "GET" {
                let found = path
                    .strip_prefix("/schemas/ids/")
                    .and_then(|id| id.parse::<u32>().ok())
                    .and_then(|id| reg.iter().find(|(i, _, _)| *i == id));
                match found {
                    Some((_, _, schema)) => ok(format!("{{\"schema\":{}}}", json_string(schema))),
                    None => not_found(),
                }
            } else {
                let subject = path.strip_prefix("/subjects/").and_then(|p| p.strip_suffix("/versions"));
                let schema = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("schema").and_then(|s| s.as_str()).map(str::to_string));
                match (subject, schema) {
                    (Some(subject), Some(schema)) => {
                        let id = match reg.iter().find(|(_, _, s)| *s == schema) {
                            Some((id, _, _)) => *id,
                            None => {
                                let id = reg.iter().map(|(i, _, _)| *i).max().unwrap_or(0) + 1;
                                reg.push((id, subject.to_string(), schema));
                                id
                            }
                        };
                        ok(format!("{{\"id\":{id}}}"))
                    }
                    _ => {
                        let body = "{\"error_code\":42201,\"message\":\"Invalid schema\"}";
                        format!(
                            "HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                }
            };
            drop(reg);
            let _ = s.write_all(resp.as_bytes());
        }
    });
    url
}

fn json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Avro's binary encoding, by hand (not the engine's decoder's own crate): zig-zag varints.
fn avro_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn avro_string(out: &mut Vec<u8>, s: &str) {
    avro_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// Confluent framing: magic 0, the schema id big-endian, the body.
fn confluent(id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Avro values in Confluent framing under two writer schemas (the second adds a field), read
/// through the stand-in registry into the declared columns; a value without the framing and one
/// of an id the registry lacks are counted as malformed with `skip`.
#[test]
fn avro_confluent_through_a_stand_in_registry() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let topic = unique("avro");
    create_topic(&b, &topic, 1);
    let v1 = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
    let v2 = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"note","type":"string","default":""}]}"#;
    let url = stand_in_registry(vec![(7, v1.to_string()), (8, v2.to_string())]);
    // A second registry, down until the reader has tried it.
    let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let late_addr = late.local_addr().unwrap();
    drop(late);
    let p = producer(&b);
    let mut want = vec![];
    for i in 0..100i64 {
        let mut body = vec![];
        avro_long(&mut body, i);
        avro_string(&mut body, &format!("order-{i}"));
        avro_long(&mut body, 1_700_000_000_000 + i * 1000);
        let id = if i < 50 { 7 } else { 8 };
        if id == 8 {
            avro_string(&mut body, "v2");
        }
        let v = confluent(id, &body);
        p.send(BaseRecord::<(), [u8]>::to(&topic).partition(0).payload(&v[..])).map_err(|(e, _)| e).unwrap();
        want.push(format!("{i}|order-{i}|{}", iso(1_700_000_000_000 + i * 1000)));
        if i == 20 {
            p.send(BaseRecord::<(), [u8]>::to(&topic).partition(0).payload(&b"{\"id\": 1}"[..]))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        if i == 70 {
            let v = confluent(99, &body);
            p.send(BaseRecord::<(), [u8]>::to(&topic).partition(0).payload(&v[..])).map_err(|(e, _)| e).unwrap();
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    want.sort();
    let db = Database::open_in_memory().unwrap();
    let e = db
        .execute(&format!(
            "CREATE SOURCE x (id BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', format = 'avro-confluent')"
        ))
        .unwrap_err();
    assert!(e.message().contains("'avro-confluent.url'"), "{e}");
    db.execute(&format!(
        "CREATE SOURCE orders (id BIGINT, name VARCHAR, ts TIMESTAMP) FROM KAFKA WITH (topic = '{topic}',
             'properties.bootstrap.servers' = '{b}', format = 'avro-confluent', 'avro-confluent.url' = '{url}', on_error = 'skip');
         CREATE MATERIALIZED VIEW ov AS SELECT id, name, ts FROM orders"
    ))
    .unwrap();
    let rows = mv_rows(&db, "SELECT id, name, ts FROM ov", 100);
    assert_eq!(rows, want);
    let m = db.metrics().unwrap();
    let s = m.sources.iter().find(|s| s.name == "orders").unwrap();
    let (_, st) = &s.partitions[0];
    assert_eq!((st.records, st.malformed), (102, 2), "{st:?}");

    // The registry unreachable: the reader retries (IO), keeping the records it has read, and
    // once the registry is up every row arrives.
    db.execute(&format!(
        "CREATE SOURCE orders2 (id BIGINT, name VARCHAR, ts TIMESTAMP) FROM KAFKA WITH (topic = '{topic}',
             'properties.bootstrap.servers' = '{b}', format = 'avro-confluent', 'avro-confluent.url' = 'http://{late_addr}', on_error = 'skip');
         CREATE MATERIALIZED VIEW ov2 AS SELECT id, name, ts FROM orders2"
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(sorted(&db.query("SELECT id FROM ov2").unwrap()).is_empty());
    stand_in_registry_on(
        std::net::TcpListener::bind(late_addr).unwrap(),
        vec![(7, v1.to_string()), (8, v2.to_string())],
    );
    let rows = mv_rows(&db, "SELECT id, name, ts FROM ov2", 100);
    assert_eq!(rows, want);
}

/// Reads a zig-zag varint (Avro `int`/`long`) at `*at`.
fn read_avro_long(b: &[u8], at: &mut usize) -> i64 {
    let (mut z, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        z |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return (z >> 1) as i64 ^ -((z & 1) as i64);
        }
    }
}

/// A datum of the record (`id` nullable long, `name` nullable string), decoded by hand: each
/// field a union branch (0 null, 1 the value) and the value.
fn read_id_name(b: &[u8]) -> String {
    let mut at = 0;
    let id = match read_avro_long(b, &mut at) {
        0 => "null".to_string(),
        _ => read_avro_long(b, &mut at).to_string(),
    };
    let name = match read_avro_long(b, &mut at) {
        0 => "null".to_string(),
        _ => {
            let n = read_avro_long(b, &mut at) as usize;
            at += n;
            String::from_utf8(b[at - n..at].to_vec()).unwrap()
        }
    };
    assert_eq!(at, b.len(), "bytes after the datum");
    format!("{id}|{name}")
}

/// Avro sinks: `avro-confluent` registers the schema derived from the input under
/// `<topic>-value` and frames each datum with its id; plain `avro` writes bare datums; both
/// decoded here by hand, and read back by the engine's own `avro-confluent` and `avro` sources.
/// A plain `avro` source with an explicit `avro.schema` reads hand-encoded datums; a
/// truncated one is malformed.
#[test]
fn avro_sinks_register_the_schema_and_plain_avro_reads_back() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let (conf, plain, hand) = (unique("avro-conf"), unique("avro-plain"), unique("avro-hand"));
    for t in [&conf, &plain, &hand] {
        create_topic(&b, t, 1);
    }
    let reg: Registered = Default::default();
    let url = stand_in_registry_shared(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), reg.clone());
    // Durability `checkpoint`: the exactly-once sinks commit each epoch after its checkpoint.
    let dir = common_tmp("avro-sinks");
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "1h").unwrap();
    let db = Database::open(&dir, cfg).unwrap();
    let e = db
        .execute(&format!(
            "CREATE SOURCE y (a BIGINT) FROM KAFKA WITH (topic = '{plain}', 'properties.bootstrap.servers' = '{b}', format = 'json', 'avro.schema' = '{{}}')"
        ))
        .unwrap_err();
    assert!(e.message().contains("'avro.schema' needs format = 'avro'"), "{e}");
    let e = db
        .execute(&format!(
            "CREATE SOURCE y (a BIGINT) FROM KAFKA WITH (topic = '{plain}', 'properties.bootstrap.servers' = '{b}', format = 'avro', 'avro.schema' = 'not json')"
        ))
        .unwrap_err();
    assert!(e.message().contains("'avro.schema'"), "{e}");
    db.execute(&format!(
        "CREATE SOURCE ev (id BIGINT, name VARCHAR);
         CREATE SINK c FROM ev INTO KAFKA WITH (topic = '{conf}', 'properties.bootstrap.servers' = '{b}', format = 'avro-confluent', 'avro-confluent.url' = '{url}');
         CREATE SINK p FROM ev INTO KAFKA WITH (topic = '{plain}', 'properties.bootstrap.servers' = '{b}', format = 'avro')"
    ))
    .unwrap();
    // Registered at CREATE SINK, under the topic's value subject.
    {
        let r = reg.lock().unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].1, format!("{conf}-value"));
        let schema: serde_json::Value = serde_json::from_str(&r[0].2).unwrap();
        let names: Vec<&str> =
            schema["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["id", "name"]);
    }
    let id = reg.lock().unwrap()[0].0;
    db.execute("INSERT INTO ev VALUES (1, 'one'), (2, NULL), (NULL, 'three'), (4, 'héllo')").unwrap();
    db.flush().unwrap();
    db.checkpoint().unwrap();
    let mut want = vec!["1|one", "2|null", "null|three", "4|héllo"];
    want.sort();
    let framed = read_bytes(&b, &conf);
    let mut got: Vec<String> = framed
        .iter()
        .map(|(_, v)| {
            let v = v.as_deref().unwrap();
            assert_eq!(v[0], 0, "magic byte");
            assert_eq!(u32::from_be_bytes(v[1..5].try_into().unwrap()), id, "schema id");
            read_id_name(&v[5..])
        })
        .collect();
    got.sort();
    assert_eq!(got, want);
    let mut got: Vec<String> =
        read_bytes(&b, &plain).iter().map(|(_, v)| read_id_name(v.as_deref().unwrap())).collect();
    got.sort();
    assert_eq!(got, want);
    // Read back by the engine's sources (the derived schema; the registry by id).
    db.execute(&format!(
        "CREATE SOURCE rc (id BIGINT, name VARCHAR) FROM KAFKA WITH (topic = '{conf}', 'properties.bootstrap.servers' = '{b}', format = 'avro-confluent', 'avro-confluent.url' = '{url}');
         CREATE SOURCE rp (id BIGINT, name VARCHAR) FROM KAFKA WITH (topic = '{plain}', 'properties.bootstrap.servers' = '{b}', format = 'avro');
         CREATE MATERIALIZED VIEW vc AS SELECT id, name FROM rc;
         CREATE MATERIALIZED VIEW vp AS SELECT id, name FROM rp"
    ))
    .unwrap();
    let want_rows = ["1|one", "2|", "4|héllo", "|three"];
    let mut w: Vec<String> = want_rows.iter().map(|s| s.to_string()).collect();
    w.sort();
    let norm = |rows: Vec<String>| {
        let mut r: Vec<String> = rows.into_iter().map(|r| r.replace("NULL", "")).collect();
        r.sort();
        r
    };
    assert_eq!(norm(mv_rows(&db, "SELECT id, name FROM vc", 4)), w);
    assert_eq!(norm(mv_rows(&db, "SELECT id, name FROM vp", 4)), w);

    // Plain avro with an explicit writer schema (not nullable, another field order, a field
    // the source does not declare), hand-encoded; one datum cut short.
    let schema = r#"{"type":"record","name":"R","fields":[{"name":"name","type":"string"},{"name":"extra","type":"long"},{"name":"id","type":"long"}]}"#;
    let p = producer(&b);
    for i in 0..10i64 {
        let mut body = vec![];
        avro_string(&mut body, &format!("n{i}"));
        avro_long(&mut body, 99);
        avro_long(&mut body, i);
        if i == 5 {
            body.truncate(2);
        }
        p.send(BaseRecord::<(), [u8]>::to(&hand).partition(0).payload(&body[..])).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    db.execute(&format!(
        "CREATE SOURCE h (id BIGINT, name VARCHAR) FROM KAFKA WITH (topic = '{hand}', 'properties.bootstrap.servers' = '{b}',
             format = 'avro', 'avro.schema' = '{schema}', on_error = 'skip');
         CREATE MATERIALIZED VIEW vh AS SELECT id, name FROM h"
    ))
    .unwrap();
    let mut w: Vec<String> = (0..10).filter(|i| *i != 5).map(|i| format!("{i}|n{i}")).collect();
    w.sort();
    assert_eq!(mv_rows(&db, "SELECT id, name FROM vh", 9), w);
    let m = db.metrics().unwrap();
    let st = &m.sources.iter().find(|s| s.name == "h").unwrap().partitions[0].1;
    assert_eq!((st.records, st.malformed), (10, 1), "{st:?}");
}

#[test]
fn a_source_that_starts_far_behind_logs_its_catch_up() {
    let _shared = HEAVY.read().unwrap_or_else(|e| e.into_inner());
    common::capture_info_logs();
    let b = broker();
    let topic = unique("catchup");
    create_topic(&b, &topic, 2);
    let p = producer(&b);
    let n = 60_000;
    for i in 0..n {
        send(&p, &topic, (i % 2) as i32, &format!("{{\"x\": {i}}}"));
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let db = Database::open_in_memory().unwrap();
    // 1,000 records per read: the backlog takes many reads, and the first lag is known after
    // the first of them.
    db.execute(&format!(
        "CREATE SOURCE cu (x BIGINT) FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', \
         'scan.startup.mode' = 'earliest-offset', 'scan.max-batch-records' = '1000')"
    ))
    .unwrap();
    wait_rows(&db, n as u64);
    let mine = |l: &String| l.starts_with("KAFKA source 'cu'");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Vec<String> = common::INFO_LINES.lock().unwrap().iter().filter(|l| mine(l)).cloned().collect();
        if lines.iter().any(|l| l.contains("caught up")) {
            // The first line: how far behind the source was after its first read, between the
            // minimum logged (10,000) and the records produced.
            let first = &lines[0];
            let behind: i64 = first
                .split(", ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no count in {first:?}"));
            assert!(first.contains("catching up") && (10_000..n).contains(&behind), "{lines:?}");
            assert!(lines.last().unwrap().contains("caught up"), "{lines:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 'caught up' line 30 s after the last record was read: {lines:?}; partitions {:?}",
            db.metrics().unwrap().sources[0].partitions
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A caught-up source logs nothing more.
    let before = common::INFO_LINES.lock().unwrap().iter().filter(|l| mine(l)).count();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(common::INFO_LINES.lock().unwrap().iter().filter(|l| mine(l)).count(), before);
    db.close();
}

// ------------------------------------------------------------------------------ group mode
//
// Several processes (this test binary run again as `member_process`) share one pipeline as a
// consumer group; each partition's state lives in its task's directory under `shared_dir`.

fn send_keyed(p: &BaseProducer, topic: &str, partition: i32, key: &str, value: &str) {
    let mut rec = BaseRecord::<str, str>::to(topic).partition(partition).key(key).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

const GROUP_PARTITIONS: i32 = 12;

/// A member of a group, run as a child process: opens its own directory with `shared_dir`, runs
/// the pipeline, writes the partitions it owns with their positions to `<dir>/status` every
/// 100 ms, and leaves the group cleanly when `<dir>/stop` appears.
#[test]
#[ignore = "a child process of the group-mode tests"]
fn member_process() {
    let Ok(dir) = std::env::var("LAMINAR_MEMBER_DIR") else { return };
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target() == "laminardb" && m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("{} {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let _ = log::set_logger(&Stderr);
    log::set_max_level(log::LevelFilter::Info);
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let mut cfg = Config::default();
    cfg.set("shared_dir", &var("LAMINAR_MEMBER_SHARED")).unwrap();
    cfg.set("checkpoint_interval", "1s").unwrap();
    let db = Database::open(&dir, cfg).unwrap();
    db.execute(&var("LAMINAR_MEMBER_SQL")).unwrap();
    let dir = std::path::PathBuf::from(dir);
    let parent = std::os::unix::process::parent_id();
    loop {
        if std::os::unix::process::parent_id() != parent {
            return; // the test that started it is gone (killed by its time limit): so is this member
        }
        let stop = dir.join("stop").exists();
        if stop {
            db.close();
        }
        let r = if stop { None } else { db.execute("SHOW PARTITIONS").ok() };
        let mut text = String::new();
        for b in r.iter().flat_map(|r| r.batches.iter()) {
            let p = b.column(1).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
            let pos = b.column(3).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                text.push_str(&format!(
                    "{} {}\n",
                    p.value(i),
                    if datafusion::arrow::array::Array::is_null(pos, i) { -1 } else { pos.value(i) }
                ));
            }
        }
        std::fs::write(dir.join("status.tmp"), text).unwrap();
        std::fs::rename(dir.join("status.tmp"), dir.join("status")).unwrap();
        if stop {
            std::fs::write(dir.join("closed"), "").unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Member {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Member {
    fn start(root: &std::path::Path, name: &str, shared: &str, sql: &str) -> Member {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(root.join(format!("{name}.log"))).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["member_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("LAMINAR_MEMBER_DIR", &dir)
            .env("LAMINAR_MEMBER_SHARED", shared)
            .env("LAMINAR_MEMBER_SQL", sql)
            .env("RUST_LOG", "laminardb=info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Member { dir, child }
    }

    /// Partition → the position its task has read to, as the member last wrote them.
    fn status(&self) -> Vec<(i32, i64)> {
        let text = std::fs::read_to_string(self.dir.join("status")).unwrap_or_default();
        text.lines().filter_map(|l| l.split_once(' ')).map(|(p, o)| (p.parse().unwrap(), o.parse().unwrap())).collect()
    }

    fn leave(mut self) {
        std::fs::write(self.dir.join("stop"), "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "member {} did not leave in 60 s", self.dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.dir.join("closed").exists(), "member {} exited without closing", self.dir.display());
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the members' tasks have read every partition of `topic` to `ends`, each
/// partition owned by exactly one of them.
fn wait_caught_up(members: &[&Member], ends: &[i64], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut pos = vec![vec![]; ends.len()];
        for m in members {
            for (p, o) in m.status() {
                pos[p as usize].push(o);
            }
        }
        if pos.iter().zip(ends).all(|(o, end)| o.len() == 1 && o[0] >= *end) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: partitions not read to their ends in 120 s: {pos:?} of {ends:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rows with keys 0..40, each key's records in partition key % 12, times rising by ~3 ms per
/// row with up to 500 ms of disorder (under the watermark's 1 s delay: none is late).
fn group_events(rng: &mut rand::rngs::SmallRng, n: usize, t0: i64) -> Vec<Row> {
    (0..n)
        .map(|i| (rng.random_range(0..40), rng.random_range(-100..100), t0 + i as i64 * 3 + rng.random_range(0..500)))
        .collect()
}

fn produce_group_events(p: &BaseProducer, topic: &str, rows: &[Row], ends: &mut [i64]) {
    for r in rows {
        let part = (r.0 % GROUP_PARTITIONS as i64) as i32;
        send_keyed(p, topic, part, &r.0.to_string(), &format!("{{\"v\": {}, \"ts\": \"{}\"}}", r.1, iso(r.2)));
        ends[part as usize] += 1;
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The window results in `topic` (JSON with k, ws, s, n), the closing records' left out.
fn window_results(b: &str, topic: &str) -> Vec<String> {
    let mut v: Vec<String> = read_committed(b, topic)
        .iter()
        .map(|line| {
            let j: serde_like::Obj = serde_like::parse(line);
            format!("{}|{}|{}|{}", j.get("k").trim_matches('"'), j.get("ws").trim_matches('"'), j.get("s"), j.get("n"))
        })
        .filter(|r| !r.starts_with("closing|"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_group_of_processes_shares_a_windowed_aggregate_exactly_once_through_a_kill_a_join_and_a_leave() {
    let _alone = HEAVY.write().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let (input, output, group) = (unique("gin"), unique("gout"), unique("grp"));
    create_topic(&b, &input, GROUP_PARTITIONS);
    create_topic(&b, &output, 1);
    let root = common::tmpdir("kafka-group");
    let shared = root.join("shared").display().to_string();
    let sql = format!(
        "CREATE SOURCE s (_key VARCHAR, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             FROM KAFKA WITH (topic = '{input}', 'properties.bootstrap.servers' = '{b}', format = 'json',
                 'properties.group.id' = '{group}', 'scan.startup.mode' = 'group-offsets',
                 'properties.session.timeout.ms' = '6000', 'properties.heartbeat.interval.ms' = '500');
         CREATE STREAM agg AS SELECT _key AS k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
             FROM s GROUP BY _key, TUMBLE(ts, INTERVAL '10' SECOND);
         CREATE SINK out FROM agg INTO KAFKA WITH (topic = '{output}', 'properties.bootstrap.servers' = '{b}', key = 'k')"
    );
    let p = producer(&b);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(24);
    let mut ends = vec![0i64; GROUP_PARTITIONS as usize];
    let mut all: Vec<Row> = vec![];
    let m1 = Member::start(&root, "m1", &shared, &sql);
    let m2 = Member::start(&root, "m2", &shared, &sql);
    let m3 = Member::start(&root, "m3", &shared, &sql);
    // The group settles: every member owns partitions, each partition one owner.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owned: Vec<usize> = [&m1, &m2, &m3].iter().map(|m| m.status().len()).collect();
        if owned.iter().sum::<usize>() == GROUP_PARTITIONS as usize && owned.iter().all(|n| *n > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the group did not settle in 60 s: {owned:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let rows = group_events(&mut rng, 4000, 1_000_000);
    produce_group_events(&p, &input, &rows, &mut ends);
    all.extend(&rows);
    wait_caught_up(&[&m1, &m2, &m3], &ends, "three members");
    let owned: Vec<usize> = [&m1, &m2, &m3].iter().map(|m| m.status().len()).collect();
    assert_eq!(owned.iter().sum::<usize>(), GROUP_PARTITIONS as usize, "{owned:?}");
    assert!(owned.iter().all(|n| *n > 0), "every member owns partitions: {owned:?}");

    // Mid-stream: more rows, then m1 is killed (no checkpoint, no goodbye) and m4 joins.
    let rows = group_events(&mut rng, 4000, 1_020_000);
    produce_group_events(&p, &input, &rows, &mut ends);
    all.extend(&rows);
    std::thread::sleep(Duration::from_millis(700));
    drop(m1); // SIGKILL
    let m4 = Member::start(&root, "m4", &shared, &sql);
    let rows = group_events(&mut rng, 4000, 1_040_000);
    produce_group_events(&p, &input, &rows, &mut ends);
    all.extend(&rows);
    wait_caught_up(&[&m2, &m3, &m4], &ends, "after the kill and the join");
    assert!(!m4.status().is_empty(), "the new member owns partitions");

    // m2 leaves cleanly: its partitions move with their checkpoints.
    m2.leave();
    let rows = group_events(&mut rng, 4000, 1_060_000);
    produce_group_events(&p, &input, &rows, &mut ends);
    all.extend(&rows);
    // A record far in the future on every partition closes every window.
    for part in 0..GROUP_PARTITIONS {
        send_keyed(&p, &input, part, "closing", &format!("{{\"v\": 0, \"ts\": \"{}\"}}", iso(4_000_000_000_000)));
        ends[part as usize] += 1;
    }
    p.flush(Duration::from_secs(30)).unwrap();
    wait_caught_up(&[&m3, &m4], &ends, "after the leave");

    let want = oracle(&all);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = window_results(&b, &output);
    while got.len() < want.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        got = window_results(&b, &output);
    }
    // Whatever a replay or a zombie could add would come with the next commits.
    std::thread::sleep(Duration::from_secs(3));
    got = window_results(&b, &output);
    assert_eq!(got, want, "{}", difference(&got, &want));
    m3.leave();
    m4.leave();
    // The group's committed offsets went with the results, in the same transactions: every
    // partition's is its end.
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..GROUP_PARTITIONS {
        tpl.add_partition(&input, part);
    }
    let committed: Vec<i64> = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect();
    assert_eq!(committed, ends, "the group's committed offsets");
    // The partitions that moved took their state along: a task restored a checkpoint's epoch.
    let logs: String = ["m2", "m3", "m4"]
        .iter()
        .map(|m| std::fs::read_to_string(root.join(format!("{m}.log"))).unwrap_or_default())
        .collect();
    assert!(
        logs.lines().any(|l| l.contains("running (restored epoch") && !l.contains("restored epoch 0,")),
        "no task restored a checkpoint:\n{logs}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_group_joins_co_partitioned_topics_and_refuses_what_it_cannot_partition() {
    let _alone = HEAVY.write().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let (ta, tb, tc, output, group) = (unique("ga"), unique("gb"), unique("gc"), unique("gjout"), unique("grpj"));
    create_topic(&b, &ta, GROUP_PARTITIONS);
    create_topic(&b, &tb, GROUP_PARTITIONS);
    create_topic(&b, &tc, 6);
    create_topic(&b, &output, 1);
    let root = common::tmpdir("kafka-group-join");
    let src = |name: &str, col: &str, topic: &str| {
        format!(
            "CREATE SOURCE {name} (_key VARCHAR, {col} BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
                 FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', format = 'json',
                     'properties.group.id' = '{group}', 'properties.session.timeout.ms' = '6000')"
        )
    };
    let sql = format!(
        "{}; {};
         CREATE STREAM j AS SELECT a._key AS k, a.v, c.w FROM a JOIN c ON a._key = c._key
             AND c.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '1' SECOND;
         CREATE SINK out FROM j INTO KAFKA WITH (topic = '{output}', 'properties.bootstrap.servers' = '{b}')",
        src("a", "v", &ta),
        src("c", "w", &tb)
    );
    let open = |name: &str| {
        let mut cfg = Config::default();
        cfg.set("shared_dir", &root.join("shared").display().to_string()).unwrap();
        cfg.set("checkpoint_interval", "1s").unwrap();
        Database::open(&root.join(name).display().to_string(), cfg).unwrap()
    };
    let m1 = open("m1");
    m1.execute(&sql).unwrap();

    // What a group cannot run is refused, saying why.
    let e = m1.execute(&src("x", "v", &tc)).unwrap_err();
    assert!(e.message().contains("not co-partitioned") && e.message().contains("6 partitions"), "{e}");
    let e = m1.execute("CREATE STREAM byv AS SELECT v, COUNT(*) AS n FROM a GROUP BY v").unwrap_err();
    assert!(e.message().contains("not keyed by the message key") && e.message().contains("GROUP BY"), "{e}");
    let e = m1.execute("CREATE STREAM jv AS SELECT a.v FROM a JOIN c ON a.v = c.w").unwrap_err();
    assert!(e.message().contains("not keyed by the message key") && e.message().contains("join"), "{e}");
    let e = m1.execute("CREATE STREAM dv AS SELECT DISTINCT v FROM a").unwrap_err();
    assert!(e.message().contains("not keyed by the message key") && e.message().contains("DISTINCT"), "{e}");
    let e = m1.execute("CREATE STREAM rk AS SELECT _key, n FROM (SELECT CAST(v AS VARCHAR) AS _key, COUNT(*) AS n FROM a GROUP BY _key, v)").unwrap_err();
    assert!(e.message().contains("not keyed by the message key"), "{e}");
    let e = m1.execute("CREATE SOURCE pushed (k BIGINT)").unwrap_err();
    assert!(e.message().contains("KAFKA"), "{e}");
    assert!(m1.subscribe("j").err().unwrap().message().contains("group mode"));
    assert!(m1.execute("SELECT * FROM a").unwrap_err().message().contains("group mode"));
    let e = m1
        .execute(&format!(
            "CREATE SOURCE y (v BIGINT) FROM KAFKA WITH (topic = '{ta}', 'properties.bootstrap.servers' = '{b}', '__laminar.task-partition' = '1', 'properties.group.id' = '{group}')"
        ))
        .unwrap_err();
    assert!(e.message().contains("reserved"), "{e}");
    let plain = Database::open_in_memory().unwrap();
    assert!(plain.execute("SHOW PARTITIONS").unwrap_err().message().contains("shared_dir"));

    let m2 = open("m2");
    m2.execute(&sql).unwrap();
    // Both members own partitions (each says which) before the rows come.
    let shown =
        |db: &Database| db.execute("SHOW PARTITIONS").unwrap().batches.iter().map(|b| b.num_rows()).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n1, n2) = (shown(&m1), shown(&m2));
        if n1 + n2 == GROUP_PARTITIONS as usize && n1 > 0 && n2 > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the partitions were not shared out in 60 s: {n1} + {n2}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = producer(&b);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let (mut left, mut right) = (vec![], vec![]);
    for i in 0..3000i64 {
        let k = rng.random_range(0..40i64);
        let part = (k % GROUP_PARTITIONS as i64) as i32;
        let (v, ts) = (rng.random_range(0..1000i64), 2_000_000 + i * 5);
        if rng.random_bool(0.5) {
            send_keyed(&p, &ta, part, &k.to_string(), &format!("{{\"v\": {v}, \"ts\": \"{}\"}}", iso(ts)));
            left.push((k, v, ts));
        } else {
            send_keyed(&p, &tb, part, &k.to_string(), &format!("{{\"w\": {v}, \"ts\": \"{}\"}}", iso(ts)));
            right.push((k, v, ts));
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let mut want: Vec<String> = vec![];
    for l in &left {
        for r in right.iter().filter(|r| r.0 == l.0 && (r.2 - l.2).abs() <= 1000) {
            want.push(format!("{}|{}|{}", l.0, l.1, r.1));
        }
    }
    want.sort();
    let results = || -> Vec<String> {
        let mut v: Vec<String> = read_committed(&b, &output)
            .iter()
            .map(|line| {
                let j: serde_like::Obj = serde_like::parse(line);
                format!("{}|{}|{}", j.get("k").trim_matches('"'), j.get("v"), j.get("w"))
            })
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got = results();
    while got.len() < want.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        got = results();
    }
    assert_eq!(got, want, "{}", difference(&got, &want));
    // Both members still own partitions, and their metrics list them.
    let (n1, n2) = (shown(&m1), shown(&m2));
    assert_eq!(n1 + n2, GROUP_PARTITIONS as usize, "{n1} + {n2}");
    assert!(n1 > 0 && n2 > 0, "{n1} + {n2}");
    let m = m1.metrics().unwrap();
    assert_eq!(m.partitions.len(), n1);
    assert!(m.partitions.iter().all(|p| p.state == "running" && p.lag.is_none_or(|l| l >= 0)), "{:?}", m.partitions);
    assert!(m.sources.iter().find(|s| s.name == "a").unwrap().rows_in > 0);
    // A member's checkpoint is one in each task it runs.
    let before: Vec<(i32, u64)> = m.partitions.iter().map(|p| (p.partition, p.epoch)).collect();
    let top = m1.checkpoint().unwrap() as u64;
    let after: Vec<(i32, u64)> = m1.metrics().unwrap().partitions.iter().map(|p| (p.partition, p.epoch)).collect();
    assert_eq!(after.iter().map(|a| a.1).max(), Some(top));
    for ((p, was), (q, now)) in before.iter().zip(&after) {
        assert!(p == q && now > was, "partition {p}: epoch {was} then {now}");
    }
    m1.close();
    m2.close();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_static_member_gets_its_partitions_back_without_a_rebalance() {
    let _alone = HEAVY.write().unwrap_or_else(|e| e.into_inner());
    let b = broker();
    let (topic, output, group) = (unique("gs"), unique("gsout"), unique("grps"));
    create_topic(&b, &topic, 4);
    create_topic(&b, &output, 1);
    let root = common::tmpdir("kafka-group-static");
    let sql = |instance: &str| {
        format!(
            "CREATE SOURCE s (_key VARCHAR, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
                 FROM KAFKA WITH (topic = '{topic}', 'properties.bootstrap.servers' = '{b}', format = 'json',
                     'properties.group.id' = '{group}', 'properties.group.instance.id' = '{instance}',
                     'properties.session.timeout.ms' = '30000');
             CREATE STREAM agg AS SELECT _key AS k, window_start AS ws, COUNT(*) AS n FROM s GROUP BY _key, TUMBLE(ts, INTERVAL '10' SECOND);
             CREATE SINK out FROM agg INTO KAFKA WITH (topic = '{output}', 'properties.bootstrap.servers' = '{b}')"
        )
    };
    let open = |name: &str| {
        let mut cfg = Config::default();
        cfg.set("shared_dir", &root.join("shared").display().to_string()).unwrap();
        cfg.set("checkpoint_interval", "1s").unwrap();
        let db = Database::open(&root.join(name).display().to_string(), cfg).unwrap();
        db.execute(&sql(name)).unwrap();
        db
    };
    // (partition, owned_ms) of what a member owns.
    let owned = |db: &Database| -> Vec<(i64, i64)> {
        let r = db.execute("SHOW PARTITIONS").unwrap();
        let mut v = vec![];
        for b in &r.batches {
            let p = b.column(1).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
            let ms = b.column(5).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                v.push((p.value(i), ms.value(i)));
            }
        }
        v.sort();
        v
    };
    let settled = |m1: &Database, m2: &Database, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (a, b) = (owned(m1), owned(m2));
            if a.len() + b.len() == 4 && !a.is_empty() && !b.is_empty() {
                return (a, b);
            }
            assert!(Instant::now() < deadline, "{what}: not settled in 60 s: {a:?} {b:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let m1 = open("i1");
    let m2 = open("i2");
    let (before1, before2) = settled(&m1, &m2, "two static members");
    m1.close();
    // A static member that closes does not leave: no rebalance gives its partitions to i2 (a
    // dynamic member's leave would, within a second).
    std::thread::sleep(Duration::from_secs(3));
    let parts = |v: &[(i64, i64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(parts(&owned(&m2)), parts(&before2), "i2 took partitions of the closed static member");
    // Within the session timeout, the restarted member gets the same partitions back, and the
    // other member keeps its own all along (their owned time never restarts).
    let t = Instant::now();
    let m1 = open("i1");
    let (after1, after2) = settled(&m1, &m2, "after the restart");
    assert!(t.elapsed() < Duration::from_secs(25), "took {:?}", t.elapsed());
    assert_eq!(parts(&after1), parts(&before1));
    assert_eq!(parts(&after2), parts(&before2));
    for ((_, was), (_, now)) in before2.iter().zip(&after2) {
        assert!(now > was, "member i2 lost a partition meanwhile: {before2:?} then {after2:?}");
    }
    m1.close();
    m2.close();
    let _ = std::fs::remove_dir_all(&root);
}
