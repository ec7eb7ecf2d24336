//! The pipeline driver: one thread applies the events in order — a batch runs through the
//! operators of every stream reading its source, outputs go to subscribers, stored views, sinks
//! and downstream streams; watermarks close windows; processing-time ticks and checkpoints run
//! between events.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::Receiver;
use datafusion::arrow::record_batch::RecordBatch;

use crate::connector::Position;
use crate::error::{Error, ErrorKind, Result};
use crate::operator::window::event_times;
use crate::operator::{LateRows, NO_WATERMARK, OpCtx};
use crate::pipeline::Node;
use crate::runtime::subscription::{Delivered, send_pending};

use super::*;

pub(super) fn input_watermark(eng: &Engine, name: &str) -> i64 {
    if let Some(s) = eng.sources.get(name) {
        s.watermark
    } else if let Some(s) = eng.streams.get(name) {
        s.watermark
    } else {
        NO_WATERMARK
    }
}

/// The watermark of a query: the minimum over its inputs, leaving out idle sources (DESIGN §3:
/// a source with `idle_timeout` stops holding it back after that long without data) unless every
/// input is idle.
pub(super) fn combined_watermark(eng: &Engine, inputs: &[String]) -> i64 {
    let active =
        inputs.iter().filter(|i| !eng.sources.get(*i).is_some_and(|s| s.idle)).map(|i| input_watermark(eng, i)).min();
    active.or_else(|| inputs.iter().map(|i| input_watermark(eng, i)).min()).unwrap_or(NO_WATERMARK)
}

/// The next time (ms) a source could become idle.
pub(super) fn idle_deadline(eng: &Engine) -> Option<i64> {
    eng.sources.values().filter(|s| !s.idle).filter_map(|s| s.idle_timeout_ms.map(|t| s.last_active_ms + t)).min()
}

/// A source had data or a watermark at `now`: it is active again.
pub(super) fn mark_active(eng: &mut Engine, source: &str, now: i64) {
    if let Some(s) = eng.sources.get_mut(source) {
        s.last_active_ms = now;
        s.idle = false;
    }
}

/// Marks sources idle whose `idle_timeout` has passed without data, and lets what reads them move
/// on.
pub(super) fn check_idle(inner: &DbInner, eng: &mut Engine, now: i64) {
    let due: Vec<String> = eng
        .sources
        .iter()
        .filter(|(_, s)| !s.idle && s.idle_timeout_ms.is_some_and(|t| now - s.last_active_ms >= t))
        .map(|(n, _)| n.clone())
        .collect();
    for n in due {
        if let Some(s) = eng.sources.get_mut(&n) {
            s.idle = true;
        }
        guarded(inner, eng, &n, |inner, eng| propagate_watermark(inner, eng, &n));
    }
}

