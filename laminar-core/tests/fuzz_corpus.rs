//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`, seeds and what the fuzzers
//! kept) and of the fixed findings (`fuzz/regressions/<target>/`) through the same entry points
//! the cargo fuzz targets call (`laminar_core::fuzz`), on the stable toolchain: a finding once
//! fixed stays fixed without building the fuzzers. Each input must return; a panic fails the
//! test, naming the file.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = vec![];
    for kind in ["corpus", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            out.extend(dir.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    out.sort();
    out
}

/// Panics inside the libraries LaminarDB embeds are caught on purpose (arrow-rs on a damaged IPC
/// stream): not printed. Any other panic is, as by the default hook.
fn quiet_library_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|l| l.file().contains("/.cargo/registry/")) {
                default(info);
            }
        }));
    });
}

fn replay(target: &str, entry: fn(&[u8]), at_least: usize) {
    quiet_library_panics();
    let files = inputs(target);
    assert!(files.len() >= at_least, "{target}: {} inputs, expected at least {at_least} seeds", files.len());
    let mut failures = vec![];
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(p) = std::panic::catch_unwind(|| entry(&data)) {
            failures.push(format!("{}: {}", f.display(), laminar_core::panic_guard::message(&*p)));
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs panicked:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    println!("{target}: {} inputs replayed", files.len());
}

#[test]
fn sql() {
    replay("sql", laminar_core::fuzz::sql, 10);
}

#[test]
fn sql_structured() {
    replay("sql_structured", laminar_core::fuzz::sql_structured, 8);
}

#[test]
fn push() {
    replay("push", laminar_core::fuzz::push, 8);
}

#[test]
fn durable() {
    replay("durable", laminar_core::fuzz::durable, 7);
}

#[test]
fn wal() {
    replay("wal", laminar_core::fuzz::wal, 3);
}

#[cfg(feature = "kafka")]
#[test]
fn kafka_values() {
    replay("kafka_values", laminar_core::fuzz::kafka_values, 5);
}

#[cfg(feature = "postgres")]
#[test]
fn pgoutput() {
    replay("pgoutput", laminar_core::fuzz::pgoutput, 7);
}

#[cfg(feature = "mysql")]
#[test]
fn binlog() {
    replay("binlog", laminar_core::fuzz::binlog, 4);
}

/// The structured generator builds statements the engine accepts (else it would fuzz only the
/// error paths): most of the seeds' statements are created.
#[test]
fn the_structured_generator_makes_statements_the_engine_accepts() {
    let mut accepted = 0;
    let mut texts = vec![];
    for i in 0..200u32 {
        let data: Vec<u8> =
            (0..32u32).map(|j| (i.wrapping_mul(2654435761).wrapping_add(j * 40503) >> 7) as u8).collect();
        let text = laminar_core::fuzz::statement(&data);
        let db = laminar_core::Database::open(":memory:", laminar_core::Config::default()).unwrap();
        db.execute(
            "CREATE SOURCE s (k BIGINT, v BIGINT, name VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
             CREATE SOURCE r (k BIGINT, w DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
             CREATE TABLE t (k BIGINT PRIMARY KEY, label VARCHAR)",
        )
        .unwrap();
        match db.execute(&text) {
            Ok(_) => accepted += 1,
            Err(e) => texts.push(format!("{text}\n  -> {e}")),
        }
        db.close();
    }
    println!(
        "{accepted} of 200 generated statements accepted; refused, first 5:\n{}",
        texts[..texts.len().min(5)].join("\n")
    );
    assert!(
        accepted >= 100,
        "only {accepted} of 200 generated statements were accepted:\n{}",
        texts[..texts.len().min(10)].join("\n")
    );
}
