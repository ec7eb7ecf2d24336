"""The KAFKA connector end to end, from Python, against the broker of `scripts/services.sh start
kafka`: a producer of another client stack (confluent-kafka) keeps writing JSON events over 4
partitions while a child process running Kafka -> 10-second TUMBLE aggregate -> exactly-once
Kafka sink at durability 'checkpoint' is SIGKILLed at random moments, 10 rounds. At the end a
`read_committed` consumer reads the results back: every window once, equal to DuckDB's aggregate
over the events produced."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import laminardb
import pytest
from conftest import kafka_address, services_env

ck = pytest.importorskip("confluent_kafka")
duckdb = pytest.importorskip("duckdb")
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

PARTITIONS = 4
SENTINEL_K = -1


def broker() -> str:
    address = kafka_address()
    if address:
        return address
    msg = f"no Kafka broker: run scripts/services.sh start kafka (it writes LAMINAR_KAFKA to {services_env()})"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


SQL = """
CREATE SOURCE IF NOT EXISTS ev (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
    FROM KAFKA WITH (topic = '{inp}', 'properties.bootstrap.servers' = '{b}', format = 'json');
CREATE STREAM IF NOT EXISTS agg AS SELECT k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
    FROM ev GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND);
CREATE SINK IF NOT EXISTS out FROM agg INTO KAFKA WITH (topic = '{out}', 'properties.bootstrap.servers' = '{b}', key = 'k');
"""

CHILD = r"""
import sys, time, laminardb
conn = laminardb.open(sys.argv[1], config={"durability": "checkpoint", "checkpoint_interval": "200ms"})
conn.execute(sys.argv[2])
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"


