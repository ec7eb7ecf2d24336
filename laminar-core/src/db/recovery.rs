//! Reopening a durable database: restore the newest usable checkpoint, then replay the log
//! records after it, then start the connectors' readers at the positions recovered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray};

use crate::config::Durability;
use crate::durable::{self, LogWriter, Record};
use crate::error::{Error, ErrorKind, Result};
use crate::sql::{self};

use super::*;

/// What reopening a durable database did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryInfo {
    /// The checkpoint restored, if any.
    pub epoch: Option<u64>,
    /// Log records replayed past it.
    pub records_replayed: u64,
    /// Torn or corrupt files skipped: an unusable checkpoint, a torn log tail dropped, log
    /// damage skipped with `wal_recovery = 'salvage'` and what it lost (also logged when the
    /// database opens: one `log::warn!` each, target `"laminardb"`).
    pub warnings: Vec<String>,
    /// Time to restore and replay, in milliseconds.
    pub millis: f64,
}

impl Database {
    /// Restores the newest intact checkpoint, replays the log past it, then starts connectors.
    pub(super) fn recover(&self) -> Result<()> {
        let d = self.inner.durable.as_ref().expect("durable");
        let t0 = Instant::now();
        let mut info = RecoveryInfo::default();
        self.inner.recovering.store(true, Ordering::Release);
        let mut after = 0;
        let latest = durable::load_latest(&d.store, &mut info.warnings)?;
        match (&self.inner.state, latest.as_ref().and_then(|l| l.state_dir.as_ref())) {
            (Some(st), from) => st.reset(from.map(|(d, files)| (d.as_path(), files.as_slice())))?,
            (None, Some(_)) => {
                return Err(Error::invalid_argument(format!(
                    "checkpoint {} keeps operator state in RocksDB: open it with state_backend = 'rocksdb'",
                    latest.as_ref().map_or(0, |l| l.epoch)
                )));
            }
            (None, None) => {}
        }
        if let Some(l) = latest {
            info.epoch = Some(l.epoch);
            after = l.seq;
            self.restore_checkpoint(l)?;
        }
        // Progress: an INFO line (target "laminardb") at most once a second while the log
        // replays, and one when it is done.
        let replayed = std::cell::Cell::new(0u64);
        let mut next_report = Instant::now() + std::time::Duration::from_secs(1);
        let mut bytes = (0u64, 0u64);
        let log = durable::replay_log_with_progress(
            &d.store.wal_dir(),
            after,
            self.inner.config.wal_recovery,
            &mut info.warnings,
            |seq, rec| {
                replayed.set(replayed.get() + 1);
                self.replay(seq, rec)
            },
            |done, total| {
                bytes = (done, total);
                if Instant::now() >= next_report {
                    next_report = Instant::now() + std::time::Duration::from_secs(1);
                    log::info!(
                        target: "laminardb",
                        "recovery: replaying the write-ahead log: {done} of {total} bytes ({:.0}%), {} records, {:.1} s",
                        done as f64 * 100.0 / total.max(1) as f64,
                        replayed.get(),
                        t0.elapsed().as_secs_f64()
                    );
                }
            },
        )?;
        let replayed = replayed.get();
        let last = log.last;
        self.flush()?;
        {
            let mut st = d.log.lock();
            st.next_seq = last + 1;
            st.durable = last;
            let every_seq = d.level == Durability::Wal;
            st.writer = Some(LogWriter::create(
                &d.store.wal_dir(),
                last + 1,
                every_seq,
                d.store.faults.clone(),
                durable::Io::new(d.store.io_backend)?,
            )?);
        }
        {
            let mut eng = self.inner.engine.lock();
            eng.applied_seq = eng.applied_seq.max(last);
            eng.next_checkpoint_ms = d.interval_ms.map(|i| self.inner.clock.now_ms() + i);
        }
        self.inner.recovering.store(false, Ordering::Release);
        if log.lost {
            // Salvaged: a checkpoint covers what was recovered, so the next open no longer
            // needs the damaged log (and finds nothing to report).
            if let Err(e) = self.checkpoint() {
                info.warnings.push(format!(
                    "the checkpoint after salvaging the log failed ({e}); the next open will meet the damaged log again"
                ));
            }
        }
        self.start_deferred_readers()?;
        info.records_replayed = replayed;
        info.millis = t0.elapsed().as_secs_f64() * 1000.0;
        log::info!(
            target: "laminardb",
            "recovery: {}, replayed {replayed} write-ahead log records ({} bytes) in {:.0} ms",
            info.epoch.map_or("no checkpoint".to_string(), |e| format!("restored checkpoint {e}")),
            bytes.0,
            info.millis
        );
        for w in &info.warnings {
            log::warn!(target: "laminardb", "{w}");
        }
        *d.recovery.lock() = info;
        Ok(())
    }

