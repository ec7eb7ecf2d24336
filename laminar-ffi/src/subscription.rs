//! Subscriptions to a stream: pull (blocking reads, an `ArrowArrayStream`) and push (callbacks on
//! an engine-owned thread with `request(n)` credits). STYLE B6 holds the rules.

use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow::record_batch::RecordBatch;
use laminar_core::{Error, Next, PushEvent, Result};

use crate::arrow::{BatchSource, export_batch, export_schema, export_stream, write_schema};
use crate::config::{self, Config, laminar_config};
use crate::db::{Db, laminar_db};
use crate::error::{cstr, guard, guard_void, handle, laminar_error, laminar_status, out_ptr};

struct PullInner {
    sub: laminar_core::Subscription,
    db: Db,
    cancelled: AtomicBool,
}

/// A pull subscription. Reads block until a batch arrives, the timeout passes, or the
/// subscription is cancelled (from any thread). Clones share one subscription; it ends when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Subscription {
    inner: Arc<PullInner>,
}

impl Subscription {
    /// The schema of every batch (with `__weight` for changelog streams).
    pub fn schema(&self) -> SchemaRef {
        self.inner.sub.schema()
    }

    pub fn stream_name(&self) -> &str {
        self.inner.sub.stream_name()
    }

    /// An end caused by closing the database is CLOSED; an end by cancel or DROP is just the end.
    fn end(&self) -> Result<()> {
        if self.inner.db.is_closed() && !self.inner.cancelled.load(Ordering::Acquire) {
            return Err(Error::new(laminar_core::ErrorKind::Closed, "the database was closed"));
        }
        Ok(())
    }

    /// The epoch of the batch returned last (0 before the first): the checkpoint that covers it.
    pub fn epoch(&self) -> u64 {
        self.inner.sub.epoch()
    }

    /// Blocks for the next batch; None once the subscription has ended (cancelled, stream
    /// dropped). After the database is closed, buffered batches are still returned, then CLOSED.
    pub fn next(&self) -> Result<Option<RecordBatch>> {
        self.inner.db.check_process()?;
        match self.inner.sub.next()? {
            Some(b) => Ok(Some(b)),
            None => self.end().map(|_| None),
        }
    }

    /// Waits up to `timeout` for the next batch.
    pub fn next_timeout(&self, timeout: Duration) -> Result<Next> {
        self.inner.db.check_process()?;
        match self.inner.sub.next_timeout(timeout)? {
            Next::End => self.end().map(|_| Next::End),
            n => Ok(n),
        }
    }

    /// A buffered batch if there is one, without waiting.
    pub fn try_next(&self) -> Result<Next> {
        self.inner.db.check_process()?;
        match self.inner.sub.try_next()? {
            Next::End => self.end().map(|_| Next::End),
            n => Ok(n),
        }
    }

    /// Ends the subscription: blocked and later reads return the end. Any thread, idempotent.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.sub.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }
}

impl BatchSource for Subscription {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.next()
    }
}

/// A push subscription: the callback given to [`Db::subscribe_push`] runs on an engine-owned
/// thread. Dropping it cancels and waits for the final `Closed` (unless dropped inside the
/// callback, where it only cancels).
pub struct PushSubscription {
    push: laminar_core::PushSubscription,
    cancelled: Arc<AtomicBool>,
    schema: SchemaRef,
}

impl PushSubscription {
    /// The epoch of the batch delivered last (inside `on_batch`: of that batch).
    pub fn epoch(&self) -> u64 {
        self.push.epoch()
    }

    /// Grants `n` more batches (`u64::MAX`: no bound). Never calls the callback synchronously.
    pub fn request(&self, n: u64) {
        self.push.request(n)
    }

