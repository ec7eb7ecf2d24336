//! The POSTGRES sink: a stream's results written into a PostgreSQL table, exactly once.
//!
//! An epoch's results are kept (and stored in the epoch's checkpoint) until its checkpoint is
//! durable; then one PostgreSQL transaction writes them and sets the sink's row in the offsets
//! table to the epoch. The transaction first locks that row and skips an epoch it already
//! holds, so a commit retried after a lost connection, or repeated after a crash (the restored
//! checkpoint's results are committed again at recovery), is applied once.
//!
//! `append` copies rows with `COPY … FROM STDIN (FORMAT binary)`. `upsert` folds the epoch per
//! key (the last change of each key wins: a row, or a retraction that deletes it), copies the
//! rows and the deleted keys into two temporary tables, then `DELETE … USING` and
//! `INSERT … SELECT … ON CONFLICT (key) DO UPDATE`, set-based, in the same transaction.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, SchemaRef,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::wire::{Conn, PgConfig, ident, literal};
use crate::connector::{Options, Sink, decode_epoch_batches, encode_epoch_batches};
use crate::error::{Error, ErrorKind, Result, clip};
use crate::operator::WEIGHT_COLUMN;

/// How long a commit retries a lost connection (a server restart) before the sink fails.
const COMMIT_RETRY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one statement may run (an epoch's upsert of millions of rows) before the read
/// fails.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) struct PgSink {
    sink: String,
    cfg: PgConfig,
    schema_name: String,
    table_name: String,
    /// `"schema"."table"`.
    table: String,
    offsets: String,
    sink_id: String,
    upsert: bool,
    /// Upsert key columns (input indexes).
    key: Vec<usize>,
    /// The input's columns written (in upsert mode all but `__weight`).
    columns: Vec<usize>,
    /// The input is a changelog (its last column `__weight`).
    changelog: bool,
    input: SchemaRef,
    conn: Option<Conn>,
    /// The open epoch's results.
    batches: Vec<RecordBatch>,
    committed: u64,
    skipped: u64,
    rows: u64,
}

/// `postgres://user:password@host:port/database` (or `postgresql://`), user and password
/// percent-decoded.
pub(crate) fn parse_url(what: &str, url: &str) -> Result<PgConfig> {
    let bad = |m: &str| {
        Error::invalid_argument(format!(
            "{what}: option 'url' {m}; expected postgres://user:password@host:port/database"
        ))
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("does not start with postgres://"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    for q in query.split('&').filter(|q| !q.is_empty()) {
        if !matches!(q, "sslmode=disable" | "sslmode=prefer" | "sslmode=allow") {
            return Err(bad(&format!("has the parameter '{}', which this client does not take (no TLS)", clip(q))));
        }
    }
    let (cred, rest) = rest.rsplit_once('@').ok_or_else(|| bad("names no user"))?;
    let (user, password) = cred.split_once(':').unwrap_or((cred, ""));
    let (hostport, db) = rest.split_once('/').ok_or_else(|| bad("names no database"))?;
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or_else(|| bad("has an unclosed '['"))?;
        (h, p.strip_prefix(':').unwrap_or(""))
    } else {
        hostport.rsplit_once(':').unwrap_or((hostport, ""))
    };
    let port = if port.is_empty() { 5432 } else { port.parse().map_err(|_| bad("has a port that is not a number"))? };
    let dec = |s: &str| -> Result<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let h = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(h.ok_or_else(|| bad("has a malformed %-escape"))?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).map_err(|_| bad("is not UTF-8 once %-decoded"))
    };
    if user.is_empty() || db.is_empty() || host.is_empty() {
        return Err(bad("lacks the user, the host or the database"));
    }
    Ok(PgConfig { host: host.into(), port, user: dec(user)?, password: dec(password)?, database: dec(db)? })
}

