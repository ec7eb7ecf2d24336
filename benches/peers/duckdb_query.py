"""One SQL query in DuckDB over Arrow IPC files, for the benchmarks that put DuckDB beside LaminarDB.

Every `NAME.arrow` file in DIR is loaded (before any clock starts) as table NAME; the query runs
RUNS times on one DuckDB thread, its result fetched whole as Arrow each time. Prints one JSON
object: rows (of the last run), best wall seconds and the CPU seconds of that run (the process's,
time.process_time).

    python benches/peers/duckdb_query.py DIR "SQL" [RUNS]
"""

import json
import pathlib
import sys
import time

import duckdb
from pyarrow import ipc


def main() -> None:
    d, sql = pathlib.Path(sys.argv[1]), sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    con = duckdb.connect()
    con.execute("SET threads = 1")
    tables = {}
    for f in sorted(d.glob("*.arrow")):
        with ipc.open_file(f) as r:
            tables[f.stem] = r.read_all()
        con.register(f.stem, tables[f.stem])
    best = None
    for _ in range(runs):
        c0, w0 = time.process_time(), time.perf_counter()
        rows = con.sql(sql).to_arrow_table().num_rows
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if best is None or wall < best[0]:
            best = (wall, cpu)
    print(json.dumps({"rows": rows, "wall": best[0], "cpu": best[1]}), flush=True)


if __name__ == "__main__":
    main()
