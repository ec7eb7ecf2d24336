//! The `KAFKA` connector (cargo feature `kafka`, librdkafka through the `rdkafka` crate): a topic
//! as a source (every partition, offsets in the checkpoint, so a restart resumes exactly where
//! the restored state stops) and as a sink (one Kafka transaction per epoch, committed once the
//! epoch's checkpoint is durable).
//!
//! | option | as | meaning |
//! |---|---|---|
//! | `topic` | both | the topic (it must exist: nothing is created) |
//! | `properties.bootstrap.servers` | both | the brokers, `host:port,…` |
//! | `properties.<name>` | both | passed to librdkafka as `<name>` (`properties.group.id`, `properties.security.protocol`, …) |
//! | `format` | both | `json` (one object per record), `csv` (one line per record, columns by position), `raw` (source: the value as the one `VARCHAR`/`BYTES` column) |
//! | `scan.startup.mode` | source | where partitions without a recorded offset start: `earliest-offset` (default), `latest-offset`, `group-offsets` (the group's committed offsets, else earliest), `timestamp` |
//! | `scan.startup.timestamp-millis` | source | for `timestamp`: the first record at or after this time (ms since the epoch) |
//! | `scan.max-batch-records` | source | records per batch at most (default 10000) |
//! | `on_error` | source | a record that cannot be decoded: `fail` (default; the error names partition and offset) or `skip` (counted, logged) |
//! | `key` | sink | columns written as the record key (a JSON object, or a CSV line); none by default |
//! | `sink.delivery-guarantee` | sink | `exactly-once` (default) or `at-least-once` |
//! | `sink.transactional-id` | sink | the transactional id (default `laminardb-<sink>-<topic>`); one writer per id |
//!
//! Source metadata columns, filled when declared: `_key` (`VARCHAR` or `BYTES`), `_partition`
//! (`INT`/`BIGINT`), `_offset` (`BIGINT`), `_timestamp` (`TIMESTAMP`).
//!
//! The exactly-once sink keeps the results of the open epoch, writes them into a transaction as
//! they come, and at the checkpoint flushes the transaction and stores the epoch's results in
//! the checkpoint; once the checkpoint is durable it commits the transaction together with a
//! marker (the offset of the consumer group named by the transactional id, on partition 0 of
//! the topic, set to the epoch). After a crash, the new producer's `init_transactions` fences
//! the old one and aborts its open transaction; if the restored checkpoint's epoch is above the
//! marker, its transaction never committed, and the stored results are written again in a new
//! transaction. A `read_committed` consumer sees every result once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, Int64Array, StringArray, TimestampMillisecondArray, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, TopicPartitionList as Tpl};

use super::{OnError, Options, Poll, Position, Positions, Sink, SourceReader};
use crate::error::{Error, ErrorKind, Result, clip};

/// How long a metadata request, a flush or a transaction call may take before it is an `IO`
/// error (the source's reader then retries; a sink fails).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn kafka_error(what: &str, servers: &str, e: KafkaError) -> Error {
    Error::new(ErrorKind::Io, format!("{what} (brokers '{}'): {e}", clip(servers)))
}

/// The format of a record's value (and a sink's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Raw,
}

fn format_option(o: &mut Options, sink: bool) -> Result<Format> {
    let choices: &[&'static str] = if sink { &["json", "csv"] } else { &["json", "csv", "raw"] };
    Ok(match o.choice("format", choices, "json")? {
        "csv" => Format::Csv,
        "raw" => Format::Raw,
        _ => Format::Json,
    })
}

/// `properties.bootstrap.servers` (required) and every other `properties.*` option.
fn client_config(o: &mut Options) -> Result<(String, ClientConfig)> {
    let servers = o.required("properties.bootstrap.servers")?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &servers);
    for (k, v) in o.prefixed("properties.") {
        c.set(k, v);
    }
    Ok((servers, c))
}

