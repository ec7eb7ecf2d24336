//! The `pgoutput` logical decoding messages (protocol version 1, text values), as documented in
//! PostgreSQL's "Logical Replication Message Formats", and the replication stream's own
//! `XLogData`/keepalive framing around them.

use crate::error::{Error, Result};

/// A column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    /// A TOASTed value the change did not touch: the previous row's value holds.
    Unchanged,
    Text(String),
}

#[derive(Debug, Clone)]
pub(crate) struct RelColumn {
    pub name: String,
    /// The column type's oid (the text form is what gets cast; kept for tests and messages).
    #[cfg_attr(not(test), allow(dead_code))]
    pub type_oid: u32,
    /// Part of the replica identity (the primary key by default).
    pub key: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<RelColumn>,
}

#[derive(Debug)]
pub(crate) enum Change {
    /// A transaction starts; its id.
    Begin {
        xid: u32,
    },
    /// The end LSN of the commit record: the position after the transaction.
    Commit {
        end_lsn: u64,
    },
    Relation(Relation),
    Insert {
        rel: u32,
        new: Vec<Value>,
    },
    /// `old`: the key's old values when the key changed (or the whole old row with
    /// `REPLICA IDENTITY FULL`).
    Update {
        rel: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        rel: u32,
        old: Vec<Value>,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// Origin, Type and logical messages: nothing to apply.
    Other,
}

/// One message of the copy-both stream.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// WAL data: the server's WAL end and the pgoutput message.
    XLogData { wal_end: u64, data: &'a [u8] },
    /// The server's WAL end, and whether it wants a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

fn bad(what: &str) -> Error {
    Error::invalid_data(format!("a malformed pgoutput message ({what})"))
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self.b.get(self.at..self.at + n).ok_or_else(|| bad("truncated"))?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn cstr(&mut self) -> Result<String> {
        let rest = &self.b[self.at.min(self.b.len())..];
        let end = rest.iter().position(|c| *c == 0).ok_or_else(|| bad("unterminated string"))?;
        self.at += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
    fn tuple(&mut self) -> Result<Vec<Value>> {
        let n = self.u16()? as usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                t => return Err(bad(&format!("tuple value kind '{}'", t as char))),
            });
        }
        Ok(out)
    }
}

/// Reads one frame of the copy-both stream.
pub(crate) fn frame(b: &[u8]) -> Result<Frame<'_>> {
    let mut c = Cursor { b, at: 0 };
    match c.u8()? {
        b'w' => {
            let _start = c.u64()?;
            let wal_end = c.u64()?;
            let _clock = c.u64()?;
            Ok(Frame::XLogData { wal_end, data: &b[c.at..] })
        }
        b'k' => {
            let wal_end = c.u64()?;
            let _clock = c.u64()?;
            Ok(Frame::Keepalive { wal_end, reply: c.u8()? == 1 })
        }
        t => Err(bad(&format!("stream message '{}'", t as char))),
    }
}

/// Decodes one pgoutput message.
pub(crate) fn decode(b: &[u8]) -> Result<Change> {
    let mut c = Cursor { b, at: 0 };
    Ok(match c.u8()? {
        b'B' => {
            let _final_lsn = c.u64()?;
            let _commit_time = c.u64()?;
            Change::Begin { xid: c.u32()? }
        }
        b'C' => {
            let _flags = c.u8()?;
            let _commit_lsn = c.u64()?;
            Change::Commit { end_lsn: c.u64()? }
        }
        b'R' => {
            let oid = c.u32()?;
            let namespace = c.cstr()?;
            let name = c.cstr()?;
            let _identity = c.u8()?;
            let n = c.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = c.u8()?;
                let name = c.cstr()?;
                let type_oid = c.u32()?;
                let _typmod = c.u32()?;
                columns.push(RelColumn { name, type_oid, key: flags & 1 == 1 });
            }
            Change::Relation(Relation { oid, namespace, name, columns })
        }
        b'I' => {
            let rel = c.u32()?;
            if c.u8()? != b'N' {
                return Err(bad("insert without a new tuple"));
            }
            Change::Insert { rel, new: c.tuple()? }
        }
        b'U' => {
            let rel = c.u32()?;
            let mut old = None;
            let mut kind = c.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(c.tuple()?);
                kind = c.u8()?;
            }
            if kind != b'N' {
                return Err(bad("update without a new tuple"));
            }
            Change::Update { rel, old, new: c.tuple()? }
        }
        b'D' => {
            let rel = c.u32()?;
            let kind = c.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(bad("delete without the old key"));
            }
            Change::Delete { rel, old: c.tuple()? }
        }
        b'T' => {
            let n = c.u32()? as usize;
            let _options = c.u8()?;
            let mut rels = Vec::with_capacity(n.min(b.len() / 4));
            for _ in 0..n {
                rels.push(c.u32()?);
            }
            Change::Truncate { rels }
        }
        b'O' | b'Y' | b'M' => Change::Other,
        t => return Err(bad(&format!("message '{}'", t as char))),
    })
}

