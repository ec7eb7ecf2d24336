//! The POSTGRES_CDC source: a table's initial snapshot, then its changes from a logical
//! replication slot (`pgoutput`), applied to a LaminarDB table one source transaction at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, BinaryArray, BooleanArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::pgoutput::{self, Change, Frame, Relation, Value};
use super::wire::{Conn, PgConfig, ident, literal, lsn_text, parse_lsn};
use crate::connector::{Options, Poll, Position, Positions, SourceReader};
use crate::error::{Error, ErrorKind, Result, clip};

const DELETED: &str = "__deleted";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long creating the slot (it waits for running transactions) and reading the snapshot may
/// take before the attempt fails (and is retried).
const LONG_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long one poll waits for the stream before it hands over what it has.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// Rows per batch at most (whole transactions: a larger transaction is one larger batch).
const MAX_ROWS: usize = 100_000;
/// How often the reader tells the server where it stands, at least (below the server's
/// `wal_sender_timeout`, 60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    Initial,
    Latest,
}

/// One change as text values of the declared columns, in order.
type Row = crate::connector::CdcRow<Option<String>>;

pub(crate) struct PgCdcSource {
    source: String,
    cfg: PgConfig,
    schema_name: String,
    table: String,
    slot: String,
    publication: String,
    startup: Startup,
    schema: SchemaRef,
    out_schema: SchemaRef,
    repl: Option<Conn>,
    /// A second connection, for the snapshot and for TOASTed values a change left out.
    sql: Option<Conn>,
    /// The captured table's relation: its oid and, per declared column, its index there.
    rel: Option<(u32, Vec<usize>, Relation)>,
    /// The transaction being read, and whether one is open (between BEGIN and COMMIT).
    txn: Vec<Row>,
    in_txn: bool,
    /// The open transaction's id, and whether new snapshots on the server see it yet (a
    /// transaction's commit reaches the stream a moment before other sessions see its rows).
    txn_xid: u32,
    txn_visible: bool,
    /// Whole transactions read, waiting to be handed over, and the LSN after the last.
    ready: Vec<Row>,
    ready_lsn: u64,
    pending: VecDeque<Poll>,
    /// The position the stream started from: transactions that end at or before it are
    /// already in the table.
    start_lsn: u64,
    /// The position of the last batch handed over: a reconnect resumes from here.
    handed_lsn: u64,
    /// When an idle stream last handed over the server's position (an empty batch, so that a
    /// checkpoint lets the slot release WAL written by other tables).
    last_idle_advance: Instant,
    /// What the oldest kept checkpoint covers: the slot may release WAL up to here.
    confirmed: u64,
    /// The positions of the durable checkpoints recovery may fall back to, oldest first (the
    /// restored one, then those taken since), at most `retained`.
    kept: VecDeque<u64>,
    retained: usize,
    last_status: Instant,
    /// The server's end of WAL as last reported (for the lag metric).
    server_end: u64,
    stats: crate::connector::SourceStats,
}

