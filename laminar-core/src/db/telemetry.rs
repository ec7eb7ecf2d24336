//! What the database counts beside its objects' counters (checkpoints, time the pipeline spent
//! blocked), the Prometheus text exposition of every metric, and the optional HTTP endpoint
//! that serves it (`metrics_addr`).
//!
//! The endpoint is a plain `std::net::TcpListener` on a thread of its own: it answers
//! `GET /metrics` (and `GET /`) with the exposition and anything else with 404, one request per
//! connection, reading at most 8 KiB of request with a 2 s timeout. That is all a Prometheus
//! scrape needs, and it adds no HTTP crate (and no compile time) to the library.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::error::{Error, ErrorKind, Result};

use super::*;

/// A Prometheus histogram: cumulative counts are computed when rendered.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds of the buckets (`le`), ascending; `+Inf` is implied.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` (the `+Inf` bucket).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub(super) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    pub(super) fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Checkpoint duration buckets, seconds.
const DURATION_BOUNDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Checkpoint size buckets (bytes written), 1 KiB to 4 GiB by fours.
const SIZE_BOUNDS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// The database-wide counters, shared by every handle.
pub(crate) struct Telemetry {
    pub(super) checkpoints_completed: AtomicU64,
    pub(super) checkpoints_failed: AtomicU64,
    pub(super) checkpoint_duration: Mutex<Histogram>,
    pub(super) checkpoint_size: Mutex<Histogram>,
    /// Wall-clock time of the last completed checkpoint, ms since the Unix epoch (0: none yet).
    pub(super) last_checkpoint_unix_ms: AtomicI64,
    /// Nanoseconds the pipeline thread waited for `on_full = block` subscribers to make room.
    pub(super) pipeline_blocked_ns: AtomicU64,
    /// The HTTP endpoint's thread, joined at close so the port is free once close returns.
    pub(super) server: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) server_addr: Mutex<Option<std::net::SocketAddr>>,
}

impl Telemetry {
    pub(super) fn new() -> Telemetry {
        Telemetry {
            checkpoints_completed: AtomicU64::new(0),
            checkpoints_failed: AtomicU64::new(0),
            checkpoint_duration: Mutex::new(Histogram::new(DURATION_BOUNDS)),
            checkpoint_size: Mutex::new(Histogram::new(SIZE_BOUNDS)),
            last_checkpoint_unix_ms: AtomicI64::new(0),
            pipeline_blocked_ns: AtomicU64::new(0),
            server: Mutex::new(None),
            server_addr: Mutex::new(None),
        }
    }

