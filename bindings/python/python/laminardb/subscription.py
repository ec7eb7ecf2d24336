"""Subscriptions to a stream: iterate (sync or async), poll with timeouts, or get callbacks."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, Optional

import pyarrow as pa

from ._errors import LaminarError
from .result import QueryResult


class Subscription:
    """A pull subscription. Items are :class:`QueryResult`\\ s, one per batch the stream emitted
    (changelog streams carry their ``__weight`` column). Blocking calls release the GIL and honour
    Ctrl-C. Usable with ``with`` / ``async with`` (cancel on exit) and ``for`` / ``async for``.
    When the stream fails (for example on a division by zero), reading raises
    :class:`~laminardb.StreamError` after the batches already buffered."""

    def __init__(self, native, name: str, on_cancel: Optional[Callable[[], None]] = None, query_id: int = 0):
        self._sub = native
        self._name = name
        self._on_cancel = on_cancel
        self._ended = False
        self.id = query_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def schema(self) -> pa.Schema:
        """The schema of every batch, known before the first one arrives."""
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
        """The next batch, or None when nothing arrived within ``timeout_ms`` (or at the end:
        check :attr:`is_active`). Never raises on a timeout."""
        return self._read(self._sub.next, int(timeout_ms))

    def try_next(self) -> Optional[QueryResult]:
        """A batch already buffered, or None without waiting."""
        return self._read(self._sub.try_next)

    def cancel(self) -> None:
        """Ends the subscription; a blocked ``next`` returns None. Idempotent, any thread."""
        self._sub.cancel()
        self._finish()

    close = cancel

    def _finish(self) -> None:
        if not self._ended:
            self._ended = True
            if self._on_cancel is not None:
                cb, self._on_cancel = self._on_cancel, None
                cb()

    def __iter__(self):
        """Yields batches until the end; leaving the loop early (``break``) cancels."""
        try:
            while (r := self.next()) is not None:
                yield r
        finally:
            self.cancel()

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
        return f"Subscription({self._name!r}, active={self.is_active})"


AsyncSubscription = Subscription


class CallbackSubscription:
    """A push subscription: ``on_data(QueryResult)`` runs on an engine thread for every batch
    (holding the GIL only while in Python). An exception raised by ``on_data`` goes to
    ``on_error`` if given; otherwise it ends the subscription and :meth:`wait` re-raises it."""

    def __init__(self, conn_native, name: str, on_data, on_error, options, on_cancel=None, query_id: int = 0):
        self._on_data = on_data
        self._on_error = on_error
        self._done = threading.Event()
        self._error: Optional[BaseException] = None
        self._on_cancel = on_cancel
        self._name = name
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
                        self._on_error(e)
                    else:
                        self._error = e
                        self._push.cancel()
            elif kind == "error":
                if self._on_error is not None:
                    self._on_error(value)
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

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until the subscription has ended (True) or ``timeout`` seconds passed (False);
        re-raises an exception of ``on_data`` that had no ``on_error`` to go to."""
        done = self._done.wait(timeout)
        if done and self._error is not None:
            err, self._error = self._error, None
            raise err
        return done

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

    def __enter__(self) -> "CallbackSubscription":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()
