//! Entry points of the fuzz targets (`fuzz/`, cargo fuzz) and of the replay of their corpora by
//! an ordinary `cargo test` (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes and returns;
//! errors are expected answers. A panic that escapes, an abort, a hang or an unbounded allocation
//! is a finding. Not an API: hidden from the docs, and it may change with any release.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, DictionaryArray, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, LargeStringArray, ListArray, NullArray, StringArray, StructArray,
    TimestampMicrosecondArray, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::{Config, Database};

/// Reads choices from the input; past its end every choice is 0.
struct Choices<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Choices<'a> {
    fn new(data: &'a [u8]) -> Self {
        Choices { data, pos: 0 }
    }
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    /// A number below `n` (n > 0).
    fn pick(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }
    fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in b.iter_mut().take(1 + self.pick(8)) {
            *x = self.byte();
        }
        i64::from_le_bytes(b)
    }
}

/// The sources every SQL input runs against.
const SOURCES: &str =
    "CREATE SOURCE s (k BIGINT, v BIGINT, name VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
CREATE SOURCE r (k BIGINT, w DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
CREATE TABLE t (k BIGINT PRIMARY KEY, label VARCHAR)";

fn database() -> Database {
    let db = Database::open(":memory:", Config::default()).expect("an in-memory database opens");
    db.execute(SOURCES).expect("the fuzz sources are valid");
    db
}

/// A few rows into `s`, `r` and `t`, late ones and a far-ahead one included, so that what an
/// input created also runs.
fn feed(db: &Database) {
    let _ = db.execute(
        "INSERT INTO s VALUES (1, 10, 'a', TIMESTAMP '2024-01-01 00:00:01'), (2, NULL, NULL, TIMESTAMP '2024-01-01 00:00:02'), \
         (1, -5, 'b', TIMESTAMP '2024-01-01 00:00:00.5');
         INSERT INTO r VALUES (1, 1.5, TIMESTAMP '2024-01-01 00:00:01'), (3, NULL, TIMESTAMP '2024-01-01 00:00:03');
         INSERT INTO t VALUES (1, 'one'), (2, 'two');
         INSERT INTO s VALUES (9, 9, 'z', TIMESTAMP '2024-01-02 00:00:00');
         INSERT INTO r VALUES (9, 9.0, TIMESTAMP '2024-01-02 00:00:00')",
    );
    let _ = db.flush();
}

/// Arbitrary text as SQL statements on a fresh database with the sources above, then a few rows.
pub fn sql(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let db = database();
    let _ = db.execute(&text);
    feed(&db);
    db.close();
}

/// A streaming statement built from the input's choices — windows, joins, EMIT, OVER, DISTINCT,
/// HAVING — created on a fresh database, then fed rows and queried.
pub fn sql_structured(data: &[u8]) {
    let text = statement(data);
    let db = database();
    if db.execute(&text).is_ok() {
        feed(&db);
        let _ = db.query("SELECT * FROM f");
    }
    db.close();
}

/// The statement `sql_structured` builds from `data`.
pub fn statement(data: &[u8]) -> String {
    let c = &mut Choices::new(data);
    const AGGS: &[&str] = &[
        "COUNT(*)",
        "SUM(v)",
        "AVG(v)",
        "MIN(name)",
        "MAX(v)",
        "COUNT(DISTINCT v)",
        "STDDEV(v)",
        "SUM(v) FILTER (WHERE v > 0)",
        "FIRST_VALUE(v ORDER BY ts)",
        "ARRAY_AGG(v)",
        "COUNT(DISTINCT name)",
    ];
    const WINDOWS: &[&str] = &[
        "",
        ", TUMBLE(ts, INTERVAL '1' SECOND)",
        ", HOP(ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND)",
        ", SESSION(ts, INTERVAL '2' SECOND)",
        ", TUMBLE(ts, INTERVAL '0' SECOND)",
    ];
    const EMITS: &[&str] = &[
        "",
        " EMIT CHANGES",
        " EMIT ON WINDOW CLOSE",
        " EMIT FINAL",
        " EMIT EVERY INTERVAL '1' SECOND",
        " EMIT AFTER WATERMARK",
    ];
    const FROMS: &[&str] = &[
        "s",
        "s JOIN r ON s.k = r.k",
        "s LEFT JOIN r ON s.k = r.k AND r.ts BETWEEN s.ts - INTERVAL '1' SECOND AND s.ts + INTERVAL '1' SECOND",
        "s JOIN t ON s.k = t.k",
        "s ASOF JOIN r MATCH_CONDITION (s.ts >= r.ts) ON s.k = r.k",
        "(SELECT k, v, name, ts FROM s UNION ALL SELECT k, CAST(w AS BIGINT), NULL, ts FROM r) u",
        "s FULL JOIN r ON s.k = r.k",
    ];
    let from = FROMS[c.pick(FROMS.len())];
    let key = if from.contains("JOIN") { "s.k" } else { "k" };
    let (v, name, ts) = if from.contains("JOIN") { ("s.v", "s.name", "s.ts") } else { ("v", "name", "ts") };
    match c.pick(4) {
        0 => {
            // a plain projection with a filter
            let proj =
                ["*", &format!("{key}, {v} * 2 + 1 AS x"), &format!("{key}, CASE WHEN {v} > 0 THEN {name} END AS x")];
            let p = proj[c.pick(proj.len())];
            let filter = [String::new(), format!(" WHERE {v} IS NOT NULL"), format!(" WHERE {v} / ({v} - 10) > 0")];
            format!("CREATE STREAM f AS SELECT {p} FROM {from}{}", filter[c.pick(filter.len())])
        }
        1 | 2 => {
            // an aggregate, windowed or not
            let window = WINDOWS[c.pick(WINDOWS.len())];
            // (the engine windows one relation: a windowed aggregate reads `s`)
            let (from, key, v, name, ts) = if !window.is_empty() && from.contains("JOIN") {
                ("s".to_string(), "k", "v", "name", "ts")
            } else {
                (from.to_string(), key, v, name, ts)
            };
            let fix = |a: &str| {
                a.replace("(v", &format!("({v}"))
                    .replace("name)", &format!("{name})"))
                    .replace("ts)", &format!("{ts})"))
            };
            let n = 1 + c.pick(3);
            let aggs: Vec<String> = (0..n).map(|i| format!("{} AS a{i}", fix(AGGS[c.pick(AGGS.len())]))).collect();
            let window = window.replace("(ts", &format!("({ts}"));
            let cols = if window.is_empty() { String::new() } else { ", window_start, window_end".to_string() };
            let having = if c.pick(3) == 0 { " HAVING COUNT(*) > 1" } else { "" };
            let emit = EMITS[c.pick(EMITS.len())];
            let kind = if c.pick(2) == 0 { "STREAM" } else { "MATERIALIZED VIEW" };
            format!(
                "CREATE {kind} f AS SELECT {key}{cols}, {} FROM {from} GROUP BY {key}{window}{having}{emit}",
                aggs.join(", ")
            )
        }
        _ => {
            // OVER / top-N per window
            let f = ["ROW_NUMBER()", "RANK()", "DENSE_RANK()", &format!("LAG({v})"), &format!("SUM({v})")];
            let func = f[c.pick(f.len())];
            let frame = if c.pick(2) == 0 { " ROWS BETWEEN 1 PRECEDING AND CURRENT ROW" } else { "" };
            let n = c.pick(4);
            format!(
                "CREATE STREAM f AS SELECT * FROM (SELECT {key}, {v} AS v, window_start, {func} OVER (PARTITION BY window_start ORDER BY {v} DESC{frame}) AS rn \
                 FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '1' SECOND))) WHERE rn <= {n}"
            )
        }
    }
}

/// The source columns `push` declares: (SQL type, Arrow type of the same).
const COLUMN_TYPES: &[&str] =
    &["BIGINT", "INT", "SMALLINT", "DOUBLE", "REAL", "VARCHAR", "BOOLEAN", "TIMESTAMP", "DATE", "DECIMAL(10,2)"];

/// An arbitrary Arrow array of `n` rows (types, nulls, values from the input).
fn array(c: &mut Choices<'_>, n: usize, depth: usize) -> ArrayRef {
    let nulls: Vec<bool> = (0..n).map(|_| c.pick(4) != 0).collect();
    let ints: Vec<Option<i64>> = (0..n).map(|i| nulls[i].then(|| c.i64())).collect();
    let kinds = if depth > 2 { 12 } else { 15 };
    match c.pick(kinds) {
        0 => Arc::new(Int64Array::from(ints)),
        1 => Arc::new(Int32Array::from(ints.iter().map(|v| v.map(|v| v as i32)).collect::<Vec<_>>())),
        2 => Arc::new(Int16Array::from(ints.iter().map(|v| v.map(|v| v as i16)).collect::<Vec<_>>())),
        3 => Arc::new(Float64Array::from(ints.iter().map(|v| v.map(|v| f64::from_bits(v as u64))).collect::<Vec<_>>())),
        4 => Arc::new(Float32Array::from(ints.iter().map(|v| v.map(|v| v as f32 / 7.0)).collect::<Vec<_>>())),
        5 => Arc::new(StringArray::from(ints.iter().map(|v| v.map(|v| format!("{v:x}"))).collect::<Vec<_>>())),
        6 => Arc::new(BooleanArray::from(ints.iter().map(|v| v.map(|v| v & 1 == 1)).collect::<Vec<_>>())),
        7 => Arc::new(TimestampMicrosecondArray::from(ints.clone())),
        8 => Arc::new(Date32Array::from(ints.iter().map(|v| v.map(|v| v as i32)).collect::<Vec<_>>())),
        9 => {
            let (p, s) = (1 + c.pick(38) as u8, c.pick(10) as i8);
            let a = Decimal128Array::from(ints.iter().map(|v| v.map(|v| v as i128)).collect::<Vec<_>>());
            Arc::new(
                a.with_precision_and_scale(p, s.min(p as i8)).unwrap_or_else(|_| Decimal128Array::from(vec![None; n])),
            )
        }
        10 => Arc::new(LargeStringArray::from(ints.iter().map(|v| v.map(|v| v.to_string())).collect::<Vec<_>>())),
        11 => match c.pick(4) {
            0 => Arc::new(NullArray::new(n)),
            1 => Arc::new(UInt64Array::from(ints.iter().map(|v| v.map(|v| v as u64)).collect::<Vec<_>>())),
            2 => Arc::new(BinaryArray::from(
                ints.iter().map(|v| v.as_ref().map(|v| &b"\xff\x00abc"[..(*v as usize % 6)])).collect::<Vec<_>>(),
            )),
            _ => Arc::new(
                TimestampNanosecondArray::from(ints.clone())
                    .with_timezone(["UTC", "+02:00", "Europe/Paris"][c.pick(3)]),
            ),
        },
        12 => {
            let d: DictionaryArray<Int8Type> =
                ints.iter().map(|v| v.map(|v| ["x", "y", "z"][(v.unsigned_abs() % 3) as usize])).collect();
            Arc::new(d)
        }
        13 => {
            // a list of int64 per row
            let lens: Vec<usize> = (0..n).map(|_| c.pick(3)).collect();
            let values = Int64Array::from((0..lens.iter().sum::<usize>()).map(|_| c.i64()).collect::<Vec<_>>());
            let nb = datafusion::arrow::buffer::NullBuffer::from(nulls.clone());
            Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(DataType::Int64, false)),
                OffsetBuffer::from_lengths(lens),
                Arc::new(values),
                Some(nb),
            ))
        }
        _ => {
            let child = array(c, n, depth + 1);
            let f = Field::new("a", child.data_type().clone(), true);
            Arc::new(StructArray::new(vec![f].into(), vec![child], None))
        }
    }
}

