//! Scalar functions written in JavaScript. JavaScript runs on one thread, so the engine thread
//! that evaluates a function hands the batch of arguments (Arrow IPC bytes) to the JavaScript
//! thread and waits for the result:
//! - a request goes into the host's queue, and a thread-safe function wakes the JavaScript thread,
//!   which serves the queue (`serve`) by calling the package's dispatcher (index.js) for each
//!   request; the dispatcher never throws: it answers IPC bytes of the result column, or the text
//!   of the error;
//! - the engine holds its lock while it evaluates a stream's functions, and a few calls of the
//!   package wait for that lock on the JavaScript thread (opening, creating writers and
//!   subscriptions, closing). Those calls run their work on a helper thread while the JavaScript
//!   thread serves the queue (`pumped`), so neither waits for the other;
//! - when the JavaScript environment goes away (worker or process exit) the waiting calls fail.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{ScalarUDF, Volatility};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use parking_lot::{Condvar, Mutex};

/// The dispatcher of index.js: (function id, IPC bytes of the arguments) → IPC bytes of the
/// result column, or the error's text.
type Dispatch = FunctionRef<(u32, Buffer), Either<Buffer, String>>;

/// Wakes the JavaScript thread to serve the queue: unref'd, so it never keeps the process alive.
pub type Wake = ThreadsafeFunction<(), (), (), Status, false, true>;

struct Request {
    id: u32,
    args: Vec<u8>,
    reply: std::sync::mpsc::SyncSender<std::result::Result<Vec<u8>, String>>,
}

pub(crate) struct Shared {
    dispatch: Dispatch,
    wake: Wake,
    queue: Mutex<VecDeque<Request>>,
    queued: Condvar,
    /// The JavaScript environment is gone: nothing will serve the queue again.
    gone: AtomicBool,
}

impl Shared {
    fn fail_queued(&self, why: &str) {
        for r in self.queue.lock().drain(..) {
            let _ = r.reply.send(Err(why.to_string()));
        }
    }

    /// Serves every queued request on the JavaScript thread.
    fn serve(&self, env: &Env) {
        loop {
            let Some(r) = self.queue.lock().pop_front() else { return };
            let out = self
                .dispatch
                .borrow_back(env)
                .and_then(|f| f.call((r.id, Buffer::from(r.args))))
                .map_err(|e| format!("the JavaScript call failed: {}", e.reason))
                .and_then(|v| match v {
                    Either::A(bytes) => Ok(bytes.to_vec()),
                    Either::B(text) => Err(text),
                });
            let _ = r.reply.send(out);
        }
    }
}

/// The JavaScript side of a database's functions (one per connection that has any).
#[napi]
pub struct NativeUdfHost {
    pub(crate) shared: Arc<Shared>,
}

#[napi]
impl NativeUdfHost {
    /// `dispatch(id, args)`: see `Dispatch`; `wake()`: calls `serve()`.
    #[napi(constructor)]
    pub fn new(env: Env, dispatch: Dispatch, wake: Wake) -> Result<Self> {
        let shared = Arc::new(Shared {
            dispatch,
            wake,
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            gone: AtomicBool::new(false),
        });
        let s = shared.clone();
        env.add_env_cleanup_hook((), move |()| {
            s.gone.store(true, Ordering::Release);
            s.fail_queued("the JavaScript environment of the function has exited");
        })?;
        Ok(NativeUdfHost { shared })
    }

    /// Serves the queued calls (called from `wake`).
    #[napi]
    pub fn serve(&self, env: Env) {
        self.shared.serve(&env);
    }
}

