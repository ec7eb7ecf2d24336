//! Taking a checkpoint on the pipeline thread: every object's state, the catalog, the sinks'
//! prepared commits; then the sinks publish. What must match for saved state to load.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::durable::{self, CheckpointStats};
use crate::error::{Error, Result};

use super::*;

/// Takes a checkpoint on the pipeline thread, between two events: the catalog, every source's
/// table rows, retained rows, watermark and position, every stream's operator state, stored view
/// and this epoch's results. `Ok(None)`: a catalog statement is in progress, try again.
pub(super) fn take_checkpoint(inner: &DbInner, eng: &mut Engine) -> Result<Option<CheckpointStats>> {
    let t = Instant::now();
    let r = checkpoint_now(inner, eng);
    match &r {
        Ok(Some(s)) => inner.telemetry.checkpoint_done(t.elapsed(), Some(s.bytes_written)),
        Ok(None) => {}
        Err(_) if inner.durable.is_some() => inner.telemetry.checkpoint_done(t.elapsed(), None),
        Err(_) => {}
    }
    r
}

fn checkpoint_now(inner: &DbInner, eng: &mut Engine) -> Result<Option<CheckpointStats>> {
    let Some(d) = &inner.durable else {
        return Err(Error::invalid_state("checkpointing is not enabled: this database has durability 'memory'"));
    };
    let Some(_catalog) = d.ddl.try_read() else { return Ok(None) };
    let epoch = eng.epoch + 1;
    let mut objects: Vec<(String, Vec<u8>)> = vec![];
    objects.push(("catalog".into(), durable::encode_lists(&[vec![catalog::batch(eng)?]])?));
    let mut names: Vec<&String> = eng.sources.keys().collect();
    names.sort();
    for n in names {
        let s = &eng.sources[n];
        let table = match &s.table {
            Some(t) => t.snapshot()?,
            None => vec![],
        };
        let retained: Vec<RecordBatch> = s.retained.iter().cloned().collect();
        objects.push((format!("source:{n}"), durable::encode_lists(&[table, retained])?));
    }
    let order = eng.order.clone();
    for n in &order {
        let s = eng.streams.get_mut(n).expect("ordered");
        if !s.is_late_sink {
            let mut lists = s.snapshot_ops()?;
            lists.push(match &s.mv {
                Some(mv) => mv.state()?,
                None => vec![],
            });
            objects.push((format!("stream:{n}"), durable::encode_lists(&lists)?));
        }
        if s.history_since.is_some() {
            // Cleared only once the checkpoint is written: a failed one keeps this epoch's results.
            objects.push((format!("outputs:{n}"), durable::encode_lists(std::slice::from_ref(&s.history))?));
        }
    }
    // Phase one of the sinks' commit: what each wrote this epoch, made durable, named in the
    // checkpoint. A failed sink fails the checkpoint: it could not include that sink's results.
    let mut commits = vec![];
    for (n, k) in eng.sinks.iter_mut() {
        if let Some(e) = &k.failed {
            return Err(Error::invalid_state(format!(
                "{e}; checkpoints cannot include its results until it is dropped (DROP SINK {n}), and reopening the database resumes it from the last checkpoint"
            )));
        }
        let c = match k.sink.prepare_commit(epoch) {
            Ok(c) => c,
            Err(e) => {
                fail_sink(n, k, e);
                return Err(k.failed.clone().expect("failed"));
            }
        };
        let b = RecordBatch::try_from_iter(vec![(
            "committable",
            Arc::new(datafusion::arrow::array::BinaryArray::from_vec(vec![&c])) as ArrayRef,
        )])?;
        objects.push((format!("sink:{n}"), durable::encode_lists(&[vec![b]])?));
        commits.push((n.clone(), c));
    }
    let (stats, oldest_seq) =
        durable::write_checkpoint(&d.store, epoch, eng.applied_seq, objects, inner.state.as_deref(), d.retain)?;
    eng.epoch = epoch;
    for s in eng.sources.values() {
        if !s.positions.is_empty() {
            *s.queue.checkpointed.lock() = Some(s.positions.clone());
        }
    }
    // A group's task: the input offsets of this epoch go into the sinks' transactions as the
    // group's committed offsets (see `group.rs`).
    if let Some(t) = &inner.task {
        let offsets = t.offsets(eng);
        for k in eng.sinks.values_mut() {
            k.sink.epoch_inputs(&t.group, &offsets);
        }
    }
    // Phase two, now that the checkpoint is durable: publish. A failure here loses nothing (a
    // restart publishes the checkpoint's committables again), but the sink stops.
    for (n, c) in commits {
        if let Some(k) = eng.sinks.get_mut(&n)
            && let Err(e) = k.sink.commit(epoch, &c)
        {
            fail_sink(&n, k, e);
        }
    }
    for s in eng.streams.values_mut() {
        s.history.clear();
        s.emitted_this_epoch = false;
    }
    d.rotate.store(true, Ordering::Release);
    if oldest_seq > 0
        && let Err(e) = durable::truncate_log(&d.store.wal_dir(), oldest_seq)
    {
        log::warn!(target: "laminardb", "removing old log segments: {e}");
    }
    *d.last_checkpoint.lock() = Some(stats.clone());
    Ok(Some(stats))
}

/// Whether two fingerprints describe the same operators. The number of partitions (the
/// `workers` setting) may differ: every operator re-partitions its state when it loads it.
pub(super) fn same_plan(a: &str, b: &str) -> bool {
    let strip =
        |s: &str| -> String { s.split(' ').filter(|w| !w.starts_with("partitions=")).collect::<Vec<_>>().join(" ") };
    strip(a) == strip(b)
}

/// What must match for a stream's saved operator state to load into its plan: the operators,
/// as EXPLAIN describes them.
pub(super) fn fingerprint(s: &StreamRt) -> String {
    if let Some(f) = &s.frozen_fingerprint {
        return f.clone();
    }
    let mut lines = vec![];
    s.root.explain(0, &mut lines);
    lines.join("\n")
}
