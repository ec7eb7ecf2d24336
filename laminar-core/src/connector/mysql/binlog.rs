//! Binlog events (v4 format, MySQL ≥ 5.6 and MariaDB ≥ 10.0) and the row images of ROW-format
//! replication: what a change-data-capture reader needs, decoded from the bytes the server's
//! binlog dump sends. Values are decoded by the column types of the preceding TABLE_MAP event.

use std::collections::HashMap;

pub(super) const HEADER: usize = 19;

pub(super) const QUERY: u8 = 2;
pub(super) const ROTATE: u8 = 4;
pub(super) const FORMAT_DESCRIPTION: u8 = 15;
pub(super) const XID: u8 = 16;
pub(super) const TABLE_MAP: u8 = 19;
pub(super) const WRITE_V1: u8 = 23;
pub(super) const UPDATE_V1: u8 = 24;
pub(super) const DELETE_V1: u8 = 25;
pub(super) const HEARTBEAT: u8 = 27;
pub(super) const WRITE_V2: u8 = 30;
pub(super) const UPDATE_V2: u8 = 31;
pub(super) const DELETE_V2: u8 = 32;
pub(super) const MYSQL_GTID: u8 = 33;
pub(super) const MARIA_GTID: u8 = 162;

// Column types.
const T_DECIMAL: u8 = 0;
const T_TINY: u8 = 1;
const T_SHORT: u8 = 2;
const T_LONG: u8 = 3;
const T_FLOAT: u8 = 4;
const T_DOUBLE: u8 = 5;
const T_NULL: u8 = 6;
const T_TIMESTAMP: u8 = 7;
const T_LONGLONG: u8 = 8;
const T_INT24: u8 = 9;
const T_DATE: u8 = 10;
const T_TIME: u8 = 11;
const T_DATETIME: u8 = 12;
const T_YEAR: u8 = 13;
const T_VARCHAR: u8 = 15;
const T_BIT: u8 = 16;
const T_TIMESTAMP2: u8 = 17;
const T_DATETIME2: u8 = 18;
const T_TIME2: u8 = 19;
const T_JSON: u8 = 245;
const T_NEWDECIMAL: u8 = 246;
const T_ENUM: u8 = 247;
const T_SET: u8 = 248;
const T_TINY_BLOB: u8 = 249;
const T_MEDIUM_BLOB: u8 = 250;
const T_LONG_BLOB: u8 = 251;
const T_BLOB: u8 = 252;
const T_VAR_STRING: u8 = 253;
const T_STRING: u8 = 254;
const T_GEOMETRY: u8 = 255;

#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub server_id: u32,
    /// The position in the binlog file after this event (0 for artificial events).
    pub log_pos: u32,
}

#[derive(Debug, Clone)]
pub(super) struct TableMap {
    pub schema: String,
    pub table: String,
    pub types: Vec<u8>,
    pub meta: Vec<(u8, u8)>,
}

/// One decoded value. Integers keep their byte width so an unsigned column can be read back.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Int {
        v: i64,
        bytes: u8,
    },
    Float(f64),
    /// Text: decimals, dates and times in their SQL text form.
    Text(String),
    Bytes(Vec<u8>),
    /// ENUM (1-based index) and SET (bit mask) values, read with the column's labels.
    Enum(u64),
    Set(u64),
}

#[derive(Debug)]
pub(super) enum RowChange {
    Insert(Vec<Value>),
    Update(Vec<Value>, Vec<Value>),
    Delete(Vec<Value>),
}

#[derive(Debug)]
pub(super) enum Event {
    Rotate {
        file: String,
        pos: u64,
    },
    FormatDescription,
    TableMap {
        table_id: u64,
    },
    Rows {
        table_id: u64,
        rows: Vec<RowChange>,
    },
    Xid,
    /// A statement, with the default database it ran in.
    Query {
        schema: String,
        query: String,
    },
    /// MariaDB's GTID (domain-server-seq); `standalone`: a statement that commits by itself (DDL).
    MariaGtid {
        domain: u32,
        seq: u64,
        standalone: bool,
    },
    /// MySQL's GTID (source uuid : transaction number); a MySQL stream resumes by file and
    /// offset, so it is decoded for the tests of recorded bytes and for messages only.
    #[allow(dead_code)]
    MysqlGtid {
        uuid: String,
        gno: u64,
    },
    Heartbeat,
    Other,
}

/// The decoding state of one binlog stream: whether events carry CRC32 checksums, and the
/// table maps seen.
pub(super) struct Parser {
    checksum: bool,
    maps: HashMap<u64, TableMap>,
    /// The table ids whose rows are decoded; other tables' ROWS events are skipped (their
    /// columns may be of types this decoder refuses).
    captured: std::collections::HashSet<u64>,
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
/// `n` bytes of `b` from `at`, `None` past its end (lengths come from the wire: no overflow).
fn span(b: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(n)?)
}
fn uint_le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64)
}
fn uint_be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | x as u64)
}

