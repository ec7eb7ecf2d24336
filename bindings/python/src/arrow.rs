//! Arrow across the Python boundary by the PyCapsule interface (`__arrow_c_array__`,
//! `__arrow_c_stream__`, `__arrow_c_schema__`): zero-copy, no pyarrow needed on the Rust side.

use std::collections::VecDeque;
use std::ffi::{CStr, c_void};

use arrow::datatypes::SchemaRef;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow::record_batch::RecordBatch;
use laminar::arrow::{VecSource, export_batch, export_schema, import_batch};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::IntoPy;

const SCHEMA: &CStr = c"arrow_schema";
const ARRAY: &CStr = c"arrow_array";
const STREAM: &CStr = c"arrow_array_stream";

unsafe extern "C" fn drop_schema(capsule: *mut ffi::PyObject) {
    // SAFETY: only called by Python on capsules made below, named SCHEMA, holding a Box.
    let p = unsafe { ffi::PyCapsule_GetPointer(capsule, SCHEMA.as_ptr()) } as *mut FFI_ArrowSchema;
    if !p.is_null() {
        // SAFETY: as above; dropping releases the schema unless a consumer moved it out.
        drop(unsafe { Box::from_raw(p) });
    }
}

unsafe extern "C" fn drop_array(capsule: *mut ffi::PyObject) {
    // SAFETY: as drop_schema.
    let p = unsafe { ffi::PyCapsule_GetPointer(capsule, ARRAY.as_ptr()) } as *mut FFI_ArrowArray;
    if !p.is_null() {
        // SAFETY: as drop_schema.
        drop(unsafe { Box::from_raw(p) });
    }
}

unsafe extern "C" fn drop_stream(capsule: *mut ffi::PyObject) {
    // SAFETY: as drop_schema.
    let p = unsafe { ffi::PyCapsule_GetPointer(capsule, STREAM.as_ptr()) } as *mut FFI_ArrowArrayStream;
    if !p.is_null() {
        // SAFETY: as drop_schema.
        drop(unsafe { Box::from_raw(p) });
    }
}

fn capsule<T>(
    py: Python<'_>,
    value: T,
    name: &'static CStr,
    dtor: unsafe extern "C" fn(*mut ffi::PyObject),
) -> PyResult<Py<PyAny>> {
    let p = Box::into_raw(Box::new(value));
    // SAFETY: a valid pointer, a static name, and a destructor that frees exactly this Box.
    let raw = unsafe { ffi::PyCapsule_New(p as *mut c_void, name.as_ptr(), Some(dtor)) };
    if raw.is_null() {
        // SAFETY: the capsule was not created, so the Box is still ours.
        drop(unsafe { Box::from_raw(p) });
    }
    // SAFETY: a new reference or NULL with an exception set.
    Ok(unsafe { Bound::from_owned_ptr_or_err(py, raw) }?.unbind())
}

pub(crate) fn schema_capsule(py: Python<'_>, schema: &SchemaRef) -> PyResult<Py<PyAny>> {
    capsule(py, export_schema(schema).py()?, SCHEMA, drop_schema)
}

pub(crate) fn batch_capsules(py: Python<'_>, batch: &RecordBatch) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    Ok((schema_capsule(py, &batch.schema())?, capsule(py, export_batch(batch), ARRAY, drop_array)?))
}

fn pointer(obj: &Bound<'_, PyAny>, name: &CStr) -> PyResult<*mut c_void> {
    // SAFETY: GetPointer checks the capsule's type and name and sets an exception otherwise.
    let p = unsafe { ffi::PyCapsule_GetPointer(obj.as_ptr(), name.as_ptr()) };
    if p.is_null() {
        return Err(PyErr::take(obj.py()).unwrap_or_else(|| pyo3::exceptions::PyValueError::new_err("empty capsule")));
    }
    Ok(p)
}

