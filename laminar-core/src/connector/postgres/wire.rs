//! A small blocking client of PostgreSQL's wire protocol (version 3), enough for change data
//! capture: startup (SCRAM-SHA-256, MD5 or cleartext password), simple queries with text
//! results, and the replication connection's copy-both stream. Frontend messages and SCRAM come
//! from the `postgres-protocol` crate; backend messages are read here (that crate does not read
//! `CopyBothResponse`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;

use crate::error::{Error, ErrorKind, Result, clip};

/// Where and as whom to connect.
#[derive(Clone)]
pub(crate) struct PgConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl PgConfig {
    /// `host:port/database` for messages (never the password).
    pub(crate) fn describe(&self) -> String {
        format!("{}:{}/{}", clip(&self.host), self.port, clip(&self.database))
    }
}

/// One backend message: its tag and body.
pub(crate) struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// A server error (`ErrorResponse`): its SQLSTATE and message.
#[derive(Debug, Clone)]
pub(crate) struct ServerError {
    pub code: String,
    pub message: String,
}

pub(crate) struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    at: usize,
    what: String,
}

impl Conn {
    /// Connects and authenticates; `replication`: a walsender connection for logical
    /// replication (`replication=database`), which takes replication commands and simple SQL.
    pub(crate) fn connect(cfg: &PgConfig, replication: bool, timeout: Duration) -> Result<Conn> {
        let what = format!("PostgreSQL '{}'", cfg.describe());
        let s = crate::connector::connect_tcp(&cfg.host, cfg.port, timeout, &what)?;
        let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("PostgreSQL '{}': {e}", cfg.describe()));
        let mut c = Conn { s, buf: Vec::with_capacity(1 << 16), at: 0, what };
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &cfg.user),
            ("database", &cfg.database),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "iso_8601"),
            ("extra_float_digits", "3"),
            ("application_name", "laminardb"),
            ("bytea_output", "hex"),
            ("standard_conforming_strings", "on"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out).map_err(io)?;
        c.send(&out)?;
        c.authenticate(cfg)?;
        // Parameter statuses and the backend key, up to ReadyForQuery.
        loop {
            let m = c.read()?;
            match m.tag {
                b'Z' => return Ok(c),
                b'E' => return Err(c.server_error(&m)),
                _ => {}
            }
        }
    }

    fn authenticate(&mut self, cfg: &PgConfig) -> Result<()> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = self.read()?;
            if m.tag == b'E' {
                return Err(self.server_error(&m));
            }
            if m.tag != b'R' || m.body.len() < 4 {
                return Err(self.protocol(&format!("expected authentication, got message '{}'", m.tag as char)));
            }
            let kind = u32::from_be_bytes(m.body[..4].try_into().expect("4 bytes"));
            let data = &m.body[4..];
            let mut out = BytesMut::new();
            match kind {
                0 => return Ok(()),
                3 => frontend::password_message(cfg.password.as_bytes(), &mut out).map_err(|e| self.io(e))?,
                5 => {
                    let salt: [u8; 4] =
                        data.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| self.protocol("MD5 salt"))?;
                    let h =
                        postgres_protocol::authentication::md5_hash(cfg.user.as_bytes(), cfg.password.as_bytes(), salt);
                    frontend::password_message(h.as_bytes(), &mut out).map_err(|e| self.io(e))?;
                }
                10 => {
                    let mechs: Vec<&[u8]> = data.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                    if !mechs.contains(&SCRAM_SHA_256.as_bytes()) {
                        return Err(Error::not_implemented(format!(
                            "{}: the server offers SASL mechanisms this client lacks: {}",
                            self.what,
                            mechs.iter().map(|m| String::from_utf8_lossy(m).to_string()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                    let s = ScramSha256::new(cfg.password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out).map_err(|e| self.io(e))?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| self.protocol("SASL continue before SASL"))?;
                    s.update(data).map_err(|e| self.auth_failed(e))?;
                    frontend::sasl_response(s.message(), &mut out).map_err(|e| self.io(e))?;
                }
                12 => {
                    let s = scram.as_mut().ok_or_else(|| self.protocol("SASL final before SASL"))?;
                    s.finish(data).map_err(|e| self.auth_failed(e))?;
                    continue;
                }
                k => {
                    return Err(Error::not_implemented(format!(
                        "{}: the server asks for an authentication method this client lacks (code {k}); use password, md5 or scram-sha-256",
                        self.what
                    )));
                }
            }
            self.send(&out)?;
        }
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{}: {e}", self.what))
    }

    fn auth_failed(&self, e: std::io::Error) -> Error {
        Error::new(ErrorKind::InvalidArgument, format!("{}: authentication failed: {e}", self.what))
    }

    fn protocol(&self, m: &str) -> Error {
        Error::new(ErrorKind::Io, format!("{}: protocol error: {m}", self.what))
    }

    /// An `ErrorResponse` as an error: `IO` for connection-level failures (class 08, 53, 57 —
    /// the server shutting down, out of resources — and 55006, an object in use),
    /// `INVALID_ARGUMENT` otherwise.
    pub(crate) fn server_error(&self, m: &Msg) -> Error {
        let e = parse_error(&m.body);
        // 55006: the slot is in use (an earlier connection of ours the server has not noticed
        // closing yet); retried like a connection failure.
        // 53400: a configured limit reached (all replication slots in use): waiting will not
        // free one, so it is not retried.
        if e.code == "53400" {
            return Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{}: {} (SQLSTATE 53400; drop unused replication slots — SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active — or raise max_replication_slots)",
                    self.what, e.message
                ),
            );
        }
        let kind = if ["08", "53", "57"].iter().any(|c| e.code.starts_with(c)) || e.code == "55006" {
            ErrorKind::Io
        } else if e.code == "42P01" || e.code == "42704" {
            ErrorKind::NotFound
        } else {
            ErrorKind::InvalidArgument
        };
        Error::new(kind, format!("{}: {} (SQLSTATE {})", self.what, e.message, e.code))
    }

    pub(crate) fn send(&mut self, data: &[u8]) -> Result<()> {
        self.s.write_all(data).map_err(|e| self.io(e))
    }

    /// Sets how long a read waits before it fails (replication streams poll with short ones).
    pub(crate) fn set_read_timeout(&mut self, t: Duration) -> Result<()> {
        self.s.set_read_timeout(Some(t)).map_err(|e| self.io(e))
    }

    /// The next message; `Ok(None)` when none arrived within the read timeout and `idle_ok`.
    fn read_msg(&mut self, idle_ok: bool) -> Result<Option<Msg>> {
        loop {
            let avail = &self.buf[self.at..];
            if avail.len() >= 5 {
                let len = u32::from_be_bytes(avail[1..5].try_into().expect("4 bytes")) as usize;
                if len < 4 {
                    return Err(self.protocol("a message length below 4"));
                }
                if avail.len() > len {
                    let m = Msg { tag: avail[0], body: avail[5..1 + len].to_vec() };
                    self.at += 1 + len;
                    return Ok(Some(m));
                }
            }
            if self.at > 0 && self.at == self.buf.len() {
                self.buf.clear();
                self.at = 0;
            } else if self.at > (1 << 20) {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            let n = self.buf.len();
            self.buf.resize(n + (1 << 16), 0);
            match self.s.read(&mut self.buf[n..]) {
                Ok(0) => {
                    self.buf.truncate(n);
                    return Err(Error::new(ErrorKind::Io, format!("{}: the server closed the connection", self.what)));
                }
                Ok(k) => self.buf.truncate(n + k),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    self.buf.truncate(n);
                    if idle_ok {
                        return Ok(None);
                    }
                    return Err(self.io(e));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.buf.truncate(n),
                Err(e) => {
                    self.buf.truncate(n);
                    return Err(self.io(e));
                }
            }
        }
    }

    /// The next message, skipping notices and parameter statuses.
    pub(crate) fn read(&mut self) -> Result<Msg> {
        loop {
            let m = self.read_msg(false)?.expect("not idle");
            if !matches!(m.tag, b'N' | b'S') {
                return Ok(m);
            }
        }
    }

    /// The next message within the read timeout, if any (notices skipped).
    pub(crate) fn try_read(&mut self) -> Result<Option<Msg>> {
        loop {
            match self.read_msg(true)? {
                Some(m) if matches!(m.tag, b'N' | b'S') => continue,
                other => return Ok(other),
            }
        }
    }

    /// A simple query: the rows of its last result as text (`None` for NULL). A server error
    /// is returned after the server is ready again.
    pub(crate) fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out)?;
        let mut rows = vec![];
        let mut err = None;
        loop {
            let m = self.read()?;
            match m.tag {
                b'T' => rows.clear(),
                b'D' => rows.push(data_row(&m.body).ok_or_else(|| self.protocol("a malformed DataRow"))?),
                b'E' => err = Some(self.server_error(&m)),
                b'Z' => {
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                b'G' | b'H' | b'W' => return Err(self.protocol("a COPY where rows were expected")),
                _ => {}
            }
        }
    }

    /// `COPY … FROM STDIN` with `data` as the copy's bytes (sent in `CopyData` messages of at
    /// most 1 MiB); returns the rows the server reports copied. A server error is returned after
    /// the server is ready again.
    pub(crate) fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out)?;
        let mut err = None;
        loop {
            let m = self.read()?;
            match m.tag {
                b'G' => break,
                b'E' => err = Some(self.server_error(&m)),
                b'Z' => return Err(err.unwrap_or_else(|| self.protocol("COPY did not start"))),
                _ => {}
            }
        }
        for chunk in data.chunks(1 << 20) {
            let mut head = [0u8; 5];
            head[0] = b'd';
            head[1..].copy_from_slice(&((chunk.len() + 4) as u32).to_be_bytes());
            self.send(&head)?;
            self.send(chunk)?;
        }
        let mut out = BytesMut::new();
        frontend::copy_done(&mut out);
        self.send(&out)?;
        let mut copied = 0;
        loop {
            let m = self.read()?;
            match m.tag {
                b'C' => {
                    // "COPY <n>\0"
                    let t = String::from_utf8_lossy(&m.body);
                    copied = t.trim_end_matches('\0').rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                }
                b'E' => err = Some(self.server_error(&m)),
                b'Z' => {
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(copied),
                    };
                }
                _ => {}
            }
        }
    }

    /// Sends a query that starts a copy-both stream (`START_REPLICATION`); returns once the
    /// server answered with `CopyBothResponse`.
    pub(crate) fn start_copy_both(&mut self, sql: &str) -> Result<()> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out)?;
        loop {
            let m = self.read()?;
            match m.tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = self.server_error(&m);
                    // Wait for ReadyForQuery so the connection stays usable.
                    while self.read()?.tag != b'Z' {}
                    return Err(e);
                }
                _ => {}
            }
        }
    }

    /// Sends one `CopyData` message.
    pub(crate) fn send_copy_data(&mut self, data: &[u8]) -> Result<()> {
        let mut out = BytesMut::new();
        frontend::CopyData::new(data).map_err(|e| self.io(e))?.write(&mut out);
        self.send(&out)
    }
}