def read_committed(b: str, topic: str):
    c = ck.Consumer({"bootstrap.servers": b, "group.id": f"check-{uuid.uuid4()}",
                     "isolation.level": "read_committed", "enable.auto.commit": False})
    parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = {p: c.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
    out = []
    deadline = time.monotonic() + 120
    while True:
        for m in c.consume(num_messages=10_000, timeout=0.2):
            if m.error() is None:
                out.append(json.loads(m.value()))
        pos = {tp.partition: tp.offset for tp in c.position([ck.TopicPartition(topic, p) for p in parts])}
        if all(ends[p] == 0 or pos[p] >= ends[p] for p in parts):
            c.close()
            return out
        assert time.monotonic() < deadline, f"reading {topic} did not reach {ends} (at {pos})"


def rows_in(conn) -> int:
    return sum(s.rows_in for s in conn.metrics().sources)


@pytest.mark.timeout(290)
def test_kafka_to_kafka_exactly_once_under_sigkill(tmp_path):
    b = broker()
    rng = random.Random(int(os.environ.get("LAMINAR_TEST_SEED", "7")))
    suffix = uuid.uuid4().hex[:10]
    inp, out = f"ev-{suffix}", f"agg-{suffix}"
    admin = AdminClient({"bootstrap.servers": b})
    for f in admin.create_topics([NewTopic(inp, PARTITIONS, 1), NewTopic(out, 1, 1)]).values():
        f.result(timeout=30)
    producer = ck.Producer({"bootstrap.servers": b, "linger.ms": 5})
    db = str(tmp_path / "db")
    sql = SQL.format(inp=inp, out=out, b=b)
    events = []
    t0 = 1_700_000_000_000

    def produce(n):
        for _ in range(n):
            i = len(events)
            ev = (rng.randrange(5), rng.randrange(-100, 100), t0 + i * 3 + rng.randrange(500))
            events.append(ev)
            k, v, ts = ev
            producer.produce(inp, json.dumps({"k": k, "v": v, "ts": iso(ts)}).encode(), partition=rng.randrange(PARTITIONS))
            producer.poll(0)
        producer.flush(30)

    for _round in range(10):
        child = subprocess.Popen([sys.executable, "-c", CHILD, db, sql], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + rng.uniform(0.3, 1.5)
        while time.monotonic() < deadline:
            produce(rng.randrange(50, 400))
            time.sleep(rng.uniform(0, 0.1))
        child.send_signal(signal.SIGKILL)
        child.wait()

    conn = laminardb.open(db, config={"durability": "checkpoint", "checkpoint_interval": "200ms"})
    conn.execute(sql)
    for p in range(PARTITIONS):  # a record far in the future on every partition closes every window
        producer.produce(inp, json.dumps({"k": SENTINEL_K, "v": 0, "ts": iso(4_000_000_000_000)}).encode(), partition=p)
    producer.flush(30)
    total = len(events) + PARTITIONS
    deadline = time.monotonic() + 120
    while rows_in(conn) < total:
        assert time.monotonic() < deadline, f"read {rows_in(conn)} of {total} records"
        time.sleep(0.05)
    assert rows_in(conn) == total, "a record was read twice"
    conn.checkpoint()
    assert conn.metrics().sources[0].rows_late == 0
    conn.close()

    got = sorted((r["k"], r["ws"], r["s"], r["n"]) for r in read_committed(b, out) if r["k"] != SENTINEL_K)
    con = duckdb.connect()
    con.execute("CREATE TABLE e (k BIGINT, v BIGINT, ts BIGINT)")
    con.executemany("INSERT INTO e VALUES (?, ?, ?)", events)
    want = con.execute("""
        SELECT k, strftime(time_bucket(INTERVAL '10 seconds', make_timestamp(ts * 1000)), '%Y-%m-%dT%H:%M:%S') AS ws,
               SUM(v), COUNT(*) FROM e GROUP BY 1, 2 ORDER BY 1, 2
    """).fetchall()
    assert sum(r[3] for r in want) == len(events)
    assert got == [tuple(r) for r in want], f"{len(got)} results vs {len(want)} expected"


@pytest.mark.timeout(290)
def test_a_broker_stopped_for_10_s_loses_and_repeats_nothing(tmp_path):
    """The broker (scripts/services.sh) is stopped for 10 s mid-stream and started again: the
    source reconnects and the sink's transaction completes, nothing lost or written twice."""
    b = broker()
    root = Path(__file__).resolve().parents[3]
    rng = random.Random(11)
    suffix = uuid.uuid4().hex[:10]
    inp, out = f"ev-{suffix}", f"agg-{suffix}"
    admin = AdminClient({"bootstrap.servers": b})
    for f in admin.create_topics([NewTopic(inp, PARTITIONS, 1), NewTopic(out, 1, 1)]).values():
        f.result(timeout=30)
    events = []
    t0 = 1_700_000_000_000

    def produce(n):
        producer = ck.Producer({"bootstrap.servers": b, "linger.ms": 5})
        for _ in range(n):
            i = len(events)
            ev = (rng.randrange(5), rng.randrange(-100, 100), t0 + i * 3 + rng.randrange(500))
            events.append(ev)
            producer.produce(inp, json.dumps({"k": ev[0], "v": ev[1], "ts": iso(ev[2])}).encode(),
                             partition=rng.randrange(PARTITIONS))
            producer.poll(0)
        assert producer.flush(60) == 0

    conn = laminardb.open(str(tmp_path / "db"), config={"durability": "checkpoint", "checkpoint_interval": "200ms"})
    conn.execute(SQL.format(inp=inp, out=out, b=b))
    produce(3000)
    deadline = time.monotonic() + 60
    while rows_in(conn) < len(events):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    subprocess.run([str(root / "scripts" / "services.sh"), "stop", "kafka"], check=True, timeout=60)
    time.sleep(10)
    subprocess.run([str(root / "scripts" / "services.sh"), "start", "kafka"], check=True, timeout=120)
    assert broker() == b, "the broker came back on another address"
    produce(3000)
    producer = ck.Producer({"bootstrap.servers": b})
    for p in range(PARTITIONS):
        producer.produce(inp, json.dumps({"k": SENTINEL_K, "v": 0, "ts": iso(4_000_000_000_000)}).encode(), partition=p)
    producer.flush(30)
    total = len(events) + PARTITIONS
    deadline = time.monotonic() + 120
    while rows_in(conn) < total:
        if time.monotonic() > deadline:
            try:
                conn.subscribe("agg")
                why = "not failed"
            except laminardb.LaminarError as e:
                why = str(e)
            pytest.fail(f"read {rows_in(conn)} of {total} records: {why}")
        time.sleep(0.05)
    assert rows_in(conn) == total
    parts = conn.metrics().sources[0].partitions
    assert sorted(parts) == [str(p) for p in range(PARTITIONS)], parts
    assert sum(p["records"] for p in parts.values()) == total and all(p["malformed"] == 0 for p in parts.values())
    conn.checkpoint()
    sinks = conn.sinks()
    assert not sinks[0]["failed"], sinks
    assert conn.metrics().sinks[0].transactions_committed >= 1
    conn.close()
    got = sorted((r["k"], r["ws"], r["s"], r["n"]) for r in read_committed(b, out) if r["k"] != SENTINEL_K)
    con = duckdb.connect()
    con.execute("CREATE TABLE e (k BIGINT, v BIGINT, ts BIGINT)")
    con.executemany("INSERT INTO e VALUES (?, ?, ?)", events)
    want = con.execute("""
        SELECT k, strftime(time_bucket(INTERVAL '10 seconds', make_timestamp(ts * 1000)), '%Y-%m-%dT%H:%M:%S') AS ws,
               SUM(v), COUNT(*) FROM e GROUP BY 1, 2 ORDER BY 1, 2
    """).fetchall()
    assert got == [tuple(r) for r in want], f"{len(got)} results vs {len(want)} expected"


@pytest.mark.timeout(295)
def test_a_million_events_through_a_join_and_an_aggregate_round_trip(tmp_path):
    """1,000,000 JSON events over two 8-partition topics (orders, and a payment per order within
    a second of it, produced out of order within each partition) through an interval join and a
    TUMBLE aggregate into two exactly-once Kafka sinks; the `read_committed` outputs equal
    DuckDB's join and aggregate over the same events."""
    import pyarrow as pa

    b = broker()
    n = int(os.environ.get("LAMINAR_KAFKA_EVENTS", "1000000")) // 2
    rng = random.Random(3)
    suffix = uuid.uuid4().hex[:10]
    orders, payments, joined, agg = (f"{t}-{suffix}" for t in ("orders", "payments", "joined", "agg"))
    admin = AdminClient({"bootstrap.servers": b})
    topics = [NewTopic(orders, 8, 1), NewTopic(payments, 8, 1), NewTopic(joined, 1, 1), NewTopic(agg, 1, 1)]
    for f in admin.create_topics(topics).values():
        f.result(timeout=30)
    t0 = 1_700_000_000_000
    o_ts = [t0 + i * 2 + rng.randrange(400) for i in range(n)]
    o_k = [rng.randrange(100) for _ in range(n)]
    o_v = [rng.randrange(1000) for _ in range(n)]
    p_ts = [t + rng.randrange(-1000, 1001) for t in o_ts]
    p_amt = [rng.randrange(10_000) for _ in range(n)]
    producer = ck.Producer({"bootstrap.servers": b, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    t = time.monotonic()
    for i in range(n):
        producer.produce(orders, f'{{"id": {i}, "k": {o_k[i]}, "v": {o_v[i]}, "ts": "{iso(o_ts[i])}"}}'.encode(),
                         partition=i % 8)
        producer.produce(payments, f'{{"id": {i}, "amount": {p_amt[i]}, "ts": "{iso(p_ts[i])}"}}'.encode(),
                         partition=(i * 7) % 8)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    produced_s = time.monotonic() - t

    conn = laminardb.open(str(tmp_path / "db"), config={"durability": "checkpoint", "checkpoint_interval": "1s"})
    conn.execute(f"""
        CREATE SOURCE orders (id BIGINT, k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
            FROM KAFKA WITH (topic = '{orders}', 'properties.bootstrap.servers' = '{b}');
        CREATE SOURCE payments (id BIGINT, amount BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
            FROM KAFKA WITH (topic = '{payments}', 'properties.bootstrap.servers' = '{b}');
        CREATE STREAM paid AS SELECT o.id, o.k, p.amount FROM orders o JOIN payments p
            ON o.id = p.id AND p.ts BETWEEN o.ts - INTERVAL '1' SECOND AND o.ts + INTERVAL '1' SECOND;
        CREATE STREAM per_key AS SELECT k, window_start AS ws, SUM(v) AS s, COUNT(*) AS c
            FROM orders GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND);
        CREATE SINK paid_out FROM paid INTO KAFKA WITH (topic = '{joined}', 'properties.bootstrap.servers' = '{b}');
        CREATE SINK agg_out FROM per_key INTO KAFKA WITH (topic = '{agg}', 'properties.bootstrap.servers' = '{b}');
    """)
    t = time.monotonic()
    deadline = t + 200
    while rows_in(conn) < 2 * n:
        assert time.monotonic() < deadline, f"read {rows_in(conn)} of {2 * n} events"
        time.sleep(0.1)
    read_s = time.monotonic() - t
    for topic in (orders, payments):  # far-future records close every window and interval
        for p in range(8):
            producer.produce(topic, json.dumps({"id": -1, "k": -1, "v": 0, "amount": 0, "ts": iso(4_000_000_000_000)}).encode(),
                             partition=p)
    producer.flush(30)
    while rows_in(conn) < 2 * n + 16:
        assert time.monotonic() < deadline, f"read {rows_in(conn)} of {2 * n + 16} events"
        time.sleep(0.05)
    conn.checkpoint()
    late = sum(s.rows_late for s in conn.metrics().sources)
    conn.close()
    print(f"\n{2 * n} events: produced in {produced_s:.1f} s, read and processed in {read_s:.1f} s "
          f"({2 * n / read_s:.0f} events/s, debug build)")
    assert late == 0

    got_join = sorted((r["id"], r["k"], r["amount"]) for r in read_committed(b, joined) if r["id"] >= 0)
    got_agg = sorted((r["k"], r["ws"], r["s"], r["c"]) for r in read_committed(b, agg) if r["k"] >= 0)
    con = duckdb.connect()
    o = pa.table({"id": pa.array(range(n), pa.int64()), "k": pa.array(o_k, pa.int64()), "v": pa.array(o_v, pa.int64()),
                  "ts": pa.array(o_ts, pa.int64())})
    p = pa.table({"id": pa.array(range(n), pa.int64()), "amount": pa.array(p_amt, pa.int64()), "ts": pa.array(p_ts, pa.int64())})
    con.register("o", o)
    con.register("p", p)
    want_join = con.execute("""
        SELECT o.id, o.k, p.amount FROM o JOIN p ON o.id = p.id AND p.ts BETWEEN o.ts - 1000 AND o.ts + 1000
        ORDER BY 1, 2, 3""").fetchall()
    want_agg = con.execute("""
        SELECT k, strftime(time_bucket(INTERVAL '10 seconds', make_timestamp(ts * 1000)), '%Y-%m-%dT%H:%M:%S') AS ws,
               SUM(v), COUNT(*) FROM o GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
    assert len(want_join) == n
    assert got_join == [tuple(r) for r in want_join], f"{len(got_join)} joined rows vs {len(want_join)}"
    assert got_agg == [tuple(r) for r in want_agg], f"{len(got_agg)} aggregate rows vs {len(want_agg)}"


GROUP_SQL = """
CREATE SOURCE ev (_key VARCHAR, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
    FROM KAFKA WITH (topic = '{inp}', 'properties.bootstrap.servers' = '{b}', format = 'json',
                     'properties.group.id' = '{group}', 'scan.startup.mode' = 'group-offsets',
                     'properties.session.timeout.ms' = '6000');
CREATE STREAM agg AS SELECT _key AS k, window_start AS ws, SUM(v) AS s, COUNT(*) AS n
    FROM ev GROUP BY _key, TUMBLE(ts, INTERVAL '10' SECOND);
CREATE SINK out FROM agg INTO KAFKA WITH (topic = '{out}', 'properties.bootstrap.servers' = '{b}', key = 'k');
"""


@pytest.mark.timeout(200)
def test_two_group_members_share_the_partitions_and_publish_each_window_once(tmp_path):
    """Group mode from Python: two connections opened with the same `shared_dir` share the
    partitions of a topic as one consumer group; each window result is published once, equal to
    DuckDB's aggregate; SHOW PARTITIONS says who owns what; what a member cannot run is refused."""
    b = broker()
    rng = random.Random(24)
    suffix = uuid.uuid4().hex[:10]
    inp, out, group = f"gev-{suffix}", f"gagg-{suffix}", f"grp-{suffix}"
    admin = AdminClient({"bootstrap.servers": b})
    for f in admin.create_topics([NewTopic(inp, PARTITIONS, 1), NewTopic(out, 1, 1)]).values():
        f.result(timeout=30)
    sql = GROUP_SQL.format(inp=inp, out=out, b=b, group=group)
    config = {"shared_dir": str(tmp_path / "shared"), "checkpoint_interval": "200ms"}
    m1 = laminardb.open(str(tmp_path / "m1"), config=config)
    m1.execute(sql)
    m2 = laminardb.open(str(tmp_path / "m2"), config=config)
    m2.execute(sql)
    deadline = time.monotonic() + 60
    while True:
        owned = [sorted(r["partition"] for r in m.query("SHOW PARTITIONS").to_pylist()) for m in (m1, m2)]
        if sorted(owned[0] + owned[1]) == list(range(PARTITIONS)) and owned[0] and owned[1]:
            break
        assert time.monotonic() < deadline, f"the partitions were not shared out: {owned}"
        time.sleep(0.1)

    with pytest.raises(laminardb.LaminarError) as e:
        m1.execute("CREATE SOURCE pushed (k BIGINT)")
    assert "KAFKA" in str(e.value)
    with pytest.raises(laminardb.LaminarError) as e:
        m1.execute("CREATE STREAM byv AS SELECT v, COUNT(*) AS n FROM ev GROUP BY v")
    assert "not keyed by the message key" in str(e.value)

    producer = ck.Producer({"bootstrap.servers": b, "linger.ms": 5})
    events = []
    t0 = 1_700_000_000_000
    for i in range(4000):
        k = rng.randrange(12)
        ev = (k, rng.randrange(-100, 100), t0 + i * 3 + rng.randrange(500))
        events.append(ev)
        producer.produce(inp, json.dumps({"v": ev[1], "ts": iso(ev[2])}).encode(), key=str(k).encode(),
                         partition=k % PARTITIONS)
        producer.poll(0)
    for p in range(PARTITIONS):  # a record far in the future on every partition closes every window
        producer.produce(inp, json.dumps({"v": 0, "ts": iso(4_000_000_000_000)}).encode(), key=b"closing", partition=p)
    assert producer.flush(30) == 0

    con = duckdb.connect()
    con.execute("CREATE TABLE e (k BIGINT, v BIGINT, ts BIGINT)")
    con.executemany("INSERT INTO e VALUES (?, ?, ?)", events)
    want = con.execute("""
        SELECT CAST(k AS VARCHAR), strftime(time_bucket(INTERVAL '10 seconds', make_timestamp(ts * 1000)), '%Y-%m-%dT%H:%M:%S') AS ws,
               SUM(v), COUNT(*) FROM e GROUP BY 1, 2 ORDER BY 1, 2
    """).fetchall()
    want = [tuple(r) for r in want]
    deadline = time.monotonic() + 90
    while True:
        got = sorted((r["k"], r["ws"], r["s"], r["n"]) for r in read_committed(b, out) if r["k"] != "closing")
        if len(got) >= len(want) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == want, f"{len(got)} results vs {len(want)} expected"
    m = m1.metrics()
    assert sum(s.rows_in for s in m.sources) > 0
    m1.close()
    m2.close()
