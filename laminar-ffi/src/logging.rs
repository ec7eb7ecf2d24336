//! Where the library's messages go: never to the host's stderr. The engine logs through the
//! `log` facade (target `"laminardb"`; its dependencies use their own targets); this module is
//! the one `log::Log` LaminarDB installs, and only when asked: it forwards each record to a
//! *sink* — the C callback of `laminar_set_log_callback`, Python's `logging`, Node's
//! `process.emitWarning`, Go's `slog`. With no sink, nothing is printed anywhere.
//!
//! A panic LaminarDB catches (at the C ABI boundary, [`crate::error`], or in an operator) is
//! reported here too (level ERROR), instead of by Rust's default panic hook on stderr; see
//! [`install_panic_hook`].

use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Once, OnceLock};

use laminar_core::{Error, Result};
use parking_lot::RwLock;

use crate::error::{guard, laminar_error, laminar_status};

/// Receives a record: level, target (`"laminardb"` for LaminarDB's own messages, a module path
/// for a dependency's), message. Called on the thread that logged, possibly several at once.
pub type Sink = Arc<dyn Fn(log::Level, &str, &str) + Send + Sync>;

/// The sink and the least severe level it receives. Read-locked while a record is delivered, so
/// replacing the sink waits for deliveries in progress: after [`set_sink`] returns, the old sink
/// is never called again. Readers use `read_recursive`: a logging thread never waits behind a
/// writer that waits for a callback which itself waits for that thread (a callback that closes a
/// database joins its pipeline thread, which may be logging).
static SINK: RwLock<Option<(Sink, log::LevelFilter)>> = RwLock::new(None);

/// Whether this module's logger is the process's `log` logger (`None` until first asked).
static INSTALLED: OnceLock<bool> = OnceLock::new();

thread_local! {
    /// Set while this thread runs the sink: a record logged from inside the sink is dropped
    /// (no recursion), and [`set_sink`] from inside it is refused (it would wait for itself).
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

struct Forwarder;

static FORWARDER: Forwarder = Forwarder;

impl log::Log for Forwarder {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        SINK.read_recursive().as_ref().is_some_and(|(_, level)| metadata.level() <= *level)
    }

    fn log(&self, record: &log::Record) {
        if IN_SINK.with(|f| f.get()) {
            return;
        }
        let sink = SINK.read_recursive();
        let Some((sink, level)) = sink.as_ref() else { return };
        if record.level() > *level {
            return;
        }
        let message = record.args().to_string();
        IN_SINK.with(|f| f.set(true));
        // A sink must not unwind into the engine thread that logged (nor print: a caught region).
        let deliver = || sink(record.level(), record.target(), &message);
        let _ = laminar_core::panic_guard::caught(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(deliver)));
        IN_SINK.with(|f| f.set(false));
    }

    fn flush(&self) {}
}

/// Sends every record at `level` or more severe to `sink` from now on, or nothing (`None`).
/// Process-wide; replaces the previous sink and waits for its calls in progress to return.
///
/// The first call installs LaminarDB's logger as the process's `log` logger. Errors:
/// `INVALID_STATE` when another `log` logger is installed in this process already (LaminarDB's
/// messages go to that one: a Rust host that installs its own logger sees them there), or when
/// called from inside the sink.
pub fn set_sink(sink: Option<(Sink, log::LevelFilter)>) -> Result<()> {
    if IN_SINK.with(|f| f.get()) {
        return Err(Error::invalid_state("the log sink cannot be changed from inside a log callback"));
    }
    if !*INSTALLED.get_or_init(|| log::set_logger(&FORWARDER).is_ok()) {
        return Err(Error::invalid_state(
            "another `log` logger is installed in this process already; LaminarDB's messages go to it",
        ));
    }
    let level = sink.as_ref().map_or(log::LevelFilter::Off, |(_, l)| *l);
    let mut slot = SINK.write();
    *slot = sink;
    log::set_max_level(level);
    Ok(())
}

// ----------------------------------------------------------------------------- panics

/// Runs `f` (a C ABI call's `catch_unwind`) as a region whose panics are caught, with the panic
/// hook installed: such a panic is reported through the logger rather than printed.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> R {
    install_panic_hook();
    laminar_core::panic_guard::caught(f)
}

