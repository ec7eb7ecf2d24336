//! SESSION window aggregation. A session of a key is `[first_ts, last_ts + gap)`; a row whose own
//! interval `[ts, ts + gap)` overlaps one or more sessions merges them. Each session keeps one
//! DataFusion `Accumulator` per aggregate; merging moves state with `state()`/`merge_batch()`.
//!
//! Emission (DESIGN §3): a session fires once `watermark >= end` and closes `allowed_lateness`
//! later. A merge retracts the rows already emitted for the sessions it replaces, so
//! `EMIT CHANGES` and corrected `EMIT ON WINDOW CLOSE` output stay exact. Sessions merge, so an
//! upsert by (key, bounds) cannot express them: `EMIT ON UPDATE` / `EVERY` are refused at plan time.
//!
//! Lateness: a row is late when `ts + gap + allowed_lateness <= watermark` (decided upstream by
//! window assignment) or when its interval overlaps a session of its key that has already closed
//! (it cannot join it any more); both are counted and routed like other late rows.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, filter, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use super::aggregate::{AggSpec, GroupCol};
use super::{OpCtx, Operator, NO_WATERMARK};
use crate::error::Result;
use crate::sql::EmitMode;

struct Session {
    start: i64,
    end: i64,
    accs: Vec<Box<dyn Accumulator>>,
    /// What was last emitted for this session: bounds and values.
    emitted: Option<(i64, i64, Vec<ScalarValue>)>,
    /// Emitted rows of sessions merged into this one, to retract.
    retract: Vec<(i64, i64, Vec<ScalarValue>)>,
    dirty: bool,
}

#[derive(Default)]
struct KeyState {
    key: Option<OwnedRow>,
    sessions: Vec<Session>,
    /// Bounds of closed sessions that an on-time row could still overlap.
    closed: Vec<(i64, i64)>,
}

pub(crate) struct SessionAggregate {
    pub key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub layout: Vec<GroupCol>,
    pub aggs: Vec<AggSpec>,
    /// Input column carrying each row's event time (window_start of the assigned pair).
    pub time_col: usize,
    pub gap: i64,
    pub emit: EmitMode,
    pub lateness: i64,
    pub output_schema: SchemaRef,
    key_conv: RowConverter,
    keys: HashMap<Vec<u8>, KeyState>,
    watermark: i64,
}

impl SessionAggregate {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn try_new(
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<datafusion::arrow::datatypes::DataType>,
        layout: Vec<GroupCol>,
        aggs: Vec<AggSpec>,
        time_col: usize,
        gap: i64,
        emit: EmitMode,
        lateness: i64,
        output_schema: SchemaRef,
    ) -> Result<Self> {
        Ok(SessionAggregate {
            key_exprs,
            key_conv: RowConverter::new(key_types.into_iter().map(SortField::new).collect())?,
            layout,
            aggs,
            time_col,
            gap,
            emit,
            lateness,
            output_schema,
            keys: HashMap::new(),
            watermark: NO_WATERMARK,
        })
    }

    fn changelog(&self) -> bool {
        self.output_schema.fields().last().is_some_and(|f| f.name() == super::WEIGHT_COLUMN)
    }

    fn values(s: &mut Session) -> Result<Vec<ScalarValue>> {
        s.accs.iter_mut().map(|a| Ok(a.evaluate()?)).collect()
    }

