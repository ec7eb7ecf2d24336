//! Subscriptions: pull (`next` with timeouts, releasing the GIL and honouring Ctrl-C) and push
//! (a Python callable run on an engine thread, holding the GIL only while in Python).

use std::time::{Duration, Instant};

use laminar::{Config, Db};
use laminar_core::{Next, PushEvent};
use pyo3::prelude::*;

use crate::arrow::{ArrowBatch, schema_object};
use crate::{IntoPy, to_pyerr};

/// How often a blocking read wakes to check for signals (Ctrl-C).
const SLICE: Duration = Duration::from_millis(100);

#[pyclass(module = "laminardb._laminardb", frozen)]
pub struct Subscription {
    sub: laminar::Subscription,
}

impl Subscription {
    pub(crate) fn new(sub: laminar::Subscription) -> Subscription {
        Subscription { sub }
    }
}

#[pymethods]
impl Subscription {
    /// The next batch; None at the end of the subscription, or when `timeout_ms` (None: wait
    /// for ever) passes first. Releases the GIL; raises KeyboardInterrupt on Ctrl-C.
    #[pyo3(signature = (timeout_ms=None))]
    fn next(&self, py: Python<'_>, timeout_ms: Option<u64>) -> PyResult<(Option<ArrowBatch>, bool)> {
        let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            let sub = self.sub.clone();
            match py.detach(move || sub.next_timeout(slice)).py()? {
                Next::Batch(batch) => return Ok((Some(ArrowBatch { batch }), false)),
                Next::End => return Ok((None, true)),
                Next::Empty => {
                    py.check_signals()?;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok((None, false));
                    }
                }
            }
        }
    }

    /// A buffered batch without waiting; (None, ended).
    fn try_next(&self) -> PyResult<(Option<ArrowBatch>, bool)> {
        match self.sub.try_next().py()? {
            Next::Batch(batch) => Ok((Some(ArrowBatch { batch }), false)),
            Next::End => Ok((None, true)),
            Next::Empty => Ok((None, false)),
        }
    }

    fn cancel(&self) {
        self.sub.cancel()
    }

    #[getter]
    fn is_cancelled(&self) -> bool {
        self.sub.is_cancelled()
    }

    /// The epoch of the batch returned last (0 before the first).
    #[getter]
    fn epoch(&self) -> u64 {
        self.sub.epoch()
    }

    fn schema(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        schema_object(py, self.sub.schema())
    }
}

#[pyclass(module = "laminardb._laminardb", frozen)]
pub struct PushSubscription {
    push: laminar::PushSubscription,
}

impl PushSubscription {
    /// Runs without the GIL (it takes the engine lock); the callback takes the GIL itself.
    pub(crate) fn start(
        db: &Db,
        name: &str,
        options: Config,
        on_event: Py<PyAny>,
    ) -> laminar_core::Result<PushSubscription> {
        let push = db.subscribe_push(name, &options, u64::MAX, move |ev| {
            Python::attach(|py| {
                let r = match ev {
                    PushEvent::Schema(s) => schema_object(py, s).and_then(|s| on_event.call1(py, ("schema", s))),
                    PushEvent::Batch(batch, epoch) => {
                        Py::new(py, ArrowBatch { batch }).and_then(|b| on_event.call1(py, ("batch", (b, epoch))))
                    }
                    PushEvent::Error(e) => on_event.call1(py, ("error", to_pyerr(e).into_value(py))),
                    PushEvent::Closed => on_event.call1(py, ("closed", py.None())),
                };
                // The Python layer catches everything; anything left is a bug worth seeing, through
                // sys.unraisablehook (the host's choice where it goes), as for __del__ errors.
                if let Err(e) = r {
                    e.write_unraisable(py, Some(on_event.bind(py)));
                }
            })
        })?;
        Ok(PushSubscription { push })
    }
}

#[pymethods]
impl PushSubscription {
    fn cancel(&self) {
        self.push.cancel()
    }

    /// Cancels and waits until the final "closed" event has run (GIL released meanwhile).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.push.close()).py()
    }

    fn schema(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        schema_object(py, self.push.schema())
    }
}
