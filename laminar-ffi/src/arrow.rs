//! Arrow C Data and C Stream interchange: importing batches and streams, exporting batches,
//! schemas and streams. The only data format that crosses the ABI (STYLE B5).

use std::collections::{HashSet, VecDeque};
use std::sync::OnceLock;

use parking_lot::Mutex;
use std::ffi::{CString, c_char, c_int, c_void};

use arrow::array::{Array, StructArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi};
use arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use arrow::record_batch::RecordBatch;
use laminar_core::{Error, ErrorKind, Result};

use crate::error::catch;

/// Imports one batch given as a struct array and its schema. `array` is consumed (released on
/// every path); `schema` is only read.
pub fn import_batch(schema: &FFI_ArrowSchema, array: FFI_ArrowArray) -> Result<RecordBatch> {
    check_schema(schema)?;
    if array.is_released() {
        return Err(Error::invalid_argument("the ArrowArray is already released (release == NULL)"));
    }
    if schema.format() != "+s" {
        return Err(Error::invalid_argument(format!(
            "a batch must be a struct array (schema format \"+s\"), got format \"{}\"",
            schema.format()
        )));
    }
    // SAFETY: `array` was produced for `schema` per the C Data Interface (caller contract);
    // the data is validated below before anything reads it.
    let data = unsafe { from_ffi(array, schema) }
        .map_err(|e| Error::invalid_argument(format!("cannot import the ArrowArray: {e}")))?;
    if let Err(e) = data.validate_full() {
        // Name the column when one child is at fault.
        if let DataType::Struct(fields) = data.data_type() {
            for (f, child) in fields.iter().zip(data.child_data()) {
                if let Err(ce) = child.validate_full() {
                    return Err(Error::invalid_data(format!("malformed ArrowArray: column '{}': {ce}", f.name())));
                }
            }
        }
        return Err(Error::invalid_data(format!("malformed ArrowArray: {e}")));
    }
    let s = StructArray::from(data);
    if s.null_count() > 0 {
        return Err(Error::invalid_data("a batch's top-level struct array must have no nulls"));
    }
    Ok(RecordBatch::from(s))
}

/// The C layout of `ArrowSchema`, to check a caller's struct before arrow-rs reads it.
#[repr(C)]
struct RawSchema {
    format: *const std::ffi::c_char,
    name: *const std::ffi::c_char,
    metadata: *const std::ffi::c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut c_void,
    dictionary: *mut c_void,
    release: Option<unsafe extern "C" fn(*mut c_void)>,
    private_data: *mut c_void,
}

/// A released schema or one without a format is INVALID_ARGUMENT (arrow-rs would read NULL).
pub(crate) fn check_schema(schema: &FFI_ArrowSchema) -> Result<()> {
    // SAFETY: FFI_ArrowSchema is #[repr(C)] with exactly this layout (the C Data Interface).
    let raw = unsafe { &*(schema as *const FFI_ArrowSchema as *const RawSchema) };
    if raw.release.is_none() {
        return Err(Error::invalid_argument("the ArrowSchema is released (release == NULL)"));
    }
    if raw.format.is_null() {
        return Err(Error::invalid_argument("the ArrowSchema has no format (format == NULL)"));
    }
    Ok(())
}

/// Exports a batch as a struct array.
pub fn export_batch(batch: &RecordBatch) -> FFI_ArrowArray {
    FFI_ArrowArray::new(&StructArray::from(batch.clone()).into_data())
}

/// Exports a schema (a struct schema with one child per column).
pub fn export_schema(schema: &Schema) -> Result<FFI_ArrowSchema> {
    FFI_ArrowSchema::try_from(schema).map_err(|e| Error::internal(format!("cannot export schema: {e}")))
}

/// The batches of an imported stream; a batch the producer fails to deliver is INVALID_DATA.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// Imports a whole stream. Moves it out of `*raw` (leaving it released).
///
/// # Safety
/// `raw` points to a valid, unreleased `ArrowArrayStream`.
pub unsafe fn import_stream(raw: *mut FFI_ArrowArrayStream) -> Result<BatchIter> {
    // SAFETY: checked non-null by callers; the stream is moved out, leaving *raw released.
    let stream = unsafe { FFI_ArrowArrayStream::from_raw(raw) };
    if stream.release.is_none() {
        return Err(Error::invalid_argument("the ArrowArrayStream is already released (release == NULL)"));
    }
    let reader = ArrowArrayStreamReader::try_new(stream)
        .map_err(|e| Error::invalid_argument(format!("cannot read the ArrowArrayStream's schema: {e}")))?;
    Ok(Box::new(ValidatingReader { reader, index: 0 }))
}

/// The batches of an imported stream, each validated in full before anyone reads it.
struct ValidatingReader {
    reader: ArrowArrayStreamReader,
    index: usize,
}