    /// Recreates the catalog of a checkpoint and loads every object's state into it.
    pub(super) fn restore_checkpoint(&self, mut l: durable::Loaded) -> Result<()> {
        let epoch = l.epoch;
        let bad = |m: String| Error::new(ErrorKind::Io, format!("checkpoint {epoch}: {m}"));
        let catalog = l
            .objects
            .remove("catalog")
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| bad("no catalog".into()))?;
        let rows = catalog::read(&catalog).map_err(|e| bad(e.to_string()))?;
        // The sinks' committables, published by their CREATE below, before any result flows.
        let mut committables = HashMap::new();
        for key in l.objects.keys().filter(|k| k.starts_with("sink:")).cloned().collect::<Vec<_>>() {
            let lists = l.objects.remove(&key).unwrap_or_default();
            let c = lists
                .first()
                .and_then(|l| l.first())
                .and_then(|b| b.column(0).as_binary_opt::<i32>().filter(|a| a.len() == 1).map(|a| a.value(0).to_vec()))
                .ok_or_else(|| bad(format!("malformed committable of {key}")))?;
            committables.insert(key["sink:".len()..].to_string(), c);
        }
        *self.inner.restored_sinks.lock() = committables;
        for r in &rows {
            if r.kind != "late" {
                for st in sql::parse_sql(&r.sql)? {
                    self.execute_statement(st.statement, &st.text)
                        .map_err(|e| e.context(format!("checkpoint {epoch}: recreating '{}'", r.name)))?;
                }
            }
        }
        let mut eng = self.inner.engine.lock();
        for r in rows {
            if r.kind == "source" || r.kind == "table" {
                let s = eng
                    .sources
                    .get_mut(&r.name)
                    .ok_or_else(|| bad(format!("source '{}' missing after its CREATE", r.name)))?;
                let mut lists = l.objects.remove(&format!("source:{}", r.name)).unwrap_or_default().into_iter();
                if let (Some(t), Some(rows)) = (s.table.as_mut(), lists.next()) {
                    for b in &rows {
                        t.upsert(b)?;
                    }
                }
                for b in lists.next().unwrap_or_default() {
                    s.retained_rows += b.num_rows();
                    s.retained.push_back(b);
                }
                trim_retained(&mut s.retained, &mut s.retained_rows, self.inner.config.source_retention);
                s.watermark = r.watermark;
                s.rows_in = r.rows_in;
                s.batches_in = r.batches_in;
                s.rows_late = r.rows_late;
                s.positions = r.positions;
            } else if r.kind == "sink" {
                if let Some(k) = eng.sinks.get_mut(&r.name) {
                    k.rows_out = r.rows_out;
                    k.batches_out = r.batches_out;
                }
            } else {
                let s = eng
                    .streams
                    .get_mut(&r.name)
                    .ok_or_else(|| bad(format!("stream '{}' missing after its CREATE", r.name)))?;
                if r.kind != "late" {
                    let now = fingerprint(s);
                    if !same_plan(&now, &r.fingerprint) {
                        return Err(Error::invalid_state(format!(
                            "checkpoint {epoch}: '{}' plans differently in this version of LaminarDB than when its state was saved, so that state cannot be loaded safely.\nsaved:\n{}\nnow:\n{}\nOpen the database with the version that wrote it, or remove '{}' to start over",
                            r.name,
                            r.fingerprint,
                            now,
                            self.inner.durable.as_ref().map(|d| d.store.root.display().to_string()).unwrap_or_default()
                        )));
                    }
                    let mut lists = l.objects.remove(&format!("stream:{}", r.name)).unwrap_or_default();
                    let mv_state = lists.pop().ok_or_else(|| bad(format!("no state for '{}'", r.name)))?;
                    // A failed stream's operators are not restored: it never runs again (and
                    // its checkpoint may hold no operator state, freed when it failed).
                    if r.failed.is_none() {
                        s.restore_ops(lists)
                            .map_err(|e| e.context(format!("checkpoint {epoch}: restoring '{}'", r.name)))?;
                    }
                    if let Some(mv) = &mut s.mv {
                        mv.restore(mv_state)?;
                    }
                }
                s.watermark = r.watermark;
                s.rows_out = r.rows_out;
                s.batches_out = r.batches_out;
                s.rows_late = r.rows_late;
                s.late_pairs = r.late_pairs;
                s.history_since = r.history_since;
                if let Some((kind, msg)) = r.failed {
                    let kind = ErrorKind::from_name(&kind).unwrap_or(ErrorKind::Internal);
                    s.failed = Some(Error::new(kind, msg).with_failed_stream(r.name.clone()));
                }
            }
        }
        eng.epoch = l.epoch;
        eng.applied_seq = l.seq;
        self.inner.restored_sinks.lock().clear();
        Ok(())
    }

    /// Applies one logged change during recovery, as it was applied before.
    pub(super) fn replay(&self, seq: u64, rec: Record) -> Result<()> {
        let queue = |name: &str| -> Result<Arc<SourceQueue>> {
            let eng = self.inner.engine.lock();
            eng.sources.get(name).map(|s| s.queue.clone()).ok_or_else(|| {
                Error::new(ErrorKind::Io, format!("log record {seq}: no source '{name}' to replay it into"))
            })
        };
        match rec {
            Record::Ddl { sql } => {
                self.flush()?;
                for st in sql::parse_sql(&sql)? {
                    self.execute_statement(st.statement, &st.text)
                        .map_err(|e| e.context(format!("replaying log record {seq} ({sql})")))?;
                }
                let mut eng = self.inner.engine.lock();
                eng.applied_seq = eng.applied_seq.max(seq);
            }
            Record::Delete { table, rows } => {
                self.flush()?;
                self.apply_delete(&table, &[rows])?;
                let mut eng = self.inner.engine.lock();
                eng.applied_seq = eng.applied_seq.max(seq);
            }
            Record::Batch { source, position, batch } => {
                let q = queue(&source)?;
                self.inner.tx.send(Event::Batch { q, batch, seq, position }).map_err(|_| Error::closed())?;
            }
            Record::Watermark { source, us } => {
                let q = queue(&source)?;
                self.inner.tx.send(Event::Watermark { q, us, seq }).map_err(|_| Error::closed())?;
            }
        }
        Ok(())
    }
}
