"""LaminarDB: an embedded streaming SQL database on Apache Arrow and DataFusion.

    import laminardb
    with laminardb.open() as db:
        db.execute("CREATE SOURCE trades (sym VARCHAR, px DOUBLE, ts TIMESTAMP, "
                   "WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")
        db.execute("CREATE STREAM avg_px AS SELECT sym, AVG(px) AS px, window_start "
                   "FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '1' MINUTE)")
        sub = db.subscribe_stream("avg_px")
        db.insert("trades", {"sym": ["A"], "px": [1.0], "ts": [datetime.now()]})

The package never writes to stderr itself: the engine's warnings and errors (a torn or corrupt
checkpoint skipped when a database opens, a failed checkpoint, ...) are records of the standard
:mod:`logging` module, logger ``"laminardb"``, delivered by a thread of the package shortly after
the engine logs them.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Sequence, Union

from . import _laminardb, codes
from ._errors import (
    BatchSchemaError,
    CheckpointError,
    ConnectionError,
    ConnectorError,
    EngineCause,
    IngestionError,
    LaminarError,
    QueryError,
    SchemaError,
    StreamError,
    SubscriptionError,
)
from .config import Config, LaminarConfig
from .connection import (
    CheckpointResult,
    Connection,
    PipelineEdge,
    PipelineMetrics,
    PipelineNode,
    PipelineTopology,
    QueryInfo,
    SinkInfo,
    SinkMetrics,
    SourceInfo,
    SourceMetrics,
    StreamInfo,
    StreamMetrics,
)
from .functions import AggregateFunction, ScalarFunction
from .result import ExecuteResult, QueryResult
from .subscription import AsyncSubscription, CallbackSubscription, QueryStream, Subscription
from .types import ChangeEvent, ChangeRow, Column, MaterializedView, Metrics, Schema
from .writer import Writer

#: The established package's name for :class:`Writer`.
BatchWriter = Writer

__version__ = _laminardb.version()

#: The ABI status codes, by name (the same in C, Go, Node and here).
STATUS = dict(_laminardb.status_codes())


def open(  # noqa: A001
    path: str = ":memory:",
    *,
    config: Union[LaminarConfig, Dict[str, Any], None] = None,
    functions: Optional[Sequence[Union[ScalarFunction, AggregateFunction]]] = None,
) -> Connection:
    """Opens a database. ``path``: ``":memory:"``, or a directory for a durable database
    (durability ``"wal"`` by default, ``"checkpoint"`` if the config says so); opening a directory
    that holds a database recovers it. ``config``: a :class:`LaminarConfig` or a dict of engine
    keys. ``functions``: :class:`ScalarFunction` and :class:`AggregateFunction` objects registered
    before the database opens (a durable database's streams that call them are replayed as it
    opens)."""
    return Connection(path, config, functions)


def connect(uri: str = ":memory:") -> Connection:
    """Opens a database from a URI: ``":memory:"``, ``"laminar://:memory:"``,
    ``"laminar:///path/to/dir"`` or a plain path."""
    path = uri
    for prefix in ("laminardb://", "laminar://", "file://"):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    return open(path or ":memory:")


_default: Optional[Connection] = None
_default_lock = threading.Lock()


def _default_connection() -> Connection:
    global _default
    with _default_lock:
        if _default is None or _default.is_closed:
            _default = open()
        return _default


def sql(query: str) -> QueryResult:
    """Runs a query on the module's default in-memory connection."""
    return _default_connection().query(query)


def execute(statement: str) -> ExecuteResult:
    """Runs statements on the module's default in-memory connection."""
    return _default_connection().execute(statement)


def mv(conn: Connection, name: str, sql_def: Optional[str] = None) -> MaterializedView:
    """A :class:`MaterializedView` handle on ``name``; with ``sql_def`` (a ``SELECT``), the view
    is created first unless it exists."""
    if sql_def is not None and name not in conn.list_streams():
        from .connection import quote_ident

        conn.execute(f"CREATE MATERIALIZED VIEW {quote_ident(name)} AS {sql_def}")
    return MaterializedView(conn, name, sql_def)


__all__ = [
    "ScalarFunction",
    "AggregateFunction",
    "open", "connect", "sql", "execute", "mv", "CheckpointResult", "Connection", "Config", "LaminarConfig", "ExecuteResult",
    "QueryResult", "QueryStream", "Subscription", "AsyncSubscription", "CallbackSubscription", "Writer",
    "BatchWriter", "PipelineMetrics", "SinkMetrics", "SourceMetrics", "StreamMetrics", "SourceInfo",
    "SinkInfo", "StreamInfo", "QueryInfo", "PipelineNode", "PipelineEdge", "PipelineTopology",
    "MaterializedView", "Schema", "Column", "ChangeEvent", "ChangeRow", "Metrics", "LaminarError", "ConnectionError",
    "QueryError", "IngestionError", "SchemaError", "BatchSchemaError", "SubscriptionError",
    "StreamError", "CheckpointError", "ConnectorError", "EngineCause", "codes", "STATUS", "__version__",
]
