//! The `KAFKA` connector (cargo feature `kafka`, librdkafka through the `rdkafka` crate): a topic
//! as a source (every partition, offsets in the checkpoint, so a restart resumes exactly where
//! the restored state stops) and as a sink (one Kafka transaction per epoch, committed once the
//! epoch's checkpoint is durable).
//!
//! | option | as | meaning |
//! |---|---|---|
//! | `topic` | both | the topic (it must exist: nothing is created) |
//! | `topic-pattern` | source | instead of `topic`: a regular expression over whole topic names, resolved when the reader opens |
//! | `properties.bootstrap.servers` | both | the brokers, `host:port,…` |
//! | `properties.<name>` | both | passed to librdkafka as `<name>` (`properties.group.id`, `properties.security.protocol`, …) |
//! | `format` | both | `json` (one object per record), `csv` (one line per record, columns by position), `raw` (source: the value as the one `VARCHAR`/`BYTES` column), `debezium-json` (change envelopes: a source into a table, a sink from a changelog), `avro-confluent` (source: Confluent-framed Avro) |
//! | `avro-confluent.url` | source | the schema registry (`http://…`) the writer schemas are fetched from, by id |
//! | `scan.startup.mode` | source | where partitions without a recorded offset start: `earliest-offset` (default), `latest-offset`, `group-offsets` (the group's committed offsets, else earliest), `timestamp` |
//! | `scan.startup.timestamp-millis` | source | for `timestamp`: the first record at or after this time (ms since the epoch) |
//! | `scan.max-batch-records` | source | records per poll at most, over all partitions (default 100000) |
//! | `on_error` | source | a record that cannot be decoded: `fail` (default; the error names partition and offset), `skip` (counted, logged) or `dead_letter` (counted, written to the source named by `dead_letter`) |
//! | `dead_letter` | source | the source receiving the records that do not decode (created with the dead-letter columns unless it exists) |
//! | `properties.group.id` | source | the consumer group (default `laminardb-<source>`); each checkpoint's offsets are committed as its offsets, for monitoring (recovery never reads them) |
//! | `key` | sink | columns written as the record key (a JSON object, or a CSV line); none by default. A changelog input with a key is written as upserts with tombstones |
//! | `sink.delivery-guarantee` | sink | `exactly-once` (default) or `at-least-once` |
//! | `sink.transactional-id` | sink | the transactional id (default `laminardb-<sink>-<topic>`); one writer per id |
//!
//! Source metadata columns, filled when declared: `_key` (`VARCHAR` or `BYTES`), `_partition`
//! (`INT`/`BIGINT`), `_offset` (`BIGINT`), `_timestamp` (`TIMESTAMP`), `_topic` (`VARCHAR`).
//!
//! The exactly-once sink keeps the results of the open epoch, writes them into a transaction as
//! they come, and at the checkpoint flushes the transaction and stores the epoch's results in
//! the checkpoint; once the checkpoint is durable it commits the transaction together with a
//! marker (the offset of the consumer group named by the transactional id, on partition 0 of
//! the topic, set to the epoch). After a crash, the new producer's `init_transactions` fences
//! the old one and aborts its open transaction; if the restored checkpoint's epoch is above the
//! marker, its transaction never committed, and the stored results are written again in a new
//! transaction. A `read_committed` consumer sees every result once.

mod sink;
mod source;

use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::{OnError, Options, Poll, Position, Positions, Sink, SourceReader};
use crate::error::{Error, ErrorKind, Result, clip};

pub(crate) use sink::KafkaSink;
pub(crate) use source::KafkaSource;

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
    /// Source only: Avro in Confluent's framing (magic byte 0, a 4-byte schema id, the body),
    /// the writer schemas fetched from the registry at `avro-confluent.url`.
    AvroConfluent,
    /// Debezium change envelopes (`before`, `after`, `op`): a source into a table applies them
    /// as upserts and deletes; a sink writes a changelog as them.
    DebeziumJson,
}

fn format_option(o: &mut Options, sink: bool) -> Result<Format> {
    let choices: &[&'static str] = if sink {
        &["json", "csv", "debezium-json"]
    } else {
        &["json", "csv", "raw", "debezium-json", "avro-confluent"]
    };
    Ok(match o.choice("format", choices, "json")? {
        "csv" => Format::Csv,
        "debezium-json" => Format::DebeziumJson,
        "avro-confluent" => Format::AvroConfluent,
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
