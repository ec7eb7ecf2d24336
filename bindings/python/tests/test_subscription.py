"""Subscriptions: pull (next, next_timeout, try_next, iteration, cancel), asyncio, callbacks,
a pushing and a consuming thread at once, Ctrl-C during a blocking next(), and many callback
subscriptions created and dropped."""

import asyncio
import signal
import threading
import time

import laminardb
import pytest
from conftest import at


def push(db, *rows):
    db.insert("trades", {"sym": [r[0] for r in rows], "qty": [r[1] for r in rows], "ts": [at(r[2]) for r in rows]})


def test_pull_next_timeout_try_next_and_cancel(trades):
    db = trades
    sub = db.subscribe_stream("vol")
    assert sub.schema.names == ["sym", "total", "n", "window_start"]  # before any batch
    assert sub.is_active
    t0 = time.monotonic()
    assert sub.poll(50) is None  # poll: a timeout is None
    assert time.monotonic() - t0 >= 0.04
    with pytest.raises(laminardb.SubscriptionError, match="timeout") as e:
        sub.next_timeout(50)  # next_timeout: a timeout raises (the established API)
    assert e.value.code == laminardb.codes.SUBSCRIPTION_TIMEOUT and sub.is_active
    assert sub.try_next() is None
    push(db, ("A", 1, 0), ("A", 2, 3), ("B", 5, 4), ("A", 9, 12))
    r = sub.next()
    assert sorted(r.fetchall()) == [("A", 3, 2, at(0)), ("B", 5, 1, at(0))]
    threading.Timer(0.1, sub.cancel).start()
    assert sub.next() is None  # a blocked next ends on cancel from another thread
    assert not sub.is_active and "cancelled" in repr(sub)
    assert list(sub) == [] and sub.next_timeout(10) is None  # ended: None, not a timeout
    with pytest.raises(RuntimeError, match="cancelled"):
        _ = sub.schema


def test_subscribe_to_a_query_and_query_stream(trades):
    db = trades
    sub = db.subscribe("SELECT sym, qty FROM trades WHERE qty > 1")
    hidden = [q for q in db.queries() if q.id == sub.id and q["sql"].startswith("SELECT")]
    assert hidden and db.active_query_count == 1
    assert all(not n.startswith("__") for n in db.list_streams())
    filt = db.query_stream("vol", "total > 3")
    push(db, ("A", 1, 0), ("B", 5, 1), ("C", 7, 20))
    got = sub.next_timeout(2000)
    assert sorted(got.fetchall()) == [("B", 5), ("C", 7)]
    win = filt.next_timeout(2000)
    assert win.fetchall() == [("B", 5, 1, at(0))]
    assert db.cancel_query(sub.id) is True
    with pytest.raises(laminardb.SchemaError, match="not found"):
        db.cancel_query(sub.id)
    assert not sub.is_active
    filt.cancel()
    assert db.active_query_count == 0
    assert db.list_streams() == ["vol"]  # the hidden streams were dropped


def test_iteration_and_with(trades):
    db = trades
    with db.subscribe_stream("vol") as sub:
        push(db, ("A", 1, 0), ("A", 1, 11), ("A", 1, 22))
        seen = []
        for r in sub:
            seen.extend(r.to_pylist())
            if len(seen) == 2:
                break
    assert [d["window_start"] for d in seen] == [at(0), at(10)]
    assert not sub.is_active


async def test_asyncio_subscription(trades):
    db = trades
    sub = await db.subscribe_stream_async("vol")
    push(db, ("A", 4, 0), ("A", 1, 15))
    async with sub:
        got = []
        async for r in sub:
            got.extend(r.fetchall())
            break
    assert got == [("A", 4, 1, at(0))]
    sub2 = await db.subscribe_async("SELECT sym FROM trades")

    async def consume():
        return [r.fetchall() async for r in sub2]

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    push(db, ("Z", 1, 30))
    await asyncio.sleep(0.3)
    sub2.cancel()
    assert await asyncio.wait_for(task, 5) == [[("Z",)]]


def test_callbacks_wait_cancel_and_errors(trades):
    db = trades
    got, errors = [], []
    sub = db.subscribe_stream_callback("vol", lambda r: got.extend(r.fetchall()), errors.append)
    assert sub.schema.names[0] == "sym"
    push(db, ("A", 2, 0), ("A", 1, 11))
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [("A", 2, 1, at(0))] and sub.is_active
    sub.cancel()
    assert sub.wait(1) and not sub.is_active and errors == []

    # an exception in on_data without on_error ends the subscription (logged); wait() returns
    # and the exception is sub.error
    class Boom(Exception):
        pass

    def bad(_):
        raise Boom("from the callback")

    sub = db.subscribe_callback("SELECT sym FROM trades", bad)
    assert "query='SELECT sym FROM trades'" in repr(sub) and "active" in repr(sub)
    push(db, ("B", 1, 30))
    assert sub.wait(5) and not sub.is_active and "finished" in repr(sub)
    assert isinstance(sub.error, Boom) and str(sub.error) == "from the callback"
    sub.cancel()

    # with on_error, the exception goes there and the subscription goes on
    caught = []
    sub = db.subscribe_callback("SELECT sym FROM trades", bad, caught.append)
    push(db, ("C", 1, 31))
    push(db, ("D", 1, 32))
    deadline = time.monotonic() + 5
    while len(caught) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # on_error gets the message (a str), with the exception as .exception
    assert caught == ["from the callback"] * 2 and [type(e.exception) for e in caught] == [Boom, Boom] and sub.is_active
    sub.cancel()


