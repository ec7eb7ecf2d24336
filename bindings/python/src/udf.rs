//! Python scalar functions as DataFusion scalar functions. The engine calls one from its own
//! threads a batch at a time: it takes the GIL for the call only, hands the arguments over as one
//! Arrow record batch (zero-copy, by the PyCapsule interface) to the package's bridge
//! (`laminardb.functions._call`), which calls the user's function with `pyarrow.Array`s and
//! returns its result as an Arrow array; that result is checked (length, type, validity) before
//! the engine uses it. An exception is the stream's error, with the exception's type and text.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use pyo3::prelude::*;

use crate::arrow::ArrowBatch;

pub(crate) struct PyScalarFunction {
    name: String,
    signature: Signature,
    ret: DataType,
    /// The user's function, as the bridge calls it.
    func: Py<PyAny>,
}

impl std::fmt::Debug for PyScalarFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PyScalarFunction({})", self.name)
    }
}

impl PartialEq for PyScalarFunction {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.func.as_ptr() == o.func.as_ptr()
    }
}
impl Eq for PyScalarFunction {}
impl Hash for PyScalarFunction {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        (self.func.as_ptr() as usize).hash(h);
    }
}

fn external(m: String) -> DataFusionError {
    DataFusionError::Execution(m)
}

impl ScalarUDFImpl for PyScalarFunction {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.ret.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> =
            args.args.iter().map(|a| a.to_array(n)).collect::<datafusion::error::Result<_>>()?;
        let fields: Vec<Field> =
            arrays.iter().enumerate().map(|(i, a)| Field::new(format!("a{i}"), a.data_type().clone(), true)).collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            arrays,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let out = Python::attach(|py| -> Result<ArrayRef, String> {
            let bridge = py
                .import("laminardb.functions")
                .and_then(|m| m.getattr("_call"))
                .map_err(|e| format!("the laminardb package's function bridge: {e}"))?;
            let arg = Py::new(py, ArrowBatch { batch }).map_err(|e| e.to_string())?;
            let res = bridge.call1((self.func.clone_ref(py), arg, n)).map_err(|e| {
                let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
                format!("{kind}: {}", e.value(py))
            })?;
            let (schema, array) = res
                .call_method0("__arrow_c_array__")
                .and_then(|t| t.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>())
                .map_err(|e| format!("the result is not an Arrow array: {e}"))?;
            crate::arrow::import_array_capsules(&schema, &array).map_err(|e| e.to_string())
        })
        .map_err(|m| external(format!("Python function '{}' failed: {m}", self.name)))?;
        if out.len() != n {
            return Err(external(format!(
                "Python function '{}' returned {} values for {n} rows",
                self.name,
                out.len()
            )));
        }
        if out.data_type() != &self.ret {
            return Err(external(format!(
                "Python function '{}' returned {} where {} was declared",
                self.name,
                out.data_type(),
                self.ret
            )));
        }
        Ok(ColumnarValue::Array(out))
    }
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
    let volatility = match volatility {
        "immutable" => Volatility::Immutable,
        "stable" => Volatility::Stable,
        "volatile" => Volatility::Volatile,
        v => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "volatility must be 'immutable', 'stable' or 'volatile', not {v:?}"
            )));
        }
    };
    Ok(ScalarUDF::new_from_impl(PyScalarFunction {
        name: name.to_string(),
        signature: Signature::exact(args, volatility),
        ret,
        func,
    }))
}