pub(super) fn driver_loop(db: std::sync::Weak<DbInner>, rx: Receiver<Event>, start_ms: i64) {
    // With a manual clock, processing time moves only when its Tick event is processed, so events
    // pushed before an advance are processed at the earlier time.
    let mut manual_now = start_ms;
    loop {
        let timeout = {
            let Some(inner) = db.upgrade() else { return };
            let eng = inner.engine.lock();
            let next = eng
                .streams
                .values()
                .filter_map(|s| s.tick.map(|t| t.1))
                .chain(idle_deadline(&eng))
                .chain(eng.next_checkpoint_ms)
                .min();
            match (next, inner.clock.is_manual()) {
                (Some(due), false) => Some(Duration::from_millis((due - inner.clock.now_ms()).max(0) as u64)),
                _ => None,
            }
        };
        let ev = match timeout {
            Some(t) => match rx.recv_timeout(t) {
                Ok(ev) => Some(ev),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(_) => return,
            },
            None => match rx.recv() {
                Ok(ev) => Some(ev),
                Err(_) => return,
            },
        };
        let Some(inner) = db.upgrade() else { return };
        let mut eng = inner.engine.lock();
        match ev {
            Some(Event::Shutdown) => return,
            Some(Event::Sync(ack)) => {
                drop(eng);
                let _ = ack.send(());
                continue;
            }
            Some(Event::Batch { q, batch, seq, position }) => {
                let _ = q.permits_rx.try_recv();
                eng.applied_seq = eng.applied_seq.max(seq);
                if !q.dropped.load(Ordering::Acquire) {
                    eng.events += 1;
                    let now = if inner.clock.is_manual() { manual_now } else { inner.clock.now_ms() };
                    mark_active(&mut eng, &q.name, now);
                    guarded(&inner, &mut eng, &q.name, |inner, eng| {
                        on_source_batch(inner, eng, &q.name, batch, position)
                    });
                }
            }
            Some(Event::SourceFailed { q, error }) if !q.dropped.load(Ordering::Acquire) => {
                fail_readers(&mut eng, &q.name, error);
            }
            Some(Event::SourceFailed { .. }) => {}
            Some(Event::Checkpoint(reply)) => match take_checkpoint(&inner, &mut eng) {
                Ok(Some(stats)) => {
                    let _ = reply.send(Ok(stats));
                }
                Ok(None) => {
                    // A catalog statement is between its run and its log record: ask again
                    // behind the events it waits for.
                    let _ = inner.tx.send(Event::Checkpoint(reply));
                    drop(eng);
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Some(Event::Watermark { q, us: wm, seq }) => {
                let _ = q.permits_rx.try_recv();
                eng.applied_seq = eng.applied_seq.max(seq);
                if !q.dropped.load(Ordering::Acquire) {
                    eng.events += 1;
                    let now = if inner.clock.is_manual() { manual_now } else { inner.clock.now_ms() };
                    mark_active(&mut eng, &q.name, now);
                    guarded(&inner, &mut eng, &q.name, |inner, eng| advance_source_watermark(inner, eng, &q.name, wm));
                }
            }
            Some(Event::Tick(now)) => manual_now = manual_now.max(now),
            None => {}
        }
        let now = if inner.clock.is_manual() { manual_now } else { inner.clock.now_ms() };
        run_ticks(&inner, &mut eng, now);
        check_idle(&inner, &mut eng, now);
        if let (Some(due), Some(d)) = (eng.next_checkpoint_ms, &inner.durable)
            && now >= due
            && !inner.recovering.load(Ordering::Acquire)
        {
            match take_checkpoint(&inner, &mut eng) {
                Ok(Some(_)) => eng.next_checkpoint_ms = d.interval_ms.map(|i| now + i),
                Ok(None) => eng.next_checkpoint_ms = Some(now + 5),
                Err(e) => {
                    log::warn!(target: "laminardb", "periodic checkpoint failed: {e}; the log keeps every change, retrying after the interval");
                    eng.next_checkpoint_ms = d.interval_ms.map(|i| now + i);
                }
            }
        }
        release_and_send_pending(eng, &inner);
    }
}

/// Keeps the last `retention` rows of a source: whole batches dropped from the front, then the
/// oldest remaining batch cut to the rows still wanted and copied (a slice alone would keep the
/// whole batch's memory).
pub(super) fn trim_retained(retained: &mut VecDeque<RecordBatch>, rows: &mut usize, retention: usize) {
    while *rows > retention {
        let Some(front) = retained.front() else { return };
        let excess = *rows - retention;
        if front.num_rows() <= excess {
            *rows -= front.num_rows();
            retained.pop_front();
            continue;
        }
        let keep = front.slice(excess, front.num_rows() - excess);
        match datafusion::arrow::compute::concat_batches(&keep.schema(), [&keep]) {
            Ok(copy) => {
                *rows -= excess;
                retained[0] = copy;
            }
            Err(_) => return, // cannot happen (one batch, its own schema); keep the rows then
        }
    }
}

/// Releases the engine lock, then waits for slow `on_full = block` subscribers, so they (and
/// everyone else) can still call into the database meanwhile.
pub(super) fn release_and_send_pending(mut eng: parking_lot::MutexGuard<'_, Engine>, inner: &DbInner) {
    let pending = std::mem::take(&mut eng.pending);
    drop(eng);
    if !pending.is_empty() {
        let t = Instant::now();
        send_pending(pending, &inner.closed);
        inner.telemetry.pipeline_blocked_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Fails every stream that reads `source` (and has not failed already).
pub(super) fn fail_readers(eng: &mut Engine, source: &str, e: Error) {
    let names: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].inputs.iter().any(|i| i == source)).cloned().collect();
    for n in names {
        let s = eng.streams.get_mut(&n).expect("listed");
        if s.failed.is_none() {
            fail_stream(s, &n, e.clone());
        }
    }
}

/// Runs one event; a panic (a bug) fails the streams reading the source instead of the pipeline.
pub(super) fn guarded(inner: &DbInner, eng: &mut Engine, source: &str, f: impl FnOnce(&DbInner, &mut Engine)) {
    let r = crate::panic_guard::caught(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(inner, eng))));
    if let Err(p) = r {
        let msg = crate::panic_guard::message(&*p);
        fail_readers(eng, source, Error::internal(format!("internal error (a bug in LaminarDB): {msg}")));
    }
}