    /// Ends the subscription; batches may still arrive until `Closed`. Any thread, idempotent,
    /// also from inside the callback.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.push.cancel()
    }

    /// Cancels and waits until `Closed` has been delivered; INVALID_STATE inside the callback.
    pub fn close(&self) -> Result<()> {
        self.cancelled.store(true, Ordering::Release);
        self.push.close()
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Db {
    /// Subscribes to a stream or materialized view; `options` may set `buffer_size`, `on_full`,
    /// `resume_after_epoch`.
    pub fn subscribe(&self, name: &str, options: &Config) -> Result<Subscription> {
        self.check_process()?;
        let sub = self.database().subscribe_with(name, options.subscribe_options()?)?;
        Ok(Subscription { inner: Arc::new(PullInner { sub, db: self.clone(), cancelled: AtomicBool::new(false) }) })
    }

    /// Subscribes with a callback on an engine-owned thread. Events: `Schema` first, then
    /// batches (at most as many as requested), then at most one `Error`, then `Closed`, always
    /// last. An end caused by closing the database arrives as `Error(CLOSED)` then `Closed`.
    pub fn subscribe_push(
        &self,
        name: &str,
        options: &Config,
        initial_credits: u64,
        mut callback: impl FnMut(PushEvent) + Send + 'static,
    ) -> Result<PushSubscription> {
        self.check_process()?;
        let cancelled = Arc::new(AtomicBool::new(false));
        let (c2, db) = (cancelled.clone(), self.clone());
        let mut errored = false;
        let wrapped = move |ev: PushEvent| match ev {
            PushEvent::Error(e) => {
                errored = true;
                callback(PushEvent::Error(e))
            }
            PushEvent::Closed => {
                if !errored && db.is_closed() && !c2.load(Ordering::Acquire) {
                    callback(PushEvent::Error(Error::new(laminar_core::ErrorKind::Closed, "the database was closed")));
                }
                callback(PushEvent::Closed)
            }
            ev => callback(ev),
        };
        let opts = options.subscribe_options()?;
        let schema = self.schema(name)?;
        let push = self.database().subscribe_push(name, opts, initial_credits, wrapped)?;
        Ok(PushSubscription { push, cancelled, schema })
    }
}

// ------------------------------------------------------------------------------------ C ABI

/// Called once, first, with the schema of every batch to come. `schema` is handed over: the
/// callback must move it (copy the struct and set `schema->release = NULL`) or leave it, in which
/// case LaminarDB releases it after the callback returns.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_schema_cb = Option<unsafe extern "C" fn(user_data: *mut c_void, schema: *mut FFI_ArrowSchema)>;

/// Called with each batch (a struct array). `batch` is handed over: the callback must move it
/// (copy the struct and set `batch->release = NULL`) or leave it, in which case LaminarDB releases
/// it after the callback returns. Pointer arguments are valid only during the call.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_batch_cb = Option<unsafe extern "C" fn(user_data: *mut c_void, batch: *mut FFI_ArrowArray)>;

/// Called at most once, when the subscription ends with an error (the subscriber lagged behind
/// its buffer: `LAMINAR_RESOURCE_EXHAUSTED`; the stream failed; the database was closed:
/// `LAMINAR_CLOSED`). `error` is borrowed for the duration of the call; `on_close` follows.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_error_cb = Option<unsafe extern "C" fn(user_data: *mut c_void, error: *const laminar_error)>;

/// Called exactly once, always last. `user_data_free` runs right after it.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_close_cb = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Frees `user_data`; called exactly once, after `on_close`.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_free_cb = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The callbacks of a push subscription. Fill every field you use, zero the rest, and set
/// `struct_size = sizeof(laminar_subscriber)`; LaminarDB copies the struct during
/// `laminar_db_subscribe_push`. Every callback may be NULL.
///
/// Rules (all callbacks):
/// 1. They run on a thread owned by LaminarDB, never inside the registering call, and never
///    concurrently with each other for one subscription. The handle is in `*out` before the
///    first callback runs.
/// 2. `on_schema` comes first and exactly once; then `on_batch` for at most as many batches as
///    were granted with `laminar_subscription_request` (none before the first request).
/// 3. The end is `on_error` then `on_close`, or `on_close` alone (after a cancel, or when the
///    stream was dropped). Batches buffered before the end are still delivered as credits allow;
///    the end itself needs no credit. `on_close` is always the last call; `user_data_free` runs
///    right after it.
/// 4. A callback may call `laminar_subscription_request` and `laminar_subscription_cancel` on its
///    own subscription, and any `laminar_db_*` function. `laminar_subscription_destroy` of its
///    own subscription from inside a callback cancels without waiting (destroy returns void, so
///    it cannot refuse, and freeing without waiting is safe); the callback must not use the
///    handle afterwards, though `on_close` and `user_data_free` still
///    follow. Destroying *another* push subscription from a callback waits for that one's
///    `on_close`: two callbacks destroying each other deadlock.
/// 5. With `on_full = block`, the pipeline waits for this subscriber; a callback that waits for
///    the pipeline (`laminar_db_flush`, `laminar_writer_flush`, a write into a full source queue
///    feeding this stream) would wait for itself.
/// 6. Callbacks must return normally (no `longjmp`, no C++ exception across them).
/// 7. In a child process after `fork()`, destroying the handle leaks it and runs no callback.
///
/// Since: 0.1.0
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct laminar_subscriber {
    /// `sizeof(laminar_subscriber)` as the caller compiled it; lets the struct grow.
    pub struct_size: u32,
    pub on_schema: laminar_schema_cb,
    pub on_batch: laminar_batch_cb,
    pub on_error: laminar_error_cb,
    pub on_close: laminar_close_cb,
    /// Passed as the first argument of every callback; opaque to LaminarDB.
    pub user_data: *mut c_void,
    /// May be NULL.
    pub user_data_free: laminar_free_cb,
}

struct SendSubscriber(laminar_subscriber);
// SAFETY: the caller promises (rule 1 of laminar_subscriber) that its callbacks and user_data may
// be used from LaminarDB's thread; they are only ever used from one thread at a time.
unsafe impl Send for SendSubscriber {}

enum SubKind {
    Pull(Subscription),
    Push(PushSubscription),
}

/// A subscription to a stream or materialized view: pull (`laminar_db_subscribe`) or push
/// (`laminar_db_subscribe_push`). Serialized: one thread at a time, except
/// `laminar_subscription_cancel`, which any thread may call at any time. Must be destroyed with
/// `laminar_subscription_destroy`, before or after the database is closed.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub struct laminar_subscription {
    kind: SubKind,
    db: Db,
}

