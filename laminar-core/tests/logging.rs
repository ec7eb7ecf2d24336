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
    let ours: Vec<_> = RECORDS.lock().unwrap().iter().filter(|r| r.1 == "laminardb").cloned().collect();
    assert_eq!(ours, vec![(log::Level::Warn, "laminardb".to_string(), info.warnings[0].clone())]);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}
