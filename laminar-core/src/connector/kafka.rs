//! The `KAFKA` connector (cargo feature `kafka`, librdkafka through the `rdkafka` crate): a topic
//! as a source (every partition, offsets in the checkpoint, so a restart resumes exactly where
//! the restored state stops) and as a sink (one Kafka transaction per epoch, committed once the
//! epoch's checkpoint is durable).
//!
//! | option | as | meaning |
//! |---|---|---|
//! | `topic` | both | the topic (it must exist: nothing is created) |
//! | `topic-pattern` | source | instead of `topic`: a regular expression over whole topic names, resolved when the reader opens and again at each partition discovery |
//! | `scan.topic-partition-discovery.interval` | source | how often new partitions (and, with `topic-pattern`, new matching topics) are looked for (default `10s`, `0` off); one found is read from its beginning |
//! | `properties.bootstrap.servers` | both | the brokers, `host:port,…` |
//! | `properties.<name>` | both | passed to librdkafka as `<name>` (`properties.group.id`, `properties.security.protocol`, …) |
//! | `format` | both | `json` (one object per record), `csv` (one line per record, columns by position), `raw` (source: the value as the one `VARCHAR`/`BYTES` column), `debezium-json` (change envelopes: a source into a table, a sink from a changelog), `avro` (one Avro binary datum per record, no framing), `avro-confluent` (Avro in Confluent's framing: magic byte 0, the schema id, the datum) |
//! | `avro.schema` | source | with `avro`: the writer schema (Avro JSON); default the schema derived from the declared columns (below) |
//! | `avro-confluent.url` | both | the schema registry (`http://…`): a source fetches writer schemas by id (`GET /schemas/ids/<id>`); a sink registers the derived schema (`POST /subjects/<subject>/versions`) and writes with its id |
//! | `avro-confluent.subject` | sink | the subject registered under (default `<topic>-value`) |
//! | `scan.startup.mode` | source | where partitions without a recorded offset start: `earliest-offset` (default), `latest-offset`, `group-offsets` (the group's committed offsets, else earliest), `timestamp` |
//! | `scan.startup.timestamp-millis` | source | for `timestamp`: the first record at or after this time (ms since the epoch) |
//! | `scan.max-batch-records` | source | records per poll at most, over all partitions (default 100000) |
//! | `on_error` | source | a record that cannot be decoded: `fail` (default; the error names partition and offset), `skip` (counted, logged) or `dead_letter` (counted, written to the source named by `dead_letter`) |
//! | `dead_letter` | source | the source receiving the records that do not decode (created with the dead-letter columns unless it exists) |
//! | `properties.group.id` | source | the consumer group (default `laminardb-<source>`); each checkpoint's offsets are committed as its offsets, for monitoring (recovery never reads them); with the config key `shared_dir`, the group whose members share the partitions (`db/group.rs`) |
//! | `key` | sink | columns written as the record key (a JSON object, or a CSV line); none by default. A changelog input with a key is written as upserts with tombstones |
//! | `sink.delivery-guarantee` | sink | `exactly-once` (default) or `at-least-once` |
//! | `sink.transactional-id` | sink | the transactional id (default `laminardb-<sink>-<topic>`); one writer per id |
//!
//! The derived Avro schema is arrow-avro's: a record named `topLevelRecord` with one field per
//! column, a nullable column as a union with `null` first, `BIGINT` as `long`, `DOUBLE` as
//! `double`, `VARCHAR` as `string`, `TIMESTAMP` as `long` with a timestamp logical type. A sink
//! writes record keys as JSON with the Avro formats.
//!
//! Source metadata columns, filled when declared: `_key` (`VARCHAR` or `BYTES`), `_partition`
//! (`INT`/`BIGINT`), `_offset` (`BIGINT`), `_timestamp` (`TIMESTAMP`), `_topic` (`VARCHAR`).
//!
//! The exactly-once sink keeps the results of the open epoch, writes them into a transaction as
//! they come, and at the checkpoint stores the epoch's results in the checkpoint (without
//! waiting for the records still in flight: a record that fails fails the commit, and a restart
//! writes the stored results again); once the checkpoint is durable it commits the transaction
//! (which waits for every record's delivery) together with a
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
pub(crate) use source::decode_values;

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
    /// Avro in Confluent's framing (magic byte 0, a 4-byte schema id, the body): a source
    /// fetches the writer schemas from the registry at `avro-confluent.url` by id; a sink
    /// registers the schema derived from its input there and writes with its id.
    AvroConfluent,
    /// One Avro binary datum per value, no framing: the writer schema is `avro.schema` (source)
    /// or the one derived from the columns.
    Avro,
    /// Debezium change envelopes (`before`, `after`, `op`): a source into a table applies them
    /// as upserts and deletes; a sink writes a changelog as them.
    DebeziumJson,
}

