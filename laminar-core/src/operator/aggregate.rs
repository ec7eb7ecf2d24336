//! Incremental hash aggregation, windowed (TUMBLE/HOP/CUMULATE rows assigned upstream by
//! [`super::window::WindowAssign`]) or not (a changelog over all input).
//!
//! State: per worker partition, per window, a group table (key rows in Arrow's row format, a hash
//! table of group indices) and one DataFusion `GroupsAccumulator` per aggregate, so every
//! DataFusion aggregate function works, vectorized, with the exact semantics of the batch engine.
//! Rows are routed to partitions by the hash of their group key (or of the window when there is
//! no key); partitions are updated in parallel on the database's worker pool.
//!
//! When a window fires (DESIGN §3):
//! ```text
//!  EMIT ON WINDOW CLOSE   wm >= end            emit all groups once
//!    + ALLOW LATENESS d   wm >= end + d        state dropped; until then late rows emit −old/+new
//!  EMIT FINAL             wm >= end + d        emit all groups once, drop state
//!  EMIT ON UPDATE         after each batch     changed groups' new values (upsert)
//!  EMIT CHANGES           after each batch     changed groups as −old/+new pairs
//!  EMIT EVERY t           every t (proc. time) groups changed since last tick (upsert)
//! ```
//! "Changed" means the emitted value differs from the one last emitted for that group.
//!
//! This file holds the operator, its per-batch update and its emissions. The group table is in
//! `group_table`, the RocksDB spill of groups in `spill`, and the checkpoint format of the state
//! (snapshot and restore) in `state`.

mod distinct;
mod group_table;
mod spill;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};

use self::group_table::GroupTable;
use self::spill::Spill;
/// Re-exported for the engine, which refuses to restore spilled state outside checkpoint recovery.
pub(crate) use self::state::is_spill_meta;
use super::{NO_WATERMARK, OpCtx, Operator};
use crate::error::{Error, Result};
use crate::sql::EmitMode;

/// One aggregate call: the DataFusion aggregate, its argument expressions (ordering expressions
/// appended, as DataFusion's own executor does) and its optional FILTER.
pub(crate) struct AggSpec {
    pub expr: Arc<AggregateFunctionExpr>,
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggSpec {
    fn new_acc(&self) -> Result<group_table::Acc> {
        if let Some(t) = self.distinct_count_type()? {
            return Ok(group_table::Acc::Distinct(distinct::DistinctCount::new(t)?));
        }
        Ok(group_table::Acc::Df(if self.expr.groups_accumulator_supported() {
            self.expr.create_groups_accumulator()?
        } else {
            let e = self.expr.clone();
            Box::new(GroupsAccumulatorAdapter::new(move || e.create_accumulator()))
        }))
    }

    /// The value type of a `COUNT(DISTINCT x)` (its state: a list of those values), which the
    /// engine counts itself (`distinct::DistinctCount`); None for every other aggregate.
    fn distinct_count_type(&self) -> Result<Option<DataType>> {
        if !self.expr.is_distinct() || self.expr.fun().name() != "count" || self.args.len() != 1 {
            return Ok(None);
        }
        let fields = self.expr.state_fields()?;
        Ok(match fields.first().map(|f| f.data_type()) {
            Some(DataType::List(item)) if fields.len() == 1 => Some(item.data_type().clone()),
            _ => None,
        })
    }
}

/// Where each GROUP BY output column comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum GroupCol {
    Key(usize),
    WindowStart,
    WindowEnd,
}

/// The window key of the non-windowed aggregate's single table.
const GLOBAL: (i64, i64) = (i64::MAX, i64::MIN);

#[derive(Default)]
struct Partition {
    tables: BTreeMap<(i64, i64), GroupTable>,
}

/// Everything derived from one input batch that every partition reads.
struct BatchInput {
    n: usize,
    key_rows: Option<Rows>,
    hashes: Vec<u64>,
    /// (window_start, window_end) columns as µs values.
    windows: Option<(ArrayRef, ArrayRef)>,
    args: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
}