impl laminar_subscription {
    fn in_forked_child(&self) -> bool {
        self.db.in_forked_child()
    }

    fn check_open(&self) -> Result<()> {
        self.db.check_open()
    }
}

/// Subscribes to a stream or materialized view for pull reads (`laminar_subscription_next`,
/// `laminar_subscription_stream`). It sees every result emitted after this call returns.
///
/// - `db`, `name`: borrowed.
/// - `options`: borrowed, may be NULL; may set `buffer_size` (batches buffered, default the
///   database's), `on_full` (`lag`: a subscriber that falls behind is ended with
///   `LAMINAR_RESOURCE_EXHAUSTED`; `block`: the pipeline waits for it) and, on a durable
///   database, `resume_after_epoch` (deliver first the kept results of every later epoch; see
///   `laminar_subscription_epoch`). Other keys are
///   `LAMINAR_INVALID_ARGUMENT`.
/// - `out`: caller-owned output; receives the subscription, or NULL on failure.
///
/// Errors: `LAMINAR_NOT_FOUND`, `LAMINAR_INVALID_ARGUMENT` (a source: subscribe to a stream over
/// it), `LAMINAR_CLOSED`. Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_subscribe(
    db: *mut laminar_db,
    name: *const c_char,
    options: *const laminar_config,
    out: *mut *mut laminar_subscription,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: pointers are NULL or valid (caller contract).
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: as above.
        let (db, name, opts) = unsafe { (handle(db, "db")?, cstr(name, "name")?, config::optional(options)?) };
        let sub = db.db.subscribe(name, &opts)?;
        *out = Box::into_raw(Box::new(laminar_subscription { kind: SubKind::Pull(sub), db: db.db.clone() }));
        Ok(())
    })
}

