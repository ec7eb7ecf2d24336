//! The files LaminarDB reads back after a crash, damaged at random (issue 27): a database
//! directory with a checkpoint (catalog, aggregate and join state, a view, source positions) and
//! a write-ahead log after it is copied, and in each copy one file gets random bytes flipped,
//! is cut short, or is extended with random bytes. Opening the copy must end in a database that
//! answers or in an error with a kind and a message — never a panic or a hang. Each case is
//! seeded (`LAMINAR_CORRUPTION_SEED`, `LAMINAR_CORRUPTION_CASES`) and named in the failure so
//! that it can be replayed.
//!
//! This is a deterministic stand-in, run on every `cargo test`, for the `cargo fuzz` targets of
//! issue 27, which CI does not build.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{KVT, kvt};
use laminar_core::{Config, Database};
use rand::{Rng, SeedableRng};

fn config() -> Config {
    let mut c = Config::default();
    c.set("durability", "wal").unwrap();
    c.set("checkpoint_interval", "0").unwrap();
    c.set("workers", "2").unwrap();
    c
}

/// A directory with a checkpoint and log records after it.
fn original(dir: &Path) {
    let db = Database::open(dir.to_str().unwrap(), config()).unwrap();
    db.execute(KVT).unwrap();
    db.execute("CREATE SOURCE r (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)").unwrap();
    db.execute("CREATE MATERIALIZED VIEW agg AS SELECT k, COUNT(*) AS n, SUM(v) AS t FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)").unwrap();
    db.execute("CREATE STREAM j AS SELECT s.k, s.v, r.v AS w FROM s JOIN r ON s.k = r.k AND r.ts BETWEEN s.ts - INTERVAL '5' SECOND AND s.ts + INTERVAL '5' SECOND").unwrap();
    let mut ws = db.writer("s").unwrap();
    let mut wr = db.writer("r").unwrap();
    for i in 0..6i64 {
        let rows: Vec<(i64, i64, i64)> = (0..200).map(|j| (j % 17, i * 200 + j, (i * 200 + j) * 50)).collect();
        ws.write(kvt(&rows)).unwrap();
        wr.write(kvt(&rows)).unwrap();
        if i == 3 {
            ws.flush().unwrap();
            wr.flush().unwrap();
            db.checkpoint().unwrap();
        }
    }
    ws.flush().unwrap();
    wr.flush().unwrap();
    db.close_abruptly();
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n != "LOCK") && p.metadata().unwrap().len() > 0 {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Damages `file`: flips 1–8 random bytes, cuts it at a random length, or appends random bytes.
/// Returns what it did.
fn damage(file: &Path, rng: &mut rand::rngs::SmallRng) -> String {
    let mut data = std::fs::read(file).unwrap();
    let what = match rng.random_range(0..3) {
        0 => {
            let n = rng.random_range(1..=8);
            let mut at = vec![];
            for _ in 0..n {
                let i = rng.random_range(0..data.len());
                data[i] ^= rng.random_range(1..=255u8);
                at.push(i);
            }
            format!("flipped bytes at {at:?}")
        }
        1 => {
            let n = rng.random_range(0..data.len());
            data.truncate(n);
            format!("cut to {n} bytes")
        }
        _ => {
            let n = rng.random_range(1..64);
            data.extend((0..n).map(|_| rng.random::<u8>()));
            format!("extended by {n} random bytes")
        }
    };
    std::fs::write(file, data).unwrap();
    what
}

/// Opens `dir` on a thread of its own: Ok(Ok) a database that answered, Ok(Err) an error with
/// its kind, Err a panic or a hang (with what happened).
fn try_open(dir: &Path) -> Result<Result<(), String>, String> {
    let d = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| match Database::open(d.to_str().unwrap(), config()) {
            Ok(db) => {
                // What it recovered is readable, and it takes new rows.
                let out = db
                    .query("SELECT COUNT(*) FROM agg")
                    .map(|_| ())
                    .or_else(|e| if e.kind() == laminar_core::ErrorKind::NotFound { Ok(()) } else { Err(e) });
                let pushed = db.writer("s").and_then(|mut w| {
                    w.write(kvt(&[(1, 1, 999_000)]))?;
                    w.flush()
                });
                db.close();
                match (out, pushed) {
                    (Err(e), _) => Err(format!("opened, then a query failed: {e}")),
                    (_, Err(e)) if e.kind() != laminar_core::ErrorKind::NotFound => {
                        Err(format!("opened, then a push failed: {e}"))
                    }
                    _ => Ok(Ok(())),
                }
            }
            Err(e) => {
                assert!(!e.message().is_empty());
                Ok(Err(format!("{:?}: {e}", e.kind())))
            }
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(Ok(r))) => Ok(r),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(p)) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
        Err(_) => Err("did not open or fail within 60 s".into()),
    }
}

#[test]
fn damaged_logs_and_checkpoints_open_or_fail_with_an_error_never_a_panic() {
    let root = common::tmpdir("corruption");
    let orig = root.join("original");
    original(&orig);
    let all = files(&orig);
    assert!(all.iter().any(|p| p.to_string_lossy().contains("wal")), "no log file in {all:?}");
    assert!(all.iter().any(|p| p.to_string_lossy().contains("MANIFEST")), "no manifest in {all:?}");
    let seeds = common::case_seeds("LAMINAR_CORRUPTION_SEED", "LAMINAR_CORRUPTION_CASES", 60, 0xC0FFEE);
    let (mut opened, mut refused) = (0, 0);
    let mut failures = vec![];
    for seed in seeds {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let copy = root.join(format!("case-{seed}"));
        copy_dir(&orig, &copy);
        let victim = &files(&copy)[rng.random_range(0..all.len())];
        let what = damage(victim, &mut rng);
        let name = victim.strip_prefix(&copy).unwrap().display().to_string();
        match try_open(&copy) {
            Ok(Ok(())) => opened += 1,
            Ok(Err(e)) => {
                refused += 1;
                if std::env::var("LAMINAR_CORRUPTION_SHOW").is_ok() {
                    println!("seed {seed}: {name} {what}: {e}");
                }
            }
            Err(e) => failures.push(format!("seed {seed}: {name} {what}: {e}")),
        }
        let _ = std::fs::remove_dir_all(&copy);
    }
    println!("damaged copies: {opened} opened, {refused} refused with an error, {} failed", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(&root);
}
