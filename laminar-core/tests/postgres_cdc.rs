//! The POSTGRES_CDC connector against a real server (`scripts/services.sh start postgres`; its
//! URL is read from `$LAMINAR_POSTGRES` or `<target dir>/services.env`). An independent writer
//! (`psql`, outside the engine) changes the captured table in random transactions while
//! LaminarDB streams; the LaminarDB table and an aggregate over it are compared with the
//! server's own `SELECT` over the same table, the batch oracle.
#![cfg(feature = "postgres")]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::{SERVER, Server, server, server_url, shared};
use common::{difference, sorted, two_table_transactions};
use laminar_core::{Config, Database};
use rand::{Rng, SeedableRng};

/// CDC-specific helpers of the shared server.
impl Server {
    fn with(&self, table: &str, slot: &str) -> String {
        format!(
            "hostname = '{}', port = '{}', username = '{}', password = '{}', 'database-name' = '{}', 'table-name' = '{table}', 'slot.name' = '{slot}', 'publication.name' = '{slot}'",
            self.host, self.port, self.user, self.password, self.db
        )
    }

    fn drop_slot(&self, slot: &str) {
        // A reader closed a moment ago may still hold the slot (its server process ends when
        // it sees the connection closed).
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .psql(&format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"))
            .trim()
            != "0"
        {
            assert!(Instant::now() < deadline, "slot {slot} still active 30 s after its reader closed");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.psql(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}';
             DROP PUBLICATION IF EXISTS {slot};"
        ));
    }
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    format!("{name}_{}_{n}", std::process::id())
}

/// Text of `len` characters from [a-z0-9] (no compression to speak of, so PostgreSQL keeps a
/// long one out of line, TOASTed).
fn text(rng: &mut impl Rng, len: usize) -> String {
    const C: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len).map(|_| C[rng.random_range(0..C.len())] as char).collect()
}

/// Random transactions over `table` (id INT PRIMARY KEY, name TEXT, v BIGINT, big TEXT) as one
/// script; `ids` tracks the keys present. Inserts (a third with a long `big`), updates of `v` and
/// `name` only (a TOASTed `big` then travels as "unchanged"), updates of `big`, primary-key
/// changes, deletes, now and then a multi-row update.
fn transactions(rng: &mut impl Rng, table: &str, ids: &mut BTreeSet<i32>, n: usize, next_id: &mut i32) -> String {
    let mut s = String::new();
    for _ in 0..n {
        s.push_str("BEGIN;\n");
        for _ in 0..rng.random_range(1..5) {
            let pick = |rng: &mut dyn rand::RngCore, ids: &BTreeSet<i32>| -> Option<i32> {
                if ids.is_empty() {
                    return None;
                }
                ids.iter().nth(rng.random_range(0..ids.len())).copied()
            };
            match rng.random_range(0..100) {
                0..35 => {
                    let id = *next_id;
                    *next_id += 1;
                    let len = if rng.random_range(0..3) == 0 { 3000 + rng.random_range(0..3000) } else { 8 };
                    let big = text(rng, len);
                    s.push_str(&format!(
                        "INSERT INTO {table} VALUES ({id}, 'n{id}', {}, '{big}');\n",
                        rng.random_range(-1000..1000)
                    ));
                    ids.insert(id);
                }
                35..60 => {
                    if let Some(id) = pick(rng, ids) {
                        s.push_str(&format!(
                            "UPDATE {table} SET v = v + {}, name = 'u{}' WHERE id = {id};\n",
                            rng.random_range(1..100),
                            rng.random_range(0..1000)
                        ));
                    }
                }
                60..68 => {
                    if let Some(id) = pick(rng, ids) {
                        let len = 2500 + rng.random_range(0..2000);
                        let big = text(rng, len);
                        s.push_str(&format!("UPDATE {table} SET big = '{big}' WHERE id = {id};\n"));
                    }
                }
                68..78 => {
                    if let Some(id) = pick(rng, ids) {
                        let new = *next_id;
                        *next_id += 1;
                        s.push_str(&format!("UPDATE {table} SET id = {new}, v = v - 1 WHERE id = {id};\n"));
                        ids.remove(&id);
                        ids.insert(new);
                    }
                }
                78..95 => {
                    if let Some(id) = pick(rng, ids) {
                        s.push_str(&format!("DELETE FROM {table} WHERE id = {id};\n"));
                        ids.remove(&id);
                    }
                }
                _ => {
                    let m = rng.random_range(2..7);
                    s.push_str(&format!("UPDATE {table} SET v = v * 2 WHERE id % {m} = 0 AND abs(v) < 100000;\n"));
                }
            }
        }
        // A rolled-back transaction leaves `ids` ahead of the server; a statement on a key that
        // is not there changes nothing, and each round rereads the keys.
        s.push_str(if rng.random_range(0..20) == 0 { "ROLLBACK;\n" } else { "COMMIT;\n" });
    }
    s
}