/// The Arrow type a column is cast to before it is encoded, and the PostgreSQL type it becomes
/// (for CREATE TABLE); `None`: not supported.
fn wire_type(dt: &DataType) -> Option<(DataType, String)> {
    Some(match dt {
        DataType::Boolean => (DataType::Boolean, "boolean".into()),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => (DataType::Int16, "smallint".into()),
        DataType::Int32 | DataType::UInt16 => (DataType::Int32, "integer".into()),
        DataType::Int64 | DataType::UInt32 => (DataType::Int64, "bigint".into()),
        DataType::Float16 | DataType::Float32 => (DataType::Float32, "real".into()),
        DataType::Float64 => (DataType::Float64, "double precision".into()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => (DataType::Utf8, "text".into()),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            (DataType::Binary, "bytea".into())
        }
        DataType::Date32 | DataType::Date64 => (DataType::Date32, "date".into()),
        DataType::Time32(_) | DataType::Time64(_) => (DataType::Time64(TimeUnit::Microsecond), "time".into()),
        DataType::Timestamp(_, None) => (DataType::Timestamp(TimeUnit::Microsecond, None), "timestamp".into()),
        DataType::Timestamp(_, Some(tz)) => {
            (DataType::Timestamp(TimeUnit::Microsecond, Some(tz.clone())), "timestamptz".into())
        }
        DataType::Decimal128(p, s) if *s >= 0 => (DataType::Decimal128(*p, *s), format!("numeric({p}, {s})")),
        DataType::Dictionary(_, v) => return wire_type(v),
        _ => return None,
    })
}

/// The PostgreSQL types (as `regtype` names them) whose binary form a column of this wire type
/// has.
fn accepted(wire: &DataType) -> &'static [&'static str] {
    match wire {
        DataType::Boolean => &["boolean"],
        DataType::Int16 => &["smallint"],
        DataType::Int32 => &["integer"],
        DataType::Int64 => &["bigint"],
        DataType::Float32 => &["real"],
        DataType::Float64 => &["double precision"],
        DataType::Utf8 => &["text", "character varying", "character", "name"],
        DataType::Binary => &["bytea"],
        DataType::Date32 => &["date"],
        DataType::Time64(_) => &["time without time zone"],
        DataType::Timestamp(_, None) => &["timestamp without time zone"],
        DataType::Timestamp(_, Some(_)) => &["timestamp with time zone"],
        DataType::Decimal128(..) => &["numeric"],
        _ => &[],
    }
}

/// Microseconds (days) from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// The rows of `columns` of `batch` in COPY's binary format (without header and trailer).
fn encode_rows(batch: &RecordBatch, columns: &[usize], out: &mut Vec<u8>) -> Result<()> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for &c in columns {
        let a = batch.column(c);
        let (w, _) = wire_type(a.data_type()).ok_or_else(|| {
            Error::not_implemented(format!("POSTGRES sink: column type {} has no PostgreSQL mapping", a.data_type()))
        })?;
        cols.push(if a.data_type() == &w { a.clone() } else { cast(a, &w)? });
    }
    for i in 0..batch.num_rows() {
        out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for a in &cols {
            if a.is_null(i) {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let field = |out: &mut Vec<u8>, v: &[u8]| {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            };
            match a.data_type() {
                DataType::Boolean => field(out, &[a.as_boolean().value(i) as u8]),
                DataType::Int16 => field(out, &a.as_primitive::<Int16Type>().value(i).to_be_bytes()),
                DataType::Int32 => field(out, &a.as_primitive::<Int32Type>().value(i).to_be_bytes()),
                DataType::Int64 => field(out, &a.as_primitive::<Int64Type>().value(i).to_be_bytes()),
                DataType::Float32 => field(out, &a.as_primitive::<Float32Type>().value(i).to_be_bytes()),
                DataType::Float64 => field(out, &a.as_primitive::<Float64Type>().value(i).to_be_bytes()),
                DataType::Utf8 => field(out, a.as_string::<i32>().value(i).as_bytes()),
                DataType::Binary => field(out, a.as_binary::<i32>().value(i)),
                DataType::Date32 => {
                    let d = a.as_primitive::<Date32Type>().value(i).wrapping_sub(PG_EPOCH_DAYS);
                    field(out, &d.to_be_bytes())
                }
                DataType::Time64(_) => field(out, &a.as_primitive::<Time64MicrosecondType>().value(i).to_be_bytes()),
                DataType::Timestamp(..) => {
                    let t = a.as_primitive::<TimestampMicrosecondType>().value(i).wrapping_sub(PG_EPOCH_US);
                    field(out, &t.to_be_bytes())
                }
                DataType::Decimal128(_, s) => {
                    let mut v = vec![];
                    numeric(a.as_primitive::<Decimal128Type>().value(i), *s as usize, &mut v);
                    field(out, &v)
                }
                t => return Err(Error::internal(format!("POSTGRES sink: no binary encoding for {t}"))),
            }
        }
    }
    Ok(())
}

