"""User-defined scalar functions written in Python.

A function takes one ``pyarrow.Array`` per argument (a whole batch of rows at a time, never one
row) and returns a ``pyarrow.Array`` of the same length (or anything ``pyarrow.array`` accepts),
of the declared return type. The engine calls it from its own threads, taking the GIL for the
call only. An exception fails the stream that called it (its type and text in the stream's
error); a result of the wrong length or type is an error too; the database goes on.

Register one on a connection (:meth:`Connection.register_function`, also a decorator) for the
statements that follow, or pass :class:`ScalarFunction` objects to
``laminardb.open(..., functions=[...])`` so that a durable database that reopens finds the
functions its streams call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow as pa

__all__ = ["ScalarFunction"]

_VOLATILITY = ("immutable", "stable", "volatile")


@dataclass(frozen=True)
class ScalarFunction:
    """A scalar function: called in SQL as ``name(arg, ...)``. ``name``: lowercase letters,
    digits and ``_`` (SQL folds unquoted names to lowercase); a built-in function's name is
    refused. ``arg_types`` and ``return_type``: ``pyarrow.DataType``s. ``volatility``:
    ``"immutable"`` (default), ``"stable"`` or ``"volatile"``."""

    name: str
    fn: Callable[..., Any]
    arg_types: Sequence[pa.DataType]
    return_type: pa.DataType
    volatility: str = "immutable"

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"the function of {self.name!r} is not callable")
        if self.volatility not in _VOLATILITY:
            raise ValueError(f"volatility must be one of {_VOLATILITY}, not {self.volatility!r}")
        for t in [*self.arg_types, self.return_type]:
            if not isinstance(t, pa.DataType):
                raise TypeError(f"types of {self.name!r} must be pyarrow.DataType, not {type(t).__name__}")

    def _spec(self) -> tuple:
        return (self.name, self.fn, list(self.arg_types), self.return_type, self.volatility)


def _call(fn: Callable[..., Any], batch: Any, rows: int) -> Any:
    """Called by the engine: the arguments as the columns of ``batch``; the result as an
    Arrow array (checked by the engine for its length and type)."""
    rb = pa.record_batch(batch)
    out = fn(*rb.columns)
    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    elif not isinstance(out, pa.Array):
        out = pa.array(out)
    return out
