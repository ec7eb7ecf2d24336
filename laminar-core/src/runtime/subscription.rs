//! Subscriptions to a stream: a bounded buffer per subscriber, filled by the pipeline, read by
//! pull (`next`, `next_timeout`, `try_next`) or by a push callback on an engine-owned thread with
//! `request(n)` credits. The slow-subscriber rule (DESIGN §2): with `on_full = lag` (default) a
//! full buffer ends that subscription with "lagged: N batches unread" on its next read, and so
//! does a buffer whose batches would hold more than `memory_limit` bytes; with `on_full = block`
//! the pipeline waits for the reader (the buffer then holds at most `buffer_size` batches,
//! whatever their bytes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::{Condvar, Mutex};

use crate::config::OnFull;
use crate::error::{Error, ErrorKind, Result};

/// A batch with the epoch it belongs to: the number of the checkpoint that will cover it
/// (outputs emitted after checkpoint `e - 1` and before checkpoint `e` are epoch `e`).
pub(crate) type Msg = (u64, RecordBatch);

pub(crate) struct SubShared {
    pub lagged: AtomicU64,
    /// Bytes of the batches in the buffer (`on_full = lag`).
    bytes: AtomicU64,
    /// The database's `memory_limit`: a lagging buffer may hold that many bytes.
    byte_limit: Option<u64>,
    /// The bytes the buffer would have held when it was ended for passing `byte_limit`.
    lagged_bytes: AtomicU64,
    pub cancelled: AtomicBool,
    /// The pipeline's end is gone (database closed, stream dropped or failed, subscriber lagged):
    /// nothing more will arrive after what is buffered.
    pub ended: AtomicBool,
    /// A blocked delivery gave up (cancelled, closed): the pipeline drops this subscriber.
    dead: AtomicBool,
    /// Messages of this subscriber wait in the driver's pending list; later ones queue behind.
    backlogged: AtomicBool,
    /// Why the stream ended, when it failed; reported after the buffered batches.
    failure: Mutex<Option<Error>>,
    cancel_tx: Mutex<Option<Sender<()>>>,
    /// Push subscriptions: batches granted and not yet delivered.
    credits: Mutex<u64>,
    /// Wakes a push thread waiting for credits (credit, cancel, end).
    wake: Condvar,
}

impl SubShared {
    fn notify(&self) {
        let _g = self.credits.lock();
        self.wake.notify_all();
    }
}

/// The pipeline's end of a subscription. Dropping it ends the subscription (after the buffered
/// batches).
pub(crate) struct SubscriberSlot {
    pub tx: Sender<Msg>,
    pub shared: Arc<SubShared>,
    pub on_full: OnFull,
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.shared.ended.store(true, Ordering::Release);
        self.shared.notify();
    }
}

/// Outcome of a delivery attempt.
pub(crate) enum Delivered {
    Ok,
    /// The subscriber is gone, cancelled or lagged: drop the slot.
    Drop,
}

/// A batch for an `on_full = block` subscriber whose buffer was full: the pipeline thread sends
/// it, waiting for room, after it has released the engine lock (so a subscriber may call into
/// the database meanwhile), and before it processes the next event (so order and back-pressure
/// hold).
pub(crate) struct Pending {
    tx: Sender<Msg>,
    shared: Arc<SubShared>,
    msg: Msg,
}

impl SubscriberSlot {
    /// Never blocks: a full `block` subscriber's batch goes to `pending`.
    pub(crate) fn deliver(&self, msg: Msg, pending: &mut Vec<Pending>) -> Delivered {
        if self.shared.cancelled.load(Ordering::Acquire) || self.shared.dead.load(Ordering::Acquire) {
            return Delivered::Drop;
        }
        match self.on_full {
            OnFull::Lag => {
                let size = msg.1.get_array_memory_size() as u64;
                let held = self.shared.bytes.fetch_add(size, Ordering::AcqRel);
                // One batch is taken whatever its size when the buffer is empty.
                if let Some(limit) = self.shared.byte_limit
                    && held > 0
                    && held + size > limit
                {
                    self.shared.lagged_bytes.store(held + size, Ordering::Release);
                    return self.lagged();
                }
                match self.tx.try_send(msg) {
                    Ok(()) => Delivered::Ok,
                    Err(TrySendError::Full(_)) => self.lagged(),
                    Err(TrySendError::Disconnected(_)) => Delivered::Drop,
                }
            }
            OnFull::Block => {
                if self.shared.backlogged.load(Ordering::Acquire) {
                    pending.push(Pending { tx: self.tx.clone(), shared: self.shared.clone(), msg });
                    return Delivered::Ok;
                }
                match self.tx.try_send(msg) {
                    Ok(()) => Delivered::Ok,
                    Err(TrySendError::Full(msg)) => {
                        self.shared.backlogged.store(true, Ordering::Release);
                        pending.push(Pending { tx: self.tx.clone(), shared: self.shared.clone(), msg });
                        Delivered::Ok
                    }
                    Err(TrySendError::Disconnected(_)) => Delivered::Drop,
                }
            }
        }
    }

