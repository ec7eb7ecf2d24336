"""Apache Flink beside LaminarDB on Nexmark (issue 22): the same queries in Flink SQL over the same events.

Called by the Nexmark runner (`cargo run --release -p laminar-core --example nexmark --
--flink <python>`, the python of `scripts/peers-env.sh`), which writes the generated events as
Arrow IPC files (person.arrow, auction.arrow, bid.arrow) and the queries, exactly as LaminarDB runs
them, to queries.json in DIR. This script writes each table once as a CSV file (before any clock
starts; Flink's file source has no Arrow format), then runs every query in PyFlink's local
mini-cluster, streaming mode, into a `blackhole` sink:

- sources: `filesystem` + `csv` with the same columns, `date_time` a TIMESTAMP(3) rowtime with the
  same 4-second watermark delay; the files are bounded, so at their end the watermark advances to
  the end of time and every window closes, as LaminarDB's end of input does;
- the configuration of the Nexmark project's Flink runs: object reuse, mini-batch (2 s, 50,000
  rows), heap state, no checkpoints;
- the query text as LaminarDB runs it (Flink's window table functions take the same syntax);
- one warm-up job first (class loading, JIT), not counted.

CPU is that of this process and every process under it (the gateway's JVM, which runs the
mini-cluster), from /proc, over each job: submission, planning, the run and the mini-cluster's
start and stop. A job's fixed cost, measured as the least of three jobs over an empty file, is
printed first as `{"query": "(fixed)", "cpu": …}`; the runner takes it off every query's CPU, so
the figures are Flink's cost per event, not per job. Then one JSON object per query: name, rows
(null: the blackhole sink counts nothing), wall and CPU seconds, or the error Flink raised.

    python benches/peers/flink_nexmark.py DIR [q0,q1,...] [PARALLELISM]
"""

import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from pyarrow import ipc

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after its closing one.
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def flink_type(t: pa.DataType) -> str:
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_int32(t):
        return "INT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "STRING"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP(3)"
    raise SystemExit(f"flink_nexmark.py: no Flink type for Arrow type {t}")


def write_csv(table: pa.Table, path: str) -> None:
    """The table as CSV without a header, timestamps as `YYYY-MM-DD HH:MM:SS.fff` (Flink's SQL form)."""
    cols = []
    for field, col in zip(table.schema, table.columns):
        if pa.types.is_timestamp(field.type):
            col = pc.strftime(pc.cast(col, pa.timestamp("ms")), format="%Y-%m-%d %H:%M:%S")
        cols.append(col)
    pcsv.write_csv(
        pa.table(cols, names=table.schema.names), path, write_options=pcsv.WriteOptions(include_header=False)
    )


def main() -> None:
    d = sys.argv[1]
    only = set(sys.argv[2].split(",")) if len(sys.argv) > 2 and sys.argv[2] else None
    parallelism = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    ddl = {}
    for name in ("person", "auction", "bid"):
        with ipc.open_file(f"{d}/{name}.arrow") as f:
            table = f.read_all()
        path = f"{d}/flink/{name}"
        if not os.path.exists(f"{path}/{name}.csv"):
            os.makedirs(path, exist_ok=True)
            write_csv(table, f"{path}/{name}.csv")
        ddl[name] = (", ".join(f"{fld.name} {flink_type(fld.type)}" for fld in table.schema), path)
    with open(f"{d}/queries.json") as f:
        queries = json.load(f)

    from pyflink.table import EnvironmentSettings, TableDescriptor, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = t_env.get_config()
    for key, value in {
        "parallelism.default": str(parallelism),
        "pipeline.object-reuse": "true",
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "2 s",
        "table.exec.mini-batch.size": "50000",
        "state.backend.type": "hashmap",
    }.items():
        conf.set(key, value)
    def create(name: str, cols: str, path: str) -> None:
        t_env.execute_sql(
            f"CREATE TABLE {name} ({cols}, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) "
            f"WITH ('connector' = 'filesystem', 'path' = 'file://{os.path.abspath(path)}', 'format' = 'csv')"
        )

    for name, (cols, path) in ddl.items():
        create(name, cols, path)
    sink = TableDescriptor.for_connector("blackhole").build()
    # Warm-up: a small job, not counted.
    t_env.sql_query("SELECT id, name FROM person WHERE id % 1000 = 0").execute_insert(sink).wait()

    me = os.getpid()
    # A job's fixed cost: the same source over an empty file.
    empty = f"{d}/flink/empty"
    os.makedirs(empty, exist_ok=True)
    open(f"{empty}/empty.csv", "w").close()
    create("empty_bid", ddl["bid"][0], empty)
    fixed = []
    for _ in range(3):
        c0 = tree_cpu(me)
        t_env.sql_query("SELECT * FROM empty_bid").execute_insert(sink).wait()
        fixed.append(tree_cpu(me) - c0)
    print(json.dumps({"query": "(fixed)", "cpu": min(fixed)}), flush=True)
    for name, sql in queries:
        if only and name not in only:
            continue
        c0, w0 = tree_cpu(me), time.perf_counter()
        try:
            t_env.sql_query(sql).execute_insert(sink).wait()
        except Exception as e:  # a query Flink cannot run: its first line, and go on
            msg = str(e).strip().splitlines()
            print(json.dumps({"query": name, "error": msg[0] if msg else type(e).__name__}), flush=True)
            continue
        wall, cpu = time.perf_counter() - w0, tree_cpu(me) - c0
        print(json.dumps({"query": name, "rows": None, "wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
