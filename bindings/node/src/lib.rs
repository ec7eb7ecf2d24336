//! `laminardb` for Node.js: a napi-rs addon over the laminar-ffi handle layer (the same handles,
//! status codes and messages as C, Python and Go). Work that can wait (statements, queries,
//! writes, flushes, subscription reads) runs on libuv's thread pool (`AsyncTask`); short calls
//! that only take the engine lock briefly (opening, creating writers and subscriptions) and
//! `close()`, which joins the pipeline thread, run on the calling thread. Arrow crosses as IPC
//! stream bytes, decoded by apache-arrow in the JavaScript layer (`index.js`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use laminar::{Config, Db};
use laminar_core::Next;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::Mutex;

mod udf;

/// Engine errors reach JavaScript as `LAMINAR[STATUS] message`, or `LAMINAR[STATUS@HEX] message`
/// when the error reports a failed stream (HEX: the stream name's UTF-8 bytes in hex, so any
/// name survives); index.js turns them into `LaminarError` with `code` = STATUS and `stream` set.
fn js_err(e: laminar_core::Error) -> Error {
    let stream = e
        .failed_stream()
        .map(|n| format!("@{}", n.bytes().map(|b| format!("{b:02x}")).collect::<String>()))
        .unwrap_or_default();
    Error::new(Status::GenericFailure, format!("LAMINAR[{}{stream}] {}", e.kind().name(), e))
}

trait OrJs<T> {
    fn js(self) -> Result<T>;
}
impl<T> OrJs<T> for laminar_core::Result<T> {
    fn js(self) -> Result<T> {
        self.map_err(js_err)
    }
}

fn ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> laminar_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut out, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

/// The batches of Arrow IPC stream bytes: damaged bytes are an error, never an abort or a panic
/// (`read_ipc_stream`); the engine's own check is kept on top, the same one every import
/// boundary runs (a malformed column is INVALID_DATA naming it).
fn ipc_batches(bytes: Vec<u8>) -> laminar_core::Result<impl Iterator<Item = laminar_core::Result<RecordBatch>>> {
    let batches = laminar_core::read_ipc_stream(&bytes)
        .map_err(|e| laminar_core::Error::invalid_argument(format!("not an Arrow IPC stream: {}", e.message())))?;
    Ok(batches.into_iter().map(|b| laminar::arrow::validate_batch(&b).map(|()| b)))
}

fn config(pairs: Option<HashMap<String, String>>) -> laminar_core::Result<Config> {
    let mut c = Config::new();
    let mut pairs: Vec<(String, String)> = pairs.unwrap_or_default().into_iter().collect();
    pairs.sort();
    for (k, v) in pairs {
        c.set(&k, &v)?;
    }
    Ok(c)
}

/// The native database handle (wrapped by `Connection` in index.js).
#[napi]
pub struct NativeDb {
    db: Db,
    /// Where the database's JavaScript functions are called, once it has any.
    host: Mutex<Option<Arc<udf::Shared>>>,
}

pub struct DbTask<F: FnMut(&Db) -> laminar_core::Result<Option<Vec<u8>>> + Send> {
    db: Db,
    f: F,
}

impl<F: FnMut(&Db) -> laminar_core::Result<Option<Vec<u8>>> + Send> Task for DbTask<F> {
    type Output = Option<Vec<u8>>;
    type JsValue = Option<Buffer>;
    fn compute(&mut self) -> Result<Self::Output> {
        (self.f)(&self.db).js()
    }
    fn resolve(&mut self, _: Env, out: Self::Output) -> Result<Self::JsValue> {
        Ok(out.map(Buffer::from))
    }
}

type Job = Box<dyn FnMut(&Db) -> laminar_core::Result<Option<Vec<u8>>> + Send>;

impl NativeDb {
    fn task(&self, f: Job) -> AsyncTask<DbTask<Job>> {
        AsyncTask::new(DbTask { db: self.db.clone(), f })
    }
}

#[napi]
impl NativeDb {
    /// Opens a database (synchronous: opening is quick).
    #[napi(constructor)]
    pub fn new(path: String, config_pairs: Option<HashMap<String, String>>) -> Result<Self> {
        let cfg = config(config_pairs).js()?;
        Ok(NativeDb { db: Db::open(&path, &cfg).js()?, host: Mutex::new(None) })
    }

