"""The FILES connector end to end, from Python: CSV, JSON and Parquet directories as sources, a
windowed aggregate over their union sunk to Parquet files, with the process SIGKILLed at random
moments while files keep arriving. The sink's files are read back by DuckDB and by pyarrow and
compared with DuckDB's own aggregate over the input files (the batch oracle): each input row
counted once, no partial or duplicate file visible."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import laminardb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

duckdb = pytest.importorskip("duckdb")

SQL = """
CREATE SOURCE IF NOT EXISTS a (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
    FROM FILES WITH ('path' = '{a}', 'format' = 'csv', 'source.monitor-interval' = '50ms');
CREATE SOURCE IF NOT EXISTS b (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
    FROM FILES WITH ('path' = '{b}', 'format' = 'json', 'source.monitor-interval' = '50ms');
CREATE SOURCE IF NOT EXISTS c (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
    FROM FILES WITH ('path' = '{c}', 'format' = 'parquet', 'source.monitor-interval' = '50ms');
CREATE STREAM IF NOT EXISTS all_rows AS
    SELECT k, v, ts FROM a UNION ALL SELECT k, v, ts FROM b UNION ALL SELECT k, v, ts FROM c;
CREATE STREAM IF NOT EXISTS agg AS SELECT k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
    FROM all_rows GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND);
CREATE SINK IF NOT EXISTS out FROM agg INTO FILES WITH ('path' = '{out}', 'format' = 'parquet');
"""

CHILD = r"""
import sys, time, laminardb
conn = laminardb.open(sys.argv[1], config={"durability": "checkpoint", "checkpoint_interval": "150ms"})
conn.execute(sys.argv[2])
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""

SENTINEL_K = -1


def write_file(dir_: Path, name: str, fmt: str, rows):
    """Written under a hidden name, then renamed into place (as producers should)."""
    dir_.mkdir(parents=True, exist_ok=True)
    t = pa.table({
        "k": pa.array([r[0] for r in rows], pa.int64()),
        "v": pa.array([r[1] for r in rows], pa.int64()),
        "ts": pa.array([r[2] * 1000 for r in rows], pa.timestamp("us")),
    })
    tmp = dir_ / f".{name}.tmp"
    if fmt == "csv":
        pcsv.write_csv(t, tmp)
    elif fmt == "parquet":
        pq.write_table(t, tmp)  # pyarrow's default: Snappy
    else:
        with open(tmp, "w") as f:
            for k, v, ts in rows:
                iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + f".{ts % 1000:03d}"
                f.write(f'{{"k": {k}, "v": {v}, "ts": "{iso}"}}\n')
    tmp.rename(dir_ / f"{name}.{ 'json' if fmt == 'json' else fmt}")


def rows_in(conn) -> int:
    return sum(s.rows_in for s in conn.metrics().sources)


@pytest.mark.timeout(280)
def test_files_sources_and_parquet_sink_survive_sigkill(tmp_path):
    rng = random.Random(int(os.environ.get("LAMINAR_TEST_SEED", "5")))
    dirs = {s: tmp_path / "in" / s for s in "abc"}
    fmts = {"a": "csv", "b": "json", "c": "parquet"}
    out = tmp_path / "out"
    db = str(tmp_path / "db")
    sql = SQL.format(a=dirs["a"], b=dirs["b"], c=dirs["c"], out=out)
    total = 0
    t0 = 1_700_000_000_000
    for s in "abc":
        dirs[s].mkdir(parents=True)
    n_files = 0
    for _round in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, db, sql], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + rng.uniform(0.3, 1.5)
        while time.monotonic() < deadline:
            s = rng.choice("abc")
            rows = [(rng.randrange(5), rng.randrange(-100, 100), t0 + n_files * 3000 + i * 7) for i in range(rng.randrange(1, 300))]
            write_file(dirs[s], f"f{n_files:05d}", fmts[s], rows)
            n_files += 1
            total += len(rows)
            time.sleep(rng.uniform(0, 0.1))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Nothing partial is ever visible: every file in the directory is a whole Parquet file.
        for f in out.glob("*.parquet"):
            pq.read_metadata(f)

    conn = laminardb.open(db, config={"durability": "checkpoint", "checkpoint_interval": "150ms"})
    conn.execute(sql)
    for s in "abc":
        write_file(dirs[s], "zzz-sentinel", fmts[s], [(SENTINEL_K, 0, 4_000_000_000_000)])
    deadline = time.monotonic() + 120
    while rows_in(conn) < total + 3:
        assert time.monotonic() < deadline, f"read {rows_in(conn)} of {total + 3} rows"
        time.sleep(0.05)
    assert rows_in(conn) == total + 3, "a file was read twice"
    conn.checkpoint()
    conn.close()

    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert files and all(f.startswith("part-") and f.endswith(".parquet") for f in files), files

    con = duckdb.connect()
    got_duck = con.execute(
        f"SELECT k, ws, s, n FROM read_parquet('{out}/*.parquet') WHERE k <> {SENTINEL_K} ORDER BY k, ws"
    ).fetchall()
    got_pa = sorted(
        (r["k"], r["ws"], r["s"], r["n"])
        for r in ds.dataset(out, format="parquet").to_table().to_pylist()
        if r["k"] != SENTINEL_K
    )
    want = con.execute(f"""
        SELECT k, time_bucket(INTERVAL '10 seconds', ts) AS ws, SUM(v) AS s, COUNT(*) AS n FROM (
            SELECT k, v, ts FROM read_csv('{dirs['a']}/*.csv', columns = {{'k': 'BIGINT', 'v': 'BIGINT', 'ts': 'TIMESTAMP'}}, header = true)
            UNION ALL SELECT k, v, ts FROM read_json('{dirs['b']}/*.json', columns = {{'k': 'BIGINT', 'v': 'BIGINT', 'ts': 'TIMESTAMP'}})
            UNION ALL SELECT k, v, ts FROM read_parquet('{dirs['c']}/*.parquet')
        ) WHERE k <> {SENTINEL_K} GROUP BY 1, 2 ORDER BY 1, 2
    """).fetchall()
    assert sum(r[3] for r in want) == total
    assert got_duck == want
    assert got_pa == [tuple(r) for r in want]