pub(crate) struct Aggregate {
    pub key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub layout: Vec<GroupCol>,
    pub aggs: Vec<AggSpec>,
    /// Input column indices of window_start / window_end, for windowed aggregation.
    pub window_cols: Option<(usize, usize)>,
    pub emit: EmitMode,
    pub lateness: i64,
    pub output_schema: SchemaRef,
    key_conv: RowConverter,
    agg_conv: RowConverter,
    parts: Vec<Partition>,
    random: RandomState,
    spill: Option<Spill>,
}

impl Aggregate {
    pub(crate) fn try_new(
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        layout: Vec<GroupCol>,
        aggs: Vec<AggSpec>,
        window_cols: Option<(usize, usize)>,
        emit: EmitMode,
        lateness: i64,
        output_schema: SchemaRef,
        partitions: usize,
    ) -> Result<Self> {
        let key_conv = RowConverter::new(key_types.into_iter().map(SortField::new).collect())?;
        // With no aggregate (SELECT DISTINCT, GROUP BY alone) the value rows are one constant.
        let agg_conv = RowConverter::new(if aggs.is_empty() {
            vec![SortField::new(DataType::Boolean)]
        } else {
            aggs.iter().map(|a| SortField::new(a.expr.field().data_type().clone())).collect()
        })?;
        Ok(Aggregate {
            key_exprs,
            layout,
            aggs,
            window_cols,
            emit,
            lateness,
            output_schema,
            key_conv,
            agg_conv,
            parts: (0..partitions.max(1)).map(|_| Partition::default()).collect(),
            // A fixed seed (foldhash's FixedState): a group goes to the same partition in every
            // process, so its spilled state is found under that partition's prefix after a reopen.
            random: RandomState::default(),
            spill: None,
        })
    }

    fn changelog(&self) -> bool {
        self.output_schema.fields().last().is_some_and(|f| f.name() == super::WEIGHT_COLUMN)
    }

    fn tracks_changes(&self) -> bool {
        matches!(self.emit, EmitMode::OnUpdate | EmitMode::Changes | EmitMode::Every(_))
            || (self.emit == EmitMode::OnWindowClose && self.lateness > 0)
    }

    fn prepare(&self, batch: &RecordBatch) -> Result<BatchInput> {
        let n = batch.num_rows();
        let keys: Vec<ArrayRef> = self
            .key_exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<_>>()?;
        let windows = self.window_cols.map(|(s, e)| (batch.column(s).clone(), batch.column(e).clone()));
        let mut hashes = vec![0u64; n];
        if !keys.is_empty() {
            create_hashes(&keys, &self.random, &mut hashes)?;
        } else if let Some((ws, _)) = &windows {
            create_hashes([ws], &self.random, &mut hashes)?;
        }
        let key_rows = if keys.is_empty() { None } else { Some(self.key_conv.convert_columns(&keys)?) };
        let mut args = Vec::with_capacity(self.aggs.len());
        let mut filters = Vec::with_capacity(self.aggs.len());
        for a in &self.aggs {
            args.push(
                a.args
                    .iter()
                    .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()?,
            );
            filters.push(match &a.filter {
                Some(f) => Some(f.evaluate(batch)?.into_array(n)?.as_boolean().clone()),
                None => None,
            });
        }
        Ok(BatchInput { n, key_rows, hashes, windows, args, filters })
    }