/// Runs one stream's operators (`f`), turning a panic into that stream's error: a user-defined
/// function that panics (or a bug) fails the stream it runs in, not every stream of the source.
fn contained<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match crate::panic_guard::caught(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))) {
        Ok(r) => r,
        Err(p) => Err(Error::internal(format!(
            "a panic while running the query (in a user-defined function, or a bug in LaminarDB): {}",
            crate::panic_guard::message(&*p)
        ))),
    }
}

/// The column a connector appends to a batch for a table to mark rows that delete their key.
pub(crate) const DELETED: &str = "__deleted";

/// Applies one batch of a source (`position`: a connector's, of the batch's partition).
pub(super) fn on_source_batch(
    inner: &DbInner,
    eng: &mut Engine,
    source: &str,
    batch: RecordBatch,
    position: Option<Position>,
) {
    let retention = inner.config.source_retention;
    let Some(s) = eng.sources.get_mut(source) else { return };
    // A change-data-capture batch into a table: its last column `__deleted` marks deletes.
    let (batch, deleted) = match batch.schema().fields().last() {
        Some(f) if f.name() == DELETED && batch.num_columns() == s.queue.schema.fields().len() + 1 => {
            use datafusion::arrow::array::AsArray;
            let n = batch.num_columns() - 1;
            let flags = batch.column(n).as_boolean_opt().cloned();
            match batch.project(&(0..n).collect::<Vec<_>>()) {
                Ok(b) => (b, flags),
                Err(e) => {
                    fail_readers(eng, source, e.into());
                    return;
                }
            }
        }
        _ => (batch, None),
    };
    // The highest event time of the batch, less the delay.
    let batch_wm = s.time.and_then(|(col, scale, delay)| {
        let (times, nulls) = event_times(batch.column(col), scale).ok()?;
        let max = times
            .iter()
            .enumerate()
            .filter(|(i, _)| nulls.as_ref().is_none_or(|n| n.is_valid(*i)))
            .map(|(_, t)| *t)
            .max()?;
        Some(max.saturating_sub(delay))
    });
    // The watermark this batch implies; applied after the batch is processed. A connector's
    // source holds per-partition watermarks: the source's is the minimum over the partitions
    // still being read (the highest of the finished ones once none is left).
    let new_wm = match position {
        None => batch_wm,
        Some(p) => {
            // A partition holds the watermark back from the first time it is named (a reader
            // names its partitions when it opens, before any has data), until it finishes.
            if !p.finished || batch_wm.is_some() {
                let e = s.partition_wm.entry(p.partition.clone()).or_insert(NO_WATERMARK);
                *e = (*e).max(batch_wm.unwrap_or(NO_WATERMARK));
            }
            if p.finished
                && let Some(w) = s.partition_wm.remove(&p.partition)
            {
                s.finished_wm = s.finished_wm.max(w);
            }
            if !p.offset.is_empty() || p.finished {
                s.positions.insert(p.partition.clone(), p.recorded().to_string());
            }
            let wm = s.partition_wm.values().copied().min().unwrap_or(s.finished_wm);
            (s.time.is_some() && wm != NO_WATERMARK).then_some(wm)
        }
    };
    if batch.num_rows() > 0 {
        s.rows_in += batch.num_rows() as u64;
        s.batches_in += 1;
        s.bytes_in += batch.get_array_memory_size() as u64;
        if let Some(t) = &mut s.table {
            // A table turns upserts into its changelog: −old (when the key had a row), +new.
            match t.apply(&batch, deleted.as_ref()) {
                Ok(Some(changes)) => feed(inner, eng, source, &[changes]),
                Ok(None) => {}
                Err(e) => fail_readers(eng, source, e),
            }
        } else {
            if retention > 0 {
                s.retained_rows += batch.num_rows();
                s.retained.push_back(batch.clone());
                trim_retained(&mut s.retained, &mut s.retained_rows, retention);
            }
            feed(inner, eng, source, &[batch]);
        }
    }
    if let Some(wm) = new_wm {
        advance_source_watermark(inner, eng, source, wm);
    }
}