impl Iterator for ValidatingReader {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Result<RecordBatch>> {
        // arrow-rs builds the arrays of a batch before validating anything, and some of its
        // constructors assert on malformed buffers: such a batch is an error, not a panic.
        let next =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reader.next())).unwrap_or_else(|_| {
                Some(Err(arrow::error::ArrowError::InvalidArgumentError("the producer's arrays are malformed".into())))
            })?;
        let i = self.index;
        self.index += 1;
        Some(next.map_err(|e| Error::invalid_data(format!("reading batch {i} of the input stream: {e}"))).and_then(
            |b| validate_batch(&b).map(|()| b).map_err(|e| e.context(format!("batch {i} of the input stream"))),
        ))
    }
}

/// Validates every column of a batch that came from outside the process (the C Data Interface, a
/// PyCapsule, Arrow IPC bytes): offsets in bounds and increasing, UTF-8 valid, null bitmaps, child
/// lengths, nested children. A malformed column is INVALID_DATA naming it; nothing of the batch
/// may reach the engine before this passes, since its kernels trust these invariants.
pub fn validate_batch(batch: &RecordBatch) -> Result<()> {
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if c.len() != batch.num_rows() {
            return Err(Error::invalid_data(format!(
                "malformed batch: column '{}' has {} rows, the batch {}",
                f.name(),
                c.len(),
                batch.num_rows()
            )));
        }
        c.to_data()
            .validate_full()
            .map_err(|e| Error::invalid_data(format!("malformed batch: column '{}': {e}", f.name())))?;
    }
    Ok(())
}

/// Writes `schema` into a caller-allocated `ArrowSchema` (INVALID_ARGUMENT when `out` is NULL).
///
/// # Safety
/// `out` is NULL or writable for one `ArrowSchema`; its old content is not released.
pub unsafe fn write_schema(out: *mut FFI_ArrowSchema, schema: &Schema) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid_argument("out is NULL"));
    }
    let s = export_schema(schema)?;
    // SAFETY: non-NULL and writable (caller contract).
    unsafe { out.write(s) };
    Ok(())
}

/// Something that yields batches for an exported stream.
pub trait BatchSource: Send {
    /// The next batch; `Ok(None)` at the end.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>>;
}

/// A finished result held in memory.
pub struct VecSource(pub VecDeque<RecordBatch>);

impl BatchSource for VecSource {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        Ok(self.0.pop_front())
    }
}

struct StreamPrivate {
    schema: SchemaRef,
    source: Box<dyn BatchSource>,
    last_error: Option<(Error, CString)>,
}

/// errno values of the C Stream Interface.
fn errno_of(e: &Error) -> c_int {
    match e.kind() {
        ErrorKind::InvalidArgument | ErrorKind::InvalidData | ErrorKind::SqlSyntax | ErrorKind::Plan => 22, // EINVAL
        ErrorKind::ResourceExhausted => 12,                                                                 // ENOMEM
        ErrorKind::Cancelled => 125,                                                                        // ECANCELED
        ErrorKind::Timeout => 110,                                                                          // ETIMEDOUT
        _ => 5,                                                                                             // EIO
    }
}

/// Fills `out` with a stream over `source`. `out` must be writable; its old content is ignored.
///
/// # Safety
/// `out` points to writable memory for one `ArrowArrayStream`.
pub unsafe fn export_stream(schema: SchemaRef, source: Box<dyn BatchSource>, out: *mut FFI_ArrowArrayStream) {
    let private = Box::new(StreamPrivate { schema, source, last_error: None });
    let private = Box::into_raw(private);
    live_streams().lock().insert(private as usize);
    let stream = FFI_ArrowArrayStream {
        get_schema: Some(stream_get_schema),
        get_next: Some(stream_get_next),
        get_last_error: Some(stream_get_last_error),
        release: Some(stream_release),
        private_data: private as *mut c_void,
    };
    // SAFETY: `out` is writable (caller contract); write does not drop the old content.
    unsafe { out.write(stream) };
}

/// The private data of every live stream LaminarDB exported, so a stream can be recognised as
/// ours without reading memory that may belong to someone else.
fn live_streams() -> &'static Mutex<HashSet<usize>> {
    static LIVE: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// The private data of a stream LaminarDB exported, or None for anyone else's stream.
///
/// # Safety
/// `stream` is NULL or points to a valid `ArrowArrayStream`.
unsafe fn private_of<'a>(stream: *mut FFI_ArrowArrayStream) -> Option<&'a mut StreamPrivate> {
    // SAFETY: see above.
    let s = unsafe { stream.as_mut() }?;
    if s.release.is_none() || s.private_data.is_null() || !live_streams().lock().contains(&(s.private_data as usize)) {
        return None;
    }
    // SAFETY: only our get_next is paired with a StreamPrivate in private_data.
    Some(unsafe { &mut *(s.private_data as *mut StreamPrivate) })
}