/// `numeric`'s binary form of `v × 10^-scale`: digit count, weight, sign, display scale, then
/// base-10000 digits.
pub(crate) fn numeric(v: i128, scale: usize, out: &mut Vec<u8>) {
    let mut digits = v.unsigned_abs().to_string();
    if digits.len() <= scale {
        digits = "0".repeat(scale + 1 - digits.len()) + &digits;
    }
    let int_len = digits.len() - scale;
    let lead = (4 - int_len % 4) % 4;
    let trail = (4 - scale % 4) % 4;
    let all = format!("{}{digits}{}", "0".repeat(lead), "0".repeat(trail));
    let groups: Vec<i16> = all.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap().parse().unwrap()).collect();
    let mut weight = ((lead + int_len) / 4) as i16 - 1;
    let mut start = 0;
    while start < groups.len() && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = groups.len();
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    let g = &groups[start..end];
    if g.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(g.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if v < 0 && !g.is_empty() { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for d in g {
        out.extend_from_slice(&d.to_be_bytes());
    }
}

/// `CREATE TABLE IF NOT EXISTS`, where another session creating the same table at the same
/// moment (two sinks created together) is not an error: PostgreSQL reports that race as a
/// unique violation in its catalog (23505) or as the table existing (42P07).
fn create_table(c: &mut Conn, sql: &str) -> Result<()> {
    match c.query(sql) {
        Err(e) if e.message().contains("(SQLSTATE 23505)") || e.message().contains("(SQLSTATE 42P07)") => Ok(()),
        r => r.map(|_| ()),
    }
}

/// A whole COPY payload: header, rows, trailer.
fn copy_payload(batches: &[RecordBatch], columns: &[usize]) -> Result<Vec<u8>> {
    let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
    out.extend_from_slice(&[0; 8]);
    for b in batches {
        encode_rows(b, columns, &mut out)?;
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(out)
}

impl PgSink {
    /// `key`: the input's key when it is an upsert stream or a table.
    pub(crate) fn new(sink: &str, input: SchemaRef, key: Option<&[String]>, mut o: Options) -> Result<PgSink> {
        let what = format!("POSTGRES sink '{sink}'");
        let cfg = parse_url(&what, &o.required("url")?)?;
        let table_name = o.required("table-name")?;
        let schema_name = o.get("schema-name").unwrap_or_else(|| "public".into());
        let changelog = input.fields().last().is_some_and(|f| f.name() == WEIGHT_COLUMN);
        let default_mode = if changelog || key.is_some() { "upsert" } else { "append" };
        let upsert = o.choice("sink.mode", &["append", "upsert"], default_mode)? == "upsert";
        let key_names: Vec<String> = match o.get("key") {
            Some(k) => k.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect(),
            None => key.map(<[String]>::to_vec).unwrap_or_default(),
        };
        let sink_id = o.get("sink.id").unwrap_or_else(|| format!("{sink}:{schema_name}.{table_name}"));
        let offsets_name = o.get("sink.offsets-table").unwrap_or_else(|| "laminardb_sink_offsets".into());
        o.finish()?;
        let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
        let mut key_idx = vec![];
        for k in &key_names {
            let i = input.index_of(k).ok().filter(|_| k != WEIGHT_COLUMN).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "{what}: key column '{}' is not a column of its input (columns: {})",
                    clip(k),
                    names.join(", ")
                ))
            })?;
            key_idx.push(i);
        }
        if upsert && key_idx.is_empty() {
            return Err(Error::invalid_argument(format!(
                "{what}: sink.mode = 'upsert' needs the key its rows replace, and the input has none the engine knows (a GROUP BY whose query leaves a grouping column out, or a join): name the columns with 'key' = 'a, b', or use sink.mode = 'append'"
            )));
        }
        if !upsert && !key_names.is_empty() {
            return Err(Error::invalid_argument(format!("{what}: option 'key' needs sink.mode = 'upsert'")));
        }
        let columns: Vec<usize> =
            (0..input.fields().len()).filter(|i| !(upsert && changelog && *i == input.fields().len() - 1)).collect();
        for &c in &columns {
            let f = input.field(c);
            if wire_type(f.data_type()).is_none() {
                return Err(Error::not_implemented(format!(
                    "{what}: column '{}' has type {}, which this sink cannot write; cast it (to VARCHAR, BIGINT, DOUBLE, DECIMAL, TIMESTAMP, …) in the stream's query",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        let table = format!("{}.{}", ident(&schema_name), ident(&table_name));
        Ok(PgSink {
            sink: sink.into(),
            cfg,
            offsets: format!("{}.{}", ident(&schema_name), ident(&offsets_name)),
            schema_name,
            table_name,
            table,
            sink_id,
            upsert,
            key: key_idx,
            columns,
            changelog,
            input,
            conn: None,
            batches: vec![],
            committed: 0,
            skipped: 0,
            rows: 0,
        })
    }

    fn what(&self) -> String {
        format!("POSTGRES sink '{}'", self.sink)
    }

    fn col_list(&self, cols: &[usize]) -> String {
        cols.iter().map(|&c| ident(self.input.field(c).name())).collect::<Vec<_>>().join(", ")
    }

    /// Connects, creates the offsets table and the target table when missing (checks the
    /// target's columns when present) and the temporary tables of an upsert.
    fn connect(&mut self) -> Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let mut c = Conn::connect(&self.cfg, false, CONNECT_TIMEOUT)?;
        c.set_read_timeout(STATEMENT_TIMEOUT)?;
        create_table(
            &mut c,
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (sink_id text PRIMARY KEY, epoch bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now())",
                self.offsets
            ),
        )?;
        c.query(&format!(
            "INSERT INTO {} (sink_id, epoch) VALUES ({}, 0) ON CONFLICT (sink_id) DO NOTHING",
            self.offsets,
            literal(&self.sink_id)
        ))?;
        let cols = c.query(&format!(
            "SELECT a.attname, a.atttypid::regtype::text FROM pg_attribute a WHERE a.attrelid = to_regclass({}) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            literal(&self.table)
        ))?;
        if cols.is_empty() {
            let mut defs = vec![];
            for &i in &self.columns {
                let f = self.input.field(i);
                let (_, t) = wire_type(f.data_type()).expect("checked at CREATE");
                let not_null = if f.is_nullable() && !self.key.contains(&i) { "" } else { " NOT NULL" };
                defs.push(format!("{} {t}{not_null}", ident(f.name())));
            }
            if self.upsert {
                defs.push(format!("PRIMARY KEY ({})", self.col_list(&self.key)));
            }
            create_table(&mut c, &format!("CREATE TABLE IF NOT EXISTS {} ({})", self.table, defs.join(", ")))?;
        } else {
            let have: HashMap<String, String> = cols
                .into_iter()
                .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
                .collect();
            for &i in &self.columns {
                let f = self.input.field(i);
                let (w, t) = wire_type(f.data_type()).expect("checked at CREATE");
                match have.get(f.name()) {
                    None => {
                        let mut names: Vec<&String> = have.keys().collect();
                        names.sort();
                        return Err(Error::invalid_argument(format!(
                            "{}: table {}.{} has no column '{}' (it has: {}); add it, or write to a new table (created with the stream's columns)",
                            self.what(),
                            self.schema_name,
                            self.table_name,
                            f.name(),
                            names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                    Some(pg) if !accepted(&w).contains(&pg.as_str()) => {
                        return Err(Error::invalid_argument(format!(
                            "{}: column '{}' of table {}.{} is {pg}, but the stream's column is {} (written as {t}); change one of them",
                            self.what(),
                            f.name(),
                            self.schema_name,
                            self.table_name,
                            f.data_type()
                        )));
                    }
                    Some(_) => {}
                }
            }
            if self.upsert {
                // ON CONFLICT needs a unique index on exactly the key.
                let mut want: Vec<String> = self.key.iter().map(|&k| self.input.field(k).name().clone()).collect();
                want.sort();
                let idx = c.query(&format!(
                    "SELECT string_agg(a.attname::text, ',' ORDER BY a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass({}) AND i.indisunique AND i.indpred IS NULL GROUP BY i.indexrelid",
                    literal(&self.table)
                ))?;
                if !idx.iter().any(|r| r[0].as_deref() == Some(want.join(",").as_str())) {
                    return Err(Error::invalid_argument(format!(
                        "{}: sink.mode = 'upsert' needs a primary key or unique index on ({}) of table {}.{}; add one (ALTER TABLE … ADD PRIMARY KEY ({}))",
                        self.what(),
                        want.join(", "),
                        self.schema_name,
                        self.table_name,
                        want.join(", ")
                    )));
                }
            }
        }
        if self.upsert {
            c.query(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS laminar_upserts ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA",
                self.col_list(&self.columns),
                self.table
            ))?;
            c.query(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS laminar_deletes ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA",
                self.col_list(&self.key),
                self.table
            ))?;
        }
        self.conn = Some(c);
        Ok(())
    }

    /// An upsert epoch folded per key: the rows to write and the keys to delete.
    fn fold(&self, batches: &[RecordBatch]) -> Result<(RecordBatch, RecordBatch)> {
        let all = concat_batches(&self.input, batches)?;
        let conv = RowConverter::new(
            self.key.iter().map(|&k| SortField::new(self.input.field(k).data_type().clone())).collect(),
        )?;
        let keys = conv.convert_columns(&self.key.iter().map(|&k| all.column(k).clone()).collect::<Vec<_>>())?;
        let mut last: HashMap<datafusion::arrow::row::Row<'_>, u32> = HashMap::with_capacity(all.num_rows());
        for i in 0..all.num_rows() {
            last.insert(keys.row(i), i as u32);
        }
        let w = self.changelog.then(|| all.column(all.num_columns() - 1).as_primitive::<Int64Type>().clone());
        let (mut ups, mut dels): (Vec<u32>, Vec<u32>) = (vec![], vec![]);
        let mut idx: Vec<u32> = last.into_values().collect();
        idx.sort_unstable();
        for i in idx {
            if w.as_ref().is_some_and(|w| w.value(i as usize) < 0) { dels.push(i) } else { ups.push(i) }
        }
        let pick = |rows: Vec<u32>| -> Result<RecordBatch> {
            let rows = UInt32Array::from(rows);
            let cols: Vec<ArrayRef> =
                all.columns().iter().map(|c| take(c, &rows, None)).collect::<std::result::Result<_, _>>()?;
            Ok(RecordBatch::try_new(all.schema(), cols)?)
        };
        Ok((pick(ups)?, pick(dels)?))
    }

    /// One transaction: skips an epoch the offsets table holds already, else writes it and
    /// records it. Returns whether it wrote.
    fn apply(&mut self, epoch: u64, batches: &[RecordBatch]) -> Result<bool> {
        self.connect()?;
        let begin =
            format!("BEGIN; SELECT epoch FROM {} WHERE sink_id = {} FOR UPDATE", self.offsets, literal(&self.sink_id));
        let mark = format!(
            "UPDATE {} SET epoch = {epoch}, committed_at = now() WHERE sink_id = {}; COMMIT",
            self.offsets,
            literal(&self.sink_id)
        );
        let (upserts, deletes) = if self.upsert {
            self.fold(batches)?
        } else {
            (RecordBatch::new_empty(self.input.clone()), RecordBatch::new_empty(self.input.clone()))
        };
        let copy_all = (!self.upsert).then(|| copy_payload(batches, &self.columns)).transpose()?;
        let table = self.table.clone();
        let cols = self.col_list(&self.columns);
        let key_cols = self.col_list(&self.key);
        let conn = self.conn.as_mut().expect("connected");
        let res = (|| -> Result<bool> {
            let got = conn.query(&begin)?;
            let done: i64 = got.first().and_then(|r| r[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(0);
            if done >= epoch as i64 {
                conn.query("ROLLBACK")?;
                return Ok(false);
            }
            let mut sql = String::new();
            if let Some(p) = &copy_all {
                conn.copy_in(&format!("COPY {table} ({cols}) FROM STDIN (FORMAT binary)"), p)?;
            } else {
                if deletes.num_rows() > 0 {
                    let p = copy_payload(std::slice::from_ref(&deletes), &self.key)?;
                    conn.copy_in(&format!("COPY pg_temp.laminar_deletes ({key_cols}) FROM STDIN (FORMAT binary)"), &p)?;
                    let on: Vec<String> = self
                        .key
                        .iter()
                        .map(|&k| {
                            let c = ident(self.input.field(k).name());
                            format!("t.{c} = d.{c}")
                        })
                        .collect();
                    sql.push_str(&format!(
                        "DELETE FROM {table} t USING pg_temp.laminar_deletes d WHERE {}; ",
                        on.join(" AND ")
                    ));
                }
                if upserts.num_rows() > 0 {
                    let p = copy_payload(std::slice::from_ref(&upserts), &self.columns)?;
                    conn.copy_in(&format!("COPY pg_temp.laminar_upserts ({cols}) FROM STDIN (FORMAT binary)"), &p)?;
                    let set: Vec<String> = self
                        .columns
                        .iter()
                        .filter(|c| !self.key.contains(c))
                        .map(|&c| {
                            let n = ident(self.input.field(c).name());
                            format!("{n} = EXCLUDED.{n}")
                        })
                        .collect();
                    let action =
                        if set.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", set.join(", ")) };
                    sql.push_str(&format!(
                        "INSERT INTO {table} ({cols}) SELECT {cols} FROM pg_temp.laminar_upserts ON CONFLICT ({key_cols}) DO {action}; "
                    ));
                }
            }
            sql.push_str(&mark);
            conn.query(&sql)?;
            Ok(true)
        })();
        match res {
            Ok(wrote) => Ok(wrote),
            Err(e) => {
                // The transaction is undone; a connection that cannot say so is dropped (the
                // server rolls back when it goes).
                if e.kind() == ErrorKind::Io || conn.query("ROLLBACK").is_err() {
                    self.conn = None;
                }
                Err(e)
            }
        }
    }

    /// [`apply`](Self::apply), retried on a lost connection for up to [`COMMIT_RETRY`] (the
    /// offsets table makes a retry of a commit that went through a no-op).
    fn apply_retrying(&mut self, epoch: u64, batches: &[RecordBatch]) -> Result<()> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.apply(epoch, batches) {
                Ok(true) => {
                    self.committed += 1;
                    self.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                    return Ok(());
                }
                Ok(false) => {
                    self.skipped += 1;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Io && start.elapsed() < COMMIT_RETRY => {
                    log::warn!(target: "laminardb", "{}: {e}; retrying in {backoff:?}", self.what());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.context(format!("{}: committing epoch {epoch}", self.what()))),
            }
        }
    }
}

impl Sink for PgSink {
    fn describe(&self) -> String {
        let mode = if self.upsert {
            format!(
                "upsert by ({})",
                self.key.iter().map(|&k| self.input.field(k).name().as_str()).collect::<Vec<_>>().join(", ")
            )
        } else {
            "append".into()
        };
        format!(
            "POSTGRES table {}.{} on '{}' ({mode}, exactly-once)",
            self.schema_name,
            self.table_name,
            self.cfg.describe()
        )
    }

    fn write(&mut self, _epoch: u64, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() > 0 {
            self.batches.push(batch.clone());
        }
        Ok(())
    }

    fn prepare_commit(&mut self, epoch: u64) -> Result<Vec<u8>> {
        if self.batches.is_empty() {
            return Ok(vec![]);
        }
        encode_epoch_batches(epoch, &self.batches)
    }

    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<()> {
        let batches = std::mem::take(&mut self.batches);
        if committable.is_empty() || batches.is_empty() {
            return Ok(());
        }
        self.apply_retrying(epoch, &batches)
    }

    fn recover(&mut self, restored: Option<&[u8]>) -> Result<()> {
        self.batches.clear();
        self.conn = None;
        self.connect()?;
        match restored {
            // Created now, or after the last checkpoint: its epochs start afresh.
            None => {
                let sql = format!("UPDATE {} SET epoch = 0 WHERE sink_id = {}", self.offsets, literal(&self.sink_id));
                self.conn.as_mut().expect("connected").query(&sql)?;
                Ok(())
            }
            Some([]) => Ok(()),
            Some(c) => {
                let (epoch, batches) = decode_epoch_batches("POSTGRES", c)?;
                self.apply_retrying(epoch, &batches)
            }
        }
    }

    fn abort(&mut self) -> Result<()> {
        self.batches.clear();
        self.conn = None;
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("epochs_committed", self.committed), ("epochs_skipped", self.skipped), ("rows_written", self.rows)]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;

    use super::*;

    fn num(v: i128, s: usize) -> Vec<i16> {
        let mut o = vec![];
        numeric(v, s, &mut o);
        o.chunks(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect()
    }

    #[test]
    fn numeric_binary_form() {
        // 12345.6789: digits 1, 2345, 6789; weight 1.
        assert_eq!(num(123456789, 4), vec![3, 1, 0, 4, 1, 2345, 6789]);
        // -0.01 at scale 2: one digit 100 (0.0100), weight -1, negative.
        assert_eq!(num(-1, 2), vec![1, -1, 0x4000, 2, 100]);
        // 0 at scale 3: no digits.
        assert_eq!(num(0, 3), vec![0, 0, 0, 3]);
        // 10^8: one digit 1 at weight 2.
        assert_eq!(num(100_000_000, 0), vec![1, 2, 0, 0, 1]);
    }

    /// The server of `scripts/services.sh start postgres`.
    fn server() -> String {
        if let Ok(u) = std::env::var("LAMINAR_POSTGRES") {
            return u;
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(root.join("target"));
        let env = std::fs::read_to_string(target.join("services.env")).unwrap_or_default();
        env.lines()
            .find_map(|l| l.strip_prefix("LAMINAR_POSTGRES="))
            .expect("no PostgreSQL: run `scripts/services.sh start postgres`")
            .to_string()
    }

    fn sink(url: &str, table: &str) -> PgSink {
        let schema =
            Arc::new(datafusion::arrow::datatypes::Schema::new(vec![datafusion::arrow::datatypes::Field::new(
                "x",
                DataType::Int64,
                false,
            )]));
        let mut m = std::collections::BTreeMap::new();
        m.insert("url".to_string(), url.to_string());
        m.insert("table-name".to_string(), table.to_string());
        PgSink::new("s", schema, None, Options::new("POSTGRES sink 's'", &m)).unwrap()
    }

    fn batch(xs: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_from_iter(vec![("x", Arc::new(Int64Array::from_iter_values(xs)) as ArrayRef)]).unwrap()
    }

    fn table_rows(url: &str, table: &str) -> Vec<i64> {
        let mut c = Conn::connect(&parse_url("t", url).unwrap(), false, CONNECT_TIMEOUT).unwrap();
        let mut v: Vec<i64> = c
            .query(&format!("SELECT x FROM {table}"))
            .unwrap()
            .into_iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_crash_between_the_checkpoint_and_the_commit_commits_the_epoch_once() {
        let url = server();
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
        let table = format!("sink_recover_{}_{n}", std::process::id());
        let mut a = sink(&url, &table);
        a.recover(None).unwrap();
        a.write(1, &batch(0..3)).unwrap();
        let c1 = a.prepare_commit(1).unwrap();
        a.commit(1, &c1).unwrap();
        // Epoch 2 prepared (its checkpoint durable), then a crash before its commit; epoch 3's
        // results were never checkpointed.
        a.write(2, &batch(10..12)).unwrap();
        let c2 = a.prepare_commit(2).unwrap();
        a.write(3, &batch(100..103)).unwrap();
        drop(a);
        assert_eq!(table_rows(&url, &table), vec![0, 1, 2], "only epoch 1 is visible before recovery");
        // The next incarnation restores checkpoint 2 and commits its results.
        let mut b = sink(&url, &table);
        b.recover(Some(&c2)).unwrap();
        assert_eq!(table_rows(&url, &table), vec![0, 1, 2, 10, 11]);
        assert_eq!(b.counters()[0], ("epochs_committed", 1));
        // Restored from the same checkpoint again (a crash right after that commit), and the
        // commit retried: nothing twice.
        let mut c = sink(&url, &table);
        c.recover(Some(&c2)).unwrap();
        c.write(2, &batch(10..12)).unwrap();
        let again = c.prepare_commit(2).unwrap();
        c.commit(2, &again).unwrap();
        assert_eq!(table_rows(&url, &table), vec![0, 1, 2, 10, 11]);
        assert_eq!(c.counters()[1], ("epochs_skipped", 2));
        // The next epoch is written.
        c.write(3, &batch(20..21)).unwrap();
        let c3 = c.prepare_commit(3).unwrap();
        c.commit(3, &c3).unwrap();
        assert_eq!(table_rows(&url, &table), vec![0, 1, 2, 10, 11, 20]);
        let mut conn = Conn::connect(&parse_url("t", &url).unwrap(), false, CONNECT_TIMEOUT).unwrap();
        conn.query(&format!(
            "DROP TABLE {table}; DELETE FROM laminardb_sink_offsets WHERE sink_id = 's:public.{table}'"
        ))
        .unwrap();
    }

    #[test]
    fn urls() {
        let c = parse_url("s", "postgres://u%40x:p%3Aw@127.0.0.1:6543/d b?sslmode=disable").unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str(), c.host.as_str(), c.port, c.database.as_str()),
            ("u@x", "p:w", "127.0.0.1", 6543, "d b")
        );
        let c = parse_url("s", "postgresql://u@[::1]/d").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.password.as_str()), ("::1", 5432, ""));
        for bad in [
            "mysql://u@h/d",
            "postgres://h/d",
            "postgres://u@h",
            "postgres://u@h:x/d",
            "postgres://u@h/d?sslmode=require",
        ] {
            assert!(parse_url("s", bad).is_err(), "{bad}");
        }
    }
}
