"""Bad input from a careless or hostile user must not crash the interpreter, run injected SQL, or
store a wrong value (the bad-input issue). Each test failed before its fix."""

import ctypes

import laminardb
import pyarrow as pa
import pytest


def _strings_then_corrupt(offsets, data):
    """A valid string array over `data`, and a function that writes `offsets` over its offsets
    buffer in place: what a buggy producer or a corrupted shared buffer hands over, past every
    check pyarrow makes when it builds arrays, batches and tables."""
    n = len(offsets) - 1
    good = [0] + [min(o, len(data)) for o in sorted(offsets[1:])]
    arr = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(pa.array(good, pa.int32()).buffers()[1]), pa.py_buffer(data)])

    def corrupt():
        ctypes.memmove(arr.buffers()[1].address, (ctypes.c_int32 * len(offsets))(*offsets), 4 * len(offsets))

    return arr, corrupt


@pytest.mark.parametrize(
    "offsets,data",
    [
        ([0, 2, 4], b"ab\xff\xfe"),  # invalid UTF-8 (binary viewed as string)
        ([0, 2, 853772], b"abcd"),  # an offset past the data buffer
        ([0, 3, 1], b"abcd"),  # decreasing offsets
    ],
    ids=["utf8", "offset_past_end", "decreasing"],
)
@pytest.mark.parametrize("kind", ["table", "batch"])
def test_malformed_arrow_is_refused_naming_the_column(offsets, data, kind):
    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (k VARCHAR, n BIGINT)")
        db.execute("CREATE MATERIALIZED VIEW u AS SELECT upper(k) AS uk, length(k) AS len FROM s")
        k, corrupt = _strings_then_corrupt(offsets, data)
        batch = pa.RecordBatch.from_arrays([k, pa.array([1, 2])], names=["k", "n"])
        obj = pa.Table.from_batches([batch]) if kind == "table" else batch
        corrupt()
        with pytest.raises(laminardb.LaminarError) as e:
            db.insert("s", obj)
        assert e.value.status == "INVALID_DATA", e.value
        assert "'k'" in str(e.value)
        # Nothing of it arrived; the database still works.
        db.insert("s", {"k": ["ok"], "n": [1]})
        assert db.query("SELECT uk, len FROM u").to_pylist() == [{"uk": "OK", "len": 2}]


def test_create_table_quotes_names_and_checks_types():
    with laminardb.open() as db:
        db.execute("CREATE SOURCE victim (a BIGINT)")
        # A name with a quote is one (odd) name, not SQL.
        evil = 'x" (a BIGINT); DROP SOURCE victim CASCADE; CREATE SOURCE "y'
        db.create_table(evil, {"a": "BIGINT"})
        assert set(db.list_tables()) == {"victim", evil}
        for bad_type in ["BIGINT); DROP SOURCE victim; --", "BIGINT, b VARCHAR", "VARCHAR /* c */", "INT'"]:
            with pytest.raises(laminardb.LaminarError) as e:
                db.create_table("t2", {"a": bad_type})
            assert e.value.status == "INVALID_ARGUMENT"
        col_evil = 'c" BIGINT, "d'
        db.create_table("t3", {col_evil: "DECIMAL(10, 2)", "ts": "TIMESTAMP"})
        assert db.schema("t3").names == [col_evil, "ts"]
        assert "victim" in db.list_tables()
        with pytest.raises(laminardb.LaminarError):
            db.create_table("", {"a": "BIGINT"})
        with pytest.raises(laminardb.LaminarError):
            db.create_table("a\0b", {"a": "BIGINT"})


def test_query_stream_quotes_the_name():
    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (a BIGINT)")
        db.execute("CREATE STREAM st AS SELECT a FROM s")
        with pytest.raises(laminardb.LaminarError):
            db.query_stream("st WHERE 1=1 UNION ALL SELECT a FROM s --", "a > 0")
        sub = db.query_stream("st", "a > 1")
        db.insert("s", {"a": [1, 2, 3]})
        got = []
        for _ in range(50):
            b = sub.try_next()
            if b is None:
                break
            got += b.to_pylist()
        assert sorted(r["a"] for r in got) == [2, 3]
        sub.cancel()


def test_sql_insert_casts_are_strict():
    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (n BIGINT, ts TIMESTAMP, v VARCHAR)")
        for values in ["('abc', NULL, 'x')", "(NULL, 'not a time', 'x')", "(1.9, NULL, 'x')", "(99999999999999999999, NULL, 'x')"]:
            with pytest.raises(laminardb.LaminarError) as e:
                db.execute(f"INSERT INTO s VALUES {values}")
            assert e.value.status == "INVALID_DATA", (values, e.value)
        db.execute("INSERT INTO s VALUES (2.0, '2024-01-01 00:00:00', 'ok')")
        assert db.query("SELECT n, v FROM s").to_pylist() == [{"n": 2, "v": "ok"}]


def test_long_names_are_clipped_in_messages():
    with laminardb.open() as db:
        name = "n" * 1_000_000
        with pytest.raises(laminardb.LaminarError) as e:
            db.insert(name, {"a": [1]})
        assert len(str(e.value)) < 1000


def test_schema_cache_follows_ddl_anywhere_in_an_execute():
    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (a BIGINT)")
        db.insert("s", {"a": [1]})
        db.execute("DROP SOURCE s; CREATE SOURCE s (b VARCHAR); SELECT 1")
        assert db.insert("s", {"b": ["x"]}) == 1
        db.execute("DROP SOURCE s; SELECT 1")
        with pytest.raises(laminardb.LaminarError):
            db.insert("s", {"b": ["x"]})


def test_ragged_columns_are_a_schema_error():
    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (a BIGINT, b BIGINT)")
        with pytest.raises(laminardb.BatchSchemaError) as e:
            db.insert("s", {"a": [1, 2, 3], "b": [1]})
        assert "different lengths" in str(e.value)


def test_a_value_an_ad_hoc_query_cannot_compute_is_a_query_error():
    with laminardb.open() as db:
        for sql in ["SELECT CAST('abc' AS BIGINT) AS x", "SELECT INTERVAL '1' DAY * 9223372036854775807 AS x"]:
            with pytest.raises(laminardb.LaminarError) as e:
                db.query(sql)
            assert isinstance(e.value, laminardb.QueryError), (sql, type(e.value), e.value)
            assert not isinstance(e.value, laminardb.BatchSchemaError), (sql, e.value)


def test_an_io_error_of_the_engine_is_not_a_connector_error():
    from laminardb._errors import from_status

    e = from_status("IO", "write-ahead log: No space left on device")
    assert isinstance(e, laminardb.IngestionError) and not isinstance(e, laminardb.ConnectorError)
    assert e.status == "IO"


def test_a_failed_stream_shows_in_streams_and_metrics():
    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (v BIGINT)")
        db.execute("CREATE MATERIALIZED VIEW mv AS SELECT 10 / v AS x FROM s")
        db.insert("s", {"v": [2]})
        assert [r["failed"] for r in db.streams()] == [False]
        db.insert("s", {"v": [0]})
        assert [(r["name"], r["failed"]) for r in db.streams()] == [("mv", True)]
        assert db.stream_metrics("mv").failed == 1
        with pytest.raises(laminardb.StreamError):
            db.query("SELECT x FROM mv")
