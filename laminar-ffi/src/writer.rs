//! Writers: push Arrow batches and watermarks into one source.
//!
//! [`Writer`], the `Db` methods that make one (`Db::writer`) or use one (`Db::insert`), and the
//! `laminar_writer_*` C exports.

use std::ffi::c_char;

use arrow::datatypes::SchemaRef;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow::record_batch::RecordBatch;
use laminar_core::{Error, Result, SourceWriter};

use crate::arrow::{import_batch, import_stream, write_schema};
use crate::db::{Db, laminar_db};
use crate::error::{cstr, guard, guard_void, handle, laminar_error, laminar_status, out_ptr};

/// The value `laminar_writer_current_watermark` reports before a source has a watermark.
pub const LAMINAR_NO_WATERMARK: i64 = i64::MIN;

/// A writer into one source. Serialized: one thread at a time (use one writer per thread).
pub struct Writer {
    db: Db,
    w: SourceWriter,
}

impl Db {
    /// A writer for `source`.
    pub fn writer(&self, source: &str) -> Result<Writer> {
        self.check_process()?;
        Ok(Writer::new(self.clone(), self.database().writer(source)?))
    }

    /// Pushes every batch of `batches` into `source` and waits until they are processed; the
    /// number of rows. Stops at the first error (earlier batches stay applied).
    pub fn insert(&self, source: &str, batches: impl IntoIterator<Item = Result<RecordBatch>>) -> Result<u64> {
        let mut w = self.writer(source)?;
        let rows = w.write_all(batches)?;
        w.flush()?;
        Ok(rows)
    }
}

impl Writer {
    fn new(db: Db, w: SourceWriter) -> Writer {
        Writer { db, w }
    }

    pub fn source_name(&self) -> &str {
        self.w.source_name()
    }

    /// Interrupts a write of this writer blocked on a full queue, from any thread.
    pub fn interrupter(&self) -> laminar_core::WriterInterrupt {
        self.w.interrupter()
    }

    pub fn schema(&self) -> SchemaRef {
        self.w.schema()
    }

    /// Pushes a batch: matched to the source schema by column name, lossless widenings cast,
    /// anything else INVALID_DATA with nothing applied. Blocks while the source queue is full.
    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.db.check_process()?;
        self.w.write(batch)
    }

    /// Pushes every batch in order; the number of rows. Stops at the first error (batches before
    /// it stay applied).
    pub fn write_all(&mut self, batches: impl IntoIterator<Item = Result<RecordBatch>>) -> Result<u64> {
        let mut rows = 0u64;
        for b in batches {
            let b = b?;
            rows += b.num_rows() as u64;
            self.write(b)?;
        }
        Ok(rows)
    }

    /// Advances the source watermark to `ms` (epoch milliseconds); never moves it back.
    pub fn watermark(&mut self, ms: i64) -> Result<()> {
        self.db.check_process()?;
        self.w.watermark(ms)
    }

    /// Marks the end of input: every window of the source closes.
    pub fn finish(&mut self) -> Result<()> {
        self.db.check_process()?;
        self.w.finish()
    }

    /// The source watermark in epoch milliseconds after what has been processed; None before any.
    pub fn current_watermark(&self) -> Result<Option<i64>> {
        self.db.check_open()?;
        self.w.current_watermark()
    }

    /// Waits until everything pushed so far has been processed.
    pub fn flush(&mut self) -> Result<()> {
        self.db.check_process()?;
        self.w.flush()
    }
}

/// A writer into one source. Serialized: one thread at a time (except `laminar_writer_cancel`,
/// any thread); several threads writing to one source each use their own writer. Must be
/// destroyed with `laminar_writer_destroy`, before or after the database is closed.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub struct laminar_writer {
    // Behind a mutex so laminar_writer_cancel (any thread) and the serialized calls only ever
    // share the handle; uncontended, it costs nanoseconds per call.
    pub(crate) w: parking_lot::Mutex<Writer>,
    interrupt: laminar_core::WriterInterrupt,
    db: Db,
}

