//! One-shot SQL over the pipeline: SELECT over sources, tables and views through DataFusion,
//! INSERT VALUES, DELETE from tables.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;

use crate::error::{Error, Result, nearest_name};

use super::*;

/// A cast for SQL INSERT values that refuses what a push would refuse: a value that does not
/// parse or fit ('abc' or an overflowing literal into BIGINT, 'not a time' into TIMESTAMP) is an
/// error instead of NULL, and so is a fraction into an integer column (1.9 into BIGINT).
pub(super) fn strict_cast(col: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    use datafusion::arrow::compute::{CastOptions, cast_with_options};
    let from = col.data_type();
    if from.is_floating() && to.is_integer() {
        let f = datafusion::arrow::compute::cast(col, &DataType::Float64)?;
        let f = f.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        if let Some((row, v)) =
            f.iter().enumerate().find_map(|(i, v)| v.filter(|v| v.fract() != 0.0 || !v.is_finite()).map(|v| (i, v)))
        {
            return Err(Error::invalid_data(format!("row {row}: {v} is not a whole number; {to} holds integers only")));
        }
    }
    let out = cast_with_options(col, to, &CastOptions { safe: false, ..Default::default() })
        .map_err(|e| Error::invalid_data(e.to_string()))?;
    if out.null_count() > col.null_count() {
        let row = (0..out.len()).find(|&i| out.is_null(i) && !col.is_null(i)).unwrap_or(0);
        return Err(Error::invalid_data(format!("row {row}: the value does not convert to {to}")));
    }
    Ok(out)
}