    /// Rows for (key, start, end, values, weight) tuples.
    fn rows(&self, rows: Vec<(Option<OwnedRow>, i64, i64, Vec<ScalarValue>, i64)>) -> Result<Option<RecordBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let key_cols = if self.key_exprs.is_empty() {
            vec![]
        } else {
            self.key_conv.convert_rows(rows.iter().map(|r| r.0.as_ref().expect("keyed").row()))?
        };
        let mut cols: Vec<ArrayRef> = vec![];
        for gc in &self.layout {
            cols.push(match gc {
                GroupCol::Key(i) => key_cols[*i].clone(),
                GroupCol::WindowStart => Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))),
                GroupCol::WindowEnd => Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))),
            });
        }
        for i in 0..self.aggs.len() {
            let field = self.output_schema.field(self.layout.len() + i);
            let arr = ScalarValue::iter_to_array(rows.iter().map(|r| r.3[i].clone()))?;
            cols.push(if arr.data_type() == field.data_type() { arr } else { datafusion::arrow::compute::cast(&arr, field.data_type())? });
        }
        if self.changelog() {
            cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.4))));
        }
        Ok(Some(RecordBatch::try_new(self.output_schema.clone(), cols)?))
    }

    /// Emits the pending changes of sessions selected by `pick`.
    fn publish(&mut self, pick: impl Fn(&Session) -> bool, out: &mut Vec<RecordBatch>) -> Result<()> {
        let changelog = self.changelog();
        let mut retractions = vec![];
        let mut inserts = vec![];
        for ks in self.keys.values_mut() {
            for s in ks.sessions.iter_mut() {
                if !s.dirty || !pick(s) {
                    continue;
                }
                s.dirty = false;
                let vals = Self::values(s)?;
                for (a, b, v) in s.retract.drain(..) {
                    retractions.push((ks.key.clone(), a, b, v, -1));
                }
                if let Some((a, b, v)) = s.emitted.take() {
                    if (a, b) == (s.start, s.end) && v == vals {
                        s.emitted = Some((a, b, v));
                        continue;
                    }
                    retractions.push((ks.key.clone(), a, b, v, -1));
                }
                inserts.push((ks.key.clone(), s.start, s.end, vals.clone(), 1));
                s.emitted = Some((s.start, s.end, vals));
            }
        }
        if changelog {
            if let Some(b) = self.rows(retractions)? {
                out.push(b);
            }
        }
        if let Some(b) = self.rows(inserts)? {
            out.push(b);
        }
        Ok(())
    }

    fn concat(&self, out: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        if out.len() <= 1 {
            return Ok(out);
        }
        Ok(vec![concat_batches(&self.output_schema, &out)?])
    }
}

impl Operator for SessionAggregate {
    fn explain(&self) -> String {
        format!(
            "SessionAggregate: keys=[{}] gap={} aggs=[{}] emit={}",
            self.key_exprs.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
            crate::util::fmt_duration_us(self.gap),
            self.aggs.iter().map(|a| a.expr.name().to_string()).collect::<Vec<_>>().join(", "),
            self.emit
        )
    }