fn topic_must_exist<C: ClientContext>(client: &rdkafka::client::Client<C>, topic: &str, servers: &str) -> Result<i32> {
    let md = client
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .map_err(|e| kafka_error(&format!("cannot read the metadata of topic '{}'", clip(topic)), servers, e))?;
    let t = md.topics().iter().find(|t| t.name() == topic);
    match t {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
        Some(t)
            if t.error().is_some_and(|e| RDKafkaErrorCode::from(e) != RDKafkaErrorCode::UnknownTopicOrPartition) =>
        {
            Err(Error::new(
                ErrorKind::Io,
                format!("topic '{}' (brokers '{}'): {:?}", clip(topic), clip(servers), t.error()),
            ))
        }
        _ => Err(Error::not_found(format!(
            "topic '{}' does not exist on brokers '{}' (LaminarDB creates no topics)",
            clip(topic),
            clip(servers)
        ))),
    }
}

// ------------------------------------------------------------------------------------ source

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
}

/// One record, copied out of librdkafka's buffer.
struct Rec {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

pub(crate) struct KafkaSource {
    source: String,
    topic: String,
    servers: String,
    config: ClientConfig,
    format: Format,
    startup: Startup,
    on_error: OnError,
    max_batch: usize,
    /// The declared schema, the part decoded from the value, and where each column comes from.
    schema: SchemaRef,
    value_schema: SchemaRef,
    columns: Vec<Result<usize, Meta>>,
    consumer: Option<BaseConsumer>,
    ready: VecDeque<(RecordBatch, Position)>,
    stats: super::SourceStats,
    /// When the partitions' high watermarks (for the lag) were last asked for.
    lag_checked: Option<std::time::Instant>,
}

impl KafkaSource {
    pub(crate) fn new(source: &str, schema: SchemaRef, mut o: Options) -> Result<KafkaSource> {
        let topic = o.required("topic")?;
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
            None => 10_000,
            Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "KAFKA source '{source}': option 'scan.max-batch-records' must be a positive integer, got '{}'",
                    clip(&v)
                ))
            })?,
        };
        let on_error = OnError::from_options(&mut o)?;
        o.finish()?;
        if config.get("group.id").is_none() {
            config.set("group.id", format!("laminardb-{source}"));
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
        Ok(KafkaSource {
            source: source.to_string(),
            topic,
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
            stats: Default::default(),
            lag_checked: None,
        })
    }

    /// Decodes the values of `recs` (one partition's, in offset order) into rows of the value
    /// schema, one row per record; the records that fail with `on_error = 'skip'` are dropped
    /// from `recs`.
    fn decode(&mut self, recs: &mut Vec<Rec>) -> Result<RecordBatch> {
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
                    let at = format!("topic '{}' partition {} offset {}", clip(&self.topic), r.partition, r.offset);
                    match self.on_error {
                        OnError::Fail => {
                            return Err(Error::invalid_data(format!(
                                "cannot decode the record at {at}: {}",
                                e.message()
                            )));
                        }
                        OnError::Skip => {
                            self.stats.lock().entry(r.partition.to_string()).or_default().malformed += 1;
                            log::warn!(target: "laminardb", "source '{}': skipped the record at {at}: {}", self.source, e.message());
                        }
                    }
                }
            }
        }
        *recs = good;
        Ok(datafusion::arrow::compute::concat_batches(&self.value_schema, &batches)?)
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
            Format::Json => {
                let mut d = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(n.max(1))
                    .build_decoder()?;
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
                let b = d.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
                Ok(b)
            }
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

    /// Every few seconds: each partition's lag, from its high watermark (one request each).
    fn update_lag(&mut self) {
        if self.lag_checked.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return;
        }
        self.lag_checked = Some(std::time::Instant::now());
        let Some(c) = self.consumer.as_ref() else { return };
        let Ok(assigned) = c.assignment() else { return };
        for e in assigned.elements() {
            let Ok((_, high)) = c.fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500)) else {
                continue;
            };
            let consumed = c.position().ok().and_then(|p| match p.find_partition(e.topic(), e.partition())?.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            let mut st = self.stats.lock();
            let s = st.entry(e.partition().to_string()).or_default();
            s.lag = s.position.or(consumed).map(|p| (high - p).max(0));
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
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

impl SourceReader for KafkaSource {
    fn describe(&self) -> String {
        format!("KAFKA topic '{}' on '{}'", clip(&self.topic), clip(&self.servers))
    }

    fn open(&mut self, positions: &Positions) -> Result<()> {
        let consumer: BaseConsumer = self
            .config
            .create()
            .map_err(|e| Error::invalid_argument(format!("KAFKA source '{}': {e}", self.source)))?;
        let parts = topic_must_exist(consumer.client(), &self.topic, &self.servers)?;
        let mut tpl = TopicPartitionList::new();
        let mut by_time = TopicPartitionList::new();
        for p in 0..parts {
            let offset = match positions.get(&p.to_string()) {
                Some(o) => Offset::Offset(o.parse().map_err(|_| {
                    Error::invalid_data(format!(
                        "KAFKA source '{}': recorded offset '{}' is not a number",
                        self.source,
                        clip(o)
                    ))
                })?),
                None => match self.startup {
                    Startup::Earliest => Offset::Beginning,
                    Startup::Latest => Offset::End,
                    Startup::Group => Offset::Stored,
                    Startup::Timestamp(ms) => {
                        by_time
                            .add_partition_offset(&self.topic, p, Offset::Offset(ms))
                            .map_err(|e| kafka_error("cannot look up offsets by time", &self.servers, e))?;
                        continue;
                    }
                },
            };
            tpl.add_partition_offset(&self.topic, p, offset)
                .map_err(|e| kafka_error("cannot assign partitions", &self.servers, e))?;
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
                tpl.add_partition_offset(&self.topic, e.partition(), o)
                    .map_err(|e| kafka_error("cannot assign partitions", &self.servers, e))?;
            }
        }
        consumer.assign(&tpl).map_err(|e| kafka_error("cannot assign partitions", &self.servers, e))?;
        self.consumer = Some(consumer);
        // Every partition holds the watermark back until it has data (the watermark is the
        // minimum over the partitions): announced with an empty batch and no offset to record.
        self.ready.clear();
        for p in 0..parts {
            let empty = RecordBatch::new_empty(self.schema.clone());
            self.ready
                .push_back((empty, Position { partition: p.to_string(), offset: String::new(), finished: false }));
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll> {
        if let Some((b, p)) = self.ready.pop_front() {
            return Ok(Poll::Data(b, p));
        }
        let consumer = self.consumer.as_ref().expect("opened");
        let mut by_part: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
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
                    by_part.entry(m.partition()).or_default().push(Rec {
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
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
        for (p, mut recs) in by_part {
            let next = recs.last().map(|r| r.offset + 1).expect("not empty");
            {
                let mut st = self.stats.lock();
                let e = st.entry(p.to_string()).or_default();
                e.records += recs.len() as u64;
                e.bytes += recs.iter().map(|r| r.value.as_ref().map_or(0, Vec::len) as u64).sum::<u64>();
                e.position = Some(next);
            }
            let values = self.decode(&mut recs)?;
            let batch = self.assemble(values, &recs)?;
            let pos = Position { partition: p.to_string(), offset: next.to_string(), finished: false };
            self.ready.push_back((batch, pos));
        }
        self.update_lag();
        Ok(match self.ready.pop_front() {
            Some((b, p)) => Poll::Data(b, p),
            None => Poll::Pending,
        })
    }

    fn poll_interval(&self) -> Duration {
        Duration::ZERO
    }

    fn stats(&self) -> Option<super::SourceStats> {
        Some(self.stats.clone())
    }
}

// -------------------------------------------------------------------------------------- sink

/// Remembers the first failed delivery (librdkafka reports them on its own thread).
#[derive(Default)]
struct Delivery {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.failed.lock().get_or_insert_with(|| e.to_string());
        }
    }
}

pub(crate) struct KafkaSink {
    sink: String,
    topic: String,
    servers: String,
    config: ClientConfig,
    format: Format,
    key: Vec<String>,
    exactly_once: bool,
    txn_id: String,
    producer: Option<ThreadedProducer<Delivery>>,
    /// The marker's consumer handle (its group is the transactional id).
    marker: Option<BaseConsumer>,
    in_txn: bool,
    /// The open epoch's results (exactly-once): stored in the checkpoint, written again after a
    /// crash if their transaction did not commit.
    epoch_batches: Vec<RecordBatch>,
}

impl KafkaSink {
    pub(crate) fn new(sink: &str, schema: SchemaRef, mut o: Options) -> Result<KafkaSink> {
        let topic = o.required("topic")?;
        let (servers, config) = client_config(&mut o)?;
        let format = format_option(&mut o, true)?;
        let key: Vec<String> = match o.get("key") {
            None => vec![],
            Some(k) => k.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect(),
        };
        for k in &key {
            if schema.index_of(k).is_err() {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(Error::invalid_argument(format!(
                    "KAFKA sink '{sink}': key column '{}' is not a column of its input (columns: {})",
                    clip(k),
                    names.join(", ")
                )));
            }
        }
        let exactly_once =
            o.choice("sink.delivery-guarantee", &["exactly-once", "at-least-once"], "exactly-once")? == "exactly-once";
        let txn_id = o.get("sink.transactional-id").unwrap_or_else(|| format!("laminardb-{sink}-{topic}"));
        o.finish()?;
        Ok(KafkaSink {
            sink: sink.to_string(),
            topic,
            servers,
            config,
            format,
            key,
            exactly_once,
            txn_id,
            producer: None,
            marker: None,
            in_txn: false,
            epoch_batches: vec![],
        })
    }

    fn err(&self, what: &str, e: KafkaError) -> Error {
        kafka_error(&format!("KAFKA sink '{}': {what}", self.sink), &self.servers, e)
    }

    fn producer(&self) -> &ThreadedProducer<Delivery> {
        self.producer.as_ref().expect("recovered")
    }

    fn connect(&mut self) -> Result<()> {
        let mut c = self.config.clone();
        if c.get("allow.auto.create.topics").is_none() {
            // A producer's default is to let a broker that allows it create a missing topic.
            c.set("allow.auto.create.topics", "false");
        }
        if self.exactly_once {
            c.set("transactional.id", &self.txn_id);
            if c.get("transaction.timeout.ms").is_none() {
                c.set("transaction.timeout.ms", "900000");
            }
        } else if c.get("enable.idempotence").is_none() {
            c.set("enable.idempotence", "true");
        }
        let p: ThreadedProducer<Delivery> = c
            .create_with_context(Delivery::default())
            .map_err(|e| Error::invalid_argument(format!("KAFKA sink '{}': {e}", self.sink)))?;
        topic_must_exist(p.client(), &self.topic, &self.servers)?;
        if self.exactly_once {
            p.init_transactions(CALL_TIMEOUT).map_err(|e| self.err("cannot start transactions", e))?;
            let mut mc = self.config.clone();
            mc.set("group.id", &self.txn_id)
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed");
            let marker: BaseConsumer =
                mc.create().map_err(|e| Error::invalid_argument(format!("KAFKA sink '{}': {e}", self.sink)))?;
            self.marker = Some(marker);
        }
        self.producer = Some(p);
        Ok(())
    }

    /// The last epoch whose transaction committed (the marker), if any.
    fn committed_epoch(&self) -> Result<Option<u64>> {
        let mut tpl = Tpl::new();
        tpl.add_partition(&self.topic, 0);
        let got = self
            .marker
            .as_ref()
            .expect("connected")
            .committed_offsets(tpl, CALL_TIMEOUT)
            .map_err(|e| self.err("cannot read the last committed epoch", e))?;
        Ok(got.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(n) if n >= 0 => Some(n as u64),
            _ => None,
        }))
    }

    fn serialize(&self, batch: &RecordBatch) -> Result<(Vec<Vec<u8>>, Option<Vec<Vec<u8>>>)> {
        let values = self.lines(batch)?;
        let keys = if self.key.is_empty() {
            None
        } else {
            let idx: Vec<usize> =
                self.key.iter().map(|k| batch.schema().index_of(k)).collect::<std::result::Result<_, _>>()?;
            Some(self.lines(&batch.project(&idx)?)?)
        };
        Ok((values, keys))
    }

    /// One line per row, in the sink's format.
    fn lines(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let mut buf = Vec::new();
        match self.format {
            Format::Csv => {
                let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(false).build(&mut buf);
                w.write(batch)?;
            }
            _ => {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                w.write(batch)?;
                w.finish()?;
            }
        }
        let mut out: Vec<Vec<u8>> = buf.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        if out.last().is_some_and(Vec::is_empty) {
            out.pop();
        }
        if out.len() != batch.num_rows() {
            return Err(Error::internal(format!(
                "KAFKA sink '{}': {} rows serialized as {} lines",
                self.sink,
                batch.num_rows(),
                out.len()
            )));
        }
        Ok(out)
    }

    fn produce(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.exactly_once && !self.in_txn {
            self.producer().begin_transaction().map_err(|e| self.err("cannot begin a transaction", e))?;
            self.in_txn = true;
        }
        let (values, keys) = self.serialize(batch)?;
        let p = self.producer();
        for (i, v) in values.iter().enumerate() {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).payload(&v[..]);
            if let Some(k) = &keys {
                rec = rec.key(&k[i][..]);
            }
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(self.err("cannot produce", e)),
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.producer().flush(CALL_TIMEOUT).map_err(|e| self.err("cannot flush", e))?;
        if let Some(e) = self.producer().context().failed.lock().take() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("KAFKA sink '{}': a record was not delivered: {e}", self.sink),
            ));
        }
        Ok(())
    }

    fn commit_marked(&mut self, epoch: u64) -> Result<()> {
        let mut tpl = Tpl::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(epoch as i64))
            .map_err(|e| self.err("cannot record the epoch", e))?;
        let cgm = self
            .marker
            .as_ref()
            .expect("connected")
            .group_metadata()
            .ok_or_else(|| Error::internal("KAFKA sink: no consumer group metadata"))?;
        let p = self.producer();
        p.send_offsets_to_transaction(&tpl, &cgm, CALL_TIMEOUT).map_err(|e| self.err("cannot record the epoch", e))?;
        p.commit_transaction(CALL_TIMEOUT).map_err(|e| self.err("cannot commit the transaction", e))?;
        self.in_txn = false;
        Ok(())
    }
}

