"""Writers: push rows and watermarks into one source."""

from __future__ import annotations

from typing import Any, Optional

import pyarrow as pa

from . import codes
from ._arrow import write_into
from ._errors import IngestionError


class Writer:
    """Pushes data into one source; created by :meth:`Connection.writer`. A writer belongs to one
    thread at a time (several threads use several writers). Usable as a context manager, which
    closes it."""

    def __init__(self, native, conn):
        self._w = native
        self._conn = conn
        self._watermark: Optional[int] = None

    def _check(self):
        if self._w.is_closed:
            raise IngestionError(f"the writer for '{self._w.source}' is closed", codes.WRITER_CLOSED, "INVALID_STATE")

    @property
    def name(self) -> str:
        """The source this writer pushes into (IngestionError once closed)."""
        self._check()
        return self._w.source

    @property
    def schema(self) -> pa.Schema:
        """The source's schema (IngestionError once closed)."""
        self._check()
        return self._conn._arrow_schema(self._w.source)

    def __repr__(self) -> str:
        return f"Writer({self._w.source!r}, {'closed' if self._w.is_closed else 'open'})"

    def insert(self, data: Any) -> int:
        """Pushes rows (any form :meth:`Connection.insert` takes); returns the row count. Blocks
        only while the source queue is full."""
        self._check()
        return write_into(self._w, data, self._conn._arrow_schema(self._w.source))

    def watermark(self, ts_ms: int) -> None:
        """Advances the source's watermark to ``ts_ms`` (epoch milliseconds); never backwards."""
        self._check()
        self._w.watermark(int(ts_ms))
        if self._watermark is None or int(ts_ms) > self._watermark:
            self._watermark = int(ts_ms)

    def finish(self) -> None:
        """Marks the end of input: every window of the source closes."""
        self._check()
        self._w.finish()

    @property
    def current_watermark(self) -> Optional[int]:
        """The source watermark in epoch milliseconds: the highest of what has been processed
        and what this writer set with :meth:`watermark` (which the source reaches once it is
        processed), or None."""
        self._check()
        seen = [w for w in (self._w.current_watermark(), self._watermark) if w is not None]
        return max(seen) if seen else None

    def flush(self) -> None:
        """Waits until everything pushed so far has been processed."""
        self._check()
        self._w.flush()

    def close(self) -> None:
        """Closes the writer (idempotent). Rows pushed stay pushed."""
        self._w.close()

    @property
    def is_closed(self) -> bool:
        return self._w.is_closed

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