impl PgCdcSource {
    pub(crate) fn new(source: &str, schema: SchemaRef, mut o: Options) -> Result<PgCdcSource> {
        let what = format!("POSTGRES_CDC source '{source}'");
        let host = o.get("hostname").unwrap_or_else(|| "127.0.0.1".to_string());
        let port = match o.get("port") {
            None => 5432,
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                Error::invalid_argument(format!("{what}: option 'port' must be a port number, got '{}'", clip(&p)))
            })?,
        };
        let user = o.required("username")?;
        let password = o.get("password").unwrap_or_default();
        let database = o.required("database-name")?;
        let schema_name = o.get("schema-name").unwrap_or_else(|| "public".to_string());
        let table = o.required("table-name")?;
        let slot = o.get("slot.name").unwrap_or_else(|| format!("laminardb_{}", source.to_ascii_lowercase()));
        if slot.is_empty() || !slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(Error::invalid_argument(format!(
                "{what}: option 'slot.name' must be lower-case letters, digits and '_' (a replication slot's name), got '{}'",
                clip(&slot)
            )));
        }
        let publication =
            o.get("publication.name").unwrap_or_else(|| format!("laminardb_{}", source.to_ascii_lowercase()));
        let startup = match o.choice("scan.startup.mode", &["initial", "latest-offset"], "initial")? {
            "latest-offset" => Startup::Latest,
            _ => Startup::Initial,
        };
        o.finish()?;
        let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(DELETED, DataType::Boolean, true)));
        for f in schema.fields() {
            if matches!(f.data_type(), DataType::List(_) | DataType::Struct(_) | DataType::Map(..)) {
                return Err(Error::not_implemented(format!(
                    "{what}: column '{}' is {}; arrays and composite types are not captured (declare it VARCHAR to receive PostgreSQL's text form)",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        Ok(PgCdcSource {
            source: source.to_string(),
            cfg: PgConfig { host, port, user, password, database },
            schema_name,
            table,
            slot,
            publication,
            startup,
            out_schema: Arc::new(Schema::new(fields)),
            schema,
            repl: None,
            sql: None,
            rel: None,
            txn: vec![],
            in_txn: false,
            txn_xid: 0,
            txn_visible: false,
            ready: vec![],
            ready_lsn: 0,
            pending: VecDeque::new(),
            start_lsn: 0,
            handed_lsn: 0,
            last_idle_advance: Instant::now(),
            confirmed: 0,
            kept: VecDeque::new(),
            retained: 1,
            last_status: Instant::now(),
            server_end: 0,
            stats: Default::default(),
        })
    }

    fn what(&self) -> String {
        format!("POSTGRES_CDC source '{}'", self.source)
    }

    fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema_name), ident(&self.table))
    }

    fn sql(&mut self) -> Result<&mut Conn> {
        if self.sql.is_none() {
            self.sql = Some(Conn::connect(&self.cfg, false, CONNECT_TIMEOUT)?);
        }
        Ok(self.sql.as_mut().expect("connected"))
    }

    /// The table's columns on the server: every declared column must be there.
    fn check_table(&mut self) -> Result<()> {
        let q = format!(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped",
            literal(&self.schema_name),
            literal(&self.table)
        );
        let cols: Vec<String> =
            self.sql()?.query(&q)?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
        if cols.is_empty() {
            return Err(Error::not_found(format!(
                "{}: table {} does not exist on '{}'",
                self.what(),
                self.qualified(),
                self.cfg.describe()
            )));
        }
        for f in self.schema.fields() {
            if !cols.iter().any(|c| c == f.name()) {
                return Err(Error::invalid_argument(format!(
                    "{}: column '{}' is not a column of {} (its columns: {})",
                    self.what(),
                    f.name(),
                    self.qualified(),
                    cols.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Creates the publication for the table unless it exists.
    fn ensure_publication(&mut self) -> Result<()> {
        let q = format!("SELECT 1 FROM pg_publication WHERE pubname = {}", literal(&self.publication));
        if self.sql()?.query(&q)?.is_empty() {
            // Changes of a partitioned table's partitions published under the table's name.
            let c = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                ident(&self.publication),
                self.qualified()
            );
            self.sql()?.query(&c)?;
        }
        Ok(())
    }

    fn slot_exists(&mut self) -> Result<bool> {
        let q = format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = {}", literal(&self.slot));
        Ok(!self.sql()?.query(&q)?.is_empty())
    }

    /// The snapshot as text rows of the declared columns (`snapshot`: the slot's exported one).
    fn snapshot(&mut self, snapshot: &str) -> Result<Vec<Vec<Option<String>>>> {
        let cols: Vec<String> = self.schema.fields().iter().map(|f| ident(f.name())).collect();
        let q = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; SELECT {} FROM {}; COMMIT",
            literal(snapshot),
            cols.join(", "),
            self.qualified()
        );
        let c = self.sql()?;
        c.set_read_timeout(LONG_TIMEOUT)?;
        let r = c.query(&q);
        match r {
            Ok(rows) => {
                c.set_read_timeout(CONNECT_TIMEOUT)?;
                Ok(rows)
            }
            Err(e) => {
                // The transaction may still be open: a fresh connection next time.
                self.sql = None;
                Err(e)
            }
        }
    }

    fn start_stream(&mut self, from: u64) -> Result<()> {
        let q = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            ident(&self.slot),
            lsn_text(from),
            literal(&ident(&self.publication))
        );
        let what = self.what();
        let r = self.repl.as_mut().expect("connected");
        r.start_copy_both(&q).map_err(|e| {
            if e.message().contains("does not exist") {
                Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "{what}: {}; the position in the checkpoint cannot be resumed: drop the table and create it again (scan.startup.mode = 'initial' takes a new snapshot)",
                        e.message()
                    ),
                )
            } else {
                e
            }
        })?;
        r.set_read_timeout(POLL_WAIT)?;
        self.start_lsn = from;
        self.handed_lsn = from;
        Ok(())
    }

    /// Text values of the declared columns from a tuple of the relation; `Unchanged` ones from
    /// the old tuple, else from the server's current row.
    fn values(&mut self, tuple: &[Value], old: Option<&[Value]>) -> Result<Vec<Option<String>>> {
        let (_, map, rel) = self.rel.as_ref().ok_or_else(|| Error::invalid_data("a change before its relation"))?;
        let mut out = Vec::with_capacity(map.len());
        let mut missing = vec![];
        for (j, &i) in map.iter().enumerate() {
            out.push(match tuple.get(i) {
                Some(Value::Text(s)) => Some(s.clone()),
                Some(Value::Unchanged) => match old.and_then(|o| o.get(i)) {
                    Some(Value::Text(s)) => Some(s.clone()),
                    _ => {
                        missing.push(j);
                        None
                    }
                },
                _ => None,
            });
        }
        if !missing.is_empty() {
            // A TOASTed value the change left out: the row's value on the server now (a later
            // change of it, if any, follows in the stream).
            let keys: Vec<(String, Option<String>)> = rel
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key)
                .map(|(i, c)| {
                    (
                        c.name.clone(),
                        match tuple.get(i) {
                            Some(Value::Text(s)) => Some(s.clone()),
                            _ => None,
                        },
                    )
                })
                .collect();
            let names: Vec<String> = missing.iter().map(|j| ident(self.schema.field(*j).name())).collect();
            let cond: Vec<String> = keys
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{} = {}", ident(k), literal(v)),
                    None => format!("{} IS NULL", ident(k)),
                })
                .collect();
            if !cond.is_empty() {
                if !self.txn_visible {
                    self.wait_visible()?;
                    self.txn_visible = true;
                }
                let q = format!("SELECT {} FROM {} WHERE {}", names.join(", "), self.qualified(), cond.join(" AND "));
                if let Some(row) = self.sql()?.query(&q)?.into_iter().next() {
                    for (j, v) in missing.iter().zip(row) {
                        out[*j] = v;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Waits (up to 10 s) until new snapshots on the server see the transaction being read:
    /// its commit record is in the stream a moment before the server makes its rows visible to
    /// other sessions, and a TOASTed value read from the current row in that moment would be
    /// missed.
    fn wait_visible(&mut self) -> Result<()> {
        let xid = self.txn_xid;
        // The 32-bit id widened with the epoch of the snapshot's xmax (the previous epoch when
        // the id is above xmax's low half).
        let q = format!(
            "SELECT pg_visible_in_snapshot(((((m >> 32) - CASE WHEN {xid} > (m & 4294967295) THEN 1 ELSE 0 END) << 32) | {xid})::text::xid8, s) FROM (SELECT pg_current_snapshot() AS s) q, LATERAL (SELECT pg_snapshot_xmax(q.s)::text::bigint AS m) r"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.sql()?.query(&q)?;
            if rows.first().and_then(|r| r[0].as_deref()) == Some("t") || Instant::now() > deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn on_relation(&mut self, r: Relation) -> Result<()> {
        if r.namespace != self.schema_name || r.name != self.table {
            return Ok(());
        }
        let mut map = vec![];
        for f in self.schema.fields() {
            let i = r.columns.iter().position(|c| &c.name == f.name()).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "{}: column '{}' of {} was dropped or renamed on the server (a schema change); drop the table and create it again to capture the new schema",
                        self.what(),
                        f.name(),
                        self.qualified()
                    ),
                )
            })?;
            map.push(i);
        }
        self.rel = Some((r.oid, map, r));
        Ok(())
    }

    fn ours(&self, rel: u32) -> bool {
        self.rel.as_ref().is_some_and(|(oid, _, _)| *oid == rel)
    }

    fn on_change(&mut self, c: Change) -> Result<()> {
        match c {
            Change::Begin { xid } => {
                self.txn.clear();
                self.in_txn = true;
                self.txn_xid = xid;
                self.txn_visible = false;
            }
            Change::Commit { end_lsn } => {
                self.in_txn = false;
                let rows = std::mem::take(&mut self.txn);
                if end_lsn > self.start_lsn {
                    self.ready.extend(rows);
                    self.ready_lsn = end_lsn;
                }
            }
            Change::Relation(r) => self.on_relation(r)?,
            Change::Insert { rel, new } if self.ours(rel) => {
                let v = self.values(&new, None)?;
                self.txn.push(Row::Upsert(v));
            }
            Change::Update { rel, old, new } if self.ours(rel) => {
                let v = self.values(&new, old.as_deref())?;
                // A changed key: the old key's row goes (its key columns are all `old` holds).
                if let Some(old) = old {
                    let key_changed = {
                        let (_, _, r) = self.rel.as_ref().expect("ours");
                        r.columns.iter().enumerate().any(|(i, c)| {
                            c.key
                                && matches!(old.get(i), Some(Value::Text(_)) | Some(Value::Null))
                                && old.get(i) != new.get(i)
                        })
                    };
                    if key_changed {
                        let o = self.values(&old, None)?;
                        self.txn.push(Row::Delete(o));
                    }
                }
                self.txn.push(Row::Upsert(v));
            }
            Change::Delete { rel, old } if self.ours(rel) => {
                let o = self.values(&old, None)?;
                self.txn.push(Row::Delete(o));
            }
            Change::Truncate { rels } if rels.iter().any(|r| self.ours(*r)) => self.txn.push(Row::Truncate),
            _ => {}
        }
        Ok(())
    }

    /// The rows as a batch of the declared columns and `__deleted` (NULL: a TRUNCATE).
    fn batch(&self, rows: &[Row]) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len() + 1);
        for (j, f) in self.schema.fields().iter().enumerate() {
            let texts: Vec<Option<&str>> = rows.iter().map(|r| r.value(j).and_then(|v| v.as_deref())).collect();
            let col = text_column(&texts, f.data_type())
                .map_err(|e| Error::invalid_data(format!("{}: column '{}': {}", self.what(), f.name(), e.message())))?;
            cols.push(col);
        }
        let cols = crate::connector::cdc_columns(cols, &self.schema, rows)?;
        Ok(RecordBatch::try_new(self.out_schema.clone(), cols)?)
    }

    fn hand_over(&mut self) -> Result<()> {
        if self.ready.is_empty() && self.ready_lsn == 0 {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.ready);
        let b = self.batch(&rows)?;
        {
            let mut st = self.stats.lock();
            let e = st.entry("0".to_string()).or_default();
            e.records += rows.iter().filter(|r| !matches!(r, Row::Truncate)).count() as u64;
        }
        self.pending.push_back(Poll::Data(
            b,
            Position { partition: "0".into(), offset: lsn_text(self.ready_lsn), finished: false },
        ));
        self.handed_lsn = self.handed_lsn.max(self.ready_lsn);
        self.ready_lsn = 0;
        self.update_lag();
        Ok(())
    }

    /// The position metric (the LSN handed over, as a number) and the lag (WAL bytes from it
    /// to the server's end of WAL as last reported).
    fn update_lag(&mut self) {
        let mut st = self.stats.lock();
        let e = st.entry("0".to_string()).or_default();
        e.position = Some(self.handed_lsn as i64);
        if self.server_end > 0 {
            e.lag = Some(self.server_end.saturating_sub(self.handed_lsn) as i64);
            e.lag_in_bytes = true;
        }
    }

    /// Forgets both connections and everything read but not handed over; the next poll
    /// reconnects and streams from the last position handed over.
    fn disconnect(&mut self) {
        self.repl = None;
        self.sql = None;
        self.rel = None;
        self.txn.clear();
        self.in_txn = false;
        self.ready.clear();
        self.ready_lsn = 0;
    }

    fn reconnect(&mut self) -> Result<()> {
        self.repl = Some(Conn::connect(&self.cfg, true, CONNECT_TIMEOUT)?);
        self.start_stream(self.handed_lsn)?;
        // The server resumes from what was confirmed; the checkpoint's position stays that.
        self.send_status(true)
    }

    fn poll_stream(&mut self) -> Result<Poll> {
        if self.repl.is_none() {
            self.reconnect()?;
        }
        let deadline = Instant::now() + POLL_WAIT;
        loop {
            let m = self.repl.as_mut().expect("connected").try_read()?;
            let Some(m) = m else { break };
            match m.tag {
                b'd' => match pgoutput::frame(&m.body)? {
                    Frame::XLogData { wal_end, data } => {
                        self.server_end = self.server_end.max(wal_end);
                        self.stats.lock().entry("0".to_string()).or_default().bytes += data.len() as u64;
                        let c = pgoutput::decode(data)?;
                        self.on_change(c)?;
                    }
                    Frame::Keepalive { wal_end, reply } => {
                        self.server_end = self.server_end.max(wal_end);
                        self.update_lag();
                        // Idle between transactions, with nothing waiting: the server's
                        // position can be handed over (every transaction of the table that
                        // ended before it has been read), now and then.
                        if !self.in_txn
                            && self.ready.is_empty()
                            && self.ready_lsn == 0
                            && self.pending.is_empty()
                            && wal_end > self.handed_lsn
                            && self.last_idle_advance.elapsed() >= STATUS_EVERY
                        {
                            self.ready_lsn = wal_end;
                            self.last_idle_advance = Instant::now();
                        }
                        if reply {
                            self.send_status(false)?;
                        }
                    }
                },
                b'E' => {
                    let e = self.repl.as_ref().expect("connected").server_error(&m);
                    return Err(e);
                }
                b'c' => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("{}: the server ended the replication stream", self.what()),
                    ));
                }
                _ => {}
            }
            if self.ready.len() >= MAX_ROWS || Instant::now() >= deadline {
                break;
            }
        }
        if self.last_status.elapsed() >= STATUS_EVERY {
            self.send_status(false)?;
        }
        self.hand_over()?;
        Ok(self.pending.pop_front().unwrap_or(Poll::Pending))
    }

    /// Tells the server what was received (`write`) and, with `flush`, what the oldest kept
    /// checkpoint covers, which lets the slot release WAL. Without `flush` the flush position
    /// is left invalid (0): the server then keeps the slot's position and takes `write` as
    /// replicated, so a shutdown of the server is not held up waiting for a flush position that
    /// only the next checkpoint gives.
    fn send_status(&mut self, flush: bool) -> Result<()> {
        let write = self.server_end.max(self.handed_lsn);
        let msg = pgoutput::status_update(write, if flush { self.confirmed } else { 0 }, false);
        if let Some(r) = self.repl.as_mut() {
            r.send_copy_data(&msg)?;
        }
        self.last_status = Instant::now();
        Ok(())
    }
}