impl Parser {
    /// `checksum`: whether the server was asked for checksummed events (`@master_binlog_checksum`);
    /// the FORMAT_DESCRIPTION event says so again for the events after it.
    pub(super) fn new(checksum: bool) -> Parser {
        Parser { checksum, maps: HashMap::new(), captured: Default::default() }
    }

    pub(super) fn table(&self, id: u64) -> Option<&TableMap> {
        self.maps.get(&id)
    }

    /// Whether the rows of table `id` are decoded (set when its TABLE_MAP names the captured
    /// table, cleared when the id comes to name another).
    pub(super) fn capture(&mut self, id: u64, yes: bool) {
        if yes {
            self.captured.insert(id);
        } else {
            self.captured.remove(&id);
        }
    }

    /// Decodes one event (the dump's packet without its leading 0x00).
    pub(super) fn parse(&mut self, ev: &[u8]) -> Result<(Header, Event), String> {
        if ev.len() < HEADER {
            return Err(format!("an event of {} bytes", ev.len()));
        }
        let kind = ev[4];
        let size = u32le(ev, 9).ok_or("short header")? as usize;
        let header = Header { server_id: u32le(ev, 5).ok_or("short")?, log_pos: u32le(ev, 13).ok_or("short")? };
        if size != ev.len() {
            return Err(format!("event size {size} but {} bytes", ev.len()));
        }
        if kind == FORMAT_DESCRIPTION {
            // The checksum algorithm is the byte before the event's own 4-byte checksum.
            self.checksum = ev.len() >= HEADER + 57 + 5 && ev[ev.len() - 5] == 1;
            if self.checksum {
                check_crc(ev)?;
            }
            return Ok((header, Event::FormatDescription));
        }
        let end = if self.checksum {
            if ev.len() < HEADER + 4 {
                return Err(format!("an event of {} bytes, too short for its header and checksum", ev.len()));
            }
            check_crc(ev)?;
            ev.len() - 4
        } else {
            ev.len()
        };
        let body = &ev[HEADER..end];
        let event = match kind {
            ROTATE => {
                let pos = body.get(..8).map(uint_le).ok_or("short ROTATE")?;
                Event::Rotate { file: String::from_utf8_lossy(&body[8..]).to_string(), pos }
            }
            XID => Event::Xid,
            QUERY => {
                let schema_len = *body.get(8).ok_or("short QUERY")? as usize;
                let vars_len = u16le(body, 11).ok_or("short QUERY")? as usize;
                let at = 13 + vars_len;
                let schema = String::from_utf8_lossy(body.get(at..at + schema_len).ok_or("short QUERY")?).to_string();
                let q = at + schema_len + 1;
                Event::Query { schema, query: String::from_utf8_lossy(body.get(q..).ok_or("short QUERY")?).to_string() }
            }
            TABLE_MAP => {
                let (id, m) = parse_table_map(body)?;
                self.maps.insert(id, m);
                Event::TableMap { table_id: id }
            }
            WRITE_V1 | UPDATE_V1 | DELETE_V1 | WRITE_V2 | UPDATE_V2 | DELETE_V2 => self.parse_rows(kind, body)?,
            MARIA_GTID => {
                let seq = body.get(..8).map(uint_le).ok_or("short GTID")?;
                let domain = u32le(body, 8).ok_or("short GTID")?;
                let flags = *body.get(12).ok_or("short GTID")?;
                Event::MariaGtid { domain, seq, standalone: flags & 1 != 0 }
            }
            MYSQL_GTID => {
                let u = body.get(1..17).ok_or("short GTID")?;
                let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
                let uuid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
                Event::MysqlGtid { uuid, gno: body.get(17..25).map(uint_le).ok_or("short GTID")? }
            }
            HEARTBEAT => Event::Heartbeat,
            // MySQL's TRANSACTION_PAYLOAD (binlog_transaction_compression) and MariaDB's
            // compressed QUERY/ROWS events (log_bin_compress): skipping them would lose changes.
            40 | 165..=171 => {
                return Err(format!(
                    "a compressed binlog event (type {kind}); turn binlog compression off on the server (MySQL: binlog_transaction_compression = OFF; MariaDB: log_bin_compress = OFF)"
                ));
            }
            _ => Event::Other,
        };
        Ok((header, event))
    }

