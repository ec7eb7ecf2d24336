//! `OVER (PARTITION BY window_start … ORDER BY …)` per event-time window: ROW_NUMBER / RANK /
//! DENSE_RANK (and top-N with `WHERE rn <= n` above it), LAG / LEAD, aggregate frames such as
//! `ROWS BETWEEN n PRECEDING AND CURRENT ROW` — every DataFusion window function, evaluated by
//! DataFusion over each window's complete rows.
//!
//! The input is windowed (a window TVF or a windowed aggregate) and each function partitions by a
//! window bound, so a partition is complete once the watermark reaches its `window_end`: rows are
//! held until then, evaluated together and emitted once (append-only).

use std::sync::Arc;

use std::collections::BTreeMap;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::catalog::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::MemTable;
use datafusion::datasource::source::DataSource as _;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{ExecutionPlan, collect};
use hashbrown::HashMap;

use super::window::{TimeScale, event_times};
use super::{OpCtx, Operator};
use crate::error::{Error, Result};

/// A single ROW_NUMBER / RANK / DENSE_RANK with a filter `<= n` above it: only the rows that can
/// still rank within n are kept per partition (a bounded top-N instead of the whole window).
pub(crate) struct RankSpec {
    pub kind: RankKind,
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    pub partition_types: Vec<DataType>,
    pub order: Vec<(Arc<dyn PhysicalExpr>, DataType, SortOptions)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RankKind {
    RowNumber,
    Rank,
    DenseRank,
}

struct TopState {
    n: usize,
    part_conv: RowConverter,
    order_conv: RowConverter,
    row_conv: RowConverter,
    /// Per partition: its window end and the candidate rows in rank order.
    parts: HashMap<OwnedRow, (i64, BTreeMap<(OwnedRow, u64), OwnedRow>)>,
    seq: u64,
}

pub(crate) struct OverWindow {
    /// Window expressions with unqualified column references, planned once.
    plan: WindowPlan,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    /// Index of `window_end` in the input.
    end_col: usize,
    /// Added to `end_col` to get the window's end (µs): 0 when it is window_end, the size
    /// when it is window_start of a fixed-size window.
    end_offset: i64,
    pending: Vec<RecordBatch>,
    bytes: usize,
    text: String,
    rank: Option<RankSpec>,
    top: Option<TopState>,
}

impl OverWindow {
    pub(crate) fn new(
        exprs: Vec<Expr>,
        input_schema: SchemaRef,
        output_schema: SchemaRef,
        end_col: usize,
    ) -> OverWindow {
        let text = exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        OverWindow {
            plan: WindowPlan::new(exprs),
            input_schema,
            output_schema,
            end_col,
            end_offset: 0,
            pending: vec![],
            bytes: 0,
            text,
            rank: None,
            top: None,
        }
    }

    /// The window's end is `end_col + offset` (µs): `end_col` is window_start of a window of
    /// that size.
    pub(crate) fn with_end_offset(mut self, offset: i64) -> OverWindow {
        self.end_offset = offset;
        self
    }

    pub(crate) fn with_rank(mut self, spec: RankSpec) -> OverWindow {
        self.rank = Some(spec);
        self
    }

