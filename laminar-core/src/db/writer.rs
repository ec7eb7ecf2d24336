//! Writing into a source: `SourceWriter` (validation, the bounded queue, the log) and the
//! output a connector's reader writes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::config::{Durability, QueueFullPolicy};
use crate::connector::{self, Position};
use crate::durable::{self, Record};
use crate::error::{Error, ErrorKind, Result};
use crate::operator::NO_WATERMARK;
use crate::runtime::ingest::conform;

use super::*;

/// A handle that pushes into one source. Not shareable across threads at once (`&mut self`);
/// use one writer per thread.
pub struct SourceWriter {
    pub(super) db: Database,
    pub(super) queue: Arc<SourceQueue>,
    pub(super) interrupts: Arc<AtomicU64>,
    /// A connector's reader (see [`ConnectorOutput`]), not a user's writer.
    pub(super) connector: bool,
}

/// Interrupts a write of one [`SourceWriter`] that is waiting for room in a full source queue;
/// that write returns CANCELLED with nothing applied, and the writer stays usable. Any thread.
#[derive(Clone)]
pub struct WriterInterrupt(Arc<AtomicU64>);

impl WriterInterrupt {
    /// Interrupts the write in progress, if any (a write that starts later is not affected).
    pub fn interrupt(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl SourceWriter {
    /// A handle that interrupts this writer's blocked writes from another thread.
    pub fn interrupter(&self) -> WriterInterrupt {
        WriterInterrupt(self.interrupts.clone())
    }

    pub fn source_name(&self) -> &str {
        &self.queue.name
    }
    pub fn schema(&self) -> SchemaRef {
        self.queue.schema.clone()
    }

    /// Queues one change: waits for room in the source queue, then hands it to the pipeline —
    /// on a `wal` database after its log record `rec` is durable.
    pub(super) fn enqueue(&self, rec: impl FnOnce() -> Record, make: impl FnOnce(u64) -> Event) -> Result<()> {
        let generation = self.interrupts.load(Ordering::Acquire);
        self.db.check_open()?;
        let prepared = match &self.db.inner.durable {
            Some(d) if d.level == Durability::Wal => Some(durable::prepare(&rec())?),
            _ => None,
        };
        if self.queue.dropped.load(Ordering::Acquire) {
            return Err(Error::not_found(format!("source '{}' was dropped", self.queue.name)));
        }
        // A connector's reader always waits for room: a full queue pauses reading.
        let policy = if self.connector { QueueFullPolicy::Block } else { self.db.inner.config.queue_full };
        match policy {
            QueueFullPolicy::Fail => self.queue.permits_tx.try_send(()).map_err(|_| {
                Error::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "source '{}' queue is full (queue_full = fail); nothing of this push was applied",
                        self.queue.name
                    ),
                )
            })?,
            QueueFullPolicy::Block if self.queue.permits_tx.try_send(()).is_ok() => {}
            QueueFullPolicy::Block => loop {
                let t = std::time::Instant::now();
                let sent = self.queue.permits_tx.send_timeout((), Duration::from_millis(20));
                self.queue.blocked_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                match sent {
                    Ok(()) => break,
                    Err(_) => {
                        self.db.check_open()?;
                        if self.interrupts.load(Ordering::Acquire) != generation {
                            return Err(Error::cancelled(format!(
                                "the write into '{}' was interrupted while its queue was full; nothing of it was applied",
                                self.queue.name
                            )));
                        }
                        if self.queue.dropped.load(Ordering::Acquire) {
                            return Err(Error::not_found(format!("source '{}' was dropped", self.queue.name)));
                        }
                    }
                }
            },
        }
        let res = match &self.db.inner.durable {
            None => self.db.inner.tx.send(make(0)).map_err(|_| Error::closed()),
            Some(d) => d.submit(&self.db.inner.tx, prepared, make),
        };
        if res.is_err() {
            // The change never reached the pipeline: give its queue slot back.
            let _ = self.queue.permits_rx.try_recv();
        }
        res
    }

    /// Pushes a batch: validated and converted to the source schema (all or nothing), then queued.
    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.write_at(batch, None)
    }

    /// A connector's write: `position` is its partition's position after this batch, recorded
    /// with it (in checkpoints and the log) so recovery resumes the connector there. A batch of
    /// no rows with a position moves the position only (a partition finished, rows skipped).
    pub(super) fn write_at(&mut self, batch: RecordBatch, position: Option<Position>) -> Result<()> {
        self.db.check_open()?;
        let batch = conform(&self.queue.name, &self.queue.schema, &batch)?;
        if batch.num_rows() == 0 && position.is_none() {
            return Ok(());
        }
        self.push(batch, position)
    }

    pub(super) fn push(&self, batch: RecordBatch, position: Option<Position>) -> Result<()> {
        let q = self.queue.clone();
        let logged = batch.clone();
        let logged_position = position.clone();
        self.enqueue(
            || Record::Batch { source: self.queue.name.clone(), position: logged_position, batch: logged },
            move |seq| Event::Batch { q, batch, seq, position },
        )
    }

    /// Advances the source's watermark to `ms` (epoch milliseconds); never moves it back.
    /// `i64::MAX` means end of input.
    pub fn watermark(&mut self, ms: i64) -> Result<()> {
        let us = if ms == i64::MAX { i64::MAX } else { ms.saturating_mul(1000) };
        self.push_watermark(us)
    }

    pub(super) fn push_watermark(&self, us: i64) -> Result<()> {
        let q = self.queue.clone();
        self.enqueue(
            || Record::Watermark { source: self.queue.name.clone(), us },
            move |seq| Event::Watermark { q, us, seq },
        )
    }

    /// Marks the end of input: closes every window that depends only on finished sources.
    pub fn finish(&mut self) -> Result<()> {
        self.push_watermark(i64::MAX)
    }

    /// The source's current watermark in epoch milliseconds (after what has been processed).
    pub fn current_watermark(&self) -> Result<Option<i64>> {
        let eng = self.db.inner.engine.lock();
        let w = eng.sources.get(&self.queue.name).map(|s| s.watermark).unwrap_or(NO_WATERMARK);
        Ok((w != NO_WATERMARK).then(|| if w == i64::MAX { i64::MAX } else { w.div_euclid(1000) }))
    }

    /// Waits until everything pushed so far has been processed.
    pub fn flush(&mut self) -> Result<()> {
        self.db.flush()
    }
}