    /// Opens a database with JavaScript functions registered first (a durable database replays
    /// streams that call them while it opens; this thread serves those calls meanwhile).
    #[napi(factory)]
    pub fn open_with_functions(
        env: Env,
        path: String,
        config_pairs: Option<HashMap<String, String>>,
        host: &udf::NativeUdfHost,
        functions: Vec<udf::FunctionSpec>,
    ) -> Result<Self> {
        let mut cfg = config(config_pairs).js()?;
        for f in &functions {
            cfg.add_scalar_function(udf::scalar_function(&host.shared, f).js()?).js()?;
        }
        let shared = host.shared.clone();
        let db = udf::pumped(&env, Some(&shared), || Db::open(&path, &cfg)).js()?;
        Ok(NativeDb { db, host: Mutex::new(Some(shared)) })
    }

    /// Registers a JavaScript function for the statements that follow.
    #[napi]
    pub fn register_function(&self, host: &udf::NativeUdfHost, function: udf::FunctionSpec) -> Result<()> {
        let f = udf::scalar_function(&host.shared, &function).js()?;
        self.db.database().register_scalar_function(f).js()?;
        let mut h = self.host.lock();
        if h.is_none() {
            *h = Some(host.shared.clone());
        }
        Ok(())
    }

    /// Runs `f` here, or on a helper thread while this thread serves JavaScript functions.
    fn pumped<T: Send>(&self, env: &Env, f: impl FnOnce() -> T + Send) -> T {
        let host = self.host.lock().clone();
        udf::pumped(env, host.as_ref(), f)
    }

    /// Runs statements; resolves to IPC bytes of the rows the last one returned, or null.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn execute(&self, sql: String) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(move |db| {
            let r = db.execute(&sql)?;
            match r.schema {
                Some(s) => Ok(Some(ipc(&s, &r.batches)?)),
                None => Ok(None),
            }
        }))
    }

    /// An ad-hoc query; resolves to IPC bytes.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn query(&self, sql: String) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(move |db| {
            let q = db.query(&sql)?;
            let batches: Vec<RecordBatch> = q.batches.into_iter().collect();
            Ok(Some(ipc(&q.schema, &batches)?))
        }))
    }

    /// Pushes IPC stream bytes into a source and waits until processed; resolves to null.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn insert(&self, source: String, data: Buffer) -> AsyncTask<DbTask<Job>> {
        let mut bytes = Some(data.to_vec());
        self.task(Box::new(move |db| {
            db.insert(&source, ipc_batches(bytes.take().unwrap_or_default())?)?;
            Ok(None)
        }))
    }

    /// IPC bytes of an empty stream with the schema of a source, stream or view.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn schema(&self, name: String) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(move |db| Ok(Some(ipc(&db.schema(&name)?, &[])?))))
    }

    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn catalog(&self) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(|db| {
            let b = db.catalog()?;
            Ok(Some(ipc(&b.schema(), &[b])?))
        }))
    }

    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn metrics(&self) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(|db| {
            let b = db.metrics()?;
            Ok(Some(ipc(&b.schema(), &[b])?))
        }))
    }

    /// The Prometheus text exposition, as UTF-8 bytes.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn metrics_text(&self) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(|db| Ok(Some(db.metrics_text()?.into_bytes()))))
    }

    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn checkpoint(&self) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(|db| db.checkpoint().map(|_| None)))
    }

    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn flush(&self) -> AsyncTask<DbTask<Job>> {
        self.task(Box::new(|db| db.flush().map(|_| None)))
    }

    /// Closes the database (idempotent). Subscriptions end.
    #[napi]
    pub fn close(&self, env: Env) {
        self.pumped(&env, || self.db.close())
    }

    #[napi(getter)]
    pub fn is_closed(&self) -> bool {
        self.db.is_closed()
    }

    #[napi]
    pub fn writer(&self, env: Env, source: String) -> Result<NativeWriter> {
        let w = self.pumped(&env, || self.db.writer(&source)).js()?;
        let interrupt = w.interrupter();
        Ok(NativeWriter { w: Arc::new(Mutex::new(Some(w))), interrupt })
    }

    /// A push subscription: `callback(message)` for every batch, then at most one error, then
    /// "closed". The callback is unref'd: it does not keep the process alive by itself.
    /// `initial_credits` bounds the batches delivered before `request` grants more.
    #[napi]
    pub fn subscribe_push(
        &self,
        env: Env,
        name: String,
        options: Option<HashMap<String, String>>,
        initial_credits: u32,
        callback: PushCallback,
    ) -> Result<NativePushSubscription> {
        use napi::threadsafe_function::ThreadsafeFunctionCallMode;
        let opts = config(options).js()?;
        let push = self
            .pumped(&env, || {
                self.db.subscribe_push(&name, &opts, initial_credits as u64, move |ev| {
                    let msg = match ev {
                        laminar_core::PushEvent::Schema(_) => return,
                        laminar_core::PushEvent::Batch(b, epoch) => match ipc(&b.schema(), &[b]) {
                            Ok(bytes) => PushMessage {
                                kind: "batch".into(),
                                data: Some(Buffer::from(bytes)),
                                error: None,
                                epoch: epoch as i64,
                            },
                            Err(e) => PushMessage {
                                kind: "error".into(),
                                data: None,
                                error: Some(js_err(e).reason.clone()),
                                epoch: 0,
                            },
                        },
                        laminar_core::PushEvent::Error(e) => PushMessage {
                            kind: "error".into(),
                            data: None,
                            error: Some(js_err(e).reason.clone()),
                            epoch: 0,
                        },
                        laminar_core::PushEvent::Closed => {
                            PushMessage { kind: "closed".into(), data: None, error: None, epoch: 0 }
                        }
                    };
                    callback.call(msg, ThreadsafeFunctionCallMode::NonBlocking);
                })
            })
            .js()?;
        Ok(NativePushSubscription { push })
    }

    /// A pull subscription; options: buffer_size, on_full, resume_after_epoch.
    #[napi]
    pub fn subscribe(
        &self,
        env: Env,
        name: String,
        options: Option<HashMap<String, String>>,
    ) -> Result<NativeSubscription> {
        let opts = config(options).js()?;
        let sub = self.pumped(&env, || self.db.subscribe(&name, &opts)).js()?;
        let schema = ipc(&sub.schema(), &[]).js()?;
        Ok(NativeSubscription { sub, schema })
    }
}

