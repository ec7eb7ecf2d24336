//! LaminarDB's log messages go to Python's `logging` (logger `laminardb`; a library the engine
//! embeds logs as `laminardb.<its module path>`), never to stderr.
//!
//! The engine logs on its own threads, sometimes while it holds its locks, and a Python thread
//! may hold the GIL while it waits for one of them: taking the GIL in the engine thread could
//! deadlock. So the sink only queues the record; one thread of ours (`laminardb-log`) takes the
//! GIL and calls `logging`. Records are therefore delivered shortly after they happen, in order.
//! At interpreter exit (an `atexit` hook, before finalization) the sink is removed and what is
//! queued is delivered on the exiting thread; nothing calls into Python after that.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;

/// A queued record: `logging` level number, logger name, message.
type Item = (i32, String, String);

/// Records waiting for the `laminardb-log` thread; more are dropped (a burst of thousands).
const QUEUE: usize = 4096;

/// Set once the `laminardb-log` thread has delivered everything and ended.
static DONE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Whether `install` ran in this process.
static INSTALLED: OnceLock<()> = OnceLock::new();

fn py_level(level: log::Level) -> i32 {
    match level {
        log::Level::Error => 40,
        log::Level::Warn => 30,
        log::Level::Info => 20,
        log::Level::Debug => 10,
        log::Level::Trace => 5,
    }
}

fn logger_name(target: &str) -> String {
    if target == "laminardb" || target.starts_with("laminardb.") {
        target.to_string()
    } else {
        format!("laminardb.{}", target.replace("::", "."))
    }
}

/// Calls `logging.getLogger(name).log(level, "%s", message)`; errors (logging torn down) are
/// dropped.
fn emit(py: Python<'_>, (level, name, message): Item) {
    let _ = py
        .import("logging")
        .and_then(|l| l.call_method1("getLogger", (name,)))
        .and_then(|lg| lg.call_method1("log", (level, "%s", message)));
}

/// Installs the sink (warnings and errors), the delivering thread and the `atexit` hook; at
/// module import.
pub(crate) fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    if INSTALLED.set(()).is_err() {
        return Ok(()); // imported again (a second interpreter): one sink per process
    }
    let (tx, rx) = sync_channel::<Item>(QUEUE);
    std::thread::Builder::new()
        .name("laminardb-log".into())
        .spawn(move || {
            // Ends when the sink (the only sender) is dropped and the queue is empty.
            for item in rx.iter() {
                // None: the interpreter is finalizing; nothing more can be delivered.
                if Python::try_attach(|py| emit(py, item)).is_none() {
                    break;
                }
            }
            *DONE.0.lock() = true;
            DONE.1.notify_all();
        })
        .map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the laminardb-log thread: {e}"))
        })?;
    let tx: SyncSender<Item> = tx;
    let sink: laminar::logging::Sink = Arc::new(move |level, target, message| {
        // Never blocks the engine: a full queue drops the record.
        let _ = tx.try_send((py_level(level), logger_name(target), message.to_string()));
    });
    // Another `log` logger in the process (a Rust host): messages go there instead; not fatal.
    let _ = laminar::logging::set_sink(Some((sink, log::LevelFilter::Warn)));
    // A panic the engine catches (an operator failing its streams) is logged, not printed.
    laminar::logging::install_panic_hook();
    let stop = wrap_pyfunction!(stop_logging, m)?;
    m.py().import("atexit")?.call_method1("register", (stop,))?;
    Ok(())
}

/// The `atexit` hook (before the interpreter finalizes): no more records; the queued ones are
/// delivered (the thread takes the GIL this hook releases while it waits, up to a second).
#[pyfunction]
fn stop_logging(py: Python<'_>) {
    py.detach(|| {
        // Drops the sink, so the thread ends once the queue is empty.
        let _ = laminar::logging::set_sink(None);
        let mut done = DONE.0.lock();
        if !*done {
            let _ = DONE.1.wait_for(&mut done, Duration::from_secs(1));
        }
    });
}