    /// Updates one partition with `rows` of the batch (all rows when `None`).
    #[allow(clippy::too_many_arguments)]
    fn update_partition(
        part: &mut Partition,
        pi: usize,
        input: &BatchInput,
        rows: Option<&[u32]>,
        key_conv: &RowConverter,
        aggs: &[AggSpec],
        track: bool,
        spill: Option<(&Spill, &RowConverter)>,
    ) -> Result<()> {
        // Group the rows by window. Most batches touch one or two windows.
        let mut by_window: Vec<((i64, i64), Vec<u32>)> = vec![];
        let row_iter: Box<dyn Iterator<Item = u32>> = match rows {
            Some(r) => Box::new(r.iter().copied()),
            None => Box::new(0..input.n as u32),
        };
        match &input.windows {
            None => by_window.push((GLOBAL, row_iter.collect())),
            Some((ws, we)) => {
                let ws = super::window::ts_values(ws);
                let we = super::window::ts_values(we);
                let mut last = usize::MAX;
                for r in row_iter {
                    let w = (we[r as usize], ws[r as usize]);
                    if last != usize::MAX && by_window[last].0 == w {
                        by_window[last].1.push(r);
                        continue;
                    }
                    last = match by_window.iter().position(|(k, _)| *k == w) {
                        Some(p) => p,
                        None => {
                            by_window.push((w, vec![]));
                            by_window.len() - 1
                        }
                    };
                    by_window[last].1.push(r);
                }
            }
        }
        for (w, rws) in by_window {
            if rws.is_empty() {
                continue;
            }
            let table = match part.tables.entry(w) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(GroupTable::new(key_conv, aggs)?),
            };
            let before = table.len();
            let groups: Vec<usize> = rws
                .iter()
                .map(|&r| table.group_of(input.key_rows.as_ref(), input.hashes[r as usize], r as usize) as usize)
                .collect();
            if let Some((sp, agg_conv)) = spill {
                sp.load_new_groups(pi, w, table, before, agg_conv)?;
            }
            let whole = rws.len() == input.n;
            let idx = (!whole).then(|| UInt32Array::from(rws.clone()));
            let total = table.len();
            for (i, acc) in table.accs.iter_mut().enumerate() {
                let (vals, filt): (Vec<ArrayRef>, Option<BooleanArray>) = match &idx {
                    None => (input.args[i].clone(), input.filters[i].clone()),
                    Some(idx) => (
                        input.args[i].iter().map(|a| take(a, idx, None)).collect::<std::result::Result<_, _>>()?,
                        match &input.filters[i] {
                            Some(f) => Some(take(f, idx, None)?.as_boolean().clone()),
                            None => None,
                        },
                    ),
                };
                acc.update_batch(&vals, &groups, filt.as_ref(), total)?;
            }
            if track {
                table.mark_dirty(&groups);
            }
        }
        Ok(())
    }

    /// Builds output rows for `groups` of one table: group columns, aggregate values, weight.
    fn output(
        &self,
        table: &GroupTable,
        window: (i64, i64),
        groups: Option<&[u32]>,
        values: Vec<ArrayRef>,
        weight: Option<i64>,
    ) -> Result<RecordBatch> {
        let n = values.first().map(|v| v.len()).unwrap_or_else(|| groups.map_or(table.len(), |g| g.len()));
        let key_cols: Vec<ArrayRef> = if self.key_exprs.is_empty() {
            vec![]
        } else {
            match groups {
                None => self.key_conv.convert_rows(table.keys.iter())?,
                Some(g) => self.key_conv.convert_rows(g.iter().map(|&g| table.keys.row(g as usize)))?,
            }
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        for gc in &self.layout {
            cols.push(match gc {
                GroupCol::Key(i) => key_cols[*i].clone(),
                GroupCol::WindowStart => Arc::new(TimestampMicrosecondArray::from(vec![window.1; n])),
                GroupCol::WindowEnd => Arc::new(TimestampMicrosecondArray::from(vec![window.0; n])),
            });
        }
        cols.extend(values);
        if let Some(w) = weight {
            cols.push(Arc::new(Int64Array::from(vec![w; n])));
        }
        let cols = cols
            .into_iter()
            .zip(self.output_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() { Ok(c) } else { datafusion::arrow::compute::cast(&c, f.data_type()) }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.output_schema.clone(), cols)?)
    }

    fn agg_rows(&self, values: &[ArrayRef], n: usize) -> Result<Rows> {
        if self.aggs.is_empty() {
            Ok(self.agg_conv.convert_columns(&[Arc::new(BooleanArray::from(vec![true; n])) as ArrayRef])?)
        } else {
            Ok(self.agg_conv.convert_columns(values)?)
        }
    }

    /// Emits the changed groups of one table: upserts, or −old/+new pairs for changelogs.
    fn emit_changes(&self, table: &mut GroupTable, window: (i64, i64), out: &mut Vec<RecordBatch>) -> Result<()> {
        let dirty = table.take_dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        let values = table.peek(&self.aggs, &dirty)?;
        let rows = self.agg_rows(&values, dirty.len())?;
        let mut retract_groups = vec![];
        let mut retract_rows: Vec<OwnedRow> = vec![];
        let mut insert_pos: Vec<u32> = vec![];
        for (i, &g) in dirty.iter().enumerate() {
            let new = rows.row(i);
            match &table.prev[g as usize] {
                Some(p) if p.row() == new => continue,
                Some(p) => {
                    retract_groups.push(g);
                    retract_rows.push(p.clone());
                }
                None => {}
            }
            insert_pos.push(i as u32);
            table.set_prev(g as usize, Some(new.owned()));
        }
        let changelog = self.changelog();
        if changelog && !retract_groups.is_empty() {
            let old = self.agg_conv.convert_rows(retract_rows.iter().map(|r| r.row()))?;
            let old = if self.aggs.is_empty() { vec![] } else { old };
            out.push(self.output(table, window, Some(&retract_groups), old, Some(-1))?);
        }
        if !insert_pos.is_empty() {
            let idx = UInt32Array::from(insert_pos.clone());
            let groups: Vec<u32> = insert_pos.iter().map(|&i| dirty[i as usize]).collect();
            let vals = values.iter().map(|v| take(v, &idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
            out.push(self.output(table, window, Some(&groups), vals, changelog.then_some(1))?);
        }
        Ok(())
    }

    fn concat(&self, out: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let out: Vec<RecordBatch> = out.into_iter().filter(|b| b.num_rows() > 0).collect();
        if out.len() <= 1 {
            return Ok(out);
        }
        Ok(vec![concat_batches(&self.output_schema, &out)?])
    }
}

impl Operator for Aggregate {
    fn explain(&self) -> String {
        let aggs: Vec<String> = self.aggs.iter().map(|a| a.expr.name().to_string()).collect();
        let keys: Vec<String> = self.key_exprs.iter().map(|k| k.to_string()).collect();
        format!(
            "{}Aggregate: keys=[{}{}] aggs=[{}] emit={}{} partitions={}",
            if self.window_cols.is_some() { "Window" } else { "Group" },
            keys.join(", "),
            if self.window_cols.is_some() { if keys.is_empty() { "window" } else { ", window" } } else { "" },
            aggs.join(", "),
            self.emit,
            if self.lateness > 0 {
                format!(" lateness={}", crate::util::fmt_duration_us(self.lateness))
            } else {
                String::new()
            },
            self.parts.len()
        )
    }

    fn process_batch(&mut self, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if batch.num_rows() == 0 {
            return Ok(vec![]);
        }
        let input = self.prepare(&batch)?;
        let track = self.tracks_changes();
        let p = self.parts.len();
        let spill = self.spill.as_ref().map(|s| (s, &self.agg_conv));
        if p == 1 {
            Self::update_partition(&mut self.parts[0], 0, &input, None, &self.key_conv, &self.aggs, track, spill)?;
        } else {
            let mut rows: Vec<Vec<u32>> = vec![Vec::with_capacity(input.n / p + 16); p];
            for (i, h) in input.hashes.iter().enumerate() {
                rows[(*h % p as u64) as usize].push(i as u32);
            }
            let (key_conv, aggs) = (&self.key_conv, &self.aggs);
            let work = |(pi, (part, rows)): (usize, (&mut Partition, &Vec<u32>))| -> Result<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                Self::update_partition(part, pi, &input, Some(rows), key_conv, aggs, track, spill)
            };
            match ctx.pool {
                Some(pool) => pool.install(|| {
                    use rayon::prelude::*;
                    self.parts.par_iter_mut().zip(rows.par_iter()).enumerate().try_for_each(work)
                })?,
                None => self.parts.iter_mut().zip(rows.iter()).enumerate().try_for_each(work)?,
            }
        }
        // Emissions after the batch.
        let mut out = vec![];
        let mut parts = std::mem::take(&mut self.parts);
        let res = (|| -> Result<()> {
            for part in parts.iter_mut() {
                for (w, table) in part.tables.iter_mut() {
                    let emit_now = match self.emit {
                        EmitMode::OnUpdate | EmitMode::Changes => true,
                        EmitMode::OnWindowClose => table.fired,
                        _ => false,
                    };
                    if emit_now {
                        self.emit_changes(table, *w, &mut out)?;
                    }
                }
            }
            Ok(())
        })();
        self.parts = parts;
        res?;
        self.maybe_spill()?;
        self.concat(out)
    }

    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if self.window_cols.is_none() || wm == NO_WATERMARK {
            return Ok(vec![]);
        }
        let mut out = vec![];
        let mut parts = std::mem::take(&mut self.parts);
        let res = (|| -> Result<()> {
            for (pi, part) in parts.iter_mut().enumerate() {
                let mut closed = vec![];
                for (w, table) in part.tables.iter_mut() {
                    let (end, _start) = *w;
                    if end > wm {
                        break; // ordered by end
                    }
                    let close = wm >= end.saturating_add(self.lateness);
                    // Every group's final values, once; the state goes with the window.
                    let finishes = match self.emit {
                        EmitMode::OnWindowClose => self.lateness == 0,
                        EmitMode::Final => close,
                        _ => false,
                    };
                    let mut finish = |table: &mut GroupTable| -> Result<()> {
                        let vals = table.finish()?;
                        out.push(self.output(table, *w, None, vals, None)?);
                        Ok(())
                    };
                    match self.emit {
                        _ if finishes => {
                            finish(table)?;
                            if table.spilled > 0 {
                                self.drain_spilled(pi, *w, false, &mut finish)?;
                            }
                        }
                        EmitMode::OnWindowClose if !table.fired => {
                            table.fired = true;
                            table.take_dirty();
                            let mut fire = |table: &mut GroupTable| -> Result<()> {
                                let all: Vec<u32> = (0..table.len() as u32).collect();
                                let vals = table.peek(&self.aggs, &all)?;
                                let rows = self.agg_rows(&vals, table.len())?;
                                for g in 0..table.len() {
                                    table.set_prev(g, Some(rows.row(g).owned()));
                                }
                                out.push(self.output(table, *w, None, vals, Some(1))?);
                                Ok(())
                            };
                            fire(table)?;
                            if table.spilled > 0 {
                                self.drain_spilled(pi, *w, true, &mut fire)?;
                            }
                        }
                        EmitMode::Every(_) if close => self.emit_changes(table, *w, &mut out)?,
                        _ => {}
                    }
                    if close {
                        closed.push(*w);
                    }
                }
                for w in closed {
                    if let Some(t) = part.tables.remove(&w) {
                        self.forget_spilled(pi, w, &t)?;
                    }
                }
            }
            Ok(())
        })();
        self.parts = parts;
        res?;
        self.concat(out)
    }

    fn tick_interval(&self) -> Option<Duration> {
        match self.emit {
            EmitMode::Every(d) => Some(d),
            _ => None,
        }
    }

    fn on_tick(&mut self, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        let mut parts = std::mem::take(&mut self.parts);
        let res = (|| -> Result<()> {
            for part in parts.iter_mut() {
                for (w, table) in part.tables.iter_mut() {
                    self.emit_changes(table, *w, &mut out)?;
                }
            }
            Ok(())
        })();
        self.parts = parts;
        res?;
        self.maybe_spill()?;
        self.concat(out)
    }

    fn state_size(&self) -> usize {
        self.parts.iter().flat_map(|p| p.tables.values()).map(|t| t.size()).sum()
    }

    fn spilled_groups(&self) -> u64 {
        self.parts.iter().flat_map(|p| p.tables.values()).map(|t| t.spilled).sum()
    }

    /// One batch per group table: window bounds, fired flag, key columns, accumulator states and
    /// last emitted values (row format); see `state`.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.snapshot_state()
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        self.restore_state(state)
    }
}

/// Errors for features this operator does not offer, named so users see what to change.
pub(crate) fn check_emit(emit: EmitMode, windowed: bool) -> Result<()> {
    if !windowed && matches!(emit, EmitMode::OnWindowClose | EmitMode::Final) {
        return Err(Error::plan(format!(
            "EMIT {emit} needs a windowed aggregate (GROUP BY TUMBLE/HOP/SESSION/CUMULATE); a non-windowed GROUP BY emits CHANGES, ON UPDATE or EVERY"
        )));
    }
    Ok(())
}

impl Drop for Aggregate {
    /// A dropped aggregate's spilled groups go with it (DROP, CREATE OR REPLACE, close).
    fn drop(&mut self) {
        if let Some(sp) = &self.spill {
            let _ = sp.store.delete_prefix(&sp.id.to_be_bytes());
        }
    }
}
