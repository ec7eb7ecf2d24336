"""W1 through the Python package, beside DuckDB over the same pyarrow table, in one run.

W1 (DESIGN §8): event i has key (i * 2654435761) % 1000, value (i * 7919) % 1000, time base + i ms;
a 1-minute TUMBLE COUNT/SUM/AVG per key, EMIT ON WINDOW CLOSE, pushed as pyarrow batches of 8,192.
Prints LaminarDB end-to-end rows/s (insert through the last window received), DuckDB's rows/s for
the same aggregate over the same table, and the ratio; exits 1 when the two results differ.
Then (issue 25) W1 with SUM(x2p1(v)) — x2p1 a Python scalar function, v * 2 + 1 over
pyarrow.compute — beside SUM(v * 2 + 1) with the built-in expression, and their ratio.

    python bindings/python/benches/w1_bench.py --events 10000000
"""

import argparse
import sys
import threading
import time

import duckdb
import laminardb
import pyarrow as pa
import pyarrow.compute as pc


def make_table(n: int) -> pa.Table:
    i = pa.array(range(n), pa.int64())
    base_us = 1_700_000_000_000_000
    key = pc.bit_wise_and(pc.multiply(i, 2654435761), 0x7FFFFFFFFFFFFFFF)
    return pa.table({
        "k": pc.cast(pc.subtract(key, pc.multiply(pc.divide(key, 1000), 1000)), pa.int64()),
        "v": pc.cast(pc.subtract(pc.multiply(i, 7919), pc.multiply(pc.divide(pc.multiply(i, 7919), 1000), 1000)), pa.float64()),
        "ts": pc.cast(pc.add(pc.multiply(i, 1000), base_us), pa.timestamp("us")),
    })


def x2p1(v: pa.Array) -> pa.Array:
    return pc.add(pc.multiply(v, 2.0), 1.0)


def run_laminar(table: pa.Table, batch: int, workers: int, value: str = "v"):
    db = laminardb.open(config={"workers": str(workers)} if workers else None)
    db.register_function("x2p1", x2p1, [pa.float64()], pa.float64())
    db.execute("CREATE SOURCE w1 (k BIGINT, v DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")
    db.execute(
        f"CREATE STREAM agg AS SELECT k, COUNT(*) AS n, SUM({value}) AS s, AVG(v) AS a, window_start "
        "FROM w1 GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE"
    )
    results = []
    counted = [0]
    done = threading.Event()

    def on_data(r):
        t = r.to_arrow()
        results.append(t)
        counted[0] += pc.sum(t["n"]).as_py() or 0
        if counted[0] >= table.num_rows:
            done.set()

    sub = db.subscribe_stream_callback("agg", on_data, buffer_size=1 << 20)
    batches = table.to_batches(max_chunksize=batch)
    t0 = time.perf_counter()
    with db.writer("w1") as w:
        for b in batches:
            w.insert(b)
        w.finish()
    # End to end: until the last window has reached the callback.
    if not done.wait(600):
        raise SystemExit(f"only {counted[0]} of {table.num_rows} rows arrived in windows")
    secs = time.perf_counter() - t0
    sub.cancel()
    db.close()
    out = pa.concat_tables(results) if results else None
    return secs, out


def run_duckdb(table: pa.Table):
    con = duckdb.connect()
    con.register("w1", table)
    t0 = time.perf_counter()
    out = con.sql(
        "SELECT k, COUNT(*) AS n, SUM(v) AS s, AVG(v) AS a, time_bucket(INTERVAL '1 minute', ts) AS window_start "
        "FROM w1 GROUP BY ALL"
    ).arrow()
    if hasattr(out, "read_all"):  # DuckDB >= 1.4 returns a RecordBatchReader
        out = out.read_all()
    return time.perf_counter() - t0, out


def summary(t: pa.Table):
    return (t.num_rows, pc.sum(t["n"]).as_py(), round(pc.sum(t["s"]).as_py(), 3))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=None, help="engine workers (default: the engine's, cores - 1)")
    args = ap.parse_args()
    table = make_table(args.events)
    lam_s, lam_out = run_laminar(table, args.batch, args.workers)
    duck_s, duck_out = run_duckdb(table)
    print(f"W1 {args.events:,} events, batches of {args.batch}, {args.workers or 'default'} workers (laminardb {laminardb.__version__}, duckdb {duckdb.__version__})")
    print(f"  laminardb streaming, end to end: {args.events / lam_s:14,.0f} rows/s ({lam_s:.3f} s)")
    print(f"  duckdb batch, same aggregate:    {args.events / duck_s:14,.0f} rows/s ({duck_s:.3f} s)")
    print(f"  ratio laminardb / duckdb: {duck_s / lam_s:.3f}")
    a, b = summary(lam_out), summary(duck_out)
    if a != b:
        print(f"MISMATCH: laminardb {a} vs duckdb {b}")
        return 1
    print(f"  results agree: {a[0]} windows, {a[1]:,} rows counted")
    # A Python scalar function in the query beside the built-in expression (alternating, best of 2).
    best = {"builtin": None, "udf": None}
    outs = {}
    for _ in range(2):
        for name, expr in (("builtin", "v * 2 + 1"), ("udf", "x2p1(v)")):
            s, out = run_laminar(table, args.batch, args.workers, expr)
            best[name] = s if best[name] is None else min(best[name], s)
            outs[name] = summary(out)
    print(f"  SUM(v * 2 + 1), built-in:        {args.events / best['builtin']:14,.0f} rows/s ({best['builtin']:.3f} s)")
    print(f"  SUM(x2p1(v)), Python function:   {args.events / best['udf']:14,.0f} rows/s ({best['udf']:.3f} s)")
    print(f"  ratio Python function / built-in: {best['builtin'] / best['udf']:.3f} (target >= 0.5)")
    if outs["builtin"] != outs["udf"]:
        print(f"MISMATCH: built-in {outs['builtin']} vs Python function {outs['udf']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