/// The last error of a stream LaminarDB exported, if any.
///
/// # Safety
/// `stream` is NULL or points to a valid `ArrowArrayStream`.
pub unsafe fn stream_last_error(stream: *mut FFI_ArrowArrayStream) -> Option<Option<Error>> {
    // SAFETY: see above.
    unsafe { private_of(stream) }.map(|p| p.last_error.as_ref().map(|(e, _)| e.clone()))
}

unsafe extern "C" fn stream_get_schema(stream: *mut FFI_ArrowArrayStream, out: *mut FFI_ArrowSchema) -> c_int {
    // SAFETY: called by the consumer on our own stream.
    let Some(p) = (unsafe { private_of(stream) }) else { return 22 };
    if out.is_null() {
        return 22;
    }
    match catch(|| export_schema(&p.schema)) {
        Ok(s) => {
            // SAFETY: `out` is writable per the C Stream Interface.
            unsafe { out.write(s) };
            0
        }
        Err(e) => {
            let code = errno_of(&e);
            let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
            p.last_error = Some((e, msg));
            code
        }
    }
}

unsafe extern "C" fn stream_get_next(stream: *mut FFI_ArrowArrayStream, out: *mut FFI_ArrowArray) -> c_int {
    // SAFETY: called by the consumer on our own stream.
    let Some(p) = (unsafe { private_of(stream) }) else { return 22 };
    if out.is_null() {
        return 22;
    }
    match catch(|| p.source.next_batch().map(|b| b.map(|b| export_batch(&b)))) {
        Ok(Some(a)) => {
            // SAFETY: `out` is writable per the C Stream Interface.
            unsafe { out.write(a) };
            0
        }
        Ok(None) => {
            // SAFETY: as above; a released array marks the end of the stream.
            unsafe { out.write(FFI_ArrowArray::empty()) };
            0
        }
        Err(e) => {
            let code = errno_of(&e);
            let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
            p.last_error = Some((e, msg));
            code
        }
    }
}

unsafe extern "C" fn stream_get_last_error(stream: *mut FFI_ArrowArrayStream) -> *const c_char {
    // SAFETY: called by the consumer on our own stream.
    match unsafe { private_of(stream) } {
        Some(p) => p.last_error.as_ref().map(|(_, m)| m.as_ptr()).unwrap_or(std::ptr::null()),
        None => std::ptr::null(),
    }
}

unsafe extern "C" fn stream_release(stream: *mut FFI_ArrowArrayStream) {
    // SAFETY: called by the consumer on our own stream, at most once.
    let Some(s) = (unsafe { stream.as_mut() }) else { return };
    if s.release.is_none() {
        return;
    }
    // Only a stream still registered as live is freed: a released copy of the struct (a consumer
    // that duplicated it instead of moving it) must not free the same data twice.
    if !s.private_data.is_null() && live_streams().lock().remove(&(s.private_data as usize)) {
        // SAFETY: private_data came from Box::into_raw in export_stream and was live.
        let private = unsafe { Box::from_raw(s.private_data as *mut StreamPrivate) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(private)));
    }
    s.private_data = std::ptr::null_mut();
    s.release = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_from_iter(vec![("x", Arc::new(Int64Array::from_iter_values(0..n)) as _)]).unwrap()
    }

    #[test]
    fn a_batch_round_trips_through_the_c_data_interface() {
        let b = batch(10);
        let schema = export_schema(&b.schema()).unwrap();
        let back = import_batch(&schema, export_batch(&b)).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn a_non_struct_array_is_refused() {
        let a = Int64Array::from(vec![1, 2]);
        let (arr, sch) = arrow::ffi::to_ffi(&a.into_data()).unwrap();
        let e = import_batch(&sch, arr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("struct array"), "{e}");
    }

    #[test]
    fn an_exported_stream_yields_its_batches_then_ends_and_reports_errors() {
        struct Failing(u32);
        impl BatchSource for Failing {
            fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
                self.0 += 1;
                if self.0 == 1 { Ok(Some(batch(3))) } else { Err(Error::invalid_data("bad row 7")) }
            }
        }
        let mut raw = FFI_ArrowArrayStream::empty();
        unsafe { export_stream(batch(0).schema(), Box::new(VecSource(vec![batch(2), batch(3)].into())), &mut raw) };
        let reader = ArrowArrayStreamReader::try_new(raw).unwrap();
        let got: Vec<usize> = reader.map(|b| b.unwrap().num_rows()).collect();
        assert_eq!(got, vec![2, 3]);

        let mut raw = FFI_ArrowArrayStream::empty();
        unsafe { export_stream(batch(0).schema(), Box::new(Failing(0)), &mut raw) };
        let mut arr = FFI_ArrowArray::empty();
        assert_eq!(unsafe { stream_get_next(&mut raw, &mut arr) }, 0);
        drop(arr);
        let mut arr = FFI_ArrowArray::empty();
        assert_eq!(unsafe { stream_get_next(&mut raw, &mut arr) }, 22);
        let e = unsafe { stream_last_error(&mut raw) }.unwrap().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        drop(raw); // FFI_ArrowArrayStream's Drop calls our release
    }
}
