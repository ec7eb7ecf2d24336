//! The KAFKA source: every partition of a topic assigned, JSON/CSV/raw values decoded into the
//! declared columns with the metadata columns, offsets as positions, per-partition counters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{OnError, Options, Poll, Position, Positions, SourceReader};
use crate::error::{Error, Result, clip};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    Earliest,
    Latest,
    Group,
    Timestamp(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Key,
    Partition,
    Offset,
    Timestamp,
    Topic,
}

/// One record, copied out of librdkafka's buffer.
struct Rec {
    /// Index into the assigned topics.
    topic: usize,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// A tombstone (no value) into a `json` table: `value` holds the key's columns, and the
    /// row is a delete.
    deleted: bool,
}

pub(crate) struct KafkaSource {
    source: String,
    /// The topic, or the text of `topic-pattern`.
    topic: String,
    pattern: Option<regex::Regex>,
    /// The topics read (one, or those the pattern matched when the reader opened).
    topics: Vec<String>,
    servers: String,
    config: ClientConfig,
    format: Format,
    startup: Startup,
    on_error: OnError,
    max_batch: usize,
    /// The declared schema, the part decoded from the value, and where each column comes from.
    schema: SchemaRef,
    value_schema: SchemaRef,
    /// What `decode` gives: the value schema, with `debezium-json` a `__deleted` column after it.
    decoded_schema: SchemaRef,
    /// What the reader writes: the declared schema, with `debezium-json` and `__deleted`.
    out_schema: SchemaRef,
    /// A `json` table: its key columns (a tombstone deletes the key its record's key names).
    tombstone_key: Option<Vec<String>>,
    columns: Vec<Result<usize, Meta>>,
    consumer: Option<BaseConsumer>,
    ready: VecDeque<Poll>,
    /// Records read but not yet decoded: a schema registry that could not be reached leaves
    /// them here for the next poll (librdkafka has moved past them).
    pending: BTreeMap<(usize, i32), Vec<Rec>>,
    /// `avro-confluent`: the registry's URL and a decoder per writer schema id.
    registry: Option<String>,
    /// Per writer schema id: its text (to rebuild the decoder after a bad value) and decoder.
    avro: parking_lot::Mutex<std::collections::HashMap<u32, (String, arrow_avro::reader::Decoder)>>,
    stats: crate::connector::SourceStats,
    /// When the partitions' high watermarks (for the lag) were last asked for.
    lag_checked: Option<std::time::Instant>,
    /// Catching up (logged at INFO).
    catch_up: CatchUp,
    /// `scan.topic-partition-discovery.interval` (None: 0, off): how often the brokers are asked
    /// for new partitions of the topic (and, with `topic-pattern`, new matching topics).
    discovery: Option<Duration>,
    /// When partitions were last looked for.
    discovered_at: Option<std::time::Instant>,
    /// Partitions assigned per topic of `topics` (0..n each).
    partitions: Vec<i32>,
    /// In a consumer group's task (see `db::group`): the one partition read of each topic (the
    /// sinks' transactions commit the group's offsets; this reader commits none).
    task: Option<i32>,
}

