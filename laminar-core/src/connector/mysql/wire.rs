//! A small blocking client of the MySQL/MariaDB client-server protocol, enough for change data
//! capture: the v10 handshake with `mysql_native_password` (MariaDB's default; an
//! authentication switch to it is followed), text queries with their result sets, and the
//! binlog dump's packet stream. Packets: 3-byte length, sequence number, payload (payloads of
//! 16 MiB − 1 bytes continue in the next packet).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result, clip};

const CLIENT_LONG_PASSWORD: u32 = 1;
const CLIENT_LONG_FLAG: u32 = 4;
const CLIENT_CONNECT_WITH_DB: u32 = 8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_MULTI_RESULTS: u32 = 0x20000;
const CLIENT_PLUGIN_AUTH: u32 = 0x80000;
/// utf8mb4_general_ci.
const CHARSET: u8 = 45;
const MAX_PAYLOAD: usize = 0xff_ffff;

/// Where and as whom to connect.
#[derive(Clone)]
pub(crate) struct MyConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl MyConfig {
    /// `host:port/database` for messages (never the password).
    pub(crate) fn describe(&self) -> String {
        format!("{}:{}/{}", clip(&self.host), self.port, clip(&self.database))
    }
}

/// A server's `ERR` packet.
#[derive(Debug, Clone)]
pub(crate) struct ServerError {
    pub code: u16,
    pub message: String,
}

pub(crate) struct Conn {
    s: TcpStream,
    /// Bytes read and not yet taken as packets (from `at`).
    buf: Vec<u8>,
    at: usize,
    /// How long a blocking read waits in all.
    timeout: Duration,
    seq: u8,
    what: String,
    /// The server's version string (`10.11.6-MariaDB-…`).
    pub server_version: String,
}

impl Conn {
    pub(crate) fn connect(cfg: &MyConfig, timeout: Duration) -> Result<Conn> {
        let what = format!("MySQL '{}'", cfg.describe());
        let s = crate::connector::connect_tcp(&cfg.host, cfg.port, timeout, &what)?;
        let mut c = Conn {
            s,
            buf: Vec::with_capacity(1 << 16),
            at: 0,
            timeout,
            seq: 0,
            what: what.clone(),
            server_version: String::new(),
        };
        let hello = c.read_packet()?;
        if hello.first() == Some(&0xff) {
            return Err(c.server_error(&hello));
        }
        let h = Handshake::parse(&hello).map_err(|m| Error::invalid_data(format!("{what}: handshake: {m}")))?;
        c.server_version = h.version.clone();
        let mut caps = CLIENT_LONG_PASSWORD
            | CLIENT_LONG_FLAG
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_MULTI_RESULTS
            | CLIENT_PLUGIN_AUTH;
        if !cfg.database.is_empty() {
            caps |= CLIENT_CONNECT_WITH_DB;
        }
        // The handshake names the server's default plugin (MySQL 8: caching_sha2_password), not
        // the user's: answer as mysql_native_password and follow the switch the server asks
        // for if the user has another.
        let plugin = match h.plugin.as_str() {
            "mysql_clear_password" => h.plugin.clone(),
            _ => "mysql_native_password".to_string(),
        };
        let auth = auth_response(&plugin, &cfg.password, &h.scramble, &what)?;
        let mut p = Vec::with_capacity(128);
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
        p.push(CHARSET);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(cfg.user.as_bytes());
        p.push(0);
        p.push(auth.len() as u8);
        p.extend_from_slice(&auth);
        if !cfg.database.is_empty() {
            p.extend_from_slice(cfg.database.as_bytes());
            p.push(0);
        }
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        c.write_packet(&p)?;
        loop {
            let r = c.read_packet()?;
            match r.first() {
                Some(0x00) => break,
                // 1045, access denied: INVALID_ARGUMENT, not retried.
                Some(0xff) => return Err(c.server_error(&r)),
                Some(0xfe) => {
                    // An authentication switch: the plugin's name, then its scramble.
                    let rest = &r[1..];
                    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                    let plugin = String::from_utf8_lossy(&rest[..end]).to_string();
                    let mut scramble = rest.get(end + 1..).unwrap_or_default().to_vec();
                    if scramble.last() == Some(&0) {
                        scramble.pop();
                    }
                    let auth = auth_response(&plugin, &cfg.password, &scramble, &what)?;
                    c.write_packet(&auth)?;
                }
                Some(0x01) => {
                    return Err(Error::not_implemented(format!(
                        "{what}: the server asks for more authentication data (caching_sha2_password's full authentication needs TLS or RSA); give the user mysql_native_password"
                    )));
                }
                _ => return Err(Error::invalid_data(format!("{what}: unexpected packet during authentication"))),
            }
        }
        Ok(c)
    }

    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// How long one read of the socket waits: [`try_read_packet`](Self::try_read_packet)
    /// returns after it at the latest.
    pub(crate) fn set_poll_wait(&mut self, t: Duration) -> Result<()> {
        self.s.set_read_timeout(Some(t)).map_err(|e| self.io(e))
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{}: {e}", self.what))
    }