/// One event of a push subscription, for the JavaScript callback.
#[napi(object)]
pub struct PushMessage {
    /// "batch", "error" or "closed" (last, exactly once).
    pub kind: String,
    /// IPC bytes of the batch.
    pub data: Option<Buffer>,
    /// `LAMINAR[STATUS] message` (or `LAMINAR[STATUS@HEX] message`, see `js_err`) of the error.
    pub error: Option<String>,
    /// The batch's epoch (0 for other events).
    pub epoch: i64,
}

/// The JavaScript callback of a push subscription: unref'd (Weak), so it never keeps the event
/// loop alive on its own, and called without an error-first argument.
pub type PushCallback =
    napi::threadsafe_function::ThreadsafeFunction<PushMessage, (), PushMessage, Status, false, true>;

/// A push subscription (callback form in index.js).
#[napi]
pub struct NativePushSubscription {
    push: laminar::PushSubscription,
}

#[napi]
impl NativePushSubscription {
    /// Ends the subscription and waits for its thread (it never waits on JavaScript).
    #[napi]
    pub fn close(&self) {
        let _ = self.push.close();
    }

    /// Grants `n` more batches.
    #[napi]
    pub fn request(&self, n: u32) {
        self.push.request(n as u64)
    }
}

/// A writer (wrapped by `Writer` in index.js).
#[napi]
pub struct NativeWriter {
    w: Arc<Mutex<Option<laminar::Writer>>>,
    interrupt: laminar_core::WriterInterrupt,
}

pub struct WriterTask {
    w: Arc<Mutex<Option<laminar::Writer>>>,
    op: WriterOp,
}

pub enum WriterOp {
    Write(Vec<u8>),
    Watermark(i64),
    Finish,
    Flush,
}

