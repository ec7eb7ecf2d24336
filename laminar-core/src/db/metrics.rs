//! Counters of sources, streams and sinks, as structs and as one Arrow batch.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::operator::NO_WATERMARK;

use crate::connector::PartitionStats;

use super::telemetry::CheckpointMetrics;

use super::*;

/// Metrics of one source.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    pub name: String,
    pub rows_in: u64,
    pub batches_in: u64,
    /// Arrow bytes of the batches that entered the source (since the database was opened).
    pub bytes_in: u64,
    /// Rows dropped as late by the streams reading this source (every window closed).
    pub rows_late: u64,
    /// Watermark in epoch milliseconds, if any.
    pub watermark_ms: Option<i64>,
    /// Events (batches, watermarks) waiting in the source queue.
    pub queue_depth: u64,
    /// No data for its idle timeout: it no longer holds back the watermark.
    pub idle: bool,
    /// Nanoseconds writers and connector readers waited for room in the full queue.
    pub blocked_ns: u64,
    /// A connector source's partitions (a Kafka partition number → its counters).
    pub partitions: Vec<(String, PartitionStats)>,
}

/// Metrics of one stream or materialized view.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    pub name: String,
    pub rows_out: u64,
    pub batches_out: u64,
    /// Arrow bytes of the emitted batches (since the database was opened).
    pub bytes_out: u64,
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
    /// Batches emitted to the subscriptions and not yet read, summed over them.
    pub subscription_buffered: u64,
    /// Every operator of the plan, children before parents.
    pub operators: Vec<OperatorMetrics>,
}

/// Counters of one operator of a stream's plan.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    /// Position in the plan (children before parents) and kind: `"2:WindowAggregate"`.
    pub label: String,
    /// The operator's EXPLAIN line.
    pub explain: String,
    pub rows_in: u64,
    pub rows_out: u64,
    /// Nanoseconds spent in the operator (its work on batches, watermarks and timers).
    pub busy_ns: u64,
    pub state_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub sources: Vec<SourceMetrics>,
    pub streams: Vec<StreamMetrics>,
    pub sinks: Vec<SinkMetrics>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub events_processed: u64,
    pub checkpoints: CheckpointMetrics,
    /// Nanoseconds the pipeline waited for `on_full = block` subscribers.
    pub pipeline_blocked_ns: u64,
    /// Bytes the RocksDB state backend holds (SST files and memtables: the groups spilled out of
    /// memory); None with `state_backend = 'memory'`.
    pub state_backend_bytes: Option<u64>,
    /// Group mode (`shared_dir`): the partitions this member owns (empty otherwise).
    pub partitions: Vec<super::GroupPartition>,
}

/// Metrics of one sink.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    pub name: String,
    /// Rows and batches written to the sink (on a database with checkpoints, published once
    /// their epoch's checkpoint is durable).
    pub rows_out: u64,
    pub batches_out: u64,
    pub bytes_out: u64,
    /// Why the sink stopped, once it has failed (checkpoints fail until it is dropped).
    pub failed: Option<String>,
    /// The connector's own counters (KAFKA: `transactions_committed`, `transactions_aborted`).
    pub counters: Vec<(&'static str, u64)>,
}

