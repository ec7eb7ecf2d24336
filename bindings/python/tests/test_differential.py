"""Windowed aggregates against DuckDB over the same random, out-of-order rows.

Rows arrive shuffled within a bounded disorder plus a share of stragglers far behind; the engine
routes rows whose window already closed to a LATE DATA stream. The streaming result, once input
ends, must equal DuckDB's batch aggregate over all rows minus exactly those late rows."""

import math
import random

import duckdb
import laminardb
import pyarrow as pa
import pytest
from conftest import ms

WINDOW_S = 5


def run_case(seed: int, n: int = 3000, keys: int = 7):
    rng = random.Random(seed)
    base_us = 1_700_000_000_000_000
    rows = []
    for i in range(n):
        ts = base_us + i * 10_000  # 10 ms apart in event time
        rows.append((i, rng.randrange(keys), round(rng.uniform(-100, 100), 3), ts))
    # bounded disorder (within the 2 s watermark delay) plus 3 % stragglers up to 8 s behind
    order = sorted(range(n), key=lambda i: rows[i][3] + rng.uniform(0, 1_500_000) + (8_000_000 if rng.random() < 0.03 else 0))
    shuffled = [rows[i] for i in order]

    db = laminardb.open(config={"workers": str(1 + seed % 3)})
    try:
        db.execute(
            "CREATE SOURCE ev (id BIGINT, k BIGINT, v DOUBLE, ts TIMESTAMP, "
            "WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)"
        )
        db.execute(
            "CREATE STREAM agg AS SELECT k, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS mn, MAX(v) AS mx, "
            f"AVG(v) AS a, window_start FROM ev GROUP BY k, TUMBLE(ts, INTERVAL '{WINDOW_S}' SECOND) "
            "LATE DATA TO late_ev"
        )
        out = db.subscribe_stream("agg")
        late = db.subscribe_stream("late_ev")
        batch = 97 + seed  # odd batch sizes
        with db.writer("ev") as w:
            for i in range(0, n, batch):
                part = shuffled[i : i + batch]
                w.insert(pa.table({
                    "id": [r[0] for r in part], "k": [r[1] for r in part], "v": [r[2] for r in part],
                    "ts": pa.array([r[3] for r in part], pa.timestamp("us")),
                }))
            w.finish()
            w.flush()
        got = []
        while (r := out.try_next()) is not None:
            got.extend(r.to_pylist())
        late_ids = set()
        while (r := late.try_next()) is not None:
            late_ids.update(d["id"] for d in r.to_pylist())
    finally:
        db.close()

    table = pa.table({
        "id": [r[0] for r in rows], "k": [r[1] for r in rows], "v": [r[2] for r in rows],
        "ts_us": [r[3] for r in rows],
    })
    late_tbl = pa.table({"id": pa.array(sorted(late_ids), pa.int64())})
    con = duckdb.connect()
    con.register("t", table)
    con.register("late_ids", late_tbl)
    expected = con.sql(
        f"SELECT k, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS mn, MAX(v) AS mx, AVG(v) AS a, "
        f"(ts_us // {WINDOW_S * 1_000_000}) AS w FROM t WHERE id NOT IN (SELECT id FROM late_ids) "
        f"GROUP BY k, w"
    ).fetchall()

    def norm(k, n, s, mn, mx, a, w):
        return (k, w, n, mn, mx, s, a)

    exp = sorted(norm(*r) for r in expected)
    act = sorted(
        norm(d["k"], d["n"], d["s"], d["mn"], d["mx"], d["a"],
             ms(d["window_start"]) // (WINDOW_S * 1000))
        for d in got
    )
    return exp, act, len(late_ids)


@pytest.mark.parametrize("seed", range(6))
def test_windowed_aggregates_match_duckdb(seed):
    exp, act, n_late = run_case(seed)
    assert n_late > 0, "the case should contain late rows"
    assert len(act) == len(exp)
    # exact for keys, windows, counts, MIN and MAX; SUM and AVG to 1e-9 (summation order differs)
    assert [r[:5] for r in act] == [r[:5] for r in exp]
    for a, e in zip(act, exp):
        assert math.isclose(a[5], e[5], rel_tol=1e-9, abs_tol=1e-9), (a, e)
        assert math.isclose(a[6], e[6], rel_tol=1e-9, abs_tol=1e-9), (a, e)
