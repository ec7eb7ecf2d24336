"""Module functions, configuration, SQL, catalog, metrics and the connection lifecycle."""

import asyncio
import time

import laminardb
import pyarrow as pa
import pytest
from conftest import at, ms


def test_module_level_api_and_version():
    assert laminardb.__version__.count(".") == 2
    assert laminardb.STATUS["NOT_FOUND"] == 3 and laminardb.STATUS["CLOSED"] == 20
    r = laminardb.execute("CREATE SOURCE IF NOT EXISTS mod_src (a BIGINT)")
    assert r.ddl_type == "CREATE SOURCE"
    assert laminardb.sql("SELECT COUNT(*) AS c FROM mod_src").to_pylist() == [{"c": 0}]
    assert laminardb.codes.SQL_PARSE_ERROR == 401 and laminardb.codes.SHUTDOWN == 901


def test_open_connect_and_config():
    cfg = laminardb.LaminarConfig(buffer_size=8, workers=1, checkpoint_interval_ms=1000, idle_timeout=2.5)
    assert ("idle_timeout", "2500ms") in cfg.to_pairs()
    assert laminardb.Config is laminardb.LaminarConfig
    with laminardb.open(config=cfg) as db:
        assert not db.is_closed and db.pipeline_state == "running"
    assert db.is_closed and repr(db) == "Connection(closed)"
    with pytest.raises(laminardb.ConnectionError, match="closed"):
        _ = db.pipeline_state
    with laminardb.connect("laminar://:memory:") as db2:
        db2.start()
        assert db2.list_tables() == []
    with pytest.raises(laminardb.LaminarError) as e:
        laminardb.open(config={"wrokers": "2"})
    assert "did you mean 'workers'" in str(e.value)
    with pytest.raises(laminardb.ConnectionError) as e:
        laminardb.open("/dev/null/cannot-be-a-directory")
    assert e.value.code == laminardb.codes.CONNECTION_FAILED and e.value.status == "IO"
    assert "workers" in laminardb.LaminarConfig.keys()


def test_execute_result_and_queries(trades):
    db = trades
    r = db.execute("INSERT INTO trades VALUES ('A', 5, TIMESTAMP '2024-01-01 00:00:01'), ('B', 7, TIMESTAMP '2024-01-01 00:00:02')")
    assert r.result_type == "rows_affected" and r.rows_affected == 2 and int(r) == 2 and r.int() == 2
    assert r.ddl_type == "INSERT" and r.ddl_object == "trades"
    r = db.execute("CREATE MATERIALIZED VIEW tot AS SELECT sym, SUM(qty) AS q FROM trades GROUP BY sym")
    assert (r.result_type, r.ddl_type, r.ddl_object) == ("ddl", "CREATE MATERIALIZED VIEW", "tot")
    assert r.to_query_result().num_rows == 0
    r = db.execute("SHOW SOURCES")
    assert r.result_type == "query" and r.to_query_result().to_pylist() == [{"name": "trades"}]
    q = db.query("SELECT sym, qty FROM trades ORDER BY sym")
    assert q.columns == ["sym", "qty"] and q.num_rows == 2 and q.num_columns == 2 and len(q) == 2
    assert q.fetchone() == ("A", 5) and q.fetchmany(5) == [("B", 7)] and q.fetchone() is None
    assert q.fetchall() == []
    assert db.sql("SELECT sym FROM trades ORDER BY sym").fetchall() == [("A",), ("B",)]
    assert [r[0] for r in db.query("SELECT sym FROM trades ORDER BY sym")] == ["A", "B"]  # rows as tuples
    assert db.query("SELECT sym FROM trades ORDER BY sym").to_dicts() == {"sym": ["A", "B"]}  # columns
    assert sum(b.num_rows for b in db.stream("SELECT * FROM trades")) == 2
    assert isinstance(q.schema, pa.Schema) and q.to_arrow().num_rows == 2 and q.arrow() is q.to_arrow()
    assert "<table>" in q._repr_html_() and "sym" in repr(q)
    q.show()
    plan = db.explain("SELECT sym, COUNT(*) FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '1' MINUTE)")
    assert "Aggregate" in plan or "aggregate" in plan.lower()
    assert "explain" not in " ".join(db.list_streams())