/// The high watermark of a partition as librdkafka last saw it in a fetch response
/// (`rd_kafka_get_watermark_offsets`: no request to the broker); None before the first.
fn cached_high_watermark(c: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is live while `c` is borrowed; topic is NUL-terminated and
    // outlives the call; low and high are valid for writes.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            c.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// The default of `scan.topic-partition-discovery.interval`.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// The position recorded for a partition found after the reader opened, before any of its
/// records is read: its beginning (librdkafka's `RD_KAFKA_OFFSET_BEGINNING`), so that a restart
/// reads it from there whatever `scan.startup.mode` says.
const FROM_BEGINNING: &str = "-2";

/// The records a source must be behind at its first lag check to log its catch-up.
const CATCH_UP_LOG_MIN: i64 = 10_000;

/// Progress of a catch-up: at the first lag check after the reader opens, a lag of at least
/// [`CATCH_UP_LOG_MIN`] records starts one; each later check (every 5 s) logs the lag and the
/// rate, until the lag falls below 1% of where it started (or below the minimum).
#[derive(Debug)]
enum CatchUp {
    /// No lag known yet, after this many checks (100 ms apart; after 50, it is not logged).
    Unchecked(u32),
    /// Since when, and the lag then.
    Running {
        since: std::time::Instant,
        from: i64,
    },
    Done,
}

impl Default for CatchUp {
    fn default() -> CatchUp {
        CatchUp::Unchecked(0)
    }
}

impl KafkaSource {
    /// `table_key`: the primary key when the source feeds a table (`CREATE TABLE … FROM KAFKA`).
    pub(crate) fn new(
        source: &str,
        schema: SchemaRef,
        table_key: Option<&[String]>,
        mut o: Options,
    ) -> Result<KafkaSource> {
        let (topic, pattern) = match (o.get("topic"), o.get("topic-pattern")) {
            (Some(t), None) => (t, None),
            (None, Some(p)) => {
                let re = regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    Error::invalid_argument(format!(
                        "KAFKA source '{source}': option 'topic-pattern' is not a regular expression: {e}"
                    ))
                })?;
                (p, Some(re))
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid_argument(format!(
                    "KAFKA source '{source}': give 'topic' or 'topic-pattern', not both"
                )));
            }
            (None, None) => {
                return Err(Error::invalid_argument(format!(
                    "KAFKA source '{source}': option 'topic' (or 'topic-pattern') is required"
                )));
            }
        };
        let (servers, mut config) = client_config(&mut o)?;
        let format = format_option(&mut o, false)?;
        let startup = match o.choice(
            "scan.startup.mode",
            &["earliest-offset", "latest-offset", "group-offsets", "timestamp"],
            "earliest-offset",
        )? {
            "latest-offset" => Startup::Latest,
            "group-offsets" => Startup::Group,
            "timestamp" => {
                let ms = o.required("scan.startup.timestamp-millis")?;
                Startup::Timestamp(ms.trim().parse().map_err(|_| {
                    Error::invalid_argument(format!(
                        "KAFKA source '{source}': option 'scan.startup.timestamp-millis' must be an integer, got '{}'",
                        clip(&ms)
                    ))
                })?)
            }
            _ => Startup::Earliest,
        };
        if !matches!(startup, Startup::Timestamp(_)) && o.get("scan.startup.timestamp-millis").is_some() {
            return Err(Error::invalid_argument(format!(
                "KAFKA source '{source}': 'scan.startup.timestamp-millis' needs scan.startup.mode = 'timestamp'"
            )));
        }
        let max_batch = match o.get("scan.max-batch-records") {
            None => 100_000,
            Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "KAFKA source '{source}': option 'scan.max-batch-records' must be a positive integer, got '{}'",
                    clip(&v)
                ))
            })?,
        };
        let registry = registry_option(&mut o, format, &format!("KAFKA source '{source}'"))?;
        let avro_schema = o.get("avro.schema");
        if avro_schema.is_some() && format != Format::Avro {
            return Err(Error::invalid_argument(format!(
                "KAFKA source '{source}': option 'avro.schema' needs format = 'avro'"
            )));
        }
        let on_error = OnError::from_options(&mut o, true)?;
        let discovery = o.duration("scan.topic-partition-discovery.interval", DISCOVERY_INTERVAL)?;
        // Set by the engine (never by a user: `CREATE SOURCE` refuses `__laminar.` options) in
        // the task of one partition of a consumer group.
        let task = o.get(crate::connector::TASK_PARTITION_OPTION).and_then(|p| p.parse::<i32>().ok());
        o.finish()?;
        if config.get("group.id").is_none() {
            config.set("group.id", format!("laminardb-{source}"));
        }
        if task.is_some() {
            // The member's coordinator is the group's member; a task's reader only fetches.
            config.remove("group.instance.id");
            config.remove("partition.assignment.strategy");
        }
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", if startup == Startup::Latest { "latest" } else { "earliest" });
        let mut columns = vec![];
        let mut value_fields = vec![];
        for f in schema.fields() {
            let meta = match f.name().as_str() {
                "_key" => Some(Meta::Key),
                "_partition" => Some(Meta::Partition),
                "_offset" => Some(Meta::Offset),
                "_timestamp" => Some(Meta::Timestamp),
                "_topic" => Some(Meta::Topic),
                _ => None,
            };
            match meta {
                Some(m) => columns.push(Err(m)),
                None => {
                    columns.push(Ok(value_fields.len()));
                    value_fields.push(f.clone());
                }
            }
        }
        if format == Format::Raw
            && (value_fields.len() != 1 || !matches!(value_fields[0].data_type(), DataType::Utf8 | DataType::Binary))
        {
            return Err(Error::invalid_argument(format!(
                "KAFKA source '{source}': format 'raw' needs exactly one VARCHAR or BYTES column besides the metadata columns"
            )));
        }
        let value_schema = Arc::new(Schema::new(value_fields));
        // A `json` table takes a tombstone (a record without a value) as the delete of the key
        // the record's key names.
        let tombstone_key = if format == Format::Json { table_key.map(<[String]>::to_vec) } else { None };
        let with_deleted = |s: &Schema| -> SchemaRef {
            let mut f: Vec<_> = s.fields().iter().cloned().collect();
            if format == Format::DebeziumJson || tombstone_key.is_some() {
                f.push(Arc::new(datafusion::arrow::datatypes::Field::new("__deleted", DataType::Boolean, false)));
            }
            Arc::new(Schema::new(f))
        };
        let decoded_schema = with_deleted(&value_schema);
        let out_schema = with_deleted(&schema);
        // Plain `avro`: the one writer schema, kept as if its id were 0.
        let mut avro = std::collections::HashMap::new();
        if format == Format::Avro {
            let text = match avro_schema {
                Some(t) => t,
                None => derived_avro_schema(&value_schema, &format!("KAFKA source '{source}'"))?,
            };
            let d = avro_decoder(0, &text).map_err(|e| {
                Error::invalid_argument(format!("KAFKA source '{source}': option 'avro.schema': {}", e.message()))
            })?;
            avro.insert(0, (text, d));
        }
        Ok(KafkaSource {
            tombstone_key,
            decoded_schema,
            out_schema,
            source: source.to_string(),
            topic,
            pattern,
            topics: vec![],
            servers,
            config,
            format,
            startup,
            on_error,
            max_batch,
            schema,
            value_schema,
            columns,
            consumer: None,
            ready: VecDeque::new(),
            pending: BTreeMap::new(),
            registry,
            avro: parking_lot::Mutex::new(avro),
            stats: Default::default(),
            lag_checked: None,
            catch_up: CatchUp::default(),
            discovery: if task.is_some() || discovery.is_zero() { None } else { Some(discovery) },
            discovered_at: None,
            partitions: vec![],
            task,
        })
    }

    /// Decodes the values of `recs` (one partition's, in offset order) into rows of the value
    /// schema, one row per record; the records that fail with `on_error = 'skip'` or
    /// `'dead_letter'` are dropped from `recs` (the latter into `letters`).
    fn decode(&mut self, recs: &mut Vec<Rec>, letters: &mut Vec<crate::connector::DeadLetter>) -> Result<RecordBatch> {
        if let Ok(b) = self.decode_all(recs.iter()) {
            return Ok(b);
        }
        // Find the bad records one by one.
        let mut good = Vec::with_capacity(recs.len());
        let mut batches = vec![];
        for r in recs.drain(..) {
            match self.decode_all(std::iter::once(&r)) {
                Ok(b) => {
                    batches.push(b);
                    good.push(r);
                }
                Err(e) => {
                    let at = format!(
                        "topic '{}' partition {} offset {}",
                        clip(&self.topics[r.topic]),
                        r.partition,
                        r.offset
                    );
                    match self.on_error {
                        OnError::Fail => {
                            return Err(Error::invalid_data(format!(
                                "cannot decode the record at {at}: {}",
                                e.message()
                            )));
                        }
                        OnError::Skip => {
                            let key = self.key(r.topic, r.partition);
                            self.stats.lock().entry(key).or_default().malformed += 1;
                            log::warn!(target: "laminardb", "source '{}': skipped the record at {at}: {}", self.source, e.message());
                        }
                        OnError::DeadLetter => {
                            let key = self.key(r.topic, r.partition);
                            self.stats.lock().entry(key).or_default().malformed += 1;
                            letters.push(crate::connector::DeadLetter {
                                position: r.offset.to_string(),
                                key: r.key,
                                payload: r.value,
                                error: e.message().to_string(),
                            });
                        }
                    }
                }
            }
        }
        *recs = good;
        Ok(datafusion::arrow::compute::concat_batches(&self.decoded_schema, &batches)?)
    }

    fn decode_all<'a>(&self, recs: impl Iterator<Item = &'a Rec> + Clone) -> Result<RecordBatch> {
        let n = recs.clone().count();
        let schema = self.value_schema.clone();
        let bad = |m: String| Error::invalid_data(m);
        match self.format {
            Format::Raw => {
                let col: ArrayRef = if schema.field(0).data_type() == &DataType::Utf8 {
                    let mut v = Vec::with_capacity(n);
                    for r in recs {
                        v.push(match &r.value {
                            None => None,
                            Some(b) => Some(std::str::from_utf8(b).map_err(|_| bad("the value is not UTF-8".into()))?),
                        });
                    }
                    Arc::new(StringArray::from(v))
                } else {
                    Arc::new(BinaryArray::from_iter(recs.map(|r| r.value.as_deref())))
                };
                Ok(RecordBatch::try_new(schema, vec![col])?)
            }
            Format::Json if self.tombstone_key.is_some() => {
                let deleted = BooleanArray::from_iter(recs.clone().map(|r| Some(r.deleted)));
                let values = json_objects(schema, recs, n)?;
                let mut cols = values.columns().to_vec();
                cols.push(Arc::new(deleted));
                Ok(RecordBatch::try_new(self.decoded_schema.clone(), cols)?)
            }
            Format::Json => json_objects(schema, recs, n),
            Format::DebeziumJson => self.decode_debezium(recs, n),
            Format::AvroConfluent | Format::Avro => self.decode_avro(recs),
            Format::Csv => {
                let mut d = datafusion::arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(false)
                    .with_batch_size(n.max(1))
                    .build_decoder();
                let mut buf = Vec::new();
                for r in recs {
                    let v = r.value.as_deref().ok_or_else(|| bad("the record has no value".into()))?;
                    if v.contains(&b'\n') {
                        return Err(bad("a CSV record holds more than one line".into()));
                    }
                    buf.extend_from_slice(v);
                    buf.push(b'\n');
                }
                let mut rest = &buf[..];
                while !rest.is_empty() {
                    let used = d.decode(rest)?;
                    if used == 0 {
                        break;
                    }
                    rest = &rest[used..];
                }
                let b = d.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
                if b.num_rows() != n {
                    return Err(bad(format!("{} records gave {} CSV rows", n, b.num_rows())));
                }
                Ok(b)
            }
        }
    }

    /// Debezium envelopes (`{"before": {…}, "after": {…}, "op": "c"|"r"|"u"|"d", …}`, other
    /// fields ignored): the row after the change, or for `d` the row before it with the
    /// `__deleted` flag.
    fn decode_debezium<'a>(&self, recs: impl Iterator<Item = &'a Rec>, n: usize) -> Result<RecordBatch> {
        use datafusion::arrow::array::{AsArray, BooleanArray, StructArray};
        use datafusion::arrow::datatypes::Field;
        let bad = |m: String| Error::invalid_data(m);
        let row_fields: Vec<Arc<Field>> =
            self.value_schema.fields().iter().map(|f| Arc::new(f.as_ref().clone().with_nullable(true))).collect();
        let row_type = DataType::Struct(row_fields.into());
        let envelope = Arc::new(Schema::new(vec![
            Field::new("before", row_type.clone(), true),
            Field::new("after", row_type, true),
            Field::new("op", DataType::Utf8, true),
        ]));
        let b = json_objects(envelope, recs, n)?;
        let (before, after) = (b.column(0).as_struct(), b.column(1).as_struct());
        let op = b.column(2).as_string::<i32>();
        let mut deleted = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let del = match op.is_valid(i).then(|| op.value(i)) {
                Some("d") => true,
                Some("c" | "r" | "u") => false,
                Some(o) => return Err(bad(format!("the Debezium op '{}' is not c, r, u or d", clip(o)))),
                None => return Err(bad("the Debezium envelope has no 'op'".into())),
            };
            let side: &StructArray = if del { before } else { after };
            if side.is_null(i) {
                return Err(bad(format!(
                    "the Debezium envelope of op '{}' has no '{}'",
                    op.value(i),
                    if del { "before" } else { "after" }
                )));
            }
            deleted.push(del);
        }
        let mask = BooleanArray::from(deleted);
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.value_schema.fields().len() + 1);
        for j in 0..self.value_schema.fields().len() {
            cols.push(datafusion::arrow::compute::kernels::zip::zip(&mask, before.column(j), after.column(j))?);
        }
        cols.push(Arc::new(mask));
        Ok(RecordBatch::try_new(self.decoded_schema.clone(), cols)?)
    }

    /// Avro: each run of records of one writer schema through that schema's decoder (for
    /// Confluent framing fetched before, see [`KafkaSource::fetch_schemas`]; for plain `avro`
    /// the one of id 0, each datum given the framing's 5 bytes first), its fields matched by
    /// name to the declared columns.
    fn decode_avro<'a>(&self, recs: impl Iterator<Item = &'a Rec>) -> Result<RecordBatch> {
        let mut batches = vec![];
        let plain = self.format == Format::Avro;
        let mut run: Option<(u32, Vec<&[u8]>)> = None;
        let mut cache = self.avro.lock();
        let mut flush = |id: u32,
                         values: Vec<&[u8]>,
                         cache: &mut std::collections::HashMap<u32, (String, arrow_avro::reader::Decoder)>|
         -> Result<()> {
            let (schema, d) = cache
                .get_mut(&id)
                .ok_or_else(|| Error::invalid_data(format!("the registry has no writer schema of id {id}")))?;
            let res = (|| -> Result<Option<RecordBatch>> {
                for v in &values {
                    if plain {
                        d.decode(&[0; 5]).map_err(|e| Error::internal(format!("the Avro framing: {e}")))?;
                        if v.is_empty() {
                            return Err(Error::invalid_data("the Avro value is empty"));
                        }
                    }
                    let used =
                        d.decode(v).map_err(|e| Error::invalid_data(format!("the Avro value does not decode: {e}")))?;
                    if used != v.len() {
                        return Err(Error::invalid_data(format!(
                            "the Avro value has {} bytes after its record",
                            v.len() - used
                        )));
                    }
                }
                let b = d.flush().map_err(|e| Error::invalid_data(format!("the Avro value does not decode: {e}")))?;
                // Each value one whole record: a value that holds less (a Confluent prefix with no
                // datum, say) gives fewer rows, and leaves the decoder mid-record.
                let rows = b.as_ref().map_or(0, RecordBatch::num_rows);
                if rows != values.len() {
                    return Err(Error::invalid_data(format!("{} Avro values gave {rows} rows", values.len())));
                }
                Ok(b)
            })();
            let b = match res {
                Ok(b) => b,
                Err(e) => {
                    // A decoder stopped mid-record is not reused.
                    *d = avro_decoder(id, schema)?;
                    return Err(e);
                }
            };
            if let Some(b) = b {
                batches.push(self.by_name(&b)?);
            }
            Ok(())
        };
        for r in recs {
            let v = r.value.as_deref().ok_or_else(|| Error::invalid_data("the record has no value"))?;
            let id = if plain { 0 } else { confluent_id(v)? };
            match &mut run {
                Some((rid, vals)) if *rid == id => vals.push(v),
                _ => {
                    if let Some((rid, vals)) = run.take() {
                        flush(rid, vals, &mut cache)?;
                    }
                    run = Some((id, vec![v]));
                }
            }
        }
        if let Some((rid, vals)) = run.take() {
            flush(rid, vals, &mut cache)?;
        }
        Ok(datafusion::arrow::compute::concat_batches(&self.value_schema, &batches)?)
    }

    /// The value schema's columns from a decoded batch, by name, cast to the declared types.
    fn by_name(&self, b: &RecordBatch) -> Result<RecordBatch> {
        let mut cols = vec![];
        for f in self.value_schema.fields() {
            let c = b
                .column_by_name(f.name())
                .ok_or_else(|| Error::invalid_data(format!("the Avro record has no field '{}'", f.name())))?;
            cols.push(if c.data_type() == f.data_type() {
                c.clone()
            } else {
                datafusion::arrow::compute::cast(c, f.data_type()).map_err(|e| {
                    Error::invalid_data(format!(
                        "the Avro field '{}' does not convert to {}: {e}",
                        f.name(),
                        f.data_type()
                    ))
                })?
            });
        }
        Ok(RecordBatch::try_new(self.value_schema.clone(), cols)?)
    }

    /// The writer schema of `id` as the registry gave it (cached in the decoders' map by id).
    fn avro_schema_of(&self, id: u32) -> Result<String> {
        registry_schema(self.registry.as_deref().unwrap_or_default(), id)
    }

    /// Fetches the writer schema of every schema id in `recs` not seen before. Fails with `IO`
    /// when the registry cannot be reached (the reader retries; the records wait in `pending`).
    fn fetch_schemas(&mut self, recs: &BTreeMap<(usize, i32), Vec<Rec>>) -> Result<()> {
        let mut ids: Vec<u32> =
            recs.values().flatten().filter_map(|r| r.value.as_deref().and_then(|v| confluent_id(v).ok())).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if self.avro.lock().contains_key(&id) {
                continue;
            }
            // An id the registry does not have fails its records (on_error), not the source.
            match self.avro_schema_of(id).and_then(|schema| Ok((avro_decoder(id, &schema)?, schema))) {
                Ok((d, schema)) => {
                    self.avro.lock().insert(id, (schema, d));
                }
                Err(e) if e.kind() == crate::error::ErrorKind::Io => return Err(e),
                Err(e) => log::warn!(target: "laminardb", "source '{}': {e}", self.source),
            }
        }
        Ok(())
    }

    /// The name of a partition in positions and metrics: its number, or with `topic-pattern`
    /// `topic/number`.
    fn key(&self, topic: usize, partition: i32) -> String {
        if self.pattern.is_some() { format!("{}/{partition}", self.topics[topic]) } else { partition.to_string() }
    }

    /// Every few seconds: each partition's lag, from its high watermark (as the last fetch
    /// response carried it, else asked of the broker).
    fn update_lag(&mut self) {
        // Until a lag is known (the consumer has a position), every 100 ms for up to 5 s: the
        // first known lag decides whether a catch-up is logged.
        let every = if matches!(self.catch_up, CatchUp::Unchecked(_)) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.lag_checked.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.lag_checked = Some(std::time::Instant::now());
        let Some(c) = self.consumer.as_ref() else { return };
        let Ok(assigned) = c.assignment() else { return };
        for e in assigned.elements() {
            // The high watermark the last fetch response carried (no request), else one asked
            // of the broker: a query can time out while the consumer is busy fetching.
            let Some(high) = cached_high_watermark(c, e.topic(), e.partition())
                .or_else(|| c.fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500)).ok().map(|w| w.1))
            else {
                continue;
            };
            let consumed = c.position().ok().and_then(|p| match p.find_partition(e.topic(), e.partition())?.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            let mut st = self.stats.lock();
            let key = match self.topics.iter().position(|t| t == e.topic()) {
                Some(t) => self.key(t, e.partition()),
                None => continue,
            };
            let s = st.entry(key).or_default();
            s.lag = s.position.or(consumed).map(|p| (high - p).max(0));
        }
        let (lag, known) = {
            let st = self.stats.lock();
            (st.values().filter_map(|s| s.lag).sum::<i64>(), st.values().any(|s| s.lag.is_some()))
        };
        self.catch_up = match std::mem::take(&mut self.catch_up) {
            CatchUp::Unchecked(n) if !known && n < 50 => CatchUp::Unchecked(n + 1),
            CatchUp::Unchecked(_) if known && lag >= CATCH_UP_LOG_MIN => {
                log::info!(target: "laminardb", "KAFKA source '{}': catching up, {lag} records behind the end of its partitions", self.source);
                CatchUp::Running { since: std::time::Instant::now(), from: lag }
            }
            CatchUp::Unchecked(_) => CatchUp::Done,
            CatchUp::Running { since, from } if lag < (from / 100).max(CATCH_UP_LOG_MIN) => {
                log::info!(
                    target: "laminardb",
                    "KAFKA source '{}': caught up ({lag} records behind) after {:.1} s",
                    self.source,
                    since.elapsed().as_secs_f64()
                );
                CatchUp::Done
            }
            CatchUp::Running { since, from } => {
                let read = (from - lag).max(0);
                log::info!(
                    target: "laminardb",
                    "KAFKA source '{}': catching up, {lag} records behind ({:.0}% of {from} done, {:.0} records/s)",
                    self.source,
                    read as f64 * 100.0 / from as f64,
                    read as f64 / since.elapsed().as_secs_f64().max(1e-3)
                );
                CatchUp::Running { since, from }
            }
            CatchUp::Done => CatchUp::Done,
        };
    }

    /// Every `scan.topic-partition-discovery.interval`: asks the brokers for partitions added to
    /// the topic (and topics created that match `topic-pattern`) since the reader opened, and
    /// reads each from its beginning, as Flink does. The new partition is named at once with
    /// [`FROM_BEGINNING`] as its position, so it holds the watermark back like every other
    /// partition until it has data, and a restart reads it from the beginning. A request that
    /// fails is asked again at the next interval (the source's reads report the outage).
    fn discover(&mut self) {
        let Some(every) = self.discovery else { return };
        if self.discovered_at.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.discovered_at = Some(std::time::Instant::now());
        let Some(consumer) = self.consumer.as_ref() else { return };
        let asked = if self.pattern.is_some() { None } else { Some(self.topic.as_str()) };
        let md = match consumer.fetch_metadata(asked, Duration::from_secs(2)) {
            Ok(m) => m,
            Err(e) => {
                log::debug!(target: "laminardb", "KAFKA source '{}': looking for new partitions: {e}", self.source);
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        let mut found = vec![];
        for t in md.topics() {
            let wanted = match &self.pattern {
                None => t.name() == self.topic,
                Some(re) => !t.name().starts_with("__") && re.is_match(t.name()),
            };
            if !wanted || t.error().is_some() || t.partitions().is_empty() {
                continue;
            }
            let ti = match self.topics.iter().position(|x| x == t.name()) {
                Some(i) => i,
                None => {
                    self.topics.push(t.name().to_string());
                    self.partitions.push(0);
                    self.topics.len() - 1
                }
            };
            let n = t.partitions().len() as i32;
            for p in self.partitions[ti]..n {
                if tpl.add_partition_offset(t.name(), p, Offset::Beginning).is_ok() {
                    found.push((ti, p));
                }
            }
        }
        if found.is_empty() {
            return;
        }
        if let Err(e) = consumer.incremental_assign(&tpl) {
            log::warn!(target: "laminardb", "KAFKA source '{}': cannot read the new partitions: {e}", self.source);
            return;
        }
        let names: Vec<String> = found.iter().map(|(t, p)| format!("{}/{p}", self.topics[*t])).collect();
        log::info!(target: "laminardb", "KAFKA source '{}': reading new partitions {}", self.source, clip(&names.join(", ")));
        for (ti, p) in found {
            self.partitions[ti] = self.partitions[ti].max(p + 1);
            self.stats.lock().entry(self.key(ti, p)).or_default();
            let empty = RecordBatch::new_empty(self.schema.clone());
            let partition = self.key(ti, p);
            self.ready
                .push_back(Poll::Data(empty, Position { partition, offset: FROM_BEGINNING.into(), finished: false }));
        }
    }

    /// The declared columns: decoded values and metadata, in the source's order.
    fn assemble(&self, values: RecordBatch, recs: &[Rec]) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (f, c) in self.schema.fields().iter().zip(&self.columns) {
            let a: ArrayRef = match c {
                Ok(i) => values.column(*i).clone(),
                Err(Meta::Key) => Arc::new(BinaryArray::from_iter(recs.iter().map(|r| r.key.as_deref()))),
                Err(Meta::Partition) => Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.partition as i64))),
                Err(Meta::Offset) => Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.offset))),
                Err(Meta::Timestamp) => {
                    Arc::new(TimestampMillisecondArray::from_iter(recs.iter().map(|r| r.timestamp)))
                }
                Err(Meta::Topic) => {
                    Arc::new(StringArray::from_iter_values(recs.iter().map(|r| self.topics[r.topic].as_str())))
                }
            };
            let a = if a.data_type() == f.data_type() {
                a
            } else if a.is_empty() {
                new_null_array(f.data_type(), 0)
            } else {
                datafusion::arrow::compute::cast(&a, f.data_type()).map_err(|e| {
                    Error::invalid_argument(format!("column '{}' of KAFKA source '{}': {e}", f.name(), self.source))
                })?
            };
            cols.push(a);
        }
        if self.format == Format::DebeziumJson || self.tombstone_key.is_some() {
            cols.push(values.column(values.num_columns() - 1).clone());
        }
        Ok(RecordBatch::try_new(self.out_schema.clone(), cols)?)
    }
}

