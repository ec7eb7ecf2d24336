//! Counters of sources, streams and sinks, as structs and as one Arrow batch.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::operator::NO_WATERMARK;

use crate::connector::PartitionStats;

use super::*;

/// Metrics of one source.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    pub name: String,
    pub rows_in: u64,
    pub batches_in: u64,
    /// Rows dropped as late by the streams reading this source (every window closed).
    pub rows_late: u64,
    /// Watermark in epoch milliseconds, if any.
    pub watermark_ms: Option<i64>,
    /// Events (batches, watermarks) waiting in the source queue.
    pub queue_depth: u64,
    /// A connector source's partitions (a Kafka partition number → its counters).
    pub partitions: Vec<(String, PartitionStats)>,
}

/// Metrics of one stream or materialized view.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    pub name: String,
    pub rows_out: u64,
    pub batches_out: u64,
    pub rows_late: u64,
    pub late_pairs: u64,
    /// Bytes of operator state in memory.
    pub state_bytes: u64,
    /// Groups of aggregate state spilled to the RocksDB state backend (0 with `memory`).
    pub spilled_groups: u64,
    pub watermark_ms: Option<i64>,
    pub failed: Option<String>,
    /// Subscriptions that have not been cancelled or dropped.
    pub subscribers: u64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub sources: Vec<SourceMetrics>,
    pub streams: Vec<StreamMetrics>,
    pub sinks: Vec<SinkMetrics>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub events_processed: u64,
}

/// Metrics of one sink.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    pub name: String,
    /// Rows and batches written to the sink (on a database with checkpoints, published once
    /// their epoch's checkpoint is durable).
    pub rows_out: u64,
    pub batches_out: u64,
    /// Why the sink stopped, once it has failed (checkpoints fail until it is dropped).
    pub failed: Option<String>,
    /// The connector's own counters (KAFKA: `transactions_committed`, `transactions_aborted`).
    pub counters: Vec<(&'static str, u64)>,
}

impl Database {
    pub fn metrics(&self) -> Result<Metrics> {
        self.check_open()?;
        let mut eng = self.inner.engine.lock();
        prune_subscribers(&mut eng);
        let ms = |w: i64| (w != NO_WATERMARK).then(|| if w == i64::MAX { i64::MAX } else { w.div_euclid(1000) });
        let mut sources: Vec<SourceMetrics> = eng
            .sources
            .iter()
            .map(|(n, s)| SourceMetrics {
                name: n.clone(),
                rows_in: s.rows_in,
                batches_in: s.batches_in,
                rows_late: s.rows_late,
                watermark_ms: ms(s.watermark),
                queue_depth: s.queue.permits_tx.len() as u64,
                partitions: s.stats.as_ref().map(|st| st.lock().clone().into_iter().collect()).unwrap_or_default(),
            })
            .collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let mut streams: Vec<StreamMetrics> = eng
            .streams
            .iter()
            .map(|(n, s)| StreamMetrics {
                name: n.clone(),
                rows_out: s.rows_out,
                batches_out: s.batches_out,
                rows_late: s.rows_late,
                late_pairs: s.late_pairs,
                state_bytes: s.root.operators().iter().map(|o| o.state_size() as u64).sum(),
                spilled_groups: s.root.operators().iter().map(|o| o.spilled_groups()).sum(),
                watermark_ms: ms(s.watermark),
                failed: s.failed.as_ref().map(|e| e.to_string()),
                subscribers: s.subscribers.len() as u64,
            })
            .collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        let sinks = eng
            .sinks
            .iter()
            .map(|(n, k)| SinkMetrics {
                name: n.clone(),
                rows_out: k.rows_out,
                batches_out: k.batches_out,
                failed: k.failed.as_ref().map(|e| e.to_string()),
                counters: k.sink.counters(),
            })
            .collect();
        Ok(Metrics {
            rows_in: sources.iter().map(|s| s.rows_in).sum(),
            rows_out: streams.iter().map(|s| s.rows_out).sum(),
            events_processed: eng.events,
            sources,
            streams,
            sinks,
        })
    }

    /// Metrics as one Arrow batch: `(kind, name, metric, value)` rows.
    pub fn metrics_batch(&self) -> Result<RecordBatch> {
        let m = self.metrics()?;
        let (mut kind, mut name, mut metric, mut value) = (vec![], vec![], vec![], vec![]);
        let mut push = |k: &str, n: &str, m: &str, v: Option<i64>| {
            kind.push(k.to_string());
            name.push(n.to_string());
            metric.push(m.to_string());
            value.push(v);
        };
        for s in &m.sources {
            push("source", &s.name, "rows_in", Some(s.rows_in as i64));
            push("source", &s.name, "rows_late", Some(s.rows_late as i64));
            push("source", &s.name, "watermark_ms", s.watermark_ms);
            push("source", &s.name, "queue_depth", Some(s.queue_depth as i64));
            for (p, st) in &s.partitions {
                let n = format!("{}/{p}", s.name);
                push("partition", &n, "position", st.position);
                push("partition", &n, "lag", st.lag);
                push("partition", &n, "records", Some(st.records as i64));
                push("partition", &n, "bytes", Some(st.bytes as i64));
                push("partition", &n, "malformed", Some(st.malformed as i64));
            }
        }
        for s in &m.streams {
            push("stream", &s.name, "rows_out", Some(s.rows_out as i64));
            push("stream", &s.name, "rows_late", Some(s.rows_late as i64));
            push("stream", &s.name, "late_pairs", Some(s.late_pairs as i64));
            push("stream", &s.name, "state_bytes", Some(s.state_bytes as i64));
            push("stream", &s.name, "spilled_groups", Some(s.spilled_groups as i64));
            push("stream", &s.name, "watermark_ms", s.watermark_ms);
            push("stream", &s.name, "subscribers", Some(s.subscribers as i64));
            push("stream", &s.name, "failed", Some(i64::from(s.failed.is_some())));
        }
        for k in &m.sinks {
            push("sink", &k.name, "rows_out", Some(k.rows_out as i64));
            push("sink", &k.name, "batches_out", Some(k.batches_out as i64));
            push("sink", &k.name, "failed", Some(i64::from(k.failed.is_some())));
            for (c, v) in &k.counters {
                push("sink", &k.name, c, Some(*v as i64));
            }
        }
        push("pipeline", "", "rows_in", Some(m.rows_in as i64));
        push("pipeline", "", "rows_out", Some(m.rows_out as i64));
        push("pipeline", "", "events_processed", Some(m.events_processed as i64));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("kind", DataType::Utf8, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("metric", DataType::Utf8, false),
                Field::new("value", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(kind)),
                Arc::new(StringArray::from(name)),
                Arc::new(StringArray::from(metric)),
                Arc::new(Int64Array::from(value)),
            ],
        )?)
    }
}
