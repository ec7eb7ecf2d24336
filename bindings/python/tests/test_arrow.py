"""Every input form of insert, and the Arrow paths out: pyarrow, pandas, polars, DuckDB, and a
bare object with only ``__arrow_c_stream__``."""

import duckdb
import laminardb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import at, ms


@pytest.fixture
def src(db):
    db.execute("CREATE SOURCE s (k BIGINT, name VARCHAR, x DOUBLE, ts TIMESTAMP, WATERMARK FOR ts)")
    return db


def rows(db):
    return sorted(db.query("SELECT k, name, x FROM s").fetchall())


def test_insert_every_input_form(src):
    db = src
    assert db.insert("s", {"k": 1, "name": "a", "x": 1.5, "ts": at(0)}) == 1  # one row
    assert db.insert("s", {"k": [2, 3], "name": ["b", "c"], "x": [2.5, 3.5], "ts": [at(1), at(2)]}) == 2
    assert db.insert("s", [{"k": 4, "name": "d", "x": 4.5, "ts": at(3)}]) == 1
    t = pa.table({"k": [5], "name": ["e"], "x": [5.5], "ts": pa.array([at(4)], pa.timestamp("us"))})
    assert db.insert("s", t) == 1
    assert db.insert("s", t.to_batches()[0].set_column(0, "k", pa.array([6]))) == 1
    df = pd.DataFrame({"k": [7], "name": ["g"], "x": [7.5], "ts": [at(6)]})
    assert db.insert("s", df) == 1
    pdf = pl.DataFrame({"k": [8], "name": ["h"], "x": [8.5], "ts": [at(7)]})
    assert db.insert("s", pdf) == 1

    class StreamOnly:  # any object with just the PyCapsule stream protocol
        def __init__(self, table):
            self._t = table

        def __arrow_c_stream__(self, requested_schema=None):
            return self._t.__arrow_c_stream__(requested_schema)

    assert db.insert("s", StreamOnly(t.set_column(0, "k", pa.array([9])))) == 1
    assert db.insert_json("s", '[{"k": 10, "name": "j", "x": 10.5, "ts": "2024-01-01T00:00:10"}]') == 1
    assert db.insert_json("s", '{"k": 11, "name": "k", "x": 11.5, "ts": "2024-01-01T00:00:11"}\n{"k": 12, "name": "l", "x": 12.5, "ts": "2024-01-01T00:00:12"}') == 2
    assert db.insert_csv("s", "k,name,x,ts\n13,m,13.5,2024-01-01 00:00:13\n") == 1
    got = rows(db)
    assert [r[0] for r in got] == list(range(1, 14))
    assert got[0] == (1, "a", 1.5) and got[12] == (13, "m", 13.5)


def test_lossless_widening_and_schema_errors_name_the_column(src):
    db = src
    t32 = pa.table({"k": pa.array([1], pa.int32()), "name": ["a"], "x": [1.0], "ts": pa.array([at(0)], pa.timestamp("ms"))})
    assert db.insert("s", t32) == 1  # int32 -> int64, ms -> us
    with pytest.raises(laminardb.SchemaError) as e:
        db.insert("s", pa.table({"k": ["not a number"], "name": ["a"], "x": [1.0], "ts": pa.array([at(0)], pa.timestamp("us"))}))
    assert "'k'" in str(e.value) and e.value.code == laminardb.codes.BATCH_SCHEMA_MISMATCH
    assert isinstance(e.value, laminardb.IngestionError) and e.value.status == "INVALID_DATA"
    with pytest.raises(laminardb.SchemaError) as e:
        db.insert("s", {"k": [1], "name": ["a"], "x": ["oops"], "ts": [at(0)]})
    assert "'x'" in str(e.value)
    with pytest.raises(laminardb.SchemaError) as e:
        db.insert("s", {"k": [1], "nope": [1]})
    assert "'nope'" in str(e.value)
    with pytest.raises(laminardb.SchemaError) as e:
        db.insert("s", {"k": [1], "name": ["a"], "x": [1.0]})  # ts missing
    assert "'ts'" in str(e.value)
    with pytest.raises(TypeError):
        db.insert("s", 42)
    assert rows(db) == [(1, "a", 1.0)]  # nothing of the failed inserts was applied


def test_results_out_to_every_library(src):
    db = src
    db.insert("s", {"k": [1, 2], "name": ["a", "b"], "x": [1.0, 2.0], "ts": [at(0), at(1)]})
    q = db.query("SELECT k, x FROM s ORDER BY k")
    assert q.to_pandas()["x"].tolist() == [1.0, 2.0] and q.df().shape == (2, 2)
    assert q.to_polars()["k"].to_list() == [1, 2] and q.pl().shape == (2, 2)
    assert pa.table(q).column("k").to_pylist() == [1, 2]  # __arrow_c_stream__
    assert pa.schema(q).names == ["k", "x"]  # __arrow_c_schema__
    assert pl.from_arrow(pa.table(q)).height == 2
    con = duckdb.connect()
    assert con.sql("SELECT SUM(x) AS sx FROM q").fetchall() == [(3.0,)]  # DuckDB reads it by name
    assert q.to_pylist() == [{"k": 1, "x": 1.0}, {"k": 2, "x": 2.0}]


def test_writer(src):
    db = src
    with db.writer("s") as w:
        assert w.insert({"k": [1, 2], "name": ["a", "b"], "x": [1.0, 2.0], "ts": [at(0), at(5)]}) == 2
        w.flush()
        assert w.current_watermark == ms(at(5))  # no delay declared
        w.watermark(ms(at(100)))
        w.flush()
        assert w.current_watermark == ms(at(100))
        w.finish()
    assert w.is_closed
    with pytest.raises(laminardb.IngestionError) as e:
        w.insert({"k": [3]})
    assert e.value.code == laminardb.codes.WRITER_CLOSED
    w.close()  # idempotent
    assert len(db.query("SELECT * FROM s")) == 2


def test_thousands_of_small_inserts_never_hang(src):
    db = src
    for i in range(5000):
        assert db.insert("s", {"k": i, "name": "x", "x": 1.0, "ts": at(i)}) == 1
    assert db.query("SELECT COUNT(*) AS c FROM s").to_pylist() == [{"c": 5000}]