impl SourceReader for KafkaSource {
    fn describe(&self) -> String {
        let what = if self.pattern.is_some() { "topics matching" } else { "topic" };
        format!("KAFKA {what} '{}' on '{}'", clip(&self.topic), clip(&self.servers))
    }

    fn open(&mut self, positions: &Positions) -> Result<()> {
        let consumer: BaseConsumer = self
            .config
            .create()
            .map_err(|e| Error::invalid_argument(format!("KAFKA source '{}': {e}", self.source)))?;
        let topics: Vec<(String, i32)> = match &self.pattern {
            None => vec![(self.topic.clone(), topic_must_exist(consumer.client(), &self.topic, &self.servers)?)],
            Some(re) => {
                let md = consumer
                    .fetch_metadata(None, CALL_TIMEOUT)
                    .map_err(|e| kafka_error("cannot list the topics", &self.servers, e))?;
                let mut found: Vec<(String, i32)> = md
                    .topics()
                    .iter()
                    .filter(|t| !t.name().starts_with("__") && re.is_match(t.name()) && t.error().is_none())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(Error::not_found(format!(
                        "no topic on brokers '{}' matches topic-pattern '{}'",
                        clip(&self.servers),
                        clip(&self.topic)
                    )));
                }
                found
            }
        };
        self.topics = topics.iter().map(|t| t.0.clone()).collect();
        let mut tpl = TopicPartitionList::new();
        let mut by_time = TopicPartitionList::new();
        if let Some(p) = &self.task
            && let Some((t, n)) = topics.iter().find(|(_, n)| *p >= *n)
        {
            return Err(Error::invalid_argument(format!(
                "KAFKA source '{}': topic '{}' has {n} partitions, so it has no partition {p} for this member's task (every topic of a group must have as many partitions as the others)",
                self.source,
                clip(t)
            )));
        }
        let read = |parts: i32| -> std::ops::Range<i32> {
            match &self.task {
                Some(p) => *p..*p + 1,
                None => 0..parts,
            }
        };
        for (ti, (topic, parts)) in topics.iter().enumerate() {
            for p in read(*parts) {
                let offset = match positions.get(&self.key(ti, p)) {
                    Some(o) => match o.parse::<i64>() {
                        Ok(n) if n >= 0 => Offset::Offset(n),
                        Ok(_) => Offset::Beginning,
                        Err(_) => {
                            return Err(Error::invalid_data(format!(
                                "KAFKA source '{}': recorded offset '{}' is not a number",
                                self.source,
                                clip(o)
                            )));
                        }
                    },
                    None => match self.startup {
                        Startup::Earliest => Offset::Beginning,
                        Startup::Latest => Offset::End,
                        Startup::Group => Offset::Stored,
                        Startup::Timestamp(ms) => {
                            by_time
                                .add_partition_offset(topic, p, Offset::Offset(ms))
                                .map_err(|e| kafka_error("cannot look up offsets by time", &self.servers, e))?;
                            continue;
                        }
                    },
                };
                if let Offset::Offset(n) = offset {
                    // Known before any record is read: a restored partition at its end says so.
                    self.stats.lock().entry(self.key(ti, p)).or_default().position = Some(n);
                }
                tpl.add_partition_offset(topic, p, offset)
                    .map_err(|e| kafka_error("cannot assign partitions", &self.servers, e))?;
            }
        }
        if by_time.count() > 0 {
            let found = consumer
                .offsets_for_times(by_time, CALL_TIMEOUT)
                .map_err(|e| kafka_error("cannot look up offsets by time", &self.servers, e))?;
            for e in found.elements() {
                let o = match e.offset() {
                    Offset::Offset(n) => Offset::Offset(n),
                    _ => Offset::End,
                };
                tpl.add_partition_offset(e.topic(), e.partition(), o)
                    .map_err(|e| kafka_error("cannot assign partitions", &self.servers, e))?;
            }
        }
        consumer.assign(&tpl).map_err(|e| kafka_error("cannot assign partitions", &self.servers, e))?;
        self.consumer = Some(consumer);
        self.partitions = topics.iter().map(|t| t.1).collect();
        self.discovered_at = Some(std::time::Instant::now());
        // Every partition holds the watermark back until it has data (the watermark is the
        // minimum over the partitions): announced with an empty batch and no offset to record.
        self.ready.clear();
        for (ti, (_, parts)) in topics.iter().enumerate() {
            for p in read(*parts) {
                let empty = RecordBatch::new_empty(self.schema.clone());
                let partition = self.key(ti, p);
                self.ready.push_back(Poll::Data(empty, Position { partition, offset: String::new(), finished: false }));
            }
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll> {
        if let Some(p) = self.ready.pop_front() {
            return Ok(p);
        }
        self.discover();
        if let Some(p) = self.ready.pop_front() {
            return Ok(p);
        }
        let consumer = self.consumer.as_ref().expect("opened");
        let mut by_part: BTreeMap<(usize, i32), Vec<Rec>> = std::mem::take(&mut self.pending);
        let mut n = 0;
        let mut wait = Duration::from_millis(100);
        // librdkafka queues an error event per failed connection attempt and reconnects on its
        // own: every queued error is taken now (not one per retry, which would keep stale errors
        // of an outage long over), and the poll fails only when errors came and no record did.
        let mut error = None;
        let mut errors = 0;
        while n < self.max_batch && errors < 10_000 {
            match consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::UnknownTopicOrPartition)) {
                        return Err(Error::not_found(format!(
                            "topic '{}' (brokers '{}'): {e}",
                            clip(&self.topic),
                            clip(&self.servers)
                        )));
                    }
                    error = Some(e);
                    errors += 1;
                    wait = Duration::ZERO;
                }
                Some(Ok(m)) => {
                    let topic = if self.topics.len() == 1 {
                        0
                    } else {
                        self.topics.iter().position(|t| t == m.topic()).unwrap_or(0)
                    };
                    by_part.entry((topic, m.partition())).or_default().push(Rec {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        deleted: false,
                    });
                    n += 1;
                    wait = Duration::ZERO;
                }
            }
        }
        if let Some(e) = error
            && n == 0
        {
            return Err(kafka_error(&format!("reading topic '{}'", clip(&self.topic)), &self.servers, e));
        }
        if self.format == Format::AvroConfluent
            && let Err(e) = self.fetch_schemas(&by_part)
        {
            self.pending = by_part;
            return Err(e);
        }
        for ((t, p), mut recs) in by_part {
            let key = self.key(t, p);
            let next = recs.last().map(|r| r.offset + 1).expect("not empty");
            {
                let mut st = self.stats.lock();
                let e = st.entry(key.clone()).or_default();
                e.records += recs.len() as u64;
                e.bytes += recs.iter().map(|r| r.value.as_ref().map_or(0, Vec::len) as u64).sum::<u64>();
                e.position = Some(next);
            }
            if self.format == Format::DebeziumJson {
                // Tombstones follow Debezium's deletes for log compaction: nothing to apply.
                recs.retain(|r| r.value.is_some());
            }
            if let Some(cols) = &self.tombstone_key {
                for r in recs.iter_mut().filter(|r| r.value.is_none()) {
                    r.value = r.key.as_deref().and_then(|k| key_object(k, cols));
                    r.deleted = true;
                }
            }
            let mut letters = vec![];
            let values = self.decode(&mut recs, &mut letters)?;
            let batch = self.assemble(values, &recs)?;
            let pos = Position { partition: key, offset: next.to_string(), finished: false };
            if !letters.is_empty() {
                let rows = crate::connector::dead_letter_batch(&self.source, &pos.partition, &letters)?;
                self.ready.push_back(Poll::DeadLetters(rows, pos.clone()));
            }
            self.ready.push_back(Poll::Data(batch, pos));
        }
        self.update_lag();
        Ok(self.ready.pop_front().unwrap_or(Poll::Pending))
    }

    fn poll_interval(&self) -> Duration {
        Duration::ZERO
    }

    fn stats(&self) -> Option<crate::connector::SourceStats> {
        Some(self.stats.clone())
    }

    /// Commits the checkpoint's offsets as the consumer group's (asynchronously: a failure is
    /// logged, and the next checkpoint commits again). Monitoring tools read the group's lag from
    /// them; recovery seeks to the checkpoint's own offsets, never to these.
    fn checkpointed(&mut self, positions: &Positions) {
        if self.task.is_some() {
            // A group's task: its sinks commit the offsets in their transactions.
            return;
        }
        let Some(c) = self.consumer.as_ref() else { return };
        let mut tpl = TopicPartitionList::new();
        for (key, offset) in positions {
            let Ok(o) = offset.parse::<i64>() else { continue };
            if o < 0 {
                continue; // a partition found later, none of it read yet
            }
            let (topic, partition) = match key.rsplit_once('/') {
                Some((t, p)) if self.pattern.is_some() => (t, p),
                _ => (self.topics.first().map_or("", String::as_str), key.as_str()),
            };
            let Ok(p) = partition.parse::<i32>() else { continue };
            let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
        }
        if tpl.count() > 0
            && let Err(e) = c.commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            log::warn!(target: "laminardb", "source '{}': committing the group's offsets: {e}", self.source);
        }
    }
}