fn format_option(o: &mut Options, sink: bool) -> Result<Format> {
    let choices: &[&'static str] = if sink {
        &["json", "csv", "debezium-json", "avro", "avro-confluent"]
    } else {
        &["json", "csv", "raw", "debezium-json", "avro", "avro-confluent"]
    };
    Ok(match o.choice("format", choices, "json")? {
        "csv" => Format::Csv,
        "debezium-json" => Format::DebeziumJson,
        "avro-confluent" => Format::AvroConfluent,
        "avro" => Format::Avro,
        "raw" => Format::Raw,
        _ => Format::Json,
    })
}

/// `avro-confluent.url`: required with `avro-confluent`, refused with any other format.
fn registry_option(o: &mut Options, format: Format, what: &str) -> Result<Option<String>> {
    let registry = o.get("avro-confluent.url");
    match (format, &registry) {
        (Format::AvroConfluent, None) => Err(Error::invalid_argument(format!(
            "{what}: format 'avro-confluent' needs the option 'avro-confluent.url' (the schema registry, http://host:port)"
        ))),
        (Format::AvroConfluent, Some(u)) if !u.trim().starts_with("http://") => Err(Error::invalid_argument(format!(
            "{what}: 'avro-confluent.url' must be an http:// URL (https is not built in), got '{}'",
            clip(u)
        ))),
        (Format::AvroConfluent, Some(u)) => Ok(Some(u.trim().trim_end_matches('/').to_string())),
        (_, Some(_)) => {
            Err(Error::invalid_argument(format!("{what}: option 'avro-confluent.url' needs format = 'avro-confluent'")))
        }
        _ => Ok(None),
    }
}

/// One request to a Confluent schema registry (plain HTTP/1.0, `Connection: close`): the JSON
/// answer of a 200. An unreachable registry or a 5xx answer is `IO` (retried by a source's
/// reader); another answer is `INVALID_DATA` with the registry's message.
fn registry_call(url: &str, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, base) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("schema registry '{}': {e}", clip(url)));
    let addr = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&addr).map_err(io)?.collect();
    let a = addrs.first().ok_or_else(|| io(std::io::Error::other("no address")))?;
    let mut s = std::net::TcpStream::connect_timeout(a, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut req = format!(
        "{method} {base}{path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\n"
    );
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        let m = format!("schema registry '{}': {method} {path}: {} {}", clip(url), clip(status), clip(body));
        return Err(if code.starts_with('5') || code.is_empty() {
            Error::new(ErrorKind::Io, m)
        } else {
            Error::invalid_data(m)
        });
    }
    serde_json::from_str(body)
        .map_err(|e| Error::invalid_data(format!("schema registry '{}': the answer is not JSON: {e}", clip(url))))
}

/// `GET /schemas/ids/<id>`: the writer schema's JSON text.
fn registry_schema(url: &str, id: u32) -> Result<String> {
    let v = registry_call(url, "GET", &format!("/schemas/ids/{id}"), None)?;
    v.get("schema").and_then(|s| s.as_str()).map(str::to_string).ok_or_else(|| {
        Error::invalid_data(format!("schema registry '{}': the answer for id {id} has no 'schema'", clip(url)))
    })
}

/// `POST /subjects/<subject>/versions`: registers `schema` (or finds it registered) and gives
/// its id.
fn registry_register(url: &str, subject: &str, schema: &str) -> Result<u32> {
    let body = serde_json::json!({ "schema": schema }).to_string();
    let v = registry_call(url, "POST", &format!("/subjects/{subject}/versions"), Some(&body))?;
    v.get("id").and_then(serde_json::Value::as_u64).and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
        Error::invalid_data(format!(
            "schema registry '{}': the answer to registering under '{}' has no 'id'",
            clip(url),
            clip(subject)
        ))
    })
}

/// The Avro schema (JSON text) that arrow-avro derives from `schema`: a record of its columns,
/// a nullable column as a union with `null` first.
fn derived_avro_schema(schema: &datafusion::arrow::datatypes::Schema, what: &str) -> Result<String> {
    arrow_avro::schema::AvroSchema::try_from(schema)
        .map(|s| s.json_string)
        .map_err(|e| Error::invalid_argument(format!("{what}: no Avro schema for these columns: {e}")))
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

/// The number of partitions of `topic`; NOT_FOUND when it does not exist.
pub(crate) fn topic_must_exist<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    servers: &str,
) -> Result<i32> {
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
