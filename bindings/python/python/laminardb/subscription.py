"""Subscriptions to a stream: iterate (sync or async), poll with timeouts, or get callbacks."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, Optional

import pyarrow as pa

from . import codes
from ._errors import LaminarError, SubscriptionError
from .result import QueryResult

_log = __import__("logging").getLogger("laminardb")


class Subscription:
    """A pull subscription. Items are :class:`QueryResult`\\ s, one per batch the stream emitted
    (changelog streams carry their ``__weight`` column). Blocking calls release the GIL and honour
    Ctrl-C. Usable with ``with`` / ``async with`` (cancel on exit) and ``for`` / ``async for``.
    When the stream fails (for example on a division by zero), reading raises
    :class:`~laminardb.StreamError` after the batches already buffered."""

    def __init__(self, native, name: str, on_cancel: Optional[Callable[[], None]] = None, query_id: int = 0, sql: Optional[str] = None):
        self._sub = native
        self._name = name
        self._on_cancel = on_cancel
        self._ended = False
        self._cancelled = False
        self._sql = sql
        self.id = query_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def schema(self) -> pa.Schema:
        """The schema of every batch, known before the first one arrives (RuntimeError once
        cancelled)."""
        if self._cancelled:
            raise RuntimeError(f"subscription to '{self._name}' was cancelled")
        return pa.schema(self._sub.schema())

    @property
    def epoch(self) -> int:
        """The epoch of the batch returned last (0 before the first): the checkpoint that covers
        it. A consumer that commits its work per epoch resumes after a restart with
        ``subscribe_stream(name, resume_after_epoch=e)`` and sees each later result once."""
        return self._sub.epoch

    @property
    def is_active(self) -> bool:
        return not self._ended and not self._sub.is_cancelled

    def _wrap(self, pair) -> Optional[QueryResult]:
        batch, ended = pair
        if ended:
            self._finish()
            return None
        return QueryResult._from_batch(batch) if batch is not None else None

    def _read(self, f, *args) -> Optional[QueryResult]:
        if self._ended:
            return None
        try:
            return self._wrap(f(*args))
        except KeyboardInterrupt:
            raise  # the subscription survives an interrupted read
        except BaseException:
            self._finish()  # an error (lagged, closed) ends it: release what it holds
            raise

    def next(self) -> Optional[QueryResult]:
        """Blocks for the next batch; None once the subscription has ended."""
        return self._read(self._sub.next, None)

    def next_timeout(self, timeout_ms: int) -> Optional[QueryResult]:
        """The next batch; None once the subscription has ended (or was cancelled). Raises
        :class:`SubscriptionError` (code ``SUBSCRIPTION_TIMEOUT``) when nothing arrived within
        ``timeout_ms`` — :meth:`poll` returns None instead."""
        r = self.poll(timeout_ms)
        if r is None and not self._ended:
            raise SubscriptionError(
                f"timeout: no batch from '{self._name}' within {int(timeout_ms)} ms", codes.SUBSCRIPTION_TIMEOUT, "TIMEOUT"
            )
        return r

    def poll(self, timeout_ms: int) -> Optional[QueryResult]:
        """The next batch, or None when nothing arrived within ``timeout_ms`` or at the end
        (check :attr:`is_active`). Never raises on a timeout."""
        return self._read(self._sub.next, int(timeout_ms))

    def try_next(self) -> Optional[QueryResult]:
        """A batch already buffered, or None without waiting."""
        return self._read(self._sub.try_next)

    def cancel(self) -> None:
        """Ends the subscription; a blocked ``next`` returns None. Idempotent, any thread."""
        self._cancelled = self._cancelled or not self._ended
        self._sub.cancel()
        self._finish()

    close = cancel

    def _finish(self) -> None:
        if not self._ended:
            self._ended = True
            if self._on_cancel is not None:
                cb, self._on_cancel = self._on_cancel, None
                cb()

    def __iter__(self) -> "Subscription":
        """The subscription itself: ``for batch in sub`` reads batches until the end (use
        ``with sub:`` to cancel it when a loop is left early)."""
        return self

    def __next__(self) -> QueryResult:
        r = self.next()
        if r is None:
            raise StopIteration
        return r

    async def __aiter__(self):
        """Yields batches until the end; leaving the loop early (``break``) cancels."""
        loop = asyncio.get_running_loop()
        try:
            while not self._ended:
                # Short slices in a worker thread, so a cancelled task does not leave a thread
                # blocked for long.
                r = await loop.run_in_executor(None, self._read, self._sub.next, 200)
                if r is not None:
                    yield r
        finally:
            self.cancel()

    async def __anext__(self) -> QueryResult:
        loop = asyncio.get_running_loop()
        while True:
            if self._ended:
                raise StopAsyncIteration
            r = await loop.run_in_executor(None, self._read, self._sub.next, 200)
            if r is not None:
                return r

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()

    def __repr__(self) -> str:
        if self.is_active:
            state = "active"
        elif self._cancelled:
            state = "cancelled, finished"
        else:
            state = "finished"
        return f"Subscription({self._name!r}, {state})"


AsyncSubscription = Subscription


class CallbackSubscription:
    """A push subscription: ``on_data(QueryResult)`` runs on an engine thread for every batch
    (holding the GIL only while in Python). An exception raised by ``on_data`` goes to
    ``on_error`` if given; otherwise it ends the subscription and :meth:`wait` re-raises it."""

    def __init__(self, conn_native, name: str, on_data, on_error, options, on_cancel=None, query_id: int = 0, sql: Optional[str] = None):
        self._on_data = on_data
        self._on_error = on_error
        self._done = threading.Event()
        self._error: Optional[BaseException] = None
        self._on_cancel = on_cancel
        self._name = name
        self._sql = sql
        self.id = query_id
        self._epoch = 0
        self._push = conn_native.subscribe_push(name, options, self._event)

    def _event(self, kind: str, value) -> None:
        try:
            if kind == "batch":
                batch, self._epoch = value
                try:
                    self._on_data(QueryResult._from_batch(batch))
                except BaseException as e:  # noqa: BLE001 - handed to the user unchanged
                    if self._on_error is not None:
                        self._on_error(ErrorMessage.of(e))
                    else:
                        self._error = e
                        _log.error("subscription to '%s': on_data raised %r; the subscription ends", self._name, e)
                        self._push.cancel()
            elif kind == "error":
                if self._on_error is not None:
                    self._on_error(ErrorMessage.of(value))
                elif self._error is None:
                    self._error = value
            elif kind == "closed":
                self._done.set()
                self._release()
        except BaseException as e:  # noqa: BLE001 - an on_error that raised
            if self._error is None:
                self._error = e

    @property
    def is_active(self) -> bool:
        return not self._done.is_set()

    @property
    def epoch(self) -> int:
        """The epoch of the batch ``on_data`` was last called with — inside ``on_data``, of the
        batch being handled (0 before the first): the checkpoint that covers it."""
        return self._epoch

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(self._push.schema())

    @property
    def error(self) -> Optional[BaseException]:
        """The exception that ended the subscription (raised by ``on_data`` with no
        ``on_error`` to go to, or the stream's failure), else None."""
        return self._error

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until the subscription has ended (True) or ``timeout`` seconds passed (False).
        It does not raise: an exception that ended it is :attr:`error` (and was logged on the
        ``"laminardb"`` logger)."""
        return self._done.wait(timeout)

    def _release(self) -> None:
        if self._on_cancel is not None:
            cb, self._on_cancel = self._on_cancel, None
            cb()

    def cancel(self) -> None:
        """Ends the subscription and waits until the last callback has returned (from inside a
        callback it only cancels). Idempotent."""
        self._push.cancel()
        try:
            self._push.close()
        except LaminarError as e:  # called from inside a callback: cancelling is all it can do
            if e.status != "INVALID_STATE":
                raise
        self._release()

    close = cancel

    def __repr__(self) -> str:
        what = f"query={self._sql!r}" if self._sql else f"stream={self._name!r}"
        return f"CallbackSubscription({what}, {'active' if self.is_active else 'finished'})"

    def __enter__(self) -> "CallbackSubscription":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class ErrorMessage(str):
    """What ``on_error`` receives: the error's text (a ``str``), with the exception itself as
    :attr:`exception`."""

    exception: Optional[BaseException] = None

    @classmethod
    def of(cls, e) -> "ErrorMessage":
        m = cls(str(e))
        m.exception = e if isinstance(e, BaseException) else None
        return m


class QueryStream:
    """The batches of an ad-hoc query (:meth:`Connection.stream`), one :class:`QueryResult`
    each: iterate it, or ``try_next``/``next``; ``cancel`` drops what is left."""

    def __init__(self, sql: str, batches):
        self._sql = sql
        self._batches = list(batches)
        self._active = True

    @property
    def is_active(self) -> bool:
        return self._active

    def try_next(self) -> Optional[QueryResult]:
        """The next batch, or None at the end (never waits: the rows are computed)."""
        if not self._active:
            return None
        if not self._batches:
            self._active = False
            return None
        return QueryResult(pa.Table.from_batches([self._batches.pop(0)]))

    next = try_next

    def cancel(self) -> None:
        self._active = False
        self._batches.clear()

    def __iter__(self) -> "QueryStream":
        return self

    def __next__(self) -> QueryResult:
        r = self.try_next()
        if r is None:
            raise StopIteration
        return r

    def __repr__(self) -> str:
        return f"QueryStream({'active' if self._active else 'finished'}, batches_left={len(self._batches)})"


class _Bounded:
    """The rows of a bounded query (over VALUES, no stream) behind the interface of a native
    subscription: its batches, then the end."""

    def __init__(self, table: pa.Table):
        self._schema = table.schema
        self._batches = table.to_batches()
        self.is_cancelled = False
        self.epoch = 0

    def schema(self) -> pa.Schema:
        return self._schema

    def next(self, _timeout_ms=None):
        if self.is_cancelled or not self._batches:
            return None, True
        return self._batches.pop(0), False

    try_next = next

    def cancel(self) -> None:
        self.is_cancelled = True
