"""The DELTA connector end to end, from Python. Sinks: a windowed aggregate and a plain stream
(partitioned by key) written to Delta tables while the LaminarDB process is SIGKILLed at random
moments, ten times; the tables are then read by independent readers — the `deltalake` package
and polars — and compared with DuckDB's aggregate over the same input (the batch oracle), and
their logs show one commit per epoch. Source: a table written by `deltalake` in many versions
while LaminarDB reads it (across a reopen), copied into a second table: every row once."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import laminardb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

duckdb = pytest.importorskip("duckdb")
deltalake = pytest.importorskip("deltalake")
pl = pytest.importorskip("polars")

SENTINEL_K = -1

SQL = """
CREATE SOURCE IF NOT EXISTS ev (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
    FROM FILES WITH ('path' = '{inp}', 'format' = 'parquet', 'source.monitor-interval' = '50ms');
CREATE STREAM IF NOT EXISTS agg AS SELECT k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
    FROM ev GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND);
CREATE STREAM IF NOT EXISTS raw AS SELECT k, v, ts FROM ev;
CREATE SINK IF NOT EXISTS agg_out FROM agg INTO DELTA WITH ('path' = '{agg}', 'sink.compact-every' = '3');
CREATE SINK IF NOT EXISTS raw_out FROM raw INTO DELTA WITH ('path' = '{raw}', 'partition-by' = 'k');
"""

CONFIG = {"durability": "checkpoint", "checkpoint_interval": "100ms"}

CHILD = r"""
import json, sys, time, laminardb
conn = laminardb.open(sys.argv[1], config=json.loads(sys.argv[3]))
conn.execute(sys.argv[2])
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def write_file(dir_: Path, name: str, rows):
    """Written under a hidden name, then renamed into place."""
    t = pa.table({
        "k": pa.array([r[0] for r in rows], pa.int64()),
        "v": pa.array([r[1] for r in rows], pa.int64()),
        "ts": pa.array([r[2] * 1000 for r in rows], pa.timestamp("us")),
    })
    tmp = dir_ / f".{name}.tmp"
    pq.write_table(t, tmp)
    tmp.rename(dir_ / f"{name}.parquet")


def rows_in(conn, source=None) -> int:
    return sum(s.rows_in for s in conn.metrics().sources if source is None or s.name == source)


def log_commits(table: Path):
    """version -> the commit's actions."""
    out = {}
    for f in (table / "_delta_log").glob("*.json"):
        out[int(f.stem)] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def check_log(table: Path, app_id: str) -> int:
    """Versions 0..n without gaps; each after 0 is one epoch of the sink (one txn, epochs
    strictly increasing) or a compaction (no txn, dataChange false), no file added twice.
    Returns the number of epoch commits."""
    log = log_commits(table)
    assert sorted(log) == list(range(len(log)))
    last, seen, epochs = 0, set(), 0
    for v in range(1, len(log)):
        if any(a.get("commitInfo", {}).get("operation") == "OPTIMIZE" for a in log[v]):
            assert not any("txn" in a for a in log[v])
            assert all(not (a.get("add") or a.get("remove"))["dataChange"] for a in log[v] if "add" in a or "remove" in a)
            continue
        epochs += 1
        txns = [a["txn"] for a in log[v] if "txn" in a]
        assert len(txns) == 1 and txns[0]["appId"] == app_id, log[v]
        assert txns[0]["version"] > last, f"version {v}: epoch {txns[0]['version']} after {last}"
        last = txns[0]["version"]
        for a in log[v]:
            if "add" in a:
                assert a["add"]["path"] not in seen, f"{a['add']['path']} added twice"
                seen.add(a["add"]["path"])
    return epochs


