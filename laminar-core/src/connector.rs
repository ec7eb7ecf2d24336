//! The engine side of connectors: one source interface, one sink interface, and what every kind
//! shares (typed options with the unknown-key check, the reader thread with its retry policy).
//! Each kind lives in its own folder (`connector/files/`, `connector/nexmark.rs`).
//!
//! **Sources** are split into partitions (a file, a Kafka partition, a generator). A
//! [`SourceReader`] returns batches each tagged with the [`Position`] of its partition after it.
//! The engine records positions when it applies a batch, writes them into every checkpoint (and,
//! at durability `wal`, into the log record of the batch), and hands them back to
//! [`SourceReader::open`] after a restart, so a replayable source resumes exactly where the
//! restored state stops: each row once. The source's watermark is the minimum over its partitions
//! still being read (see `db::driver`).
//!
//! **Sinks** commit in two phases bound to the checkpoint epoch ([`Sink`]): results are written as
//! they come, invisibly; at a checkpoint the sink prepares what it wrote (a committable, stored
//! in the checkpoint); only once the checkpoint is durable is the committable published. After a
//! crash, the restored checkpoint's committable is published again (idempotently) and anything
//! staged after it is discarded: its results are produced again by the replay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, ErrorKind, Result, clip, nearest_name};

#[cfg(feature = "delta")]
pub(crate) mod delta;
#[cfg(feature = "files")]
pub(crate) mod files;
#[cfg(feature = "kafka")]
pub(crate) mod kafka;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
pub(crate) mod nexmark;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;

/// The options the engine sets on the KAFKA sources and sinks of a consumer group's task (see
/// `db::group`; a user's `__laminar.` option is refused): the partition the task owns, and (on
/// sinks) the group.
pub(crate) const TASK_PARTITION_OPTION: &str = "__laminar.task-partition";
pub(crate) const TASK_GROUP_OPTION: &str = "__laminar.task-group";

/// The kinds of source this build has, for messages.
pub(crate) fn source_kinds() -> String {
    let mut k = vec![];
    if cfg!(feature = "delta") {
        k.push("DELTA");
    }
    if cfg!(feature = "files") {
        k.push("FILES");
    }
    if cfg!(feature = "kafka") {
        k.push("KAFKA");
    }
    if cfg!(feature = "mysql") {
        k.push("MYSQL_CDC");
    }
    k.push("NEXMARK");
    if cfg!(feature = "postgres") {
        k.push("POSTGRES_CDC");
    }
    k.join(", ")
}

/// The kinds of sink this build has, for messages.
pub(crate) fn sink_kinds() -> String {
    let mut k = vec![];
    if cfg!(feature = "delta") {
        k.push("DELTA");
    }
    if cfg!(feature = "files") {
        k.push("FILES");
    }
    if cfg!(feature = "kafka") {
        k.push("KAFKA");
    }
    if cfg!(feature = "postgres") {
        k.push("POSTGRES");
    }
    if k.is_empty() {
        "none (built without the `delta`, `files`, `kafka` and `postgres` features)".into()
    } else {
        k.join(", ")
    }
}

// ------------------------------------------------------------------------------------- options

/// A connector's `WITH (…)` options, parsed once at CREATE into the kind's typed settings. Every
/// key read is known; [`Options::finish`] refuses the rest, naming the nearest known key.
pub(crate) struct Options {
    /// `"FILES source 'x'"`, for messages.
    what: String,
    map: BTreeMap<String, String>,
    known: Vec<&'static str>,
}

impl Options {
    pub(crate) fn new(what: impl Into<String>, map: &BTreeMap<String, String>) -> Options {
        Options { what: what.into(), map: map.clone(), known: vec![] }
    }

    /// Marks `key` known and returns its value, if set.
    pub(crate) fn get(&mut self, key: &'static str) -> Option<String> {
        self.known.push(key);
        self.map.remove(key)
    }

    pub(crate) fn required(&mut self, key: &'static str) -> Result<String> {
        self.get(key).ok_or_else(|| {
            // A misspelt key is the likeliest cause: name it.
            let hint = nearest_name(key, self.map.keys().map(String::as_str))
                .map(|k| format!(" ('{}' is not an option; did you mean '{key}'?)", clip(k)))
                .unwrap_or_default();
            Error::invalid_argument(format!("{}: option '{key}' is required{hint}", self.what))
        })
    }