def test_callback_cancel_from_inside_the_callback(trades):
    db = trades
    holder = {}

    def on_data(r):
        holder["n"] = holder.get("n", 0) + 1
        holder["sub"].cancel()  # from the engine thread: cancels without waiting for itself

    holder["sub"] = db.subscribe_callback("SELECT sym FROM trades", on_data)
    push(db, ("A", 1, 0))
    assert holder["sub"].wait(5)
    assert holder["n"] == 1


def test_a_pushing_and_a_consuming_thread_at_once(trades):
    db = trades
    sub = db.subscribe("SELECT qty FROM trades", buffer_size=4096)
    n_batches, per_batch = 300, 50
    total = []

    def consume():
        while (r := sub.next()) is not None:
            total.append(sum(q for (q,) in r.fetchall()))

    def produce():
        with db.writer("trades") as w:
            for b in range(n_batches):
                w.insert({"sym": ["A"] * per_batch, "qty": [1] * per_batch, "ts": [at(b)] * per_batch})
            w.flush()

    c = threading.Thread(target=consume)
    c.start()
    p = threading.Thread(target=produce)
    p.start()
    # The consumer waits in next() with the GIL released; were it held, the producer could not
    # push and this join would time out.
    p.join(60)
    assert not p.is_alive(), "the producer made no progress while the consumer waited"
    deadline = time.monotonic() + 10
    while sum(total) < n_batches * per_batch and time.monotonic() < deadline:
        time.sleep(0.01)
    sub.cancel()
    c.join(5)
    assert sum(total) == n_batches * per_batch


def test_ctrl_c_interrupts_a_blocking_next(trades):
    db = trades
    sub = db.subscribe_stream("vol")
    main = threading.main_thread().ident
    done = threading.Event()

    def interrupt():
        # SIGINT every half second until the read is interrupted (one signal can arrive before
        # the read blocks); after 10 s, a deadline of its own: cancel, so the read returns and
        # the test fails instead of hanging.
        for _ in range(20):
            if done.wait(0.5):
                return
            signal.pthread_kill(main, signal.SIGINT)
        sub.cancel()

    sender = threading.Thread(target=interrupt, daemon=True)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        try:
            sender.start()
            sub.next()
        finally:
            done.set()
    sender.join()
    assert time.monotonic() - t0 < 3
    assert sub.is_active  # the subscription survives; the read was interrupted
    sub.cancel()


def test_lagging_subscriber_is_ended_with_an_error(trades):
    db = trades
    sub = db.subscribe("SELECT sym FROM trades", buffer_size=1)
    for i in range(4):
        push(db, ("A", 1, i))
    with pytest.raises(laminardb.SubscriptionError) as e:
        sub.next()
    assert "lagged" in str(e.value) and e.value.status == "RESOURCE_EXHAUSTED"


def test_many_callback_subscriptions_created_and_dropped(trades):
    db = trades
    for i in range(300):
        sub = db.subscribe_stream_callback("vol", lambda r: None)
        if i % 2:
            sub.cancel()
        else:
            with sub:
                pass
    assert db.active_query_count == 0
    for _ in range(300):
        s = db.subscribe_stream("vol")
        s.cancel()
    assert db.active_query_count == 0


def test_changelog_stream_items_carry_their_weight_column(trades):
    db = trades
    db.execute("CREATE STREAM per_sym AS SELECT sym, SUM(qty) AS q FROM trades GROUP BY sym EMIT CHANGES")
    sub = db.subscribe_stream("per_sym")
    assert sub.schema.names == ["sym", "q", "__weight"]
    push(db, ("A", 1, 0))
    push(db, ("A", 2, 1))
    rows = []
    deadline = time.monotonic() + 5
    while len(rows) < 3 and time.monotonic() < deadline:
        r = sub.next_timeout(500)
        if r is not None:
            rows.extend(r.fetchall())
    # insert (A, 1), then retract it and insert (A, 3)
    assert rows == [("A", 1, 1), ("A", 1, -1), ("A", 3, 1)]


def test_leaving_a_with_block_cancels_and_drops_the_hidden_stream(trades):
    db = trades
    sub = db.subscribe("SELECT sym FROM trades")
    push(db, ("A", 1, 0))
    assert iter(sub) is sub
    with sub:  # leaving the block cancels, also on a break
        for _ in sub:
            break
    assert not sub.is_active and db.active_query_count == 0
    assert db.list_streams() == ["vol"]
    with pytest.raises(laminardb.QueryError):
        db.subscribe("SELECT sym FROM trades; DROP SOURCE trades")
    assert db.list_tables() == ["trades"]
    # A ';' inside a string literal is part of the one statement.
    semi = db.subscribe("SELECT sym FROM trades WHERE sym <> 'a;b'")
    semi.cancel()
    assert db.subscribe('"vol"').name == "vol"  # a quoted name is a stream, not a query


def test_callback_subscription_that_ends_by_itself_is_released(trades):
    db = trades
    sub = db.subscribe_stream_callback("vol", lambda r: None)
    db.execute("DROP STREAM vol")
    assert sub.wait(5)
    deadline = time.monotonic() + 5
    while db.active_query_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert db.active_query_count == 0