/// Imports a batch from `(schema capsule, array capsule)`; the array is moved out of its capsule.
pub(crate) fn import_capsules(schema: &Bound<'_, PyAny>, array: &Bound<'_, PyAny>) -> PyResult<RecordBatch> {
    let s = pointer(schema, SCHEMA)? as *const FFI_ArrowSchema;
    let a = pointer(array, ARRAY)? as *mut FFI_ArrowArray;
    // SAFETY: both pointers come from capsules of the right names; the array is moved out
    // (leaving it released, so the capsule's destructor does nothing).
    let array = unsafe { FFI_ArrowArray::from_raw(a) };
    // SAFETY: the schema capsule stays alive (borrowed) for the call.
    import_batch(unsafe { &*s }, array).py()
}

/// The schema inside a schema capsule (borrowed while the capsule lives).
pub(crate) fn schema_pointer(capsule: &Bound<'_, PyAny>) -> PyResult<*const FFI_ArrowSchema> {
    Ok(pointer(capsule, SCHEMA)? as *const FFI_ArrowSchema)
}

/// Imports one array from `(schema capsule, array capsule)` (moved out), validated in full as
/// every import is (offsets, UTF-8, null bitmaps, children).
pub(crate) fn import_array_capsules(
    schema: &Bound<'_, PyAny>,
    array: &Bound<'_, PyAny>,
) -> laminar_core::Result<arrow::array::ArrayRef> {
    let bad = |e: PyErr| laminar_core::Error::invalid_data(e.to_string());
    let s = pointer(schema, SCHEMA).map_err(bad)? as *const FFI_ArrowSchema;
    let a = pointer(array, ARRAY).map_err(bad)? as *mut FFI_ArrowArray;
    // SAFETY: capsules of the right names; the array is moved out (its capsule's destructor
    // then does nothing); the schema is borrowed for the call.
    let data = unsafe { arrow::ffi::from_ffi(FFI_ArrowArray::from_raw(a), &*s) }
        .map_err(|e| laminar_core::Error::invalid_data(format!("the returned array: {e}")))?;
    let array = arrow::array::make_array(data);
    let field = arrow::datatypes::Field::new("result", array.data_type().clone(), true);
    let batch =
        RecordBatch::try_new(std::sync::Arc::new(arrow::datatypes::Schema::new(vec![field])), vec![array.clone()])?;
    laminar::arrow::validate_batch(&batch)?;
    Ok(array)
}

/// Imports a stream from its capsule (moved out).
pub(crate) fn import_stream_capsule(stream: &Bound<'_, PyAny>) -> PyResult<laminar::arrow::BatchIter> {
    let p = pointer(stream, STREAM)? as *mut FFI_ArrowArrayStream;
    // SAFETY: a stream capsule; moved out, leaving it released.
    unsafe { laminar::arrow::import_stream(p) }.py()
}

/// One record batch, exposed through `__arrow_c_array__` (zero-copy into pyarrow, polars, …).
#[pyclass(module = "laminardb._laminardb", frozen)]
pub struct ArrowBatch {
    pub(crate) batch: RecordBatch,
}

#[pymethods]
impl ArrowBatch {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__(
        &self,
        py: Python<'_>,
        requested_schema: Option<Py<PyAny>>,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let _ = requested_schema;
        batch_capsules(py, &self.batch)
    }

    fn __arrow_c_schema__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        schema_capsule(py, &self.batch.schema())
    }
}

/// A finished result (schema + batches) exposed through `__arrow_c_stream__`. Each call of
/// `__arrow_c_stream__` yields every batch (they are shared, not copied).
#[pyclass(module = "laminardb._laminardb", frozen)]
pub struct ArrowStream {
    pub(crate) schema: SchemaRef,
    pub(crate) batches: Vec<RecordBatch>,
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__(&self, py: Python<'_>, requested_schema: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let _ = requested_schema;
        let mut out = FFI_ArrowArrayStream::empty();
        let batches: VecDeque<RecordBatch> = self.batches.iter().cloned().collect();
        // SAFETY: `out` is a valid, writable stream struct.
        unsafe { laminar::arrow::export_stream(self.schema.clone(), Box::new(VecSource(batches)), &mut out) };
        capsule(py, out, STREAM, drop_stream)
    }

    fn __arrow_c_schema__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        schema_capsule(py, &self.schema)
    }
}

/// A schema exposed through `__arrow_c_schema__`.
pub(crate) fn schema_object(py: Python<'_>, schema: SchemaRef) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, ArrowStream { schema, batches: vec![] })?.into_any())
}