/// The schema id of a Confluent-framed value (magic byte 0, 4-byte big-endian id).
fn confluent_id(v: &[u8]) -> Result<u32> {
    match v {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(Error::invalid_data(
            "the value is not in Confluent's Avro framing (magic byte 0 and a 4-byte schema id)",
        )),
    }
}

/// A decoder of Confluent-framed values written with schema `id`.
fn avro_decoder(id: u32, schema: &str) -> Result<arrow_avro::reader::Decoder> {
    use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(id), AvroSchema::new(schema.to_string()))
        .map_err(|e| Error::invalid_data(format!("Avro schema id {id}: {e}")))?;
    arrow_avro::reader::ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(1 << 20)
        .build_decoder()
        .map_err(|e| Error::invalid_data(format!("Avro schema id {id} from the registry: {e}")))
}

/// The values of `n` records, each one JSON object, as rows of `schema` (an error names a value
/// that is missing or holds other than one object).
fn json_objects<'a>(schema: SchemaRef, recs: impl Iterator<Item = &'a Rec>, n: usize) -> Result<RecordBatch> {
    let bad = |m: String| Error::invalid_data(m);
    let mut d =
        datafusion::arrow::json::ReaderBuilder::new(schema.clone()).with_batch_size(n.max(1)).build_decoder()?;
    for r in recs {
        let v = r.value.as_deref().ok_or_else(|| bad("the record has no value".into()))?;
        let before = d.len();
        let mut rest = v;
        while !rest.is_empty() {
            let used = d.decode(rest)?;
            if used == 0 {
                break;
            }
            rest = &rest[used..];
        }
        d.decode(b"\n")?;
        if d.len() != before + 1 || d.has_partial_record() {
            return Err(bad(format!("the value holds {} JSON objects, not one", d.len() - before)));
        }
    }
    Ok(d.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// A tombstone's key as the JSON object of the table's key columns: a JSON object as it is (the
/// KAFKA sink writes keys so), or, for a one-column key, a JSON scalar or plain text as that
/// column's value. None: a key this cannot read (the record is then malformed).
fn key_object(key: &[u8], cols: &[String]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(key).ok()?.trim();
    if text.starts_with('{') {
        return Some(text.as_bytes().to_vec());
    }
    let [col] = cols else { return None };
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if !v.is_object() && !v.is_array() => v,
        _ => serde_json::Value::String(text.to_string()),
    };
    let mut m = serde_json::Map::new();
    m.insert(col.clone(), value);
    serde_json::to_vec(&serde_json::Value::Object(m)).ok()
}

/// The schema of [`decoding_source`]: (k BIGINT, s VARCHAR, ts TIMESTAMP, f DOUBLE).
pub(crate) fn decoding_schema() -> SchemaRef {
    use datafusion::arrow::datatypes::{Field, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("f", DataType::Float64, true),
    ]))
}

