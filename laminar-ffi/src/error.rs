//! Status codes, the owned error object and the one guard every export runs in.

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use laminar_core::{Error, Result};

/// A status code. `LAMINAR_OK` (0) is success; every other value is one of the `LAMINAR_*`
/// constants. The set is coarse, stable and append-only: values are never renumbered.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_status = i32;

/// Success.
pub const LAMINAR_OK: laminar_status = 0;
/// An error that fits no other status.
pub const LAMINAR_UNKNOWN: laminar_status = 1;
/// The feature exists in the API but not yet in the engine (connectors not in this build, for example).
pub const LAMINAR_NOT_IMPLEMENTED: laminar_status = 2;
/// No source, stream, view or key of that name.
pub const LAMINAR_NOT_FOUND: laminar_status = 3;
/// An object of that name exists already.
pub const LAMINAR_ALREADY_EXISTS: laminar_status = 4;
/// A bad argument: a NULL required pointer, invalid UTF-8, an unknown config key, a bad value.
pub const LAMINAR_INVALID_ARGUMENT: laminar_status = 5;
/// The call is not allowed now (destroying a subscription from inside its own callback, a
/// handle used in a child process after `fork()`).
pub const LAMINAR_INVALID_STATE: laminar_status = 6;
/// Data does not match the schema, or is malformed; nothing of it was applied.
pub const LAMINAR_INVALID_DATA: laminar_status = 7;
/// A bug in LaminarDB, including a caught panic. The message says where.
pub const LAMINAR_INTERNAL: laminar_status = 9;
/// An I/O error.
pub const LAMINAR_IO: laminar_status = 10;
/// The operation was cancelled.
pub const LAMINAR_CANCELLED: laminar_status = 11;
/// A timed wait ended without a result.
pub const LAMINAR_TIMEOUT: laminar_status = 12;
/// A resource limit was hit: memory_limit, a full queue with queue_full = fail, a subscriber
/// that lagged behind its buffer.
pub const LAMINAR_RESOURCE_EXHAUSTED: laminar_status = 13;
/// The database was closed.
pub const LAMINAR_CLOSED: laminar_status = 20;
/// The SQL text does not parse; `laminar_error_sql_offset` says where.
pub const LAMINAR_SQL_SYNTAX: laminar_status = 21;
/// The SQL parses but cannot be planned (unknown column, type error, unsupported construct).
pub const LAMINAR_PLAN: laminar_status = 22;

/// An error: a status, a message and, for SQL errors, a byte offset into the statement.
/// Immutable; safe to read from several threads at once and to pass between threads.
/// Must be destroyed with `laminar_error_destroy`.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub struct laminar_error {
    pub(crate) status: laminar_status,
    pub(crate) message: CString,
    pub(crate) sql_offset: i64,
    /// The failed stream or materialized view this error reports, if it reports one.
    pub(crate) stream: Option<CString>,
}

impl laminar_error {
    pub(crate) fn new(e: &Error, sql: Option<&str>) -> laminar_error {
        let text = e.to_string().replace('\0', "\\0");
        laminar_error {
            status: e.kind() as laminar_status,
            message: CString::new(text).unwrap_or_default(),
            sql_offset: sql.and_then(|s| e.sql_offset(s)).map(|o| o as i64).unwrap_or(-1),
            stream: e.failed_stream().and_then(|n| CString::new(n.replace('\0', "\\0")).ok()),
        }
    }
}

/// The static name of a status (`c"NOT_FOUND"`), or `c"UNKNOWN_STATUS"` for a value that is not
/// a LaminarDB status; Python, Node and Go use the same names.
pub fn status_cname(status: laminar_status) -> &'static CStr {
    match status {
        LAMINAR_OK => c"OK",
        LAMINAR_UNKNOWN => c"UNKNOWN",
        LAMINAR_NOT_IMPLEMENTED => c"NOT_IMPLEMENTED",
        LAMINAR_NOT_FOUND => c"NOT_FOUND",
        LAMINAR_ALREADY_EXISTS => c"ALREADY_EXISTS",
        LAMINAR_INVALID_ARGUMENT => c"INVALID_ARGUMENT",
        LAMINAR_INVALID_STATE => c"INVALID_STATE",
        LAMINAR_INVALID_DATA => c"INVALID_DATA",
        LAMINAR_INTERNAL => c"INTERNAL",
        LAMINAR_IO => c"IO",
        LAMINAR_CANCELLED => c"CANCELLED",
        LAMINAR_TIMEOUT => c"TIMEOUT",
        LAMINAR_RESOURCE_EXHAUSTED => c"RESOURCE_EXHAUSTED",
        LAMINAR_CLOSED => c"CLOSED",
        LAMINAR_SQL_SYNTAX => c"SQL_SYNTAX",
        LAMINAR_PLAN => c"PLAN",
        _ => c"UNKNOWN_STATUS",
    }
}