    /// The error of an `ERR` packet. Kind `IO` for errors a retry may cure (server shutting
    /// down, too many connections, lock timeouts); `INVALID_ARGUMENT` otherwise.
    pub(crate) fn server_error(&self, p: &[u8]) -> Error {
        let e = parse_error(p);
        let kind = match e.code {
            1040 | 1053 | 1205 | 1213 | 2013 | 1927 => ErrorKind::Io,
            _ => ErrorKind::InvalidArgument,
        };
        Error::new(kind, format!("{}: error {}: {}", self.what, e.code, e.message))
    }

    /// Reads what the socket has (false: nothing within its read timeout).
    fn fill(&mut self) -> Result<bool> {
        if self.at > 0 && self.at * 2 >= self.buf.len() {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        let mut tmp = [0u8; 1 << 16];
        match self.s.read(&mut tmp) {
            Ok(0) => Err(Error::new(ErrorKind::Io, format!("{}: the server closed the connection", self.what))),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(self.io(e)),
        }
    }

    /// One whole payload from the bytes read (joining continuation packets), if they hold one.
    fn take_packet(&mut self) -> Option<Vec<u8>> {
        let mut at = self.at;
        let mut pieces = vec![];
        loop {
            let h = self.buf.get(at..at + 4)?;
            let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
            let seq = h[3];
            self.buf.get(at + 4..at + 4 + len)?;
            pieces.push((at + 4, len, seq));
            at += 4 + len;
            if len < MAX_PAYLOAD {
                break;
            }
        }
        let mut out = Vec::with_capacity(pieces.iter().map(|p| p.1).sum());
        for (from, len, seq) in pieces {
            out.extend_from_slice(&self.buf[from..from + len]);
            self.seq = seq.wrapping_add(1);
        }
        self.at = at;
        Some(out)
    }

    /// Reads one payload, waiting up to the connection's timeout.
    pub(crate) fn read_packet(&mut self) -> Result<Vec<u8>> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            if let Some(p) = self.take_packet() {
                return Ok(p);
            }
            if !self.fill()? && std::time::Instant::now() >= deadline {
                return Err(Error::new(ErrorKind::Io, format!("{}: no answer within {:?}", self.what, self.timeout)));
            }
        }
    }

    /// One payload if one arrives within the socket's read timeout ([`set_poll_wait`]).
    pub(crate) fn try_read_packet(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(p) = self.take_packet() {
            return Ok(Some(p));
        }
        self.fill()?;
        Ok(self.take_packet())
    }

    fn write_packet(&mut self, payload: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 8);
        let mut chunks = payload.chunks(MAX_PAYLOAD).peekable();
        if payload.is_empty() {
            buf.extend_from_slice(&[0, 0, 0, self.seq]);
            self.seq = self.seq.wrapping_add(1);
        }
        while let Some(c) = chunks.next() {
            let n = c.len() as u32;
            buf.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, self.seq]);
            self.seq = self.seq.wrapping_add(1);
            buf.extend_from_slice(c);
            if chunks.peek().is_none() && c.len() == MAX_PAYLOAD {
                buf.extend_from_slice(&[0, 0, 0, self.seq]);
                self.seq = self.seq.wrapping_add(1);
            }
        }
        self.s.write_all(&buf).map_err(|e| self.io(e))
    }

    /// Sends a command (its first byte is the command code), starting a new sequence.
    pub(crate) fn command(&mut self, payload: &[u8]) -> Result<()> {
        self.seq = 0;
        self.write_packet(payload)
    }

    /// Runs `sql`; the rows of its result set as text (None: NULL), with the column names.
    pub(crate) fn query(&mut self, sql: &str) -> Result<(Vec<String>, Vec<Vec<Option<Vec<u8>>>>)> {
        let mut rows = vec![];
        let names = self.query_each(sql, |r| {
            rows.push(r);
            Ok(())
        })?;
        Ok((names, rows))
    }

    /// Runs a statement that returns no rows.
    pub(crate) fn execute(&mut self, sql: &str) -> Result<()> {
        self.query(sql).map(|_| ())
    }

    /// Runs `sql`, handing each row to `row` as it arrives; returns the column names.
    pub(crate) fn query_each(
        &mut self,
        sql: &str,
        mut row: impl FnMut(Vec<Option<Vec<u8>>>) -> Result<()>,
    ) -> Result<Vec<String>> {
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(0x03);
        p.extend_from_slice(sql.as_bytes());
        self.command(&p)?;
        let first = self.read_packet()?;
        match first.first() {
            Some(0x00) => return Ok(vec![]),
            Some(0xff) => return Err(self.server_error(&first).context(format!("query '{}'", clip(sql)))),
            _ => {}
        }
        let mut at = 0;
        let n = lenenc_int(&first, &mut at).ok_or_else(|| self.bad("a result set header"))? as usize;
        let mut names = Vec::with_capacity(n);
        for _ in 0..n {
            let d = self.read_packet()?;
            let mut at = 0;
            let mut strs = vec![];
            for _ in 0..5 {
                strs.push(lenenc_bytes(&d, &mut at).ok_or_else(|| self.bad("a column definition"))?);
            }
            names.push(String::from_utf8_lossy(strs[4]).to_string());
        }
        let eof = self.read_packet()?;
        if eof.first() != Some(&0xfe) {
            return Err(self.bad("the end of the column definitions"));
        }
        loop {
            let r = self.read_packet()?;
            match r.first() {
                Some(0xfe) if r.len() < 9 => return Ok(names),
                Some(0xff) => return Err(self.server_error(&r).context(format!("query '{}'", clip(sql)))),
                _ => {}
            }
            let mut at = 0;
            let mut vals = Vec::with_capacity(n);
            for _ in 0..n {
                if r.get(at) == Some(&0xfb) {
                    at += 1;
                    vals.push(None);
                } else {
                    vals.push(Some(lenenc_bytes(&r, &mut at).ok_or_else(|| self.bad("a row"))?.to_vec()));
                }
            }
            row(vals)?;
        }
    }

    fn bad(&self, what: &str) -> Error {
        Error::invalid_data(format!("{}: malformed {what}", self.what))
    }
}