    /// Inserts a batch's rows into the per-partition candidates, dropping those that rank past n.
    fn top_insert(&mut self, batch: &RecordBatch) -> Result<()> {
        let spec = self.rank.as_ref().expect("top-N has a rank spec");
        let top = self.top.as_mut().expect("top-N on");
        let n_rows = batch.num_rows();
        let eval = |e: &Arc<dyn PhysicalExpr>, t: &DataType| -> Result<ArrayRef> {
            let a = e.evaluate(batch)?.into_array(n_rows)?;
            Ok(if a.data_type() == t { a } else { datafusion::arrow::compute::cast(&a, t)? })
        };
        let parts = if spec.partition.is_empty() {
            top.part_conv.convert_columns(&[Arc::new(BooleanArray::from(vec![true; n_rows])) as ArrayRef])?
        } else {
            top.part_conv.convert_columns(
                &spec
                    .partition
                    .iter()
                    .zip(&spec.partition_types)
                    .map(|(e, t)| eval(e, t))
                    .collect::<Result<Vec<_>>>()?,
            )?
        };
        let orders = if spec.order.is_empty() {
            top.order_conv.convert_columns(&[Arc::new(BooleanArray::from(vec![true; n_rows])) as ArrayRef])?
        } else {
            top.order_conv
                .convert_columns(&spec.order.iter().map(|(e, t, _)| eval(e, t)).collect::<Result<Vec<_>>>()?)?
        };
        let rows = top.row_conv.convert_columns(batch.columns())?;
        let ends = window_ends(batch, self.end_col, self.end_offset)?;
        for i in 0..n_rows {
            top.seq += 1;
            let entry = top.parts.entry(parts.row(i).owned()).or_insert_with(|| (ends[i], BTreeMap::new()));
            entry.0 = entry.0.max(ends[i]);
            let m = &mut entry.1;
            let key = orders.row(i);
            if m.len() >= top.n {
                // Quick reject: past the n-th key (RANK keeps ties of the n-th; DENSE_RANK is pruned below).
                if spec.kind != RankKind::DenseRank {
                    let nth = m.keys().nth(top.n - 1).expect("len >= n").0.row();
                    if key > nth || (key == nth && spec.kind == RankKind::RowNumber) {
                        continue;
                    }
                }
            }
            m.insert((key.owned(), top.seq), rows.row(i).owned());
            match spec.kind {
                RankKind::RowNumber => {
                    while m.len() > top.n {
                        m.pop_last();
                    }
                }
                RankKind::Rank => {
                    if m.len() > top.n {
                        let nth = m.keys().nth(top.n - 1).expect("len > n").0.clone();
                        while m.last_key_value().is_some_and(|(k, _)| k.0 > nth) {
                            m.pop_last();
                        }
                    }
                }
                RankKind::DenseRank => {
                    let mut distinct = 0;
                    let mut cut: Option<OwnedRow> = None;
                    let mut prev: Option<&OwnedRow> = None;
                    for (k, _) in m.iter() {
                        if prev != Some(&k.0) {
                            distinct += 1;
                            prev = Some(&k.0);
                            if distinct > top.n {
                                cut = Some(k.0.clone());
                                break;
                            }
                        }
                    }
                    if let Some(c) = cut {
                        while m.last_key_value().is_some_and(|(k, _)| k.0 >= c) {
                            m.pop_last();
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn top_release(&mut self, wm: i64) -> Result<Option<RecordBatch>> {
        let top = self.top.as_mut().expect("top-N on");
        let done: Vec<OwnedRow> = top.parts.iter().filter(|(_, (end, _))| *end <= wm).map(|(k, _)| k.clone()).collect();
        if done.is_empty() {
            return Ok(None);
        }
        let mut rows = vec![];
        for k in done {
            let (_, m) = top.parts.remove(&k).expect("listed");
            rows.extend(m.into_values());
        }
        let cols = top.row_conv.convert_rows(rows.iter().map(|r| r.row()))?;
        Ok(Some(RecordBatch::try_new(self.input_schema.clone(), cols)?))
    }

    fn evaluate(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.plan
            .run(batch)?
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| {
                let cols = b
                    .columns()
                    .iter()
                    .zip(self.output_schema.fields())
                    .map(|(c, f)| {
                        if c.data_type() == f.data_type() {
                            Ok(c.clone())
                        } else {
                            datafusion::arrow::compute::cast(c, f.data_type())
                        }
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(RecordBatch::try_new(self.output_schema.clone(), cols)?)
            })
            .collect()
    }
}

/// Window expressions evaluated by DataFusion, planned once (DESIGN §2): the first evaluation
/// plans `exprs` over a one-batch memory table into a physical plan; every later one (each closed
/// window, or each watermark step of OVER over a stream) swaps that plan's input for its batch
/// and runs the same plan, without a new session, SQL-to-plan step or optimizer pass.
pub(crate) struct WindowPlan {
    exprs: Vec<Expr>,
    /// The physical plan, the schema it was made for and the context it runs in.
    planned: Option<(Arc<dyn ExecutionPlan>, SchemaRef, Arc<TaskContext>)>,
    /// How many times a plan was built (1 in steady state; more only if the input's schema
    /// changed or the plan had no memory input to swap).
    #[cfg_attr(not(test), allow(dead_code))]
    plans_built: u64,
}

impl WindowPlan {
    pub(crate) fn new(exprs: Vec<Expr>) -> WindowPlan {
        WindowPlan { exprs, planned: None, plans_built: 0 }
    }

    /// The window expressions' output over `batch`: its columns followed by one per expression.
    fn run(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let reuse = self.planned.as_ref().is_some_and(|(_, schema, _)| schema == &batch.schema());
        if reuse {
            let (plan, schema, task) = self.planned.as_ref().expect("checked");
            if let Some(plan) = with_input(plan, schema, &batch)? {
                return Ok(futures::executor::block_on(collect(plan, task.clone()))?);
            }
        }
        let ctx = crate::df_session::session_context();
        let schema = batch.schema();
        let table = MemTable::try_new(schema.clone(), vec![vec![batch]])?;
        let df = ctx.read_table(Arc::new(table))?.window(self.exprs.clone())?;
        let plan = futures::executor::block_on(df.create_physical_plan())?;
        self.plans_built += 1;
        let task = ctx.task_ctx();
        let out = futures::executor::block_on(collect(plan.clone(), task.clone()))?;
        self.planned = Some((plan, schema, task));
        Ok(out)
    }
}

/// `plan` with its one in-memory input replaced by `batch`; `None` when the plan does not have
/// exactly one (the caller plans afresh then).
fn with_input(
    plan: &Arc<dyn ExecutionPlan>,
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let mut swapped = 0;
    let mut failed = None;
    let out = plan
        .clone()
        .transform_up(|node| {
            let Some(mem) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|d| d.data_source().downcast_ref::<MemorySourceConfig>())
            else {
                return Ok(Transformed::no(node));
            };
            swapped += 1;
            match MemorySourceConfig::try_new(&[vec![batch.clone()]], schema.clone(), mem.projection().clone()) {
                Ok(src) => Ok(Transformed::yes(
                    DataSourceExec::from_data_source(src.with_limit(mem.fetch())) as Arc<dyn ExecutionPlan>
                )),
                Err(e) => {
                    failed = Some(e);
                    Ok(Transformed::no(node))
                }
            }
        })?
        .data;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok((swapped == 1).then_some(out))
}

impl Operator for OverWindow {
    fn explain(&self) -> String {
        format!("OverWindow: {} (each window's rows held until the watermark reaches its end) → append-only", self.text)
    }

    fn limit_rank(&mut self, n: u64) -> bool {
        if self.rank.is_none() || n == 0 || n > 1_000_000 {
            return false;
        }
        let spec = self.rank.as_ref().expect("checked");
        let conv = |types: Vec<SortField>| {
            RowConverter::new(if types.is_empty() { vec![SortField::new(DataType::Boolean)] } else { types })
        };
        let (Ok(part_conv), Ok(order_conv), Ok(row_conv)) = (
            conv(spec.partition_types.iter().map(|t| SortField::new(t.clone())).collect()),
            conv(spec.order.iter().map(|(_, t, o)| SortField::new_with_options(t.clone(), *o)).collect()),
            conv(self.input_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect()),
        ) else {
            return false;
        };
        self.top = Some(TopState { n: n as usize, part_conv, order_conv, row_conv, parts: HashMap::new(), seq: 0 });
        self.text.push_str(&format!(", keeping the leading {n} per partition"));
        true
    }

    fn process_batch(&mut self, batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if self.top.is_some() {
            if batch.num_rows() > 0 {
                let batch = RecordBatch::try_new(self.input_schema.clone(), batch.columns().to_vec())
                    .map_err(|e| Error::internal(format!("OVER input: {e}")))?;
                self.top_insert(&batch)?;
            }
            return Ok(vec![]);
        }
        if batch.num_rows() > 0 {
            self.bytes += batch.get_array_memory_size();
            let batch = RecordBatch::try_new(self.input_schema.clone(), batch.columns().to_vec())
                .map_err(|e| Error::internal(format!("OVER input: {e}")))?;
            self.pending.push(batch);
        }
        Ok(vec![])
    }

    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if self.top.is_some() {
            return match self.top_release(wm)? {
                Some(b) => self.evaluate(b),
                None => Ok(vec![]),
            };
        }
        if self.pending.is_empty() {
            return Ok(vec![]);
        }
        let mut ready = vec![];
        let mut keep = vec![];
        for b in std::mem::take(&mut self.pending) {
            let ends = window_ends(&b, self.end_col, self.end_offset)?;
            let done: Vec<bool> = ends.iter().map(|&e| e <= wm).collect();
            let n_done = done.iter().filter(|d| **d).count();
            if n_done == b.num_rows() {
                ready.push(b);
            } else if n_done == 0 {
                keep.push(b);
            } else {
                let mask = BooleanArray::from(done);
                ready.push(filter_record_batch(&b, &mask)?);
                keep.push(filter_record_batch(&b, &datafusion::arrow::compute::not(&mask)?)?);
            }
        }
        self.pending = keep;
        self.bytes = self.pending.iter().map(|b| b.get_array_memory_size()).sum();
        if ready.is_empty() {
            return Ok(vec![]);
        }
        let all = concat_batches(&self.input_schema, &ready)?;
        self.evaluate(all)
    }

    fn state_size(&self) -> usize {
        self.bytes
    }

    /// The rows held for windows not yet closed (for a top-N: its candidates, in arrival order).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        if let Some(top) = &self.top {
            let mut rows: Vec<(u64, &OwnedRow)> =
                top.parts.values().flat_map(|(_, m)| m.iter().map(|(k, r)| (k.1, r))).collect();
            rows.sort_by_key(|(q, _)| *q);
            if rows.is_empty() {
                return Ok(vec![]);
            }
            let cols = top.row_conv.convert_rows(rows.iter().map(|(_, r)| r.row()))?;
            return Ok(vec![RecordBatch::try_new(self.input_schema.clone(), cols)?]);
        }
        Ok(self.pending.clone())
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let state = state
            .into_iter()
            .map(|b| RecordBatch::try_new(self.input_schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid_argument(format!("the OVER snapshot was taken from a different plan: {e}")))?;
        if let Some(top) = &mut self.top {
            top.parts.clear();
            top.seq = 0;
            for b in &state {
                self.top_insert(b)?;
            }
            return Ok(());
        }
        self.pending = state;
        self.bytes = self.pending.iter().map(|b| b.get_array_memory_size()).sum();
        Ok(())
    }
}

/// `OVER (PARTITION BY k ORDER BY ts …)` over an unbounded append-only stream: rows are taken in
/// event-time order once the watermark has passed them (nothing earlier can come), evaluated by
/// DataFusion together with the last `history` rows of their partition, and emitted once. Frames
/// reach back a bounded number of rows (`ROWS BETWEEN n PRECEDING AND CURRENT ROW`, `LAG(x, n)`),
/// so the state is `history` rows per partition plus the rows not yet passed by the watermark;
/// `ROW_NUMBER` continues across emissions from a per-partition count.
pub(crate) struct StreamOver {
    /// The window expressions, planned once.
    plan: WindowPlan,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    time_col: usize,
    scale: TimeScale,
    partition: Vec<Arc<dyn PhysicalExpr>>,
    partition_types: Vec<DataType>,
    part_conv: RowConverter,
    row_conv: RowConverter,
    history: usize,
    /// Output columns of ROW_NUMBER and RANK functions (counted from the partition's first row).
    row_number_cols: Vec<usize>,
    /// The largest LEAD offset: that many rows per partition wait for their followers.
    lead: usize,
    parts: HashMap<OwnedRow, (std::collections::VecDeque<OwnedRow>, u64)>,
    /// Rows already past the watermark that wait for `lead` followers in their partition.
    held: Vec<OwnedRow>,
    pending: Vec<RecordBatch>,
    bytes: usize,
    text: String,
    /// The input's columns plus `__laminar_new` (which rows of an evaluation are output).
    marked_schema: SchemaRef,
}

impl StreamOver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn try_new(
        exprs: Vec<Expr>,
        input_schema: SchemaRef,
        output_schema: SchemaRef,
        time_col: usize,
        scale: TimeScale,
        partition: Vec<Arc<dyn PhysicalExpr>>,
        partition_types: Vec<DataType>,
        history: usize,
        row_number_cols: Vec<usize>,
        lead: usize,
    ) -> Result<StreamOver> {
        let text = exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        let part_conv = RowConverter::new(if partition_types.is_empty() {
            vec![SortField::new(DataType::Boolean)]
        } else {
            partition_types.iter().cloned().map(SortField::new).collect()
        })?;
        let row_conv =
            RowConverter::new(input_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        let mut fields: Vec<datafusion::arrow::datatypes::Field> =
            input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(datafusion::arrow::datatypes::Field::new("__laminar_new", DataType::Boolean, false));
        let marked_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        Ok(StreamOver {
            marked_schema,
            plan: WindowPlan::new(exprs),
            input_schema,
            output_schema,
            time_col,
            scale,
            partition,
            partition_types,
            part_conv,
            row_conv,
            history,
            row_number_cols,
            lead,
            parts: HashMap::new(),
            held: vec![],
            pending: vec![],
            bytes: 0,
            text,
        })
    }

    fn part_keys(&self, b: &RecordBatch) -> Result<datafusion::arrow::row::Rows> {
        let n = b.num_rows();
        if self.partition.is_empty() {
            return Ok(self.part_conv.convert_columns(&[Arc::new(BooleanArray::from(vec![true; n])) as ArrayRef])?);
        }
        let cols = self
            .partition
            .iter()
            .map(|e| e.evaluate(b).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let cols = cols
            .into_iter()
            .zip(self.partition_types.iter().cloned())
            .map(|(c, t)| if c.data_type() == &t { Ok(c) } else { datafusion::arrow::compute::cast(&c, &t) })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(self.part_conv.convert_columns(&cols)?)
    }
}

impl Operator for StreamOver {
    fn explain(&self) -> String {
        format!(
            "StreamOver: {} (rows taken in event-time order behind the watermark; {} earlier rows kept per partition) → append-only",
            self.text, self.history
        )
    }

    fn process_batch(&mut self, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if batch.num_rows() == 0 {
            return Ok(vec![]);
        }
        let batch = RecordBatch::try_new(self.input_schema.clone(), batch.columns().to_vec())
            .map_err(|e| Error::internal(format!("OVER input: {e}")))?;
        // Rows behind the watermark would be out of order: late.
        let (t, nulls) = event_times(batch.column(self.time_col), self.scale)?;
        let keep: Vec<bool> = t
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                nulls.as_ref().is_none_or(|nb| nb.is_valid(i))
                    && (ctx.watermark == super::NO_WATERMARK || v >= ctx.watermark)
            })
            .collect();
        let late = keep.iter().filter(|k| !**k).count();
        let batch = if late > 0 {
            ctx.late.rows += late as u64;
            filter_record_batch(&batch, &BooleanArray::from(keep))?
        } else {
            batch
        };
        self.bytes += batch.get_array_memory_size();
        self.pending.push(batch);
        Ok(vec![])
    }

    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let mut ready = vec![];
        let mut keep = vec![];
        for b in std::mem::take(&mut self.pending) {
            let (t, _) = event_times(b.column(self.time_col), self.scale)?;
            let done = BooleanArray::from(t.iter().map(|&v| v < wm).collect::<Vec<_>>());
            match done.true_count() {
                0 => keep.push(b),
                n if n == b.num_rows() => ready.push(b),
                _ => {
                    ready.push(filter_record_batch(&b, &done)?);
                    keep.push(filter_record_batch(&b, &datafusion::arrow::compute::not(&done)?)?);
                }
            }
        }
        self.pending = keep;
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            ready.insert(
                0,
                RecordBatch::try_new(
                    self.input_schema.clone(),
                    self.row_conv.convert_rows(held.iter().map(|r| r.row()))?,
                )?,
            );
        }
        if ready.is_empty() {
            self.bytes = self.pending.iter().map(|b| b.get_array_memory_size()).sum();
            return Ok(vec![]);
        }
        let new_rows = concat_batches(&self.input_schema, &ready)?;
        // History rows of the partitions present, then the new rows, marked.
        let pk = self.part_keys(&new_rows)?;
        let mut seen: HashMap<OwnedRow, ()> = HashMap::new();
        let mut hist: Vec<OwnedRow> = vec![];
        let mut offset: HashMap<OwnedRow, i64> = HashMap::new();
        for i in 0..new_rows.num_rows() {
            let k = pk.row(i).owned();
            if seen.insert(k.clone(), ()).is_none()
                && let Some((h, count)) = self.parts.get(&k)
            {
                hist.extend(h.iter().cloned());
                offset.insert(k, *count as i64 - h.len() as i64);
            }
        }
        let hist_batch = if hist.is_empty() {
            RecordBatch::new_empty(self.input_schema.clone())
        } else {
            RecordBatch::try_new(self.input_schema.clone(), self.row_conv.convert_rows(hist.iter().map(|r| r.row()))?)?
        };
        let all = concat_batches(&self.input_schema, &[hist_batch.clone(), new_rows.clone()])?;
        let mark: ArrayRef =
            Arc::new(BooleanArray::from((0..all.num_rows()).map(|i| i >= hist_batch.num_rows()).collect::<Vec<_>>()));
        let mut cols = all.columns().to_vec();
        cols.push(mark);
        let out = self.plan.run(RecordBatch::try_new(self.marked_schema.clone(), cols)?)?;
        let nin = self.input_schema.fields().len();
        let mut result = vec![];
        let out: Vec<RecordBatch> = out.into_iter().filter(|b| b.num_rows() > 0).collect();
        let out = if out.is_empty() { vec![] } else { vec![concat_batches(&out[0].schema(), &out)?] };
        for b in out {
            let is_new = b
                .column(nin)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| Error::internal("OVER marker"))?
                .clone();
            let b = filter_record_batch(&b, &is_new)?;
            if b.num_rows() == 0 {
                continue;
            }
            // LEAD: the last `lead` rows of each partition wait for their followers (until the
            // end of input).
            let b = if self.lead > 0 && wm != i64::MAX {
                let input_part = RecordBatch::try_new(self.input_schema.clone(), b.columns()[..nin].to_vec())?;
                let keys = self.part_keys(&input_part)?;
                let mut total: HashMap<OwnedRow, usize> = HashMap::new();
                for i in 0..b.num_rows() {
                    *total.entry(keys.row(i).owned()).or_default() += 1;
                }
                let mut seen_n: HashMap<OwnedRow, usize> = HashMap::new();
                let mut emit = vec![];
                let rows = self.row_conv.convert_columns(input_part.columns())?;
                for i in 0..b.num_rows() {
                    let k = keys.row(i).owned();
                    let pos = seen_n.entry(k.clone()).or_default();
                    *pos += 1;
                    let go = *pos + self.lead <= total[&k];
                    if !go {
                        self.held.push(rows.row(i).owned());
                    }
                    emit.push(go);
                }
                let b = filter_record_batch(&b, &BooleanArray::from(emit))?;
                if b.num_rows() == 0 {
                    continue;
                }
                b
            } else {
                b
            };
            // Output: input columns and the window columns, without the marker.
            let mut cols: Vec<ArrayRef> = b.columns()[..nin].to_vec();
            cols.extend(b.columns()[nin + 1..].iter().cloned());
            let input_part = RecordBatch::try_new(self.input_schema.clone(), b.columns()[..nin].to_vec())?;
            let keys = self.part_keys(&input_part)?;
            for &c in &self.row_number_cols {
                let rn = datafusion::arrow::compute::cast(&cols[c], &DataType::Int64)?;
                let rn = rn
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .ok_or_else(|| Error::internal("ROW_NUMBER"))?;
                let fixed: datafusion::arrow::array::Int64Array = (0..rn.len())
                    .map(|i| rn.value(i) + offset.get(&keys.row(i).owned()).copied().unwrap_or(0))
                    .collect();
                cols[c] = datafusion::arrow::compute::cast(&fixed, self.output_schema.field(c).data_type())?;
            }
            let cols = cols
                .into_iter()
                .zip(self.output_schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c)
                    } else {
                        datafusion::arrow::compute::cast(&c, f.data_type())
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let outb = RecordBatch::try_new(self.output_schema.clone(), cols)?;
            // History: the new rows in output order (sorted by partition and ORDER BY).
            let rows = self.row_conv.convert_columns(input_part.columns())?;
            for i in 0..outb.num_rows() {
                let e = self.parts.entry(keys.row(i).owned()).or_insert_with(|| (std::collections::VecDeque::new(), 0));
                e.1 += 1;
                if self.history > 0 {
                    e.0.push_back(rows.row(i).owned());
                    while e.0.len() > self.history {
                        e.0.pop_front();
                    }
                }
            }
            result.push(outb);
        }
        self.bytes = self.pending.iter().map(|b| b.get_array_memory_size()).sum::<usize>()
            + self.parts.len() * (64 + 48 * self.history);
        Ok(result)
    }