fn encode_committable(epoch: u64, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = epoch.to_le_bytes().to_vec();
    out.extend(crate::durable::encode_lists(&[batches.to_vec()])?);
    Ok(out)
}

fn decode_committable(c: &[u8]) -> Result<(u64, Vec<RecordBatch>)> {
    if c.len() < 8 {
        return Err(Error::invalid_data("a KAFKA sink's committable in the checkpoint is truncated"));
    }
    let epoch = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
    let mut lists = crate::durable::decode_lists(&c[8..])?;
    Ok((epoch, lists.pop().unwrap_or_default()))
}

impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!(
            "KAFKA topic '{}' on '{}' ({})",
            clip(&self.topic),
            clip(&self.servers),
            if self.exactly_once { "exactly-once" } else { "at-least-once" }
        )
    }

    fn write(&mut self, _epoch: u64, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.produce(batch)?;
        if self.exactly_once {
            self.epoch_batches.push(batch.clone());
        }
        Ok(())
    }

    fn prepare_commit(&mut self, epoch: u64) -> Result<Vec<u8>> {
        self.flush()?;
        if !self.exactly_once || !self.in_txn {
            return Ok(vec![]);
        }
        encode_committable(epoch, &self.epoch_batches)
    }

    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<()> {
        if self.exactly_once && self.in_txn && !committable.is_empty() {
            self.commit_marked(epoch)?;
        }
        self.epoch_batches.clear();
        Ok(())
    }

    fn recover(&mut self, restored: Option<&[u8]>) -> Result<()> {
        self.producer = None;
        self.in_txn = false;
        self.epoch_batches.clear();
        self.connect()?;
        let Some(c) = restored.filter(|c| !c.is_empty() && self.exactly_once) else { return Ok(()) };
        let (epoch, batches) = decode_committable(c)?;
        if self.committed_epoch()?.is_some_and(|m| m >= epoch) {
            return Ok(());
        }
        // The restored epoch's transaction never committed: write its results again.
        for b in &batches {
            self.produce(b)?;
        }
        if !self.in_txn {
            self.producer().begin_transaction().map_err(|e| self.err("cannot begin a transaction", e))?;
            self.in_txn = true;
        }
        self.flush()?;
        self.commit_marked(epoch)
    }

    fn abort(&mut self) -> Result<()> {
        self.epoch_batches.clear();
        if self.in_txn {
            self.in_txn = false;
            self.producer().abort_transaction(CALL_TIMEOUT).map_err(|e| self.err("cannot abort the transaction", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The exactly-once sink's recovery against the broker of `scripts/services.sh start kafka`:
    //! a crash after the checkpoint is durable and before the transaction commits.
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};

    fn broker() -> String {
        if let Ok(b) = std::env::var("LAMINAR_KAFKA") {
            return b;
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(root.join("target"));
        let env = std::fs::read_to_string(target.join("services.env")).unwrap_or_default();
        env.lines()
            .find_map(|l| l.strip_prefix("LAMINAR_KAFKA="))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no Kafka broker: run `scripts/services.sh start kafka`"))
    }

    fn sink(b: &str, topic: &str) -> KafkaSink {
        let mut m = BTreeMap::new();
        m.insert("topic".to_string(), topic.to_string());
        m.insert("properties.bootstrap.servers".to_string(), b.to_string());
        let schema = Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new("x", DataType::Int64, false)]));
        KafkaSink::new("s", schema, Options::new("KAFKA sink 's'", &m)).unwrap()
    }

    fn batch(xs: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_from_iter(vec![("x", Arc::new(Int64Array::from_iter_values(xs)) as ArrayRef)]).unwrap()
    }

    fn committed_values(b: &str, topic: &str) -> Vec<String> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", b)
            .set("group.id", format!("check-{topic}"))
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let end = c.fetch_watermarks(topic, 0, CALL_TIMEOUT).unwrap().1;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut out = vec![];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                out.push(String::from_utf8(m.unwrap().payload().unwrap().to_vec()).unwrap());
            }
            let pos = c.position().unwrap().elements()[0].offset();
            if matches!(pos, Offset::Offset(o) if o >= end) || end == 0 {
                return out;
            }
            assert!(std::time::Instant::now() < deadline, "did not reach offset {end}");
        }
    }

    #[test]
    fn a_crash_between_the_checkpoint_and_the_commit_writes_the_epoch_again_once() {
        let b = broker();
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let topic = format!("sink-recover-{}-{n}", std::process::id());
        let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
        let t = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
        for r in futures::executor::block_on(admin.create_topics(&[t], &AdminOptions::new())).unwrap() {
            r.unwrap();
        }
        // Epoch 1 committed normally; epoch 2 prepared (its checkpoint durable), then a crash.
        let mut a = sink(&b, &topic);
        a.recover(None).unwrap();
        a.write(1, &batch(0..3)).unwrap();
        let c1 = a.prepare_commit(1).unwrap();
        a.commit(1, &c1).unwrap();
        a.write(2, &batch(3..6)).unwrap();
        let c2 = a.prepare_commit(2).unwrap();
        a.write(3, &batch(100..103)).unwrap(); // the next epoch's results, never checkpointed
        a.flush().unwrap();
        std::mem::forget(a); // no destructor: as if the process died
        assert_eq!(committed_values(&b, &topic).len(), 3, "only epoch 1 is visible before recovery");
        // The next incarnation restores checkpoint 2: fences the old producer, writes epoch 2.
        let mut b2 = sink(&b, &topic);
        b2.recover(Some(&c2)).unwrap();
        let want: Vec<String> = (0..6).map(|x| format!("{{\"x\":{x}}}")).collect();
        assert_eq!(committed_values(&b, &topic), want);
        // A second restart from the same checkpoint finds epoch 2 committed: nothing twice.
        drop(b2);
        let mut b3 = sink(&b, &topic);
        b3.recover(Some(&c2)).unwrap();
        assert_eq!(committed_values(&b, &topic), want);
    }
}
