//! `OVER (PARTITION BY window_start … ORDER BY …)` per event-time window: ROW_NUMBER / RANK /
//! DENSE_RANK (and top-N with `WHERE rn <= n` above it), LAG / LEAD, aggregate frames such as
//! `ROWS BETWEEN n PRECEDING AND CURRENT ROW` — every DataFusion window function, evaluated by
//! DataFusion over each window's complete rows.
//!
//! The input is windowed (a window TVF or a windowed aggregate) and each function partitions by a
//! window bound, so a partition is complete once the watermark reaches its `window_end`: rows are
//! held until then, evaluated together and emitted once (append-only).

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;

use super::window::{event_times, TimeScale};
use super::{OpCtx, Operator};
use crate::error::{Error, Result};

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
}

impl OverWindow {
    pub(crate) fn new(exprs: Vec<Expr>, input_schema: SchemaRef, output_schema: SchemaRef, end_col: usize) -> OverWindow {
        let text = exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        OverWindow { exprs, input_schema, output_schema, end_col, pending: vec![], bytes: 0, text }
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

    fn process_batch(&mut self, batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if batch.num_rows() > 0 {
            self.bytes += batch.get_array_memory_size();
            let batch = RecordBatch::try_new(self.input_schema.clone(), batch.columns().to_vec())
                .map_err(|e| Error::internal(format!("OVER input: {e}")))?;
            self.pending.push(batch);
        }
        Ok(vec![])
    }

    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
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
        Ok(self.pending.clone())
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        self.pending = state;
        self.bytes = self.pending.iter().map(|b| b.get_array_memory_size()).sum();
        Ok(())
    }
}