    fn state_size(&self) -> usize {
        self.bytes
    }

    /// Four batches: input rows not yet behind the watermark, rows LEAD holds back, each
    /// partition's key and row count, and the partitions' history rows (in order).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let pending = concat_batches(&self.input_schema, &self.pending)?;
        let held = if self.held.is_empty() {
            RecordBatch::new_empty(self.input_schema.clone())
        } else {
            RecordBatch::try_new(
                self.input_schema.clone(),
                self.row_conv.convert_rows(self.held.iter().map(|r| r.row()))?,
            )?
        };
        // Partitions: key bytes and count; history rows tagged with their partition's index.
        let parts: Vec<(&OwnedRow, &(std::collections::VecDeque<OwnedRow>, u64))> = self.parts.iter().collect();
        let counts = RecordBatch::try_from_iter(vec![
            (
                "key",
                Arc::new(datafusion::arrow::array::BinaryArray::from_iter_values(
                    parts.iter().map(|(k, _)| k.as_ref().to_vec()),
                )) as ArrayRef,
            ),
            (
                "count",
                Arc::new(datafusion::arrow::array::UInt64Array::from_iter_values(parts.iter().map(|(_, (_, c))| *c)))
                    as ArrayRef,
            ),
        ])?;
        let hist_rows: Vec<&OwnedRow> = parts.iter().flat_map(|(_, (h, _))| h.iter()).collect();
        let history = if hist_rows.is_empty() {
            RecordBatch::new_empty(self.input_schema.clone())
        } else {
            RecordBatch::try_new(
                self.input_schema.clone(),
                self.row_conv.convert_rows(hist_rows.iter().map(|r| r.row()))?,
            )?
        };
        Ok(vec![pending, held, counts, history])
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let [pending, held, counts, history] = <[RecordBatch; 4]>::try_from(state)
            .map_err(|_| Error::invalid_argument("an OVER snapshot has four batches"))?;
        let bad = |e: datafusion::arrow::error::ArrowError| {
            Error::invalid_argument(format!("the OVER snapshot was taken from a different plan: {e}"))
        };
        let pending = RecordBatch::try_new(self.input_schema.clone(), pending.columns().to_vec()).map_err(bad)?;
        let held = RecordBatch::try_new(self.input_schema.clone(), held.columns().to_vec()).map_err(bad)?;
        let history = RecordBatch::try_new(self.input_schema.clone(), history.columns().to_vec()).map_err(bad)?;
        self.pending = if pending.num_rows() > 0 { vec![pending] } else { vec![] };
        let held_rows = self.row_conv.convert_columns(held.columns())?;
        self.held = (0..held.num_rows()).map(|i| held_rows.row(i).owned()).collect();
        self.parts.clear();
        let keys = counts
            .column(0)
            .as_binary_opt::<i32>()
            .ok_or_else(|| Error::invalid_argument("OVER snapshot: partition keys"))?
            .clone();
        let cnt = counts
            .column(1)
            .as_primitive_opt::<datafusion::arrow::datatypes::UInt64Type>()
            .ok_or_else(|| Error::invalid_argument("OVER snapshot: counts"))?
            .clone();
        let parser = self.part_conv.parser();
        for i in 0..counts.num_rows() {
            self.parts.insert(parser.parse(keys.value(i)).owned(), (std::collections::VecDeque::new(), cnt.value(i)));
        }
        // History rows go back to their partitions in order.
        let hk = self.part_keys(&history)?;
        let hr = self.row_conv.convert_columns(history.columns())?;
        for i in 0..history.num_rows() {
            if let Some((h, _)) = self.parts.get_mut(&hk.row(i).owned()) {
                h.push_back(hr.row(i).owned());
            }
        }
        self.bytes = self.pending.iter().map(|b| b.get_array_memory_size()).sum::<usize>()
            + self.parts.len() * (64 + 48 * self.history);
        Ok(())
    }
}

