//! The stored result of a materialized view, kept current as emissions arrive, read whole by
//! ad-hoc `SELECT`: all rows (append-only), a multiset folded from Z-set weights (changelog), or
//! the latest row per key (upsert).

use std::collections::HashMap;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};

use crate::error::Result;
use crate::operator::StreamKind;

pub(crate) enum MvStore {
    Append {
        batches: Vec<RecordBatch>,
    },
    Changelog {
        schema: SchemaRef,
        conv: RowConverter,
        rows: HashMap<OwnedRow, i64>,
    },
    Upsert {
        schema: SchemaRef,
        key_idx: Vec<usize>,
        key_conv: RowConverter,
        conv: RowConverter,
        rows: HashMap<OwnedRow, OwnedRow>,
    },
}

impl MvStore {
    /// `schema` is the logical schema (no `__weight`).
    pub(crate) fn new(schema: SchemaRef, kind: &StreamKind) -> Result<Self> {
        let fields =
            |s: &SchemaRef| s.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect::<Vec<_>>();
        Ok(match kind {
            StreamKind::AppendOnly => MvStore::Append { batches: vec![] },
            StreamKind::Changelog => {
                MvStore::Changelog { conv: RowConverter::new(fields(&schema))?, schema, rows: HashMap::new() }
            }
            StreamKind::Upsert { key } => {
                let key_idx: Vec<usize> =
                    key.iter().map(|k| schema.index_of(k)).collect::<std::result::Result<_, _>>()?;
                let key_conv = RowConverter::new(
                    key_idx.iter().map(|&i| SortField::new(schema.field(i).data_type().clone())).collect(),
                )?;
                MvStore::Upsert {
                    conv: RowConverter::new(fields(&schema))?,
                    key_idx,
                    key_conv,
                    schema,
                    rows: HashMap::new(),
                }
            }
        })
    }

    pub(crate) fn apply(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            MvStore::Append { batches, .. } => batches.push(batch.clone()),
            MvStore::Changelog { conv, rows, schema } => {
                let n = schema.fields().len();
                let rws = conv.convert_columns(&batch.columns()[..n])?;
                let w = batch.column(n).as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    let e = rows.entry(rws.row(i).owned()).or_insert(0);
                    *e += w.value(i);
                    if *e == 0 {
                        rows.remove(&rws.row(i).owned());
                    }
                }
            }
            MvStore::Upsert { key_idx, key_conv, conv, rows, .. } => {
                let keys: Vec<_> = key_idx.iter().map(|&i| batch.column(i).clone()).collect();
                let k = key_conv.convert_columns(&keys)?;
                let r = conv.convert_columns(batch.columns())?;
                for i in 0..batch.num_rows() {
                    rows.insert(k.row(i).owned(), r.row(i).owned());
                }
            }
        }
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        Ok(match self {
            MvStore::Append { batches, .. } => batches.clone(),
            MvStore::Changelog { conv, rows, schema } => {
                let mut list = vec![];
                for (r, &c) in rows {
                    for _ in 0..c.max(0) {
                        list.push(r.row());
                    }
                }
                if list.is_empty() {
                    vec![]
                } else {
                    vec![RecordBatch::try_new(schema.clone(), conv.convert_rows(list)?)?]
                }
            }
            MvStore::Upsert { conv, rows, schema, .. } => {
                if rows.is_empty() {
                    vec![]
                } else {
                    vec![RecordBatch::try_new(schema.clone(), conv.convert_rows(rows.values().map(|r| r.row()))?)?]
                }
            }
        })
    }

    /// The stored rows in a form [`MvStore::restore`] takes back: all batches (append-only), rows
    /// with their multiplicity in a `__weight` column (changelog), the current rows (upsert).
    pub(crate) fn state(&self) -> Result<Vec<RecordBatch>> {
        match self {
            MvStore::Changelog { conv, rows, schema } => {
                if rows.is_empty() {
                    return Ok(vec![]);
                }
                let mut cols = conv.convert_rows(rows.keys().map(|r| r.row()))?;
                cols.push(std::sync::Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(
                    rows.values().copied(),
                )));
                let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
                fields.push(std::sync::Arc::new(datafusion::arrow::datatypes::Field::new(
                    crate::operator::WEIGHT_COLUMN,
                    datafusion::arrow::datatypes::DataType::Int64,
                    false,
                )));
                Ok(vec![RecordBatch::try_new(
                    std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                    cols,
                )?])
            }
            _ => self.snapshot(),
        }
    }

    /// Loads rows saved by [`MvStore::state`] into an empty store.
    pub(crate) fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        for b in &state {
            self.apply(b)?;
        }
        Ok(())
    }
}