    fn parse_rows(&self, kind: u8, b: &[u8]) -> Result<Event, String> {
        let table_id = b.get(..6).map(uint_le).ok_or("short ROWS")?;
        if !self.captured.contains(&table_id) {
            return Ok(Event::Rows { table_id, rows: vec![] });
        }
        let mut at = 8;
        if matches!(kind, WRITE_V2 | UPDATE_V2 | DELETE_V2) {
            let extra = u16le(b, at).ok_or("short ROWS")? as usize;
            at += extra.max(2);
        }
        let Some(map) = self.maps.get(&table_id) else {
            return Err(format!("a ROWS event of table id {table_id} without its TABLE_MAP"));
        };
        let n = super::wire::lenenc_int(b, &mut at).ok_or("short ROWS")? as usize;
        if n != map.types.len() {
            return Err(format!("a ROWS event of {n} columns for a table map of {}", map.types.len()));
        }
        let bm = n.div_ceil(8);
        let present1 = b.get(at..at + bm).ok_or("short ROWS")?.to_vec();
        at += bm;
        let update = matches!(kind, UPDATE_V1 | UPDATE_V2);
        let present2 = if update {
            let p = b.get(at..at + bm).ok_or("short ROWS")?.to_vec();
            at += bm;
            p
        } else {
            vec![]
        };
        let mut rows = vec![];
        while at < b.len() {
            let start = at;
            let before = read_image(b, &mut at, map, &present1)?;
            if at == start {
                // No column present: an image of no bytes, which no server writes (and would
                // repeat without end over the rest of the event).
                return Err("a ROWS event whose column bitmap names no column".into());
            }
            rows.push(match kind {
                WRITE_V1 | WRITE_V2 => RowChange::Insert(before),
                DELETE_V1 | DELETE_V2 => RowChange::Delete(before),
                _ => {
                    let after = read_image(b, &mut at, map, &present2)?;
                    RowChange::Update(before, after)
                }
            });
        }
        Ok(Event::Rows { table_id, rows })
    }
}

fn check_crc(ev: &[u8]) -> Result<(), String> {
    let (data, crc) = ev.split_at(ev.len() - 4);
    let want = u32::from_le_bytes(crc.try_into().expect("4"));
    if crc32fast::hash(data) != want {
        return Err("an event's CRC32 checksum does not match (damaged binlog or stream)".into());
    }
    Ok(())
}

fn parse_table_map(b: &[u8]) -> Result<(u64, TableMap), String> {
    let id = b.get(..6).map(uint_le).ok_or("short TABLE_MAP")?;
    let mut at = 8;
    let name = |at: &mut usize| -> Result<String, String> {
        let n = *b.get(*at).ok_or("short TABLE_MAP")? as usize;
        let s = String::from_utf8_lossy(b.get(*at + 1..*at + 1 + n).ok_or("short TABLE_MAP")?).to_string();
        *at += n + 2; // the name and its NUL
        Ok(s)
    };
    let schema = name(&mut at)?;
    let table = name(&mut at)?;
    let n = super::wire::lenenc_int(b, &mut at).ok_or("short TABLE_MAP")? as usize;
    let types = span(b, at, n).ok_or("short TABLE_MAP")?.to_vec();
    at += n;
    let meta_len = super::wire::lenenc_int(b, &mut at).ok_or("short TABLE_MAP")? as usize;
    let mb = span(b, at, meta_len).ok_or("short TABLE_MAP")?;
    let mut mi = 0;
    let mut meta = Vec::with_capacity(n);
    for &t in &types {
        let take = match t {
            T_FLOAT | T_DOUBLE | T_BLOB | T_GEOMETRY | T_JSON | T_TIMESTAMP2 | T_DATETIME2 | T_TIME2 | T_TINY_BLOB
            | T_MEDIUM_BLOB | T_LONG_BLOB => 1,
            T_VARCHAR | T_VAR_STRING | T_BIT | T_NEWDECIMAL | T_STRING | T_ENUM | T_SET => 2,
            _ => 0,
        };
        let m = mb.get(mi..mi + take).ok_or("short TABLE_MAP metadata")?;
        meta.push((m.first().copied().unwrap_or(0), m.get(1).copied().unwrap_or(0)));
        mi += take;
    }
    Ok((id, TableMap { schema, table, types, meta }))
}

fn read_image(b: &[u8], at: &mut usize, map: &TableMap, present: &[u8]) -> Result<Vec<Value>, String> {
    let n = map.types.len();
    let is_present = |i: usize| present[i / 8] & (1 << (i % 8)) != 0;
    let count = (0..n).filter(|&i| is_present(i)).count();
    let nulls = b.get(*at..*at + count.div_ceil(8)).ok_or("short row image")?.to_vec();
    *at += count.div_ceil(8);
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    for i in 0..n {
        if !is_present(i) {
            out.push(Value::Null);
            continue;
        }
        let null = nulls[k / 8] & (1 << (k % 8)) != 0;
        k += 1;
        if null {
            out.push(Value::Null);
            continue;
        }
        out.push(read_value(b, at, map.types[i], map.meta[i]).map_err(|m| format!("column {}: {m}", i + 1))?);
    }
    Ok(out)
}

fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let s = span(b, *at, n).ok_or("a value past the event's end")?;
    *at += n;
    Ok(s)
}

fn int(b: &[u8], at: &mut usize, n: usize) -> Result<Value, String> {
    let raw = uint_le(take(b, at, n)?);
    let shift = 64 - 8 * n as u32;
    Ok(Value::Int { v: ((raw << shift) as i64) >> shift, bytes: n as u8 })
}

fn read_value(b: &[u8], at: &mut usize, t: u8, (m0, m1): (u8, u8)) -> Result<Value, String> {
    Ok(match t {
        T_TINY => int(b, at, 1)?,
        T_SHORT => int(b, at, 2)?,
        T_INT24 => int(b, at, 3)?,
        T_LONG => int(b, at, 4)?,
        T_LONGLONG => int(b, at, 8)?,
        // A FLOAT's shortest text as an f32 ("1.1", as the server prints it, not the f64 widening).
        T_FLOAT => Value::Text(f32::from_le_bytes(take(b, at, 4)?.try_into().expect("4")).to_string()),
        T_DOUBLE => Value::Float(f64::from_le_bytes(take(b, at, 8)?.try_into().expect("8"))),
        T_YEAR => {
            let y = take(b, at, 1)?[0] as i64;
            Value::Int { v: if y == 0 { 0 } else { 1900 + y }, bytes: 2 }
        }
        T_NEWDECIMAL => Value::Text(decimal(b, at, m0 as usize, m1 as usize)?),
        T_VARCHAR | T_VAR_STRING => {
            let max = m0 as usize | (m1 as usize) << 8;
            let n = if max < 256 { take(b, at, 1)?[0] as usize } else { uint_le(take(b, at, 2)?) as usize };
            Value::Bytes(take(b, at, n)?.to_vec())
        }
        T_STRING | T_ENUM | T_SET => {
            let (real, len) = if m0 & 0x30 != 0x30 {
                (m0 | 0x30, m1 as usize | (((m0 & 0x30) ^ 0x30) as usize) << 4)
            } else {
                (m0, m1 as usize)
            };
            match real {
                T_ENUM => Value::Enum(uint_le(take(b, at, len)?)),
                T_SET => Value::Set(uint_le(take(b, at, len)?)),
                _ => {
                    let n = if len < 256 { take(b, at, 1)?[0] as usize } else { uint_le(take(b, at, 2)?) as usize };
                    Value::Bytes(take(b, at, n)?.to_vec())
                }
            }
        }
        T_BLOB | T_TINY_BLOB | T_MEDIUM_BLOB | T_LONG_BLOB | T_GEOMETRY | T_JSON => {
            if t == T_JSON {
                return Err("MySQL's binary JSON is not decoded (MariaDB's JSON is text and is)".into());
            }
            if t == T_GEOMETRY {
                return Err("GEOMETRY columns are not decoded".into());
            }
            let n = uint_le(take(b, at, m0.clamp(1, 4) as usize)?) as usize;
            Value::Bytes(take(b, at, n)?.to_vec())
        }
        T_BIT => {
            let n = m1 as usize + usize::from(m0 > 0);
            Value::Int { v: uint_be(take(b, at, n)?) as i64, bytes: 8 }
        }
        T_DATE => {
            let v = uint_le(take(b, at, 3)?);
            Value::Text(format!("{:04}-{:02}-{:02}", v >> 9, (v >> 5) & 15, v & 31))
        }
        T_DATETIME2 => {
            let v = uint_be(take(b, at, 5)?) as i64 - 0x80_0000_0000;
            let frac = fraction(b, at, m0)?;
            let ymd = v >> 17;
            let (ym, day) = (ymd >> 5, ymd & 31);
            let hms = v & 0x1ffff;
            Value::Text(format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{frac}",
                ym / 13,
                ym % 13,
                day,
                hms >> 12,
                (hms >> 6) & 63,
                hms & 63
            ))
        }
        T_TIMESTAMP2 => {
            let secs = uint_be(take(b, at, 4)?) as i64;
            let frac = fraction(b, at, m0)?;
            // 0 is the zero TIMESTAMP (NULL once read, as in the snapshot), not the epoch.
            if secs == 0 {
                return Ok(Value::Text("0000-00-00 00:00:00".into()));
            }
            Value::Text(format!("{}{frac}", civil(secs)))
        }
        T_TIME2 => {
            // The server's my_time_packed_from_binary: integer and fraction are one signed value.
            let int = uint_be(take(b, at, 3)?) as i64 - 0x80_0000;
            let packed: i64 = match m0 {
                1..=4 => {
                    // The fraction in 1 byte (hundredths) or 2 (ten-thousandths), borrowed from
                    // the integer part of a negative value.
                    let (n, scale) = if m0 <= 2 { (1, 10_000) } else { (2, 100) };
                    let mut frac = uint_be(take(b, at, n)?) as i64;
                    let mut i = int;
                    if i < 0 && frac != 0 {
                        i += 1;
                        frac -= 1 << (8 * n);
                    }
                    (i << 24) + frac * scale
                }
                5 | 6 => {
                    let low = uint_be(take(b, at, 3)?) as i64;
                    (((int + 0x80_0000) << 24) | low) - 0x8000_0000_0000
                }
                _ => int << 24,
            };
            let (sign, p) = if packed < 0 { ("-", -packed) } else { ("", packed) };
            let (hms, micros) = (p >> 24, p & 0xff_ffff);
            let frac = if m0 > 0 { format!(".{micros:06}") } else { String::new() };
            Value::Text(format!("{sign}{:02}:{:02}:{:02}{frac}", (hms >> 12) & 0x3ff, (hms >> 6) & 63, hms & 63))
        }
        T_DATETIME => {
            let v = uint_le(take(b, at, 8)?);
            let (d, t) = (v / 1_000_000, v % 1_000_000);
            Value::Text(format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                d / 10000,
                d / 100 % 100,
                d % 100,
                t / 10000,
                t / 100 % 100,
                t % 100
            ))
        }
        T_TIMESTAMP => Value::Text(civil(uint_le(take(b, at, 4)?) as i64)),
        T_TIME => {
            let v = uint_le(take(b, at, 3)?);
            Value::Text(format!("{:02}:{:02}:{:02}", v / 10000, v / 100 % 100, v % 100))
        }
        T_NULL => Value::Null,
        T_DECIMAL => return Err("the pre-5.0 DECIMAL type is not decoded".into()),
        other => return Err(format!("column type {other} is not decoded")),
    })
}