/// Runs `f` on a helper thread while this (the JavaScript) thread serves the functions' calls,
/// when there is a host; else runs it here.
pub(crate) fn pumped<T: Send>(env: &Env, host: Option<&Arc<Shared>>, f: impl FnOnce() -> T + Send) -> T {
    let Some(host) = host else { return f() };
    std::thread::scope(|s| {
        let job = std::thread::Builder::new()
            .name("laminardb-node-call".into())
            .spawn_scoped(s, f)
            .expect("cannot start a thread");
        while !job.is_finished() {
            {
                let mut q = host.queue.lock();
                if q.is_empty() {
                    host.queued.wait_for(&mut q, Duration::from_millis(2));
                }
            }
            host.serve(env);
        }
        match job.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// What JavaScript describes a function with.
#[napi(object)]
pub struct FunctionSpec {
    pub name: String,
    /// The dispatcher's id of the function.
    pub id: u32,
    /// IPC bytes of an empty table: a column per argument, then the result column.
    pub types: Buffer,
    /// "immutable", "stable" or "volatile".
    pub volatility: String,
}

/// Hands the arguments to the JavaScript thread and waits for its answer.
fn call_js(h: &Shared, id: u32, args: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    if h.gone.load(Ordering::Acquire) {
        return Err("the JavaScript environment of the function has exited".into());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    h.queue.lock().push_back(Request { id, args, reply: tx });
    h.queued.notify_all();
    let st = h.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
    if st != Status::Ok {
        h.fail_queued(&format!("the JavaScript thread cannot be reached ({st})"));
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => return r,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the JavaScript thread dropped the call".into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if h.gone.load(Ordering::Acquire) {
                    h.fail_queued("the JavaScript environment of the function has exited");
                }
            }
        }
    }
}

/// One batch through the JavaScript function `id`: IPC bytes there and back.
fn call(h: &Shared, name: &str, id: u32, ret: &DataType, batch: RecordBatch) -> datafusion::error::Result<ArrayRef> {
    let fail = |m: String| laminar::function::HostScalar::failure("JavaScript function", name, m);
    let bytes = crate::ipc(&batch.schema(), &[batch]).map_err(|e| fail(e.to_string()))?;
    let out = call_js(h, id, bytes).map_err(fail)?;
    let batches = laminar_core::read_ipc_stream(&out).map_err(|e| fail(format!("its result: {e}")))?;
    if batches.iter().any(|b| b.num_columns() != 1) {
        return Err(fail("its result is not one column".into()));
    }
    let cols: Vec<&dyn arrow::array::Array> = batches.iter().map(|b| b.column(0).as_ref()).collect();
    Ok(match cols.len() {
        0 => arrow::array::new_empty_array(ret),
        1 => batches[0].column(0).clone(),
        _ => arrow::compute::concat(&cols)?,
    })
}

/// Builds the scalar function of `spec`, called through `host`.
pub(crate) fn scalar_function(host: &Arc<Shared>, spec: &FunctionSpec) -> laminar_core::Result<ScalarUDF> {
    // The framing is checked before the reader parses it (a reader panics on damaged bytes).
    laminar_core::read_ipc_stream(&spec.types).map_err(|e| {
        laminar_core::Error::invalid_argument(format!("function '{}': types: {}", spec.name, e.message()))
    })?;
    let schema = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&spec.types[..]), None)
        .map_err(|e| laminar_core::Error::invalid_argument(format!("function '{}': types: {e}", spec.name)))?
        .schema();
    let mut ts: Vec<DataType> = schema.fields().iter().map(|f| f.data_type().clone()).collect();
    let Some(ret) = ts.pop() else {
        return Err(laminar_core::Error::invalid_argument(format!("function '{}' has no return type", spec.name)));
    };
    let volatility = match spec.volatility.as_str() {
        "immutable" => Volatility::Immutable,
        "stable" => Volatility::Stable,
        "volatile" => Volatility::Volatile,
        v => {
            return Err(laminar_core::Error::invalid_argument(format!(
                "volatility must be 'immutable', 'stable' or 'volatile', not '{v}'"
            )));
        }
    };
    let (host, name, id, r) = (host.clone(), spec.name.clone(), spec.id, ret.clone());
    Ok(laminar::function::HostScalar::udf(
        &spec.name,
        "JavaScript function",
        ts,
        ret,
        volatility,
        Arc::new(move |b| call(&host, &name, id, &r, b)),
    ))
}