    /// Ends a lagging subscription: the reader gets RESOURCE_EXHAUSTED after what is buffered.
    fn lagged(&self) -> Delivered {
        self.shared.lagged.store(self.tx.len() as u64 + 1, Ordering::Release);
        // Wake a reader blocked on the cancel channel too.
        self.shared.cancel_tx.lock().take();
        Delivered::Drop
    }

    /// Puts `msg` in the buffer of a new subscription (its backlog of retained results).
    pub(crate) fn preload(&self, msg: Msg) {
        let size = msg.1.get_array_memory_size() as u64;
        if self.tx.try_send(msg).is_ok() {
            self.shared.bytes.fetch_add(size, Ordering::AcqRel);
        }
    }

    /// Whether the subscriber has cancelled (or dropped) its end, or a blocked delivery gave up.
    pub(crate) fn is_gone(&self) -> bool {
        self.shared.cancelled.load(Ordering::Acquire) || self.shared.dead.load(Ordering::Acquire)
    }

    /// Ends the subscription with `e`, reported after the batches already buffered.
    pub(crate) fn fail(&self, e: Error) {
        *self.shared.failure.lock() = Some(e);
    }
}

/// Sends the pending batches in order, each waiting for room in its subscriber's buffer. Gives
/// up on a subscriber that cancels or when the database closes.
pub(crate) fn send_pending(pending: Vec<Pending>, closed: &AtomicBool) {
    let mut touched: Vec<Arc<SubShared>> = vec![];
    for p in pending {
        if !touched.iter().any(|t| Arc::ptr_eq(t, &p.shared)) {
            touched.push(p.shared.clone());
        }
        if p.shared.dead.load(Ordering::Acquire) {
            continue;
        }
        let mut msg = p.msg;
        loop {
            match p.tx.send_timeout(msg, Duration::from_millis(50)) {
                Ok(()) => break,
                Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                    if p.shared.cancelled.load(Ordering::Acquire) || closed.load(Ordering::Acquire) {
                        p.shared.dead.store(true, Ordering::Release);
                        break;
                    }
                    msg = m;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                    p.shared.dead.store(true, Ordering::Release);
                    break;
                }
            }
        }
    }
    for t in touched {
        t.backlogged.store(false, Ordering::Release);
    }
}

/// Options of one subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Batches buffered before `on_full` applies. Default: the database's `buffer_size`.
    pub buffer_size: Option<usize>,
    pub on_full: Option<OnFull>,
    /// Durable databases: deliver first every retained result of the epochs after this one
    /// (results of epochs `<= e` were already consumed), then live results. None: live results
    /// only.
    pub resume_after_epoch: Option<u64>,
}

/// What a non-blocking or timed read found.
#[derive(Debug)]
pub enum Next {
    Batch(RecordBatch),
    /// Nothing arrived in time (or nothing is buffered, for `try_next`).
    Empty,
    /// The subscription has ended: cancelled, stream dropped, or database closed.
    End,
}

/// A pull subscription to a stream. Reads block until data arrives, the timeout passes, or the
/// subscription is cancelled (from any thread).
pub struct Subscription {
    rx: Receiver<Msg>,
    cancel_rx: Receiver<()>,
    /// Epoch of the batch returned last (0 before the first); shared with a push subscription.
    epoch: Arc<AtomicU64>,
    shared: Arc<SubShared>,
    schema: SchemaRef,
    stream: String,
}

pub(crate) fn new_pair(
    stream: &str,
    schema: SchemaRef,
    capacity: usize,
    on_full: OnFull,
    byte_limit: Option<u64>,
) -> (SubscriberSlot, Subscription) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let (cancel_tx, cancel_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(SubShared {
        lagged: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        byte_limit,
        lagged_bytes: AtomicU64::new(0),
        cancelled: AtomicBool::new(false),
        ended: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        backlogged: AtomicBool::new(false),
        failure: Mutex::new(None),
        cancel_tx: Mutex::new(Some(cancel_tx)),
        credits: Mutex::new(0),
        wake: Condvar::new(),
    });
    (
        SubscriberSlot { tx, shared: shared.clone(), on_full },
        Subscription { rx, cancel_rx, epoch: Arc::new(AtomicU64::new(0)), shared, schema, stream: stream.to_string() },
    )
}