/// One text value of a result (UTF-8, or lossy).
pub(crate) fn text(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).to_string())
}

struct Handshake {
    version: String,
    scramble: Vec<u8>,
    plugin: String,
}

impl Handshake {
    fn parse(p: &[u8]) -> std::result::Result<Handshake, String> {
        if p.first() != Some(&10) {
            return Err(format!("protocol version {:?}, not 10", p.first()));
        }
        let nul = |from: usize| {
            p.get(from..)
                .unwrap_or_default()
                .iter()
                .position(|&b| b == 0)
                .map(|i| from + i)
                .ok_or("unterminated string")
        };
        let v_end = nul(1)?;
        let version = String::from_utf8_lossy(&p[1..v_end]).to_string();
        let mut at = v_end + 1 + 4; // connection id
        let mut scramble = p.get(at..at + 8).ok_or("short")?.to_vec();
        at += 8 + 1; // filler
        let caps_lo = u16::from_le_bytes(p.get(at..at + 2).ok_or("short")?.try_into().expect("2")) as u32;
        at += 2;
        if at >= p.len() {
            return Ok(Handshake { version, scramble, plugin: String::new() });
        }
        at += 1 + 2; // charset, status
        let caps_hi = u16::from_le_bytes(p.get(at..at + 2).ok_or("short")?.try_into().expect("2")) as u32;
        let caps = caps_lo | (caps_hi << 16);
        at += 2;
        let auth_len = *p.get(at).ok_or("short")? as usize;
        at += 1 + 10;
        if caps & CLIENT_SECURE_CONNECTION != 0 {
            let n = 13.max(auth_len.saturating_sub(8));
            let part2 = p.get(at..at + n).ok_or("short")?;
            // The second part ends with a NUL that is not part of the scramble.
            scramble.extend_from_slice(&part2[..part2.len() - 1]);
            at += n;
        }
        let plugin = if caps & CLIENT_PLUGIN_AUTH != 0 && at < p.len() {
            let end = nul(at).unwrap_or(p.len());
            String::from_utf8_lossy(&p[at..end]).to_string()
        } else {
            String::new()
        };
        Ok(Handshake { version, scramble, plugin })
    }
}

fn auth_response(plugin: &str, password: &str, scramble: &[u8], what: &str) -> Result<Vec<u8>> {
    match plugin {
        "mysql_native_password" => Ok(native_password(password, scramble)),
        "mysql_clear_password" => Ok([password.as_bytes(), &[0]].concat()),
        other => Err(Error::not_implemented(format!(
            "{what}: the server wants authentication plugin '{}'; LaminarDB speaks mysql_native_password (ALTER USER … IDENTIFIED WITH mysql_native_password)",
            clip(other)
        ))),
    }
}