/// Where a connector's reader puts its batches: the source's queue, like a user's writer, but
/// always waiting for room and holding the database weakly (the reader thread does not keep a
/// dropped database alive).
pub(super) struct ConnectorOutput {
    pub(super) db: std::sync::Weak<DbInner>,
    pub(super) queue: Arc<SourceQueue>,
    /// The dead-letter source and its positions when the reader started (partition `source/p` →
    /// the position after the last record given to it).
    pub(super) dead_letter: Option<(Arc<SourceQueue>, Positions)>,
}

impl ConnectorOutput {
    pub(super) fn writer(&self) -> Result<SourceWriter> {
        self.writer_for(&self.queue)
    }

    /// A connector's writer into `queue` (the source's, or its dead-letter source's).
    fn writer_for(&self, queue: &Arc<SourceQueue>) -> Result<SourceWriter> {
        let inner = self.db.upgrade().ok_or_else(Error::closed)?;
        Ok(SourceWriter {
            db: Database { inner },
            queue: queue.clone(),
            interrupts: Arc::new(AtomicU64::new(0)),
            connector: true,
        })
    }
}

impl connector::SourceOutput for ConnectorOutput {
    fn write(&mut self, batch: RecordBatch, position: Position) -> Result<()> {
        let mut w = self.writer()?;
        // A change-data-capture batch: the rows conformed, the `__deleted` flags kept after them.
        if batch.num_columns() == self.queue.schema.fields().len() + 1
            && batch.schema().fields().last().is_some_and(|f| f.name() == super::driver::DELETED)
        {
            use datafusion::arrow::datatypes::{DataType, Field, Schema};
            let n = batch.num_columns() - 1;
            let flags = batch.column(n).clone();
            let rows = conform(&self.queue.name, &self.queue.schema, &batch.project(&(0..n).collect::<Vec<_>>())?)?;
            let mut fields: Vec<_> = rows.schema().fields().iter().cloned().collect();
            fields.push(Arc::new(Field::new(super::driver::DELETED, DataType::Boolean, true)));
            let mut cols = rows.columns().to_vec();
            cols.push(flags);
            return w.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?, Some(position));
        }
        w.write_at(batch, Some(position))
    }

    fn finish(&mut self) -> Result<()> {
        self.writer()?.finish()
    }

    fn stopped(&self) -> bool {
        self.queue.dropped.load(Ordering::Acquire)
            || self.db.upgrade().is_none_or(|inner| inner.closed.load(Ordering::Acquire))
    }

    fn fail(&mut self, error: Error) {
        if let Some(inner) = self.db.upgrade() {
            let _ = inner.tx.send(Event::SourceFailed { q: self.queue.clone(), error });
        }
    }

    /// Writes the records into the dead-letter source with the partition's position (`source/p`),
    /// less those it holds already: a record before its recorded position there went to it
    /// before a restart (positions compared as numbers, as Kafka offsets are).
    fn dead_letters(&mut self, batch: RecordBatch, position: Position) -> Result<()> {
        let Some((q, floor)) = &self.dead_letter else {
            return Err(Error::internal(format!("source '{}' has no dead-letter source", self.queue.name)));
        };
        let partition = format!("{}/{}", self.queue.name, position.partition);
        let batch = match floor.get(&partition).and_then(|f| f.parse::<i64>().ok()) {
            None => batch,
            Some(f) => {
                use datafusion::arrow::array::{AsArray, BooleanArray};
                let at = batch.column(2).as_string::<i32>();
                let keep = BooleanArray::from_iter(
                    at.iter().map(|p| Some(p.and_then(|p| p.parse::<i64>().ok()).is_none_or(|p| p >= f))),
                );
                datafusion::arrow::compute::filter_record_batch(&batch, &keep)?
            }
        };
        let batch = conform(&q.name, &q.schema, &batch)?;
        self.writer_for(q)?.push(batch, Some(Position { partition, offset: position.offset, finished: false }))
    }

    fn take_checkpointed(&self) -> Option<Positions> {
        self.queue.checkpointed.lock().take()
    }
}