/// The names called as table functions in `q` (`FROM f(1)`): DataFusion lists them among the
/// relations, but a missing one is a missing function, not a missing table.
pub(super) fn table_function_names(q: &datafusion::sql::sqlparser::ast::Query) -> Vec<String> {
    use datafusion::sql::sqlparser::ast::{TableFactor, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Names(Vec<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, args: Some(_), .. } = t
                && let Some(id) = name.0.last().and_then(|p| p.as_ident())
            {
                self.0.push(id.value.clone());
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(vec![]);
    let _ = q.visit(&mut names);
    names.0
}

impl Database {
    pub(super) fn run_query(&self, q: datafusion::sql::sqlparser::ast::Query) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.check_open()?;
        let ctx = crate::plan::session_context();
        self.inner.functions.read().register(&ctx);
        {
            let eng = self.inner.engine.lock();
            for (n, s) in &eng.sources {
                let data: Vec<RecordBatch> = match &s.table {
                    Some(t) => t.snapshot()?,
                    None => s.retained.iter().cloned().collect(),
                };
                ctx.register_table(n.as_str(), Arc::new(MemTable::try_new(s.queue.schema.clone(), vec![data])?))?;
            }
            for (n, s) in &eng.streams {
                // A failed view is not registered: its rows stopped being right when it failed,
                // so a read of it fails with the stream's error (below) instead of stale rows.
                if let (Some(mv), None) = (&s.mv, &s.failed) {
                    ctx.register_table(
                        n.as_str(),
                        Arc::new(MemTable::try_new(s.logical_schema.clone(), vec![mv.snapshot()?])?),
                    )?;
                }
            }
        }
        let functions = table_function_names(&q);
        let stmt = datafusion::sql::parser::Statement::Statement(Box::new(
            datafusion::sql::sqlparser::ast::Statement::Query(Box::new(q)),
        ));
        // The relations the query names (CTEs excluded), to explain a missing one structurally.
        let mut refs = ctx.state().resolve_table_references(&stmt)?;
        refs.retain(|r| !functions.iter().any(|f| f.eq_ignore_ascii_case(r.table())));
        let ctx2 = ctx.clone();
        let res = self.inner.runtime.block_on(async move {
            let plan = ctx.state().statement_to_plan(stmt).await?;
            let df = ctx.execute_logical_plan(plan).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            Ok::<_, datafusion::error::DataFusionError>((schema, df.collect().await?))
        });
        res.map_err(|e| {
            let err: Error = e.into();
            // Only a planning error about a relation that is not registered is explained: a
            // failed view, a plain stream (keeps no state), or a misspelling. The kind and the
            // DataFusion source stay the original error's.
            let Some(missing) = refs.iter().find(|r| !ctx2.table_exist((*r).clone()).unwrap_or(true)) else {
                return err;
            };
            let n = missing.table();
            let eng = self.inner.engine.lock();
            if let Some(s) = eng.streams.get(n) {
                if let Some(f) = &s.failed {
                    let what = if s.mv.is_some() { "materialized view" } else { "stream" };
                    return f.clone().with_message(format!("{what} '{n}' has failed: {}", f.message()));
                }
                if s.mv.is_none() {
                    return Error::invalid_argument(format!(
                        "stream '{n}' keeps no queryable state; subscribe to it, or create it as a MATERIALIZED VIEW to query it"
                    ))
                    .with_source(Arc::new(err));
                }
            }
            if eng.sources.contains_key(n) || eng.streams.contains_key(n) {
                return err; // a qualified name (another catalog or schema)
            }
            let names: Vec<String> = eng.sources.keys().chain(eng.streams.keys()).cloned().collect();
            drop(eng);
            match nearest_name(n, names.iter().map(String::as_str)) {
                Some(near) => {
                    let msg = format!("{}; did you mean '{near}'?", err.message());
                    err.with_message(msg)
                }
                None => err,
            }
        })
    }

    pub(super) fn insert_values(
        &self,
        table: &str,
        columns: &[String],
        source: datafusion::sql::sqlparser::ast::Query,
    ) -> Result<ExecuteResult> {
        let (schema, _) = self.target(table, "INSERT INTO")?;
        let (_, batches) = self.run_query(source)?;
        let targets: Vec<usize> = if columns.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            columns
                .iter()
                .map(|c| schema.index_of(c).map_err(|_| Error::plan(format!("source '{table}' has no column '{c}'"))))
                .collect::<Result<_>>()?
        };
        let mut total = 0u64;
        let mut writer = self.writer(table)?;
        for b in batches {
            if b.num_columns() != targets.len() {
                return Err(Error::plan(format!(
                    "INSERT has {} values per row for {} columns",
                    b.num_columns(),
                    targets.len()
                )));
            }
            let n = b.num_rows();
            let mut cols: Vec<ArrayRef> = vec![];
            for (i, f) in schema.fields().iter().enumerate() {
                let col = match targets.iter().position(|&t| t == i) {
                    Some(p) => strict_cast(b.column(p), f.data_type())
                        .map_err(|e| e.context(format!("INSERT INTO '{table}', column '{}'", f.name())))?,
                    None => datafusion::arrow::array::new_null_array(f.data_type(), n),
                };
                cols.push(col);
            }
            let batch = RecordBatch::try_new_with_options(
                Arc::new(Schema::new(
                    schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
                )),
                cols,
                &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            writer.write(batch)?;
            total += n as u64;
        }
        writer.flush()?;
        Ok(ExecuteResult { rows_affected: total, message: format!("inserted {total} rows"), ..Default::default() })
    }

    /// The schema of the source or table `name` that `statement` writes, and whether it is a table;
    /// a clear error for a stream or an unknown name.
    pub(super) fn target(&self, name: &str, statement: &str) -> Result<(SchemaRef, bool)> {
        {
            let eng = self.inner.engine.lock();
            if let Some(s) = eng.sources.get(name) {
                return Ok((s.queue.schema.clone(), s.table.is_some()));
            }
            if eng.streams.contains_key(name) {
                return Err(Error::invalid_argument(format!(
                    "cannot {statement} '{name}': it is a stream; write into a source or table"
                )));
            }
        }
        // object() takes the engine lock itself.
        Err(self.object(name).err().unwrap_or_else(|| Error::not_found(name.to_string())))
    }

    /// `DELETE FROM table [WHERE …]`: removes the matching rows of a table (after every push made
    /// before the call is applied) and retracts them downstream.
    /// The result, and the rows removed (for the log).
    pub(super) fn delete_where(
        &self,
        table: &str,
        selection: Option<datafusion::sql::sqlparser::ast::Expr>,
    ) -> Result<(ExecuteResult, Vec<RecordBatch>)> {
        self.flush()?;
        let rows = self.delete_rows_matching(table, selection)?;
        let removed = self.apply_delete(table, &rows)?;
        Ok((
            ExecuteResult { rows_affected: removed, message: format!("deleted {removed} rows"), ..Default::default() },
            rows,
        ))
    }

    /// The rows of `table` a DELETE's WHERE matches, read like an ad-hoc query over its rows.
    pub(super) fn delete_rows_matching(
        &self,
        table: &str,
        selection: Option<datafusion::sql::sqlparser::ast::Expr>,
    ) -> Result<Vec<RecordBatch>> {
        let q = crate::sql::parse_one(&format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))?;
        let crate::sql::Statement::Query(mut query) = q.statement else { unreachable!("a SELECT") };
        if let datafusion::sql::sqlparser::ast::SetExpr::Select(sel) = query.body.as_mut() {
            sel.selection = selection;
        }
        if !self.target(table, "DELETE FROM")?.1 {
            return Err(Error::invalid_argument(format!(
                "cannot DELETE FROM '{table}': it is an append-only source; DELETE works on tables"
            )));
        }
        let (_, rows) = self.run_query(*query)?;
        Ok(rows.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Removes the rows of `table` with the keys of `rows` and retracts them downstream.
    pub(super) fn apply_delete(&self, table: &str, rows: &[RecordBatch]) -> Result<u64> {
        let mut eng = self.inner.engine.lock();
        let mut removed = 0u64;
        let name = table.to_string();
        let mut result = Ok(());
        guarded(&self.inner, &mut eng, table, |inner, eng| {
            let Some(s) = eng.sources.get_mut(&name) else { return };
            let Some(t) = s.table.as_mut() else { return };
            match t.delete_rows(rows) {
                Ok(Some(changes)) => {
                    removed = (changes.num_rows()) as u64;
                    feed(inner, eng, &name, &[changes]);
                }
                Ok(None) => {}
                Err(e) => result = Err(e),
            }
        });
        release_and_send_pending(eng, &self.inner);
        result?;
        Ok(removed)
    }
}