/// Subscribes with callbacks (see `laminar_subscriber` for the rules). No batch is delivered
/// before the first `laminar_subscription_request`.
///
/// - `db`, `name`: borrowed. `subscriber`: borrowed; copied (only its first `struct_size`
///   bytes). `options`: as `laminar_db_subscribe`.
/// - `out`: caller-owned output; receives the subscription, or NULL on failure. On failure no
///   callback runs and `user_data` stays the caller's.
///
/// Errors: as `laminar_db_subscribe`, plus `LAMINAR_INVALID_ARGUMENT` for a `struct_size` smaller
/// than this version's `laminar_subscriber`. Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_subscribe_push(
    db: *mut laminar_db,
    name: *const c_char,
    subscriber: *const laminar_subscriber,
    options: *const laminar_config,
    out: *mut *mut laminar_subscription,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: pointers are NULL or valid (caller contract).
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: as above.
        let (db, name, opts) = unsafe { (handle(db, "db")?, cstr(name, "name")?, config::optional(options)?) };
        if subscriber.is_null() {
            return Err(Error::invalid_argument("subscriber is NULL"));
        }
        // SAFETY: non-NULL; struct_size is the first field of every version of the struct.
        let size = unsafe { (subscriber as *const u32).read_unaligned() } as usize;
        let ours = std::mem::size_of::<laminar_subscriber>();
        if size < ours {
            return Err(Error::invalid_argument(format!(
                "subscriber->struct_size is {size}; this version of LaminarDB needs at least {ours} (sizeof(laminar_subscriber)); was it set?"
            )));
        }
        // SAFETY: at least `ours` bytes are readable (struct_size says so).
        let s = SendSubscriber(unsafe { std::ptr::read_unaligned(subscriber) });
        // No callback runs before `*out` holds the handle (a callback may use it).
        let gate = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
        let gate2 = gate.clone();
        let mut opened = false;
        let sub = db.db.subscribe_push(name, &opts, 0, move |ev| {
            if !opened {
                let mut ready = gate2.0.lock();
                while !*ready {
                    gate2.1.wait(&mut ready);
                }
                opened = true;
            }
            let s = &s;
            let ud = s.0.user_data;
            // SAFETY (every call below): the callbacks and user_data come from the caller, who
            // promised they are callable from this thread with these arguments.
            match ev {
                PushEvent::Schema(schema) => {
                    if let (Some(f), Ok(mut ffi)) = (s.0.on_schema, export_schema(&schema)) {
                        unsafe { f(ud, &mut ffi) };
                    }
                }
                PushEvent::Batch(b, _) => {
                    if let Some(f) = s.0.on_batch {
                        let mut a = export_batch(&b);
                        unsafe { f(ud, &mut a) };
                    }
                }
                PushEvent::Error(e) => {
                    if let Some(f) = s.0.on_error {
                        let err = laminar_error::new(&e, None);
                        unsafe { f(ud, &err) };
                    }
                }
                PushEvent::Closed => {
                    if let Some(f) = s.0.on_close {
                        unsafe { f(ud) };
                    }
                    if let Some(f) = s.0.user_data_free {
                        unsafe { f(ud) };
                    }
                }
            }
        })?;
        *out = Box::into_raw(Box::new(laminar_subscription { kind: SubKind::Push(sub), db: db.db.clone() }));
        *gate.0.lock() = true;
        gate.1.notify_all();
        Ok(())
    })
}

fn pull(sub: &laminar_subscription) -> Result<&Subscription> {
    match &sub.kind {
        SubKind::Pull(p) => Ok(p),
        SubKind::Push(_) => {
            Err(Error::invalid_argument("this is a push subscription; its batches arrive through its callbacks"))
        }
    }
}