/// A source that is never started, for its value decoder alone (the tests and the fuzz entry
/// points): `format` as the `format` option, malformed records skipped; for `avro-confluent`,
/// the schema of id 7 is the one derived from the columns.
pub(crate) fn decoding_source(format: &str) -> Result<KafkaSource> {
    let mut m = BTreeMap::new();
    for (k, v) in
        [("topic", "t"), ("properties.bootstrap.servers", "127.0.0.1:1"), ("format", format), ("on_error", "skip")]
    {
        m.insert(k.to_string(), v.to_string());
    }
    if format == "avro-confluent" {
        m.insert("avro-confluent.url".into(), "http://127.0.0.1:1".into());
    }
    let mut s = KafkaSource::new("src", decoding_schema(), None, Options::new("KAFKA source 'src'", &m))?;
    s.topics = vec!["t".into()];
    if format == "avro-confluent" {
        let text = derived_avro_schema(&s.value_schema, "test")?;
        s.avro.lock().insert(7, (text.clone(), avro_decoder(7, &text)?));
    }
    Ok(s)
}

/// Decodes `values` as the records of one poll of a `format` source (the fuzz entry point).
pub(crate) fn decode_values(format: &str, values: &[&[u8]]) -> Result<RecordBatch> {
    let mut s = decoding_source(format)?;
    let mut recs: Vec<Rec> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Rec {
            topic: 0,
            partition: 0,
            offset: i as i64,
            timestamp: None,
            key: None,
            value: Some(v.to_vec()),
            deleted: false,
        })
        .collect();
    s.decode(&mut recs, &mut vec![])
}