const COLUMNS: &str = "id, name, v, big";

/// Waits (up to 60 s) until LaminarDB's table `t` and the view `g` equal the server's table and
/// the same aggregate over it.
fn converge(db: &Database, srv: &Server, table: &str) {
    let want = srv.rows(&format!("SELECT {COLUMNS} FROM {table}"));
    let want_g = srv.rows(&format!("SELECT v % 7, COUNT(*), SUM(v), MAX(length(big)) FROM {table} GROUP BY v % 7"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        db.flush().unwrap();
        let got = sorted(&db.query(&format!("SELECT {COLUMNS} FROM t")).unwrap());
        let got_g = sorted(&db.query("SELECT b, n, s, l FROM g").unwrap());
        if got == want && got_g == want_g {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s the table differs from the server: {}; aggregate {:?} vs {:?}",
            difference(&got, &want),
            got_g,
            want_g
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn keys(srv: &Server, table: &str) -> BTreeSet<i32> {
    srv.psql(&format!("SELECT id FROM {table}")).lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
}

/// The snapshot, then random transactions (key changes, deletes, TOASTed values left unchanged
/// by an update, rolled-back transactions), a TRUNCATE, a crash after a checkpoint (the changes
/// since it are read again and applied once) and a clean reopen: after each, the table and a
/// GROUP BY over it equal the server's.
#[test]
fn snapshot_then_changes_truncate_and_crashes_match_the_server() {
    let _shared = shared();
    let srv = server();
    let table = unique("cdc");
    let slot = unique("laminardb_test");
    srv.psql(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, name TEXT, v BIGINT, big TEXT);
         ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;"
    ));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(18);
    let mut ids = BTreeSet::new();
    let mut next_id = 1;
    // Rows before the slot exists: the snapshot.
    srv.psql(&transactions(&mut rng, &table, &mut ids, 100, &mut next_id));
    let dir = common::tmpdir("pg-cdc");
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "1h").unwrap();
    let open = || Database::open(dir.to_str().unwrap(), cfg.clone()).unwrap();
    let mut db = open();
    db.execute(&format!(
        "CREATE TABLE t (id INT, name VARCHAR, v BIGINT, big VARCHAR, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({});
         CREATE MATERIALIZED VIEW g AS SELECT v % 7 AS b, COUNT(*) AS n, SUM(v) AS s, MAX(length(big)) AS l FROM t GROUP BY v % 7",
        srv.with(&table, &slot)
    ))
    .unwrap();
    converge(&db, &srv, &table);
    let confirmed = || {
        srv.psql(&format!(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .trim()
        .parse::<f64>()
        .unwrap()
    };
    let initial = confirmed();
    let walsender = srv.psql(&format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"));

    for round in 0..6 {
        ids = keys(&srv, &table);
        let mut script = transactions(&mut rng, &table, &mut ids, 150, &mut next_id);
        if round == 0 {
            // The replication connection lost mid-stream (its walsender terminated between two
            // transactions of the writer): the reader reconnects and resumes.
            script.push_str(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}';\n"
            ));
            script.push_str(&transactions(&mut rng, &table, &mut ids, 150, &mut next_id));
        }
        if round == 2 {
            script.push_str(&format!(
                "BEGIN; TRUNCATE {table}; INSERT INTO {table} VALUES (-1, 'after', 5, 'x'); COMMIT;\n"
            ));
        }
        srv.psql(&script);
        converge(&db, &srv, &table);
        match round {
            0 => {
                let pid = srv.psql(&format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"));
                assert!(
                    !pid.trim().is_empty() && pid != walsender,
                    "no new replication connection: {pid:?} (was {walsender:?})"
                );
            }
            1 => {
                // The slot's confirmed position stays where the last durable checkpoint was
                // (none yet: the slot's start, behind the changes applied) and moves up to the
                // applied changes with a checkpoint. Past the reader's status interval (10 s):
                // a reader that reported what it read instead of what a checkpoint covers would
                // have done so by now.
                std::thread::sleep(Duration::from_secs(11));
                let before = confirmed();
                assert_eq!(before, initial, "the slot's confirmed position moved before any checkpoint");
                db.checkpoint().unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while confirmed() <= before {
                    assert!(
                        Instant::now() < deadline,
                        "the slot's confirmed_flush_lsn did not advance after a checkpoint"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            3 => {
                // A crash: the changes since round 1's checkpoint come again from the slot (after
                // the reader's status interval, so that a too-early confirmation would be sent).
                std::thread::sleep(Duration::from_secs(11));
                db.close_abruptly();
                db = open();
                converge(&db, &srv, &table);
            }
            4 => {
                db.checkpoint().unwrap();
                db.close();
                // Changes while LaminarDB is closed: the slot keeps them.
                ids = keys(&srv, &table);
                srv.psql(&transactions(&mut rng, &table, &mut ids, 50, &mut next_id));
                db = open();
            }
            _ => {}
        }
    }
    converge(&db, &srv, &table);
    let m = db.metrics().unwrap();
    let src = m.sources.iter().find(|s| s.name == "t").unwrap();
    assert!(src.rows_in > 0, "{:?}", m.sources);
    // The position metric is the LSN handed over: at most the server's WAL position, and the
    // lag the WAL bytes between them.
    let wal: i64 = srv.psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").trim().parse().unwrap();
    let p = &src.partitions.iter().find(|(p, _)| p == "0").unwrap().1;
    let (pos, lag) = (p.position.unwrap(), p.lag.unwrap());
    assert!(pos > 0 && pos <= wal && lag >= 0 && pos + lag <= wal, "position {pos}, lag {lag}, WAL at {wal}");
    assert!(p.records >= 50 && p.bytes > 0, "{p:?}");
    db.close();
    srv.drop_slot(&slot);
    srv.psql(&format!("DROP TABLE {table}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Clear errors: a declared column the server's table lacks; a table without the declared
/// key's columns; a slot dropped while LaminarDB was closed (the changes after the checkpoint
/// are gone: the message says to take a new snapshot); a wrong password.
#[test]
fn clear_errors_for_missing_columns_a_dropped_slot_and_a_wrong_password() {
    let _shared = shared();
    let srv = server();
    let table = unique("cdc_err");
    let slot = unique("laminardb_err");
    srv.psql(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v BIGINT); INSERT INTO {table} VALUES (1, 10), (2, 20);"
    ));
    let dir = common::tmpdir("pg-cdc-err");
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "1h").unwrap();

    let db = Database::open(dir.to_str().unwrap(), cfg.clone()).unwrap();
    let e = db
        .execute(&format!(
            "CREATE TABLE bad (id INT, nope BIGINT, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({})",
            srv.with(&table, &slot)
        ))
        .unwrap_err();
    assert!(e.message().contains("nope") && e.message().contains(&table), "{e}");
    let e = db
        .execute(&format!(
            "CREATE SOURCE plain (id INT, v BIGINT) FROM POSTGRES_CDC WITH ({})",
            srv.with(&table, &slot)
        ))
        .unwrap_err();
    assert!(e.message().contains("CREATE TABLE"), "{e}");
    let wrong = srv.with(&table, &slot).replace(&format!("password = '{}'", srv.password), "password = 'wrong'");
    let e = db
        .execute(&format!("CREATE TABLE w (id INT, v BIGINT, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({wrong})"))
        .unwrap_err();
    assert!(e.message().contains("password") || e.message().contains("authentication"), "{e}");

    db.execute(&format!(
        "CREATE TABLE t (id INT, v BIGINT, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({});
         CREATE MATERIALIZED VIEW c AS SELECT COUNT(*) AS n FROM t",
        srv.with(&table, &slot)
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        db.flush().unwrap();
        if sorted(&db.query("SELECT id, v FROM t").unwrap()) == ["1|10", "2|20"] {
            break;
        }
        assert!(Instant::now() < deadline, "the snapshot did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
    db.checkpoint().unwrap();
    db.close();
    srv.drop_slot(&slot);
    srv.psql(&format!("INSERT INTO {table} VALUES (3, 30)"));
    // Reopened: the checkpoint's position cannot be resumed without the slot; the view over
    // the table fails with a message that says what to do.
    let db = Database::open(dir.to_str().unwrap(), cfg.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let msg = loop {
        let m = db.metrics().unwrap();
        if let Some(f) = m.streams.iter().find(|s| s.name == "c").and_then(|s| s.failed.clone()) {
            break f;
        }
        assert!(Instant::now() < deadline, "no error for a dropped slot");
        std::thread::sleep(Duration::from_millis(100));
    };
    db.close();
    assert!(msg.contains(&slot) && msg.contains("scan.startup.mode"), "{msg}");
    srv.drop_slot(&slot);
    srv.psql(&format!("DROP TABLE {table}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A partitioned table: its snapshot and its partitions' changes (published under the table's
/// name) reach the LaminarDB table, a row moving between partitions included.
#[test]
fn a_partitioned_table_is_captured_with_its_partitions_changes() {
    let _shared = shared();
    let srv = server();
    let table = unique("cdc_part");
    let slot = unique("laminardb_part");
    srv.psql(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v BIGINT) PARTITION BY RANGE (id);
         CREATE TABLE {table}_a PARTITION OF {table} FOR VALUES FROM (MINVALUE) TO (100);
         CREATE TABLE {table}_b PARTITION OF {table} FOR VALUES FROM (100) TO (MAXVALUE);
         INSERT INTO {table} SELECT g, g * 10 FROM generate_series(1, 200, 7) g;"
    ));
    let in_snapshot = srv.rows(&format!("SELECT id FROM {table}")).len();
    common::capture_info_logs();
    let db = Database::open_in_memory().unwrap();
    db.execute(&format!(
        "CREATE TABLE t (id INT, v BIGINT, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({})",
        srv.with(&table, &slot)
    ))
    .unwrap();
    // The snapshot first (its logged row count is then the table's, not a race with the changes).
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.query("SELECT id FROM t").unwrap().iter().map(|b| b.num_rows()).sum::<usize>() < in_snapshot {
        assert!(Instant::now() < deadline, "the snapshot was not read in 60 s");
        db.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    srv.psql(&format!(
        "INSERT INTO {table} VALUES (2, 5), (150, 6);
         UPDATE {table} SET v = v + 1 WHERE id % 3 = 0;
         UPDATE {table} SET id = 121 WHERE id = 8;
         DELETE FROM {table} WHERE id = 197;"
    ));
    let want = srv.rows(&format!("SELECT id, v FROM {table}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        db.flush().unwrap();
        let got = sorted(&db.query("SELECT id, v FROM t").unwrap());
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "the table differs from the server: {}", difference(&got, &want));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The snapshot's progress was logged: a line when it started, one with its row count.
    let lines: Vec<String> = common::INFO_LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("POSTGRES_CDC source 't'"))
        .cloned()
        .collect();
    // (Other tests of this binary log lines of their own sources named 't' meanwhile.)
    let started = format!("reading the initial snapshot of \"public\".\"{table}\"");
    assert_eq!(lines.iter().filter(|l| l.contains(&started)).count(), 1, "{lines:?}");
    let read = format!("initial snapshot read, {in_snapshot} rows in");
    assert!(lines.iter().any(|l| l.contains(&read)), "{lines:?}");
    db.close();
    srv.drop_slot(&slot);
    srv.psql(&format!("DROP TABLE {table}"));
}

/// The server restarted (stopped, started again by `scripts/services.sh`) while LaminarDB
/// streams, with transactions before and after: the reader reconnects and the table and the
/// aggregate equal the server's again.
#[test]
fn a_server_restart_mid_stream_is_resumed() {
    let _alone = SERVER.write().unwrap_or_else(|e| e.into_inner());
    let srv = server();
    let table = unique("cdc_restart");
    let slot = unique("laminardb_restart");
    srv.psql(&format!("CREATE TABLE {table} (id INT PRIMARY KEY, name TEXT, v BIGINT, big TEXT)"));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let (mut ids, mut next_id) = (BTreeSet::new(), 1);
    srv.psql(&transactions(&mut rng, &table, &mut ids, 50, &mut next_id));
    let db = Database::open_in_memory().unwrap();
    db.execute(&format!(
        "CREATE TABLE t (id INT, name VARCHAR, v BIGINT, big VARCHAR, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({});
         CREATE MATERIALIZED VIEW g AS SELECT v % 7 AS b, COUNT(*) AS n, SUM(v) AS s, MAX(length(big)) AS l FROM t GROUP BY v % 7",
        srv.with(&table, &slot)
    ))
    .unwrap();
    converge(&db, &srv, &table);
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    for round in 0..2 {
        ids = keys(&srv, &table);
        srv.psql(&transactions(&mut rng, &table, &mut ids, 100, &mut next_id));
        for cmd in ["stop", "start"] {
            let out = Command::new(&services).args([cmd, "postgres"]).output().unwrap();
            assert!(out.status.success(), "services.sh {cmd} postgres: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(server_url(), srv.url, "the server came back on another address (round {round})");
        ids = keys(&srv, &table);
        srv.psql(&transactions(&mut rng, &table, &mut ids, 100, &mut next_id));
        converge(&db, &srv, &table);
    }
    db.close();
    srv.drop_slot(&slot);
    srv.psql(&format!("DROP TABLE {table}"));
}

/// The child of `sigkill_rounds_while_the_writer_goes_on`: opens the database (creating the CDC
/// table and a GROUP BY over it when new), reports READY and streams until it is killed.
#[test]
#[ignore = "run by sigkill_rounds_while_the_writer_goes_on as a child process"]
fn pg_cdc_crash_child() {
    let Ok(dir) = std::env::var("LAMINAR_CRASH_DIR") else { return };
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", &std::env::var("LAMINAR_CRASH_INTERVAL").unwrap()).unwrap();
    let db = Database::open(&dir, cfg).unwrap();
    if db.object("t").is_err() {
        db.execute(&format!(
            "CREATE TABLE t (id INT, name VARCHAR, v BIGINT, big VARCHAR, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({});
             CREATE MATERIALIZED VIEW g AS SELECT v % 7 AS b, COUNT(*) AS n, SUM(v) AS s, MAX(length(big)) AS l FROM t GROUP BY v % 7",
            std::env::var("LAMINAR_CRASH_WITH").unwrap()
        ))
        .unwrap();
    }
    println!("READY");
    // Bounded even if the parent dies without killing it.
    std::thread::sleep(Duration::from_secs(60));
}

/// Ten SIGKILLs of a process streaming a captured table (checkpoints every 50–300 ms) while an
/// independent writer keeps changing the table: after the last reopen the table and a GROUP BY
/// over it equal the server's — nothing lost, nothing applied twice.
#[test]
fn sigkill_rounds_while_the_writer_goes_on() {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _shared = shared();
    let srv = server();
    let table = unique("cdc_kill");
    let slot = unique("laminardb_kill");
    srv.psql(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, name TEXT, v BIGINT, big TEXT);
         ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;"
    ));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(std::process::id() as u64);
    let mut ids = BTreeSet::new();
    let mut next_id = 1;
    srv.psql(&transactions(&mut rng, &table, &mut ids, 100, &mut next_id));
    // The writer: batches of 40 random transactions until told to stop.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, srv, table) = (stop.clone(), server(), table.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
            let mut txns = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut ids = keys(&srv, &table);
                srv.psql(&transactions(&mut rng, &table, &mut ids, 40, &mut next_id));
                txns += 40;
                std::thread::sleep(Duration::from_millis(20));
            }
            txns
        })
    };
    let dir = common::tmpdir("pg-cdc-kill");
    let exe = std::env::current_exe().unwrap();
    let log = std::env::temp_dir().join(format!("laminar-pg-cdc-child-{}.log", std::process::id()));
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let rounds: usize = std::env::var("LAMINAR_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    for round in 0..rounds {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args(["--exact", "pg_cdc_crash_child", "--include-ignored", "--nocapture", "--test-threads", "1"])
                .env("LAMINAR_CRASH_DIR", &dir)
                .env("LAMINAR_CRASH_WITH", srv.with(&table, &slot))
                .env("LAMINAR_CRASH_INTERVAL", format!("{}ms", rng.random_range(50..300)))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .unwrap(),
        );
        let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "round {round}: the child ended before READY; its stderr:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            if line.contains("READY") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2000)));
        drop(child); // SIGKILL
    }
    stop.store(true, Ordering::Relaxed);
    let txns = writer.join().unwrap();
    assert!(txns >= 200, "the writer wrote only {txns} transactions during the rounds");
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "1h").unwrap();
    let db = Database::open(dir.to_str().unwrap(), cfg).unwrap();
    converge(&db, &srv, &table);
    db.close();
    srv.drop_slot(&slot);
    srv.psql(&format!("DROP TABLE {table}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An independent writer runs random transactions (100,000 by default,
/// `LAMINAR_CDC_TRANSACTIONS`) on two captured tables while LaminarDB streams them, with a
/// checkpoint and a crash on the way; then each table, a GROUP BY over each, a join of the two
/// tables and an aggregate over that join equal the server's own queries, and a stream of
/// orders looked up (`FOR SYSTEM_TIME AS OF PROCTIME()`, created with the tables) against the
/// quiescent table equals the same lookup on the server.
#[test]
fn two_tables_under_a_long_random_writer_with_joins_match_the_server() {
    let _shared = shared();
    let srv = server();
    let (c, a) = (unique("cdc_cust"), unique("cdc_acct"));
    let (sc, sa) = (unique("laminardb_cust"), unique("laminardb_acct"));
    srv.psql(&format!(
        "CREATE TABLE {c} (id INT PRIMARY KEY, tier INT, big TEXT);
         ALTER TABLE {c} ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE {a} (id INT PRIMARY KEY, cust INT, balance BIGINT);"
    ));
    let total: usize = std::env::var("LAMINAR_CDC_TRANSACTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1818);
    let mut next = 0;
    // Errors (a key inserted twice after a key change) abort their transaction only.
    let run = |script: &str| {
        let mut child = Command::new("psql")
            .args([srv.url.as_str(), "-q", "-A", "-t", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    };
    run(&two_table_transactions(&mut rng, &c, &a, 500, &mut next));
    let dir = common::tmpdir("pg-cdc-two");
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "1h").unwrap();
    let open = || Database::open(dir.to_str().unwrap(), cfg.clone()).unwrap();
    let ddl = format!(
        "CREATE TABLE cust (id INT, tier INT, big VARCHAR, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({});
         CREATE TABLE acct (id INT, cust INT, balance BIGINT, PRIMARY KEY (id)) FROM POSTGRES_CDC WITH ({});
         CREATE MATERIALIZED VIEW per_tier AS SELECT tier, COUNT(*) AS n, SUM(length(big)) AS l FROM cust GROUP BY tier;
         CREATE MATERIALIZED VIEW per_cust AS SELECT cust, COUNT(*) AS n, SUM(balance) AS s FROM acct GROUP BY cust;
         CREATE MATERIALIZED VIEW joined AS SELECT x.id, x.balance, y.tier FROM acct x JOIN cust y ON x.cust = y.id;
         CREATE MATERIALIZED VIEW tier_balance AS SELECT y.tier, COUNT(*) AS n, SUM(x.balance) AS s FROM acct x JOIN cust y ON x.cust = y.id GROUP BY y.tier;
         CREATE SOURCE orders (oid BIGINT, cust INT, amount BIGINT);
         CREATE MATERIALIZED VIEW enriched AS SELECT o.oid, o.amount, y.tier FROM orders o JOIN cust FOR SYSTEM_TIME AS OF PROCTIME() AS y ON o.cust = y.id",
        srv.with(&c, &sc),
        srv.with(&a, &sa)
    );
    let mut db = open();
    db.execute(&ddl).unwrap();
    let checks = [
        ("SELECT id, tier, big FROM cust", format!("SELECT id, tier, big FROM {c}")),
        ("SELECT id, cust, balance FROM acct", format!("SELECT id, cust, balance FROM {a}")),
        ("SELECT tier, n, l FROM per_tier", format!("SELECT tier, COUNT(*), SUM(length(big)) FROM {c} GROUP BY tier")),
        ("SELECT cust, n, s FROM per_cust", format!("SELECT cust, COUNT(*), SUM(balance) FROM {a} GROUP BY cust")),
        (
            "SELECT id, balance, tier FROM joined",
            format!("SELECT x.id, x.balance, y.tier FROM {a} x JOIN {c} y ON x.cust = y.id"),
        ),
        (
            "SELECT tier, n, s FROM tier_balance",
            format!("SELECT y.tier, COUNT(*), SUM(x.balance) FROM {a} x JOIN {c} y ON x.cust = y.id GROUP BY y.tier"),
        ),
    ];
    let converged = |db: &Database| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            db.flush().unwrap();
            let mut diff = None;
            for (ours, theirs) in &checks {
                let got = sorted(&db.query(ours).unwrap());
                let want = srv.rows(theirs);
                if got != want {
                    diff = Some(format!("{ours}: {}", difference(&got, &want)));
                    break;
                }
            }
            match diff {
                None => return,
                Some(d) => assert!(Instant::now() < deadline, "after 120 s: {d}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let t0 = Instant::now();
    let mut written = 500;
    let chunk = 5_000.min(total.max(1));
    while written < total {
        let n = chunk.min(total - written);
        run(&two_table_transactions(&mut rng, &c, &a, n, &mut next));
        written += n;
        if written == total / 2 {
            db.checkpoint().unwrap();
        }
        if written >= total * 3 / 4 && written - n < total * 3 / 4 {
            // A crash: the changes since the checkpoint come again from the slots.
            db.close_abruptly();
            db = open();
        }
    }
    converged(&db);
    eprintln!("{written} transactions written and applied in {:.1} s", t0.elapsed().as_secs_f64());
    // Lookup join against the quiescent table: each order takes its customer's current row.
    let orders: Vec<(i64, i32, i64)> =
        (0..2000).map(|i| (i, rng.random_range(1..next.max(2)), rng.random_range(1..100))).collect();
    let values: Vec<String> = orders.iter().map(|(o, c, m)| format!("({o}, {c}, {m})")).collect();
    db.execute(&format!("INSERT INTO orders VALUES {}", values.join(", "))).unwrap();
    db.flush().unwrap();
    let got = sorted(&db.query("SELECT oid, amount, tier FROM enriched").unwrap());
    let want = srv.rows(&format!(
        "SELECT o.oid, o.amount, y.tier FROM (VALUES {}) AS o(oid, cust, amount) JOIN {c} y ON o.cust = y.id",
        values.join(", ")
    ));
    assert!(want.len() > 100, "{} orders found a customer", want.len());
    assert_eq!(got, want, "lookup join: {}", difference(&got, &want));
    db.close();
    srv.drop_slot(&sc);
    srv.drop_slot(&sa);
    srv.psql(&format!("DROP TABLE {c}; DROP TABLE {a};"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A temporal join (`FOR SYSTEM_TIME AS OF o.ts`) of pushed orders against a captured table of
/// rates, each update of a rate a new version at its `ts`: every order takes the version valid
/// at its event time, as a hand-written oracle over the versions written computes.
#[test]
fn a_temporal_join_over_the_captured_versions_matches_an_oracle() {
    use laminar_core::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
    let _shared = shared();
    let srv = server();
    let r = unique("cdc_rates");
    let slot = unique("laminardb_rates");
    srv.psql(&format!("CREATE TABLE {r} (cur TEXT PRIMARY KEY, rate BIGINT NOT NULL, ts TIMESTAMP(3) NOT NULL)"));
    let db = Database::open_in_memory().unwrap();
    db.execute(&format!(
        "CREATE TABLE rates (cur VARCHAR, rate BIGINT, ts TIMESTAMP NOT NULL, PRIMARY KEY (cur),
            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) FROM POSTGRES_CDC WITH ({});
         CREATE SOURCE orders (id BIGINT NOT NULL, cur VARCHAR, ts TIMESTAMP NOT NULL,
            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE MATERIALIZED VIEW conv AS SELECT o.id, r.rate FROM orders o
            JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.cur = r.cur",
        srv.with(&r, &slot)
    ))
    .unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(99);
    const CURS: [&str; 5] = ["EUR", "USD", "GBP", "JPY", "CHF"];
    let base = 1_767_225_600_000i64; // 2026-01-01 00:00:00 UTC, in ms
    let mut history: std::collections::HashMap<&str, Vec<(i64, i64)>> = Default::default();
    let mut script = String::new();
    let versions = 600;
    for i in 0..versions {
        let cur = CURS[rng.random_range(0..CURS.len())];
        let ts = base + i * 1000 + rng.random_range(0..1000);
        let rate = rng.random_range(1..1_000_000i64);
        script.push_str(&format!(
            "INSERT INTO {r} VALUES ('{cur}', {rate}, to_timestamp({ts} / 1000.0) AT TIME ZONE 'UTC')
             ON CONFLICT (cur) DO UPDATE SET rate = EXCLUDED.rate, ts = EXCLUDED.ts;\n"
        ));
        history.entry(cur).or_default().push((ts, rate));
    }
    srv.psql(&script);
    // Every version applied: the table holds the server's last ones.
    let last = srv.rows(&format!("SELECT cur, rate FROM {r}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        db.flush().unwrap();
        if sorted(&db.query("SELECT cur, rate FROM rates").unwrap()) == last {
            break;
        }
        assert!(Instant::now() < deadline, "the versions did not all arrive");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Orders at random times within the versions' span (the rates' watermark is past them all).
    let orders: Vec<(i64, &str, i64)> = (0..1000)
        .map(|id| (id, CURS[rng.random_range(0..CURS.len())], base + rng.random_range(0..(versions - 10) * 1000)))
        .collect();
    let batch = laminar_core::arrow::record_batch::RecordBatch::try_from_iter(vec![
        ("id", std::sync::Arc::new(Int64Array::from_iter_values(orders.iter().map(|o| o.0))) as ArrayRef),
        ("cur", std::sync::Arc::new(StringArray::from_iter_values(orders.iter().map(|o| o.1)))),
        ("ts", std::sync::Arc::new(TimestampMicrosecondArray::from_iter_values(orders.iter().map(|o| o.2 * 1000)))),
    ])
    .unwrap();
    let mut w = db.writer("orders").unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    let mut want: Vec<String> = orders
        .iter()
        .filter_map(|(id, cur, ts)| {
            let v = history.get(cur)?.iter().filter(|(t, _)| t <= ts).max_by_key(|(t, _)| *t)?;
            Some(format!("{id}|{}", v.1))
        })
        .collect();
    want.sort();
    assert!(want.len() > 900, "{} orders have a version", want.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        db.flush().unwrap();
        let got = sorted(&db.query("SELECT id, rate FROM conv").unwrap());
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "temporal join: {}", difference(&got, &want));
        std::thread::sleep(Duration::from_millis(100));
    }
    db.close();
    srv.drop_slot(&slot);
    srv.psql(&format!("DROP TABLE {r}"));
}