/// A standby status update: `write` received, `flush` flushed and applied (what the slot may
/// release; 0 leaves the slot's position as it is).
pub(crate) fn status_update(write: u64, flush: u64, reply: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(34);
    v.push(b'r');
    for l in [write, flush, flush] {
        v.extend_from_slice(&l.to_be_bytes());
    }
    // Microseconds since 2000-01-01.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let pg_epoch = now.as_micros() as i64 - 946_684_800_000_000;
    v.extend_from_slice(&pg_epoch.to_be_bytes());
    v.push(u8::from(reply));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(vals: &[Option<&str>]) -> Vec<u8> {
        let mut v = (vals.len() as u16).to_be_bytes().to_vec();
        for x in vals {
            match x {
                None => v.push(b'n'),
                Some("~") => v.push(b'u'),
                Some(s) => {
                    v.push(b't');
                    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    v.extend_from_slice(s.as_bytes());
                }
            }
        }
        v
    }

    /// Messages built by hand from the documented layout.
    #[test]
    fn decodes_the_documented_messages() {
        let mut r = vec![b'R'];
        r.extend_from_slice(&16385u32.to_be_bytes());
        r.extend_from_slice(b"public\0t\0");
        r.push(b'd');
        r.extend_from_slice(&2u16.to_be_bytes());
        r.push(1);
        r.extend_from_slice(b"id\0");
        r.extend_from_slice(&20u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        r.push(0);
        r.extend_from_slice(b"body\0");
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        match decode(&r).unwrap() {
            Change::Relation(rel) => {
                assert_eq!((rel.oid, rel.namespace.as_str(), rel.name.as_str()), (16385, "public", "t"));
                let cols: Vec<(&str, u32, bool)> =
                    rel.columns.iter().map(|c| (c.name.as_str(), c.type_oid, c.key)).collect();
                assert_eq!(cols, [("id", 20, true), ("body", 25, false)]);
            }
            c => panic!("{c:?}"),
        }
        let mut u = vec![b'U'];
        u.extend_from_slice(&16385u32.to_be_bytes());
        u.push(b'K');
        u.extend(tuple(&[Some("1"), None]));
        u.push(b'N');
        u.extend(tuple(&[Some("2"), Some("~")]));
        match decode(&u).unwrap() {
            Change::Update { rel: 16385, old: Some(old), new } => {
                assert_eq!(old, [Value::Text("1".into()), Value::Null]);
                assert_eq!(new, [Value::Text("2".into()), Value::Unchanged]);
            }
            c => panic!("{c:?}"),
        }
        let mut t = vec![b'T'];
        t.extend_from_slice(&2u32.to_be_bytes());
        t.push(0);
        t.extend_from_slice(&7u32.to_be_bytes());
        t.extend_from_slice(&8u32.to_be_bytes());
        assert!(matches!(decode(&t).unwrap(), Change::Truncate { rels } if rels == [7, 8]));
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&5u64.to_be_bytes());
        c.extend_from_slice(&9u64.to_be_bytes());
        c.extend_from_slice(&0u64.to_be_bytes());
        assert!(matches!(decode(&c).unwrap(), Change::Commit { end_lsn: 9 }));
        // Truncated input is an error, never a panic.
        for n in 0..u.len() {
            let _ = decode(&u[..n]);
        }
        assert!(decode(&u[..u.len() - 2]).is_err());
        assert!(decode(b"Z").is_err());
        // Damaged messages are errors, never panics.
        let mut i = vec![b'I'];
        i.extend_from_slice(&16385u32.to_be_bytes());
        i.push(b'N');
        i.extend(tuple(&[Some("3"), None, Some("~")]));
        let mut d = vec![b'D'];
        d.extend_from_slice(&16385u32.to_be_bytes());
        d.push(b'K');
        d.extend(tuple(&[Some("3")]));
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        w.extend_from_slice(&3u64.to_be_bytes());
        w.extend_from_slice(&c);
        crate::util::write_fuzz_seeds(
            "pgoutput",
            &[],
            &[r.clone(), u.clone(), t.clone(), c.clone(), i.clone(), d.clone(), w.clone()],
        );
        crate::util::decode_damaged("pgoutput messages", &[r, u, t, c.clone(), i, d], 5000, |b| {
            let _ = decode(b);
        });
        crate::util::decode_damaged("replication frames", &[w], 2000, |b| {
            if let Ok(Frame::XLogData { data, .. }) = frame(b) {
                let _ = decode(data);
            }
        });
    }
}