/// A source of arbitrary columns, and arbitrary batches written into it through the writer's
/// conformance check, then through a stream that reads every column.
pub fn push(data: &[u8]) {
    let mut c = Choices::new(data);
    let ncols = 1 + c.pick(4);
    let cols: Vec<String> = (0..ncols).map(|i| format!("c{i} {}", COLUMN_TYPES[c.pick(COLUMN_TYPES.len())])).collect();
    let db = Database::open(":memory:", Config::default()).expect("an in-memory database opens");
    if db
        .execute(&format!("CREATE SOURCE p ({}); CREATE MATERIALIZED VIEW m AS SELECT * FROM p", cols.join(", ")))
        .is_err()
    {
        db.close();
        return;
    }
    let Ok(mut w) = db.writer("p") else {
        db.close();
        return;
    };
    for _ in 0..1 + c.pick(3) {
        let n = c.pick(9);
        let width = c.pick(ncols + 2);
        let mut fields = vec![];
        let mut arrays = vec![];
        for i in 0..width {
            let a = array(&mut c, n, 0);
            // Mostly the source's names; sometimes another, or a repeated one.
            let name = match c.pick(8) {
                0 => "other".to_string(),
                1 => "c0".to_string(),
                _ => format!("c{i}"),
            };
            fields.push(Field::new(name, a.data_type().clone(), c.pick(4) != 0));
            arrays.push(a);
        }
        let opts = RecordBatchOptions::new().with_row_count(Some(n));
        if let Ok(b) = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &opts) {
            let _ = w.write(b);
        }
    }
    let _ = w.flush();
    drop(w);
    let _ = db.query("SELECT * FROM m");
    db.close();
}