/// A column of `dt` from PostgreSQL's text forms.
fn text_column(texts: &[Option<&str>], dt: &DataType) -> Result<ArrayRef> {
    match dt {
        DataType::Utf8 => Ok(Arc::new(StringArray::from(texts.to_vec()))),
        DataType::Binary => {
            // bytea's hex form: \x0a0b…
            let mut v: Vec<Option<Vec<u8>>> = Vec::with_capacity(texts.len());
            for t in texts {
                v.push(match t {
                    None => None,
                    Some(s) => Some(hex(s
                        .strip_prefix("\\x")
                        .ok_or_else(|| Error::invalid_data(format!("'{}' is not bytea's hex form", clip(s))))?)?),
                });
            }
            Ok(Arc::new(BinaryArray::from_iter(v.iter().map(|b| b.as_deref()))))
        }
        DataType::Boolean => Ok(Arc::new(
            texts
                .iter()
                .map(|t| match t {
                    None => Ok(None),
                    Some("t") => Ok(Some(true)),
                    Some("f") => Ok(Some(false)),
                    Some(s) => Err(Error::invalid_data(format!("'{}' is not a boolean", clip(s)))),
                })
                .collect::<Result<BooleanArray>>()?,
        )),
        DataType::Timestamp(..) => {
            // timestamptz prints its offset as +00; Arrow's parser wants +00:00.
            let fixed: Vec<Option<String>> = texts
                .iter()
                .map(|t| {
                    t.map(|s| {
                        let b = s.as_bytes();
                        // Only a value with a time part (a date alone ends in -DD).
                        if b.len() > 10
                            && matches!(b[b.len() - 3], b'+' | b'-')
                            && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
                        {
                            format!("{s}:00")
                        } else {
                            s.to_string()
                        }
                    })
                })
                .collect();
            cast_text(&StringArray::from(fixed), dt)
        }
        _ => cast_text(&StringArray::from(texts.to_vec()), dt),
    }
}