/// Feeds `batches` (output of `from`) to every stream that reads `from`, recursively.
pub(super) fn feed(inner: &DbInner, eng: &mut Engine, from: &str, batches: &[RecordBatch]) {
    if batches.is_empty() {
        return;
    }
    write_sinks(inner, eng, from, batches);
    let readers: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].inputs.iter().any(|i| i == from)).cloned().collect();
    for name in readers {
        let mut outputs = vec![];
        let mut late = LateRows::default();
        {
            let s = eng.streams.get_mut(&name).expect("listed");
            if s.failed.is_some() {
                continue;
            }
            let mut ctx = OpCtx {
                watermark: s.watermark,
                late: &mut late,
                pool: inner.pool.as_ref(),
                memory_limit: inner.config.memory_limit,
            };
            let res = contained(|| -> Result<()> {
                for b in batches {
                    outputs.extend(s.root.process(from, b, &mut ctx)?);
                }
                Ok(())
            });
            if let Err(e) = res {
                fail_stream(s, &name, e);
                continue;
            }
        }
        after_run(inner, eng, &name, from, outputs, late);
    }
}

/// Writes `batches` (output of `from`) into every sink of `from`. On a database with checkpoints
/// they belong to the open epoch and are published once its checkpoint is durable; without
/// checkpoints each write is committed at once.
pub(super) fn write_sinks(inner: &DbInner, eng: &mut Engine, from: &str, batches: &[RecordBatch]) {
    let epoch = eng.epoch + 1;
    for (name, k) in eng.sinks.iter_mut().filter(|(_, k)| k.input == from && k.failed.is_none()) {
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            let res = if inner.durable.is_some() {
                k.sink.write(epoch, b)
            } else {
                k.writes += 1;
                let e = k.writes;
                k.sink.write(e, b).and_then(|_| k.sink.prepare_commit(e)).and_then(|c| k.sink.commit(e, &c))
            };
            if let Err(e) = res {
                fail_sink(name, k, e);
                break;
            }
            k.rows_out += b.num_rows() as u64;
            k.batches_out += 1;
            k.bytes_out += b.get_array_memory_size() as u64;
        }
    }
}

/// A sink failed: it writes nothing more and every checkpoint fails until it is dropped, so the
/// results it did not write are not lost (a restart from the last checkpoint produces them again).
pub(super) fn fail_sink(name: &str, k: &mut SinkRt, e: Error) {
    let e = e.context(format!("sink '{name}' ({}) failed", k.describe));
    log::warn!(target: "laminardb", "{e}");
    k.failed = Some(e);
}

/// DROP SINK (or the drop of its input): discards what it staged and did not commit.
pub(super) fn drop_sink(name: &str, mut k: SinkRt) {
    if let Err(e) = k.sink.abort() {
        log::warn!(target: "laminardb", "dropping sink '{name}': {e}");
    }
}

/// Marks the stream failed: its subscribers get `e` (after what they have buffered), and every
/// later use of the stream fails with it. The error names the stream ([`Error::failed_stream`]).
pub(super) fn fail_stream(s: &mut StreamRt, name: &str, e: Error) {
    let e = e.context(format!("stream '{name}' failed")).with_failed_stream(name);
    for sub in s.subscribers.drain(..) {
        sub.fail(e.clone()); // reported after the batches already buffered
    }
    s.failed = Some(e);
    // A failed stream never runs again: free its operators' state now, not at DROP. Its plan's
    // fingerprint is kept for checkpoints; state spilled to RocksDB stays until DROP, which finds
    // it through the operators.
    if s.root.operators().iter().all(|o| o.spilled_groups() == 0) {
        s.frozen_fingerprint = Some(fingerprint(s));
        s.root = Node::leaf(String::new());
    }
}

/// Delivers a stream's output, accounts late rows, checks the memory limit, feeds dependents.
pub(super) fn after_run(
    inner: &DbInner,
    eng: &mut Engine,
    name: &str,
    source_of_input: &str,
    outputs: Vec<RecordBatch>,
    late: LateRows,
) {
    let late_target = {
        let s = eng.streams.get_mut(name).expect("exists");
        s.rows_late += late.rows;
        s.late_pairs += late.pairs;
        if let Some(limit) = inner.config.memory_limit {
            let ops = s.root.operators();
            let used: usize = ops.iter().map(|o| o.state_size()).sum();
            if used > limit {
                let op = ops.iter().max_by_key(|o| o.state_size()).map(|o| o.explain()).unwrap_or_default();
                let e = Error::new(
                    ErrorKind::ResourceExhausted,
                    format!("state of {used} bytes exceeds memory_limit {limit} in operator {op}"),
                );
                fail_stream(s, name, e);
                return;
            }
        }
        s.late_to.clone()
    };
    if late.rows > 0
        && let Some(src) = eng.sources.get_mut(source_of_input)
    {
        src.rows_late += late.rows;
    }
    if let Some(t) = late_target
        && !late.batches.is_empty()
    {
        emit(inner, eng, &t, late.batches);
    }
    emit(inner, eng, name, outputs);
}

