"""DuckDB beside LaminarDB on Nexmark (issue 22): the same queries as batch SQL over the same events.

Called by the Nexmark runner (`cargo run --release -p laminar-core --example nexmark --
--duckdb <python>`), which writes the generated events as Arrow IPC files (person.arrow,
auction.arrow, bid.arrow) and the queries, exactly as LaminarDB runs them, to queries.json in
DIR. Each query's window table functions (`TABLE(TUMBLE(TABLE t, DESCRIPTOR(c), INTERVAL 'n'
SECOND))`, HOP likewise) are spelt out for DuckDB as every row once per window containing it;
the rest of the text is run as written.

DuckDB runs on one thread (`SET threads = 1`: its best events per CPU-second), over the Arrow
tables loaded before the clock starts, and its result is fetched whole as Arrow (LaminarDB hands
every output row to a subscriber). Prints one JSON object per query: name, rows, wall and CPU
seconds (time.process_time over the query, whole process).

    python benches/peers/duckdb_nexmark.py DIR [q0,q1,...]
"""

import json
import re
import sys
import time

import duckdb
from pyarrow import ipc

TVF = re.compile(
    r"TABLE\((TUMBLE|HOP)\(TABLE (\w+), DESCRIPTOR\((\w+)\), INTERVAL '(\d+)' SECOND(?:, INTERVAL '(\d+)' SECOND)?\)\)"
)


def spell_out(m: re.Match) -> str:
    kind, table, col, a, b = m.groups()
    slide, size = (int(a), int(a)) if kind == "TUMBLE" else (int(a), int(b))
    offsets = ", ".join(f"(INTERVAL '{i * slide}' SECOND)" for i in range(size // slide))
    base = f"time_bucket(INTERVAL '{slide}' SECOND, t.{col})"
    return (
        f"(SELECT t.*, {base} - h.d AS window_start, {base} - h.d + INTERVAL '{size}' SECOND AS window_end "
        f"FROM {table} t CROSS JOIN (VALUES {offsets}) AS h(d))"
    )


def main() -> None:
    d = sys.argv[1]
    only = set(sys.argv[2].split(",")) if len(sys.argv) > 2 and sys.argv[2] else None
    con = duckdb.connect()
    con.execute("SET threads = 1")
    tables = {}
    for name in ("person", "auction", "bid"):
        with ipc.open_file(f"{d}/{name}.arrow") as f:
            tables[name] = f.read_all()
        con.register(name, tables[name])
    with open(f"{d}/queries.json") as f:
        queries = json.load(f)
    for name, sql in queries:
        if only and name not in only:
            continue
        text = TVF.sub(spell_out, sql)
        if "TABLE(" in text:
            raise SystemExit(f"{name}: a table function left unspelt: {text}")
        c0, w0 = time.process_time(), time.perf_counter()
        result = con.sql(text).to_arrow_table()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        print(json.dumps({"query": name, "rows": result.num_rows, "wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