    /// One of `choices` (case-insensitive), or `default`.
    pub(crate) fn choice(
        &mut self,
        key: &'static str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => choices.iter().find(|c| c.eq_ignore_ascii_case(v.trim())).copied().ok_or_else(|| {
                Error::invalid_argument(format!(
                    "{}: option '{key}' is '{}'; expected one of: {}",
                    self.what,
                    clip(&v),
                    choices.join(", ")
                ))
            }),
        }
    }

    pub(crate) fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        Ok(self.choice(key, &["true", "false"], if default { "true" } else { "false" })? == "true")
    }

    /// A duration with a unit (`'500ms'`, `'10s'`).
    pub(crate) fn duration(&mut self, key: &'static str, default: Duration) -> Result<Duration> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => crate::config::parse_duration(&v)
                .map_err(|m| Error::invalid_argument(format!("{}: option '{key}': {m}", self.what))),
        }
    }

    /// A single character (a CSV delimiter).
    pub(crate) fn byte(&mut self, key: &'static str, default: u8) -> Result<u8> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                let v = if v == "\\t" { "\t".to_string() } else { v };
                match v.as_bytes() {
                    [b] if b.is_ascii() => Ok(*b),
                    _ => Err(Error::invalid_argument(format!(
                        "{}: option '{key}' must be one ASCII character, got '{}'",
                        self.what,
                        clip(&v)
                    ))),
                }
            }
        }
    }

    /// Every option whose key starts with `prefix`, with the prefix cut off (`properties.group.id`
    /// → `group.id`), for a client library's own settings.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the KAFKA connector uses it yet
    pub(crate) fn prefixed(&mut self, prefix: &'static str) -> Vec<(String, String)> {
        self.known.push(prefix);
        let keys: Vec<String> = self.map.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.into_iter().map(|k| (k[prefix.len()..].to_string(), self.map.remove(&k).expect("listed"))).collect()
    }

    /// Refuses every option not read, naming the nearest known one.
    pub(crate) fn finish(self) -> Result<()> {
        if let Some(k) = self.map.keys().next() {
            let hint = nearest_name(k, self.known.iter().copied())
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            let mut known = self.known.clone();
            known.sort_unstable();
            known.dedup();
            return Err(Error::invalid_argument(format!(
                "{}: unknown option '{}'{hint} (known: {})",
                self.what,
                clip(k),
                known.join(", ")
            )));
        }
        Ok(())
    }
}

/// What a source does with a record (a file, a message) it cannot decode: `'on_error'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// The source fails, naming the record's position and the decode error (the default).
    Fail,
    /// The record is skipped, counted and logged.
    Skip,
    /// The record goes to the dead-letter source named by the option `dead_letter` (its payload,
    /// key, position and the error), and is counted.
    DeadLetter,
}

impl OnError {
    /// `on_error` (and `dead_letter`, the name of the source receiving the records, which the
    /// database creates). `dead_letters`: whether this kind can give records to one.
    pub(crate) fn from_options(o: &mut Options, dead_letters: bool) -> Result<OnError> {
        let named = o.get("dead_letter");
        let e = match o.choice("on_error", &["fail", "skip", "dead_letter"], "fail")? {
            "fail" => OnError::Fail,
            "skip" => OnError::Skip,
            _ if !dead_letters => {
                return Err(Error::not_implemented(format!(
                    "{}: on_error = 'dead_letter' is not available for this kind; use 'fail' or 'skip'",
                    o.what
                )));
            }
            _ => OnError::DeadLetter,
        };
        match (e, named) {
            (OnError::DeadLetter, None) => Err(Error::invalid_argument(format!(
                "{}: on_error = 'dead_letter' needs the option 'dead_letter' naming the source that receives the records",
                o.what
            ))),
            (OnError::DeadLetter, Some(_)) | (_, None) => Ok(e),
            (_, Some(_)) => {
                Err(Error::invalid_argument(format!("{}: option 'dead_letter' needs on_error = 'dead_letter'", o.what)))
            }
        }
    }
}