impl Task for WriterTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> Result<()> {
        let mut g = self.w.lock();
        let w = g.as_mut().ok_or_else(|| js_err(laminar_core::Error::invalid_state("the writer is closed")))?;
        match std::mem::replace(&mut self.op, WriterOp::Flush) {
            WriterOp::Write(bytes) => ipc_batches(bytes).and_then(|b| w.write_all(b)).map(|_| ()).js(),
            WriterOp::Watermark(ms) => w.watermark(ms).js(),
            WriterOp::Finish => w.finish().js(),
            WriterOp::Flush => w.flush().js(),
        }
    }
    fn resolve(&mut self, _: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

#[napi]
impl NativeWriter {
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write(&self, data: Buffer) -> AsyncTask<WriterTask> {
        AsyncTask::new(WriterTask { w: self.w.clone(), op: WriterOp::Write(data.to_vec()) })
    }
    #[napi(ts_return_type = "Promise<void>")]
    pub fn watermark(&self, ms: i64) -> AsyncTask<WriterTask> {
        AsyncTask::new(WriterTask { w: self.w.clone(), op: WriterOp::Watermark(ms) })
    }
    #[napi(ts_return_type = "Promise<void>")]
    pub fn finish(&self) -> AsyncTask<WriterTask> {
        AsyncTask::new(WriterTask { w: self.w.clone(), op: WriterOp::Finish })
    }
    #[napi(ts_return_type = "Promise<void>")]
    pub fn flush(&self) -> AsyncTask<WriterTask> {
        AsyncTask::new(WriterTask { w: self.w.clone(), op: WriterOp::Flush })
    }
    /// Closes the writer without blocking the event loop: a write waiting for queue room is
    /// interrupted, and the writer is released once the operation in flight has returned.
    #[napi]
    pub fn close(&self) {
        self.interrupt.interrupt();
        if let Some(mut g) = self.w.try_lock() {
            g.take();
            return;
        }
        let w = self.w.clone();
        std::thread::spawn(move || {
            w.lock().take();
        });
    }
}

/// A pull subscription (wrapped by an AsyncIterable in index.js).
#[napi]
pub struct NativeSubscription {
    sub: laminar::Subscription,
    schema: Vec<u8>,
}

pub struct NextTask {
    sub: laminar::Subscription,
    timeout: Duration,
}

impl Task for NextTask {
    /// (ended, IPC bytes of the batch if one came)
    type Output = (bool, Option<Vec<u8>>);
    type JsValue = Option<Buffer>;
    fn compute(&mut self) -> Result<Self::Output> {
        match self.sub.next_timeout(self.timeout).js()? {
            Next::Batch(b) => Ok((false, Some(ipc(&b.schema(), &[b]).js()?))),
            Next::Empty => Ok((false, None)),
            Next::End => Ok((true, None)),
        }
    }
    fn resolve(&mut self, _: Env, out: Self::Output) -> Result<Self::JsValue> {
        // null: the end; an empty buffer: nothing within the timeout; else a batch.
        Ok(match out {
            (true, _) => None,
            (false, None) => Some(Buffer::from(Vec::<u8>::new())),
            (false, Some(b)) => Some(Buffer::from(b)),
        })
    }
}

#[napi]
impl NativeSubscription {
    /// The epoch of the batch returned last (0 before the first): the checkpoint that covers it.
    #[napi(getter)]
    pub fn epoch(&self) -> i64 {
        self.sub.epoch() as i64
    }

    /// Waits up to `timeout_ms` on libuv's pool: a batch (IPC bytes), an empty buffer (nothing
    /// yet) or null (the end).
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn next(&self, timeout_ms: u32) -> AsyncTask<NextTask> {
        AsyncTask::new(NextTask { sub: self.sub.clone(), timeout: Duration::from_millis(timeout_ms as u64) })
    }

    /// Ends the subscription; a pending next resolves with null at once. Idempotent.
    #[napi]
    pub fn cancel(&self) {
        self.sub.cancel()
    }

    /// IPC bytes of an empty stream with the batches' schema.
    #[napi]
    pub fn schema(&self) -> Buffer {
        Buffer::from(self.schema.clone())
    }
}

/// A log message of the engine, for the JavaScript handler (index.js emits it as a process
/// warning).
#[napi(object)]
pub struct LogMessage {
    /// "error" or "warn".
    pub level: String,
    /// "laminardb" for LaminarDB's own messages; a module path for a library it embeds.
    pub target: String,
    pub message: String,
}

/// The JavaScript log handler: unref'd (Weak), so it never keeps the event loop alive.
pub type LogCallback = napi::threadsafe_function::ThreadsafeFunction<LogMessage, (), LogMessage, Status, false, true>;

/// The handler messages go to: the first one registered whose environment is still alive (the
/// main thread's, usually; a worker that loads the package later keeps it).
static LOG_HANDLER: Mutex<Option<Arc<LogCallback>>> = Mutex::new(None);

/// Makes `callback` receive the engine's warnings and errors (index.js calls this at load with a
/// function that calls `process.emitWarning`), unless a live handler is registered already; true
/// when it was registered. The engine logs on its own threads: messages are queued to the event
/// loop (never blocking the engine) and delivered shortly after. Nothing is written to stderr by
/// the library itself.
#[napi]
pub fn set_log_handler(callback: LogCallback) -> bool {
    use napi::threadsafe_function::ThreadsafeFunctionCallMode;
    static SINK: std::sync::Once = std::sync::Once::new();
    {
        let mut h = LOG_HANDLER.lock();
        if h.is_some() {
            return false;
        }
        *h = Some(Arc::new(callback));
    }
    SINK.call_once(|| {
        let sink: laminar::logging::Sink = Arc::new(|level, target, message| {
            let mut h = LOG_HANDLER.lock();
            let Some(cb) = h.as_ref() else { return };
            let msg = LogMessage {
                level: if level == log::Level::Error { "error" } else { "warn" }.into(),
                target: target.into(),
                message: message.into(),
            };
            // Closing: its environment (a worker, the process) is gone; the next load registers.
            if cb.call(msg, ThreadsafeFunctionCallMode::NonBlocking) == Status::Closing {
                *h = None;
            }
        });
        // Another `log` logger in the process (a Rust host): messages go there instead.
        let _ = laminar::logging::set_sink(Some((sink, log::LevelFilter::Warn)));
        // A panic the engine catches (an operator failing its streams) is logged, not printed.
        laminar::logging::install_panic_hook();
    });
    true
}

/// The engine's version.
#[napi]
pub fn version() -> String {
    laminar_core::VERSION.to_string()
}

/// Benchmarking aid: W1 (DESIGN §8) with `events` rows in batches of 8,192 built in Rust and
/// pushed through the Rust handle layer on a fresh database, until the last window is received;
/// the seconds it took (generation excluded). Lets the Node benchmark print both in one run.
#[napi]
pub fn bench_w1_rust(events: u32) -> Result<f64> {
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    let events = events as i64;
    let db = Db::open(":memory:", &Config::new()).js()?;
    db.execute("CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")
        .js()?;
    db.execute("CREATE STREAM w1 AS SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)").js()?;
    let mut batches = vec![];
    let mut start = 0i64;
    while start < events {
        let n = (events - start).min(8192);
        let idx = start..start + n;
        batches.push(
            RecordBatch::try_from_iter(vec![
                ("k", Arc::new(Int64Array::from_iter_values(idx.clone().map(|i| (i * 2654435761) % 1000))) as _),
                ("v", Arc::new(Int64Array::from_iter_values(idx.clone().map(|i| (i * 7919) % 1000))) as _),
                (
                    "ts",
                    Arc::new(TimestampMicrosecondArray::from_iter_values(idx.map(|i| 1_700_000_000_000_000 + i * 1000)))
                        as _,
                ),
            ])
            .map_err(|e| js_err(e.into()))?,
        );
        start += n;
    }
    let mut opts = Config::new();
    opts.set("buffer_size", "65536").js()?;
    let sub = db.subscribe("w1", &opts).js()?;
    let mut w = db.writer("events").js()?;
    let t0 = std::time::Instant::now();
    for b in batches {
        w.write(b).js()?;
    }
    w.finish().js()?;
    let mut counted = 0i64;
    while counted < events {
        match sub.next().js()? {
            Some(b) => {
                let n = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .map(|a| a.values().iter().sum::<i64>())
                    .unwrap_or(0);
                counted += n;
            }
            None => break,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    db.close();
    Ok(secs)
}
