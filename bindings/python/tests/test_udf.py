"""Python scalar functions (issue 25): in a windowed continuous query and in ad-hoc SQL, equal to
the same computation done in Python over the same rows; failures fail the calling stream with
the exception's text and leave the database usable; a durable database reopens with the
functions passed to open()."""

import datetime

import laminardb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

BASE = datetime.datetime(2024, 1, 1)


def twice_plus_one(x: pa.Array) -> pa.Array:
    return pc.add(pc.multiply(x, 2), 1)


def rows():
    # 400 rows, 5 symbols, 0 to 40 seconds of event time, out of order within each 10 seconds.
    return [
        (f"S{i % 5}", (i * 37) % 101 - 50, BASE + datetime.timedelta(milliseconds=(i // 100) * 10_000 + (i * 7919) % 100 * 97))
        for i in range(400)
    ]


def test_a_scalar_function_in_a_window_and_ad_hoc_equals_python():
    with laminardb.open(config={"workers": "2"}) as db:
        db.register_function("twice_plus_one", twice_plus_one, [pa.int64()], pa.int64())
        db.execute(
            "CREATE SOURCE t (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
        )
        db.execute(
            "CREATE MATERIALIZED VIEW w AS SELECT sym, window_start AS ws, SUM(twice_plus_one(qty)) AS s, "
            "COUNT(*) AS n FROM t GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)"
        )
        data = rows()
        db.insert("t", {"sym": [r[0] for r in data], "qty": [r[1] for r in data], "ts": [r[2] for r in data]})
        # A row far ahead closes every window of the data.
        db.insert("t", {"sym": ["Z"], "qty": [0], "ts": [BASE + datetime.timedelta(days=1)]})
        want = {}
        for sym, qty, ts in data:
            ws = ts.replace(second=ts.second // 10 * 10, microsecond=0)
            s, n = want.get((sym, ws), (0, 0))
            want[(sym, ws)] = (s + qty * 2 + 1, n + 1)
        got = {}
        for r in db.query("SELECT sym, ws, s, n FROM w").to_pylist():
            got[(r["sym"], r["ws"])] = (r["s"], r["n"])
        assert got == want
        # Ad hoc over the source's rows.
        ad_hoc = sorted(tuple(r.values()) for r in db.query("SELECT qty, twice_plus_one(qty) AS y FROM t").to_pylist())
        assert ad_hoc == sorted([(q, q * 2 + 1) for _, q, _ in data] + [(0, 1)])
        names = db.query("SHOW FUNCTIONS").to_pylist()
        assert [(r["name"], r["kind"]) for r in names] == [("twice_plus_one", "scalar")]


def test_the_decorator_form_and_bad_registrations():
    with laminardb.open() as db:

        @db.register_function("shout", arg_types=[pa.string()], return_type=pa.string())
        def shout(s):
            return pc.utf8_upper(s)

        assert db.query("SELECT shout('hi') AS x").to_pylist() == [{"x": "HI"}]
        with pytest.raises(laminardb.LaminarError) as e:
            db.register_function("abs", twice_plus_one, [pa.int64()], pa.int64())
        assert "built-in" in str(e.value)
        with pytest.raises(laminardb.LaminarError) as e:
            db.register_function("Twice", twice_plus_one, [pa.int64()], pa.int64())
        assert "lowercase" in str(e.value)
        with pytest.raises(TypeError):
            db.register_function("bad_types", twice_plus_one, ["int64"], pa.int64())


def test_failing_functions_fail_their_stream_and_the_database_goes_on():
    def raises(x):
        raise ValueError("the model is not loaded")

    def short(x):
        return pa.array([1] * (len(x) - 1), pa.int64())

    def wrong_type(x):
        return pa.array(["a"] * len(x))

    with laminardb.open() as db:
        db.execute("CREATE SOURCE s (k BIGINT, v BIGINT)")
        for name, fn in [("raises", raises), ("short", short), ("wrong_type", wrong_type)]:
            db.register_function(name, fn, [pa.int64()], pa.int64())
            db.execute(f"CREATE MATERIALIZED VIEW m_{name} AS SELECT k, {name}(v) AS x FROM s")
        db.register_function("twice_plus_one", twice_plus_one, [pa.int64()], pa.int64())
        db.execute("CREATE MATERIALIZED VIEW fine AS SELECT k, twice_plus_one(v) AS x FROM s")
        db.insert("s", {"k": [1, 2], "v": [2, 3]})
        for name, says in [
            ("raises", "ValueError: the model is not loaded"),
            ("short", "returned 1 values for 2 rows"),
            ("wrong_type", "returned Utf8 where Int64 was declared"),
        ]:
            with pytest.raises(laminardb.StreamError) as e:
                db.query(f"SELECT * FROM m_{name}")
            assert says in str(e.value), (name, str(e.value))
        assert sorted(tuple(r.values()) for r in db.query("SELECT k, x FROM fine").to_pylist()) == [(1, 5), (2, 7)]
        with pytest.raises(laminardb.LaminarError) as e:
            db.query("SELECT raises(1) AS x")
        assert "the model is not loaded" in str(e.value)
        assert db.query("SELECT twice_plus_one(20) AS x").to_pylist() == [{"x": 41}]


def test_a_durable_database_reopens_with_the_functions_passed_to_open(tmp_path):
    f = laminardb.ScalarFunction("twice_plus_one", twice_plus_one, [pa.int64()], pa.int64())
    path = str(tmp_path / "db")
    with laminardb.open(path, functions=[f]) as db:
        db.execute("CREATE SOURCE s (k BIGINT, v BIGINT)")
        db.execute("CREATE MATERIALIZED VIEW m AS SELECT k, twice_plus_one(v) AS x FROM s")
        db.insert("s", {"k": [1], "v": [2]})
    with pytest.raises(laminardb.LaminarError) as e:
        laminardb.open(path)
    assert "twice_plus_one" in str(e.value)
    with laminardb.open(path, functions=[f]) as db:
        assert db.query("SELECT k, x FROM m").to_pylist() == [{"k": 1, "x": 5}]


class SumSq:
    """Sum of squares of a BIGINT column: one BIGINT of state."""

    def __init__(self):
        self.total = 0

    def update(self, x):
        self.total += pc.sum(pc.multiply(x, x)).as_py() or 0

    def merge(self, states):
        self.total += pc.sum(states[0]).as_py() or 0

    def state(self):
        return [self.total]

    def evaluate(self):
        return self.total


def test_an_aggregate_function_in_a_tumble_window_equals_python(tmp_path):
    f = laminardb.AggregateFunction("sum_sq", SumSq, [pa.int64()], pa.int64(), [pa.int64()])
    path = str(tmp_path / "db")
    data = rows()
    want = {}
    for sym, qty, ts in data:
        ws = ts.replace(second=ts.second // 10 * 10, microsecond=0)
        want[(sym, ws)] = want.get((sym, ws), 0) + qty * qty
    with laminardb.open(path, config={"workers": "2"}, functions=[f]) as db:
        db.execute(
            "CREATE SOURCE t (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
        )
        db.execute(
            "CREATE MATERIALIZED VIEW w AS SELECT sym, window_start AS ws, sum_sq(qty) AS s "
            "FROM t GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)"
        )
        half = len(data) // 2
        db.insert("t", {"sym": [r[0] for r in data[:half]], "qty": [r[1] for r in data[:half]], "ts": [r[2] for r in data[:half]]})
        # A checkpoint in the middle of open windows stores the accumulators' state() ...
        db.checkpoint()
    # ... which a reopen merges back.
    with laminardb.open(path, config={"workers": "2"}, functions=[f]) as db:
        db.insert("t", {"sym": [r[0] for r in data[half:]], "qty": [r[1] for r in data[half:]], "ts": [r[2] for r in data[half:]]})
        db.insert("t", {"sym": ["Z"], "qty": [0], "ts": [BASE + datetime.timedelta(days=1)]})
        got = {(r["sym"], r["ws"]): r["s"] for r in db.query("SELECT sym, ws, s FROM w").to_pylist()}
        assert got == want
        # Ad hoc, grouped, over the source's rows.
        adhoc = {r["sym"]: r["s"] for r in db.query("SELECT sym, sum_sq(qty) AS s FROM t GROUP BY sym").to_pylist()}
        assert adhoc == {**{s: sum(q * q for x, q, _ in data if x == s) for s in {r[0] for r in data}}, "Z": 0}
        names = {(r["name"], r["kind"]) for r in db.query("SHOW FUNCTIONS").to_pylist()}
        assert ("sum_sq", "aggregate") in names


def test_an_aggregate_function_over_a_changelog_is_refused_when_planned():
    with laminardb.open() as db:
        db.register_aggregate_function("sum_sq", SumSq, [pa.int64()], pa.int64(), [pa.int64()])
        db.execute("CREATE SOURCE s (k BIGINT, v BIGINT)")
        db.execute("CREATE MATERIALIZED VIEW latest AS SELECT k, MAX(v) AS v FROM s GROUP BY k")
        with pytest.raises(laminardb.LaminarError) as e:
            db.execute("CREATE MATERIALIZED VIEW total AS SELECT sum_sq(v) AS s FROM latest")
        assert "SUM_SQ over a changelog input is not available" in str(e.value)
        db.insert("s", {"k": [1], "v": [3]})
        assert db.query("SELECT sum_sq(v) AS s FROM latest").to_pylist() == [{"s": 9}]


def test_a_functions_exception_is_the_errors_cause():
    class ModelNotLoaded(Exception):
        pass

    def raises(x):
        raise ModelNotLoaded("the model is not loaded")

    class Failing(SumSq):
        def update(self, x):
            raise KeyError("no such bucket")

    with laminardb.open() as db:
        db.register_function("raises", raises, [pa.int64()], pa.int64())
        db.register_aggregate_function("failing", Failing, [pa.int64()], pa.int64(), [pa.int64()])
        with pytest.raises(laminardb.LaminarError) as e:
            db.query("SELECT raises(1) AS x")
        assert isinstance(e.value.__cause__, ModelNotLoaded)
        assert "ModelNotLoaded: the model is not loaded" in str(e.value)
        db.execute("CREATE SOURCE s (k BIGINT, v BIGINT)")
        db.execute("CREATE MATERIALIZED VIEW m AS SELECT k, raises(v) AS x FROM s")
        db.execute("CREATE MATERIALIZED VIEW a AS SELECT k, failing(v) AS x FROM s GROUP BY k")
        db.insert("s", {"k": [1], "v": [2]})
        for view, cls in [("m", ModelNotLoaded), ("a", KeyError)]:
            with pytest.raises(laminardb.StreamError) as e:
                db.query(f"SELECT * FROM {view}")
            assert isinstance(e.value.__cause__, cls), (view, repr(e.value.__cause__))
        assert db.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]
