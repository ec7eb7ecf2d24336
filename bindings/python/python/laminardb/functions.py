"""User-defined functions written in Python: scalar functions and aggregate functions.

A function takes one ``pyarrow.Array`` per argument (a whole batch of rows at a time, never one
row) and returns a ``pyarrow.Array`` of the same length (or anything ``pyarrow.array`` accepts),
of the declared return type. The engine calls it from its own threads, taking the GIL for the
call only. An exception fails the statement or stream that called it (its type and text in the
error's message, the exception itself as the error's ``__cause__``); a result of the wrong length
or type is an error too; the database goes on.

Register one on a connection (:meth:`Connection.register_function`, also a decorator) for the
statements that follow, or pass :class:`ScalarFunction` objects to
``laminardb.open(..., functions=[...])`` so that a durable database that reopens finds the
functions its streams call.

An aggregate function (:class:`AggregateFunction`, :meth:`Connection.register_aggregate_function`)
is an accumulator class, the shape DataFusion's Python API uses: the engine creates one instance
per group (per window, in a windowed query) and calls ``update(*arrays)`` with each batch of the
group's rows, ``state()`` for its partial state (a list of values, one per declared state type)
when a checkpoint is taken or states are combined, ``merge(states)`` with a list of arrays of
other instances' states, and ``evaluate()`` for the result. It cannot take back rows: over a
changelog input (an aggregate that updates, a join that retracts) the statement is refused when
it is planned. Each call takes the GIL; a query with many groups makes many calls per batch, and
``memory_limit`` does not see the accumulators' Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow as pa

__all__ = ["AggregateFunction", "ScalarFunction"]

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


def _check_types(name: str, types: Sequence[Any]) -> None:
    for t in types:
        if not isinstance(t, pa.DataType):
            raise TypeError(f"types of {name!r} must be pyarrow.DataType, not {type(t).__name__}")


@dataclass(frozen=True)
class AggregateFunction:
    """An aggregate function: called in SQL as ``name(arg, ...)``, in ``GROUP BY`` queries and
    windows. ``accumulator``: a class (or any callable) that makes one accumulator — an object
    with ``update(*arrays)``, ``merge(states)``, ``state()`` and ``evaluate()``. ``input_types``, ``return_type`` and
    ``state_types`` (one per value ``state()`` returns): ``pyarrow.DataType``s."""

    name: str
    accumulator: Callable[[], Any]
    input_types: Sequence[pa.DataType]
    return_type: pa.DataType
    state_types: Sequence[pa.DataType]
    volatility: str = "immutable"

    def __post_init__(self) -> None:
        if not callable(self.accumulator):
            raise TypeError(f"the accumulator of {self.name!r} is not callable")
        if self.volatility not in _VOLATILITY:
            raise ValueError(f"volatility must be one of {_VOLATILITY}, not {self.volatility!r}")
        if not self.state_types:
            raise ValueError(f"aggregate function {self.name!r} needs at least one state type")
        _check_types(self.name, [*self.input_types, self.return_type, *self.state_types])

    def _spec(self) -> tuple:
        return (
            self.name,
            self.accumulator,
            list(self.input_types),
            self.return_type,
            list(self.state_types),
            self.volatility,
        )


def _feed(acc: Any, method: str, batch: Any) -> None:
    """Called by the engine: ``acc.update(*columns)`` or ``acc.merge(columns)``."""
    cols = pa.record_batch(batch).columns
    if method == "merge":
        acc.merge(list(cols))
    else:
        getattr(acc, method)(*cols)


def _values(acc: Any, method: str, declared: Any) -> Any:
    """Called by the engine: ``acc.state()`` (a value per declared state type) or
    ``acc.evaluate()``, as a one-row struct array of the declared types."""
    if method == "state":
        values = list(acc.state())
        types = list(declared)
        if len(values) != len(types):
            raise ValueError(f"state() returned {len(values)} values for {len(types)} state types")
    else:
        values, types = [acc.evaluate()], [declared]
    arrays = [pa.array([v.as_py() if isinstance(v, pa.Scalar) else v], type=t) for v, t in zip(values, types)]
    return pa.StructArray.from_arrays(arrays, names=[f"v{i}" for i in range(len(arrays))])


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