impl Subscription {
    /// The schema of every batch this subscription yields (with `__weight` for changelogs).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    fn check_lagged(&self) -> Result<()> {
        let n = self.shared.lagged.load(Ordering::Acquire);
        let bytes = self.shared.lagged_bytes.load(Ordering::Acquire);
        if n > 0 && bytes > 0 {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "subscription to '{}' lagged: {n} batches ({bytes} bytes) unread would pass memory_limit {}; it was ended so the pipeline could go on (read faster, or subscribe with on_full = block)",
                    self.stream,
                    self.shared.byte_limit.unwrap_or_default()
                ),
            ));
        }
        if n > 0 {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "subscription to '{}' lagged: {n} batches unread; it was ended so the pipeline could go on (read faster, raise buffer_size, or subscribe with on_full = block)",
                    self.stream
                ),
            ));
        }
        Ok(())
    }

    /// The epoch of the batch the last read returned (0 before the first): the checkpoint that
    /// covers it. On a durable database, once checkpoint `e` has completed, every batch of
    /// epochs `<= e` has been delivered; a consumer that has committed its work up to epoch `e`
    /// resumes after a restart with [`SubscribeOptions::resume_after_epoch`] = `e` and sees
    /// each later result exactly once.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn map(&self, m: std::result::Result<Msg, crossbeam_channel::RecvError>) -> Result<Next> {
        match m {
            Ok((e, b)) => {
                let size = b.get_array_memory_size() as u64;
                let _ = self
                    .shared
                    .bytes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(size)));
                self.epoch.store(e, Ordering::Release);
                Ok(Next::Batch(b))
            }
            Err(_) => {
                self.check_lagged()?;
                if let Some(e) = self.shared.failure.lock().clone() {
                    return Err(e);
                }
                Ok(Next::End)
            }
        }
    }

    /// Blocks for the next batch; `None` once the subscription has ended.
    pub fn next(&self) -> Result<Option<RecordBatch>> {
        match self.next_deadline(None)? {
            Next::Batch(b) => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    /// Waits up to `timeout` for the next batch.
    pub fn next_timeout(&self, timeout: Duration) -> Result<Next> {
        self.next_deadline(Some(Instant::now() + timeout))
    }

    /// Returns a buffered batch if there is one, without waiting.
    pub fn try_next(&self) -> Result<Next> {
        self.check_lagged()?;
        if self.shared.cancelled.load(Ordering::Acquire) {
            return Ok(Next::End);
        }
        match self.rx.try_recv() {
            Ok(m) => self.map(Ok(m)),
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(Next::Empty),
            Err(crossbeam_channel::TryRecvError::Disconnected) => self.map(Err(crossbeam_channel::RecvError)),
        }
    }

    fn next_deadline(&self, deadline: Option<Instant>) -> Result<Next> {
        self.check_lagged()?;
        if self.shared.cancelled.load(Ordering::Acquire) {
            return Ok(Next::End);
        }
        // A cancelled subscription ends at once (checked above); otherwise buffered data first.
        if let Ok(m) = self.rx.try_recv() {
            return self.map(Ok(m));
        }
        let timeout = deadline.map(crossbeam_channel::at).unwrap_or_else(crossbeam_channel::never);
        crossbeam_channel::select! {
            recv(self.rx) -> m => self.map(m),
            recv(self.cancel_rx) -> _ => {
                self.check_lagged()?;
                Ok(Next::End)
            }
            recv(timeout) -> _ => Ok(Next::Empty),
        }
    }

    /// Ends the subscription: blocked and later reads return `End`. Any thread, any number of times.
    /// The batches still buffered are freed now; the pipeline drops its end of the subscription at
    /// its next delivery or the database's next subscribe, whichever comes first.
    pub fn cancel(&self) {
        self.shared.cancelled.store(true, Ordering::Release);
        self.shared.cancel_tx.lock().take();
        while self.rx.try_recv().is_ok() {}
    }

    /// A handle that can cancel this subscription from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.shared.clone())
    }
}

impl Iterator for &Subscription {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        Subscription::next(self).transpose()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Cancels a subscription from any thread.
#[derive(Clone)]
pub struct Canceller(Arc<SubShared>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
        self.0.cancel_tx.lock().take();
    }
}