/// `SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))`; empty for no password.
pub(crate) fn native_password(password: &str, scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return vec![];
    }
    let h1 = sha1(password.as_bytes());
    let h2 = sha1(&h1);
    let h3 = sha1(&[&scramble[..scramble.len().min(20)], &h2[..]].concat());
    h1.iter().zip(h3).map(|(a, b)| a ^ b).collect()
}

/// SHA-1 (FIPS 180-1), for `mysql_native_password` only.
pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().expect("4"));
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

pub(crate) fn parse_error(p: &[u8]) -> ServerError {
    let code = p.get(1..3).map(|b| u16::from_le_bytes([b[0], b[1]])).unwrap_or(0);
    let mut at = 3;
    if p.get(at) == Some(&b'#') {
        at += 6;
    }
    ServerError { code, message: String::from_utf8_lossy(p.get(at..).unwrap_or_default()).to_string() }
}

/// A length-encoded integer at `*at`.
pub(crate) fn lenenc_int(p: &[u8], at: &mut usize) -> Option<u64> {
    let b = *p.get(*at)?;
    let (n, len) = match b {
        0..=0xfa => (b as u64, 1),
        0xfc => (u16::from_le_bytes(p.get(*at + 1..*at + 3)?.try_into().ok()?) as u64, 3),
        0xfd => {
            let s = p.get(*at + 1..*at + 4)?;
            (u32::from_le_bytes([s[0], s[1], s[2], 0]) as u64, 4)
        }
        0xfe => (u64::from_le_bytes(p.get(*at + 1..*at + 9)?.try_into().ok()?), 9),
        _ => return None,
    };
    *at += len;
    Some(n)
}

fn lenenc_bytes<'a>(p: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let n = usize::try_from(lenenc_int(p, at)?).ok()?;
    let s = p.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(s)
}

/// A string as an SQL literal (quotes and backslashes escaped).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A name as an SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha1_matches_the_standard_vectors() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex(&sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex(&sha1(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(hex(&sha1(&[b'a'; 1000])), "291e9a6c66994949b57ba5e650361e98fc36b1ba");
    }

    #[test]
    fn the_native_password_scramble_reverses_with_the_stored_hash() {
        // The server keeps SHA1(SHA1(pw)) and checks SHA1(token XOR SHA1(scramble + stored)) == stored.
        let scramble = b"0123456789abcdefghij";
        let token = native_password("secret", scramble);
        let stored = sha1(&sha1(b"secret"));
        let mask = sha1(&[&scramble[..], &stored[..]].concat());
        let h1: Vec<u8> = token.iter().zip(mask).map(|(a, b)| a ^ b).collect();
        assert_eq!(sha1(&h1), stored);
        assert!(native_password("", scramble).is_empty());
    }

    #[test]
    fn length_encoded_integers() {
        for (bytes, v, len) in [
            (vec![0xfa], 250u64, 1),
            (vec![0xfc, 0x01, 0x02], 0x0201, 3),
            (vec![0xfd, 1, 2, 3], 0x030201, 4),
            (vec![0xfe, 1, 0, 0, 0, 0, 0, 0, 1], 0x0100_0000_0000_0001, 9),
        ] {
            let mut at = 0;
            assert_eq!(lenenc_int(&bytes, &mut at), Some(v));
            assert_eq!(at, len);
        }
        assert_eq!(lenenc_int(&[0xfc, 1], &mut 0), None);
    }

    /// Damaged server packets (handshake, error, length-encoded values) are errors or partial
    /// values, never panics.
    #[test]
    fn damaged_server_packets_do_not_panic() {
        let mut hs = vec![10u8];
        hs.extend_from_slice(b"5.5.5-10.11.6-MariaDB\0");
        hs.extend_from_slice(&7u32.to_le_bytes());
        hs.extend_from_slice(b"abcdefgh\0");
        hs.extend_from_slice(&0xf7feu16.to_le_bytes());
        hs.push(45);
        hs.extend_from_slice(&2u16.to_le_bytes());
        hs.extend_from_slice(&0x81bfu16.to_le_bytes());
        hs.push(21);
        hs.extend_from_slice(&[0; 10]);
        hs.extend_from_slice(b"ijklmnopqrst\0");
        hs.extend_from_slice(b"mysql_native_password\0");
        assert_eq!(Handshake::parse(&hs).unwrap().plugin, "mysql_native_password");
        let err = [&[0xffu8, 0x28, 0x04, b'#'][..], b"42000", b"You have an error"].concat();
        let row = [&[3u8][..], b"abc", &[0xfb], &[0xfc, 2, 0], b"xy"].concat();
        crate::util::decode_damaged("MySQL packets", &[hs, err, row], 5000, |p| {
            let _ = Handshake::parse(p);
            let _ = parse_error(p);
            let mut at = 0;
            while lenenc_bytes(p, &mut at).is_some() {}
        });
    }
}
