"""The connection: SQL, ingestion, subscriptions, catalog, metrics."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pyarrow as pa

from . import _laminardb, codes
from ._arrow import csv_to_table, insert_into, json_to_table
from ._errors import BatchSchemaError, CheckpointError, ConnectionError, LaminarError, QueryError, SchemaError, rewrap
from .config import LaminarConfig, to_pairs
from .functions import AggregateFunction, ScalarFunction
from .result import ExecuteResult, QueryResult
from .subscription import CallbackSubscription, QueryStream, Subscription, _Bounded
from .writer import Writer

_IDENT = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"]|"")+")$')
_HIDDEN = "__laminar_q"


class _Capsules:
    """A (schema, array) capsule pair as an object pyarrow can import (``__arrow_c_array__``)."""

    def __init__(self, schema, array):
        self._pair = (schema, array)

    def __arrow_c_array__(self, requested_schema=None):
        return self._pair


@dataclass
class SourceMetrics:
    name: str
    rows_in: int = 0
    rows_late: int = 0
    watermark_ms: Optional[int] = None
    queue_depth: int = 0
    # A connector source's partitions: {"0": {"position", "lag", "records", "bytes", "malformed"}}.
    partitions: Dict[str, Dict[str, Optional[int]]] = field(default_factory=dict)
    # The source's queue capacity in events (the `queue_capacity` setting).
    capacity: int = 64

    # The established package's names for the same figures.
    @property
    def total_events(self) -> int:
        return self.rows_in

    @property
    def pending(self) -> int:
        return self.queue_depth

    @property
    def watermark(self) -> int:
        """The watermark in epoch ms (0 before the first)."""
        return self.watermark_ms if self.watermark_ms is not None else 0

    @property
    def utilization(self) -> float:
        return self.queue_depth / self.capacity if self.capacity else 0.0

    @property
    def is_backpressured(self) -> bool:
        return self.capacity > 0 and self.queue_depth >= self.capacity


@dataclass
class StreamMetrics:
    name: str
    rows_out: int = 0
    rows_late: int = 0
    late_pairs: int = 0
    state_bytes: int = 0
    # Groups spilled to the RocksDB state backend (state_backend='rocksdb'), 0 otherwise.
    spilled_groups: int = 0
    watermark_ms: Optional[int] = None
    # Subscriptions that have not been cancelled or dropped.
    subscribers: int = 0
    # 1 once the stream has failed: reads and subscriptions of it raise its error.
    failed: int = 0


@dataclass
class SinkMetrics:
    name: str
    # Rows and batches written (with checkpoints: published once their checkpoint is durable).
    rows_out: int = 0
    batches_out: int = 0
    # 1 once the sink has failed: it writes nothing more and checkpoints fail until DROP SINK.
    failed: int = 0
    # A KAFKA sink with exactly-once delivery: its transactions (one per epoch with results).
    transactions_committed: Optional[int] = None
    transactions_aborted: Optional[int] = None


@dataclass
class PipelineMetrics:
    rows_in: int = 0
    rows_out: int = 0
    events_processed: int = 0
    # Nanoseconds the pipeline waited for subscribers with on_full = "block"; bytes the RocksDB
    # state backend holds (None with state_backend = "memory").
    blocked_ns: int = 0
    state_backend_bytes: Optional[int] = None
    sources: List[SourceMetrics] = field(default_factory=list)
    streams: List[StreamMetrics] = field(default_factory=list)
    sinks: List[SinkMetrics] = field(default_factory=list)
    # Seconds since the connection opened, and "running" (metrics of a closed connection raise).
    uptime_secs: float = 0.0
    state: str = "running"

    # The established package's names for the same figures.
    @property
    def total_events_ingested(self) -> int:
        return self.rows_in

    @property
    def total_events_emitted(self) -> int:
        return self.rows_out

    @property
    def total_events_dropped(self) -> int:
        """Rows dropped as late (counted per source)."""
        return sum(s.rows_late for s in self.sources)

    @property
    def total_cycles(self) -> int:
        return self.events_processed

    @property
    def total_batches(self) -> int:
        return self.events_processed

    @property
    def source_count(self) -> int:
        return len(self.sources)

    @property
    def stream_count(self) -> int:
        return len(self.streams)

    @property
    def sink_count(self) -> int:
        return len(self.sinks)

    @property
    def pipeline_watermark(self) -> int:
        """The lowest watermark over the sources that have one (epoch ms), 0 when none has."""
        wms = [s.watermark_ms for s in self.sources if s.watermark_ms is not None]
        return min(wms) if wms else 0


class CheckpointResult(int):
    """A checkpoint taken: its epoch (the ``int`` value, also ``checkpoint_id``); true, since a
    failed checkpoint raises instead."""

    @property
    def checkpoint_id(self) -> int:
        return int(self)

    @property
    def success(self) -> bool:
        return True

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"CheckpointResult(checkpoint_id={int(self)})"


class _Info:
    """A catalog entry: attributes, and item access by the same names (``info["name"]``)."""

    _fields: tuple = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self._fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self._fields else default

    def keys(self) -> List[str]:
        return list(self._fields)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, dict):
            return {k: getattr(self, k) for k in self._fields} == other
        return type(other) is type(self) and all(getattr(self, k) == getattr(other, k) for k in self._fields)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields if k != "schema")
        return f"{type(self).__name__}({body})"


class SourceInfo(_Info):
    """A source or table: name, schema, watermark_column, sql, and kind (``"source"`` or
    ``"table"``)."""

    _fields = ("name", "sql", "kind", "schema", "watermark_column")

    def __init__(self, name: str, sql: str, kind: str, schema: pa.Schema, watermark_column: Optional[str]):
        self.name, self.sql, self.kind, self.schema, self.watermark_column = name, sql, kind, schema, watermark_column


class StreamInfo(_Info):
    """A stream or materialized view: name, kind, stream_kind, sql, inputs, failed."""

    _fields = ("name", "kind", "stream_kind", "sql", "inputs", "failed")

    def __init__(self, name: str, kind: str, stream_kind: str, sql: str, inputs: List[str], failed: bool):
        self.name, self.kind, self.stream_kind, self.sql, self.inputs, self.failed = name, kind, stream_kind, sql, inputs, failed


class SinkInfo(_Info):
    """A sink: name, sql, input (the stream or source it writes), failed."""

    _fields = ("name", "sql", "input", "failed")

    def __init__(self, name: str, sql: str, input: str, failed: bool):  # noqa: A002
        self.name, self.sql, self.input, self.failed = name, sql, input, failed


class QueryInfo(_Info):
    """An active subscription: id, stream, kind (``"pull"`` or ``"callback"``), and sql (the
    query or stream name it was made with)."""

    _fields = ("id", "stream", "kind", "sql")

    def __init__(self, id: int, stream: str, kind: str, sql: str):  # noqa: A002
        self.id, self.stream, self.kind, self.sql = id, stream, kind, sql


class PipelineNode(_Info):
    """A node of :class:`PipelineTopology`: name, node_type (``"source"``, ``"table"``,
    ``"stream"``, ``"materialized view"``, ``"sink"``) and sql."""

    _fields = ("name", "node_type", "sql")

    def __init__(self, name: str, node_type: str, sql: Optional[str]):
        self.name, self.node_type, self.sql = name, node_type, sql

    @property
    def kind(self) -> str:
        return self.node_type


class PipelineEdge(_Info):
    """An edge of :class:`PipelineTopology`: data flows from ``from_node`` to ``to_node``."""

    _fields = ("from_node", "to_node")

    def __init__(self, from_node: str, to_node: str):
        self.from_node, self.to_node = from_node, to_node


class PipelineTopology:
    """The pipeline graph: ``nodes`` and ``edges``."""

    def __init__(self, nodes: List[PipelineNode], edges: List[PipelineEdge]):
        self.nodes = nodes
        self.edges = edges

    def __repr__(self) -> str:
        return f"PipelineTopology(nodes={[n.name for n in self.nodes]}, edges={[(e.from_node, e.to_node) for e in self.edges]})"


#: Catalog kinds data is pushed into, and kinds of continuous queries.
_PUSHED = ("source", "table")
_QUERIES = ("stream", "materialized view")


class Connection:
    """An open LaminarDB database (in memory today). Thread-safe. ``with`` / ``async with``
    close it. Create with :func:`laminardb.open`."""

    def __init__(
        self,
        path: str = ":memory:",
        config: Union[LaminarConfig, Dict[str, Any], None] = None,
        functions: Optional[Sequence[Union[ScalarFunction, AggregateFunction]]] = None,
    ):
        pairs = to_pairs(config)
        for f in functions or ():
            if not isinstance(f, (ScalarFunction, AggregateFunction)):
                raise TypeError(f"functions must be ScalarFunction or AggregateFunction objects, not {type(f).__name__}")
        specs = [f._spec() for f in functions or () if isinstance(f, ScalarFunction)]
        aggregates = [f._spec() for f in functions or () if isinstance(f, AggregateFunction)]
        try:
            self._db = _laminardb.Database(path, pairs, specs, aggregates)
        except LaminarError as e:
            if "open in another process" in e.message or "already open in this process" in e.message:
                raise rewrap(e, ConnectionError, codes.CONNECTION_IN_USE) from None
            if e.status in ("NOT_IMPLEMENTED", "INVALID_ARGUMENT", "IO"):
                raise rewrap(e, ConnectionError, codes.CONNECTION_FAILED) from None
            raise
        settings = dict(pairs)
        self._durable = (path != ":memory:" or "storage_dir" in settings) and settings.get("durability") != "memory"
        self._opened = time.monotonic()
        self._path = path
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._queries: Dict[int, Any] = {}
        self._schemas: Dict[str, pa.Schema] = {}

    # ------------------------------------------------------------------ functions
    def register_function(
        self,
        name: str,
        fn: Optional[Callable[..., Any]] = None,
        arg_types: Sequence[pa.DataType] = (),
        return_type: Optional[pa.DataType] = None,
        volatility: str = "immutable",
    ) -> Any:
        """Registers a Python scalar function (see :mod:`laminardb.functions`) that the
        statements from now on — continuous queries and ad-hoc SQL — call as ``name(...)``.
        ``fn`` takes one ``pyarrow.Array`` per argument and returns a ``pyarrow.Array``. Without
        ``fn``, returns a decorator. A durable database replays its streams' statements when it
        opens: pass their functions to :func:`laminardb.open` (``functions=``) instead."""
        if return_type is None:
            raise TypeError("register_function needs return_type (a pyarrow.DataType)")
        if fn is None:

            def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
                self.register_function(name, f, arg_types, return_type, volatility)
                return f

            return decorate
        spec = ScalarFunction(name, fn, tuple(arg_types), return_type, volatility)
        self._check()
        self._db.register_scalar_function(*spec._spec())
        return fn

    def register_aggregate_function(
        self,
        name: str,
        accumulator: Callable[[], Any],
        input_types: Sequence[pa.DataType],
        return_type: pa.DataType,
        state_types: Sequence[pa.DataType],
        volatility: str = "immutable",
    ) -> None:
        """Registers a Python aggregate function (see :mod:`laminardb.functions`) for the
        statements from now on: ``accumulator()`` makes the state of one group (or window), an
        object with ``update(*arrays)``, ``merge(states)``, ``state()`` and ``evaluate()``;
        over a changelog input it is refused. For a durable database whose streams call it, pass
        it to :func:`laminardb.open` (``functions=``) instead."""
        spec = AggregateFunction(name, accumulator, tuple(input_types), return_type, tuple(state_types), volatility)
        self._check()
        self._db.register_aggregate_function(*spec._spec())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Pipelines run from the moment a stream is created; kept for compatibility (no-op)."""
        self._check()

    def close(self) -> None:
        """Stops the pipelines and closes the database. Idempotent. Subscriptions made here are
        cancelled (their reads return None); writers then raise ConnectionError
        (CONNECTION_CLOSED)."""
        for q in list(self._queries.values()):
            try:
                q.cancel()
            except LaminarError:
                pass
        self._db.close()

    def shutdown(self) -> None:
        """Closes the connection; unlike :meth:`close`, raises ConnectionError when it is
        closed already."""
        self._check()
        self.close()

    @property
    def is_checkpoint_enabled(self) -> bool:
        """Whether :meth:`checkpoint` can take checkpoints: a durable database (opened on a
        directory, or with ``storage_dir``)."""
        self._check()
        return self._durable

    @property
    def is_closed(self) -> bool:
        return self._db.is_closed

    def _check(self) -> None:
        if self._db.is_closed:
            raise ConnectionError("the connection is closed", codes.CONNECTION_CLOSED, "CLOSED")

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ SQL
    def execute(self, sql: str) -> ExecuteResult:
        """Runs one or more ``;``-separated statements; the result of the last."""
        self._check()
        try:
            return ExecuteResult(*self._db.execute(sql))
        finally:
            # Any statement of the text may have been DDL (not only the last), and a text that
            # failed part-way may have run some: the cached schemas are re-read on next use.
            self._schemas.clear()

    def query(self, sql: str) -> QueryResult:
        """Runs an ad-hoc SELECT (over sources' retained rows and materialized views), SHOW,
        DESCRIBE or EXPLAIN and returns its rows. A materialized view that has failed raises
        :class:`~laminardb.StreamError` instead of answering stale rows. A value the query itself
        cannot compute (an overflow, a bad cast) is a :class:`QueryError` with status
        ``INVALID_DATA``, not a :class:`BatchSchemaError`: nothing was pushed."""
        self._check()
        try:
            return QueryResult._from_native(self._db.query(sql))
        except BatchSchemaError as e:
            raise rewrap(e, QueryError, codes.QUERY_FAILED) from e.__cause__

    sql = query

    def stream(self, sql: str) -> "QueryStream":
        """The rows of an ad-hoc query as a :class:`QueryStream` of QueryResult objects, one
        per batch (iterate it, or ``try_next``; ``cancel`` drops what is left)."""
        return QueryStream(sql, self.query(sql).to_arrow().to_batches())

    def explain(self, sql: str) -> str:
        """The plan of a ``SELECT`` as text: the streaming plan (as it would run in a stream)
        when the query can run continuously, else the batch plan an ad-hoc query runs (a query
        over ``VALUES``, say); or the plan of a ``CREATE STREAM``/``CREATE MATERIALIZED VIEW``
        statement. Nothing is created."""
        text = sql.strip().rstrip(";")
        if re.match(r"(?is)^\s*(select|with)\b", text):
            try:
                rows = self.query(f"EXPLAIN CREATE STREAM {_HIDDEN}explain AS {text}").to_arrow()
            except QueryError as e:
                if "continuous query cannot" not in e.message and "no streaming input" not in e.message:
                    raise
                rows = self.query(f"EXPLAIN {text}").to_arrow()
                return "\n".join(str(v) for col in rows.columns for v in col.to_pylist())
        else:
            rows = self.query(f"EXPLAIN {text}").to_arrow()
        return "\n".join(rows.column(0).to_pylist())

    # ------------------------------------------------------------------ ingestion
    def _arrow_schema(self, name: str) -> pa.Schema:
        s = self._schemas.get(name)
        if s is None:
            s = self._schemas[name] = pa.schema(self._db.schema(name))
        return s

    def insert(self, name: str, data: Any) -> int:
        """Pushes rows into a source and waits until they are processed; returns the row count.
        ``data``: a dict (one row), a dict of lists, a list of dicts, a pyarrow RecordBatch or
        Table, a pandas or polars DataFrame, or any object with ``__arrow_c_stream__`` /
        ``__arrow_c_array__``. A column that does not fit the source raises
        :class:`BatchSchemaError` (a SchemaError and an IngestionError) naming it, and nothing
        of that batch is applied."""
        self._check()
        return insert_into(self._db, name, data, self._arrow_schema(name))

    def insert_json(self, name: str, text: str) -> int:
        """Pushes JSON rows: an array of objects, one object, or one object per line."""
        self._check()
        schema = self._arrow_schema(name)
        return insert_into(self._db, name, json_to_table(text, schema), schema)

    def insert_csv(self, name: str, text: str) -> int:
        """Pushes CSV rows (with a header line), read as the source's column types."""
        self._check()
        schema = self._arrow_schema(name)
        return insert_into(self._db, name, csv_to_table(text, schema), schema)

    def writer(self, name: str) -> Writer:
        """A writer for a source (push batches and watermarks without waiting)."""
        self._check()
        return Writer(self._db.writer(name), self)

    def create_table(self, name: str, schema: Union[pa.Schema, Dict[str, str]]) -> ExecuteResult:
        """Creates a source (an append-only table you push rows into) with this schema.
        ``schema``: a pyarrow schema, or a dict of column name to type: an Arrow type name as
        pyarrow writes it (``"int64"``, ``"float64"``, ``"string"``, ``"bool"``,
        ``"timestamp[ms]"``, ``"decimal128(10, 2)"`` — Arrow's meaning, so ``"int8"`` is 8 bits)
        or a SQL type (``"BIGINT"``, ``"VARCHAR"``, ``"DECIMAL(10, 2)"``). For a keyed table use
        ``CREATE TABLE … PRIMARY KEY (…)`` with ``execute``."""
        if isinstance(schema, pa.Schema):
            cols = ", ".join(f"{quote_ident(f.name)} {_sql_type(f.type)}" for f in schema)
        else:
            cols = ", ".join(f"{quote_ident(n)} {_column_type(n, t)}" for n, t in schema.items())
        return self.execute(f"CREATE SOURCE {quote_ident(name)} ({cols})")

    # ------------------------------------------------------------------ catalog
    def schema(self, name: str) -> pa.Schema:
        """The schema of a source, stream or materialized view."""
        self._check()
        return pa.schema(self._db.schema(name))

    def _catalog(self) -> List[Dict[str, str]]:
        self._check()
        s, a = self._db.catalog()
        rows = pa.Table.from_batches([pa.record_batch(_Capsules(s, a))]).to_pylist()
        return [r for r in rows if not r["name"].startswith(_HIDDEN)]

    def list_tables(self) -> List[str]:
        """Names of what data is pushed into: sources and (keyed) tables."""
        return [r["name"] for r in self._catalog() if r["kind"] in _PUSHED]

    tables = list_tables

    def list_streams(self) -> List[str]:
        """Names of the streams and materialized views."""
        return [r["name"] for r in self._catalog() if r["kind"] in _QUERIES]

    def list_sinks(self) -> List[str]:
        """Names of the sinks (``CREATE SINK … INTO …``)."""
        return [r["name"] for r in self._catalog() if r["kind"] == "sink"]

    def materialized_views(self) -> List[str]:
        """Names of the streams and materialized views (as :meth:`list_streams`)."""
        return self.list_streams()

    def sources(self) -> List[SourceInfo]:
        """Every source and table (what data is pushed into), as :class:`SourceInfo`: name,
        schema, watermark_column, sql, kind."""
        out = []
        for r in self._catalog():
            if r["kind"] not in _PUSHED:
                continue
            m = re.search(r"(?is)\bWATERMARK\s+FOR\s+(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_]*)", r["sql"] or "")
            wm = None
            if m:
                wm = m.group(1)
                wm = wm[1:-1].replace('""', '"') if wm.startswith('"') else wm.lower()
            out.append(SourceInfo(r["name"], r["sql"], r["kind"], self._arrow_schema(r["name"]), wm))
        return out

    def stats(self, name: str) -> Dict[str, Any]:
        """Figures of one source, stream or sink as a dict: name, kind, and its metrics
        (``rows_in``… for a source, ``rows_out``… for a stream or sink)."""
        for kind, items in (("source", self.all_source_metrics()), ("stream", self.all_stream_metrics()), ("sink", self.metrics().sinks)):
            for m in items:
                if m.name == name:
                    d = {k: v for k, v in m.__dict__.items() if not k.startswith("_")}
                    d["kind"] = kind
                    return d
        raise SchemaError(f"no source, stream or sink named '{name}'", codes.TABLE_NOT_FOUND, "NOT_FOUND")

    def streams(self) -> List[StreamInfo]:
        """Every stream and materialized view, as :class:`StreamInfo`: name, kind, stream_kind,
        sql, inputs, and failed (True once it has failed: reads and subscriptions of it raise
        :class:`StreamError`). Entries also answer ``info["name"]``."""
        failed = {r["name"] for r in self._metric_rows() if r["kind"] == "stream" and r["metric"] == "failed" and r["value"]}
        return [
            StreamInfo(r["name"], r["kind"], r["stream_kind"], r["sql"], [i for i in r["inputs"].split(",") if i], r["name"] in failed)
            for r in self._catalog() if r["kind"] in _QUERIES
        ]

    def sinks(self) -> List[SinkInfo]:
        """Every sink, as :class:`SinkInfo`: name, sql, input (the stream or source it writes),
        and failed (True once it has failed: it writes nothing more and checkpoints fail until it
        is dropped)."""
        failed = {r["name"] for r in self._metric_rows() if r["kind"] == "sink" and r["metric"] == "failed" and r["value"]}
        return [SinkInfo(r["name"], r["sql"], r["inputs"], r["name"] in failed) for r in self._catalog() if r["kind"] == "sink"]

    def topology(self) -> PipelineTopology:
        """The pipeline graph: PipelineNode objects (name, node_type, sql) and
        PipelineEdge objects (from_node → to_node)."""
        cat = self._catalog()
        nodes = [PipelineNode(r["name"], r["kind"], r["sql"]) for r in cat]
        edges = [PipelineEdge(i, r["name"]) for r in cat for i in r["inputs"].split(",") if i]
        return PipelineTopology(nodes, edges)

    # ------------------------------------------------------------------ subscriptions
    def _register(self, q) -> None:
        with self._lock:
            self._queries[q.id] = q

    def _release(self, qid: int, hidden: Optional[str]) -> Callable[[], None]:
        def done() -> None:
            with self._lock:
                self._queries.pop(qid, None)
            if hidden is not None and not self._db.is_closed:
                try:
                    self._db.execute(f"DROP STREAM IF EXISTS {hidden}")
                except LaminarError:
                    pass

        return done

    def _target(self, sql: str):
        """A stream name for `sql`: itself when it names a stream, else a hidden stream over it."""
        text = sql.strip().rstrip(";").strip()
        if _IDENT.match(text):
            return (text[1:-1].replace('""', '"') if text.startswith('"') else text), None
        if (_laminardb.statement_count(text) or 1) > 1:
            raise QueryError("subscribe takes one SELECT statement (no ';' between statements)", codes.QUERY_FAILED, "INVALID_ARGUMENT")
        qid = next(self._ids)
        hidden = f"{_HIDDEN}{qid}"
        try:
            self.execute(f"CREATE STREAM {hidden} AS {text}")
        except QueryError as e:
            if "continuous query cannot" not in e.message and "no streaming input" not in e.message:
                raise
            # A bounded query (over VALUES, say): its rows, then the end.
            return _Bounded(self.query(text).to_arrow()), None
        return hidden, hidden

    def _subscribe(self, name, hidden: Optional[str], options: Dict[str, Any], sql: Optional[str] = None) -> Subscription:
        qid = next(self._ids)
        if isinstance(name, _Bounded):
            sub = Subscription(name, "query", self._release(qid, None), qid, sql=sql)
            self._register(sub)
            return sub
        try:
            native = self._db.subscribe(name, [(k, str(v)) for k, v in options.items()])
        except LaminarError:
            self._release(qid, hidden)()
            raise
        sub = Subscription(native, name, self._release(qid, hidden), qid, sql=sql if hidden else None)
        self._register(sub)
        return sub

    def subscribe(self, sql: str, **options) -> Subscription:
        """Subscribes to the results of a continuous query (``SELECT …``, run as a stream until
        the subscription ends) or of a stream named by ``sql``. Options: ``buffer_size``,
        ``on_full`` (``"lag"`` | ``"block"``), ``resume_after_epoch`` (durable databases: first
        every kept result of the epochs after this one; see :attr:`Subscription.epoch`)."""
        self._check()
        name, hidden = self._target(sql)
        return self._subscribe(name, hidden, options, sql=sql)

    async def subscribe_async(self, sql: str, **options) -> Subscription:
        """:meth:`subscribe`, awaited (``sub = await conn.subscribe_async(…)``); iterate the
        subscription with ``async for``."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.subscribe(sql, **options))

    def subscribe_stream(self, name: str, **options) -> Subscription:
        """Subscribes to a stream or materialized view by name."""
        self._check()
        return self._subscribe(name, None, options)

    async def subscribe_stream_async(self, name: str, **options) -> Subscription:
        """:meth:`subscribe_stream`, awaited."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.subscribe_stream(name, **options))

    def query_stream(self, name: str, filter: Optional[str] = None, **options) -> Subscription:
        """Subscribes to a stream, keeping only rows that satisfy the SQL condition ``filter``."""
        self._check()
        if filter is None:
            return self.subscribe_stream(name, **options)
        return self.subscribe(f"SELECT * FROM {quote_ident(name)} WHERE {filter}", **options)

    def _callback(self, name, hidden, on_data, on_error, options, sql: Optional[str] = None) -> CallbackSubscription:
        qid = next(self._ids)
        if isinstance(name, _Bounded):
            raise QueryError(
                "a query without a streaming source is bounded: read it with query() or subscribe(), not a callback",
                codes.QUERY_FAILED, "INVALID_ARGUMENT",
            )
        try:
            sub = CallbackSubscription(
                self._db, name, on_data, on_error, [(k, str(v)) for k, v in options.items()],
                self._release(qid, hidden), qid, sql=sql,
            )
        except LaminarError:
            self._release(qid, hidden)()
            raise
        self._register(sub)
        return sub

    def subscribe_callback(self, sql: str, on_data, on_error=None, **options) -> CallbackSubscription:
        """Calls ``on_data(QueryResult)`` for every batch of a continuous query, on an engine
        thread. ``wait()`` blocks until it ends; ``cancel()`` ends it."""
        self._check()
        name, hidden = self._target(sql)
        return self._callback(name, hidden, on_data, on_error, options, sql=sql)

    def subscribe_stream_callback(self, name: str, on_data, on_error=None, **options) -> CallbackSubscription:
        """As :meth:`subscribe_callback`, for a stream named ``name``."""
        self._check()
        return self._callback(name, None, on_data, on_error, options)

    def queries(self) -> List[QueryInfo]:
        """Active subscriptions, as :class:`QueryInfo`: id, stream, kind (pull or callback),
        sql."""
        self._check()
        with self._lock:
            items = list(self._queries.items())
        return [
            QueryInfo(i, q._name, "callback" if isinstance(q, CallbackSubscription) else "pull", getattr(q, "_sql", None) or q._name)
            for i, q in items
        ]

    def cancel_query(self, query_id: int) -> bool:
        """Cancels an active subscription by id (True); SchemaError (TABLE_NOT_FOUND) when no
        active subscription has that id."""
        self._check()
        with self._lock:
            q = self._queries.get(query_id)
        if q is None:
            raise SchemaError(f"query {query_id} not found (no active subscription has that id)", codes.TABLE_NOT_FOUND, "NOT_FOUND")
        q.cancel()
        return True

    @property
    def active_query_count(self) -> int:
        self._check()
        with self._lock:
            return len(self._queries)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> "CheckpointResult":
        """Takes a checkpoint of everything pushed before the call and returns it as a
        :class:`CheckpointResult` (an ``int``: its epoch, also ``.checkpoint_id``). Raises
        CheckpointError ("checkpointing is not enabled") on an in-memory database, and on a
        failed write (the previous checkpoint stays usable)."""
        self._check()
        try:
            return CheckpointResult(self._db.checkpoint())
        except LaminarError as e:
            raise rewrap(e, CheckpointError) from None

    # ------------------------------------------------------------------ metrics
    def _metric_rows(self) -> List[Dict[str, Any]]:
        self._check()
        s, a = self._db.metrics()
        return pa.Table.from_batches([pa.record_batch(_Capsules(s, a))]).to_pylist()

    def metrics_text(self) -> str:
        """Every metric in the Prometheus text exposition format (0.0.4): ``laminardb_``
        families in base units, ``_total`` counters, checkpoint histograms. What the
        ``metrics_addr`` endpoint serves at ``GET /metrics``."""
        self._check()
        return self._db.metrics_text()

    def metrics_endpoint(self) -> Optional[str]:
        """``host:port`` the ``metrics_addr`` endpoint listens on (with port 0 in the config, the
        port the system chose); None when no endpoint was configured."""
        self._check()
        return self._db.metrics_endpoint()

    def metrics(self) -> PipelineMetrics:
        """Totals and per-source, per-stream figures."""
        rows = self._metric_rows()
        sources: Dict[str, SourceMetrics] = {}
        streams: Dict[str, StreamMetrics] = {}
        sinks: Dict[str, SinkMetrics] = {}
        m = PipelineMetrics()
        for r in rows:
            if r["kind"] == "source":
                setattr(sources.setdefault(r["name"], SourceMetrics(r["name"])), r["metric"], r["value"])
            elif r["kind"] == "stream":
                setattr(streams.setdefault(r["name"], StreamMetrics(r["name"])), r["metric"], r["value"])
            elif r["kind"] == "sink":
                setattr(sinks.setdefault(r["name"], SinkMetrics(r["name"])), r["metric"], r["value"])
            elif r["kind"] == "partition":
                src, part = r["name"].rsplit("/", 1)
                sources.setdefault(src, SourceMetrics(src)).partitions.setdefault(part, {})[r["metric"]] = r["value"]
            elif r["kind"] != "pipeline":
                continue  # a kind this version does not know
            else:
                setattr(m, r["metric"], r["value"])
        m.uptime_secs = time.monotonic() - self._opened
        m.sources = [s for n, s in sorted(sources.items()) if not n.startswith(_HIDDEN)]
        m.streams = [s for n, s in sorted(streams.items()) if not n.startswith(_HIDDEN)]
        m.sinks = [s for _, s in sorted(sinks.items())]
        return m

    def all_source_metrics(self) -> List[SourceMetrics]:
        return self.metrics().sources

    def all_stream_metrics(self) -> List[StreamMetrics]:
        return self.metrics().streams

    def source_metrics(self, name: str) -> Optional[SourceMetrics]:
        """The figures of one source, or None when there is no source of that name."""
        for s in self.all_source_metrics():
            if s.name == name:
                return s
        return None

    def stream_metrics(self, name: str) -> Optional[StreamMetrics]:
        """The figures of one stream or materialized view, or None when there is none of that
        name."""
        for s in self.all_stream_metrics():
            if s.name == name:
                return s
        return None

    @property
    def total_events_processed(self) -> int:
        return self.metrics().events_processed

    @property
    def source_count(self) -> int:
        """How many sources and tables data is pushed into."""
        return len(self.list_tables())

    @property
    def sink_count(self) -> int:
        """How many sinks."""
        return len(self.list_sinks())

    @property
    def pipeline_state(self) -> str:
        """``"running"`` (ConnectionError once closed)."""
        self._check()
        return "running"

    @property
    def pipeline_watermark(self) -> int:
        """The lowest watermark over the sources that have one (epoch ms), 0 when none has."""
        return self.metrics().pipeline_watermark

    def __repr__(self) -> str:
        return "Connection(closed)" if self.is_closed else "Connection(open)"


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"`` doubled), so that it is always read as one name,
    whatever it contains. An empty name or one with a NUL character is refused."""
    if not isinstance(name, str):
        raise TypeError(f"a name must be a str, got {type(name).__name__}")
    if name == "" or "\0" in name:
        raise QueryError("a name must be non-empty and contain no NUL character", codes.QUERY_FAILED, "INVALID_ARGUMENT")
    return '"' + name.replace('"', '""') + '"'


def _check_type(column: str, t: str) -> str:
    """A column type given as text, checked to be one type name and nothing more: words, digits,
    ``( ) < > [ ]`` and commas inside brackets only. Anything else (a quote, a semicolon, a
    comment, a comma that would start another column) is refused, so a type string cannot add
    columns or statements."""
    if not isinstance(t, str):
        raise TypeError(f"the type of column {column!r} must be a str, got {type(t).__name__}")
    depth = 0
    ok = t.strip() != ""
    for ch in t:
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
            ok = ok and depth >= 0
        elif ch == ",":
            ok = ok and depth > 0
        elif not (ch.isascii() and (ch.isalnum() or ch in "_ ")):
            ok = False
    if not ok or depth != 0:
        shown = t if len(t) <= 200 else t[:200] + "…"
        raise QueryError(f"column {column!r}: {shown!r} is not a SQL type name", codes.QUERY_FAILED, "INVALID_ARGUMENT")
    return t


def _column_type(column: str, t: str) -> str:
    """A dict-form column type: an Arrow type name (pyarrow's spelling) mapped to its SQL type,
    else checked as a SQL type name."""
    if isinstance(t, str):
        arrow = _arrow_type_named(t.strip())
        if arrow is not None:
            return _sql_type(arrow)
    return _check_type(column, t)


def _arrow_type_named(name: str) -> Optional[pa.DataType]:
    """The Arrow type pyarrow names ``name`` (``int64``, ``timestamp[ms, tz=UTC]``,
    ``decimal128(10, 2)``), or None."""

    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError):
        pass
    m = re.fullmatch(r"timestamp\[(s|ms|us|ns)(?:,\s*tz=([^\]]+))?\]", name)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    m = re.fullmatch(r"decimal(?:128)?\((\d+),\s*(\d+)\)", name)
    if m:
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    return None

def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_int8(t):
        return "TINYINT"
    if pa.types.is_int16(t):
        return "SMALLINT"
    if pa.types.is_int32(t):
        return "INT"
    if pa.types.is_uint8(t):
        return "TINYINT UNSIGNED"
    if pa.types.is_uint16(t):
        return "SMALLINT UNSIGNED"
    if pa.types.is_uint32(t):
        return "INT UNSIGNED"
    if pa.types.is_uint64(t):
        return "BIGINT UNSIGNED"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return "REAL"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    if pa.types.is_binary(t):
        return "BYTEA"
    raise QueryError(f"no SQL type for Arrow type {t}", codes.QUERY_FAILED, "INVALID_ARGUMENT")