    fn process_batch(&mut self, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(vec![]);
        }
        self.watermark = ctx.watermark;
        let keys: Vec<ArrayRef> = self.key_exprs.iter().map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n))).collect::<datafusion::error::Result<_>>()?;
        let key_rows = if keys.is_empty() { None } else { Some(self.key_conv.convert_columns(&keys)?) };
        let ts = super::window::ts_values(batch.column(self.time_col)).to_vec();
        let mut args = vec![];
        for a in &self.aggs {
            let mut vals = a.args.iter().map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n))).collect::<datafusion::error::Result<Vec<_>>>()?;
            if let Some(f) = &a.filter {
                // Rows failing FILTER are kept out of this aggregate only: null them out by
                // filtering per run below; here we just remember the mask.
                let m = f.evaluate(&batch)?.into_array(n)?;
                vals.push(m);
            }
            args.push(vals);
        }
        // Rows of each key, in event-time order.
        let mut by_key: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
        for r in 0..n {
            let k = key_rows.as_ref().map(|kr| kr.row(r).as_ref().to_vec()).unwrap_or_default();
            by_key.entry(k).or_default().push(r as u32);
        }
        let mut late_rows: Vec<u32> = vec![];
        let gap = self.gap;
        let wm = ctx.watermark;
        for (k, mut rows) in by_key {
            rows.sort_by_key(|&r| ts[r as usize]);
            let first_row = rows[0];
            let aggs = &self.aggs;
            let new_accs = || -> Result<Vec<Box<dyn Accumulator>>> { aggs.iter().map(|a| Ok(a.expr.create_accumulator()?)).collect() };
            let ks = self.keys.entry(k).or_insert_with(|| KeyState {
                key: key_rows.as_ref().map(|kr| kr.row(first_row as usize).owned()),
                ..Default::default()
            });
            // Runs of rows whose intervals chain together.
            let mut i = 0;
            while i < rows.len() {
                let rs = ts[rows[i] as usize];
                let mut re = rs + gap;
                let mut j = i + 1;
                while j < rows.len() && ts[rows[j] as usize] < re {
                    re = re.max(ts[rows[j] as usize] + gap);
                    j += 1;
                }
                let run: Vec<u32> = rows[i..j].to_vec();
                i = j;
                if ks.closed.iter().any(|&(s, e)| rs < e && s < re) {
                    // Overlaps a closed session: late for it.
                    late_rows.extend(run);
                    continue;
                }
                let mut start = rs;
                let mut end = re;
                let mut merged: Vec<Session> = vec![];
                let mut keep = vec![];
                for s in ks.sessions.drain(..) {
                    if s.start < end && start < s.end {
                        start = start.min(s.start);
                        end = end.max(s.end);
                        merged.push(s);
                    } else {
                        keep.push(s);
                    }
                }
                // Merging may now reach sessions that overlap the widened bounds.
                loop {
                    let before = merged.len();
                    let mut rest = vec![];
                    for s in keep.drain(..) {
                        if s.start < end && start < s.end {
                            start = start.min(s.start);
                            end = end.max(s.end);
                            merged.push(s);
                        } else {
                            rest.push(s);
                        }
                    }
                    keep = rest;
                    if merged.len() == before {
                        break;
                    }
                }
                let mut session = match merged.len() {
                    0 => Session { start, end, accs: new_accs()?, emitted: None, retract: vec![], dirty: true },
                    _ => {
                        let mut base = merged.remove(0);
                        for mut other in merged {
                            for (acc, oacc) in base.accs.iter_mut().zip(other.accs.iter_mut()) {
                                let st: Vec<ArrayRef> = oacc.state()?.into_iter().map(|s| s.to_array()).collect::<datafusion::error::Result<_>>()?;
                                acc.merge_batch(&st)?;
                            }
                            base.retract.append(&mut other.retract);
                            if let Some(e) = other.emitted.take() {
                                base.retract.push(e);
                            }
                        }
                        base.start = start;
                        base.end = end;
                        base
                    }
                };
                session.dirty = true;
                let idx = UInt32Array::from(run);
                for (acc, (a, spec)) in session.accs.iter_mut().zip(args.iter().zip(&self.aggs)) {
                    let mut vals = a.iter().map(|c| take(c, &idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
                    if spec.filter.is_some() {
                        let mask = vals.pop().expect("filter mask");
                        let mask = crate::util::null_as_false(mask.as_boolean());
                        vals = vals.iter().map(|v| filter(v, &mask)).collect::<std::result::Result<_, _>>()?;
                    }
                    acc.update_batch(&vals)?;
                }
                keep.push(session);
                keep.sort_by_key(|s| s.start);
                ks.sessions = keep;
            }
        }
        if !late_rows.is_empty() {
            late_rows.sort_unstable();
            ctx.late.rows += late_rows.len() as u64;
            ctx.late.pairs += late_rows.len() as u64;
            let idx = UInt32Array::from(late_rows);
            let cols = batch.columns().iter().map(|c| take(c, &idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
            ctx.late.batches.push(RecordBatch::try_new(batch.schema(), cols)?);
        }
        let mut out = vec![];
        match self.emit {
            EmitMode::Changes => self.publish(|_| true, &mut out)?,
            EmitMode::OnWindowClose if self.lateness > 0 => {
                self.publish(|s| wm != NO_WATERMARK && s.end <= wm, &mut out)?;
                // A fired session that merged into one still open: take its row back now.
                let mut retractions = vec![];
                for ks in self.keys.values_mut() {
                    for s in ks.sessions.iter_mut().filter(|s| s.dirty) {
                        for (a, b, v) in s.retract.drain(..) {
                            retractions.push((ks.key.clone(), a, b, v, -1));
                        }
                        if let Some((a, b, v)) = s.emitted.take() {
                            retractions.push((ks.key.clone(), a, b, v, -1));
                        }
                    }
                }
                if let Some(b) = self.rows(retractions)? {
                    out.insert(0, b);
                }
            }
            _ => {}
        }
        self.concat(out)
    }

    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        self.watermark = wm;
        let lateness = self.lateness;
        let mut out = vec![];
        match self.emit {
            EmitMode::OnWindowClose => self.publish(|s| s.end <= wm, &mut out)?,
            EmitMode::Final => self.publish(|s| s.end.saturating_add(lateness) <= wm, &mut out)?,
            _ => {}
        }
        let horizon = self.gap.saturating_add(lateness);
        for ks in self.keys.values_mut() {
            let mut kept = vec![];
            for s in ks.sessions.drain(..) {
                if s.end.saturating_add(lateness) <= wm {
                    ks.closed.push((s.start, s.end));
                } else {
                    kept.push(s);
                }
            }
            ks.sessions = kept;
            ks.closed.retain(|&(_, e)| e.saturating_add(horizon) > wm);
        }
        self.keys.retain(|_, ks| !ks.sessions.is_empty() || !ks.closed.is_empty());
        self.concat(out)
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Err(crate::error::Error::not_implemented("snapshots of SESSION window state are not available yet"))
    }

    fn state_size(&self) -> usize {
        self.keys
            .values()
            .map(|k| 64 + k.sessions.iter().map(|s| 64 + s.accs.iter().map(|a| a.size()).sum::<usize>()).sum::<usize>())
            .sum()
    }
}