/// The fields of a `DataRow` body as text.
fn data_row(b: &[u8]) -> Option<Vec<Option<String>>> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let v = b.get(at..at + len as usize)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
            at += len as usize;
        }
    }
    Some(row)
}

/// The SQLSTATE and message of an `ErrorResponse` body.
pub(crate) fn parse_error(b: &[u8]) -> ServerError {
    let mut e = ServerError { code: String::new(), message: String::new() };
    let mut rest = b;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|c| *c == 0).unwrap_or(tail.len());
        let v = String::from_utf8_lossy(&tail[..end]).into_owned();
        match t {
            b'C' => e.code = v,
            b'M' => e.message = v,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    e
}

/// Quotes an identifier (`"my table"`).
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (`'it''s'`).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub(crate) fn lsn_text(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub(crate) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Damaged `DataRow` and `ErrorResponse` bodies are `None` or partial, never panics.
    #[test]
    fn damaged_server_messages_do_not_panic() {
        let mut row = 3u16.to_be_bytes().to_vec();
        for v in [Some("42"), None, Some("héllo")] {
            match v {
                Some(t) => {
                    row.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    row.extend_from_slice(t.as_bytes());
                }
                None => row.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(data_row(&row).unwrap(), vec![Some("42".into()), None, Some("héllo".into())]);
        let err = b"SERROR\0C42P01\0Mrelation does not exist\0\0".to_vec();
        assert_eq!(parse_error(&err).code, "42P01");
        crate::util::decode_damaged("PostgreSQL messages", &[row, err], 5000, |b| {
            let _ = data_row(b);
            let _ = parse_error(b);
        });
    }
}
