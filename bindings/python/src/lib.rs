//! `laminardb._laminardb`: the native core of the Python package, a thin pyo3 mapping of the
//! `laminar-ffi` handle layer (the same handles, status codes and error texts as the C ABI).
//! Docstrings, typing and the public API live in the pure-Python layer (`python/laminardb`).

mod arrow;
mod db;
mod logging;
mod subscription;
mod udf;
mod writer;

use pyo3::prelude::*;

/// Turns an engine error into the Python exception the package maps its status to
/// (`laminardb._errors.from_status`), keeping the engine's message, the failed stream it reports
/// (a `StreamError`) and, as `__cause__`, the exception a Python function raised, or else the
/// DataFusion or Arrow error it was made from.
pub(crate) fn to_pyerr(e: laminar_core::Error) -> PyErr {
    Python::attach(|py| {
        let status = e.kind().name();
        let message = e.to_string();
        match py
            .import("laminardb._errors")
            .and_then(|m| m.getattr("from_status"))
            .and_then(|f| f.call1((status, message.clone(), e.failed_stream(), underlying(&e))))
        {
            Ok(exc) => {
                if let Some(raised) = raised_by_function(py, &e) {
                    let _ = exc.setattr("__cause__", raised);
                }
                PyErr::from_value(exc)
            }
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(format!("{status}: {message}")),
        }
    })
}

/// The exception a Python function raised, when `e` reports that failure.
fn raised_by_function<'py>(py: Python<'py>, e: &laminar_core::Error) -> Option<Bound<'py, PyAny>> {
    let d = std::error::Error::source(e)?.downcast_ref::<laminar_core::DataFusionError>()?;
    let f = laminar_core::FunctionError::find(d)?;
    f.cause.downcast_ref::<Py<PyAny>>().map(|o| o.bind(py).clone())
}

/// `(library, kind, message)` of the DataFusion or Arrow error `e` was made from, if any.
fn underlying(e: &laminar_core::Error) -> Option<(&'static str, &'static str, String)> {
    use laminar_core::DataFusionError as D;
    use laminar_core::arrow::error::ArrowError as A;
    let src = std::error::Error::source(e)?;
    if let Some(d) = src.downcast_ref::<D>() {
        let root = d.find_root();
        let kind = match root {
            D::ArrowError(a, _) => return Some(("arrow", arrow_kind(a), a.to_string())),
            D::SQL(..) => "SQL",
            D::NotImplemented(_) => "NotImplemented",
            D::Internal(_) => "Internal",
            D::Plan(_) => "Plan",
            D::Configuration(_) => "Configuration",
            D::SchemaError(..) => "SchemaError",
            D::Execution(_) => "Execution",
            D::ExecutionJoin(_) => "ExecutionJoin",
            D::ResourcesExhausted(_) => "ResourcesExhausted",
            D::External(_) => "External",
            D::Context(..) => "Context",
            D::Substrait(_) => "Substrait",
            D::Diagnostic(..) => "Diagnostic",
            D::Collection(_) => "Collection",
            D::Shared(_) => "Shared",
            D::IoError(_) => "IoError",
            _ => "Other",
        };
        return Some(("datafusion", kind, root.strip_backtrace()));
    }
    src.downcast_ref::<A>().map(|a| ("arrow", arrow_kind(a), a.to_string()))
}

fn arrow_kind(a: &laminar_core::arrow::error::ArrowError) -> &'static str {
    use laminar_core::arrow::error::ArrowError as A;
    match a {
        A::NotYetImplemented(_) => "NotYetImplemented",
        A::ExternalError(_) => "ExternalError",
        A::CastError(_) => "CastError",
        A::MemoryError(_) => "MemoryError",
        A::ParseError(_) => "ParseError",
        A::SchemaError(_) => "SchemaError",
        A::ComputeError(_) => "ComputeError",
        A::DivideByZero => "DivideByZero",
        A::ArithmeticOverflow(_) => "ArithmeticOverflow",
        A::CsvError(_) => "CsvError",
        A::JsonError(_) => "JsonError",
        A::IoError(..) => "IoError",
        A::IpcError(_) => "IpcError",
        A::InvalidArgumentError(_) => "InvalidArgumentError",
        A::ParquetError(_) => "ParquetError",
        A::CDataInterface(_) => "CDataInterface",
        A::DictionaryKeyOverflowError => "DictionaryKeyOverflowError",
        A::RunEndIndexOverflowError => "RunEndIndexOverflowError",
        _ => "Other",
    }
}

pub(crate) trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for laminar_core::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_pyerr)
    }
}

/// The status name of every ABI status code (`{"NOT_FOUND": 3, …}`), from the handle layer.
/// How many statements `sql` holds, split as the engine splits them (a `;` inside a string or
/// comment does not count); None when it does not parse.
#[pyfunction]
fn statement_count(sql: &str) -> Option<usize> {
    laminar_core::sql::parse_sql(sql).ok().map(|v| v.len())
}

/// The Nexmark `CREATE SOURCE` statements, (name, DDL), as the engine's runner uses them.
#[pyfunction]
fn nexmark_sources() -> Vec<(&'static str, &'static str)> {
    laminar_core::nexmark::queries::SOURCES.to_vec()
}

#[pyfunction]
fn status_codes() -> Vec<(String, i32)> {
    (0..64)
        .filter_map(|s| {
            let n = laminar::status_name(s);
            (n != "UNKNOWN_STATUS").then(|| (n.to_string(), s))
        })
        .collect()
}

/// The engine version.
#[pyfunction]
fn version() -> &'static str {
    laminar_core::VERSION
}

/// Every configuration key with its one-line description.
#[pyfunction]
fn config_keys() -> Vec<(String, String)> {
    laminar_core::config::CONFIG_KEYS
        .iter()
        .map(|k| (k.to_string(), laminar_core::config::describe_key(k).unwrap_or("").to_string()))
        .collect()
}

/// Nexmark events `[first, first + count)` (NEXMARK.md §2) as three batches: person, auction, bid.
#[pyfunction]
#[pyo3(signature = (first, count, seed=0, rate=10_000_000, base_time_ms=1_700_000_000_000))]
fn nexmark(
    py: Python<'_>,
    first: u64,
    count: u64,
    seed: u64,
    rate: u64,
    base_time_ms: i64,
) -> PyResult<(arrow::ArrowBatch, arrow::ArrowBatch, arrow::ArrowBatch)> {
    use laminar_core::nexmark::{NexmarkConfig, NexmarkGenerator};
    let g = NexmarkGenerator::new(NexmarkConfig { seed, first_event_rate: rate, base_time_ms, ..Default::default() });
    let b = py.detach(move || g.generate(first, count)).py()?;
    Ok((
        arrow::ArrowBatch { batch: b.person },
        arrow::ArrowBatch { batch: b.auction },
        arrow::ArrowBatch { batch: b.bid },
    ))
}

#[pymodule]
fn _laminardb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<db::Database>()?;
    m.add_class::<writer::Writer>()?;
    m.add_class::<subscription::Subscription>()?;
    m.add_class::<subscription::PushSubscription>()?;
    m.add_class::<arrow::ArrowBatch>()?;
    m.add_class::<arrow::ArrowStream>()?;
    m.add_function(wrap_pyfunction!(status_codes, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(config_keys, m)?)?;
    m.add_function(wrap_pyfunction!(nexmark, m)?)?;
    m.add_function(wrap_pyfunction!(nexmark_sources, m)?)?;
    m.add_function(wrap_pyfunction!(statement_count, m)?)?;
    logging::install(m)?;
    Ok(())
}