#[cfg(test)]
mod tests {
    //! Damaged record values through every format's decoder: each is a malformed record (here
    //! skipped), never a panic.
    use super::*;

    fn schema() -> SchemaRef {
        super::decoding_schema()
    }

    fn source(format: &str) -> KafkaSource {
        super::decoding_source(format).unwrap()
    }

    /// Avro datums of two rows, by arrow-avro's writer (the KAFKA sink's encoder).
    fn avro_rows() -> Vec<Vec<u8>> {
        use arrow_avro::writer::WriterBuilder;
        use arrow_avro::writer::format::AvroBinaryFormat;
        let b = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("héllo"), Some("")])),
                Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from(vec![
                    Some(1_700_000_000_000_000),
                    None,
                ])),
                Arc::new(datafusion::arrow::array::Float64Array::from(vec![Some(1.5), Some(-0.0)])),
            ],
        )
        .unwrap();
        let mut enc = WriterBuilder::new(schema().as_ref().clone()).build_encoder::<AvroBinaryFormat>().unwrap();
        enc.encode(&b).unwrap();
        enc.flush().iter().map(|r| r.to_vec()).collect()
    }

    fn rec(value: &[u8]) -> Rec {
        Rec {
            topic: 0,
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            value: Some(value.to_vec()),
            deleted: false,
        }
    }

    #[test]
    fn damaged_values_are_malformed_records_not_panics() {
        let json = br#"{"k": 1, "s": "a\u00e9", "ts": "2024-01-01T00:00:00.5", "f": 1.5}"#.to_vec();
        let avro = avro_rows();
        let confluent: Vec<Vec<u8>> = avro.iter().map(|r| [&[0, 0, 0, 0, 7][..], r].concat()).collect();
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("json", vec![json.clone(), b"{}".to_vec()]),
            ("csv", vec![b"1,a,2024-01-01T00:00:00,1.5".to_vec(), b",,,".to_vec()]),
            (
                "debezium-json",
                vec![
                    [&br#"{"before": null, "after": "#[..], &json, br#", "op": "c"}"#].concat(),
                    [&br#"{"before": "#[..], &json, br#", "after": null, "op": "d"}"#].concat(),
                ],
            ),
            ("avro", avro.clone()),
            ("avro-confluent", confluent),
        ];
        for (format, seeds) in cases {
            let which = ["json", "csv", "debezium-json", "avro", "avro-confluent"].iter().position(|f| *f == format);
            let joined: Vec<u8> = seeds.join(&0xffu8);
            crate::util::write_fuzz_seeds("kafka_values", &[which.unwrap() as u8], &[joined]);
            let good = seeds[0].clone();
            // The seeds decode before they are damaged.
            let mut recs = vec![rec(&good)];
            assert_eq!(source(format).decode(&mut recs, &mut vec![]).unwrap().num_rows(), 1, "{format}");
            crate::util::decode_damaged(&format!("KAFKA {format} values"), &seeds, 1500, |v| {
                let mut s = source(format);
                let mut recs = vec![rec(&good), rec(v), rec(&good)];
                if let Ok(b) = s.decode(&mut recs, &mut vec![]) {
                    assert_eq!(b.num_rows(), recs.len(), "one row per record kept");
                }
            });
        }
    }
}
