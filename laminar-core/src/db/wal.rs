//! The write-ahead log's group commit: pushers frame records under one lock, a leader writes
//! and fsyncs the group, and the group's events reach the pipeline only once they are durable.
//! The log's records, segments and replay are in `durable/log.rs`.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::config::Durability;
use crate::durable::{self, CheckpointStats, LogWriter, Record, Store};
use crate::error::{Error, Result};

use super::*;

/// The on-disk side of a database opened with durability `checkpoint` or `wal`.
pub(super) struct Durable {
    pub(super) store: Store,
    pub(super) level: Durability,
    pub(super) log: Mutex<LogState>,
    pub(super) log_cv: parking_lot::Condvar,
    /// Held for writing by a catalog statement from before it runs until it is logged; a
    /// checkpoint (which must see the catalog and the log position agree) waits for it.
    pub(super) ddl: parking_lot::RwLock<()>,
    /// Start a new log segment at the next commit (after a checkpoint, so old ones can go).
    pub(super) rotate: AtomicBool,
    pub(super) interval_ms: Option<i64>,
    pub(super) retain: usize,
    pub(super) recovery: Mutex<RecoveryInfo>,
    pub(super) last_checkpoint: Mutex<Option<CheckpointStats>>,
}

/// The write-ahead log's group commit. Pushers frame their records into `buf` under the lock and
/// wait; one of them (the leader) writes and fsyncs the whole group with the lock released, then
/// hands the group's events to the pipeline in sequence order: a change reaches the pipeline
/// only once it is durable.
pub(super) struct LogState {
    pub(super) writer: Option<LogWriter>,
    pub(super) buf: Vec<u8>,
    pub(super) buf_first: u64,
    pub(super) pending: Vec<Event>,
    pub(super) next_seq: u64,
    pub(super) durable: u64,
    pub(super) committing: bool,
    /// A failed write or fsync: the log's state on disk is unknown, so every later change is
    /// refused until the database is reopened (recovery finds what did reach the disk).
    pub(super) failed: Option<Error>,
}

impl Durable {
    /// Orders one change among the logged ones and, when `rec` is given (level `wal`), returns
    /// once its record is durable and the change has been handed to the pipeline.
    pub(super) fn submit(
        &self,
        tx: &Sender<Event>,
        rec: Option<durable::Prepared>,
        make: impl FnOnce(u64) -> Event,
    ) -> Result<()> {
        let mut st = self.log.lock();
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        let Some(p) = rec else {
            let seq = st.next_seq;
            st.next_seq += 1;
            return tx.send(make(seq)).map_err(|_| Error::closed());
        };
        let seq = Self::buffer(&mut st, &p);
        st.pending.push(make(seq));
        self.wait_durable(&mut st, seq, tx)
    }

    /// Numbers a prepared record and frames it into the group being gathered; its number.
    pub(super) fn buffer(st: &mut LogState, p: &durable::Prepared) -> u64 {
        let seq = st.next_seq;
        st.next_seq += 1;
        if st.buf.is_empty() {
            st.buf_first = seq;
        }
        durable::frame(&mut st.buf, seq, p);
        seq
    }

    pub(super) fn wait_durable(
        &self,
        st: &mut parking_lot::MutexGuard<'_, LogState>,
        seq: u64,
        tx: &Sender<Event>,
    ) -> Result<()> {
        loop {
            if st.durable >= seq {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.committing {
                self.log_cv.wait(st);
            } else {
                self.commit(st, tx);
            }
        }
    }

    /// Writes and fsyncs the buffered group with the lock released, then hands its events to
    /// the pipeline in order.
    pub(super) fn commit(&self, st: &mut parking_lot::MutexGuard<'_, LogState>, tx: &Sender<Event>) {
        let upto = st.next_seq - 1;
        if st.buf.is_empty() {
            st.durable = st.durable.max(upto);
            return;
        }
        let buf = std::mem::take(&mut st.buf);
        let first = st.buf_first;
        let events = std::mem::take(&mut st.pending);
        let mut writer = st.writer.take();
        st.committing = true;
        let rotate = self.rotate.swap(false, Ordering::AcqRel);
        let res = parking_lot::MutexGuard::unlocked(st, || match &mut writer {
            Some(w) => w.append(first, &buf, rotate),
            None => Err(Error::closed()),
        });
        st.writer = writer;
        st.committing = false;
        match res {
            Ok(()) => {
                st.durable = st.durable.max(upto);
                for ev in events {
                    let _ = tx.send(ev);
                }
            }
            Err(e) => {
                st.failed = Some(Error::new(
                    e.kind(),
                    format!(
                        "{}; nothing of the changes in this commit was applied, and the database refuses changes until it is reopened",
                        e.message()
                    ),
                ));
            }
        }
        self.log_cv.notify_all();
    }

    /// Commits what is buffered and waits for commits in flight: afterwards every logged change
    /// is in the pipeline's queue.
    pub(super) fn drain(&self, st: &mut parking_lot::MutexGuard<'_, LogState>, tx: &Sender<Event>) -> Result<()> {
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.committing {
                self.log_cv.wait(st);
            } else if !st.buf.is_empty() {
                self.commit(st, tx);
            } else {
                return Ok(());
            }
        }
    }

    /// Logs `rec` now and waits until it is durable; its sequence number.
    pub(super) fn log_now(
        &self,
        st: &mut parking_lot::MutexGuard<'_, LogState>,
        tx: &Sender<Event>,
        rec: &Record,
    ) -> Result<u64> {
        let seq = Self::buffer(st, &durable::prepare(rec)?);
        self.wait_durable(st, seq, tx)?;
        Ok(seq)
    }
}