/// A TCP connection to a database server for a client of ours (`what` names the server in
/// errors): the first address of `host`, within `timeout`, no Nagle delay, reads and writes
/// bounded by `timeout`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn connect_tcp(host: &str, port: u16, timeout: Duration, what: &str) -> Result<std::net::TcpStream> {
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("{what}: {e}"));
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map_err(io)?.collect();
    let a = addrs.first().ok_or_else(|| io(std::io::Error::other("no address")))?;
    let s = std::net::TcpStream::connect_timeout(a, timeout).map_err(io)?;
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok(s)
}

/// One change a change-data-capture source captured: the declared columns' values (`V`: text,
/// or bytes), in order.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) enum CdcRow<V> {
    Upsert(Vec<V>),
    Delete(Vec<V>),
    /// TRUNCATE: every row of the table goes.
    Truncate,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<V> CdcRow<V> {
    /// Column `j`'s value (None for a TRUNCATE).
    pub(crate) fn value(&self, j: usize) -> Option<&V> {
        match self {
            CdcRow::Upsert(v) | CdcRow::Delete(v) => Some(&v[j]),
            CdcRow::Truncate => None,
        }
    }
}

/// The last columns of a change-data-capture batch of `rows` into a table: a declared NOT NULL
/// column's nulls (of TRUNCATE rows and deleted rows' non-key columns, whose values do not
/// matter) filled with the type's default, then the `__deleted` flags (None: a TRUNCATE).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn cdc_columns<V>(
    mut cols: Vec<datafusion::arrow::array::ArrayRef>,
    schema: &SchemaRef,
    rows: &[CdcRow<V>],
) -> Result<Vec<datafusion::arrow::array::ArrayRef>> {
    let deleted: Vec<Option<bool>> = rows
        .iter()
        .map(|r| match r {
            CdcRow::Upsert(_) => Some(false),
            CdcRow::Delete(_) => Some(true),
            CdcRow::Truncate => None,
        })
        .collect();
    use datafusion::arrow::compute::{is_not_null, kernels::zip::zip};
    for (col, f) in cols.iter_mut().zip(schema.fields()) {
        if !f.is_nullable() && col.null_count() > 0 {
            let fill = datafusion::scalar::ScalarValue::new_default(f.data_type())?.to_array_of_size(col.len())?;
            *col = zip(&is_not_null(col.as_ref())?, col, &fill)?;
        }
    }
    cols.push(std::sync::Arc::new(datafusion::arrow::array::BooleanArray::from(deleted)));
    Ok(cols)
}

/// The columns of a dead-letter source: which source and partition the record came from, its
/// position there (a Kafka offset), its key and payload as read, and why it did not decode.
pub(crate) const DEAD_LETTER_COLUMNS: &str = "source_name VARCHAR NOT NULL, partition_name VARCHAR NOT NULL, record_position VARCHAR NOT NULL, record_key BYTEA, payload BYTEA, error VARCHAR NOT NULL";

/// The dead-letter source's schema (of [`DEAD_LETTER_COLUMNS`]).
pub(crate) fn dead_letter_schema() -> SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("source_name", DataType::Utf8, false),
        Field::new("partition_name", DataType::Utf8, false),
        Field::new("record_position", DataType::Utf8, false),
        Field::new("record_key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, true),
        Field::new("error", DataType::Utf8, false),
    ]))
}

/// One record that did not decode, for the dead-letter source.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the KAFKA connector uses it yet
pub(crate) struct DeadLetter {
    pub position: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
}

/// Rows of [`dead_letter_schema`] for `letters` of one partition.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the KAFKA connector uses it yet
pub(crate) fn dead_letter_batch(source: &str, partition: &str, letters: &[DeadLetter]) -> Result<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, BinaryArray, StringArray};
    let n = letters.len();
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(StringArray::from_iter_values(std::iter::repeat_n(source, n))),
        std::sync::Arc::new(StringArray::from_iter_values(std::iter::repeat_n(partition, n))),
        std::sync::Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.position.as_str()))),
        std::sync::Arc::new(BinaryArray::from_iter(letters.iter().map(|l| l.key.as_deref()))),
        std::sync::Arc::new(BinaryArray::from_iter(letters.iter().map(|l| l.payload.as_deref()))),
        std::sync::Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.error.as_str()))),
    ];
    Ok(RecordBatch::try_new(dead_letter_schema(), cols)?)
}

