//! The rows of a `CREATE TABLE`: one row per primary key, replaced by each upsert. Every change
//! leaves as a changelog batch (`-old`, `+new`, with `__weight`) for the streams that read the
//! table; ad-hoc `SELECT` reads the current rows.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use hashbrown::HashMap;

use crate::error::Result;
use crate::operator::WEIGHT_COLUMN;

pub(crate) struct TableState {
    schema: SchemaRef,
    changelog_schema: SchemaRef,
    key_idx: Vec<usize>,
    key_conv: RowConverter,
    row_conv: RowConverter,
    rows: HashMap<OwnedRow, OwnedRow>,
}

impl TableState {
    pub(crate) fn try_new(schema: SchemaRef, key_idx: Vec<usize>) -> Result<TableState> {
        let key_conv =
            RowConverter::new(key_idx.iter().map(|&i| SortField::new(schema.field(i).data_type().clone())).collect())?;
        let row_conv =
            RowConverter::new(schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(WEIGHT_COLUMN, DataType::Int64, false));
        Ok(TableState {
            changelog_schema: Arc::new(Schema::new(fields)),
            schema,
            key_idx,
            key_conv,
            row_conv,
            rows: HashMap::new(),
        })
    }

    pub(crate) fn key_names(&self) -> Vec<String> {
        self.key_idx.iter().map(|&i| self.schema.field(i).name().clone()).collect()
    }

    fn changes(&self, out: Vec<(OwnedRow, i64)>) -> Result<Option<RecordBatch>> {
        if out.is_empty() {
            return Ok(None);
        }
        let mut cols: Vec<ArrayRef> = self.row_conv.convert_rows(out.iter().map(|(r, _)| r.row()))?;
        cols.push(Arc::new(Int64Array::from_iter_values(out.iter().map(|(_, w)| *w))));
        Ok(Some(RecordBatch::try_new(self.changelog_schema.clone(), cols)?))
    }

    /// Applies a batch of rows in order (a later row of a key replaces an earlier one).
    pub(crate) fn upsert(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        self.apply(batch, None)
    }

    /// Applies a batch of changes in order: where `deleted` is true the row with that key is
    /// removed (a change-data-capture delete: only the key columns matter), where it is NULL
    /// every row is removed (a TRUNCATE: the row's values do not matter), elsewhere the row is
    /// upserted (a later row of a key replaces an earlier one).
    pub(crate) fn apply(
        &mut self,
        batch: &RecordBatch,
        deleted: Option<&datafusion::arrow::array::BooleanArray>,
    ) -> Result<Option<RecordBatch>> {
        let keys: Vec<ArrayRef> = self.key_idx.iter().map(|&i| batch.column(i).clone()).collect();
        let krows = self.key_conv.convert_columns(&keys)?;
        let rows = self.row_conv.convert_columns(batch.columns())?;
        let mut out = vec![];
        for i in 0..batch.num_rows() {
            if deleted.is_some_and(|d| datafusion::arrow::array::Array::is_null(d, i)) {
                out.extend(self.rows.drain().map(|(_, old)| (old, -1)));
                continue;
            }
            let key = krows.row(i).owned();
            if deleted.is_some_and(|d| datafusion::arrow::array::Array::is_valid(d, i) && d.value(i)) {
                if let Some(old) = self.rows.remove(&key) {
                    out.push((old, -1));
                }
                continue;
            }
            let new = rows.row(i).owned();
            match self.rows.insert(key, new.clone()) {
                Some(old) if old == new => {}
                Some(old) => {
                    out.push((old, -1));
                    out.push((new, 1));
                }
                None => out.push((new, 1)),
            }
        }
        self.changes(out)
    }

    /// Removes the rows whose keys appear in `rows` (full rows of this table's schema).
    pub(crate) fn delete_rows(&mut self, batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
        let mut out = vec![];
        for b in batches {
            let keys: Vec<ArrayRef> = self.key_idx.iter().map(|&i| b.column(i).clone()).collect();
            let krows = self.key_conv.convert_columns(&keys)?;
            for i in 0..b.num_rows() {
                if let Some(old) = self.rows.remove(&krows.row(i).owned()) {
                    out.push((old, -1));
                }
            }
        }
        self.changes(out)
    }

    /// The current rows.
    pub(crate) fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        if self.rows.is_empty() {
            return Ok(vec![]);
        }
        let cols = self.row_conv.convert_rows(self.rows.values().map(|r| r.row()))?;
        Ok(vec![RecordBatch::try_new(self.schema.clone(), cols)?])
    }
}
