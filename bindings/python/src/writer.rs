//! `Writer`: pushes batches and watermarks into one source.

use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::IntoPy;
use crate::arrow::{import_capsules, import_stream_capsule, schema_object};

#[pyclass(module = "laminardb._laminardb", frozen)]
pub struct Writer {
    // None once closed. A writer belongs to one thread at a time; the lock only keeps Python
    // threads that share one by mistake from racing.
    w: Mutex<Option<laminar::Writer>>,
    /// Read without the lock (and with the GIL held): a write in progress may hold the lock
    /// while it needs the GIL.
    closed: std::sync::atomic::AtomicBool,
    schema: arrow::datatypes::SchemaRef,
    name: String,
}

impl Writer {
    pub(crate) fn new(w: laminar::Writer) -> Writer {
        Writer {
            schema: w.schema(),
            name: w.source_name().to_string(),
            w: Mutex::new(Some(w)),
            closed: Default::default(),
        }
    }

    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut laminar::Writer) -> laminar_core::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut g = self.w.lock();
            match g.as_mut() {
                Some(w) => f(w),
                None => Err(laminar_core::Error::new(
                    laminar_core::ErrorKind::InvalidState,
                    format!("the writer for '{}' is closed", self.name),
                )),
            }
        })
        .py()
    }
}

#[pymethods]
impl Writer {
    /// Pushes one batch `(schema capsule, array capsule)`; returns its row count.
    fn write_array(&self, py: Python<'_>, schema: &Bound<'_, PyAny>, array: &Bound<'_, PyAny>) -> PyResult<u64> {
        let batch = import_capsules(schema, array)?;
        let n = batch.num_rows() as u64;
        self.with(py, move |w| w.write(batch))?;
        Ok(n)
    }

    /// Pushes every batch of a stream capsule; returns the row count.
    fn write_stream(&self, py: Python<'_>, stream: &Bound<'_, PyAny>) -> PyResult<u64> {
        let reader = import_stream_capsule(stream)?;
        self.with(py, move |w| w.write_all(reader))
    }

    fn watermark(&self, py: Python<'_>, ms: i64) -> PyResult<()> {
        self.with(py, move |w| w.watermark(ms))
    }

    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |w| w.finish())
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |w| w.flush())
    }

    fn current_watermark(&self, py: Python<'_>) -> PyResult<Option<i64>> {
        self.with(py, |w| w.current_watermark())
    }

    fn schema(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        schema_object(py, self.schema.clone())
    }

    #[getter]
    fn source(&self) -> String {
        self.name.clone()
    }

    #[getter]
    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn close(&self, py: Python<'_>) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        let w = py.detach(|| self.w.lock().take());
        drop(w);
    }
}
