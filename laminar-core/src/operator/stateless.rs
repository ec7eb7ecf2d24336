//! Filter and projection: expressions compiled once at plan time, evaluated per batch.
//! A changelog input keeps its trailing `__weight` column through both.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::physical_expr::PhysicalExpr;

use super::{OpCtx, Operator};
use crate::error::{Error, Result};

pub(crate) enum Step {
    Filter(Arc<dyn PhysicalExpr>),
    /// Expressions and the output schema (which includes `__weight` when the input has it).
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
}

pub(crate) struct Stateless {
    pub steps: Vec<Step>,
    pub weighted: bool,
}

impl Stateless {
    pub(crate) fn apply(&self, mut batch: RecordBatch) -> Result<RecordBatch> {
        for step in &self.steps {
            if batch.num_rows() == 0 {
                // Still give the batch the right schema.
                if let Step::Project(_, schema) = step {
                    batch = RecordBatch::new_empty(schema.clone());
                }
                continue;
            }
            batch = match step {
                Step::Filter(pred) => {
                    let v = pred.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let mask = v
                        .as_boolean_opt()
                        .ok_or_else(|| Error::plan(format!("filter predicate is {}, not BOOLEAN", v.data_type())))?;
                    // NULL counts as false, as in SQL.
                    let mask = crate::util::null_as_false(mask);
                    filter_record_batch(&batch, &mask)?
                }
                Step::Project(exprs, schema) => {
                    let n = batch.num_rows();
                    let mut cols: Vec<ArrayRef> = exprs
                        .iter()
                        .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
                        .collect::<datafusion::error::Result<_>>()?;
                    if self.weighted {
                        cols.push(batch.column(batch.num_columns() - 1).clone());
                    }
                    // Expression results may differ in nullability from the planned schema.
                    let cols = cols
                        .into_iter()
                        .zip(schema.fields())
                        .map(|(c, f)| {
                            if c.data_type() == f.data_type() {
                                Ok(c)
                            } else {
                                datafusion::arrow::compute::cast(&c, f.data_type())
                            }
                        })
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    RecordBatch::try_new_with_options(
                        schema.clone(),
                        cols,
                        &RecordBatchOptions::new().with_row_count(Some(n)),
                    )?
                }
            };
        }
        Ok(batch)
    }
}

impl Operator for Stateless {
    fn explain(&self) -> String {
        let parts: Vec<String> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Filter(p) => format!("Filter: {p}"),
                Step::Project(e, _) => {
                    format!("Project: {}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "))
                }
            })
            .collect();
        parts.join(" → ")
    }

    fn process_batch(&mut self, batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let out = self.apply(batch)?;
        Ok(if out.num_rows() == 0 { vec![] } else { vec![out] })
    }
}