/// Bytes LaminarDB reads back from its own files: a log record body, a state blob (lists of
/// batches), an Arrow IPC stream; the first byte picks which.
pub fn durable(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            let _ = crate::durable::decode_log_record(rest);
        }
        1 => {
            let _ = crate::durable::decode_lists(rest);
        }
        _ => {
            let _ = crate::read_ipc_stream(rest);
        }
    }
}

/// Whole files LaminarDB reads back (the first byte picks how the rest is read):
/// - a checkpoint manifest's text, its end line (the checksum) made to hold;
/// - log segments (the rest split at the bytes `0xFE 0xFE`) as they are, replayed from a
///   directory strictly and with salvage;
/// - the same with each record's checksum computed here, so that replay reaches the records:
///   each segment read as records of `[len u32][seq u64][len - 8 bytes]` (the checksum added
///   after the length), bytes that do not make a record left as a torn tail.
pub fn wal(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            let _ = crate::durable::parse_manifest_body(&String::from_utf8_lossy(rest));
        }
        1 => {
            let segs: Vec<Vec<u8>> = split_at_marker(rest).into_iter().take(4).map(<[u8]>::to_vec).collect();
            let _ = crate::durable::replay_segments(&segs);
        }
        _ => {
            let segs: Vec<Vec<u8>> = split_at_marker(rest).into_iter().take(4).map(checksummed).collect();
            let _ = crate::durable::replay_segments(&segs);
        }
    }
}

