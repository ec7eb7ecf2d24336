//! Python scalar functions as DataFusion scalar functions. The engine calls one from its own
//! threads a batch at a time: it takes the GIL for the call only, hands the arguments over as one
//! Arrow record batch (zero-copy, by the PyCapsule interface) to the package's bridge
//! (`laminardb.functions._call`), which calls the user's function with `pyarrow.Array`s and
//! returns its result as an Arrow array; that result is checked (length, type, validity) before
//! the engine uses it. An exception is the stream's error, with the exception's type and text.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Accumulator, AggregateUDF, ScalarUDF, Volatility};
use datafusion::scalar::ScalarValue;
use pyo3::prelude::*;

use crate::arrow::ArrowBatch;

fn external(m: String) -> DataFusionError {
    DataFusionError::Execution(m)
}

/// What a Python exception raised by a user function becomes: the function's failure with the
/// exception's type and text, and the exception itself (the `__cause__` of the error the user
/// gets).
fn raised(py: Python<'_>, what: &str, e: PyErr) -> DataFusionError {
    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let message = format!("{what} failed: {kind}: {}", e.value(py));
    let cause: Py<PyAny> = e.into_value(py).into_any();
    DataFusionError::External(Box::new(laminar_core::FunctionError { message, cause: Box::new(cause) }))
}

/// The arguments as one record batch of `n` rows (columns `a0`, `a1`, …).
fn args_batch(arrays: Vec<ArrayRef>, n: usize) -> datafusion::error::Result<RecordBatch> {
    let fields: Vec<Field> =
        arrays.iter().enumerate().map(|(i, a)| Field::new(format!("a{i}"), a.data_type().clone(), true)).collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

/// The package's bridge function `name` (laminardb.functions).
fn bridge<'py>(py: Python<'py>, name: &str) -> Result<Bound<'py, PyAny>, String> {
    py.import("laminardb.functions")
        .and_then(|m| m.getattr(name))
        .map_err(|e| format!("the laminardb package's function bridge: {e}"))
}

/// An Arrow array from an object with `__arrow_c_array__`.
fn array_of(res: &Bound<'_, PyAny>) -> Result<ArrayRef, String> {
    let (schema, array) = res
        .call_method0("__arrow_c_array__")
        .and_then(|t| t.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>())
        .map_err(|e| format!("the result is not an Arrow array: {e}"))?;
    crate::arrow::import_array_capsules(&schema, &array).map_err(|e| e.to_string())
}

/// An Arrow data type from an object with `__arrow_c_schema__` (a `pyarrow.DataType`).
fn data_type(obj: &Bound<'_, PyAny>) -> PyResult<DataType> {
    let capsule = obj.call_method0("__arrow_c_schema__")?;
    let s = crate::arrow::schema_pointer(&capsule)?;
    // SAFETY: a schema capsule, borrowed for the call.
    DataType::try_from(unsafe { &*s }).map_err(|e| pyo3::exceptions::PyTypeError::new_err(e.to_string()))
}

/// Builds the scalar function `name` calling `func` with arguments of `arg_types`.
pub(crate) fn scalar_function(
    name: &str,
    func: Py<PyAny>,
    arg_types: &[Bound<'_, PyAny>],
    return_type: &Bound<'_, PyAny>,
    volatility: &str,
) -> PyResult<ScalarUDF> {
    let args = arg_types.iter().map(data_type).collect::<PyResult<Vec<_>>>()?;
    let ret = data_type(return_type)?;
    let volatility = volatility_of(volatility)?;
    let fname = name.to_string();
    let call = move |batch: RecordBatch| -> datafusion::error::Result<ArrayRef> {
        let n = batch.num_rows();
        let what = format!("Python function '{fname}'");
        Python::attach(|py| {
            let fail = |m: String| external(format!("{what} failed: {m}"));
            let bridge = bridge(py, "_call").map_err(fail)?;
            let arg = Py::new(py, ArrowBatch { batch }).map_err(|e| fail(e.to_string()))?;
            let res = bridge.call1((func.clone_ref(py), arg, n)).map_err(|e| raised(py, &what, e))?;
            array_of(&res).map_err(fail)
        })
    };
    Ok(laminar::function::HostScalar::udf(name, "Python function", args, ret, volatility, Arc::new(call)))
}

fn volatility_of(v: &str) -> PyResult<Volatility> {
    match v {
        "immutable" => Ok(Volatility::Immutable),
        "stable" => Ok(Volatility::Stable),
        "volatile" => Ok(Volatility::Volatile),
        v => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "volatility must be 'immutable', 'stable' or 'volatile', not {v:?}"
        ))),
    }
}

/// One group's (or window's) state of a Python aggregate function: an instance of the user's
/// accumulator class, called through the package's bridge with the GIL taken per call (a batch
/// of one group's rows at a time).
struct PyAccumulator {
    name: String,
    acc: Py<PyAny>,
    /// The declared state types and return type, as pyarrow objects (for the bridge).
    state_types: Py<PyAny>,
    return_type: Py<PyAny>,
    states: Vec<DataType>,
    ret: DataType,
}