/// Sends one emission of `name` to its subscribers and MV store, then to the streams reading it.
pub(super) fn emit(inner: &DbInner, eng: &mut Engine, name: &str, outputs: Vec<RecordBatch>) {
    let outputs: Vec<RecordBatch> = outputs.into_iter().filter(|b| b.num_rows() > 0).collect();
    if outputs.is_empty() {
        return;
    }
    let batch = if outputs.len() == 1 {
        outputs.into_iter().next().expect("one")
    } else {
        match datafusion::arrow::compute::concat_batches(&outputs[0].schema(), &outputs) {
            Ok(b) => b,
            Err(e) => {
                let s = eng.streams.get_mut(name).expect("exists");
                fail_stream(s, name, e.into());
                return;
            }
        }
    };
    {
        let Engine { streams, pending, epoch, .. } = &mut *eng;
        let Some(s) = streams.get_mut(name) else { return };
        s.rows_out += batch.num_rows() as u64;
        s.batches_out += 1;
        s.bytes_out += batch.get_array_memory_size() as u64;
        if let Some(mv) = &mut s.mv
            && let Err(e) = mv.apply(&batch)
        {
            fail_stream(s, name, e);
            return;
        }
        if inner.durable.is_some() {
            s.emitted_this_epoch = true;
            if s.history_since.is_some() {
                s.history.push(batch.clone());
            }
        }
        let epoch = *epoch + 1;
        s.subscribers.retain(|sub| matches!(sub.deliver((epoch, batch.clone()), pending), Delivered::Ok));
    }
    // Dependents read the logical columns; changelog weights stay with the batch.
    feed(inner, eng, name, &[batch]);
}

pub(super) fn advance_source_watermark(inner: &DbInner, eng: &mut Engine, source: &str, wm: i64) {
    let Some(s) = eng.sources.get_mut(source) else { return };
    if wm <= s.watermark {
        return;
    }
    s.watermark = wm;
    propagate_watermark(inner, eng, source);
}

/// Recomputes the watermark of every stream reading `from`; runs window closes where it advanced.
pub(super) fn propagate_watermark(inner: &DbInner, eng: &mut Engine, from: &str) {
    let readers: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].inputs.iter().any(|i| i == from)).cloned().collect();
    for name in readers {
        let wm = combined_watermark(eng, &eng.streams[&name].inputs);
        let mut outputs = vec![];
        let mut late = LateRows::default();
        {
            let s = eng.streams.get_mut(&name).expect("listed");
            if wm <= s.watermark || s.failed.is_some() {
                continue;
            }
            let mut ctx = OpCtx {
                watermark: s.watermark,
                late: &mut late,
                pool: inner.pool.as_ref(),
                memory_limit: inner.config.memory_limit,
            };
            let res = contained(|| s.root.on_watermark(wm, &mut ctx)).map(|o| outputs.extend(o));
            s.watermark = wm;
            if let Err(e) = res {
                fail_stream(s, &name, e);
                continue;
            }
        }
        after_run(inner, eng, &name, from, outputs, late);
        propagate_watermark(inner, eng, &name);
    }
}

pub(super) fn run_ticks(inner: &DbInner, eng: &mut Engine, now: i64) {
    let due: Vec<String> =
        eng.order.iter().filter(|n| eng.streams[*n].tick.is_some_and(|t| t.1 <= now)).cloned().collect();
    for name in due {
        let mut outputs = vec![];
        let mut late = LateRows::default();
        {
            let s = eng.streams.get_mut(&name).expect("listed");
            let (period, mut next) = s.tick.expect("due");
            while next <= now {
                next += period;
            }
            s.tick = Some((period, next));
            if s.failed.is_some() {
                continue;
            }
            let mut ctx = OpCtx {
                watermark: s.watermark,
                late: &mut late,
                pool: inner.pool.as_ref(),
                memory_limit: inner.config.memory_limit,
            };
            let res = contained(|| s.root.on_tick(&mut ctx)).map(|o| outputs.extend(o));
            if let Err(e) = res {
                fail_stream(s, &name, e);
                continue;
            }
        }
        let src = eng.streams[&name].inputs.first().cloned().unwrap_or_default();
        after_run(inner, eng, &name, &src, outputs, late);
    }
}