fn cast_text(a: &StringArray, dt: &DataType) -> Result<ArrayRef> {
    let opts = datafusion::arrow::compute::CastOptions { safe: false, ..Default::default() };
    datafusion::arrow::compute::cast_with_options(a, dt, &opts)
        .map_err(|e| Error::invalid_data(format!("a value does not convert to {dt}: {e}")))
}

fn hex(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(Error::invalid_data("bytea hex of odd length"));
    }
    let d = |c: u8| -> Result<u8> {
        (c as char).to_digit(16).map(|v| v as u8).ok_or_else(|| Error::invalid_data("bytea hex digit"))
    };
    b.chunks(2).map(|p| Ok(d(p[0])? << 4 | d(p[1])?)).collect()
}

impl SourceReader for PgCdcSource {
    fn describe(&self) -> String {
        format!("POSTGRES_CDC {} on '{}' (slot '{}')", self.qualified(), self.cfg.describe(), self.slot)
    }

    fn open(&mut self, positions: &Positions) -> Result<()> {
        self.disconnect();
        self.pending.clear();
        self.check_table()?;
        self.ensure_publication()?;
        let recorded = positions.get("0").and_then(|p| parse_lsn(p));
        self.repl = Some(Conn::connect(&self.cfg, true, CONNECT_TIMEOUT)?);
        self.kept.clear();
        if let Some(lsn) = recorded {
            self.confirmed = lsn;
            self.kept.push_back(lsn);
            let q = format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = {}",
                literal(&self.slot)
            );
            let slot = self.sql()?.query(&q)?.into_iter().next();
            if slot.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "{}: the replication slot '{}' is gone, so the changes after the checkpoint's position {} cannot be read; drop the table and create it again (scan.startup.mode = 'initial' takes a new snapshot)",
                        self.what(),
                        self.slot,
                        lsn_text(lsn)
                    ),
                ));
            }
            if let Some(flushed) = slot.and_then(|r| r.into_iter().next().flatten()).and_then(|l| parse_lsn(&l))
                && flushed > lsn
            {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "{}: the replication slot '{}' has confirmed position {}, past the checkpoint's {} (the slot was dropped and created again, or another reader used it), so changes in between are gone; drop the table and create it again",
                        self.what(),
                        self.slot,
                        lsn_text(flushed),
                        lsn_text(lsn)
                    ),
                ));
            }
            return self.start_stream(lsn);
        }
        // A fresh start: a slot of ours left from an earlier start that no checkpoint covers
        // is dropped, and a new one gives the snapshot its starting point.
        if self.slot_exists()? {
            let q = format!("SELECT pg_drop_replication_slot({})", literal(&self.slot));
            self.sql()?.query(&q)?;
        }
        let q = format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT", ident(&self.slot));
        let repl = self.repl.as_mut().expect("connected");
        repl.set_read_timeout(LONG_TIMEOUT)?;
        let row = repl.query(&q)?.into_iter().next().unwrap_or_default();
        let consistent = row.get(1).cloned().flatten().and_then(|l| parse_lsn(&l)).ok_or_else(|| {
            Error::new(ErrorKind::Io, format!("{}: CREATE_REPLICATION_SLOT gave no consistent point", self.what()))
        })?;
        let snapshot_name = row.get(2).cloned().flatten().unwrap_or_default();
        let mut rows = vec![Row::Truncate];
        if self.startup == Startup::Initial {
            let t = std::time::Instant::now();
            log::info!(target: "laminardb", "{}: reading the initial snapshot of {}", self.what(), self.qualified());
            for r in self.snapshot(&snapshot_name)? {
                rows.push(Row::Upsert(r));
            }
            log::info!(
                target: "laminardb",
                "{}: initial snapshot read, {} rows in {:.1} s",
                self.what(),
                rows.len() - 1,
                t.elapsed().as_secs_f64()
            );
        }
        // The snapshot replaces whatever the table held, as one batch at the slot's start.
        self.ready = rows;
        self.ready_lsn = consistent;
        self.confirmed = consistent;
        self.hand_over()?;
        self.start_stream(consistent)
    }

    fn poll(&mut self) -> Result<Poll> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        self.poll_stream().inspect_err(|e| {
            if e.kind() == ErrorKind::Io {
                // Retried by the reader thread: the next poll starts over on new connections.
                self.disconnect();
            }
        })
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn stats(&self) -> Option<crate::connector::SourceStats> {
        Some(self.stats.clone())
    }

    fn check(&mut self) -> Result<()> {
        self.check_table()
    }

    fn checkpoints_retained(&mut self, n: usize) {
        self.retained = n.max(1);
    }

    fn checkpointed(&mut self, positions: &Positions) {
        let Some(l) = positions.get("0").and_then(|p| parse_lsn(p)) else { return };
        if self.kept.back().is_none_or(|b| l > *b) {
            self.kept.push_back(l);
        }
        while self.kept.len() > self.retained {
            self.kept.pop_front();
        }
        if let Some(&oldest) = self.kept.front()
            && oldest > self.confirmed
        {
            self.confirmed = oldest;
            let _ = self.send_status(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> PgCdcSource {
        let o: std::collections::BTreeMap<String, String> =
            [("username", "u"), ("database-name", "d"), ("table-name", "t")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        PgCdcSource::new("t", schema, Options::new("test", &o)).unwrap()
    }

    fn at(l: u64) -> Positions {
        [("0".to_string(), lsn_text(l))].into_iter().collect()
    }

    /// The slot is told the oldest kept checkpoint's position: with three kept, the position
    /// restored at open, then each new checkpoint's once two newer ones exist.
    #[test]
    fn the_slot_is_told_the_oldest_kept_checkpoint() {
        let mut s = source();
        s.checkpoints_retained(3);
        s.confirmed = 100;
        s.kept.push_back(100);
        s.checkpointed(&at(200));
        s.checkpointed(&at(300));
        assert_eq!(s.confirmed, 100, "{:?}", s.kept);
        s.checkpointed(&at(300));
        assert_eq!(s.confirmed, 100, "a repeated position is kept once: {:?}", s.kept);
        s.checkpointed(&at(400));
        assert_eq!(s.confirmed, 200);
        s.checkpointed(&at(500));
        assert_eq!(s.confirmed, 300);
        let mut s = source();
        s.checkpoints_retained(1);
        s.checkpointed(&at(200));
        assert_eq!(s.confirmed, 200);
    }

    #[test]
    fn text_forms_convert_to_the_declared_types() {
        let ts = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None);
        let a = text_column(&[Some("2024-01-05 10:00:00+00"), Some("2024-01-05 10:00:00"), None], &ts).unwrap();
        assert_eq!(a.null_count(), 1);
        let a = text_column(&[Some("2024-01-05")], &DataType::Date32).unwrap();
        let d = a.as_any().downcast_ref::<datafusion::arrow::array::Date32Array>().unwrap();
        assert_eq!(d.value(0), 19727);
        let a = text_column(&[Some("\\x0aff")], &DataType::Binary).unwrap();
        assert_eq!(a.as_any().downcast_ref::<BinaryArray>().unwrap().value(0), [10u8, 255]);
        assert!(text_column(&[Some("\\x0af")], &DataType::Binary).is_err());
        assert!(text_column(&[Some("x")], &DataType::Boolean).is_err());
    }
}
