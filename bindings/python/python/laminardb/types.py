"""Small value types of the established ``laminardb`` API: column and schema descriptions, a
metrics summary, change rows and events, and a handle on a materialized view."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Union

import pyarrow as pa

__all__ = ["Column", "Schema", "Metrics", "ChangeRow", "ChangeEvent", "MaterializedView"]


@dataclass(frozen=True)
class Column:
    """One column: its name, its Arrow type as text (``"int64"``) and whether it takes NULL."""

    name: str
    type: str
    nullable: bool = True


class Schema:
    """A ``pyarrow.Schema`` seen as a list of :class:`Column`\\ s (``schema[0]``,
    ``schema["name"]``, ``schema.names``); ``arrow_schema`` is the pyarrow object itself."""

    def __init__(self, arrow_schema: pa.Schema) -> None:
        self._arrow = arrow_schema

    @property
    def arrow_schema(self) -> pa.Schema:
        return self._arrow

    @staticmethod
    def _column(f: pa.Field) -> Column:
        return Column(f.name, str(f.type), f.nullable)

    @property
    def columns(self) -> List[Column]:
        return [self._column(f) for f in self._arrow]

    @property
    def names(self) -> List[str]:
        return list(self._arrow.names)

    def __len__(self) -> int:
        return len(self._arrow)

    def __iter__(self) -> Iterator[Column]:
        return iter(self.columns)

    def __getitem__(self, key: Union[int, str]) -> Column:
        if isinstance(key, str):
            i = self._arrow.get_field_index(key)
            if i < 0:
                raise KeyError(key)
            return self._column(self._arrow.field(i))
        return self._column(self._arrow.field(key))

    def __repr__(self) -> str:
        return "Schema(" + ", ".join(f"{f.name}: {f.type}" for f in self._arrow) + ")"


class Metrics:
    """A summary of :class:`~laminardb.PipelineMetrics`: uptime, state, event rates."""

    def __init__(self, pipeline_metrics: Any) -> None:
        self._m = pipeline_metrics

    @property
    def uptime_secs(self) -> float:
        return float(getattr(self._m, "uptime_secs", 0.0))

    @property
    def state(self) -> str:
        return str(getattr(self._m, "state", "running"))

    @property
    def total_events_ingested(self) -> int:
        return int(getattr(self._m, "total_events_ingested", 0))

    @property
    def total_events_emitted(self) -> int:
        return int(getattr(self._m, "total_events_emitted", 0))

    @property
    def events_per_second(self) -> float:
        """Events ingested per second of uptime."""
        up = self.uptime_secs
        return self.total_events_ingested / up if up > 0 else 0.0

    def __repr__(self) -> str:
        return (
            f"Metrics(state={self.state!r}, uptime_secs={self.uptime_secs:.1f}, "
            f"events_ingested={self.total_events_ingested}, events_per_second={self.events_per_second:.1f})"
        )


class ChangeRow:
    """One changed row: ``op`` (``"Insert"``, ``"Delete"``, …) and its values by column."""

    def __init__(self, op: str, data: Dict[str, Any]) -> None:
        self.op = op
        self._data = dict(data)

    def __getitem__(self, column: str) -> Any:
        return self._data[column]

    def keys(self) -> List[str]:
        return list(self._data.keys())

    def values(self) -> List[Any]:
        return list(self._data.values())

    def to_dict(self) -> Dict[str, Any]:
        """A copy of the values by column."""
        return dict(self._data)

    def __repr__(self) -> str:
        return f"ChangeRow({self.op!r}, {self._data!r})"


class ChangeEvent:
    """The rows of one subscription batch as :class:`ChangeRow`\\ s: a changelog's
    ``__weight`` column gives each row's op (``+1`` Insert, ``-1`` Delete), other rows are
    Inserts."""

    def __init__(self, result: Any) -> None:
        table = result.to_arrow() if hasattr(result, "to_arrow") else pa.table(result)
        self._table = table

    def rows(self) -> List[ChangeRow]:
        out = []
        for r in self._table.to_pylist():
            w = r.pop("__weight", 1)
            out.append(ChangeRow("Insert" if (w or 0) > 0 else "Delete", r))
        return out

    def __iter__(self) -> Iterator[ChangeRow]:
        return iter(self.rows())

    def __len__(self) -> int:
        return self._table.num_rows

    def to_arrow(self) -> pa.Table:
        return self._table

    def __repr__(self) -> str:
        return f"ChangeEvent(rows={self._table.num_rows})"


class MaterializedView:
    """A handle on a stream or materialized view of a connection: its name, defining SQL,
    schema, current rows (materialized views) and subscriptions."""

    def __init__(self, conn: Any, name: str, sql: Optional[str] = None) -> None:
        self._conn = conn
        self.name = name
        self.sql = sql
        self._created = time.time()

    def schema(self) -> Schema:
        return Schema(self._conn.schema(self.name))

    def query(self, where: Optional[str] = None) -> Any:
        """The view's current rows (``where``: an SQL condition)."""
        from .connection import quote_ident

        text = f"SELECT * FROM {quote_ident(self.name)}"
        return self._conn.query(text if where is None else f"{text} WHERE {where}")

    def subscribe(self, **options: Any) -> Any:
        return self._conn.subscribe_stream(self.name, **options)

    def __repr__(self) -> str:
        return f"MaterializedView({self.name!r})"