/// The operators of a plan with their counters, children before parents.
pub(super) fn operator_metrics(root: &crate::pipeline::Node) -> Vec<OperatorMetrics> {
    root.operator_stats()
        .into_iter()
        .enumerate()
        .map(|(i, (op, st))| {
            let explain = op.explain();
            let kind = explain.split([':', ' ']).next().unwrap_or("").to_string();
            OperatorMetrics {
                label: format!("{i}:{kind}"),
                explain,
                rows_in: st.rows_in,
                rows_out: st.rows_out,
                busy_ns: st.busy_ns,
                state_bytes: op.state_size() as u64,
            }
        })
        .collect()
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
                bytes_in: s.bytes_in,
                rows_late: s.rows_late,
                watermark_ms: ms(s.watermark),
                queue_depth: s.queue.permits_tx.len() as u64,
                idle: s.idle,
                blocked_ns: s.queue.blocked_ns.load(std::sync::atomic::Ordering::Relaxed),
                partitions: s.stats.as_ref().map(|st| st.lock().clone().into_iter().collect()).unwrap_or_default(),
            })
            .collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let mut streams: Vec<StreamMetrics> = eng
            .streams
            .iter()
            .map(|(n, s)| {
                let operators = operator_metrics(&s.root);
                StreamMetrics {
                    name: n.clone(),
                    rows_out: s.rows_out,
                    batches_out: s.batches_out,
                    bytes_out: s.bytes_out,
                    rows_late: s.rows_late,
                    late_pairs: s.late_pairs,
                    state_bytes: operators.iter().map(|o| o.state_bytes).sum(),
                    spilled_groups: s.root.operators().iter().map(|o| o.spilled_groups()).sum(),
                    watermark_ms: ms(s.watermark),
                    failed: s.failed.as_ref().map(|e| e.to_string()),
                    subscribers: s.subscribers.len() as u64,
                    subscription_buffered: s.subscribers.iter().map(|x| x.tx.len() as u64).sum(),
                    operators,
                }
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
                bytes_out: k.bytes_out,
                failed: k.failed.as_ref().map(|e| e.to_string()),
                counters: k.sink.counters(),
            })
            .collect();
        use std::sync::atomic::Ordering::Relaxed;
        let t = &self.inner.telemetry;
        let mut m = Metrics {
            rows_in: sources.iter().map(|s| s.rows_in).sum(),
            rows_out: streams.iter().map(|s| s.rows_out).sum(),
            events_processed: eng.events,
            checkpoints: CheckpointMetrics {
                completed: t.checkpoints_completed.load(Relaxed),
                failed: t.checkpoints_failed.load(Relaxed),
                duration_seconds: t.checkpoint_duration.lock().clone(),
                size_bytes: t.checkpoint_size.lock().clone(),
                last_unix_ms: Some(t.last_checkpoint_unix_ms.load(Relaxed)).filter(|v| *v != 0),
                epoch: eng.epoch,
            },
            pipeline_blocked_ns: t.pipeline_blocked_ns.load(Relaxed),
            state_backend_bytes: self.inner.state.as_ref().and_then(|s| s.bytes()),
            sources,
            streams,
            sinks,
            partitions: vec![],
        };
        drop(eng);
        if let Some(g) = &self.inner.group {
            g.merge_metrics(&mut m);
        }
        Ok(m)
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
            push("source", &s.name, "bytes_in", Some(s.bytes_in as i64));
            push("source", &s.name, "idle", Some(i64::from(s.idle)));
            push("source", &s.name, "blocked_ns", Some(s.blocked_ns as i64));
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
            push("stream", &s.name, "subscription_buffered", Some(s.subscription_buffered as i64));
            push("stream", &s.name, "bytes_out", Some(s.bytes_out as i64));
            push("stream", &s.name, "failed", Some(i64::from(s.failed.is_some())));
        }
        for k in &m.sinks {
            push("sink", &k.name, "rows_out", Some(k.rows_out as i64));
            push("sink", &k.name, "batches_out", Some(k.batches_out as i64));
            push("sink", &k.name, "bytes_out", Some(k.bytes_out as i64));
            push("sink", &k.name, "failed", Some(i64::from(k.failed.is_some())));
            for (c, v) in &k.counters {
                push("sink", &k.name, c, Some(*v as i64));
            }
        }
        // Group mode: the partitions this member owns (`topic/partition`).
        for g in &m.partitions {
            let n = format!("{}/{}", g.topic, g.partition);
            push("group_partition", &n, "position", g.position);
            push("group_partition", &n, "lag", g.lag);
            push("group_partition", &n, "epoch", Some(g.epoch as i64));
            push("group_partition", &n, "owned_ms", Some(g.owned_ms as i64));
            push("group_partition", &n, "running", Some(i64::from(g.state == "running")));
        }
        push("pipeline", "", "rows_in", Some(m.rows_in as i64));
        push("pipeline", "", "rows_out", Some(m.rows_out as i64));
        push("pipeline", "", "events_processed", Some(m.events_processed as i64));
        push("pipeline", "", "blocked_ns", Some(m.pipeline_blocked_ns as i64));
        push("pipeline", "", "state_backend_bytes", m.state_backend_bytes.map(|b| b as i64));
        let c = &m.checkpoints;
        push("checkpoint", "", "completed", Some(c.completed as i64));
        push("checkpoint", "", "failed", Some(c.failed as i64));
        push("checkpoint", "", "epoch", Some(c.epoch as i64));
        push("checkpoint", "", "last_unix_ms", c.last_unix_ms);
        push("checkpoint", "", "duration_sum_ms", Some((c.duration_seconds.sum * 1000.0) as i64));
        push("checkpoint", "", "bytes_written_sum", Some(c.size_bytes.sum as i64));
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