/// [`status_cname`] as `&str`.
pub fn status_name(status: laminar_status) -> &'static str {
    status_cname(status).to_str().unwrap_or("UNKNOWN_STATUS")
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    format!("LaminarDB panicked (a bug; please report it): {}", laminar_core::panic_guard::message(&*p))
}

/// Runs `f` and turns any panic into an INTERNAL error, so nothing unwinds into C. The panic is
/// reported through the logger, not printed on stderr (`logging::install_panic_hook`).
pub(crate) fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::logging::guarded(|| catch_unwind(AssertUnwindSafe(f)))
        .unwrap_or_else(|p| Err(Error::internal(panic_message(p))))
}

/// The guard every fallible export runs in: catches panics, maps the error to its status and
/// fills `out_error` (NULL on success) when the caller asked for it. `sql` locates SQL errors.
pub(crate) fn guard(
    out_error: *mut *mut laminar_error,
    sql: Option<&str>,
    f: impl FnOnce() -> Result<()>,
) -> laminar_status {
    let r = catch(f);
    let status = match &r {
        Ok(()) => LAMINAR_OK,
        Err(e) => e.kind() as laminar_status,
    };
    if !out_error.is_null() {
        let value = match r {
            Ok(()) => std::ptr::null_mut(),
            Err(e) => Box::into_raw(Box::new(laminar_error::new(&e, sql))),
        };
        // SAFETY: the caller passes a writable `laminar_error**` or NULL (checked above).
        unsafe { out_error.write(value) };
    }
    status
}

/// Runs a void export (destroy, cancel) so that a panic is swallowed rather than aborting.
pub(crate) fn guard_void(f: impl FnOnce()) {
    let _ = crate::logging::guarded(|| catch_unwind(AssertUnwindSafe(f)));
}

/// A required input string: non-NULL, NUL-terminated UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn cstr<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the contract above.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| Error::invalid_argument(format!("{what} is not valid UTF-8 (byte {})", e.valid_up_to())))
}

/// A required handle argument, borrowed shared.
///
/// # Safety
/// `p` is NULL or a live handle of type `T`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: see above.
    unsafe { p.as_ref() }.ok_or_else(|| Error::invalid_argument(format!("{what} is NULL")))
}

/// A required handle argument, borrowed exclusively (handles with serialized access).
///
/// # Safety
/// `p` is NULL or a live handle of type `T` not used by another thread during the call.
pub(crate) unsafe fn handle_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: see above.
    unsafe { p.as_mut() }.ok_or_else(|| Error::invalid_argument(format!("{what} is NULL")))
}

/// A required output pointer: checked, then set to a null/empty value so it is defined on failure.
///
/// # Safety
/// `p` is NULL or writable for one `T`.
pub(crate) unsafe fn out_ptr<'a, T>(p: *mut *mut T, what: &str) -> Result<&'a mut *mut T> {
    // SAFETY: see above.
    let o = unsafe { p.as_mut() }.ok_or_else(|| Error::invalid_argument(format!("{what} is NULL")))?;
    *o = std::ptr::null_mut();
    Ok(o)
}

// ------------------------------------------------------------------------------- exports

/// The status of an error. Returns `LAMINAR_INVALID_ARGUMENT` for a NULL `error`.
///
/// - `error`: borrowed.
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_error_status(error: *const laminar_error) -> laminar_status {
    // SAFETY: NULL or a live error object (caller contract).
    match unsafe { error.as_ref() } {
        Some(e) => e.status,
        None => LAMINAR_INVALID_ARGUMENT,
    }
}

