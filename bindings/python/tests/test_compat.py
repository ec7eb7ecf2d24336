"""The established `laminardb` package's API where it differs from ours at first sight: Arrow type
names, ad-hoc (bounded) queries where a stream is expected, a name plus `storage_dir`, the info
and metrics objects, and the small value types of `laminardb.types`."""

import laminardb
import pyarrow as pa
import pytest
from laminardb.types import ChangeEvent, ChangeRow, Column, MaterializedView, Schema

VALUES = "SELECT * FROM (VALUES (1, 'a', 1.5), (2, 'b', 2.5), (3, 'c', 3.5)) AS t(id, name, x)"


def test_arrow_type_names_in_the_dict_form():
    with laminardb.open() as db:
        db.create_table(
            "e",
            {
                "a": "int8", "b": "uint32", "c": "int64", "d": "float32", "f": "float64", "g": "string",
                "h": "large_string", "i": "bool", "j": "timestamp[ms]", "k": "date32", "l": "binary",
                "m": "decimal128(10, 2)", "n": "VARCHAR", "o": "DOUBLE",
            },
        )
        s = db.schema("e")
        want = [pa.int8(), pa.uint32(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.string(), pa.bool_(),
                pa.timestamp("us"), pa.date32(), pa.binary(), pa.decimal128(10, 2), pa.string(), pa.float64()]
        assert [f.type for f in s] == want
        # A type string is still checked: it cannot add columns or statements.
        with pytest.raises(laminardb.QueryError, match="not a SQL type name"):
            db.create_table("bad", {"a": "int64, b int64"})


def test_bounded_queries_where_streams_are_expected():
    with laminardb.open() as db:
        # explain: the batch plan of an ad-hoc query that cannot run continuously
        assert "Values" in db.explain(VALUES) or "values" in db.explain(VALUES).lower()
        # stream: a QueryStream over the batches
        st = db.stream(VALUES)
        assert st.is_active and "QueryStream" in repr(st)
        assert sum(r.num_rows for r in st) == 3 and not st.is_active and st.try_next() is None
        # subscribe: the rows, then the end
        sub = db.subscribe(VALUES)
        assert sub.is_active and sub.schema.names == ["id", "name", "x"]
        assert sorted(sub.next().fetchall()) == [(1, "a", 1.5), (2, "b", 2.5), (3, "c", 3.5)]
        assert sub.next() is None and not sub.is_active and "finished" in repr(sub)
        # a query of a stream is still continuous
        db.create_table("s", {"k": "int64"})
        live = db.subscribe("SELECT k FROM s")
        db.insert("s", {"k": [7]})
        assert live.next_timeout(5000).fetchall() == [(7,)]
        live.cancel()


def test_query_result_forms():
    with laminardb.open() as db:
        r = db.query(VALUES)
        assert r.to_dicts() == {"id": [1, 2, 3], "name": ["a", "b", "c"], "x": [1.5, 2.5, 3.5]}
        assert r.to_pylist()[0] == {"id": 1, "name": "a", "x": 1.5}
        assert list(r)[1] == (2, "b", 2.5) and r.num_batches >= 1
        assert repr(r).startswith("QueryResult(rows=3, columns=3)")
        assert len(r.to_df()) == 3
        assert r.pl(lazy=True).collect().height == 3


def test_a_name_with_storage_dir_is_a_durable_database_inside_it(tmp_path):
    cfg = laminardb.LaminarConfig(storage_dir=str(tmp_path), checkpoint_interval_ms=60_000)
    with laminardb.open("orders", config=cfg) as db:
        assert db.is_checkpoint_enabled
        db.create_table("o", {"id": "int64"})
        db.insert("o", {"id": [1, 2]})
        c1, c2 = db.checkpoint(), db.checkpoint()
        assert isinstance(c1, laminardb.CheckpointResult) and c2.checkpoint_id > c1.checkpoint_id
        assert int(c1) == c1.checkpoint_id and bool(c1) and f"checkpoint_id={int(c1)}" in repr(c1)
        with pytest.raises(laminardb.ConnectionError) as e:
            laminardb.open("orders", config=cfg)  # the same database, still open
        assert e.value.code == laminardb.codes.CONNECTION_IN_USE == 102
    assert (tmp_path / "orders").is_dir()
    with laminardb.open("orders", config=cfg) as db:
        assert db.list_tables() == ["o"]
    with laminardb.open() as mem:
        assert mem.is_checkpoint_enabled is False
        with pytest.raises(laminardb.CheckpointError):
            mem.checkpoint()


def test_info_metrics_and_topology_objects():
    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")
        db.execute("CREATE STREAM t AS SELECT k, SUM(v) AS total FROM s GROUP BY k")
        (src,) = db.sources()
        assert src.name == src["name"] == "s" and src.watermark_column == "ts" and src.schema.names == ["k", "v", "ts"]
        assert "SourceInfo" in repr(src)
        (st,) = db.streams()
        assert st.name == "t" and st.inputs == ["s"] and st["stream_kind"] == "changelog"
        topo = db.topology()
        assert [(e.from_node, e.to_node) for e in topo.edges] == [("s", "t")]
        assert {n.name: n.node_type for n in topo.nodes} == {"s": "source", "t": "stream"}
        # created before the rows arrive: a stream sees the rows pushed after it
        view = laminardb.mv(db, "totals", "SELECT k, COUNT(*) AS n FROM s GROUP BY k")
        db.insert("s", {"k": [1, 1], "v": [2, 3], "ts": [0, 1]})
        m = db.metrics()
        assert m.total_events_ingested == 2 and m.source_count == 1 and m.stream_count == 2 and m.uptime_secs >= 0
        sm = db.source_metrics("s")
        assert sm.total_events == 2 and sm.pending == 0 and not sm.is_backpressured and 0.0 <= sm.utilization <= 1.0
        assert db.source_metrics("nope") is None and db.stats("s")["rows_in"] == 2
        assert db.materialized_views() == db.list_streams() == ["t", "totals"]
        w = db.writer("s")
        assert w.name == "s" and w.schema.names == ["k", "v", "ts"] and repr(w) == "Writer('s', open)"
        w.watermark(5000)
        assert w.current_watermark == 5000
        w.close()
        assert repr(w) == "Writer('s', closed)"
        with pytest.raises(laminardb.IngestionError):
            _ = w.name
        with pytest.raises(TypeError):
            db.insert("s", [])
        q = db.subscribe_stream("t")
        (info,) = db.queries()
        assert info.id == q.id and info.kind == "pull" and info.stream == "t"
        q.cancel()
        with pytest.raises(laminardb.SchemaError, match="not found"):
            db.cancel_query(q.id)
        assert view.query().fetchall() == [(1, 2)] and "totals" in repr(view) and view.schema().names[:2] == ["k", "n"]
    assert repr(db) == "Connection(closed)"
    for call in (db.sources, db.queries, db.topology, db.metrics, db.shutdown):
        with pytest.raises(laminardb.ConnectionError, match="closed"):
            call()


def test_value_types():
    c = Column("id", "int64")
    assert c.nullable and c == Column("id", "int64", True)
    with pytest.raises(AttributeError):
        c.name = "other"  # frozen
    s = Schema(pa.schema([("a", pa.int64()), ("b", pa.string())]))
    assert s.names == ["a", "b"] and s["b"].type == "string" and s[0].name == "a" and len(s) == 2
    row = ChangeRow("Insert", {"a": 1})
    d = row.to_dict()
    d["a"] = 2
    assert row["a"] == 1 and row.keys() == ["a"] and row.values() == [1] and "Insert" in repr(row)
    ev = ChangeEvent(pa.table({"a": [1, 2], "__weight": [1, -1]}))
    assert len(ev) == 2 and [r.op for r in ev] == ["Insert", "Delete"] and ev.rows()[1].to_dict() == {"a": 2}
    with laminardb.open() as db:
        assert MaterializedView(db, "x", "SELECT 1").sql == "SELECT 1"
    assert laminardb.BatchWriter is laminardb.Writer and laminardb.LaminarConfig().buffer_size == 65536
    assert ("buffer_size", "65536") not in laminardb.LaminarConfig().to_pairs()  # the engine's default


def test_the_readme_quickstart_runs_as_written(capsys):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Python (`laminardb`)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md (Python quickstart)", "exec"), {})
    out = capsys.readouterr().out
    assert "sym" in out and "total" in out and " A " in out and "5" in out