def test_catalog_and_schema(trades, tmp_path):
    db = trades
    db.execute("CREATE MATERIALIZED VIEW tot AS SELECT sym, SUM(qty) AS q FROM trades GROUP BY sym")
    db.execute("CREATE TABLE prices (sym VARCHAR PRIMARY KEY, px DOUBLE)")
    # a keyed table is pushed into like a source, and is not a stream
    assert sorted(db.list_tables()) == ["prices", "trades"] == sorted(db.tables())
    assert sorted(db.list_streams()) == ["tot", "vol"]
    assert db.list_sinks() == [] and db.sinks() == []
    assert sorted(s["name"] for s in db.sources()) == ["prices", "trades"]
    streams = {s["name"]: s for s in db.streams()}
    assert streams["vol"]["inputs"] == ["trades"] and streams["tot"]["stream_kind"] == "changelog"
    topo = db.topology()
    assert ("trades", "vol") in [(e.from_node, e.to_node) for e in topo.edges] and len(topo.nodes) == 4
    assert {n.name: n.node_type for n in topo.nodes}["trades"] == "source" and "PipelineTopology" in repr(topo)
    s = db.schema("trades")
    assert s.names == ["sym", "qty", "ts"] and s.field("ts").type == pa.timestamp("us")
    assert "__weight" in db.schema("tot").names
    assert db.source_count == 2 and db.sink_count == 0  # trades and the table prices
    db.execute(f"CREATE SINK vol_out FROM vol INTO FILES WITH (path = '{tmp_path}', format = 'json')")
    assert db.list_sinks() == ["vol_out"] and db.sink_count == 1
    (k,) = db.sinks()
    assert k["input"] == "vol" and k["failed"] is False and "INTO FILES" in k["sql"]
    assert ("vol", "vol_out") in [(e.from_node, e.to_node) for e in db.topology().edges]
    assert [s.name for s in db.metrics().sinks] == ["vol_out"]
    db.execute("DROP SINK vol_out")
    assert db.list_sinks() == []
    r = db.create_table("events", pa.schema([("id", pa.int64()), ("name", pa.string()), ("at", pa.timestamp("us"))]))
    assert r.ddl_type == "CREATE SOURCE" and db.schema("events").names == ["id", "name", "at"]
    db.create_table("other", {"x": "DOUBLE"})
    assert "other" in db.list_tables()
    with pytest.raises(laminardb.SchemaError) as e:
        db.schema("trade")
    assert e.value.code == laminardb.codes.TABLE_NOT_FOUND and "did you mean 'trades'" in str(e.value)


def test_metrics_and_properties(trades):
    db = trades
    db.insert("trades", {"sym": ["A", "B", "A"], "qty": [1, 2, 3], "ts": [at(0), at(1), at(15)]})
    m = db.metrics()
    assert m.rows_in == 3 and m.events_processed >= 1
    sm = db.source_metrics("trades")
    assert sm.rows_in == 3 and sm.watermark_ms == ms(at(14))
    assert db.pipeline_watermark == sm.watermark_ms
    st = db.stream_metrics("vol")
    assert st.rows_out == 2  # the window [0, 10) closed with A and B
    assert [s.name for s in db.all_source_metrics()] == ["trades"]
    assert [s.name for s in db.all_stream_metrics()] == ["vol"]
    assert db.total_events_processed == m.events_processed
    assert db.source_metrics("nope") is None and db.stream_metrics("nope") is None
    assert m.total_events_ingested == m.rows_in and m.source_count == 1 and m.stream_count == 1


def test_checkpoint_and_close(trades):
    db = trades
    with pytest.raises(laminardb.CheckpointError) as e:
        db.checkpoint()
    assert "checkpointing is not enabled" in str(e.value)
    w = db.writer("trades")
    sub = db.subscribe_stream("vol")
    db.shutdown()
    db.close()  # idempotent
    assert db.is_closed
    with pytest.raises(laminardb.ConnectionError) as e:
        db.query("SELECT 1")
    assert e.value.code == laminardb.codes.CONNECTION_CLOSED
    with pytest.raises(laminardb.ConnectionError):
        w.insert({"sym": ["A"], "qty": [1], "ts": [at(0)]})
    assert sub.next() is None and not sub.is_active