// ------------------------------------------------------------------------------------- sources

/// Where one partition of a source has got to, after the batch it comes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The partition: a file name, a Kafka partition number, `"0"` for a single stream.
    pub partition: String,
    /// The kind's own encoding of the position (an offset, a row count, an LSN). Empty: not a
    /// position to record, only the partition's name (a reader announcing its partitions, with
    /// an empty batch, so that each holds the source's watermark back until it has data).
    pub offset: String,
    /// The partition has nothing more to read (a file read to its end): it no longer holds back
    /// the source's watermark.
    pub finished: bool,
}

/// The recorded positions of a source: partition → offset. Finished partitions are recorded with
/// [`FINISHED`] so they are never read again.
pub(crate) type Positions = BTreeMap<String, String>;

/// The offset recorded for a finished partition.
pub(crate) const FINISHED: &str = "finished";

impl Position {
    /// The offset as recorded (a finished partition as [`FINISHED`]).
    pub(crate) fn recorded(&self) -> &str {
        if self.finished { FINISHED } else { &self.offset }
    }
}

/// Encodes positions for a checkpoint's catalog: `len:partition len:offset …`, so any character
/// may appear in a partition name.
pub(crate) fn encode_positions(p: &Positions) -> String {
    let mut s = String::new();
    for (k, v) in p {
        s.push_str(&format!("{}:{k}{}:{v}", k.len(), v.len()));
    }
    s
}

pub(crate) fn decode_positions(s: &str) -> Result<Positions> {
    let bad = || Error::invalid_data(format!("malformed source positions in a checkpoint: '{}'", clip(s)));
    let mut out = Positions::new();
    let mut rest = s;
    let take = |rest: &mut &str| -> Result<String> {
        let colon = rest.find(':').ok_or_else(bad)?;
        let n: usize = rest[..colon].parse().map_err(|_| bad())?;
        let body = rest.get(colon + 1..colon + 1 + n).ok_or_else(bad)?.to_string();
        *rest = &rest[colon + 1 + n..];
        Ok(body)
    };
    while !rest.is_empty() {
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        out.insert(k, v);
    }
    Ok(out)
}

/// What a source reader counts per partition, read by the database's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStats {
    /// The next offset to read (a Kafka offset), once known; POSTGRES_CDC: the LSN (as a
    /// number) after the last transaction handed over.
    pub position: Option<i64>,
    /// Records behind the end of the partition (its high watermark − `position`), as of the
    /// last time the reader asked the server (every few seconds); POSTGRES_CDC: WAL bytes from
    /// `position` to the server's end of WAL as it last reported it (in every message and
    /// keepalive).
    pub lag: Option<i64>,
    /// Records and value bytes read (POSTGRES_CDC: changes, and pgoutput message bytes).
    pub records: u64,
    pub bytes: u64,
    /// Records that did not decode (`on_error = 'skip'`: skipped).
    pub malformed: u64,
    /// `lag` counts bytes of write-ahead log (POSTGRES_CDC), not records.
    pub lag_in_bytes: bool,
}

/// A reader's per-partition counters, shared with the database (partition → stats).
pub(crate) type SourceStats = std::sync::Arc<parking_lot::Mutex<BTreeMap<String, PartitionStats>>>;

/// What [`SourceReader::poll`] found.
pub(crate) enum Poll {
    /// Rows, with their partition's position after them.
    Data(RecordBatch, Position),
    /// Records of a partition that did not decode (rows of [`dead_letter_schema`]), for the
    /// dead-letter source; the position is the partition's after the last of them. Comes before
    /// the `Data` of the same records' partition.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the KAFKA connector uses it yet
    DeadLetters(RecordBatch, Position),
    /// Nothing new now; poll again after [`SourceReader::poll_interval`].
    Pending,
    /// A bounded source has read everything: the end of input (its watermark goes to the end).
    End,
}

