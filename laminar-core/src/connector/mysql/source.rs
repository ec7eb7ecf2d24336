//! The MYSQL_CDC source: a table's snapshot (in a consistent-snapshot transaction whose binlog
//! position the server reports), then its changes from the binlog (ROW events), applied to a
//! LaminarDB table one source transaction at a time. The position after each transaction —
//! binlog file and offset, and the GTID state — goes into the checkpoint; a reopened source
//! resumes from the GTID state on MariaDB (`@slave_connect_state`) and from the file and
//! offset on MySQL.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, BinaryArray, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::binlog::{Event, Parser, RowChange, Value};
use super::wire::{Conn, MyConfig, ident, literal, text};
use crate::connector::{Options, Poll, Position, Positions, SourceReader};
use crate::error::{Error, ErrorKind, Result, clip};

const DELETED: &str = "__deleted";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_WAIT: Duration = Duration::from_millis(50);
/// The offset recorded while the snapshot is read: a restart reads it again.
const SNAPSHOT: &str = "snapshot";
const SNAPSHOT_ROWS: usize = 8192;
/// Rows handed over in one batch at most (whole transactions: a larger one is one batch).
const MAX_ROWS: usize = 100_000;
/// An idle stream hands over its position this often (so checkpoints record it).
const IDLE_ADVANCE: Duration = Duration::from_secs(1);
/// How often the lag metric asks the server where its binlog ends.
const LAG_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    Initial,
    Latest,
}

/// One change: the declared columns' values as bytes (text, or raw for BYTEA columns).
type Row = crate::connector::CdcRow<Option<Vec<u8>>>;

/// A column of the captured table on the server.
struct Column {
    name: String,
    unsigned: bool,
    bit: bool,
    /// ENUM and SET labels.
    labels: Vec<String>,
}

/// Where the stream stands: after a whole transaction.
#[derive(Debug, Clone, Default, PartialEq)]
struct Pos {
    file: String,
    offset: u64,
    /// MariaDB's GTID state: domain → (server id, sequence number).
    gtid: BTreeMap<u32, (u32, u64)>,
}

impl Pos {
    fn gtid_text(&self) -> String {
        self.gtid.iter().map(|(d, (s, n))| format!("{d}-{s}-{n}")).collect::<Vec<_>>().join(",")
    }

    /// `file:offset|gtid-state`.
    fn text(&self) -> String {
        format!("{}:{}|{}", self.file, self.offset, self.gtid_text())
    }

    fn parse(s: &str) -> Option<Pos> {
        let (fp, g) = s.rsplit_once('|')?;
        let (file, off) = fp.rsplit_once(':')?;
        let mut gtid = BTreeMap::new();
        for part in g.split(',').filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (d, sv, n) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
            gtid.insert(d, (sv, n));
        }
        Some(Pos { file: file.to_string(), offset: off.parse().ok()?, gtid })
    }
}

pub(crate) struct MySqlCdcSource {
    source: String,
    cfg: MyConfig,
    table: String,
    server_id: u32,
    startup: Startup,
    schema: SchemaRef,
    out_schema: SchemaRef,
    /// The server's columns in order, and for each declared column its index there.
    columns: Vec<Column>,
    map: Vec<usize>,
    /// The declared columns of the table's key.
    key_idx: Vec<usize>,
    conn: Option<Conn>,
    parser: Parser,
    mariadb: bool,
    /// Whether the snapshot is still to be read (a fresh start, or one interrupted).
    need_snapshot: bool,
    /// The position of the stream (`cur`, after the last whole transaction read) and of the
    /// last batch handed over (a reconnect resumes there).
    cur: Pos,
    handed: Option<Pos>,
    /// The open transaction: its rows, whether one is open, its GTID.
    txn: Vec<Row>,
    in_txn: bool,
    txn_gtid: Option<(u32, u32, u64)>,
    ready: Vec<Row>,
    ready_pos: Option<Pos>,
    last_hand: Instant,
    /// The table ids (TABLE_MAP) of the captured table.
    ids: std::collections::HashSet<u64>,
    pending: VecDeque<Poll>,
    stats: crate::connector::SourceStats,
    /// A connection for `SHOW MASTER STATUS` (the lag metric), and when it last asked.
    status: Option<Conn>,
    last_status: Instant,
}

