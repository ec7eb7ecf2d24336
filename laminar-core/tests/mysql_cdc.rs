//! MYSQL_CDC against the MariaDB server of `scripts/services.sh start mariadb`: a table of many
//! column types captured (snapshot, then random transactions with key changes, deletes and a
//! TRUNCATE, beside another table's changes), across a clean reopen that resumes from the GTID
//! state, SIGKILL rounds while a writer goes on, and the errors a user meets (a wrong password,
//! a missing column, an altered table, a purged binlog). After each, the LaminarDB table and a
//! GROUP BY over it equal the server's `SELECT`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use laminar_core::{Config, Database, ErrorKind};
use rand::{Rng, SeedableRng};

struct Server {
    user: String,
    password: String,
    host: String,
    port: String,
    db: String,
}

/// One test at a time changes server-wide state (purging the binlog).
static SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn server() -> Server {
    let url = std::env::var("LAMINAR_MARIADB").ok().unwrap_or_else(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(root.join("target"));
        let env = std::fs::read_to_string(target.join("services.env")).unwrap_or_default();
        env.lines().find_map(|l| l.strip_prefix("LAMINAR_MARIADB=")).map(str::to_string).unwrap_or_else(|| {
            panic!(
                "no MariaDB: run `scripts/services.sh start mariadb` (it writes LAMINAR_MARIADB to {}/services.env)",
                target.display()
            )
        })
    });
    let rest = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let (cred, rest) = rest.split_once('@').unwrap();
    let (user, password) = cred.split_once(':').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    Server { user: user.into(), password: password.into(), host: host.into(), port: port.into(), db: db.into() }
}

impl Server {
    /// Runs a script with the `mariadb` client; its output, tab-separated, no headers.
    fn sql(&self, script: &str) -> String {
        let client = if Command::new("mariadb").arg("--version").output().is_ok() { "mariadb" } else { "mysql" };
        let mut child = Command::new(client)
            .args(["-h", &self.host, "-P", &self.port, "-u", &self.user, &format!("-p{}", self.password), "-N", "-B"])
            .arg(&self.db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the mariadb client (installed with the server by scripts/services.sh)");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mariadb failed: {}\nscript (first 500 bytes): {}",
            String::from_utf8_lossy(&out.stderr),
            &script[..script.len().min(500)]
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn rows(&self, query: &str) -> Vec<String> {
        let mut v: Vec<String> =
            self.sql(query).lines().filter(|l| !l.is_empty()).map(|l| l.replace('\t', "|")).collect();
        v.sort();
        v
    }

    fn with(&self, table: &str, extra: &str) -> String {
        format!(
            "'hostname' = '{}', 'port' = '{}', 'username' = '{}', 'password' = '{}', 'database-name' = '{}', 'table-name' = '{table}'{extra}",
            self.host, self.port, self.user, self.password, self.db
        )
    }
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    format!("{name}_{}_{n}", std::process::id())
}

/// The captured table: many column types.
fn create_table(srv: &Server, table: &str) {
    srv.sql(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, v BIGINT NOT NULL,
            d DECIMAL(12,3) NOT NULL, ts DATETIME NOT NULL, day DATE NOT NULL, f DOUBLE NOT NULL,
            u INT UNSIGNED NOT NULL, e ENUM('red','green','blue') NOT NULL, ok TINYINT(1) NOT NULL,
            big MEDIUMTEXT NOT NULL, n INT NULL) ENGINE=InnoDB"
    ));
}

const LAMINAR_COLUMNS: &str = "id INT, name VARCHAR, v BIGINT, d DECIMAL(12,3), ts TIMESTAMP, day DATE, f DOUBLE, \
     u BIGINT, e VARCHAR, ok BOOLEAN, big VARCHAR, n INT";

