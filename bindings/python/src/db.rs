//! `Database`: the native handle behind `laminardb.Connection`.

use laminar::{Config, Db};
use laminar_core::sql::{ObjectKind, Statement};
use pyo3::prelude::*;

use crate::IntoPy;
use crate::arrow::{ArrowStream, batch_capsules, import_capsules, import_stream_capsule, schema_object};
use crate::subscription::{PushSubscription, Subscription};
use crate::writer::Writer;

pub(crate) fn config_from(pairs: Vec<(String, String)>) -> PyResult<Config> {
    let mut c = Config::new();
    for (k, v) in pairs {
        c.set(&k, &v).py()?;
    }
    Ok(c)
}

/// What a statement is, for `ExecuteResult.ddl_type` / `ddl_object`.
fn classify(sql: &str) -> (String, Option<String>) {
    let Ok(stmts) = laminar_core::sql::parse_sql(sql) else { return ("UNKNOWN".into(), None) };
    let Some(last) = stmts.last() else { return ("UNKNOWN".into(), None) };
    let kind = |k: ObjectKind| k.noun().to_uppercase();
    match &last.statement {
        Statement::CreateSource(cs) => {
            ((if cs.table { "CREATE TABLE" } else { "CREATE SOURCE" }).into(), Some(cs.name.clone()))
        }
        Statement::CreateStream(cs) => {
            let what = if cs.materialized { "CREATE MATERIALIZED VIEW" } else { "CREATE STREAM" };
            (what.into(), Some(cs.name.clone()))
        }
        Statement::CreateSink(cs) => ("CREATE SINK".into(), Some(cs.name.clone())),
        Statement::Drop { kind: k, names, .. } => {
            (format!("DROP {}", k.map(kind).unwrap_or_else(|| "OBJECT".into())), names.first().cloned())
        }
        Statement::Show(_) | Statement::ShowFunctions | Statement::ShowPartitions => ("SHOW".into(), None),
        Statement::Describe(n) => ("DESCRIBE".into(), Some(n.clone())),
        Statement::ShowCreate(n) => ("SHOW CREATE".into(), Some(n.clone())),
        Statement::Explain(_) => ("EXPLAIN".into(), None),
        Statement::ExplainAnalyze(n) => ("EXPLAIN ANALYZE".into(), Some(n.clone())),
        Statement::Insert { table, .. } => ("INSERT".into(), Some(table.clone())),
        Statement::Delete { table, .. } => ("DELETE".into(), Some(table.clone())),
        Statement::Query(_) => ("SELECT".into(), None),
        Statement::Checkpoint => ("CHECKPOINT".into(), None),
    }
}

/// A scalar function to register: (name, function, argument types, return type, volatility).
type FunctionSpec<'py> = (String, Py<PyAny>, Vec<Bound<'py, PyAny>>, Bound<'py, PyAny>, String);
/// An aggregate function to register: (name, accumulator class or factory, input types, return
/// type, state types, volatility).
type AggregateSpec<'py> =
    (String, Py<PyAny>, Vec<Bound<'py, PyAny>>, Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>, String);

#[pyclass(module = "laminardb._laminardb", frozen)]
pub struct Database {
    db: Db,
}

impl Database {
    /// Runs `f` on the engine database without the GIL, once it is known to be open.
    fn on_open_database(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&laminar_core::Database) -> laminar_core::Result<()> + Send,
    ) -> PyResult<()> {
        let db = self.db.clone();
        py.detach(move || {
            db.check_open()?;
            f(db.database())
        })
        .py()
    }
}

#[pymethods]
impl Database {
    /// `functions`: (name, function, argument types, return type, volatility) of the scalar
    /// functions to register before the database opens.
    #[new]
    #[pyo3(signature = (path, config, functions=None, aggregates=None))]
    fn new(
        py: Python<'_>,
        path: &str,
        config: Vec<(String, String)>,
        functions: Option<Vec<FunctionSpec<'_>>>,
        aggregates: Option<Vec<AggregateSpec<'_>>>,
    ) -> PyResult<Database> {
        let cfg = config_from(config)?;
        let mut fs = laminar_core::Functions::default();
        for (name, func, args, ret, volatility) in functions.unwrap_or_default() {
            fs.add_scalar(crate::udf::scalar_function(&name, func, &args, &ret, &volatility)?).py()?;
        }
        for (name, acc, inputs, ret, states, volatility) in aggregates.unwrap_or_default() {
            fs.add_aggregate(crate::udf::aggregate_function(py, &name, acc, &inputs, &ret, &states, &volatility)?)
                .py()?;
        }
        let path = path.to_string();
        Ok(Database { db: py.detach(move || Db::open_with_functions(&path, &cfg, fs)).py()? })
    }

    /// Registers a scalar function for the statements from now on.
    fn register_scalar_function(
        &self,
        py: Python<'_>,
        name: &str,
        func: Py<PyAny>,
        arg_types: Vec<Bound<'_, PyAny>>,
        return_type: Bound<'_, PyAny>,
        volatility: &str,
    ) -> PyResult<()> {
        let f = crate::udf::scalar_function(name, func, &arg_types, &return_type, volatility)?;
        self.on_open_database(py, move |db| db.register_scalar_function(f))
    }

