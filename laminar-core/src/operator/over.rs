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

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;

use super::window::{event_times, TimeScale};
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
    /// Window expressions with unqualified column references.
    exprs: Vec<Expr>,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    /// Index of `window_end` in the input.
    end_col: usize,
    pending: Vec<RecordBatch>,
    bytes: usize,
    text: String,
    rank: Option<RankSpec>,
    top: Option<TopState>,
}

impl OverWindow {
    pub(crate) fn new(exprs: Vec<Expr>, input_schema: SchemaRef, output_schema: SchemaRef, end_col: usize) -> OverWindow {
        let text = exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        OverWindow { exprs, input_schema, output_schema, end_col, pending: vec![], bytes: 0, text, rank: None, top: None }
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
            top.part_conv.convert_columns(&spec.partition.iter().zip(&spec.partition_types).map(|(e, t)| eval(e, t)).collect::<Result<Vec<_>>>()?)?
        };
        let orders = if spec.order.is_empty() {
            top.order_conv.convert_columns(&[Arc::new(BooleanArray::from(vec![true; n_rows])) as ArrayRef])?
        } else {
            top.order_conv.convert_columns(&spec.order.iter().map(|(e, t, _)| eval(e, t)).collect::<Result<Vec<_>>>()?)?
        };
        let rows = top.row_conv.convert_columns(batch.columns())?;
        let (ends, _) = event_times(batch.column(self.end_col), TimeScale::Micros)?;
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

    fn evaluate(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let ctx = crate::plan::session_context();
        let table = MemTable::try_new(self.input_schema.clone(), vec![vec![batch]])?;
        let df = ctx.read_table(Arc::new(table))?.window(self.exprs.clone())?;
        let out = futures::executor::block_on(df.collect())?;
        out.into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| {
                let cols = b
                    .columns()
                    .iter()
                    .zip(self.output_schema.fields())
                    .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { datafusion::arrow::compute::cast(c, f.data_type()) })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(RecordBatch::try_new(self.output_schema.clone(), cols)?)
            })
            .collect()
    }
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
        let conv = |types: Vec<SortField>| RowConverter::new(if types.is_empty() { vec![SortField::new(DataType::Boolean)] } else { types });
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
            let (ends, _) = event_times(b.column(self.end_col), TimeScale::Micros)?;
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

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        if self.top.is_some() {
            return Err(Error::not_implemented("snapshots of a top-N are not available yet"));
        }
        Ok(self.pending.clone())
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        self.pending = state;
        self.bytes = self.pending.iter().map(|b| b.get_array_memory_size()).sum();
        Ok(())
    }
}