/// The fractional seconds of a temporal value of `fsp` digits, as `.ffffff` (empty for 0).
fn fraction(b: &[u8], at: &mut usize, fsp: u8) -> Result<String, String> {
    if fsp > 6 {
        return Err(format!("a fractional seconds precision of {fsp} (the table map says; at most 6)"));
    }
    let n = (fsp as usize).div_ceil(2);
    if n == 0 {
        return Ok(String::new());
    }
    let v = uint_be(take(b, at, n)?);
    let micros = v * 10u64.pow(6 - 2 * n as u32);
    Ok(format!(".{micros:06}"))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of seconds since the epoch.
fn civil(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", tod / 3600, tod / 60 % 60, tod % 60)
}

/// A DECIMAL(precision, scale) in MySQL's binary form, as text.
fn decimal(b: &[u8], at: &mut usize, precision: usize, scale: usize) -> Result<String, String> {
    const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    if scale > precision || precision > 65 {
        return Err(format!("DECIMAL({precision}, {scale})"));
    }
    let intg = precision - scale;
    let (intg0, intg0x) = (intg / 9, intg % 9);
    let (frac0, frac0x) = (scale / 9, scale % 9);
    let size = intg0 * 4 + DIG2BYTES[intg0x] + frac0 * 4 + DIG2BYTES[frac0x];
    let mut d = take(b, at, size)?.to_vec();
    if d.is_empty() {
        return Ok("0".into());
    }
    let negative = d[0] & 0x80 == 0;
    d[0] ^= 0x80;
    if negative {
        for x in d.iter_mut() {
            *x = !*x;
        }
    }
    let mut p = 0;
    let mut digits = String::new();
    let group = |n: usize, width: usize, p: &mut usize| {
        let v = uint_be(&d[*p..*p + n]);
        *p += n;
        format!("{v:0width$}")
    };
    if intg0x > 0 {
        digits.push_str(&group(DIG2BYTES[intg0x], intg0x, &mut p));
    }
    for _ in 0..intg0 {
        digits.push_str(&group(4, 9, &mut p));
    }
    let int_part = digits.trim_start_matches('0');
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    s.push_str(if int_part.is_empty() { "0" } else { int_part });
    if scale > 0 {
        s.push('.');
        for _ in 0..frac0 {
            s.push_str(&group(4, 9, &mut p));
        }
        if frac0x > 0 {
            s.push_str(&group(DIG2BYTES[frac0x], frac0x, &mut p));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_decode_from_their_binary_form() {
        // DECIMAL(10, 4) 1234.5678 (6 integer digits in 3 bytes, 4 fraction digits in 2) and its negative.
        let pos = [0x80, 0x04, 0xd2, 0x16, 0x2e];
        assert_eq!(decimal(&pos, &mut 0, 10, 4).unwrap(), "1234.5678");
        // A negative value is the positive one's bytes inverted.
        let neg: Vec<u8> = pos.iter().map(|&b| !b).collect();
        assert_eq!(decimal(&neg, &mut 0, 10, 4).unwrap(), "-1234.5678");
        // DECIMAL(14, 4) -1234567890.1234: the MySQL manual's example.
        let m = [0x7e, 0xf2, 0x04, 0xc7, 0x2d, 0xfb, 0x2d];
        assert_eq!(decimal(&m, &mut 0, 14, 4).unwrap(), "-1234567890.1234");
        // DECIMAL(5, 2) 0.05.
        assert_eq!(decimal(&[0x80, 0x00, 0x05], &mut 0, 5, 2).unwrap(), "0.05");
    }

    #[test]
    fn datetimes_decode() {
        // DATETIME2(0) 2024-02-29 13:45:07: (2024 * 13 + 2) << 22 | 29 << 17 | 13 << 12 | 45 << 6 | 7, + 2^39.
        let ymd = (2024i64 * 13 + 2) << 5 | 29;
        let v = (ymd << 17 | 13 << 12 | 45 << 6 | 7) + 0x80_0000_0000;
        let bytes = v.to_be_bytes()[3..].to_vec();
        let mut with_frac = bytes.clone();
        with_frac.extend_from_slice(&[0x01, 0xe2, 0x40]); // fsp 6: 123456
        assert_eq!(read_value(&bytes, &mut 0, T_DATETIME2, (0, 0)).unwrap(), Value::Text("2024-02-29 13:45:07".into()));
        assert_eq!(
            read_value(&with_frac, &mut 0, T_DATETIME2, (6, 0)).unwrap(),
            Value::Text("2024-02-29 13:45:07.123456".into())
        );
        assert_eq!(civil(0), "1970-01-01 00:00:00");
        assert_eq!(civil(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(civil(1_700_000_000), "2023-11-14 22:13:20");
        let date = (2024u32 << 9 | 2 << 5 | 29).to_le_bytes();
        assert_eq!(read_value(&date, &mut 0, T_DATE, (0, 0)).unwrap(), Value::Text("2024-02-29".into()));
    }

    #[test]
    fn times_with_fractions_keep_their_sign() {
        // The packed forms the server's my_time_packed_to_binary writes, for fsp 2 and 6.
        let enc = |packed: i64, fsp: u8| -> Vec<u8> {
            if fsp <= 2 {
                // C's arithmetic shift and truncating remainder: -1.5 s is int -2, fraction -50.
                let (i, f) = (packed >> 24, (packed % (1 << 24)) / 10_000);
                let v = (i + 0x80_0000) as u32;
                vec![(v >> 16) as u8, (v >> 8) as u8, v as u8, f as u8]
            } else {
                ((packed + 0x8000_0000_0000) as u64).to_be_bytes()[2..].to_vec()
            }
        };
        let packed = |neg: bool, h: i64, m: i64, s: i64, us: i64| {
            let p = (((h << 12) | (m << 6) | s) << 24) + us;
            if neg { -p } else { p }
        };
        let time = |bytes: Vec<u8>, fsp: u8| read_value(&bytes, &mut 0, T_TIME2, (fsp, 0)).unwrap();
        assert_eq!(time(enc(packed(true, 0, 0, 1, 500_000), 2), 2), Value::Text("-00:00:01.500000".into()));
        assert_eq!(time(enc(packed(false, 838, 59, 59, 0), 2), 2), Value::Text("838:59:59.000000".into()));
        assert_eq!(time(enc(packed(true, 0, 0, 1, 1), 6), 6), Value::Text("-00:00:01.000001".into()));
        // fsp 4: the fraction in two bytes, in ten-thousandths (-1.25 s is int -2, fraction -2500).
        let fsp4 = |i: i64, f: i64| {
            let v = (i + 0x80_0000) as u32;
            let f = f as u16;
            vec![(v >> 16) as u8, (v >> 8) as u8, v as u8, (f >> 8) as u8, f as u8]
        };
        assert_eq!(time(fsp4(-2, -2500), 4), Value::Text("-00:00:01.250000".into()));
        assert_eq!(time(fsp4(3, 1234), 4), Value::Text("00:00:03.123400".into()));
        assert_eq!(time(0x80_0000u32.to_be_bytes()[1..].to_vec(), 0), Value::Text("00:00:00".into()));
    }

    #[test]
    fn integers_keep_sign_and_width() {
        assert_eq!(read_value(&[0xff], &mut 0, T_TINY, (0, 0)).unwrap(), Value::Int { v: -1, bytes: 1 });
        assert_eq!(
            read_value(&[0xff, 0xff, 0x7f], &mut 0, T_INT24, (0, 0)).unwrap(),
            Value::Int { v: 0x7fffff, bytes: 3 }
        );
        assert_eq!(read_value(&[0, 0, 0x80], &mut 0, T_INT24, (0, 0)).unwrap(), Value::Int { v: -0x800000, bytes: 3 });
    }

    /// An event of `kind` with `body`, its header filled in and, with `crc`, its checksum.
    fn event(kind: u8, body: &[u8], crc: bool) -> Vec<u8> {
        let mut ev = vec![0u8; HEADER];
        ev[4] = kind;
        ev[5] = 1; // server id
        ev.extend_from_slice(body);
        let n = (ev.len() + if crc { 4 } else { 0 }) as u32;
        ev[9..13].copy_from_slice(&n.to_le_bytes());
        ev[13..17].copy_from_slice(&1234u32.to_le_bytes());
        if crc {
            let c = crc32fast::hash(&ev);
            ev.extend_from_slice(&c.to_le_bytes());
        }
        ev
    }

    #[test]
    fn mysql_8_table_map_and_write_rows_v2_with_checksums() {
        // Built by the layouts MySQL 8 documents (it writes v2 ROWS events and a TABLE_MAP with
        // optional metadata after the null bitmap; MariaDB writes v1 and none).
        let mut tm = vec![42, 0, 0, 0, 0, 0, 1, 0];
        tm.extend_from_slice(&[2, b'd', b'b', 0, 1, b't', 0]);
        tm.extend_from_slice(&[3, T_LONG, T_VARCHAR, T_DATETIME2]);
        tm.extend_from_slice(&[3, 40, 0, 0]); // metadata: VARCHAR(40), DATETIME2(0)
        tm.push(0b110); // nullable: the last two
        tm.extend_from_slice(&[1, 1, 0]); // optional metadata: SIGNEDNESS, all signed
        let mut rows = vec![42, 0, 0, 0, 0, 0, 1, 0, 2, 0, 3, 0b111];
        rows.push(0b010); // the VARCHAR is NULL
        rows.extend_from_slice(&(-5i32).to_le_bytes());
        let ymd = (2024i64 * 13 + 2) << 5 | 29;
        let v = (ymd << 17 | 13 << 12 | 45 << 6 | 7) + 0x80_0000_0000;
        rows.extend_from_slice(&v.to_be_bytes()[3..]);
        let mut p = Parser::new(true);
        let (_, e) = p.parse(&event(TABLE_MAP, &tm, true)).unwrap();
        // Not captured: the rows are skipped undecoded.
        match p.parse(&event(WRITE_V2, &rows, true)).unwrap().1 {
            Event::Rows { table_id: 42, rows } => assert!(rows.is_empty()),
            other => panic!("{other:?}"),
        }
        p.capture(42, true);
        assert!(matches!(e, Event::TableMap { table_id: 42 }), "{e:?}");
        assert_eq!(p.table(42).unwrap().table, "t");
        let (h, e) = p.parse(&event(WRITE_V2, &rows, true)).unwrap();
        assert_eq!(h.log_pos, 1234);
        match e {
            Event::Rows { table_id: 42, rows } => match &rows[..] {
                [RowChange::Insert(v)] => assert_eq!(
                    v,
                    &vec![Value::Int { v: -5, bytes: 4 }, Value::Null, Value::Text("2024-02-29 13:45:07".into())]
                ),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // A damaged event is refused.
        let mut bad = event(WRITE_V2, &rows, true);
        bad[HEADER + 14] ^= 1;
        assert!(p.parse(&bad).unwrap_err().contains("CRC32"));
    }

    #[test]
    fn a_mysql_gtid_event() {
        // A MySQL 8 GTID_LOG_EVENT (type 33) by its documented layout: flags, uuid, gno,
        // logical timestamps; checksum off.
        let mut ev = vec![0u8; HEADER];
        ev[4] = MYSQL_GTID;
        let mut body = vec![1u8];
        body.extend_from_slice(&[
            0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42, 0x95, 0x62,
        ]);
        body.extend_from_slice(&23u64.to_le_bytes());
        body.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ev.extend_from_slice(&body);
        let n = ev.len() as u32;
        ev[9..13].copy_from_slice(&n.to_le_bytes());
        let (_, e) = Parser::new(false).parse(&ev).unwrap();
        match e {
            Event::MysqlGtid { uuid, gno } => {
                assert_eq!(uuid, "3e11fa47-71ca-11e1-9e33-c80aa9429562");
                assert_eq!(gno, 23);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Found by the binlog fuzzer: a ROWS event whose column bitmap names no column has row
    /// images of no bytes, and the decoder appended empty rows until the memory ran out; a
    /// TABLE_MAP whose column count is a length-encoded 2^64 - 1 overflowed `at + n`; with
    /// checksums on, an event shorter than its header and checksum was sliced past its end.
    #[test]
    fn fuzz_findings_are_errors() {
        let mut tm = vec![42, 0, 0, 0, 0, 0, 1, 0];
        tm.extend_from_slice(&[2, b'd', b'b', 0, 1, b't', 0, 1, T_LONG, 0, 0]);
        let mut p = Parser::new(false);
        p.parse(&event(TABLE_MAP, &tm, false)).unwrap();
        p.capture(42, true);
        // table id, flags, extra-data length 2, one column, bitmap 0, then bytes to loop over.
        let rows = [42, 0, 0, 0, 0, 0, 1, 0, 2, 0, 1, 0b0, 7, 7, 7];
        let err = p.parse(&event(WRITE_V2, &rows, false)).unwrap_err();
        assert!(err.contains("names no column"), "{err}");
        let mut huge = vec![43, 0, 0, 0, 0, 0, 1, 0];
        huge.extend_from_slice(&[2, b'd', b'b', 0, 1, b't', 0, 0xfe]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&[T_LONG, 0, 0]);
        let err = p.parse(&event(TABLE_MAP, &huge, false)).unwrap_err();
        assert!(err.contains("short TABLE_MAP"), "{err}");
        // With checksums on, an event of a header and less than a checksum (the second finding).
        let mut fd = vec![0u8; 57];
        fd.push(1); // CRC32
        p.parse(&event(FORMAT_DESCRIPTION, &fd, true)).unwrap();
        let err = p.parse(&event(XID, &[0], false)).unwrap_err();
        assert!(err.contains("too short"), "{err}");
    }

    /// Damaged events (no checksum, so the damage reaches the decoder) are errors, never panics.
    #[test]
    fn damaged_events_are_errors_not_panics() {
        let mut tm = vec![42, 0, 0, 0, 0, 0, 1, 0];
        tm.extend_from_slice(&[2, b'd', b'b', 0, 1, b't', 0]);
        let types = [T_LONG, T_VARCHAR, T_DATETIME2, T_NEWDECIMAL, T_TIME2, T_BLOB, T_DATE, T_LONGLONG];
        tm.push(types.len() as u8);
        tm.extend_from_slice(&types);
        tm.extend_from_slice(&[8, 40, 0, 0, 10, 4, 3, 2]); // metadata
        tm.push(0xfe); // nullable
        tm.extend_from_slice(&[1, 1, 0]);
        let mut rows = vec![42, 0, 0, 0, 0, 0, 1, 0, 2, 0, 8, 0xff];
        rows.push(0b0000_0010);
        rows.extend_from_slice(&(-5i32).to_le_bytes());
        rows.extend_from_slice(&[0x80, 0x00, 0x01, 0x23, 0x45, 0x00, 0x01, 0x02, 0x03]);
        rows.extend_from_slice(&[0x80, 0x04, 0xd2, 0x16, 0x2e]);
        rows.extend_from_slice(&[0x80, 0x00, 0x00]);
        rows.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        rows.extend_from_slice(&(2024u32 << 9 | 2 << 5 | 29).to_le_bytes()[..3]);
        rows.extend_from_slice(&7i64.to_le_bytes());
        let mut update = rows.clone();
        update.extend_from_slice(&rows[12..]);
        let seeds = vec![
            event(TABLE_MAP, &tm, false),
            event(WRITE_V2, &rows, false),
            event(UPDATE_V2, &update, false),
            event(DELETE_V1, &[&rows[..8], &rows[10..]].concat(), false),
            event(QUERY, &[1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, b'd', b'b', 0, b'X'], false),
        ];
        // A table map, then each other event: the parser decodes rows of mapped tables only.
        let streams: Vec<Vec<u8>> = seeds[1..].iter().map(|e| [&seeds[0][..], &[0xfe, 0xfe], e].concat()).collect();
        crate::util::write_fuzz_seeds("binlog", &[], &streams);
        crate::util::decode_damaged("binlog events", &seeds, 5000, |ev| {
            let mut p = Parser::new(false);
            let _ = p.parse(&seeds[0]);
            p.capture(42, true);
            let _ = p.parse(ev);
            let _ = p.parse(&seeds[1]);
        });
    }
}