async def test_async_with():
    async with laminardb.open() as db:
        db.execute("CREATE SOURCE s (a BIGINT)")
        await asyncio.sleep(0)
    assert db.is_closed


def test_a_directory_is_durable_and_recovered(tmp_path):
    path = str(tmp_path / "db")
    ddl = [
        "CREATE SOURCE IF NOT EXISTS t (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS vol AS SELECT sym, SUM(qty) AS q, window_start FROM t GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)",
    ]
    with laminardb.open(path, config={"checkpoint_interval": "0"}) as db:
        for d in ddl:
            db.execute(d)
        db.insert("t", {"sym": ["A", "B", "A"], "qty": [1, 2, 3], "ts": [at(0), at(1), at(2)]})
        assert db.checkpoint() == 1
        # Acknowledged after the checkpoint: in the write-ahead log (durability "wal", the default).
        db.insert("t", {"sym": ["A"], "qty": [10], "ts": [at(30)]})
    # A second process-level open of the same directory while it is open is refused.
    with laminardb.open(path) as db:
        with pytest.raises(laminardb.LaminarError) as e:
            laminardb.open(path)
        assert e.value.status == "INVALID_STATE"
        for d in ddl:  # the same program again: the same definitions are fine
            db.execute(d)
        rows = sorted((r["sym"], r["q"]) for r in db.query("SELECT sym, q FROM vol").to_pylist())
        assert rows == [("A", 4), ("B", 2)]
        with pytest.raises(laminardb.LaminarError) as e:
            db.execute("CREATE MATERIALIZED VIEW IF NOT EXISTS vol AS SELECT sym, MAX(qty) AS q, window_start FROM t GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)")
        assert "different definition" in str(e.value)
    with pytest.raises(laminardb.LaminarError) as e:
        laminardb.open(path, config={"durability": "memory"})
    assert e.value.status == "INVALID_ARGUMENT"


def test_a_subscriber_resumes_after_its_last_epoch(tmp_path):
    path = str(tmp_path / "db")
    src = "CREATE SOURCE t (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)"
    view = "CREATE STREAM s AS SELECT sym, SUM(qty) AS q, window_start FROM t GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)"

    def results(sub):
        out = []
        while True:
            r = sub.poll(200)  # None on a timeout (next_timeout raises)
            if r is None:
                return out
            out.extend((sub.epoch, d["sym"], d["q"]) for d in r.to_pylist())

    with laminardb.open(path, config={"checkpoint_interval": "0"}) as db:
        db.execute(src)
        db.execute(view)
        sub = db.subscribe_stream("s")
        seen = []
        cb = db.subscribe_stream_callback("s", lambda r: seen.extend((cb.epoch, d["sym"]) for d in r.to_pylist()))
        db.insert("t", {"sym": ["A", "B"], "qty": [1, 2], "ts": [at(0), at(11)]})  # closes [0,10)
        assert db.checkpoint() == 1
        db.insert("t", {"sym": ["A"], "qty": [5], "ts": [at(21)]})  # closes [10,20): epoch 2
        first = results(sub)
        assert [(e, s) for e, s, _ in first] == [(1, "A"), (2, "B")]
        # A callback subscription reads the epoch of the batch it is handling.
        deadline = time.time() + 5
        while len(seen) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert seen == [(1, "A"), (2, "B")]
        cb.cancel()
    # The consumer had committed epoch 1 only; after the restart it resumes after it.
    with laminardb.open(path) as db:
        sub = db.subscribe_stream("s", resume_after_epoch=1)
        again = results(sub)
        assert [(s, q) for _, s, q in again] == [("B", 2)]
        with pytest.raises(laminardb.LaminarError) as e:
            db.subscribe_stream("s", resume_after_epoch="x")
        assert "resume_after_epoch" in str(e.value)