    /// Registers an aggregate function for the statements from now on.
    #[allow(clippy::too_many_arguments)]
    fn register_aggregate_function(
        &self,
        py: Python<'_>,
        name: &str,
        accumulator: Py<PyAny>,
        input_types: Vec<Bound<'_, PyAny>>,
        return_type: Bound<'_, PyAny>,
        state_types: Vec<Bound<'_, PyAny>>,
        volatility: &str,
    ) -> PyResult<()> {
        let f = crate::udf::aggregate_function(
            py,
            name,
            accumulator,
            &input_types,
            &return_type,
            &state_types,
            volatility,
        )?;
        self.on_open_database(py, move |db| db.register_aggregate_function(f))
    }

    /// Returns (rows_affected, message, result stream or None, ddl_type, ddl_object).
    fn execute(
        &self,
        py: Python<'_>,
        sql: &str,
    ) -> PyResult<(u64, String, Option<Py<ArrowStream>>, String, Option<String>)> {
        let db = self.db.clone();
        let text = sql.to_string();
        let r = py.detach(move || db.execute(&text)).py()?;
        let rows = match r.schema {
            Some(schema) => Some(Py::new(py, ArrowStream { schema, batches: r.batches })?),
            None => None,
        };
        let (ddl_type, ddl_object) = classify(sql);
        Ok((r.rows_affected, r.message, rows, ddl_type, ddl_object))
    }

    fn query(&self, py: Python<'_>, sql: &str) -> PyResult<Py<ArrowStream>> {
        let db = self.db.clone();
        let text = sql.to_string();
        let q = py.detach(move || db.query(&text)).py()?;
        Py::new(py, ArrowStream { schema: q.schema, batches: q.batches.into() })
    }

    // Every call that takes the engine lock releases the GIL first: the pipeline thread may hold
    // that lock while it frees a batch whose buffers pyarrow owns, which takes the GIL.

    fn writer(&self, py: Python<'_>, name: &str) -> PyResult<Writer> {
        let db = self.db.clone();
        let name = name.to_string();
        Ok(Writer::new(py.detach(move || db.writer(&name)).py()?))
    }

    /// Pushes one batch given as `(schema capsule, array capsule)` and waits until processed.
    fn insert_array(
        &self,
        py: Python<'_>,
        name: &str,
        schema: &Bound<'_, PyAny>,
        array: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let batch = import_capsules(schema, array)?;
        let db = self.db.clone();
        let name = name.to_string();
        py.detach(move || db.insert(&name, [Ok(batch)])).py()
    }

    /// Pushes every batch of a stream capsule and waits until processed.
    fn insert_stream(&self, py: Python<'_>, name: &str, stream: &Bound<'_, PyAny>) -> PyResult<u64> {
        let reader = import_stream_capsule(stream)?;
        let db = self.db.clone();
        let name = name.to_string();
        py.detach(move || db.insert(&name, reader)).py()
    }

    fn schema(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        let db = self.db.clone();
        let name = name.to_string();
        let s = py.detach(move || db.schema(&name)).py()?;
        schema_object(py, s)
    }

    fn catalog(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let db = self.db.clone();
        let b = py.detach(move || db.catalog()).py()?;
        batch_capsules(py, &b)
    }

    fn metrics(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let db = self.db.clone();
        let b = py.detach(move || db.metrics()).py()?;
        batch_capsules(py, &b)
    }

    fn metrics_text(&self, py: Python<'_>) -> PyResult<String> {
        let db = self.db.clone();
        py.detach(move || db.metrics_text()).py()
    }

    fn metrics_endpoint(&self) -> Option<String> {
        self.db.metrics_endpoint().map(|a| a.to_string())
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let db = self.db.clone();
        py.detach(move || db.flush()).py()
    }

    fn checkpoint(&self, py: Python<'_>) -> PyResult<i64> {
        let db = self.db.clone();
        py.detach(move || db.checkpoint()).py()
    }

    fn close(&self, py: Python<'_>) {
        let db = self.db.clone();
        py.detach(move || db.close())
    }

    #[getter]
    fn is_closed(&self) -> bool {
        self.db.is_closed()
    }

    fn subscribe(&self, py: Python<'_>, name: &str, options: Vec<(String, String)>) -> PyResult<Subscription> {
        let (db, name, opts) = (self.db.clone(), name.to_string(), config_from(options)?);
        Ok(Subscription::new(py.detach(move || db.subscribe(&name, &opts)).py()?))
    }

    /// Calls `on_event(kind, value)` on an engine thread: ("schema", schema), ("batch", batch),
    /// ("error", exception), ("closed", None) — "closed" exactly once, last.
    fn subscribe_push(
        &self,
        py: Python<'_>,
        name: &str,
        options: Vec<(String, String)>,
        on_event: Py<PyAny>,
    ) -> PyResult<PushSubscription> {
        let (db, name, opts) = (self.db.clone(), name.to_string(), config_from(options)?);
        py.detach(move || PushSubscription::start(&db, &name, opts, on_event)).py()
    }
}