/// Reads the next batch of a pull subscription.
///
/// - `sub`: borrowed, serialized.
/// - `timeout_ms`: -1 waits until a batch arrives or the subscription ends; 0 only takes a
///   buffered batch; > 0 waits at most that long.
/// - `out`: caller-allocated; receives a batch (a struct array) the caller owns and must release,
///   or, at the end of the subscription (cancelled, stream dropped), a released array
///   (`out->release == NULL`). Untouched on failure.
///
/// Errors: `LAMINAR_TIMEOUT` (nothing arrived in time; try again), `LAMINAR_RESOURCE_EXHAUSTED`
/// (the subscriber lagged and was ended), `LAMINAR_CLOSED` (the database was closed and every
/// buffered batch has been read), `LAMINAR_INVALID_ARGUMENT` (a push subscription).
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_subscription_next(
    sub: *mut laminar_subscription,
    timeout_ms: i64,
    out: *mut FFI_ArrowArray,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let sub = pull(unsafe { handle(sub, "sub") }?)?;
        if out.is_null() {
            return Err(Error::invalid_argument("out is NULL"));
        }
        let next = match timeout_ms {
            t if t < 0 => match sub.next()? {
                Some(b) => Next::Batch(b),
                None => Next::End,
            },
            0 => sub.try_next()?,
            // Clamped to a year so the deadline cannot overflow the clock.
            t => sub.next_timeout(Duration::from_millis((t as u64).min(365 * 24 * 3600 * 1000)))?,
        };
        let array = match next {
            Next::Batch(b) => export_batch(&b),
            Next::End => FFI_ArrowArray::empty(),
            Next::Empty => {
                return Err(Error::new(laminar_core::ErrorKind::Timeout, format!("no batch within {timeout_ms} ms")));
            }
        };
        // SAFETY: non-NULL and writable (caller contract).
        unsafe { out.write(array) };
        Ok(())
    })
}

/// A pull subscription as an `ArrowArrayStream` whose `get_next` blocks until a batch arrives and
/// returns the end of stream when the subscription ends. The stream shares the subscription:
/// destroying the handle does not end the stream; `laminar_subscription_cancel` does. Errors
/// arrive as errno codes from `get_next`; `laminar_error_from_stream` gives the full error.
///
/// - `sub`: borrowed. `out`: caller-allocated; filled with a stream the caller owns and must
///   release. Untouched on failure.
///
/// After `laminar_db_close`, `get_next` returns the batches still buffered, then fails with
/// `EIO` (the full error is `LAMINAR_CLOSED`).
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` (a push subscription), `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_subscription_stream(
    sub: *mut laminar_subscription,
    out: *mut FFI_ArrowArrayStream,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let h = unsafe { handle(sub, "sub") }?;
        h.check_open()?;
        let sub = pull(h)?.clone();
        if out.is_null() {
            return Err(Error::invalid_argument("out is NULL"));
        }
        // SAFETY: non-NULL and writable (caller contract).
        unsafe { export_stream(sub.schema(), Box::new(sub), out) };
        Ok(())
    })
}

