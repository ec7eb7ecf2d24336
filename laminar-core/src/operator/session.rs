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
//!
//! State (`snapshot`/`restore`, and so checkpoints): the watermark, every open session (key,
//! bounds, accumulator states, whether it changed since it was last emitted), the rows already
//! emitted for it and those still to retract, and the closed sessions' bounds.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, TimestampMicrosecondArray, UInt32Array, new_empty_array,
};
use datafusion::arrow::compute::{concat_batches, filter, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use super::aggregate::{AggSpec, GroupCol};
use super::{NO_WATERMARK, OpCtx, Operator};
use crate::error::{Error, Result};
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

    /// Every aggregate's state fields, one after another.
    fn state_fields(&self) -> Result<Vec<FieldRef>> {
        let mut out = vec![];
        for a in &self.aggs {
            out.extend(a.expr.state_fields()?);
        }
        Ok(out)
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
                GroupCol::WindowStart => {
                    Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1)))
                }
                GroupCol::WindowEnd => Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))),
            });
        }
        for i in 0..self.aggs.len() {
            let field = self.output_schema.field(self.layout.len() + i);
            let arr = ScalarValue::iter_to_array(rows.iter().map(|r| r.3[i].clone()))?;
            cols.push(if arr.data_type() == field.data_type() {
                arr
            } else {
                datafusion::arrow::compute::cast(&arr, field.data_type())?
            });
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
        if changelog && let Some(b) = self.rows(retractions)? {
            out.push(b);
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
        let keys: Vec<ArrayRef> = self
            .key_exprs
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<_>>()?;
        let key_rows = if keys.is_empty() { None } else { Some(self.key_conv.convert_columns(&keys)?) };
        let ts = super::window::ts_values(batch.column(self.time_col)).to_vec();
        let mut args = vec![];
        for a in &self.aggs {
            let mut vals = a
                .args
                .iter()
                .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
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
            let new_accs = || -> Result<Vec<Box<dyn Accumulator>>> {
                aggs.iter().map(|a| Ok(a.expr.create_accumulator()?)).collect()
            };
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
                                let st: Vec<ArrayRef> = oacc
                                    .state()?
                                    .into_iter()
                                    .map(|s| s.to_array())
                                    .collect::<datafusion::error::Result<_>>()?;
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
            let cols =
                batch.columns().iter().map(|c| take(c, &idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
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

    /// Four batches:
    /// 0. `__watermark`: one row, the watermark this operator last saw;
    /// 1. open sessions: key columns `__key{i}`, `__start`, `__end`, `__dirty` (changed since it
    ///    was last emitted), then every accumulator's state columns `__state{j}`
    ///    (`Accumulator::state`), in the order of the aggregates;
    /// 2. rows emitted for open sessions: `__session` (its row in batch 1), `__retract` (false:
    ///    the row last emitted for that session; true: a row of a session merged into it, still
    ///    to be retracted), `__start`, `__end` and the aggregate values `__value{i}`;
    /// 3. closed sessions an on-time row could still overlap: `__key{i}`, `__start`, `__end`.
    ///
    /// Keys come in a fixed order (that of their row format), not the hash map's, so a stream
    /// whose sessions did not change usually snapshots to the same bytes (and the next
    /// checkpoint need not write it again).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let state_fields = self.state_fields()?;
        let mut order: Vec<Vec<u8>> = self.keys.keys().cloned().collect();
        order.sort_unstable();
        let (mut skeys, mut starts, mut ends, mut dirty) = (vec![], vec![], vec![], vec![]);
        let mut states: Vec<Vec<ScalarValue>> = vec![vec![]; state_fields.len()];
        let (mut e_session, mut e_retract, mut e_start, mut e_end) = (vec![], vec![], vec![], vec![]);
        let mut e_values: Vec<Vec<ScalarValue>> = vec![vec![]; self.aggs.len()];
        let (mut ckeys, mut cstarts, mut cends) = (vec![], vec![], vec![]);
        for k in &order {
            let Some(ks) = self.keys.get_mut(k) else { continue };
            for s in ks.sessions.iter_mut() {
                let index = starts.len() as i64;
                skeys.extend(ks.key.clone());
                starts.push(s.start);
                ends.push(s.end);
                dirty.push(s.dirty);
                let mut col = 0;
                for (acc, spec) in s.accs.iter_mut().zip(&self.aggs) {
                    // `state` may consume what it reports: the session goes on with an
                    // accumulator rebuilt from it.
                    let st = acc.state()?;
                    let arrays = st.iter().map(|v| v.to_array()).collect::<datafusion::error::Result<Vec<_>>>()?;
                    let mut fresh = spec.expr.create_accumulator()?;
                    fresh.merge_batch(&arrays)?;
                    *acc = fresh;
                    for v in st {
                        let Some(column) = states.get_mut(col) else {
                            return Err(Error::internal(format!(
                                "the accumulator of {} reports more state than its {} declared fields",
                                spec.expr.name(),
                                state_fields.len()
                            )));
                        };
                        column.push(v);
                        col += 1;
                    }
                }
                if col != state_fields.len() {
                    return Err(Error::internal(format!(
                        "the session accumulators report {col} state values, their aggregates declare {}",
                        state_fields.len()
                    )));
                }
                let emitted = s.emitted.iter().map(|e| (false, e)).chain(s.retract.iter().map(|e| (true, e)));
                for (retract, (a, b, vals)) in emitted {
                    e_session.push(index);
                    e_retract.push(retract);
                    e_start.push(*a);
                    e_end.push(*b);
                    for (column, v) in e_values.iter_mut().zip(vals) {
                        column.push(v.clone());
                    }
                }
            }
            for &(a, b) in &ks.closed {
                ckeys.extend(ks.key.clone());
                cstarts.push(a);
                cends.push(b);
            }
        }
        let key_columns = |rows: &[OwnedRow]| -> Result<Vec<(Field, ArrayRef)>> {
            if self.key_exprs.is_empty() {
                return Ok(vec![]);
            }
            let cols = self.key_conv.convert_rows(rows.iter().map(|r| r.row()))?;
            Ok(cols
                .into_iter()
                .enumerate()
                .map(|(i, c)| (Field::new(format!("__key{i}"), c.data_type().clone(), true), c))
                .collect())
        };
        // Scalars of one column as an array; `empty`: its type when there are none.
        let array = |values: Vec<ScalarValue>, empty: &DataType| -> Result<ArrayRef> {
            if values.is_empty() { Ok(new_empty_array(empty)) } else { Ok(ScalarValue::iter_to_array(values)?) }
        };
        let int64 = |name: &str, v: Vec<i64>| {
            (Field::new(name, DataType::Int64, false), Arc::new(Int64Array::from(v)) as ArrayRef)
        };
        let boolean = |name: &str, v: Vec<bool>| {
            (Field::new(name, DataType::Boolean, false), Arc::new(BooleanArray::from(v)) as ArrayRef)
        };

        let meta = batch(vec![int64("__watermark", vec![self.watermark])])?;

        let mut cols = key_columns(&skeys)?;
        cols.extend([int64("__start", starts), int64("__end", ends), boolean("__dirty", dirty)]);
        for (j, (values, field)) in states.into_iter().zip(&state_fields).enumerate() {
            let a = array(values, field.data_type())?;
            cols.push((Field::new(format!("__state{j}"), a.data_type().clone(), true), a));
        }
        let sessions = batch(cols)?;

        let mut cols = vec![
            int64("__session", e_session),
            boolean("__retract", e_retract),
            int64("__start", e_start),
            int64("__end", e_end),
        ];
        for (i, values) in e_values.into_iter().enumerate() {
            let a = array(values, self.output_schema.field(self.layout.len() + i).data_type())?;
            cols.push((Field::new(format!("__value{i}"), a.data_type().clone(), true), a));
        }
        let emitted = batch(cols)?;

        let mut cols = key_columns(&ckeys)?;
        cols.extend([int64("__start", cstarts), int64("__end", cends)]);
        let closed = batch(cols)?;
        Ok(vec![meta, sessions, emitted, closed])
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.is_empty() {
            self.keys.clear();
            self.watermark = NO_WATERMARK;
            return Ok(());
        }
        let [meta, sessions, emitted, closed] = <[RecordBatch; 4]>::try_from(state)
            .map_err(|s| different_plan(&format!("{} batches, not the four of a SESSION window", s.len())))?;
        let wm = int64s(&meta, "__watermark")?;
        if wm.len() != 1 {
            return Err(different_plan("the watermark is not one row"));
        }
        let watermark = wm.value(0);
        let widths = self.aggs.iter().map(|a| Ok(a.expr.state_fields()?.len())).collect::<Result<Vec<_>>>()?;
        let nkeys = self.key_exprs.len();
        // Each row's key: (map key, row), checked against the key types by the row converter.
        let keys_of = |b: &RecordBatch| -> Result<Vec<(Vec<u8>, Option<OwnedRow>)>> {
            if nkeys == 0 {
                return Ok(vec![(vec![], None); b.num_rows()]);
            }
            let cols = (0..nkeys).map(|i| column(b, &format!("__key{i}")).cloned()).collect::<Result<Vec<_>>>()?;
            let rows = self.key_conv.convert_columns(&cols).map_err(|e| different_plan(&e.to_string()))?;
            Ok((0..b.num_rows()).map(|r| (rows.row(r).as_ref().to_vec(), Some(rows.row(r).owned()))).collect())
        };

        // Open sessions, in the order of batch 1.
        let (starts, ends) = (int64s(&sessions, "__start")?, int64s(&sessions, "__end")?);
        let dirty =
            column(&sessions, "__dirty")?.as_boolean_opt().ok_or_else(|| different_plan("__dirty is not Boolean"))?;
        let state_cols = (0..widths.iter().sum::<usize>())
            .map(|j| column(&sessions, &format!("__state{j}")).cloned())
            .collect::<Result<Vec<_>>>()?;
        let mut restored: Vec<(Vec<u8>, Option<OwnedRow>, Session)> = vec![];
        for (r, (map_key, key)) in keys_of(&sessions)?.into_iter().enumerate() {
            let mut accs = Vec::with_capacity(self.aggs.len());
            let mut off = 0;
            for (spec, &w) in self.aggs.iter().zip(&widths) {
                let st: Vec<ArrayRef> = state_cols[off..off + w].iter().map(|c| c.slice(r, 1)).collect();
                off += w;
                let mut acc = spec.expr.create_accumulator()?;
                acc.merge_batch(&st).map_err(|e| different_plan(&format!("the state of {}: {e}", spec.expr.name())))?;
                accs.push(acc);
            }
            let session = Session {
                start: starts.value(r),
                end: ends.value(r),
                accs,
                emitted: None,
                retract: vec![],
                dirty: dirty.value(r),
            };
            restored.push((map_key, key, session));
        }

        // Rows already emitted, back to their sessions.
        let index = int64s(&emitted, "__session")?;
        let retract = column(&emitted, "__retract")?
            .as_boolean_opt()
            .ok_or_else(|| different_plan("__retract is not Boolean"))?;
        let (e_start, e_end) = (int64s(&emitted, "__start")?, int64s(&emitted, "__end")?);
        let values = (0..self.aggs.len())
            .map(|i| column(&emitted, &format!("__value{i}")).cloned())
            .collect::<Result<Vec<_>>>()?;
        for r in 0..emitted.num_rows() {
            let s =
                usize::try_from(index.value(r)).ok().and_then(|i| restored.get_mut(i)).map(|(_, _, s)| s).ok_or_else(
                    || {
                        different_plan(&format!(
                            "an emitted row refers to session {}, of {}",
                            index.value(r),
                            sessions.num_rows()
                        ))
                    },
                )?;
            let vals = values
                .iter()
                .map(|c| ScalarValue::try_from_array(c, r))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let row = (e_start.value(r), e_end.value(r), vals);
            if retract.value(r) {
                s.retract.push(row);
            } else if s.emitted.replace(row).is_some() {
                return Err(different_plan("a session has two last emitted rows"));
            }
        }

        let mut keys: HashMap<Vec<u8>, KeyState> = HashMap::new();
        for (map_key, key, session) in restored {
            keys.entry(map_key).or_insert_with(|| KeyState { key, ..Default::default() }).sessions.push(session);
        }
        let (c_start, c_end) = (int64s(&closed, "__start")?, int64s(&closed, "__end")?);
        for (r, (map_key, key)) in keys_of(&closed)?.into_iter().enumerate() {
            keys.entry(map_key)
                .or_insert_with(|| KeyState { key, ..Default::default() })
                .closed
                .push((c_start.value(r), c_end.value(r)));
        }
        for ks in keys.values_mut() {
            ks.sessions.sort_by_key(|s| s.start);
        }
        self.keys = keys;
        self.watermark = watermark;
        Ok(())
    }

    /// What the keys hold in memory: the map's slots over its capacity (entry and control byte),
    /// then per key each heap allocation it owns (the map key, the key row, the sessions, the
    /// closed bounds, each session's accumulators and emitted values), with 16 bytes of
    /// allocator overhead per allocation. Counting only the sessions and accumulators (as
    /// before) reported a fifth of what the process's RSS grew by.
    fn state_size(&self) -> usize {
        const ALLOC: usize = 16;
        let scalars = |v: &[ScalarValue]| v.iter().map(|x| x.size()).sum::<usize>() + ALLOC;
        let slots = self.keys.capacity() * (std::mem::size_of::<(Vec<u8>, KeyState)>() + 1);
        slots
            + self
                .keys
                .iter()
                .map(|(map_key, k)| {
                    map_key.capacity()
                        + ALLOC
                        + k.key.as_ref().map_or(0, |r| r.as_ref().len() + ALLOC)
                        + k.sessions.capacity() * std::mem::size_of::<Session>()
                        + ALLOC
                        + k.closed.capacity() * 16
                        + k.sessions
                            .iter()
                            .map(|s| {
                                s.accs.capacity() * 16
                                    + ALLOC
                                    + s.accs.iter().map(|a| a.size() + ALLOC).sum::<usize>()
                                    + s.emitted.as_ref().map_or(0, |e| scalars(&e.2))
                                    + s.retract.iter().map(|r| scalars(&r.2)).sum::<usize>()
                            })
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// A batch of named columns.
fn batch(cols: Vec<(Field, ArrayRef)>) -> Result<RecordBatch> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols.into_iter().unzip();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

fn different_plan(what: &str) -> Error {
    Error::invalid_argument(format!("the SESSION window snapshot was taken from a different plan: {what}"))
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    b.column_by_name(name).ok_or_else(|| different_plan(&format!("no column {name}")))
}

/// An Int64 column without nulls.
fn int64s<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a Int64Array> {
    match column(b, name)?.as_primitive_opt::<Int64Type>() {
        Some(a) if a.null_count() == 0 => Ok(a),
        _ => Err(different_plan(&format!("{name} is not a non-null Int64 column"))),
    }
}