impl std::fmt::Debug for PyAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PyAccumulator({})", self.name)
    }
}

impl PyAccumulator {
    fn what(&self, method: &str) -> String {
        format!("Python aggregate function '{}' ({method})", self.name)
    }

    /// Calls `acc.update(*columns)` or `acc.merge(list of columns)`.
    fn feed(&self, method: &str, arrays: &[ArrayRef]) -> datafusion::error::Result<()> {
        let n = arrays.first().map(|a| a.len()).unwrap_or(0);
        let batch = args_batch(arrays.to_vec(), n)?;
        let what = self.what(method);
        Python::attach(|py| {
            let fail = |m: String| external(format!("{what} failed: {m}"));
            let f = bridge(py, "_feed").map_err(fail)?;
            let arg = Py::new(py, ArrowBatch { batch }).map_err(|e| fail(e.to_string()))?;
            f.call1((self.acc.clone_ref(py), method, arg)).map_err(|e| raised(py, &what, e))?;
            Ok(())
        })
    }

    /// One value per declared type, from the bridge's one-row record batch.
    fn values(&self, method: &str, types: &[DataType]) -> datafusion::error::Result<Vec<ScalarValue>> {
        let what = self.what(method);
        let out = Python::attach(|py| -> datafusion::error::Result<ArrayRef> {
            let fail = |m: String| external(format!("{what} failed: {m}"));
            let f = bridge(py, "_values").map_err(fail)?;
            let declared = if method == "state" { &self.state_types } else { &self.return_type };
            let res =
                f.call1((self.acc.clone_ref(py), method, declared.clone_ref(py))).map_err(|e| raised(py, &what, e))?;
            array_of(&res).map_err(fail)
        })?;
        let fail = |m: String| external(format!("{what} failed: {m}"));
        let Some(st) = out.as_any().downcast_ref::<arrow::array::StructArray>() else {
            return Err(fail(format!("the bridge returned {}", out.data_type())));
        };
        if st.len() != 1 || st.num_columns() != types.len() {
            return Err(fail(format!("expected 1 row of {} values", types.len())));
        }
        st.columns()
            .iter()
            .zip(types)
            .map(|(c, t)| {
                if c.data_type() != t {
                    return Err(fail(format!("returned {} where {t} was declared", c.data_type())));
                }
                ScalarValue::try_from_array(c, 0)
            })
            .collect()
    }
}

impl Accumulator for PyAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.feed("update", values)
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.feed("merge", states)
    }
    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        let types = self.states.clone();
        self.values("state", &types)
    }
    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        let ret = [self.ret.clone()];
        Ok(self.values("evaluate", &ret)?.remove(0))
    }
    fn size(&self) -> usize {
        // The Python object's memory is not visible here (memory_limit does not count it).
        std::mem::size_of_val(self)
    }
}

/// Builds the aggregate function `name`: each group's state is `accumulator()` (a class or a
/// factory), with `update(*arrays)`, `merge(states)`, `state()` and `evaluate()`. It takes no
/// retractions: the planner refuses it over a changelog input.
pub(crate) fn aggregate_function(
    py: Python<'_>,
    name: &str,
    accumulator: Py<PyAny>,
    input_types: &[Bound<'_, PyAny>],
    return_type: &Bound<'_, PyAny>,
    state_types: &[Bound<'_, PyAny>],
    volatility: &str,
) -> PyResult<AggregateUDF> {
    let inputs = input_types.iter().map(data_type).collect::<PyResult<Vec<_>>>()?;
    let ret = data_type(return_type)?;
    let states = state_types.iter().map(data_type).collect::<PyResult<Vec<_>>>()?;
    if states.is_empty() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "aggregate function '{name}' needs at least one state type"
        )));
    }
    let volatility = volatility_of(volatility)?;
    let state_list: Py<PyAny> = pyo3::types::PyList::new(py, state_types)?.into_any().unbind();
    let ret_py: Py<PyAny> = return_type.clone().unbind();
    let fname = name.to_string();
    let (st, rt) = (states.clone(), ret.clone());
    let factory: datafusion::logical_expr::function::AccumulatorFactoryFunction = Arc::new(move |_| {
        Python::attach(|py| {
            let what = format!("Python aggregate function '{fname}' (creating its accumulator)");
            let acc = accumulator.call0(py).map_err(|e| raised(py, &what, e))?;
            Ok(Box::new(PyAccumulator {
                name: fname.clone(),
                acc,
                state_types: state_list.clone_ref(py),
                return_type: ret_py.clone_ref(py),
                states: st.clone(),
                ret: rt.clone(),
            }) as Box<dyn Accumulator>)
        })
    });
    Ok(datafusion::logical_expr::create_udaf(name, inputs, Arc::new(ret), volatility, factory, Arc::new(states)))
}