/// The epoch of the batch `laminar_subscription_next` returned last — for a push subscription,
/// of the batch `on_batch` is delivering (called from inside it) or delivered last — 0 before
/// the first: the number of the checkpoint that covers it. Once checkpoint `e` has completed, every batch of
/// epochs `<= e` has been delivered; a consumer that commits its work per epoch resumes after a
/// restart by subscribing with the option `resume_after_epoch` = its last committed epoch, and
/// then sees every later result exactly once.
///
/// - `sub`: borrowed; any thread, including inside the subscription's own callbacks.
///   `out_epoch`: receives the epoch.
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` (NULL `out_epoch`). Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_subscription_epoch(
    sub: *mut laminar_subscription,
    out_epoch: *mut u64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let sub = unsafe { handle(sub, "sub") }?;
        // SAFETY: NULL or writable (caller contract).
        let out = unsafe { out_epoch.as_mut() }.ok_or_else(|| Error::invalid_argument("out_epoch is NULL"))?;
        *out = match &sub.kind {
            SubKind::Pull(p) => p.epoch(),
            SubKind::Push(p) => p.epoch(),
        };
        Ok(())
    })
}

/// The schema of the subscription's batches.
///
/// - `sub`: borrowed. `out`: caller-allocated; filled with a schema the caller owns and must
///   release. Untouched on failure.
///
/// Errors: `LAMINAR_CLOSED` (the database was closed). Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_subscription_schema(
    sub: *mut laminar_subscription,
    out: *mut FFI_ArrowSchema,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let sub = unsafe { handle(sub, "sub") }?;
        if out.is_null() {
            return Err(Error::invalid_argument("out is NULL"));
        }
        sub.check_open()?;
        let schema = match &sub.kind {
            SubKind::Pull(p) => p.schema(),
            SubKind::Push(p) => p.schema(),
        };
        // SAFETY: NULL or writable (caller contract).
        unsafe { write_schema(out, &schema) }
    })
}

/// Grants a push subscription `n` more batches (`UINT64_MAX`: no bound from now on). Never
/// calls a callback itself; may be called from inside a callback.
///
/// - `sub`: borrowed.
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` (a pull subscription), `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_subscription_request(
    sub: *mut laminar_subscription,
    n: u64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let h = unsafe { handle(sub, "sub") }?;
        h.check_open()?;
        match &h.kind {
            SubKind::Push(p) => {
                p.request(n);
                Ok(())
            }
            SubKind::Pull(_) => Err(Error::invalid_argument(
                "request() is for push subscriptions; a pull subscription reads at its own pace",
            )),
        }
    })
}

/// Ends a subscription. Idempotent; **any thread, at any time until the handle is destroyed**,
/// including inside one of its callbacks and while another thread is blocked reading it. A
/// blocked read returns the end of the subscription; a push subscription may still deliver
/// batches until `on_close`, and ends with `on_close` alone (no `on_error`, unless an error had
/// already ended it). A no-op for NULL.
///
/// - `sub`: borrowed.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_subscription_cancel(sub: *mut laminar_subscription) {
    guard_void(|| {
        // SAFETY: NULL or a live handle (caller contract).
        if let Some(s) = unsafe { sub.as_ref() } {
            match &s.kind {
                SubKind::Pull(p) => p.cancel(),
                SubKind::Push(p) => p.cancel(),
            }
        }
    });
}

/// Destroys a subscription. For a push subscription it cancels and waits until `on_close` has
/// run, so no callback runs after it returns — except when called from inside one of the
/// subscription's own callbacks, where it cancels without waiting (`on_close` follows after the
/// callback returns). A no-op for NULL.
///
/// - `sub`: consumed.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_subscription_destroy(sub: Option<Box<laminar_subscription>>) {
    guard_void(|| match sub {
        // In a forked child the callback thread is gone; joining it would never return.
        Some(s) if s.in_forked_child() => std::mem::forget(s),
        Some(s) => {
            // End the callback thread while the handle is still whole (a callback may be using
            // it); from inside a callback this only cancels (close refuses to wait for itself).
            if let SubKind::Push(p) = &s.kind {
                let _ = p.close();
            }
            drop(s);
        }
        None => {}
    });
}

/// The full LaminarDB error behind the last failed `get_next`/`get_schema` of a stream that
/// LaminarDB produced (`laminar_db_query`, `laminar_subscription_stream`).
///
/// - `stream`: borrowed.
/// - `out`: caller-owned output; receives an error to destroy with `laminar_error_destroy`, or
///   NULL when the stream has no error.
///
/// Returns the error's status, `LAMINAR_OK` when there is none, or `LAMINAR_INVALID_ARGUMENT`
/// when `stream` is NULL, released or not produced by LaminarDB. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_error_from_stream(
    stream: *mut FFI_ArrowArrayStream,
    out: *mut *mut laminar_error,
) -> laminar_status {
    let mut status = crate::error::LAMINAR_INVALID_ARGUMENT;
    guard_void(|| {
        // SAFETY: NULL or writable (caller contract).
        if let Some(o) = unsafe { out.as_mut() } {
            *o = std::ptr::null_mut();
        }
        // SAFETY: NULL or a valid stream (caller contract).
        if let Some(last) = unsafe { crate::arrow::stream_last_error(stream) } {
            status = match last {
                None => crate::error::LAMINAR_OK,
                Some(e) => {
                    // SAFETY: as above.
                    if let Some(o) = unsafe { out.as_mut() } {
                        *o = Box::into_raw(Box::new(laminar_error::new(&e, None)));
                    }
                    e.kind() as laminar_status
                }
            };
        }
    });
    status
}