/// Events delivered to a push subscriber, in order: `Schema` exactly once and first, batches, then
/// at most one error, then `Closed` exactly once, always last.
pub enum PushEvent {
    Schema(SchemaRef),
    /// A batch and its epoch (see [`Subscription::epoch`]).
    Batch(RecordBatch, u64),
    Error(Error),
    Closed,
}

/// A push subscription: a callback on an engine-owned thread. It receives at most as many batches
/// as credits were granted (`request`); `cancel` may be called from anywhere, including the callback.
pub struct PushSubscription {
    shared: Arc<SubShared>,
    epoch: Arc<AtomicU64>,
    canceller: Canceller,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    thread_id: std::thread::ThreadId,
}

impl PushSubscription {
    pub(crate) fn spawn(
        sub: Subscription,
        initial_credits: u64,
        mut callback: Box<dyn FnMut(PushEvent) + Send>,
    ) -> Result<PushSubscription> {
        let shared = sub.shared.clone();
        let epoch = sub.epoch.clone();
        *shared.credits.lock() = initial_credits;
        let canceller = sub.canceller();
        let handle = std::thread::Builder::new()
            .name(format!("laminar-push-{}", sub.stream))
            .spawn(move || {
                let mut call = |ev: PushEvent| {
                    // A panicking callback ends the subscription instead of the process.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(ev))).is_ok()
                };
                let sh = sub.shared.clone();
                let alive = call(PushEvent::Schema(sub.schema()));
                if !alive {
                    call(PushEvent::Error(Error::internal("the subscription callback panicked")));
                }
                // `alive`: loop only if the schema callback returned normally (the loop ends by
                // break or return, never by `alive` changing).
                #[allow(clippy::while_immutable_condition)]
                while alive {
                    let has_credit = {
                        let mut n = sh.credits.lock();
                        // Wait for a credit, a cancel, or the end with nothing left to deliver
                        // (a lag or a failure is reported at once; buffered batches wait for
                        // credits, so an ended subscription still delivers what it holds).
                        while *n == 0
                            && !sh.cancelled.load(Ordering::Acquire)
                            && sh.lagged.load(Ordering::Acquire) == 0
                            && !(sh.ended.load(Ordering::Acquire) && sub.rx.is_empty())
                        {
                            sh.wake.wait(&mut n);
                        }
                        *n > 0
                    };
                    if sh.cancelled.load(Ordering::Acquire) {
                        break;
                    }
                    let next = if has_credit {
                        sub.next().map(|b| b.map(Next::Batch).unwrap_or(Next::End))
                    } else {
                        // Ended or lagged with no credit: report how it ended, deliver nothing.
                        sub.check_lagged().and_then(|_| match sub.shared.failure.lock().clone() {
                            Some(e) => Err(e),
                            None => Ok(Next::End),
                        })
                    };
                    match next {
                        Ok(Next::Batch(b)) => {
                            {
                                let mut n = sh.credits.lock();
                                *n = n.saturating_sub(1);
                            }
                            if !call(PushEvent::Batch(b, sub.epoch())) {
                                call(PushEvent::Error(Error::internal("the subscription callback panicked")));
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            call(PushEvent::Error(e));
                            break;
                        }
                    }
                }
                call(PushEvent::Closed);
            })
            .map_err(|e| Error::internal(format!("cannot start the subscription thread: {e}")))?;
        let thread_id = handle.thread().id();
        Ok(PushSubscription { shared, epoch, canceller, thread: Mutex::new(Some(handle)), thread_id })
    }

    /// The epoch of the batch delivered last — inside the callback, of the batch being delivered
    /// (0 before the first). See [`Subscription::epoch`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Grants `n` more batches. Never calls the callback synchronously.
    pub fn request(&self, n: u64) {
        let mut c = self.shared.credits.lock();
        *c = c.saturating_add(n);
        self.shared.wake.notify_all();
    }

    /// Ends the subscription; batches may still arrive until `Closed`. Idempotent, any thread.
    pub fn cancel(&self) {
        self.canceller.cancel();
        self.shared.notify();
    }

    /// Cancels and waits for `Closed` to have been delivered. From inside the callback this would
    /// wait for itself, so it is refused with INVALID_STATE there.
    pub fn close(&self) -> Result<()> {
        if std::thread::current().id() == self.thread_id {
            return Err(Error::invalid_state(
                "a push subscription cannot be closed from inside its own callback; call cancel()",
            ));
        }
        self.cancel();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
        Ok(())
    }
}

impl Drop for PushSubscription {
    fn drop(&mut self) {
        self.cancel();
        if std::thread::current().id() != self.thread_id
            && let Some(h) = self.thread.lock().take()
        {
            let _ = h.join();
        }
    }
}