/// The message of an error: UTF-8, NUL-terminated, never NULL (empty for a NULL `error`).
///
/// - `error`: borrowed. The returned string is borrowed from `error` and lives until
///   `laminar_error_destroy(error)`; do not free it.
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_error_message(error: *const laminar_error) -> *const c_char {
    // SAFETY: NULL or a live error object (caller contract).
    match unsafe { error.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// For a SQL error, the byte offset in the SQL text passed to the failing call where the problem
/// is; -1 when there is none (or for a NULL `error`).
///
/// - `error`: borrowed.
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_error_sql_offset(error: *const laminar_error) -> i64 {
    // SAFETY: NULL or a live error object (caller contract).
    unsafe { error.as_ref() }.map(|e| e.sql_offset).unwrap_or(-1)
}

/// When the error reports the failure of a continuous query (a stream or materialized view that
/// failed, e.g. on a division by zero: its subscribers' error, and every later subscribe to it
/// or query of it), that stream's name; NULL otherwise (and for a NULL `error`). The status stays
/// the failure's own (`LAMINAR_INVALID_DATA` for a division by zero, …), so this is how a caller
/// tells "a stream failed" from "my call was wrong".
///
/// - `error`: borrowed. The returned string is borrowed from `error` and lives until
///   `laminar_error_destroy(error)`; do not free it.
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_error_stream(error: *const laminar_error) -> *const c_char {
    // SAFETY: NULL or a live error object (caller contract).
    match unsafe { error.as_ref() }.and_then(|e| e.stream.as_ref()) {
        Some(s) => s.as_ptr(),
        None => std::ptr::null(),
    }
}

/// Destroys an error object. A no-op for NULL.
///
/// - `error`: consumed.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_error_destroy(error: Option<Box<laminar_error>>) {
    guard_void(|| drop(error));
}

/// The static name of a status: `"OK"`, `"NOT_FOUND"`, …, or `"UNKNOWN_STATUS"` for a value that
/// is not a LaminarDB status. Never NULL; do not free.
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub extern "C" fn laminar_status_str(status: laminar_status) -> *const c_char {
    status_cname(status).as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use laminar_core::ErrorKind;

    #[test]
    fn every_core_kind_maps_to_a_named_status_and_back() {
        for k in [
            ErrorKind::Unknown,
            ErrorKind::NotImplemented,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidArgument,
            ErrorKind::InvalidState,
            ErrorKind::InvalidData,
            ErrorKind::Internal,
            ErrorKind::Io,
            ErrorKind::Cancelled,
            ErrorKind::Timeout,
            ErrorKind::ResourceExhausted,
            ErrorKind::Closed,
            ErrorKind::SqlSyntax,
            ErrorKind::Plan,
        ] {
            assert_eq!(status_name(k as i32), k.name());
            let s = unsafe { CStr::from_ptr(laminar_status_str(k as i32)) };
            assert_eq!(s.to_str().unwrap(), k.name());
        }
        assert_eq!(unsafe { CStr::from_ptr(laminar_status_str(999)) }.to_str().unwrap(), "UNKNOWN_STATUS");
    }

    #[test]
    fn a_failed_stream_is_named_by_laminar_error_stream() {
        let mut err: *mut laminar_error = std::ptr::null_mut();
        let st = guard(&mut err, None, || {
            Err(Error::invalid_data("stream 'x' failed: division by zero").with_failed_stream("x"))
        });
        assert_eq!(st, LAMINAR_INVALID_DATA);
        assert_eq!(unsafe { CStr::from_ptr(laminar_error_stream(err)) }.to_str().unwrap(), "x");
        unsafe { laminar_error_destroy(Some(Box::from_raw(err))) };
        let st = guard(&mut err, None, || Err(Error::invalid_data("not a stream's failure")));
        assert_eq!(st, LAMINAR_INVALID_DATA);
        assert!(unsafe { laminar_error_stream(err) }.is_null());
        unsafe { laminar_error_destroy(Some(Box::from_raw(err))) };
        assert!(unsafe { laminar_error_stream(std::ptr::null()) }.is_null());
    }

    #[test]
    fn guard_turns_a_panic_into_internal_and_fills_the_error() {
        let mut err: *mut laminar_error = std::ptr::null_mut();
        let st = guard(&mut err, None, || panic!("boom"));
        assert_eq!(st, LAMINAR_INTERNAL);
        assert!(!err.is_null());
        let msg = unsafe { CStr::from_ptr(laminar_error_message(err)) }.to_str().unwrap().to_string();
        assert!(msg.contains("boom"), "{msg}");
        unsafe { laminar_error_destroy(Some(Box::from_raw(err))) };
        let st = guard(&mut err, None, || Ok(()));
        assert_eq!(st, LAMINAR_OK);
        assert!(err.is_null());
    }
}