@pytest.mark.timeout(300)
def test_delta_sinks_survive_sigkill_and_read_back_by_deltalake_and_polars(tmp_path):
    rng = random.Random(int(os.environ.get("LAMINAR_TEST_SEED", "19")))
    inp, agg, raw, db = tmp_path / "in", tmp_path / "agg", tmp_path / "raw", str(tmp_path / "db")
    inp.mkdir()
    sql = SQL.format(inp=inp, agg=agg, raw=raw)
    t0 = 1_700_000_000_000
    all_rows = []
    n_files = 0
    for _round in range(10):
        child = subprocess.Popen([sys.executable, "-c", CHILD, db, sql, json.dumps(CONFIG)], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + rng.uniform(0.2, 1.2)
        while time.monotonic() < deadline:
            rows = [(rng.randrange(4), rng.randrange(-100, 100), t0 + n_files * 3000 + i * 7)
                    for i in range(rng.randrange(1, 300))]
            write_file(inp, f"f{n_files:05d}", rows)
            n_files += 1
            all_rows.extend(rows)
            time.sleep(rng.uniform(0, 0.08))
        child.send_signal(signal.SIGKILL)
        child.wait()

    conn = laminardb.open(db, config=CONFIG)
    conn.execute(sql)
    write_file(inp, "zzz-sentinel", [(SENTINEL_K, 0, 4_000_000_000_000)])
    deadline = time.monotonic() + 120
    while rows_in(conn) < len(all_rows) + 1:
        assert time.monotonic() < deadline, f"read {rows_in(conn)} of {len(all_rows) + 1} rows"
        time.sleep(0.05)
    assert rows_in(conn) == len(all_rows) + 1, "a file was read twice"
    conn.checkpoint()
    conn.close()

    # The logs: one commit per epoch, nothing committed twice, no commit lost a file.
    n_agg = check_log(agg, "laminardb:agg_out")
    n_raw = check_log(raw, "laminardb:raw_out")
    assert n_agg >= 2 and n_raw >= 2

    con = duckdb.connect()
    want = con.execute(f"""
        SELECT k, time_bucket(INTERVAL '10 seconds', ts) AS ws, SUM(v) AS s, COUNT(*) AS n
        FROM read_parquet('{inp}/f*.parquet') GROUP BY 1, 2 ORDER BY 1, 2
    """).fetchall()
    assert sum(r[3] for r in want) == len(all_rows)

    # deltalake (delta-rs) reads both tables.
    dt = deltalake.DeltaTable(str(agg))
    history = dt.history()
    assert sum(1 for h in history if h.get("operation") == "STREAMING UPDATE") == n_agg
    assert any(h.get("operation") == "OPTIMIZE" for h in history), 'compacted every 3 epochs'
    got_dl = sorted((r["k"], r["ws"], r["s"], r["n"]) for r in dt.to_pyarrow_table().to_pylist() if r["k"] != SENTINEL_K)
    assert got_dl == [tuple(r) for r in want]
    raw_dl = deltalake.DeltaTable(str(raw))
    assert raw_dl.metadata().partition_columns == ["k"]
    raw_rows = sorted((r["k"], r["v"], r["ts"]) for r in raw_dl.to_pyarrow_table().to_pylist() if r["k"] != SENTINEL_K)
    want_raw = sorted(con.execute(f"SELECT k, v, ts FROM read_parquet('{inp}/f*.parquet')").fetchall())
    assert raw_rows == want_raw, "every input row once in the plain stream's table"

    # polars reads them too.
    got_pl = (
        pl.read_delta(str(agg)).filter(pl.col("k") != SENTINEL_K).sort(["k", "ws"]).select(["k", "ws", "s", "n"]).rows()
    )
    assert got_pl == [tuple(r) for r in want]
    assert pl.read_delta(str(raw)).filter(pl.col("k") != SENTINEL_K).height == len(all_rows)


@pytest.mark.timeout(180)
def test_a_table_written_by_deltalake_is_read_once_across_a_reopen(tmp_path):
    src, copy, db = tmp_path / "src", tmp_path / "copy", str(tmp_path / "db")
    rng = random.Random(3)
    written = []

    def append(n):
        rows = [(rng.randrange(3), rng.randrange(1000), 1_700_000_000_000_000 + len(written) * 1000 + i) for i in range(n)]
        written.extend(rows)
        t = pa.table({
            "k": pa.array([r[0] for r in rows], pa.int64()),
            "v": pa.array([r[1] for r in rows], pa.int64()),
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us")),
        })
        deltalake.write_deltalake(str(src), t, mode="append", partition_by=["k"])

    append(50)  # the snapshot the source starts from
    sql = f"""
    CREATE SOURCE IF NOT EXISTS d (k BIGINT, v BIGINT, ts TIMESTAMP) FROM DELTA
        WITH ('path' = '{src}', 'source.monitor-interval' = '50ms');
    CREATE SINK IF NOT EXISTS c FROM d INTO DELTA WITH ('path' = '{copy}');
    """

    def wait_copied(n):
        deadline = time.monotonic() + 60
        while True:
            try:
                got = deltalake.DeltaTable(str(copy)).to_pyarrow_table().num_rows
            except Exception:  # not created yet
                got = 0
            if got >= n:
                return got
            assert time.monotonic() < deadline, f"{got} of {n} rows copied"
            time.sleep(0.1)

    conn = laminardb.open(db, config=CONFIG)
    conn.execute(sql)
    for _ in range(4):
        append(rng.randrange(1, 40))
        time.sleep(rng.uniform(0, 0.2))
    wait_copied(len(written))
    conn.close()
    for _ in range(3):  # versions written while LaminarDB is closed
        append(rng.randrange(1, 40))
    conn = laminardb.open(db, config=CONFIG)
    conn.execute(sql)
    for _ in range(3):
        append(rng.randrange(1, 40))
        time.sleep(rng.uniform(0, 0.2))
    assert wait_copied(len(written)) == len(written)
    time.sleep(0.5)  # a few more checkpoints: nothing more arrives
    conn.close()
    got = sorted((r["k"], r["v"], r["ts"]) for r in deltalake.DeltaTable(str(copy)).to_pyarrow_table().to_pylist())
    want = sorted((r["k"], r["v"], r["ts"]) for r in deltalake.DeltaTable(str(src)).to_pyarrow_table().to_pylist())
    assert len(want) == len(written)
    assert got == want, "every row of every version once"


def test_a_delete_in_the_source_table_fails_the_source_with_the_version(tmp_path):
    src = tmp_path / "src"
    t = pa.table({"k": pa.array([1, 2, 3], pa.int64())})
    deltalake.write_deltalake(str(src), t)
    with laminardb.open() as conn:
        conn.execute(f"""
            CREATE SOURCE d (k BIGINT) FROM DELTA WITH ('path' = '{src}', 'source.monitor-interval' = '50ms');
            CREATE MATERIALIZED VIEW m AS SELECT * FROM d;
        """)
        deadline = time.monotonic() + 30
        while rows_in(conn, "d") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        deltalake.DeltaTable(str(src)).delete("k = 2")
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.sql("SELECT * FROM m")
            except laminardb.LaminarError as e:
                assert "version 1" in str(e) and "removes rows" in str(e) and "DELETE" in str(e), str(e)
                break
            assert time.monotonic() < deadline, "the source never failed"
            time.sleep(0.05)
