"""Exceptions, and the one table that maps the engine's status to them (DESIGN §5)."""

from __future__ import annotations

import builtins
from typing import Optional

from . import codes


class LaminarError(Exception):
    """Base of every LaminarDB error.

    Attributes:
        code: the numeric code of :mod:`laminardb.codes`.
        status: the ABI status name (``"NOT_FOUND"``, ``"SQL_SYNTAX"``, …).
        message: the engine's message.
        stream: the stream or materialized view whose failure this error reports (set on every
            :class:`StreamError`), else ``None``.

    When the engine's error was made from a DataFusion or Arrow error, ``__cause__`` is an
    :class:`EngineCause` naming it.
    """

    default_code = codes.INTERNAL_ERROR

    def __init__(self, message: str = "", code: Optional[int] = None, status: str = "UNKNOWN", stream: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.code = self.default_code if code is None else code
        self.status = status
        self.stream = stream

    def __str__(self) -> str:
        return self.message


class ConnectionError(LaminarError, builtins.ConnectionError):  # noqa: A001 - the established name
    """The database could not be opened, or is closed. Also a built-in ``ConnectionError``."""

    default_code = codes.CONNECTION_FAILED


class QueryError(LaminarError):
    """SQL that does not parse (401), cannot be planned (400), or was cancelled (402)."""

    default_code = codes.QUERY_FAILED


class IngestionError(LaminarError):
    """Data could not be pushed."""

    default_code = codes.INGESTION_FAILED


class SchemaError(LaminarError):
    """A missing or duplicate object, or data that does not match a schema."""

    default_code = codes.SCHEMA_MISMATCH


class BatchSchemaError(IngestionError, SchemaError):
    """Pushed data does not match the source schema (names the column); nothing was applied.
    Both an :class:`IngestionError` and a :class:`SchemaError`."""

    default_code = codes.BATCH_SCHEMA_MISMATCH


class SubscriptionError(LaminarError):
    """A subscription failed (fell behind its buffer, stream failed) or timed out."""

    default_code = codes.SUBSCRIPTION_FAILED


class StreamError(LaminarError):
    """A continuous query (stream or materialized view) failed, for example on a division by zero.

    Raised by a subscription to it once its buffered batches are read, and by every later
    subscribe to it or query of it. ``stream`` names it; ``status`` stays the failure's own kind
    (``"INVALID_DATA"`` for a division by zero, …)."""

    default_code = codes.QUERY_FAILED


class EngineCause(Exception):
    """The DataFusion or Arrow error an engine error was made from, set as its ``__cause__``.

    Attributes:
        library: ``"datafusion"`` or ``"arrow"``.
        kind: the error's variant there (``"Plan"``, ``"SchemaError"``, ``"DivideByZero"``, …; the
            innermost DataFusion error of a chain).
        message: its text.
    """

    def __init__(self, library: str, kind: str, message: str):
        super().__init__(f"{library} {kind}: {message}")
        self.library = library
        self.kind = kind
        self.message = message


class CheckpointError(LaminarError):
    """A checkpoint could not be taken (for example: durability is ``memory``)."""

    default_code = codes.INTERNAL_ERROR


class ConnectorError(LaminarError):
    """An external connector failed."""

    default_code = codes.INGESTION_FAILED


# status name -> (exception class, code)
STATUS_MAP = {
    "NOT_FOUND": (SchemaError, codes.TABLE_NOT_FOUND),
    "ALREADY_EXISTS": (SchemaError, codes.TABLE_EXISTS),
    "INVALID_DATA": (BatchSchemaError, codes.BATCH_SCHEMA_MISMATCH),
    "SQL_SYNTAX": (QueryError, codes.SQL_PARSE_ERROR),
    "PLAN": (QueryError, codes.QUERY_FAILED),
    "INVALID_ARGUMENT": (QueryError, codes.QUERY_FAILED),
    "CANCELLED": (QueryError, codes.QUERY_CANCELLED),
    "TIMEOUT": (SubscriptionError, codes.SUBSCRIPTION_TIMEOUT),
    "RESOURCE_EXHAUSTED": (SubscriptionError, codes.SUBSCRIPTION_FAILED),
    "CLOSED": (ConnectionError, codes.CONNECTION_CLOSED),
    # The engine's own files (the write-ahead log when a push is logged): no connector is involved.
    # Opening and checkpoints rewrap theirs as ConnectionError and CheckpointError.
    "IO": (IngestionError, codes.INGESTION_FAILED),
    "INVALID_STATE": (LaminarError, codes.INTERNAL_ERROR),
    "NOT_IMPLEMENTED": (LaminarError, codes.INTERNAL_ERROR),
    "INTERNAL": (LaminarError, codes.INTERNAL_ERROR),
    "UNKNOWN": (LaminarError, codes.INTERNAL_ERROR),
}


def from_status(status: str, message: str, stream: Optional[str] = None, cause: Optional[tuple] = None) -> LaminarError:
    """The exception for an engine error (called by the native module).

    ``stream`` is the failed stream the error reports (a :class:`StreamError` whatever the
    status); ``cause`` is ``(library, kind, message)`` of the underlying DataFusion or Arrow
    error, set as ``__cause__``."""
    if stream is not None:
        err: LaminarError = StreamError(message, StreamError.default_code, status, stream)
    else:
        cls, code = STATUS_MAP.get(status, (LaminarError, codes.INTERNAL_ERROR))
        err = cls(message, code, status)
    if cause is not None:
        err.__cause__ = EngineCause(*cause)
    return err


def rewrap(err: LaminarError, cls: type, code: Optional[int] = None) -> LaminarError:
    """The same error as another class (for context: a failed checkpoint is a CheckpointError)."""
    new = cls(err.message, err.code if code is None else code, err.status, err.stream)
    new.__cause__ = err
    return new