/// Creates a writer for `source`.
///
/// - `db`, `source`: borrowed.
/// - `out`: caller-owned output; receives the writer, or NULL on failure.
///
/// Errors: `LAMINAR_NOT_FOUND` (no such source; the message suggests a near name),
/// `LAMINAR_CLOSED`. Thread-safety: any thread (it is a call on `db`). Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_create(
    db: *mut laminar_db,
    source: *const c_char,
    out: *mut *mut laminar_writer,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: pointers are NULL or valid (caller contract).
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: as above.
        let (db, source) = unsafe { (handle(db, "db")?, cstr(source, "source")?) };
        let w = db.db.writer(source)?;
        let interrupt = w.interrupter();
        *out = Box::into_raw(Box::new(laminar_writer { w: parking_lot::Mutex::new(w), interrupt, db: db.db.clone() }));
        Ok(())
    })
}

/// Interrupts a write of this writer that is waiting for room in a full source queue
/// (`queue_full = block`): it returns `LAMINAR_CANCELLED` with nothing of its batch applied, and
/// the writer stays usable. A write is interrupted if it had begun queueing its batch before this
/// call; one still validating its batch, or one that starts later, is not (call again to stop it
/// once it waits). **Any thread,
/// at any time until the writer is destroyed**; idempotent. A no-op for NULL.
///
/// - `writer`: borrowed.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_cancel(writer: *mut laminar_writer) {
    guard_void(|| {
        // SAFETY: NULL or a live handle (caller contract); only shared access.
        if let Some(w) = unsafe { writer.as_ref() } {
            w.interrupt.interrupt();
        }
    });
}

/// Destroys a writer. Rows it pushed stay pushed. A no-op for NULL.
///
/// - `writer`: consumed.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_destroy(writer: Option<Box<laminar_writer>>) {
    guard_void(|| match writer {
        // In a forked child the engine's threads are gone; dropping could wait for them.
        Some(w) if w.db.in_forked_child() => std::mem::forget(w),
        w => drop(w),
    });
}

/// Pushes one batch. Columns are matched to the source by name; lossless widenings are cast
/// (integers, ms → µs timestamps, dictionary → plain); anything else is `LAMINAR_INVALID_DATA`
/// naming the column and both types, and nothing of the batch is applied. Blocks while the
/// source queue is full (`queue_full = block`), or fails at once with
/// `LAMINAR_RESOURCE_EXHAUSTED` (`queue_full = fail`).
///
/// - `writer`: borrowed, serialized.
/// - `schema`: borrowed — the batch's schema, a struct (`"+s"`); reuse it for every batch.
/// - `batch`: consumed — a struct array; released on return (`batch->release == NULL`), on
///   success and on failure alike.
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` (NULL, released or non-struct input),
/// `LAMINAR_INVALID_DATA`, `LAMINAR_NOT_FOUND` (the source was dropped), `LAMINAR_CLOSED`,
/// `LAMINAR_CANCELLED` (interrupted by `laminar_writer_cancel` while the queue was full).
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_write(
    writer: *mut laminar_writer,
    schema: *const FFI_ArrowSchema,
    batch: *mut FFI_ArrowArray,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        if batch.is_null() {
            return Err(Error::invalid_argument("batch is NULL"));
        }
        // SAFETY: non-NULL; moved out first so it is released on every path below.
        let array = unsafe { FFI_ArrowArray::from_raw(batch) };
        // SAFETY: pointers are NULL or valid (caller contract).
        let (w, schema) = unsafe { (handle(writer, "writer")?, handle(schema, "schema")?) };
        let b = import_batch(schema, array)?;
        w.w.lock().write(b)
    })
}

/// Pushes every batch of a stream, in order. Stops at the first error; batches before it stay
/// applied.
///
/// - `writer`: borrowed, serialized.
/// - `stream`: consumed — released on return, on success and on failure alike.
/// - `out_rows`: may be NULL; receives the number of rows pushed.
///
/// Errors: as `laminar_writer_write`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_write_stream(
    writer: *mut laminar_writer,
    stream: *mut FFI_ArrowArrayStream,
    out_rows: *mut i64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        if stream.is_null() {
            return Err(Error::invalid_argument("stream is NULL"));
        }
        // SAFETY: non-NULL; moved out first so it is released on every path.
        let reader = unsafe { import_stream(stream) };
        // SAFETY: NULL or a live handle (caller contract).
        let w = unsafe { handle(writer, "writer") }?;
        let rows = w.w.lock().write_all(reader?)?;
        // SAFETY: NULL or writable.
        if let Some(o) = unsafe { out_rows.as_mut() } {
            *o = rows as i64;
        }
        Ok(())
    })
}

/// Advances the source's watermark to `ms` (epoch milliseconds). A watermark never moves back;
/// an older value is ignored. `INT64_MAX` means end of input (as `laminar_writer_finish`).
///
/// - `writer`: borrowed, serialized.
///
/// Errors: `LAMINAR_CLOSED`, `LAMINAR_NOT_FOUND` (the source was dropped). Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_watermark(
    writer: *mut laminar_writer,
    ms: i64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        unsafe { handle(writer, "writer") }?.w.lock().watermark(ms)
    })
}

/// Marks the end of the source's input: every window that depends only on finished sources
/// closes and is emitted.
///
/// - `writer`: borrowed, serialized.
///
/// Errors: `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_finish(
    writer: *mut laminar_writer,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        unsafe { handle(writer, "writer") }?.w.lock().finish()
    })
}

