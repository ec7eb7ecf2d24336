//! The KAFKA sink: JSON/CSV rows, one transaction per epoch committed after the checkpoint with
//! a consumer-group marker, the restored epoch written again if its transaction never committed.

use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::Offset;
use rdkafka::{ClientContext, TopicPartitionList as Tpl};

use super::{Options, Sink};
use crate::error::{Error, ErrorKind, Result, clip};

use super::*;

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
    /// `avro-confluent`: the registry, the subject, and the id of each schema registered.
    registry: Option<String>,
    subject: String,
    avro_ids: std::collections::HashMap<String, u32>,
    /// The input's columns.
    schema: SchemaRef,
    key: Vec<String>,
    exactly_once: bool,
    txn_id: String,
    producer: Option<ThreadedProducer<Delivery>>,
    /// The marker's consumer handle (its group is the transactional id).
    marker: Option<BaseConsumer>,
    in_txn: bool,
    committed: u64,
    aborted: u64,
    /// A consumer group's task (see `db::group`): the group, the input offsets of the epoch being
    /// committed, those last committed, and a handle whose group metadata is the group's (not a
    /// member: Kafka takes a transaction's offsets for a group from any producer).
    group_inputs: Option<(String, Vec<(String, i32, i64)>)>,
    inputs_committed: Vec<(String, i32, i64)>,
    input_group: Option<BaseConsumer>,
    /// The open epoch's results (exactly-once): stored in the checkpoint, written again after a
    /// crash if their transaction did not commit.
    epoch_batches: Vec<RecordBatch>,
}