/// The window ends of `batch`'s rows (µs): column `col` plus `offset`.
fn window_ends(batch: &RecordBatch, col: usize, offset: i64) -> Result<Vec<i64>> {
    let (mut ends, _) = event_times(batch.column(col), TimeScale::Micros)?;
    if offset != 0 {
        for e in ends.iter_mut() {
            *e = e.saturating_add(offset);
        }
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::functions_window::expr_fn::{lag, row_number};
    use datafusion::logical_expr::{ExprFunctionExt, col};

    fn batch(w: &[i64], v: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("w", Arc::new(Int64Array::from(w.to_vec())) as ArrayRef),
            ("v", Arc::new(Int64Array::from(v.to_vec())) as ArrayRef),
        ])
        .unwrap()
    }

    fn exprs() -> Vec<Expr> {
        let part = || vec![col("w")];
        let order = || vec![col("v").sort(true, false)];
        vec![
            row_number().partition_by(part()).order_by(order()).build().unwrap().alias("rn"),
            lag(col("v"), Some(1), None).partition_by(part()).order_by(order()).build().unwrap().alias("prev"),
        ]
    }

    fn text(out: &[RecordBatch]) -> Vec<String> {
        let mut rows = vec![];
        for b in out {
            for i in 0..b.num_rows() {
                rows.push(
                    b.columns()
                        .iter()
                        .map(|c| datafusion::arrow::util::display::array_value_to_string(c, i).unwrap())
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
        }
        rows.sort();
        rows
    }

    /// Each window is evaluated by the plan built for the first: one plan, the same answers as a
    /// plan made afresh for each window.
    #[test]
    fn window_expressions_are_planned_once() {
        let mut once = WindowPlan::new(exprs());
        let windows = [
            batch(&[1, 1, 1], &[3, 1, 2]),
            batch(&[2, 2], &[5, 4]),
            batch(&[3, 4, 3, 4, 3], &[9, 8, 7, 6, 5]),
            batch(&[5], &[1]),
        ];
        for w in &windows {
            let got = once.run(w.clone()).unwrap();
            let fresh = WindowPlan::new(exprs()).run(w.clone()).unwrap();
            assert_eq!(text(&got), text(&fresh));
            assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), w.num_rows());
        }
        assert_eq!(
            text(&once.run(windows[0].clone()).unwrap()),
            vec!["1|1|1|".to_string(), "1|2|2|1".to_string(), "1|3|3|2".to_string()]
        );
        assert_eq!(once.plans_built, 1);
    }
}