/// The server's rows in the text LaminarDB's display gives.
fn server_rows(srv: &Server, table: &str) -> Vec<String> {
    srv.rows(&format!(
        "SELECT CONCAT_WS('|', id, name, v, d, DATE_FORMAT(ts, '%Y-%m-%dT%H:%i:%s'), day, f, u, e,
            IF(ok, 'true', 'false'), big, IFNULL(n, '')) FROM {table}"
    ))
}

fn row_values(rng: &mut impl Rng, id: i32) -> String {
    const C: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = if rng.random_range(0..4) == 0 { 2000 + rng.random_range(0..2000) } else { 6 };
    let big: String = (0..len).map(|_| C[rng.random_range(0..C.len())] as char).collect();
    let n = if rng.random_range(0..3) == 0 { "NULL".to_string() } else { rng.random_range(-50..50).to_string() };
    format!(
        "({id}, 'n{id}', {}, {}.{:03}, '2024-0{}-1{} 1{}:2{}:3{}', '2023-1{}-0{}', {}, {}, '{}', {}, '{big}', {n})",
        rng.random_range(-1_000_000..1_000_000i64),
        rng.random_range(-9999..9999),
        rng.random_range(0..1000),
        rng.random_range(1..10),
        rng.random_range(0..10),
        rng.random_range(0..10),
        rng.random_range(0..10),
        rng.random_range(0..10),
        rng.random_range(0..3),
        rng.random_range(1..10),
        // Never a whole number: both sides print it the same way ("1.125").
        rng.random_range(-400..400) as f64 / 4.0 + 0.125,
        rng.random_range(0..u32::MAX as u64),
        ["red", "green", "blue"][rng.random_range(0..3)],
        rng.random_range(0..2),
    )
}

/// Random transactions over `table` as one script: inserts, updates, key changes, deletes,
/// multi-row updates, 1 in 20 rolled back; `other` gets changes in between (never captured).
fn transactions(
    rng: &mut impl Rng,
    table: &str,
    other: &str,
    ids: &mut BTreeSet<i32>,
    n: usize,
    next: &mut i32,
) -> String {
    let mut s = String::new();
    for _ in 0..n {
        s.push_str("BEGIN;\n");
        let undo = ids.clone();
        for _ in 0..rng.random_range(1..5) {
            let pick = |rng: &mut dyn rand::RngCore, ids: &BTreeSet<i32>| -> Option<i32> {
                (!ids.is_empty()).then(|| *ids.iter().nth(rng.random_range(0..ids.len())).unwrap())
            };
            match rng.random_range(0..100) {
                0..40 => {
                    let id = *next;
                    *next += 1;
                    s.push_str(&format!("INSERT INTO {table} VALUES {};\n", row_values(rng, id)));
                    ids.insert(id);
                }
                40..65 => {
                    if let Some(id) = pick(rng, ids) {
                        s.push_str(&format!(
                            "UPDATE {table} SET v = v + {}, name = 'u{}', n = {} WHERE id = {id};\n",
                            rng.random_range(1..100),
                            rng.random_range(0..1000),
                            if rng.random_range(0..2) == 0 {
                                "NULL".to_string()
                            } else {
                                rng.random_range(0..9).to_string()
                            }
                        ));
                    }
                }
                65..75 => {
                    if let Some(id) = pick(rng, ids) {
                        let to = *next;
                        *next += 1;
                        s.push_str(&format!("UPDATE {table} SET id = {to} WHERE id = {id};\n"));
                        ids.remove(&id);
                        ids.insert(to);
                    }
                }
                75..90 => {
                    if let Some(id) = pick(rng, ids) {
                        s.push_str(&format!("DELETE FROM {table} WHERE id = {id};\n"));
                        ids.remove(&id);
                    }
                }
                90..95 => {
                    s.push_str(&format!("UPDATE {table} SET f = f + 1 WHERE id % 7 = {};\n", rng.random_range(0..7)))
                }
                _ => s.push_str(&format!(
                    "INSERT INTO {other} VALUES ({}, 1) ON DUPLICATE KEY UPDATE x = x + 1;\n",
                    rng.random_range(0..50)
                )),
            }
        }
        if rng.random_range(0..20) == 0 {
            s.push_str("ROLLBACK;\n");
            *ids = undo;
        } else {
            s.push_str("COMMIT;\n");
        }
    }
    s
}