impl KafkaSink {
    pub(crate) fn new(sink: &str, schema: SchemaRef, mut o: Options) -> Result<KafkaSink> {
        let topic = o.required("topic")?;
        let (servers, config) = client_config(&mut o)?;
        let format = format_option(&mut o, true)?;
        let registry = registry_option(&mut o, format, &format!("KAFKA sink '{sink}'"))?;
        let subject = o.get("avro-confluent.subject");
        if registry.is_none() && subject.is_some() {
            return Err(Error::invalid_argument(format!(
                "KAFKA sink '{sink}': option 'avro-confluent.subject' needs format = 'avro-confluent'"
            )));
        }
        let subject = subject.unwrap_or_else(|| format!("{topic}-value"));
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
        let given = o.get("sink.transactional-id");
        // The task of partition p of a consumer group (set by the engine): a transactional id of
        // its own, so that the next owner of the partition fences this one; by default with the
        // group's name in it, so that two groups never share one.
        let task = (o.get(crate::connector::TASK_PARTITION_OPTION), o.get(crate::connector::TASK_GROUP_OPTION));
        let txn_id = match (given, task) {
            (Some(id), (Some(p), _)) => format!("{id}-p{p}"),
            (None, (Some(p), g)) => format!("laminardb-{}-{sink}-{topic}-p{p}", g.unwrap_or_default()),
            (Some(id), _) => id,
            (None, _) => format!("laminardb-{sink}-{topic}"),
        };
        o.finish()?;
        Ok(KafkaSink {
            sink: sink.to_string(),
            topic,
            servers,
            config,
            format,
            registry,
            subject,
            avro_ids: Default::default(),
            schema,
            key,
            exactly_once,
            txn_id,
            producer: None,
            marker: None,
            in_txn: false,
            committed: 0,
            aborted: 0,
            group_inputs: None,
            inputs_committed: vec![],
            input_group: None,
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
        if self.registry.is_some() {
            // The value schema registered now, so that an unreachable registry fails here and
            // not inside an epoch's transaction.
            let mut cols: Vec<usize> = (0..self.schema.fields().len()).collect();
            if !self.key.is_empty() && self.schema.fields().last().is_some_and(|f| f.name() == "__weight") {
                cols.pop();
            }
            let values = RecordBatch::new_empty(self.schema.clone()).project(&cols)?;
            self.avro_rows(&values)?;
        }
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

    /// The records of `batch`: (key, value), a `None` value a tombstone.
    ///
    /// An append-only input: one record per row. A changelog input (its last column
    /// `__weight`): with `key` columns, upserts — per key, the batch's last row written as the
    /// value, or a tombstone if that row is a retraction (for one key the `-1` comes before the
    /// `+1`, so an update is one record); without, each row with its `__weight`. `debezium-json`:
    /// envelopes, a retraction and an insert of one key in the batch paired as an update.
    fn serialize(&mut self, batch: &RecordBatch) -> Result<Vec<Rec>> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        let keys = if self.key.is_empty() {
            None
        } else {
            let idx: Vec<usize> =
                self.key.iter().map(|k| batch.schema().index_of(k)).collect::<std::result::Result<_, _>>()?;
            Some(self.lines(&batch.project(&idx)?, true)?)
        };
        let key_of = |i: usize| keys.as_ref().map(|k| k[i].clone());
        let changelog = batch.schema().fields().last().is_some_and(|f| f.name() == "__weight");
        if !changelog {
            let values = if self.format == Format::DebeziumJson {
                self.lines(batch, false)?.into_iter().map(|v| envelope(None, Some(&v), "c")).collect()
            } else {
                self.lines(batch, false)?
            };
            return Ok(values.into_iter().enumerate().map(|(i, v)| (key_of(i), Some(v))).collect());
        }
        if keys.is_none() && self.format != Format::DebeziumJson {
            return Ok(self.lines(batch, false)?.into_iter().map(|v| (None, Some(v))).collect());
        }
        let w = batch.column(batch.num_columns() - 1).as_primitive::<Int64Type>().clone();
        let rows = self.lines(&batch.project(&(0..batch.num_columns() - 1).collect::<Vec<_>>())?, false)?;
        let mut out = vec![];
        match &keys {
            Some(k) => {
                // Rows of one key, in order.
                let mut order: Vec<&Vec<u8>> = vec![];
                let mut by_key: std::collections::HashMap<&Vec<u8>, Vec<usize>> = Default::default();
                for (i, key) in k.iter().enumerate() {
                    by_key.entry(key).or_insert_with(|| {
                        order.push(key);
                        vec![]
                    });
                    by_key.get_mut(key).expect("inserted").push(i);
                }
                for key in order {
                    let idx = &by_key[key];
                    let last = *idx.last().expect("not empty");
                    let inserted = w.value(last) > 0;
                    let value = match self.format {
                        Format::DebeziumJson => {
                            let before = idx.iter().find(|i| w.value(**i) < 0).map(|i| &rows[*i][..]);
                            match (before, inserted) {
                                (Some(b), true) => Some(envelope(Some(b), Some(&rows[last]), "u")),
                                (None, true) => Some(envelope(None, Some(&rows[last]), "c")),
                                (Some(b), false) => Some(envelope(Some(b), None, "d")),
                                (None, false) => Some(envelope(Some(&rows[last]), None, "d")),
                            }
                        }
                        _ => inserted.then(|| rows[last].clone()),
                    };
                    out.push((Some(key.clone()), value));
                }
            }
            None => {
                for (i, v) in rows.iter().enumerate() {
                    let e = if w.value(i) > 0 { envelope(None, Some(v), "c") } else { envelope(Some(v), None, "d") };
                    out.push((None, Some(e)));
                }
            }
        }
        Ok(out)
    }

    /// One value per row in the sink's format (a key: JSON with the Avro formats).
    fn lines(&mut self, batch: &RecordBatch, key: bool) -> Result<Vec<Vec<u8>>> {
        if !key && matches!(self.format, Format::Avro | Format::AvroConfluent) {
            return self.avro_rows(batch);
        }
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

    /// One Avro datum per row, with the schema arrow-avro derives from the batch's columns;
    /// `avro-confluent`: in Confluent's framing with the id the registry gave that schema
    /// (registered under `avro-confluent.subject` the first time it is used).
    fn avro_rows(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        use arrow_avro::schema::FingerprintStrategy;
        use arrow_avro::writer::WriterBuilder;
        use arrow_avro::writer::format::{AvroBinaryFormat, AvroSoeFormat};
        let what = format!("KAFKA sink '{}'", self.sink);
        let schema = batch.schema();
        let text = derived_avro_schema(&schema, &what)?;
        let builder = WriterBuilder::new(schema.as_ref().clone());
        let avro = |e: arrow_avro::errors::AvroError| Error::invalid_argument(format!("{what}: Avro: {e}"));
        let mut enc = match &self.registry {
            None => builder.build_encoder::<AvroBinaryFormat>().map_err(avro)?,
            Some(url) => {
                let id = match self.avro_ids.get(&text) {
                    Some(id) => *id,
                    None => {
                        let id = registry_register(url, &self.subject, &text)
                            .map_err(|e| Error::new(e.kind(), format!("{what}: {}", e.message())))?;
                        self.avro_ids.insert(text, id);
                        id
                    }
                };
                builder
                    .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                    .build_encoder::<AvroSoeFormat>()
                    .map_err(avro)?
            }
        };
        enc.encode(batch).map_err(avro)?;
        let rows = enc.flush();
        Ok(rows.iter().map(|b| b.to_vec()).collect())
    }

    fn produce(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.exactly_once && !self.in_txn {
            self.producer().begin_transaction().map_err(|e| self.err("cannot begin a transaction", e))?;
            self.in_txn = true;
        }
        let recs = self.serialize(batch)?;
        let p = self.producer();
        for (k, v) in &recs {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic);
            if let Some(v) = v {
                rec = rec.payload(&v[..]);
            }
            if let Some(k) = k {
                rec = rec.key(&k[..]);
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
        self.delivery_failed()
    }

    /// The first record librdkafka reported undelivered since the last check, as an `IO` error.
    fn delivery_failed(&self) -> Result<()> {
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
        let inputs = self.group_inputs.as_ref().filter(|(_, o)| !o.is_empty()).cloned();
        if let Some((group, offsets)) = &inputs {
            if self.input_group.is_none() {
                let mut c = self.config.clone();
                c.remove("group.instance.id");
                c.set("group.id", group).set("enable.auto.commit", "false");
                self.input_group =
                    Some(c.create().map_err(|e| Error::invalid_argument(format!("KAFKA sink '{}': {e}", self.sink)))?);
            }
            let cgm = self
                .input_group
                .as_ref()
                .expect("made")
                .group_metadata()
                .ok_or_else(|| Error::internal("KAFKA sink: no consumer group metadata for the input group"))?;
            let mut tpl = Tpl::new();
            for (topic, partition, offset) in offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(|e| self.err("cannot record the input offsets", e))?;
            }
            self.producer()
                .send_offsets_to_transaction(&tpl, &cgm, CALL_TIMEOUT)
                .map_err(|e| self.err(&format!("cannot commit the offsets of group '{}'", clip(group)), e))?;
        }
        let p = self.producer();
        // Delivers what is still in flight first; a record that fails fails the commit.
        p.commit_transaction(CALL_TIMEOUT).map_err(|e| self.err("cannot commit the transaction", e))?;
        self.delivery_failed()?;
        self.in_txn = false;
        self.committed += 1;
        if let Some((_, offsets)) = inputs {
            self.inputs_committed = offsets;
        }
        Ok(())
    }
}

/// A record: its key and its value (`None`: a tombstone).
type Rec = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A Debezium change envelope around JSON rows.
fn envelope(before: Option<&[u8]>, after: Option<&[u8]>, op: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(before.map_or(4, <[u8]>::len) + after.map_or(4, <[u8]>::len) + 40);
    v.extend_from_slice(b"{\"before\":");
    v.extend_from_slice(before.unwrap_or(b"null"));
    v.extend_from_slice(b",\"after\":");
    v.extend_from_slice(after.unwrap_or(b"null"));
    v.extend_from_slice(format!(",\"op\":\"{op}\"}}").as_bytes());
    v
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

    /// At-least-once: every record delivered. Exactly-once: the epoch's results, for the
    /// checkpoint to store; their delivery is not awaited here — the commit waits for it (a
    /// record that fails then fails the commit, and a restart writes the stored results again),
    /// so the records still in flight are delivered while the checkpoint is written.
    fn prepare_commit(&mut self, epoch: u64) -> Result<Vec<u8>> {
        if !self.exactly_once {
            self.flush()?;
            return Ok(vec![]);
        }
        if !self.in_txn {
            return Ok(vec![]);
        }
        self.delivery_failed()?;
        crate::connector::encode_epoch_batches(epoch, &self.epoch_batches)
    }

    fn commit(&mut self, epoch: u64, committable: &[u8]) -> Result<()> {
        // A group's task commits the group's offsets each epoch they moved, results or not.
        let inputs_moved =
            self.group_inputs.as_ref().is_some_and(|(_, o)| !o.is_empty() && *o != self.inputs_committed);
        if self.exactly_once && ((self.in_txn && !committable.is_empty()) || inputs_moved) {
            if !self.in_txn {
                self.producer().begin_transaction().map_err(|e| self.err("cannot begin a transaction", e))?;
                self.in_txn = true;
            }
            self.commit_marked(epoch)?;
        }
        self.epoch_batches.clear();
        Ok(())
    }

    fn epoch_inputs(&mut self, group: &str, offsets: &[(String, i32, i64)]) {
        self.group_inputs = Some((group.to_string(), offsets.to_vec()));
    }

    fn recover(&mut self, restored: Option<&[u8]>) -> Result<()> {
        self.producer = None;
        self.in_txn = false;
        self.epoch_batches.clear();
        self.connect()?;
        let Some(c) = restored.filter(|c| !c.is_empty() && self.exactly_once) else { return Ok(()) };
        let (epoch, batches) = crate::connector::decode_epoch_batches("KAFKA", c)?;
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
            self.aborted += 1;
            self.producer().abort_transaction(CALL_TIMEOUT).map_err(|e| self.err("cannot abort the transaction", e))?;
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        if self.exactly_once {
            vec![("transactions_committed", self.committed), ("transactions_aborted", self.aborted)]
        } else {
            vec![]
        }
    }
}

#[cfg(test)]
mod tests {
    //! The exactly-once sink's recovery against the broker of `scripts/services.sh start kafka`:
    //! a crash after the checkpoint is durable and before the transaction commits.
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Schema};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    use super::*;

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