/// One source connector instance. Built at CREATE SOURCE from its options (which are checked
/// then); [`open`](SourceReader::open)ed and polled on a reader thread of its own once the
/// database has recovered.
pub(crate) trait SourceReader: Send + 'static {
    /// `"FILES '/data/in'"`: the kind and what it reads, for messages.
    fn describe(&self) -> String;
    /// Seeks every partition to its recorded position (empty: a fresh start).
    fn open(&mut self, positions: &Positions) -> Result<()>;
    /// Reads the next batch. Errors of kind `IO` are retried with backoff (see [`run_source`]);
    /// any other error fails the source.
    fn poll(&mut self) -> Result<Poll>;
    /// How long to wait after [`Poll::Pending`].
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(200)
    }
    /// Per-partition counters the reader keeps, if it keeps any.
    fn stats(&self) -> Option<SourceStats> {
        None
    }
    /// A checkpoint holding `positions` (this source's) is durable. Best effort, for monitoring
    /// tools (Kafka commits them as the consumer group's offsets); recovery never reads them.
    fn checkpointed(&mut self, _positions: &Positions) {}
    /// How many checkpoints the database keeps (`checkpoints_retained`): recovery falls back to
    /// an older one when newer ones are damaged, so a source whose server releases data once
    /// told (a replication slot) tells it only what the oldest kept checkpoint covers. Called
    /// once, before `open`.
    fn checkpoints_retained(&mut self, _n: usize) {}
    /// Called once when a statement creates the source (not when recovery recreates it): checks
    /// now what can only be checked against the server (the address, the credentials, the
    /// captured table's columns), so a mistake fails the CREATE instead of the streams later.
    fn check(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Where a reader's batches go: the source's writer (bounded: a full queue blocks the reader, so
/// a slow pipeline pauses reading).
pub(crate) trait SourceOutput: Send + 'static {
    fn write(&mut self, batch: RecordBatch, position: Position) -> Result<()>;
    /// The end of input.
    fn finish(&mut self) -> Result<()>;
    /// The source was dropped or the database closed: the reader stops.
    fn stopped(&self) -> bool;
    /// The reader gave up: the streams reading the source fail with `e`.
    fn fail(&mut self, e: Error);
    /// Records that did not decode, for the source's dead-letter source (see [`Poll::DeadLetters`]).
    fn dead_letters(&mut self, batch: RecordBatch, position: Position) -> Result<()>;
    /// The positions of the latest durable checkpoint, once each (see
    /// [`SourceReader::checkpointed`]).
    fn take_checkpointed(&self) -> Option<Positions> {
        None
    }
}

/// How long a reader retries a failing `IO` operation (a server down, a file system that went
/// away) before the source fails.
pub(crate) const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `reader` on a thread of its own: opens it at `positions`, then moves its batches into
/// `out` until the end of input, the source is dropped, or the database closes. `IO` errors are
/// retried with exponential backoff (100 ms doubling to 5 s) for up to `retry_timeout`; then, or
/// on any other error, the source fails with the error, naming the source.
pub(crate) fn run_source(
    name: &str,
    mut reader: Box<dyn SourceReader>,
    positions: Positions,
    mut out: Box<dyn SourceOutput>,
    retry_timeout: Duration,
) -> Result<()> {
    let source = name.to_string();
    std::thread::Builder::new()
        .name(format!("laminar-source-{}", clip(name)))
        .spawn(move || {
            let what = format!("source '{source}' ({})", reader.describe());
            let mut failing_since: Option<Instant> = None;
            let mut backoff = Duration::from_millis(100);
            let mut opened = false;
            loop {
                if out.stopped() {
                    return;
                }
                let step = if opened { reader.poll() } else { reader.open(&positions).map(|_| Poll::Pending) };
                match step {
                    Ok(p) => {
                        if !opened {
                            opened = true;
                            failing_since = None;
                            backoff = Duration::from_millis(100);
                            continue;
                        }
                        failing_since = None;
                        backoff = Duration::from_millis(100);
                        if let Some(p) = out.take_checkpointed() {
                            reader.checkpointed(&p);
                        }
                        match p {
                            Poll::Data(..) | Poll::DeadLetters(..) => {
                                let res = match p {
                                    Poll::Data(batch, pos) => out.write(batch, pos),
                                    Poll::DeadLetters(batch, pos) => out.dead_letters(batch, pos),
                                    _ => unreachable!(),
                                };
                                if let Err(e) = res {
                                    if !out.stopped() {
                                        out.fail(e.context(&what));
                                    }
                                    return;
                                }
                            }
                            Poll::Pending => sleep_unless_stopped(&*out, reader.poll_interval()),
                            Poll::End => {
                                let _ = out.finish();
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Io => {
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= retry_timeout {
                            out.fail(e.context(format!("{what}: gave up after retrying for {retry_timeout:?}")));
                            return;
                        }
                        log::warn!(target: "laminardb", "{what}: {e}; retrying in {backoff:?}");
                        sleep_unless_stopped(&*out, backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        out.fail(e.context(&what));
                        return;
                    }
                }
            }
        })
        .map_err(|e| Error::internal(format!("cannot start the reader thread of source '{name}': {e}")))?;
    Ok(())
}

fn sleep_unless_stopped(out: &dyn SourceOutput, d: Duration) {
    let until = Instant::now() + d;
    while !out.stopped() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

// --------------------------------------------------------------------------------------- sinks

/// One sink connector instance: a writer and a committer bound to checkpoint epochs. Its calls
/// come from the pipeline thread, in order. On a database without checkpoints (durability
/// `memory`) the engine prepares and commits after every write, so results appear at once
/// (at-least-once: nothing survives a crash anyway).
pub(crate) trait Sink: Send + 'static {
    /// `"FILES '/data/out' (parquet)"`, for messages and SHOW SINKS.
    fn describe(&self) -> String;
    /// Writes results of `epoch` (the one after the last completed checkpoint), invisibly until
    /// committed.
    fn write(&mut self, epoch: u64, batch: &RecordBatch) -> Result<()>;
    /// Phase one, at the checkpoint of `epoch`: makes everything written and not yet committed
    /// durable and returns its committable, which the checkpoint stores.
    fn prepare_commit(&mut self, epoch: u64) -> Result<Vec<u8>>;
    /// Phase two, once that checkpoint is durable: publishes the committable. Idempotent.
    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<()>;
    /// After a restart (or at CREATE, with None): publishes the restored checkpoint's committable
    /// (perhaps published already) and discards anything staged after it.
    fn recover(&mut self, restored: Option<&[u8]>) -> Result<()>;
    /// DROP SINK: discards what is staged and not committed.
    fn abort(&mut self) -> Result<()>;
    /// The kind's own counters (a Kafka sink's transactions committed and aborted), for the
    /// metrics.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![]
    }
    /// In a consumer group's task (see `db::group`), before phase two of the checkpoint: the
    /// offsets (topic, partition, next offset) the epoch's results were computed from, which an
    /// exactly-once KAFKA sink commits as `group`'s offsets in the epoch's transaction.
    fn epoch_inputs(&mut self, _group: &str, _offsets: &[(String, i32, i64)]) {}
}

/// A committable holding an epoch's results (a sink that writes them only at commit, or writes
/// them again after a crash): the epoch, then the batches.
#[allow(dead_code)]
pub(crate) fn encode_epoch_batches(epoch: u64, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = epoch.to_le_bytes().to_vec();
    out.extend(crate::durable::encode_lists(&[batches.to_vec()])?);
    Ok(out)
}

/// The epoch and batches of [`encode_epoch_batches`]; `kind` names the sink kind in errors.
#[allow(dead_code)]
pub(crate) fn decode_epoch_batches(kind: &str, c: &[u8]) -> Result<(u64, Vec<RecordBatch>)> {
    if c.len() < 8 {
        return Err(Error::invalid_data(format!("a {kind} sink's committable in the checkpoint is truncated")));
    }
    let epoch = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
    let mut lists = crate::durable::decode_lists(&c[8..])?;
    Ok((epoch, lists.pop().unwrap_or_default()))
}

/// Builds the sink of kind `kind` (CREATE SINK … INTO kind WITH (options)) for results of
/// `schema`; its options are checked here. `key`: the input's key, when it is an upsert stream
/// or a table.
pub(crate) fn sink_for(
    kind: &str,
    sink: &str,
    schema: &SchemaRef,
    key: Option<&[String]>,
    options: &BTreeMap<String, String>,
) -> Result<Box<dyn Sink>> {
    #[cfg(feature = "delta")]
    if kind.eq_ignore_ascii_case("delta") {
        let o = Options::new(format!("DELTA sink '{sink}'"), options);
        return Ok(Box::new(delta::DeltaSink::new(sink, schema.clone(), o)?));
    }
    #[cfg(feature = "files")]
    if kind.eq_ignore_ascii_case("files") {
        let o = Options::new(format!("FILES sink '{sink}'"), options);
        return Ok(Box::new(files::FilesSink::new(sink, schema.clone(), o)?));
    }
    #[cfg(feature = "kafka")]
    if kind.eq_ignore_ascii_case("kafka") {
        let o = Options::new(format!("KAFKA sink '{sink}'"), options);
        return Ok(Box::new(kafka::KafkaSink::new(sink, schema.clone(), o)?));
    }
    #[cfg(feature = "postgres")]
    if kind.eq_ignore_ascii_case("postgres") {
        let o = Options::new(format!("POSTGRES sink '{sink}'"), options);
        return Ok(Box::new(postgres::PgSink::new(sink, schema.clone(), key, o)?));
    }
    let _ = (sink, schema, key, options);
    Err(Error::not_implemented(format!(
        "sink connector '{}' is not available in this build (built in: {})",
        clip(kind),
        sink_kinds()
    )))
}

/// Builds the source reader of kind `kind` for source `source` of `schema`; its options are checked
/// here (`general` are the options every source has, such as `idle_timeout`, left to the caller).
/// `table_key`: the primary key when the source feeds a table.
pub(crate) fn source_for(
    kind: &str,
    source: &str,
    schema: &SchemaRef,
    table_key: Option<&[String]>,
    options: &BTreeMap<String, String>,
    general: &[&'static str],
) -> Result<Box<dyn SourceReader>> {
    let _ = table_key;
    let mut map = options.clone();
    for g in general {
        map.remove(*g);
    }
    let mut o = Options::new(format!("{} source '{source}'", kind.to_ascii_uppercase()), &map);
    for g in general {
        o.known.push(g);
    }
    #[cfg(feature = "delta")]
    if kind.eq_ignore_ascii_case("delta") {
        return Ok(Box::new(delta::DeltaSource::new(source, schema.clone(), o)?));
    }
    #[cfg(feature = "files")]
    if kind.eq_ignore_ascii_case("files") {
        return Ok(Box::new(files::FilesSource::new(source, schema.clone(), o)?));
    }
    #[cfg(feature = "kafka")]
    if kind.eq_ignore_ascii_case("kafka") {
        return Ok(Box::new(kafka::KafkaSource::new(source, schema.clone(), table_key, o)?));
    }
    #[cfg(feature = "mysql")]
    if kind.eq_ignore_ascii_case("mysql_cdc") {
        return Ok(Box::new(mysql::MySqlCdcSource::new(source, schema.clone(), table_key, o)?));
    }
    #[cfg(feature = "postgres")]
    if kind.eq_ignore_ascii_case("postgres_cdc") {
        return Ok(Box::new(postgres::PgCdcSource::new(source, schema.clone(), o)?));
    }
    if kind.eq_ignore_ascii_case("nexmark") {
        return Ok(Box::new(nexmark::NexmarkSource::new(source, schema, o)?));
    }
    Err(Error::not_implemented(format!(
        "connector '{}' is not available in this build (built in: {})",
        clip(kind),
        source_kinds()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_any_characters() {
        let mut p = Positions::new();
        p.insert("a:b 3:x".into(), "12".into());
        p.insert("".into(), FINISHED.into());
        p.insert("ünï/cödé\n".into(), "7:8".into());
        assert_eq!(decode_positions(&encode_positions(&p)).unwrap(), p);
        assert!(decode_positions("5:ab").is_err());
        assert!(decode_positions("x:ab").is_err());
    }

    #[test]
    fn unknown_option_names_the_nearest() {
        let mut m = BTreeMap::new();
        m.insert("pathh".to_string(), "x".to_string());
        let mut o = Options::new("FILES source 's'", &m);
        assert_eq!(o.get("path"), None);
        let e = o.finish().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("unknown option 'pathh'; did you mean 'path'?"), "{e}");
    }
}
