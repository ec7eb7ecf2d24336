//! The PostgreSQL server of `scripts/services.sh start postgres`, for the connector tests.

use std::io::Write;
use std::process::{Command, Stdio};

/// The server of `scripts/services.sh start postgres`, as a URL
/// `postgres://user:password@host:port/db`.
pub fn server_url() -> String {
    if let Ok(u) = std::env::var("LAMINAR_POSTGRES") {
        return u;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(root.join("target"));
    let env = std::fs::read_to_string(target.join("services.env")).unwrap_or_default();
    env.lines().find_map(|l| l.strip_prefix("LAMINAR_POSTGRES=")).map(str::to_string).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL: run `scripts/services.sh start postgres` (it writes LAMINAR_POSTGRES to {}/services.env)",
            target.display()
        )
    })
}

pub struct Server {
    pub url: String,
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: String,
    pub db: String,
}

/// The tests share one server; the one that restarts it runs alone.
pub static SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SERVER.read().unwrap_or_else(|e| e.into_inner())
}

pub fn server() -> Server {
    let url = server_url();
    let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (cred, rest) = rest.split_once('@').unwrap();
    let (user, password) = cred.split_once(':').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    Server {
        url: url.clone(),
        user: user.into(),
        password: password.into(),
        host: host.into(),
        port: port.into(),
        db: db.into(),
    }
}

impl Server {
    /// Runs an SQL script with `psql` (stops at the first error); its output, unaligned,
    /// tuples only, fields separated by `|`.
    pub fn psql(&self, script: &str) -> String {
        let mut child = Command::new("psql")
            .args([self.url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-F", "|", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql (installed with PostgreSQL by scripts/services.sh)");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}\nscript (first 500 bytes): {}",
            String::from_utf8_lossy(&out.stderr),
            &script[..script.len().min(500)]
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The rows of a query as sorted `a|b|c` lines.
    pub fn rows(&self, query: &str) -> Vec<String> {
        let mut v: Vec<String> = self.psql(query).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
        v.sort();
        v
    }
}
