//! The engine writes nothing to stderr: its warnings go through the `log` facade (target
//! `"laminardb"`) to whatever logger the host installed, and still to `Database::recovery()`.

mod common;

use std::sync::Mutex;

use common::tmpdir;
use laminar_core::{Config, Database};

/// Every record logged in this process: (level, target, message).
static RECORDS: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        RECORDS.lock().unwrap().push((r.level(), r.target().to_string(), r.args().to_string()));
    }
    fn flush(&self) {}
}

/// Opens `dir` as a durable database, creates a source, closes it (a checkpoint), then appends
/// a few bytes of garbage to the newest log segment: the next open drops them as a torn tail,
/// with a warning. The foreign-language tests provoke their warning the same way.
fn durable_with_a_torn_log_tail(dir: &std::path::Path) {
    let db = Database::open(dir.to_str().unwrap(), Config::default()).unwrap();
    db.execute("CREATE SOURCE s (k BIGINT NOT NULL)").unwrap();
    db.close();
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal")).unwrap().flatten().map(|e| e.path()).collect();
    segs.sort();
    let seg = segs.pop().expect("a log segment after close");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0xab; 7]);
    std::fs::write(&seg, bytes).unwrap();
}

#[test]
fn recovery_warnings_go_to_the_installed_logger_and_to_recovery() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let dir = tmpdir("logging-torn-tail");
    durable_with_a_torn_log_tail(&dir);
    RECORDS.lock().unwrap().clear();
    let db = Database::open(dir.to_str().unwrap(), Config::default()).unwrap();
    let info = db.recovery().unwrap();
    assert_eq!(info.warnings.len(), 1, "{info:?}");
    assert!(info.warnings[0].contains("torn tail"), "{info:?}");
    let warned: Vec<_> =
        RECORDS.lock().unwrap().iter().filter(|r| r.1 == "laminardb" && r.0 <= log::Level::Warn).cloned().collect();
    assert_eq!(warned, vec![(log::Level::Warn, "laminardb".to_string(), info.warnings[0].clone())]);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);

    // Progress of recovery: one INFO line when the log has been replayed, with the count.
    let dir = tmpdir("logging-replay");
    let db = Database::open(dir.to_str().unwrap(), Config::default()).unwrap();
    db.execute("CREATE SOURCE s (k BIGINT NOT NULL)").unwrap();
    for i in 0..5 {
        db.execute(&format!("INSERT INTO s VALUES ({i}), ({})", i + 100)).unwrap();
    }
    db.close_abruptly(); // no checkpoint at close: the next open replays the log
    RECORDS.lock().unwrap().clear();
    let db = Database::open(dir.to_str().unwrap(), Config::default()).unwrap();
    let info = db.recovery().unwrap();
    assert!(info.records_replayed >= 5, "five inserts were logged: {info:?}");
    let infos: Vec<String> = RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.1 == "laminardb" && r.0 == log::Level::Info && r.2.starts_with("recovery:"))
        .map(|r| r.2.clone())
        .collect();
    assert_eq!(infos.len(), 1, "{infos:?}");
    let want = format!("replayed {} write-ahead log records", info.records_replayed);
    assert!(infos[0].contains(&want) && infos[0].contains("bytes"), "{infos:?}, want '{want}'");
    let n: u64 = db.query("SELECT COUNT(*) FROM s").map(|b| common::rows(&b)[0][0].parse().unwrap()).unwrap();
    assert_eq!(n, 10, "the replayed inserts are back");
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}