/// Installs, once, a panic hook that reports a panic LaminarDB catches itself
/// ([`laminar_core::panic_guard::is_caught`]: inside a C ABI call, which then returns
/// `LAMINAR_INTERNAL` with the same message; in an operator, which fails its streams) through
/// the logger (level ERROR, target `"laminardb"`) instead of printing it to stderr. Every other
/// panic goes to the hook that was installed before (Rust's default prints it), unchanged. The
/// C ABI installs it at its first call; the Python and Node packages at import.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    if std::thread::panicking() {
        return; // take_hook/set_hook panic on a panicking thread; try again on a later call
    }
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !laminar_core::panic_guard::is_caught() {
                return previous(info);
            }
            let what = info.payload_as_str().unwrap_or("a panic with no message");
            match info.location() {
                Some(l) => log::error!(target: "laminardb", "LaminarDB panicked (a bug; please report it) at {}:{}: {what}", l.file(), l.line()),
                None => log::error!(target: "laminardb", "LaminarDB panicked (a bug; please report it): {what}"),
            }
        }));
    });
}

// ------------------------------------------------------------------------------------ C ABI

/// A log level (`LAMINAR_LOG_*`): the severity of a message, and in
/// `laminar_set_log_callback` the least severe level delivered.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_log_level = i32;

/// An error: something failed and was not (or not fully) handled, such as a panic caught at
/// the C ABI boundary.
pub const LAMINAR_LOG_ERROR: laminar_log_level = 1;
/// A warning: a recovery fallback (a torn or corrupt checkpoint skipped, a torn log tail
/// dropped), a checkpoint at close or a periodic checkpoint that failed.
pub const LAMINAR_LOG_WARN: laminar_log_level = 2;
/// Informational messages.
pub const LAMINAR_LOG_INFO: laminar_log_level = 3;
/// Debugging messages (mostly from the SQL engine LaminarDB embeds; many).
pub const LAMINAR_LOG_DEBUG: laminar_log_level = 4;
/// Very detailed tracing.
pub const LAMINAR_LOG_TRACE: laminar_log_level = 5;

/// Receives one log message.
///
/// - `level`: a `LAMINAR_LOG_*` value, never less severe than the level given to
///   `laminar_set_log_callback`.
/// - `target`: where it comes from: `"laminardb"` for LaminarDB's own messages, a module path
///   (`"datafusion_…"`) for a library it embeds. Borrowed: UTF-8, NUL-terminated, valid only
///   during the call.
/// - `message`: the message, without a trailing newline. Borrowed: UTF-8, NUL-terminated, valid
///   only during the call (copy it to keep it).
///
/// It runs on the thread that logged — the caller's, or a thread owned by LaminarDB — and may
/// run on several threads at once. It must return normally (no `longjmp`, no C++ exception). A
/// message logged from inside the callback (by a `laminar_*` call it makes) is dropped.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_log_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: laminar_log_level,
        target: *const c_char,
        message: *const c_char,
    ),
>;

struct SendPtr(*mut c_void);
// SAFETY: the caller of laminar_set_log_callback promises its callback and user_data may be used
// from any thread (documented there).
unsafe impl Send for SendPtr {}
// SAFETY: as above: concurrent calls are part of that contract.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its field).
    fn get(&self) -> *mut c_void {
        self.0
    }
}

fn to_cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

fn level_filter(level: laminar_log_level) -> Result<log::LevelFilter> {
    Ok(match level {
        LAMINAR_LOG_ERROR => log::LevelFilter::Error,
        LAMINAR_LOG_WARN => log::LevelFilter::Warn,
        LAMINAR_LOG_INFO => log::LevelFilter::Info,
        LAMINAR_LOG_DEBUG => log::LevelFilter::Debug,
        LAMINAR_LOG_TRACE => log::LevelFilter::Trace,
        _ => return Err(Error::invalid_argument(format!("level {level} is not a LAMINAR_LOG_* value (1 to 5)"))),
    })
}