impl MySqlCdcSource {
    /// `key`: the LaminarDB table's primary key (an update that keeps it is one upsert; one
    /// that changes it deletes the old row too).
    pub(crate) fn new(
        source: &str,
        schema: SchemaRef,
        key: Option<&[String]>,
        mut o: Options,
    ) -> Result<MySqlCdcSource> {
        let what = format!("MYSQL_CDC source '{source}'");
        let host = o.get("hostname").unwrap_or_else(|| "127.0.0.1".to_string());
        let port = match o.get("port") {
            None => 3306,
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                Error::invalid_argument(format!("{what}: option 'port' must be a port number, got '{}'", clip(&p)))
            })?,
        };
        let user = o.required("username")?;
        let password = o.get("password").unwrap_or_default();
        let database = o.required("database-name")?;
        let table = o.required("table-name")?;
        let server_id = match o.get("server-id") {
            None => {
                // Stable for a source of a table: a restarted process takes over its stream.
                let key = format!("{source}/{database}/{table}");
                5_400 + (crc32fast::hash(key.as_bytes()) % 1_000_000_000)
            }
            Some(v) => v.trim().parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "{what}: option 'server-id' must be a number from 1 to 4294967295, unique among the server's replicas, got '{}'",
                    clip(&v)
                ))
            })?,
        };
        let startup = match o.choice("scan.startup.mode", &["initial", "latest-offset"], "initial")? {
            "latest-offset" => Startup::Latest,
            _ => Startup::Initial,
        };
        o.finish()?;
        for f in schema.fields() {
            if matches!(f.data_type(), DataType::List(_) | DataType::Struct(_) | DataType::Map(..)) {
                return Err(Error::not_implemented(format!(
                    "{what}: column '{}' is {}; declare it VARCHAR",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        let key_idx: Vec<usize> = match key {
            Some(k) => k.iter().filter_map(|n| schema.index_of(n).ok()).collect(),
            None => (0..schema.fields().len()).collect(),
        };
        let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(DELETED, DataType::Boolean, true)));
        Ok(MySqlCdcSource {
            key_idx,
            source: source.to_string(),
            cfg: MyConfig { host, port, user, password, database },
            table,
            server_id,
            startup,
            schema,
            out_schema: Arc::new(Schema::new(fields)),
            columns: vec![],
            map: vec![],
            conn: None,
            parser: Parser::new(false),
            mariadb: false,
            need_snapshot: true,
            cur: Pos::default(),
            handed: None,
            txn: vec![],
            in_txn: false,
            txn_gtid: None,
            ready: vec![],
            ready_pos: None,
            last_hand: Instant::now(),
            ids: Default::default(),
            pending: VecDeque::new(),
            stats: Default::default(),
            status: None,
            last_status: Instant::now() - LAG_EVERY,
        })
    }

    fn what(&self) -> String {
        format!("MYSQL_CDC source '{}' ({}.{})", self.source, self.cfg.describe(), self.table)
    }

    fn connect(&self) -> Result<Conn> {
        Conn::connect(&self.cfg, CONNECT_TIMEOUT)
    }

    /// Reads the captured table's columns and checks the server's binlog settings; a declared
    /// column the table lacks is an error naming it.
    fn load_table(&mut self, c: &mut Conn) -> Result<()> {
        let (_, vars) = c.query("SELECT @@global.log_bin, @@global.binlog_format, @@global.binlog_row_image")?;
        let v: Vec<String> =
            vars.first().map(|r| r.iter().map(|x| text(x).unwrap_or_default()).collect()).unwrap_or_default();
        if v.len() == 3 {
            let bad = |setting: &str, want: &str, got: &str| {
                Err(Error::invalid_argument(format!(
                    "{}: the server's {setting} is '{}'; change data capture needs {want} (in the server's configuration)",
                    self.what(),
                    clip(got)
                )))
            };
            if v[0] != "1" && !v[0].eq_ignore_ascii_case("on") {
                return bad("log_bin", "the binary log on (log-bin)", &v[0]);
            }
            if !v[1].eq_ignore_ascii_case("row") {
                return bad("binlog_format", "ROW", &v[1]);
            }
            if !v[2].eq_ignore_ascii_case("full") {
                return bad("binlog_row_image", "FULL", &v[2]);
            }
        }
        let (_, rows) = c.query(&format!(
            "SELECT COLUMN_NAME, COLUMN_TYPE, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            literal(&self.cfg.database),
            literal(&self.table)
        ))?;
        if rows.is_empty() {
            return Err(Error::not_found(format!(
                "{}: no table '{}' in database '{}' (or no SELECT privilege on it)",
                self.what(),
                clip(&self.table),
                clip(&self.cfg.database)
            )));
        }
        self.columns = rows
            .iter()
            .map(|r| {
                let name = text(&r[0]).unwrap_or_default();
                let ctype = text(&r[1]).unwrap_or_default();
                let dtype = text(&r[2]).unwrap_or_default().to_ascii_lowercase();
                let labels = if dtype == "enum" || dtype == "set" { labels(&ctype) } else { vec![] };
                Column { name, unsigned: ctype.contains("unsigned"), bit: dtype == "bit", labels }
            })
            .collect();
        self.map = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                self.columns.iter().position(|c| c.name.eq_ignore_ascii_case(f.name())).ok_or_else(|| {
                    let have: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
                    Error::invalid_argument(format!(
                        "{}: the server's table has no column '{}' (it has: {})",
                        self.what(),
                        f.name(),
                        clip(&have.join(", "))
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The snapshot: every row as an upsert after a TRUNCATE (so a snapshot read again after
    /// a restart replaces the first one), in a consistent-snapshot transaction; returns the
    /// binlog position it is consistent with.
    fn snapshot(&mut self) -> Result<Pos> {
        let mut c = self.connect()?;
        // TIMESTAMP values in UTC, as the binlog carries them.
        c.execute("SET time_zone = '+00:00'")?;
        c.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
        c.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")?;
        // MariaDB reports the binlog position its consistent snapshot corresponds to.
        let (_, st) = c.query("SHOW STATUS LIKE 'binlog_snapshot_%'")?;
        let get = |name: &str| st.iter().find(|r| text(&r[0]).as_deref() == Some(name)).and_then(|r| text(&r[1]));
        let mut pos = match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
            (Some(f), Some(p)) if !f.is_empty() => {
                Pos { file: f, offset: p.parse().unwrap_or(4), gtid: BTreeMap::new() }
            }
            _ => {
                // MySQL: a global read lock for the moment between the position and the snapshot.
                c.execute("ROLLBACK")?;
                c.execute("FLUSH TABLES WITH READ LOCK")?;
                let p = master_status(&mut c)?;
                c.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")?;
                c.execute("UNLOCK TABLES")?;
                p
            }
        };
        if self.mariadb {
            let (_, g) = c.query(&format!("SELECT BINLOG_GTID_POS({}, {})", literal(&pos.file), pos.offset))?;
            pos.gtid = parse_gtid(&g.first().and_then(|r| text(&r[0])).unwrap_or_default());
        }
        let cols: Vec<String> = self.map.iter().map(|&i| ident(&self.columns[i].name)).collect();
        let sql = format!("SELECT {} FROM {}.{}", cols.join(", "), ident(&self.cfg.database), ident(&self.table));
        let started = Instant::now();
        log::info!(target: "laminardb", "{}: reading the initial snapshot", self.what());
        let mut rows = vec![Row::Truncate];
        let mut n = 0u64;
        let mut batches = vec![];
        let bits: Vec<bool> = self.map.iter().map(|&i| self.columns[i].bit).collect();
        c.query_each(&sql, |r| {
            let vals: Vec<Option<Vec<u8>>> = r
                .into_iter()
                .zip(&bits)
                .map(|(v, &bit)| match (v, bit) {
                    // BIT comes as its bytes, big-endian: as a number's text.
                    (Some(b), true) => Some(b.iter().fold(0u64, |a, &x| (a << 8) | x as u64).to_string().into_bytes()),
                    (v, _) => v,
                })
                .collect();
            rows.push(Row::Upsert(vals));
            n += 1;
            if rows.len() >= SNAPSHOT_ROWS {
                batches.push(std::mem::take(&mut rows));
            }
            Ok(())
        })?;
        c.execute("COMMIT")?;
        batches.push(rows);
        let last = batches.len() - 1;
        for (i, b) in batches.into_iter().enumerate() {
            let batch = self.batch(&b)?;
            let offset = if i == last { pos.text() } else { SNAPSHOT.to_string() };
            self.pending.push_back(Poll::Data(batch, Position { partition: "0".into(), offset, finished: false }));
        }
        self.stats.lock().entry("0".into()).or_default().records += n;
        log::info!(
            target: "laminardb",
            "{}: initial snapshot read, {n} rows in {:.1} s",
            self.what(),
            started.elapsed().as_secs_f64()
        );
        Ok(pos)
    }

    /// Connects, reads the table, takes the snapshot if one is due, and starts the binlog dump.
    fn start(&mut self) -> Result<()> {
        let mut c = self.connect()?;
        self.mariadb = c.server_version.to_ascii_lowercase().contains("mariadb");
        self.load_table(&mut c)?;
        let from = match &self.handed {
            Some(p) => p.clone(),
            None if self.need_snapshot && self.startup == Startup::Initial => {
                let p = self.snapshot()?;
                self.need_snapshot = false;
                self.handed = Some(p.clone());
                p
            }
            None => {
                let mut p = master_status(&mut c)?;
                if self.mariadb {
                    let (_, g) = c.query("SELECT @@global.gtid_binlog_pos")?;
                    p.gtid = parse_gtid(&g.first().and_then(|r| text(&r[0])).unwrap_or_default());
                }
                self.need_snapshot = false;
                self.handed = Some(p.clone());
                // Recorded at once, so a restart starts here too.
                let empty = RecordBatch::new_empty(self.out_schema.clone());
                self.pending.push_back(Poll::Data(
                    empty,
                    Position { partition: "0".into(), offset: p.text(), finished: false },
                ));
                p
            }
        };
        let (_, cs) = c.query("SELECT @@global.binlog_checksum")?;
        let checksum = cs.first().and_then(|r| text(&r[0])).unwrap_or_default();
        let crc = checksum.eq_ignore_ascii_case("crc32");
        c.execute(&format!("SET @master_binlog_checksum = {}", literal(&checksum)))?;
        c.execute("SET @master_heartbeat_period = 1000000000")?;
        let gtid_mode = self.mariadb && !from.gtid.is_empty();
        if self.mariadb {
            c.execute("SET @mariadb_slave_capability = 4")?;
        }
        if gtid_mode {
            c.execute(&format!("SET @slave_connect_state = {}", literal(&from.gtid_text())))?;
            c.execute("SET @slave_gtid_strict_mode = 0")?;
            c.execute("SET @slave_gtid_ignore_duplicates = 0")?;
        }
        let mut dump = vec![0x12];
        let (file, offset) = if gtid_mode { (String::new(), 4u32) } else { (from.file.clone(), from.offset as u32) };
        dump.extend_from_slice(&offset.to_le_bytes());
        dump.extend_from_slice(&0u16.to_le_bytes());
        dump.extend_from_slice(&self.server_id.to_le_bytes());
        dump.extend_from_slice(file.as_bytes());
        c.command(&dump)?;
        c.set_poll_wait(POLL_WAIT)?;
        self.parser = Parser::new(crc);
        self.cur = from;
        self.txn.clear();
        self.in_txn = false;
        self.ids.clear();
        self.conn = Some(c);
        log::info!(
            target: "laminardb",
            "{}: reading the binlog from {} (server id {})",
            self.what(),
            if gtid_mode { format!("GTID {}", self.cur.gtid_text()) } else { format!("{}:{}", self.cur.file, self.cur.offset) },
            self.server_id
        );
        Ok(())
    }

    /// The rows as a batch of the declared columns and `__deleted` (NULL: a TRUNCATE).
    fn batch(&self, rows: &[Row]) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len() + 1);
        for (j, f) in self.schema.fields().iter().enumerate() {
            let vals: Vec<Option<&[u8]>> = rows.iter().map(|r| r.value(j).and_then(|v| v.as_deref())).collect();
            let col: ArrayRef = if matches!(f.data_type(), DataType::Binary | DataType::LargeBinary) {
                cast_with_options(&BinaryArray::from(vals), f.data_type(), &CastOptions::default())?
            } else {
                let texts: Vec<Option<String>> = vals
                    .iter()
                    .map(|v| {
                        v.map(|b| String::from_utf8_lossy(b).to_string())
                            // MariaDB's zero dates have no value in Arrow: NULL.
                            .filter(|s| !(is_temporal(f.data_type()) && s.starts_with("0000-00-00")))
                    })
                    .collect();
                let s = StringArray::from(texts);
                let opts = CastOptions { safe: false, ..Default::default() };
                cast_with_options(&s, f.data_type(), &opts)
                    .map_err(|e| Error::invalid_data(format!("{}: column '{}': {e}", self.what(), f.name())))?
            };
            cols.push(col);
        }
        let cols = crate::connector::cdc_columns(cols, &self.schema, rows)?;
        Ok(RecordBatch::try_new(self.out_schema.clone(), cols)?)
    }

    /// A binlog row image as the declared columns' values.
    fn values(&self, image: &[Value]) -> Vec<Option<Vec<u8>>> {
        self.map
            .iter()
            .map(|&i| {
                let col = &self.columns[i];
                match image.get(i).unwrap_or(&Value::Null) {
                    Value::Null => None,
                    Value::Int { v, bytes } => Some(
                        if col.unsigned && *bytes < 8 {
                            ((*v as u64) & ((1u64 << (8 * *bytes as u32)) - 1)).to_string()
                        } else if col.unsigned || col.bit {
                            (*v as u64).to_string()
                        } else {
                            v.to_string()
                        }
                        .into_bytes(),
                    ),
                    Value::Float(f) => Some(f.to_string().into_bytes()),
                    Value::Text(s) => Some(s.clone().into_bytes()),
                    Value::Bytes(b) => Some(b.clone()),
                    Value::Enum(k) => {
                        Some(col.labels.get((*k as usize).wrapping_sub(1)).cloned().unwrap_or_default().into_bytes())
                    }
                    Value::Set(mask) => Some(
                        col.labels
                            .iter()
                            .enumerate()
                            .filter(|(b, _)| mask & (1 << b) != 0)
                            .map(|(_, l)| l.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                            .into_bytes(),
                    ),
                }
            })
            .collect()
    }

    /// The end of a transaction at binlog offset `log_pos`.
    fn commit(&mut self, log_pos: u32) {
        if log_pos > 0 {
            self.cur.offset = log_pos as u64;
        }
        if let Some((d, s, n)) = self.txn_gtid.take() {
            self.cur.gtid.insert(d, (s, n));
        }
        self.in_txn = false;
        self.ready.append(&mut self.txn);
        self.ready_pos = Some(self.cur.clone());
    }

    /// Whether a statement run in database `schema` changes the captured table's definition
    /// (Some(false)) or empties it (Some(true)).
    fn ddl_on_table(&self, schema: &str, query: &str) -> Option<bool> {
        let (truncate, names) = ddl_tables(query)?;
        names
            .iter()
            .any(|(db, t)| {
                db.as_deref().unwrap_or(schema).eq_ignore_ascii_case(&self.cfg.database)
                    && t.eq_ignore_ascii_case(&self.table)
            })
            .then_some(truncate)
    }

    fn on_event(&mut self, ev: &[u8]) -> Result<()> {
        let (h, e) = self.parser.parse(ev).map_err(|m| {
            Error::invalid_data(format!("{}: binlog {}:{}: {m}", self.what(), self.cur.file, self.cur.offset))
        })?;
        match e {
            Event::Rotate { file, pos } => {
                self.cur.file = file;
                self.cur.offset = pos;
            }
            Event::MariaGtid { domain, seq, standalone } => {
                self.txn_gtid = Some((domain, h.server_id, seq));
                self.in_txn = !standalone;
            }
            Event::Query { schema, query } => {
                let q = query.trim();
                if q.eq_ignore_ascii_case("BEGIN") {
                    self.in_txn = true;
                } else if q.eq_ignore_ascii_case("COMMIT") {
                    self.commit(h.log_pos);
                } else if q.eq_ignore_ascii_case("ROLLBACK") {
                    // (A transaction that also touched a non-transactional table is logged and
                    // then rolled back: its rows of transactional tables never happened.)
                    self.txn.clear();
                    self.txn_gtid = None;
                    self.in_txn = false;
                } else {
                    match self.ddl_on_table(&schema, q) {
                        Some(true) => self.txn.push(Row::Truncate),
                        Some(false) => {
                            return Err(Error::invalid_data(format!(
                                "{}: the captured table's definition changed at binlog {}:{} ('{}'); drop the LaminarDB table and create it again (scan.startup.mode = 'initial' reads a new snapshot)",
                                self.what(),
                                self.cur.file,
                                h.log_pos,
                                clip(q)
                            )));
                        }
                        None => {}
                    }
                    if !self.in_txn {
                        self.commit(h.log_pos);
                    }
                }
            }
            Event::TableMap { table_id } => {
                let m = self.parser.table(table_id).expect("just parsed");
                let ours =
                    m.schema.eq_ignore_ascii_case(&self.cfg.database) && m.table.eq_ignore_ascii_case(&self.table);
                self.parser.capture(table_id, ours);
                let m = self.parser.table(table_id).expect("just parsed");
                if ours {
                    if m.types.len() != self.columns.len() {
                        return Err(Error::invalid_data(format!(
                            "{}: the binlog has {} columns for the table and the server's definition {} (the table was altered); drop the LaminarDB table and create it again",
                            self.what(),
                            m.types.len(),
                            self.columns.len()
                        )));
                    }
                    self.ids.insert(table_id);
                } else {
                    // An id now names another table (ids are reused after a server restart).
                    self.ids.remove(&table_id);
                }
            }
            Event::Rows { table_id, rows } if self.ids.contains(&table_id) => {
                for r in rows {
                    match r {
                        RowChange::Insert(v) => self.txn.push(Row::Upsert(self.values(&v))),
                        RowChange::Delete(v) => self.txn.push(Row::Delete(self.values(&v))),
                        RowChange::Update(before, after) => {
                            let (b, a) = (self.values(&before), self.values(&after));
                            // A changed key: the old row goes. (Otherwise one upsert: the old
                            // row stays a version of its key until the new one's time.)
                            if self.key_idx.iter().any(|&k| b[k] != a[k]) {
                                self.txn.push(Row::Delete(b));
                            }
                            self.txn.push(Row::Upsert(a));
                        }
                    }
                }
                if !self.in_txn {
                    self.commit(h.log_pos);
                }
            }
            Event::Xid => self.commit(h.log_pos),
            _ => {}
        }
        Ok(())
    }

    fn hand_over(&mut self) -> Result<()> {
        let Some(pos) = self.ready_pos.clone() else { return Ok(()) };
        if self.ready.is_empty() && self.last_hand.elapsed() < IDLE_ADVANCE {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.ready);
        let b = self.batch(&rows)?;
        self.stats.lock().entry("0".into()).or_default().records +=
            rows.iter().filter(|r| !matches!(r, Row::Truncate)).count() as u64;
        self.pending.push_back(Poll::Data(b, Position { partition: "0".into(), offset: pos.text(), finished: false }));
        self.handed = Some(pos);
        self.ready_pos = None;
        self.last_hand = Instant::now();
        Ok(())
    }

    /// The metrics: the offset handed over and, every [`LAG_EVERY`], the binlog bytes between it
    /// and the server's end (when both are in the same file; a file behind counts its rest).
    fn update_lag(&mut self) {
        let Some(h) = self.handed.clone() else { return };
        let mut lag = None;
        if self.last_status.elapsed() >= LAG_EVERY {
            self.last_status = Instant::now();
            if self.status.is_none() {
                self.status = self.connect().ok();
            }
            match self.status.as_mut().map(master_status) {
                Some(Ok(end)) if end.file == h.file => lag = Some(end.offset.saturating_sub(h.offset) as i64),
                Some(Ok(end)) => {
                    // Files are numbered: the end is in a later one. Count what it holds so far.
                    lag = Some(end.offset as i64);
                }
                Some(Err(_)) => self.status = None,
                None => {}
            }
        }
        let mut st = self.stats.lock();
        let e = st.entry("0".to_string()).or_default();
        e.position = Some(h.offset as i64);
        if let Some(l) = lag {
            e.lag = Some(l);
            e.lag_in_bytes = true;
        }
    }

    fn read_stream(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            let Some(c) = self.conn.as_mut() else { return Ok(()) };
            let Some(p) = c.try_read_packet()? else { break };
            match p.first() {
                Some(0x00) => self.on_event(&p[1..])?,
                Some(0xff) => {
                    let e = super::wire::parse_error(&p);
                    let hint = if e.code == 1236 {
                        " — the binlog the source needs is no longer on the server (purged, or expire_logs_days): drop the LaminarDB table and create it again to read a new snapshot (scan.startup.mode = 'initial')"
                    } else {
                        ""
                    };
                    let kind =
                        if matches!(e.code, 1236 | 1045 | 1227) { ErrorKind::InvalidArgument } else { ErrorKind::Io };
                    return Err(Error::new(
                        kind,
                        format!("{}: binlog dump: error {}: {}{hint}", self.what(), e.code, e.message),
                    ));
                }
                Some(0xfe) => return Err(Error::new(ErrorKind::Io, format!("{}: the binlog dump ended", self.what()))),
                _ => {
                    return Err(Error::invalid_data(format!(
                        "{}: an unexpected packet in the binlog dump",
                        self.what()
                    )));
                }
            }
            if self.ready.len() >= MAX_ROWS || started.elapsed() >= POLL_WAIT {
                break;
            }
        }
        self.hand_over()?;
        self.update_lag();
        Ok(())
    }
}

fn is_temporal(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(..))
}

/// The tables a DDL statement changes, as (database if named, table): (true, …) for TRUNCATE
/// (the table emptied), (false, …) for ALTER, DROP, RENAME and CREATE OR REPLACE; None for any
/// other statement. Comments and string literals are skipped; names may be quoted.
fn ddl_tables(query: &str) -> Option<(bool, Vec<(Option<String>, String)>)> {
    #[derive(PartialEq)]
    enum T {
        Word(String),
        Name(String),
        Dot,
        Comma,
        Other,
    }
    let mut toks = vec![];
    let b: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            i += 2;
            while i < b.len() && !(b[i] == '*' && b.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '#' || (c == '-' && b.get(i + 1) == Some(&'-')) {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '`' {
            let mut name = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == '`' && b.get(i + 1) == Some(&'`') {
                    name.push('`');
                    i += 2;
                } else if b[i] == '`' {
                    i += 1;
                    break;
                } else {
                    name.push(b[i]);
                    i += 1;
                }
            }
            toks.push(T::Name(name));
        } else if c == '\'' || c == '"' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            toks.push(T::Other);
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            toks.push(T::Word(b[start..i].iter().collect()));
        } else {
            toks.push(match c {
                '.' => T::Dot,
                ',' => T::Comma,
                _ => T::Other,
            });
            i += 1;
        }
    }
    let kw = |k: usize, w: &str| matches!(toks.get(k), Some(T::Word(x)) if x.eq_ignore_ascii_case(w));
    // A possibly qualified name at `k`: (db, table) and the index after it.
    let name = |k: usize| -> Option<((Option<String>, String), usize)> {
        let part = |k: usize| match toks.get(k) {
            Some(T::Word(w)) | Some(T::Name(w)) => Some(w.clone()),
            _ => None,
        };
        let first = part(k)?;
        if toks.get(k + 1) == Some(&T::Dot) {
            Some(((Some(first), part(k + 2)?), k + 3))
        } else {
            Some(((None, first), k + 1))
        }
    };
    let mut k = 0;
    let skip = |k: &mut usize, words: &[&str]| {
        while words.iter().any(|w| kw(*k, w)) {
            *k += 1;
        }
    };
    if kw(k, "truncate") {
        k += 1;
        skip(&mut k, &["table"]);
        return Some((true, vec![name(k)?.0]));
    }
    let mut names = vec![];
    if kw(k, "alter") {
        k += 1;
        skip(&mut k, &["online", "ignore"]);
        if !kw(k, "table") {
            return None;
        }
        k += 1;
        skip(&mut k, &["if", "exists"]);
        names.push(name(k)?.0);
    } else if kw(k, "drop") || (kw(k, "create") && kw(k + 1, "or") && kw(k + 2, "replace")) {
        k += if kw(k, "drop") { 1 } else { 3 };
        skip(&mut k, &["temporary"]);
        if !kw(k, "table") {
            return None;
        }
        k += 1;
        skip(&mut k, &["if", "not", "exists"]);
        loop {
            let (n, next) = name(k)?;
            names.push(n);
            if toks.get(next) != Some(&T::Comma) || kw(k, "create") {
                break;
            }
            k = next + 1;
        }
    } else if kw(k, "rename") && kw(k + 1, "table") {
        k += 2;
        while let Some((n, next)) = name(k) {
            names.push(n);
            k = next;
            if kw(k, "to") || toks.get(k) == Some(&T::Comma) {
                k += 1;
            } else {
                break;
            }
        }
    } else {
        return None;
    }
    Some((false, names))
}

/// ENUM/SET labels of a COLUMN_TYPE such as `enum('a','b''c')`.
fn labels(column_type: &str) -> Vec<String> {
    let Some(inner) = column_type.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(l, _)| l) else {
        return vec![];
    };
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = inner.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('\'', false) => quoted = true,
            ('\'', true) if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            ('\'', true) => {
                quoted = false;
                out.push(std::mem::take(&mut cur));
            }
            ('\\', true) => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (c, true) => cur.push(c),
            _ => {}
        }
    }
    out
}

