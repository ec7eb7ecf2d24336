mod common;
use common::*;

#[test]
fn tumble_count_end_to_end() {
    let db = db(1);
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM c AS SELECT k, COUNT(*) AS n, SUM(v) AS sv, window_start, window_end FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)").unwrap();
    let sub = db.subscribe("c").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 10, 1000), (2, 20, 2000), (1, 5, 9000)])).unwrap();
    w.flush().unwrap();
    assert!(drain(&sub).is_empty(), "nothing closes before the watermark passes 10s");
    w.write(kvt(&[(1, 1, 16000)])).unwrap(); // watermark 11s closes [0,10)
    w.flush().unwrap();
    let got = sorted(&drain(&sub));
    assert_eq!(got, vec![
        "1|2|15|1970-01-01T00:00:00|1970-01-01T00:00:10".to_string(),
        "2|1|20|1970-01-01T00:00:00|1970-01-01T00:00:10".to_string(),
    ]);
    w.finish().unwrap();
    w.flush().unwrap();
    assert_eq!(sorted(&drain(&sub)), vec!["1|1|1|1970-01-01T00:00:10|1970-01-01T00:00:20".to_string()]);
}

#[test]
fn every_non_windowed_debug() {
    use std::sync::Arc;
    let clock = Arc::new(laminar_core::ManualClock::default());
    let db = laminar_core::Database::open_with_clock(":memory:", laminar_core::Config::default(), clock).unwrap();
    db.execute(KVT).unwrap();
    db.execute("CREATE STREAM c AS SELECT k, MAX(v) AS m FROM s GROUP BY k EMIT EVERY INTERVAL '1' SECOND").unwrap();
    let sub = db.subscribe("c").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 10, 1000), (2, 20, 2000)])).unwrap();
    db.advance_clock(std::time::Duration::from_secs(1)).unwrap();
    let a = sorted(&drain(&sub));
    w.write(kvt(&[(1, 30, 3000), (3, 5, 2000)])).unwrap();
    db.advance_clock(std::time::Duration::from_secs(1)).unwrap();
    let b = sorted(&drain(&sub));
    assert_eq!((a, b), (vec!["1|10".to_string(), "2|20".to_string()], vec!["1|30".to_string(), "3|5".to_string()]));
}