    /// Records one checkpoint attempt: `Some(bytes written)` if it completed, None if it failed.
    pub(super) fn checkpoint_done(&self, elapsed: Duration, written: Option<u64>) {
        match written {
            Some(bytes) => {
                self.checkpoints_completed.fetch_add(1, Ordering::Relaxed);
                self.checkpoint_duration.lock().observe(elapsed.as_secs_f64());
                self.checkpoint_size.lock().observe(bytes as f64);
                self.last_checkpoint_unix_ms.store(unix_ms(), Ordering::Relaxed);
            }
            None => {
                self.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub(super) fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Checkpoint figures as [`Metrics`] carries them.
#[derive(Debug, Clone)]
pub struct CheckpointMetrics {
    pub completed: u64,
    pub failed: u64,
    /// Seconds each completed checkpoint took.
    pub duration_seconds: Histogram,
    /// Bytes each completed checkpoint wrote.
    pub size_bytes: Histogram,
    /// The last completed checkpoint, ms since the Unix epoch (None: none since open).
    pub last_unix_ms: Option<i64>,
    /// The last completed checkpoint's epoch (0: none).
    pub epoch: u64,
}

/// Escapes a label value: backslash, double quote and line feed.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Builds the exposition one family at a time: `# HELP`, `# TYPE`, then its samples.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", num(v));
    }

    /// One family with one sample per item (the family is written even with no sample, so its
    /// type is known before the first object exists).
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[T],
        f: impl Fn(&T) -> Option<(Vec<(&str, &str)>, f64)>,
    ) {
        self.family(name, kind, help);
        for it in items {
            if let Some((l, v)) = f(it) {
                self.sample(name, &l, v);
            }
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut acc = 0;
        for (i, b) in h.bounds.iter().enumerate() {
            acc += h.counts[i];
            self.sample(&format!("{name}_bucket"), &[("le", &num(*b))], acc as f64);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Seconds from epoch ms, for a watermark that is set and finite.
fn wm_seconds(ms: Option<i64>) -> Option<f64> {
    ms.filter(|m| *m != i64::MAX && *m != i64::MIN).map(|m| m as f64 / 1000.0)
}

/// The Prometheus text exposition (format 0.0.4) of `m`; `now_ms` is the wall clock.
pub(super) fn render(m: &Metrics, now_ms: i64) -> String {
    let mut t = Text { out: String::with_capacity(4096) };
    let now = now_ms as f64 / 1000.0;
    let src = &m.sources;
    t.each(
        "laminardb_source_records_total",
        "counter",
        "Rows that entered a source (pushed or read by its connector).",
        src,
        |s| Some((vec![("source", s.name.as_str())], s.rows_in as f64)),
    );
    t.each("laminardb_source_batches_total", "counter", "Batches that entered a source.", src, |s| {
        Some((vec![("source", s.name.as_str())], s.batches_in as f64))
    });
    t.each("laminardb_source_bytes_total", "counter", "Arrow bytes of the batches that entered a source.", src, |s| {
        Some((vec![("source", s.name.as_str())], s.bytes_in as f64))
    });
    t.each(
        "laminardb_source_late_records_total",
        "counter",
        "Rows of a source dropped as late (behind the watermark, every window they belong to closed).",
        src,
        |s| Some((vec![("source", s.name.as_str())], s.rows_late as f64)),
    );
    t.each(
        "laminardb_source_watermark_seconds",
        "gauge",
        "A source's watermark, seconds since the Unix epoch.",
        src,
        |s| wm_seconds(s.watermark_ms).map(|w| (vec![("source", s.name.as_str())], w)),
    );
    t.each(
        "laminardb_source_event_time_lag_seconds",
        "gauge",
        "Wall-clock time minus a source's watermark, seconds.",
        src,
        |s| wm_seconds(s.watermark_ms).map(|w| (vec![("source", s.name.as_str())], now - w)),
    );
    t.each("laminardb_source_idle", "gauge", "1 when a source is idle (no data for its idle_timeout).", src, |s| {
        Some((vec![("source", s.name.as_str())], f64::from(u8::from(s.idle))))
    });
    t.each("laminardb_source_queue_depth", "gauge", "Events waiting in a source's queue.", src, |s| {
        Some((vec![("source", s.name.as_str())], s.queue_depth as f64))
    });
    t.each(
        "laminardb_source_blocked_seconds_total",
        "counter",
        "Seconds writers and connector readers waited for room in a source's full queue (back-pressure).",
        src,
        |s| Some((vec![("source", s.name.as_str())], s.blocked_ns as f64 / 1e9)),
    );
    let parts: Vec<(&str, &str, &crate::connector::PartitionStats)> =
        src.iter().flat_map(|s| s.partitions.iter().map(move |(p, st)| (s.name.as_str(), p.as_str(), st))).collect();
    t.each(
        "laminardb_source_partition_records_total",
        "counter",
        "Records a connector read from a partition (Kafka partition, CDC slot).",
        &parts,
        |(s, p, st)| Some((vec![("source", *s), ("partition", *p)], st.records as f64)),
    );
    t.each(
        "laminardb_source_partition_bytes_total",
        "counter",
        "Payload bytes a connector read from a partition.",
        &parts,
        |(s, p, st)| Some((vec![("source", *s), ("partition", *p)], st.bytes as f64)),
    );
    t.each(
        "laminardb_source_malformed_records_total",
        "counter",
        "Records of a partition that did not decode.",
        &parts,
        |(s, p, st)| Some((vec![("source", *s), ("partition", *p)], st.malformed as f64)),
    );
    t.each(
        "laminardb_source_lag_records",
        "gauge",
        "Records behind the end of a Kafka partition (high watermark minus position).",
        &parts,
        |(s, p, st)| st.lag.filter(|_| !st.lag_in_bytes).map(|l| (vec![("source", *s), ("partition", *p)], l as f64)),
    );
    t.each(
        "laminardb_source_lag_bytes",
        "gauge",
        "Bytes of log behind the server's end (PostgreSQL CDC: server LSN minus applied; MySQL CDC: binlog end minus applied).",
        &parts,
        |(s, p, st)| st.lag.filter(|_| st.lag_in_bytes).map(|l| (vec![("source", *s), ("partition", *p)], l as f64)),
    );
    let st = &m.streams;
    t.each(
        "laminardb_stream_records_total",
        "counter",
        "Rows a stream or view emitted (changelog rows count once each).",
        st,
        |s| Some((vec![("stream", s.name.as_str())], s.rows_out as f64)),
    );
    t.each("laminardb_stream_bytes_total", "counter", "Arrow bytes of the batches a stream emitted.", st, |s| {
        Some((vec![("stream", s.name.as_str())], s.bytes_out as f64))
    });
    t.each("laminardb_stream_late_records_total", "counter", "Input rows a stream dropped as late.", st, |s| {
        Some((vec![("stream", s.name.as_str())], s.rows_late as f64))
    });
    t.each(
        "laminardb_stream_late_window_pairs_total",
        "counter",
        "(row, window) pairs dropped because that window had closed (a row may still count in later windows).",
        st,
        |s| Some((vec![("stream", s.name.as_str())], s.late_pairs as f64)),
    );
    t.each("laminardb_stream_state_bytes", "gauge", "Bytes of a stream's operator state in memory.", st, |s| {
        Some((vec![("stream", s.name.as_str())], s.state_bytes as f64))
    });
    t.each(
        "laminardb_stream_spilled_groups",
        "gauge",
        "Aggregate groups of a stream spilled to the RocksDB state backend.",
        st,
        |s| Some((vec![("stream", s.name.as_str())], s.spilled_groups as f64)),
    );
    t.each(
        "laminardb_stream_watermark_seconds",
        "gauge",
        "A stream's watermark, seconds since the Unix epoch.",
        st,
        |s| wm_seconds(s.watermark_ms).map(|w| (vec![("stream", s.name.as_str())], w)),
    );
    t.each(
        "laminardb_stream_event_time_lag_seconds",
        "gauge",
        "Wall-clock time minus a stream's watermark, seconds.",
        st,
        |s| wm_seconds(s.watermark_ms).map(|w| (vec![("stream", s.name.as_str())], now - w)),
    );
    t.each("laminardb_stream_failed", "gauge", "1 when a stream has failed.", st, |s| {
        Some((vec![("stream", s.name.as_str())], f64::from(u8::from(s.failed.is_some()))))
    });
    t.each("laminardb_stream_subscriptions", "gauge", "Open subscriptions of a stream.", st, |s| {
        Some((vec![("stream", s.name.as_str())], s.subscribers as f64))
    });
    t.each(
        "laminardb_stream_subscription_buffered_batches",
        "gauge",
        "Batches emitted to a stream's subscriptions and not yet read (their lag), summed.",
        st,
        |s| Some((vec![("stream", s.name.as_str())], s.subscription_buffered as f64)),
    );
    let ops: Vec<(&str, &OperatorMetrics)> =
        st.iter().flat_map(|s| s.operators.iter().map(move |o| (s.name.as_str(), o))).collect();
    t.each(
        "laminardb_operator_state_bytes",
        "gauge",
        "Bytes of an operator's state in memory (operator: its position in the plan and its kind).",
        &ops,
        |(s, o)| Some((vec![("stream", *s), ("operator", o.label.as_str())], o.state_bytes as f64)),
    );
    t.each("laminardb_operator_records_in_total", "counter", "Rows that entered an operator.", &ops, |(s, o)| {
        Some((vec![("stream", *s), ("operator", o.label.as_str())], o.rows_in as f64))
    });
    t.each("laminardb_operator_records_out_total", "counter", "Rows an operator produced.", &ops, |(s, o)| {
        Some((vec![("stream", *s), ("operator", o.label.as_str())], o.rows_out as f64))
    });
    t.each("laminardb_operator_busy_seconds_total", "counter", "Seconds spent in an operator.", &ops, |(s, o)| {
        Some((vec![("stream", *s), ("operator", o.label.as_str())], o.busy_ns as f64 / 1e9))
    });
    let sk = &m.sinks;
    t.each("laminardb_sink_records_total", "counter", "Rows a sink published.", sk, |k| {
        Some((vec![("sink", k.name.as_str())], k.rows_out as f64))
    });
    t.each("laminardb_sink_batches_total", "counter", "Batches a sink published.", sk, |k| {
        Some((vec![("sink", k.name.as_str())], k.batches_out as f64))
    });
    t.each("laminardb_sink_bytes_total", "counter", "Arrow bytes of the batches a sink published.", sk, |k| {
        Some((vec![("sink", k.name.as_str())], k.bytes_out as f64))
    });
    t.each("laminardb_sink_failed", "gauge", "1 when a sink has failed.", sk, |k| {
        Some((vec![("sink", k.name.as_str())], f64::from(u8::from(k.failed.is_some()))))
    });
    let events: Vec<(&str, &str, u64)> =
        sk.iter().flat_map(|k| k.counters.iter().map(move |(c, v)| (k.name.as_str(), *c, *v))).collect();
    t.each(
        "laminardb_sink_connector_events_total",
        "counter",
        "A sink connector's own counters (event: transactions_committed, transactions_aborted, …).",
        &events,
        |(k, c, v)| Some((vec![("sink", *k), ("event", *c)], *v as f64)),
    );
    let c = &m.checkpoints;
    t.each(
        "laminardb_checkpoints_completed_total",
        "counter",
        "Checkpoints completed since the database was opened.",
        &[c],
        |c| Some((vec![], c.completed as f64)),
    );
    t.each(
        "laminardb_checkpoints_failed_total",
        "counter",
        "Checkpoints that failed since the database was opened.",
        &[c],
        |c| Some((vec![], c.failed as f64)),
    );
    t.histogram("laminardb_checkpoint_duration_seconds", "Time a completed checkpoint took.", &c.duration_seconds);
    t.histogram("laminardb_checkpoint_size_bytes", "Bytes a completed checkpoint wrote.", &c.size_bytes);
    t.each("laminardb_checkpoint_epoch", "gauge", "Epoch of the last completed checkpoint (0: none).", &[c], |c| {
        Some((vec![], c.epoch as f64))
    });
    t.each(
        "laminardb_last_checkpoint_timestamp_seconds",
        "gauge",
        "When the last checkpoint completed, seconds since the Unix epoch (absent before the first).",
        &[c],
        |c| c.last_unix_ms.map(|ms| (vec![], ms as f64 / 1000.0)),
    );
    t.each(
        "laminardb_seconds_since_last_checkpoint",
        "gauge",
        "Seconds since the last checkpoint completed (absent before the first).",
        &[c],
        |c| c.last_unix_ms.map(|ms| (vec![], (now_ms - ms).max(0) as f64 / 1000.0)),
    );
    t.each(
        "laminardb_pipeline_events_total",
        "counter",
        "Events (batches, watermarks) the pipeline applied.",
        &[m],
        |m| Some((vec![], m.events_processed as f64)),
    );
    t.each(
        "laminardb_pipeline_blocked_seconds_total",
        "counter",
        "Seconds the pipeline waited for subscribers with on_full = block to make room (back-pressure).",
        &[m],
        |m| Some((vec![], m.pipeline_blocked_ns as f64 / 1e9)),
    );
    t.each(
        "laminardb_state_backend_bytes",
        "gauge",
        "Bytes the RocksDB state backend holds (SST files and memtables); absent with state_backend = 'memory'.",
        &[m],
        |m| m.state_backend_bytes.map(|b| (vec![], b as f64)),
    );
    t.out
}

impl Database {
    /// Every metric in the Prometheus text exposition format (0.0.4): `laminardb_`-prefixed
    /// families, base units, `_total` counters, labels `source`, `stream`, `sink`, `partition`,
    /// `operator`. What `metrics_addr` serves at `GET /metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        let m = self.metrics()?;
        Ok(render(&m, unix_ms()))
    }

    /// The address the metrics endpoint listens on (`metrics_addr`; with port 0, the port the
    /// system chose). None without an endpoint.
    pub fn metrics_endpoint(&self) -> Option<std::net::SocketAddr> {
        *self.inner.telemetry.server_addr.lock()
    }

    /// Starts the endpoint of `metrics_addr`, if set.
    pub(super) fn start_metrics_server(&self) -> Result<()> {
        let Some(addr) = self.inner.config.metrics_addr.clone() else { return Ok(()) };
        let listener = TcpListener::bind(&addr)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot serve metrics on metrics_addr '{addr}': {e}")))?;
        listener.set_nonblocking(true).map_err(|e| Error::new(ErrorKind::Io, format!("metrics endpoint: {e}")))?;
        *self.inner.telemetry.server_addr.lock() = listener.local_addr().ok();
        let weak = Arc::downgrade(&self.inner);
        let h = std::thread::Builder::new()
            .name("laminar-metrics".into())
            .spawn(move || serve(listener, weak))
            .map_err(|e| Error::internal(format!("cannot start the metrics endpoint thread: {e}")))?;
        *self.inner.telemetry.server.lock() = Some(h);
        Ok(())
    }

    /// Stops the endpoint and waits for its thread (the port is free afterwards).
    pub(super) fn stop_metrics_server(&self) {
        let h = self.inner.telemetry.server.lock().take();
        if let Some(h) = h
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

/// The endpoint's accept loop: polls every 20 ms, ends once the database is closed or gone.
fn serve(listener: TcpListener, db: Weak<DbInner>) {
    loop {
        match db.upgrade() {
            Some(inner) if !inner.closed.load(Ordering::Acquire) => {}
            _ => return,
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let Some(inner) = db.upgrade() else { return };
                answer(stream, &Database { inner });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Answers one request on `stream`. Errors (a client that went away) are ignored.
fn answer(mut stream: TcpStream, db: &Database) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => match db.metrics_text() {
            Ok(t) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", t),
            Err(e) => ("503 Service Unavailable", "text/plain; charset=utf-8", format!("{e}\n")),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET /metrics\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes());
    }
    let _ = stream.flush();
}