fn parse_gtid(s: &str) -> BTreeMap<u32, (u32, u64)> {
    Pos::parse(&format!("x:0|{}", s.trim())).map(|p| p.gtid).unwrap_or_default()
}

/// `SHOW MASTER STATUS` (`SHOW BINARY LOG STATUS` from MySQL 8.4): the current binlog file and
/// offset.
fn master_status(c: &mut Conn) -> Result<Pos> {
    let (_, rows) = match c.query("SHOW MASTER STATUS") {
        Ok(r) => r,
        Err(e) => c.query("SHOW BINARY LOG STATUS").map_err(|_| e)?,
    };
    let r = rows.first().ok_or_else(|| {
        Error::invalid_argument(format!("{}: SHOW MASTER STATUS is empty: the binary log is off (log-bin)", c.what()))
    })?;
    Ok(Pos {
        file: text(&r[0]).unwrap_or_default(),
        offset: text(&r[1]).and_then(|p| p.parse().ok()).unwrap_or(4),
        gtid: BTreeMap::new(),
    })
}

impl SourceReader for MySqlCdcSource {
    fn describe(&self) -> String {
        format!("MYSQL_CDC {}.{}", self.cfg.describe(), clip(&self.table))
    }

    fn open(&mut self, positions: &Positions) -> Result<()> {
        if let Some(p) = positions.get("0")
            && p != SNAPSHOT
        {
            self.handed = Some(Pos::parse(p).ok_or_else(|| {
                Error::invalid_data(format!("{}: bad binlog position '{}' in the checkpoint", self.what(), clip(p)))
            })?);
            self.need_snapshot = false;
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        if self.conn.is_none() {
            // (Again after a lost connection: from the last position handed over; the
            // transaction being read is read again.)
            self.ready.clear();
            self.ready_pos = None;
            if let Err(e) = self.start() {
                self.conn = None;
                return Err(e);
            }
            if let Some(p) = self.pending.pop_front() {
                return Ok(p);
            }
        }
        if let Err(e) = self.read_stream() {
            self.conn = None;
            return Err(e);
        }
        Ok(self.pending.pop_front().unwrap_or(Poll::Pending))
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn stats(&self) -> Option<crate::connector::SourceStats> {
        Some(self.stats.clone())
    }

    fn check(&mut self) -> Result<()> {
        let mut c = self.connect()?;
        self.load_table(&mut c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let mut gtid = BTreeMap::new();
        gtid.insert(0, (1, 57));
        gtid.insert(3, (2, 9));
        let p = Pos { file: "binlog.000002".into(), offset: 1234, gtid };
        assert_eq!(p.text(), "binlog.000002:1234|0-1-57,3-2-9");
        assert_eq!(Pos::parse(&p.text()), Some(p));
        let empty = Pos { file: "mysql-bin.000001".into(), offset: 4, gtid: BTreeMap::new() };
        assert_eq!(Pos::parse(&empty.text()), Some(empty));
        assert_eq!(Pos::parse("nonsense"), None);
    }

    #[test]
    fn ddl_statements_name_their_tables() {
        let one = |db: Option<&str>, t: &str| (db.map(str::to_string), t.to_string());
        assert_eq!(ddl_tables("TRUNCATE TABLE `t`"), Some((true, vec![one(None, "t")])));
        assert_eq!(ddl_tables("truncate other.t"), Some((true, vec![one(Some("other"), "t")])));
        assert_eq!(ddl_tables("ALTER TABLE x ADD COLUMN t INT"), Some((false, vec![one(None, "x")])));
        assert_eq!(
            ddl_tables("/* c */ DROP TABLE IF EXISTS a, `d b`.t_archive"),
            Some((false, vec![one(None, "a"), one(Some("d b"), "t_archive")]))
        );
        assert_eq!(
            ddl_tables("RENAME TABLE t TO t_old, t_new TO t"),
            Some((false, vec![one(None, "t"), one(None, "t_old"), one(None, "t_new"), one(None, "t")]))
        );
        assert_eq!(ddl_tables("CREATE OR REPLACE TABLE t (a INT)"), Some((false, vec![one(None, "t")])));
        assert_eq!(ddl_tables("CREATE TABLE t (a INT)"), None);
        assert_eq!(ddl_tables("INSERT INTO t VALUES ('ALTER TABLE t')"), None);
        assert_eq!(ddl_tables("ALTER USER x"), None);
    }

    #[test]
    fn enum_labels_are_read_from_the_column_type() {
        assert_eq!(labels("enum('a','b''c','d,e')"), vec!["a", "b'c", "d,e"]);
        assert_eq!(labels("set('x','y')"), vec!["x", "y"]);
        assert!(labels("int(11)").is_empty());
    }
}