/// Sends LaminarDB's log messages to `callback` instead of nowhere. By default the library
/// prints nothing — not to stderr, not anywhere: warnings (a torn or corrupt checkpoint skipped
/// at open, a torn log tail dropped, a checkpoint at close or a periodic checkpoint that failed)
/// are dropped unless a callback is set. Recovery warnings are also kept in the database's
/// recovery information whatever the callback.
///
/// - `callback`: see `laminar_log_cb`; NULL turns logging off.
/// - `user_data`: passed to every call of `callback`; opaque to LaminarDB, which never frees it.
///   It must stay valid until the callback is replaced or turned off: once this function
///   returns, the previous callback is never called again (the call waits for calls of it in
///   progress on other threads), so the previous `user_data` may then be freed.
/// - `level`: the least severe level delivered, a `LAMINAR_LOG_*` value: `LAMINAR_LOG_WARN`
///   delivers warnings and errors (recommended); `LAMINAR_LOG_DEBUG` and `LAMINAR_LOG_TRACE`
///   deliver many messages of the embedded SQL engine. Ignored when `callback` is NULL.
///
/// Process-wide: one callback for every database, set by the last call. Panics LaminarDB
/// catches (a call returning `LAMINAR_INTERNAL`, an operator failing its streams) are reported
/// to the callback at `LAMINAR_LOG_ERROR`, not printed.
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` (a `level` out of range), `LAMINAR_INVALID_STATE` (called
/// from inside the log callback; or the library is linked into a Rust program that installed
/// its own `log` logger — LaminarDB's messages go to that logger). Thread-safety: any thread.
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_set_log_callback(
    callback: laminar_log_cb,
    user_data: *mut c_void,
    level: laminar_log_level,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        let Some(cb) = callback else { return set_sink(None) };
        let filter = level_filter(level)?;
        let data = SendPtr(user_data);
        let sink: Sink = Arc::new(move |level, target, message| {
            let (target, message) = (to_cstring(target), to_cstring(message));
            // SAFETY: the callback and user_data are valid until replaced (caller contract), and
            // set_sink waits for this call before it replaces them; the strings outlive the call.
            unsafe { cb(data.get(), level as laminar_log_level, target.as_ptr(), message.as_ptr()) };
        });
        set_sink(Some((sink, filter)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    static GOT: Mutex<Vec<(i32, String, String, usize)>> = Mutex::new(Vec::new());

    unsafe extern "C" fn collect(
        user_data: *mut c_void,
        level: laminar_log_level,
        target: *const c_char,
        message: *const c_char,
    ) {
        let (t, m) = unsafe { (std::ffi::CStr::from_ptr(target), std::ffi::CStr::from_ptr(message)) };
        GOT.lock().push((level, t.to_str().unwrap().into(), m.to_str().unwrap().into(), user_data as usize));
        // Logging from inside the callback is dropped, and changing the callback is refused.
        log::warn!(target: "laminardb", "from inside");
        let mut err = std::ptr::null_mut();
        assert_eq!(
            unsafe { laminar_set_log_callback(None, std::ptr::null_mut(), 0, &mut err) },
            crate::error::LAMINAR_INVALID_STATE
        );
        unsafe { crate::error::laminar_error_destroy(Some(Box::from_raw(err))) };
    }

    // One test: the logger is process-wide.
    #[test]
    fn the_callback_gets_records_at_its_level_and_a_caught_panic() {
        let null = std::ptr::null_mut();
        assert_eq!(
            unsafe { laminar_set_log_callback(Some(collect), 7 as *mut c_void, 9, null) },
            crate::error::LAMINAR_INVALID_ARGUMENT
        );
        assert_eq!(unsafe { laminar_set_log_callback(Some(collect), 7 as *mut c_void, LAMINAR_LOG_WARN, null) }, 0);
        log::info!(target: "laminardb", "not delivered");
        log::warn!(target: "laminardb", "a warning with a \0 NUL");
        let st = guard(null, None, || panic!("logging-test-boom"));
        assert_eq!(st, crate::error::LAMINAR_INTERNAL);
        // A panic the engine catches on its own thread (an operator's) is logged as well.
        std::thread::spawn(|| {
            let r = laminar_core::panic_guard::caught(|| {
                std::panic::catch_unwind(|| panic!("logging-test-boom on a thread"))
            });
            assert!(r.is_err());
        })
        .join()
        .unwrap();
        assert_eq!(unsafe { laminar_set_log_callback(None, std::ptr::null_mut(), 0, null) }, 0);
        log::error!(target: "laminardb", "off: not delivered");
        // Other tests of this binary panic in guarded calls concurrently: only ours count.
        let got: Vec<_> = GOT
            .lock()
            .iter()
            .filter(|r| !r.2.contains("panicked") || r.2.contains("logging-test-boom"))
            .cloned()
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], (LAMINAR_LOG_WARN, "laminardb".into(), "a warning with a \\0 NUL".into(), 7));
        assert_eq!((got[1].0, got[1].1.as_str()), (LAMINAR_LOG_ERROR, "laminardb"));
        assert!(got[1].2.contains("logging.rs"), "{got:?}");
        assert_eq!((got[2].0, got[2].1.as_str()), (LAMINAR_LOG_ERROR, "laminardb"));
        assert!(got[2].2.contains("boom on a thread"), "{got:?}");
    }
}