fn converge(db: &Database, srv: &Server, table: &str) {
    let want = server_rows(srv, table);
    let want_g = srv.rows(&format!("SELECT e, COUNT(*), SUM(v) FROM {table} GROUP BY e"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        db.flush().unwrap();
        let got = sorted(&db.query("SELECT * FROM t").unwrap());
        let got_g = sorted(&db.query("SELECT e, n, s FROM g").unwrap());
        if got == want && got_g == want_g {
            return;
        }
        if let Err(e) = db.query("SELECT * FROM g") {
            panic!("the view failed: {e}");
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

fn ddl(srv: &Server, table: &str, extra: &str) -> String {
    format!(
        "CREATE TABLE t ({LAMINAR_COLUMNS}, PRIMARY KEY (id)) FROM MYSQL_CDC WITH ({});
         CREATE MATERIALIZED VIEW g AS SELECT e, COUNT(*) AS n, SUM(v) AS s FROM t GROUP BY e",
        srv.with(table, extra)
    )
}

fn durable() -> Config {
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "100ms").unwrap();
    cfg
}

#[test]
fn snapshot_then_changes_and_a_reopen_from_the_gtid_match_the_server() {
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let srv = server();
    let (table, other) = (unique("cdc"), unique("other"));
    create_table(&srv, &table);
    srv.sql(&format!("CREATE TABLE {other} (k INT PRIMARY KEY, x INT)"));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(21);
    let (mut ids, mut next) = (BTreeSet::new(), 1);
    srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 60, &mut next));
    let dir = tmpdir("mysql-cdc");
    common::capture_info_logs();
    let db = Database::open(dir.to_str().unwrap(), durable()).unwrap();
    db.execute(&ddl(&srv, &table, "")).unwrap();
    converge(&db, &srv, &table);
    srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 200, &mut next));
    converge(&db, &srv, &table);
    // The lag metric: binlog bytes behind the server's end, and the offset reached.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = db.metrics().unwrap();
        let p = &m.sources.iter().find(|s| s.name == "t").unwrap().partitions[0].1;
        if p.lag.is_some() {
            assert!(p.lag_in_bytes && p.position.is_some_and(|x| x > 4), "{p:?}");
            assert!(db.metrics_text().unwrap().contains("laminardb_source_lag_bytes"), "exposed");
            break;
        }
        assert!(Instant::now() < deadline, "no lag metric: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    srv.sql(&format!("TRUNCATE TABLE {table}"));
    ids.clear();
    srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 100, &mut next));
    converge(&db, &srv, &table);
    db.checkpoint().unwrap();
    db.close();
    // Changes while closed; the reopened source resumes from the GTID state it recorded.
    srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 100, &mut next));
    let db = Database::open(dir.to_str().unwrap(), durable()).unwrap();
    converge(&db, &srv, &table);
    let lines = common::INFO_LINES.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains(&format!("{table})")) && l.contains("reading the binlog from GTID 0-1-")),
        "{lines:?}"
    );
    db.close();
    srv.sql(&format!("DROP TABLE {table}; DROP TABLE {other}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The child process of [`sigkill_rounds_while_the_writer_goes_on`].
#[test]
#[ignore = "run by sigkill_rounds_while_the_writer_goes_on as a child process"]
fn mysql_cdc_crash_child() {
    let Ok(dir) = std::env::var("LAMINAR_CRASH_DIR") else { return };
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", &std::env::var("LAMINAR_CRASH_INTERVAL").unwrap()).unwrap();
    let db = Database::open(&dir, cfg).unwrap();
    if db.object("t").is_err() {
        db.execute(&std::env::var("LAMINAR_CRASH_DDL").unwrap()).unwrap();
    }
    println!("READY");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn sigkill_rounds_while_the_writer_goes_on() {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let srv = server();
    let (table, other) = (unique("cdc_kill"), unique("other_kill"));
    create_table(&srv, &table);
    srv.sql(&format!("CREATE TABLE {other} (k INT PRIMARY KEY, x INT)"));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(std::process::id() as u64);
    let (mut ids, mut next) = (BTreeSet::new(), 1);
    srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 50, &mut next));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, srv, table, other) = (stop.clone(), server(), table.clone(), other.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
            let mut txns = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut ids: BTreeSet<i32> =
                    srv.sql(&format!("SELECT id FROM {table}")).lines().map(|l| l.parse().unwrap()).collect();
                srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 30, &mut next));
                txns += 30;
                std::thread::sleep(Duration::from_millis(20));
            }
            txns
        })
    };
    let dir = tmpdir("mysql-cdc-kill");
    let exe = std::env::current_exe().unwrap();
    let log = std::env::temp_dir().join(format!("laminar-mysql-cdc-child-{}.log", std::process::id()));
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
                .args(["--exact", "mysql_cdc_crash_child", "--include-ignored", "--nocapture", "--test-threads", "1"])
                .env("LAMINAR_CRASH_DIR", &dir)
                .env("LAMINAR_CRASH_DDL", ddl(&srv, &table, ""))
                .env("LAMINAR_CRASH_INTERVAL", format!("{}ms", rng.random_range(50..300)))
                .stdout(Stdio::piped())
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
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
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        drop(child); // SIGKILL
    }
    stop.store(true, Ordering::Relaxed);
    let txns = writer.join().unwrap();
    assert!(txns >= 60, "the writer wrote only {txns} transactions during the rounds");
    let db = Database::open(dir.to_str().unwrap(), durable()).unwrap();
    converge(&db, &srv, &table);
    db.close();
    srv.sql(&format!("DROP TABLE {table}; DROP TABLE {other}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the view over the table fails; its error message.
fn failure(db: &Database) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = db.metrics().unwrap();
        if let Some(f) = m.streams.iter().find(|s| s.name == "g").and_then(|s| s.failed.clone()) {
            return f;
        }
        assert!(Instant::now() < deadline, "the source never failed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clear_errors_for_a_password_a_column_an_altered_table_and_a_purged_binlog() {
    let _alone = SERVER.write().unwrap_or_else(|e| e.into_inner());
    let srv = server();
    let table = unique("cdc_err");
    create_table(&srv, &table);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    srv.sql(&format!("INSERT INTO {table} VALUES {}, {}", row_values(&mut rng, 1), row_values(&mut rng, 2)));
    let db = Database::open_in_memory().unwrap();
    // A wrong password fails the CREATE, naming the server.
    let wrong = srv.with(&table, "").replace(&format!("'password' = '{}'", srv.password), "'password' = 'nope'");
    let e = db
        .execute(&format!("CREATE TABLE t ({LAMINAR_COLUMNS}, PRIMARY KEY (id)) FROM MYSQL_CDC WITH ({wrong})"))
        .unwrap_err();
    assert!(e.message().contains("Access denied") && e.message().contains(&srv.port), "{e}");
    // A declared column the table lacks.
    let e = db
        .execute(&format!(
            "CREATE TABLE t (id INT, nope INT, PRIMARY KEY (id)) FROM MYSQL_CDC WITH ({})",
            srv.with(&table, "")
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("no column 'nope'"), "{e}");
    // An altered table fails the source, naming the statement.
    db.execute(&ddl(&srv, &table, "")).unwrap();
    converge(&db, &srv, &table);
    srv.sql(&format!("ALTER TABLE {table} ADD COLUMN z INT"));
    let e = failure(&db);
    assert!(e.contains("definition changed") && e.contains("ALTER TABLE"), "{e}");
    db.close();
    srv.sql(&format!("ALTER TABLE {table} DROP COLUMN z"));
    // A purged binlog: the recorded position is gone when the database reopens.
    let dir = tmpdir("mysql-cdc-purged");
    let db = Database::open(dir.to_str().unwrap(), durable()).unwrap();
    db.execute(&ddl(&srv, &table, "")).unwrap();
    converge(&db, &srv, &table);
    db.checkpoint().unwrap();
    db.close();
    srv.sql(&format!("INSERT INTO {table} VALUES {}", row_values(&mut rng, 3)));
    let admin = srv.sql("FLUSH BINARY LOGS; SHOW MASTER STATUS");
    let current = admin.split('\t').next().unwrap().trim().to_string();
    // The server keeps a file a binlog dump still reads (a closed source's dump thread lingers
    // until the server notices): end those, then purge, until only the current file is left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dumps = srv.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'");
        let kills: String = dumps.lines().filter(|l| !l.is_empty()).map(|id| format!("KILL {id};\n")).collect();
        if !kills.is_empty() {
            let _ = std::panic::catch_unwind(|| srv.sql(&kills)); // one may have ended meanwhile
        }
        srv.sql(&format!("PURGE BINARY LOGS TO '{current}'"));
        if srv.sql("SHOW BINARY LOGS").lines().filter(|l| !l.is_empty()).count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the binlog was not purged: {}", srv.sql("SHOW BINARY LOGS"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let db = Database::open(dir.to_str().unwrap(), durable()).unwrap();
    let e = failure(&db);
    assert!(e.contains("no longer on the server") && e.contains("scan.startup.mode"), "{e}");
    db.close();
    srv.sql(&format!("DROP TABLE {table}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server stopped and started again (by `scripts/services.sh`) while LaminarDB streams:
/// the source retries, resumes from its position, and the table converges.
#[test]
fn a_server_restart_mid_stream_is_resumed() {
    let _alone = SERVER.write().unwrap_or_else(|e| e.into_inner());
    let srv = server();
    let (table, other) = (unique("cdc_restart"), unique("other_restart"));
    create_table(&srv, &table);
    srv.sql(&format!("CREATE TABLE {other} (k INT PRIMARY KEY, x INT)"));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(8);
    let (mut ids, mut next) = (BTreeSet::new(), 1);
    srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 50, &mut next));
    let db = Database::open_in_memory().unwrap();
    db.execute(&ddl(&srv, &table, "")).unwrap();
    converge(&db, &srv, &table);
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    for round in 0..2 {
        srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 100, &mut next));
        for cmd in ["stop", "start"] {
            let out = Command::new(&services).args([cmd, "mariadb"]).output().unwrap();
            assert!(out.status.success(), "services.sh {cmd} mariadb: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(server().port, srv.port, "the server came back on another port (round {round})");
        srv.sql(&transactions(&mut rng, &table, &other, &mut ids, 100, &mut next));
        converge(&db, &srv, &table);
    }
    db.close();
    srv.sql(&format!("DROP TABLE {table}; DROP TABLE {other}"));
}

/// An independent writer runs random transactions (100,000 by default,
/// `LAMINAR_CDC_TRANSACTIONS`) on two captured tables while LaminarDB streams them, with a
/// checkpoint and a crash on the way; then each table, a GROUP BY over each, a join of the two
/// tables and an aggregate over that join equal the server's own queries, and a stream of
/// orders looked up (`FOR SYSTEM_TIME AS OF PROCTIME()`) against the quiescent table equals the
/// same lookup on the server.
#[test]
fn two_tables_under_a_long_random_writer_with_joins_match_the_server() {
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let srv = server();
    let (c, a) = (unique("cdc_cust"), unique("cdc_acct"));
    srv.sql(&format!(
        "CREATE TABLE {c} (id INT PRIMARY KEY, tier INT, big MEDIUMTEXT);
         CREATE TABLE {a} (id INT PRIMARY KEY, cust INT, balance BIGINT);"
    ));
    let total: usize = std::env::var("LAMINAR_CDC_TRANSACTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1818);
    let mut next = 0;
    let run = |script: &str| {
        let mut child = Command::new("mariadb")
            .args(["-h", &srv.host, "-P", &srv.port, "-u", &srv.user, &format!("-p{}", srv.password), "--force"])
            .arg(&srv.db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        child.wait().unwrap();
    };
    run(&two_table_transactions(&mut rng, &c, &a, 500, &mut next));
    let dir = tmpdir("mysql-cdc-two");
    let mut cfg = Config::default();
    cfg.set("durability", "checkpoint").unwrap();
    cfg.set("checkpoint_interval", "1h").unwrap();
    let open = || Database::open(dir.to_str().unwrap(), cfg.clone()).unwrap();
    let ddl = format!(
        "CREATE TABLE cust (id INT, tier INT, big VARCHAR, PRIMARY KEY (id)) FROM MYSQL_CDC WITH ({});
         CREATE TABLE acct (id INT, cust INT, balance BIGINT, PRIMARY KEY (id)) FROM MYSQL_CDC WITH ({});
         CREATE MATERIALIZED VIEW per_tier AS SELECT tier, COUNT(*) AS n, SUM(length(big)) AS l FROM cust GROUP BY tier;
         CREATE MATERIALIZED VIEW per_cust AS SELECT cust, COUNT(*) AS n, SUM(balance) AS s FROM acct GROUP BY cust;
         CREATE MATERIALIZED VIEW joined AS SELECT x.id, x.balance, y.tier FROM acct x JOIN cust y ON x.cust = y.id;
         CREATE MATERIALIZED VIEW tier_balance AS SELECT y.tier, COUNT(*) AS n, SUM(x.balance) AS s FROM acct x JOIN cust y ON x.cust = y.id GROUP BY y.tier;
         CREATE SOURCE orders (oid BIGINT, cust INT, amount BIGINT);
         CREATE MATERIALIZED VIEW enriched AS SELECT o.oid, o.amount, y.tier FROM orders o JOIN cust FOR SYSTEM_TIME AS OF PROCTIME() AS y ON o.cust = y.id",
        srv.with(&c, ""),
        srv.with(&a, "")
    );
    let mut db = open();
    db.execute(&ddl).unwrap();
    let null = |col: &str| format!("IFNULL({col}, '')");
    let checks = [
        (
            "SELECT id, tier, big FROM cust".to_string(),
            format!("SELECT id, {}, {} FROM {c}", null("tier"), null("big")),
        ),
        (
            "SELECT id, cust, balance FROM acct".to_string(),
            format!("SELECT id, {}, {} FROM {a}", null("cust"), null("balance")),
        ),
        (
            "SELECT tier, n, l FROM per_tier".to_string(),
            format!("SELECT {}, COUNT(*), IFNULL(SUM(length(big)), '') FROM {c} GROUP BY tier", null("tier")),
        ),
        (
            "SELECT cust, n, s FROM per_cust".to_string(),
            format!("SELECT {}, COUNT(*), IFNULL(SUM(balance), '') FROM {a} GROUP BY cust", null("cust")),
        ),
        (
            "SELECT id, balance, tier FROM joined".to_string(),
            format!("SELECT x.id, {}, {} FROM {a} x JOIN {c} y ON x.cust = y.id", null("x.balance"), null("y.tier")),
        ),
        (
            "SELECT tier, n, s FROM tier_balance".to_string(),
            format!(
                "SELECT {}, COUNT(*), IFNULL(SUM(x.balance), '') FROM {a} x JOIN {c} y ON x.cust = y.id GROUP BY y.tier",
                null("y.tier")
            ),
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
            // A crash: the changes since the checkpoint come again from the binlog.
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
    let o = unique("orders");
    let want = srv.rows(&format!(
        "CREATE TEMPORARY TABLE {o} (oid BIGINT, cust INT, amount BIGINT);
         INSERT INTO {o} VALUES {};
         SELECT o.oid, o.amount, {} FROM {o} o JOIN {c} y ON o.cust = y.id",
        values.join(", "),
        null("y.tier")
    ));
    assert!(want.len() > 100, "{} orders found a customer", want.len());
    assert_eq!(got, want, "lookup join: {}", difference(&got, &want));
    db.close();
    srv.sql(&format!("DROP TABLE {c}; DROP TABLE {a};"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A temporal join (`FOR SYSTEM_TIME AS OF o.ts`) of pushed orders against a captured table of
/// rates, each update of a rate a new version at its `ts`: every order takes the version valid
/// at its event time, as a hand-written oracle over the versions written computes.
#[test]
fn a_temporal_join_over_the_captured_versions_matches_an_oracle() {
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let srv = server();
    let r = unique("cdc_rates");
    srv.sql(&format!("CREATE TABLE {r} (cur VARCHAR(8) PRIMARY KEY, rate BIGINT NOT NULL, ts DATETIME(3) NOT NULL)"));
    let db = Database::open_in_memory().unwrap();
    db.execute(&format!(
        "CREATE TABLE rates (cur VARCHAR, rate BIGINT, ts TIMESTAMP NOT NULL, PRIMARY KEY (cur),
            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) FROM MYSQL_CDC WITH ({});
         CREATE SOURCE orders (id BIGINT NOT NULL, cur VARCHAR, ts TIMESTAMP NOT NULL,
            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE MATERIALIZED VIEW conv AS SELECT o.id, r.rate FROM orders o
            JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.cur = r.cur",
        srv.with(&r, "")
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
        let secs = ts / 1000;
        script.push_str(&format!(
            "INSERT INTO {r} VALUES ('{cur}', {rate}, FROM_UNIXTIME({secs}) + INTERVAL {} MICROSECOND)
             ON DUPLICATE KEY UPDATE rate = VALUES(rate), ts = VALUES(ts);\n",
            (ts % 1000) * 1000
        ));
        history.entry(cur).or_default().push((ts, rate));
    }
    srv.sql(&format!("SET time_zone = '+00:00';\n{script}"));
    // Every version applied: the table holds the server's last ones.
    let last = srv.rows(&format!("SELECT cur, rate FROM {r}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sorted(&db.query("SELECT cur, rate FROM rates").unwrap()) != last {
        assert!(Instant::now() < deadline, "the versions did not all arrive");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Orders at random times within the versions' span (the rates' watermark is past them all).
    let orders: Vec<(i64, &str, i64)> = (0..1000)
        .map(|id| (id, CURS[rng.random_range(0..CURS.len())], base + rng.random_range(0..(versions - 10) * 1000)))
        .collect();
    let batch = laminar_core::arrow::record_batch::RecordBatch::try_from_iter(vec![
        (
            "id",
            std::sync::Arc::new(laminar_core::arrow::array::Int64Array::from_iter_values(orders.iter().map(|o| o.0)))
                as laminar_core::arrow::array::ArrayRef,
        ),
        (
            "cur",
            std::sync::Arc::new(laminar_core::arrow::array::StringArray::from_iter_values(orders.iter().map(|o| o.1))),
        ),
        (
            "ts",
            std::sync::Arc::new(laminar_core::arrow::array::TimestampMicrosecondArray::from_iter_values(
                orders.iter().map(|o| o.2 * 1000),
            )),
        ),
    ])
    .unwrap();
    let mut w = db.writer("orders").unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    // The oracle: the latest version of the order's currency at or before its time.
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
    srv.sql(&format!("DROP TABLE {r}"));
}
