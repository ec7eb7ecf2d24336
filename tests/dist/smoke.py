"""The installed Python package, as a user of the established `laminardb` API uses it: open,
execute, insert, subscribe, query, to_pandas / to_polars, errors. Run by scripts/test-dist.sh in a
fresh virtual environment holding only the installed package (wheel or sdist), from a directory
outside the checkout. Exits non-zero on the first failed check."""

import sys
import tempfile
from datetime import datetime

import laminardb

assert "site-packages" in laminardb.__file__, f"laminardb imported from {laminardb.__file__}, not the installed package"
print("laminardb", laminardb.__version__, "from", laminardb.__file__)
if len(sys.argv) > 1:
    assert laminardb.__version__ == sys.argv[1], f"the library says {laminardb.__version__}, the package {sys.argv[1]}"

with laminardb.open() as db:
    db.execute(
        "CREATE SOURCE trades (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    )
    db.execute(
        "CREATE STREAM vol AS SELECT sym, SUM(qty) AS total, window_start "
        "FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)"
    )
    sub = db.subscribe_stream("vol")
    db.insert(
        "trades",
        [
            {"sym": "A", "qty": 5, "ts": datetime(2024, 1, 1, 0, 0, 1)},
            {"sym": "A", "qty": 7, "ts": datetime(2024, 1, 1, 0, 0, 2)},
            {"sym": "B", "qty": 2, "ts": datetime(2024, 1, 1, 0, 0, 3)},
        ],
    )
    with db.writer("trades") as w:
        w.finish()
    got = {}
    while len(got) < 2:
        batch = sub.next_timeout(10_000)
        for row in batch.to_pylist():
            got[row["sym"]] = row["total"]
    assert got == {"A": 12, "B": 2}, got

    db.create_table("t", {"k": "int64", "v": "string"})
    db.insert("t", {"k": [1, 2, 3], "v": ["x", "y", "z"]})
    r = db.query("SELECT k, v FROM t ORDER BY k")
    df = r.to_pandas()
    assert list(df["k"]) == [1, 2, 3] and list(df["v"]) == ["x", "y", "z"], df
    pl = db.query("SELECT SUM(k) AS s FROM t").to_polars()
    assert pl["s"].to_list() == [6], pl
    try:
        db.query("SELECT * FROM no_such_table")
    except laminardb.LaminarError as e:
        assert e.code is not None and "no_such_table" in str(e), e
    else:
        sys.exit("a query of a missing table did not raise")

# The connectors are in the package: an unknown kind's error lists the kinds this build has.
with laminardb.open() as db:
    try:
        db.execute("CREATE SOURCE k (v BIGINT) FROM NO_SUCH_KIND WITH ('topic' = 't')")
    except laminardb.LaminarError as e:
        for kind in ("KAFKA", "POSTGRES_CDC", "MYSQL_CDC", "DELTA"):
            assert kind in str(e), f"{kind} is not in the package: {e}"
    else:
        sys.exit("an unknown source kind did not raise")

# A durable database survives a reopen.
with tempfile.TemporaryDirectory() as d:
    with laminardb.open(d + "/db") as db:
        db.create_table("t", {"k": "int64"})
        db.insert("t", {"k": [41, 1]})
    with laminardb.open(d + "/db") as db:
        assert db.query("SELECT SUM(k) AS s FROM t").to_dicts() == {"s": [42]}

print("python smoke: ok")