/// Waits until everything pushed so far (by any writer) has been processed and emitted.
///
/// - `writer`: borrowed, serialized.
///
/// Errors: `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_flush(
    writer: *mut laminar_writer,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        unsafe { handle(writer, "writer") }?.w.lock().flush()
    })
}

/// The source's watermark in epoch milliseconds, after what has been processed so far;
/// `LAMINAR_NO_WATERMARK` (`INT64_MIN`) before it has one.
///
/// - `writer`: borrowed. `out`: caller-owned output, required.
///
/// Errors: `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_current_watermark(
    writer: *mut laminar_writer,
    out: *mut i64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let w = unsafe { handle(writer, "writer") }?;
        // SAFETY: NULL or writable.
        let out = unsafe { out.as_mut() }.ok_or_else(|| Error::invalid_argument("out is NULL"))?;
        *out = w.w.lock().current_watermark()?.unwrap_or(LAMINAR_NO_WATERMARK);
        Ok(())
    })
}

/// The source's schema.
///
/// - `writer`: borrowed. `out`: caller-allocated; filled with a schema the caller owns and must
///   release. Untouched on failure.
///
/// Errors: `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_schema(
    writer: *mut laminar_writer,
    out: *mut FFI_ArrowSchema,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let w = unsafe { handle(writer, "writer") }?;
        if out.is_null() {
            return Err(Error::invalid_argument("out is NULL"));
        }
        w.db.check_open()?;
        let schema = w.w.lock().schema();
        // SAFETY: NULL or writable (caller contract).
        unsafe { write_schema(out, &schema) }
    })
}

/// Benchmarking aid, not for applications: imports `count` batches (consumed, untimed), then
/// pushes them through the Rust API (`SourceWriter::write`, no C Data import on the path) and
/// waits for them to be processed; `*out_seconds` receives the time of the pushes and the wait.
/// It lets a C benchmark compare the C ABI path with the Rust one in one process.
///
/// - `writer`: borrowed, serialized. `schema`: borrowed. `batches`: an array of `count` arrays,
///   each consumed. `out_seconds`: required.
///
/// Since: 0.1.0 (unstable)
#[cfg(feature = "unstable")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_writer_bench_rust_path(
    writer: *mut laminar_writer,
    schema: *const FFI_ArrowSchema,
    batches: *mut FFI_ArrowArray,
    count: usize,
    out_seconds: *mut f64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        if batches.is_null() && count > 0 {
            return Err(Error::invalid_argument("batches is NULL"));
        }
        // SAFETY: `batches` points to `count` arrays (caller contract); each is moved out.
        let arrays: Vec<FFI_ArrowArray> =
            (0..count).map(|i| unsafe { FFI_ArrowArray::from_raw(batches.add(i)) }).collect();
        // SAFETY: pointers are NULL or valid (caller contract).
        let (w, schema) = unsafe { (handle(writer, "writer")?, handle(schema, "schema")?) };
        let imported = arrays.into_iter().map(|a| import_batch(schema, a)).collect::<Result<Vec<_>>>()?;
        let mut w = w.w.lock();
        let t0 = std::time::Instant::now();
        for b in imported {
            w.write(b)?;
        }
        w.flush()?;
        let secs = t0.elapsed().as_secs_f64();
        // SAFETY: NULL or writable.
        *unsafe { out_seconds.as_mut() }.ok_or_else(|| Error::invalid_argument("out_seconds is NULL"))? = secs;
        Ok(())
    })
}