/// `data` split at each `0xFE 0xFE`.
fn split_at_marker(data: &[u8]) -> Vec<&[u8]> {
    let mut out = vec![];
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0xfe && data[i + 1] == 0xfe {
            out.push(&data[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}

/// Log records of `[len u32][seq u64][len - 8 bytes]` framed with their checksums.
fn checksummed(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    while b.len() >= 12 {
        let len = u32::from_le_bytes(b[..4].try_into().expect("4")) as usize;
        if len < 9 || b.len() - 4 < len {
            break;
        }
        let rec = &b[4..4 + len];
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(rec).to_le_bytes());
        out.extend_from_slice(rec);
        b = &b[4 + len..];
    }
    out.extend_from_slice(b);
    out
}

/// KAFKA record values in one of the value formats (the first byte picks it); the rest is split
/// at 0xFF bytes into the values of one poll.
#[cfg(feature = "kafka")]
pub fn kafka_values(data: &[u8]) {
    const FORMATS: &[&str] = &["json", "csv", "debezium-json", "avro", "avro-confluent", "raw"];
    let Some((&which, rest)) = data.split_first() else { return };
    let values: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let _ = crate::connector::kafka::decode_values(FORMATS[which as usize % FORMATS.len()], &values);
}

/// A PostgreSQL replication frame or pgoutput message.
#[cfg(feature = "postgres")]
pub fn pgoutput(data: &[u8]) {
    let _ = crate::connector::postgres::decode_replication(data);
}

/// MySQL/MariaDB binlog events (split at the bytes `0xFE 0xFE`), parsed in order by one parser.
#[cfg(feature = "mysql")]
pub fn binlog(data: &[u8]) {
    let mut events = vec![];
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0xfe && data[i + 1] == 0xfe {
            events.push(&data[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    events.push(&data[start.min(data.len())..]);
    let _ = crate::connector::mysql::parse_binlog(&events);
}
