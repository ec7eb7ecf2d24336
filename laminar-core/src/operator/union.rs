//! `UNION ALL` of N inputs: each input's batches, in arrival order, adapted to the union's schema.
//!
//! The union has no state. Batch `b` of input `i` comes in through `process_side(i, b)` and leaves
//! as the same rows with the union's column names and types (DataFusion's union schema: names of
//! the first input, types coerced across the inputs — a column is cast where an input's type
//! differs). When the union is a changelog (some input is), an append-only input's rows get
//! `__weight` +1 and a changelog input's rows keep theirs. Upsert inputs are refused when the
//! query is planned.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::{OpCtx, Operator, StreamKind};
use crate::error::{Error, Result};

pub(crate) struct UnionAll {
    /// The kind of each input (append-only or changelog).
    inputs: Vec<StreamKind>,
    /// Output schema, with `__weight` last when the union is a changelog.
    schema: SchemaRef,
    weighted: bool,
}

impl UnionAll {
    pub(crate) fn try_new(inputs: Vec<StreamKind>, schema: SchemaRef, weighted: bool) -> Result<UnionAll> {
        if let Some(k) = inputs.iter().find(|k| !matches!(k, StreamKind::AppendOnly | StreamKind::Changelog)) {
            return Err(Error::internal(format!("a union input is a {k} stream")));
        }
        if inputs.contains(&StreamKind::Changelog) && !weighted {
            return Err(Error::internal("a union of a changelog must be a changelog"));
        }
        Ok(UnionAll { inputs, schema, weighted })
    }
}

impl Operator for UnionAll {
    fn explain(&self) -> String {
        let kinds: Vec<String> = self.inputs.iter().map(|k| k.to_string()).collect();
        let out = if self.weighted { "changelog" } else { "append-only" };
        format!("UnionAll: {} inputs ({}) → {out}", self.inputs.len(), kinds.join(", "))
    }

    fn process_batch(&mut self, _batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        Err(Error::internal("UnionAll takes the batches of its inputs through process_side"))
    }

    fn process_side(&mut self, side: usize, batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let kind = self.inputs.get(side).ok_or_else(|| Error::internal(format!("UnionAll has no input {side}")))?;
        let in_weighted = *kind == StreamKind::Changelog;
        let n = self.schema.fields().len() - usize::from(self.weighted);
        if batch.num_columns() != n + usize::from(in_weighted) {
            return Err(Error::internal(format!(
                "union input {side} has {} columns, expected {}",
                batch.num_columns(),
                n + usize::from(in_weighted)
            )));
        }
        let rows = batch.num_rows();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (c, f) in batch.columns()[..n].iter().zip(self.schema.fields()) {
            cols.push(if c.data_type() == f.data_type() { c.clone() } else { cast(c, f.data_type())? });
        }
        if self.weighted {
            cols.push(if in_weighted { batch.column(n).clone() } else { Arc::new(Int64Array::from_value(1, rows)) });
        }
        let out = RecordBatch::try_new_with_options(
            self.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        Ok(vec![out])
    }
}
