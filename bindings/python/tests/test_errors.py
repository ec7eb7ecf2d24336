"""The exception mapping table (DESIGN §5), each entry produced by a real error where the engine
can produce it today."""

import os

import laminardb
import pytest
from laminardb import codes
from laminardb._errors import STATUS_MAP, from_status

EXPECTED = {
    "NOT_FOUND": (laminardb.SchemaError, codes.TABLE_NOT_FOUND),
    "ALREADY_EXISTS": (laminardb.SchemaError, codes.TABLE_EXISTS),
    "INVALID_DATA": (laminardb.IngestionError, codes.BATCH_SCHEMA_MISMATCH),
    "SQL_SYNTAX": (laminardb.QueryError, codes.SQL_PARSE_ERROR),
    "PLAN": (laminardb.QueryError, codes.QUERY_FAILED),
    "CANCELLED": (laminardb.QueryError, codes.QUERY_CANCELLED),
    "TIMEOUT": (laminardb.SubscriptionError, codes.SUBSCRIPTION_TIMEOUT),
    "CLOSED": (laminardb.ConnectionError, codes.CONNECTION_CLOSED),
    "INTERNAL": (laminardb.LaminarError, codes.INTERNAL_ERROR),
    "UNKNOWN": (laminardb.LaminarError, codes.INTERNAL_ERROR),
}


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_table(status):
    cls, code = EXPECTED[status]
    e = from_status(status, "msg")
    assert isinstance(e, cls) and e.code == code and e.status == status and str(e) == "msg"


def test_every_abi_status_is_mapped():
    for name in laminardb.STATUS:
        if name != "OK":
            assert name in STATUS_MAP, name
    assert issubclass(laminardb.ConnectionError, ConnectionError)  # the built-in one too
    assert issubclass(laminardb.BatchSchemaError, laminardb.SchemaError)


def test_real_errors(db):
    db.execute("CREATE SOURCE s (a BIGINT, ts TIMESTAMP)")
    cases = [
        (lambda: db.schema("nope"), "NOT_FOUND"),
        (lambda: db.execute("CREATE SOURCE s (a BIGINT)"), "ALREADY_EXISTS"),
        (lambda: db.insert("s", {"a": ["x"], "ts": [None]}), "INVALID_DATA"),
        (lambda: db.execute("CREATE SOURC x"), "SQL_SYNTAX"),
        (lambda: db.execute("CREATE STREAM x AS SELECT nope FROM s"), "PLAN"),
    ]
    for fn, status in cases:
        cls, code = EXPECTED[status]
        with pytest.raises(cls) as e:
            fn()
        assert e.value.code == code and e.value.status == status, (status, e.value)
    db.close()
    with pytest.raises(laminardb.ConnectionError) as e:
        db.execute("SHOW SOURCES")
    assert e.value.code == codes.CONNECTION_CLOSED


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_a_clear_error(db):
    db.execute("CREATE SOURCE s (a BIGINT)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            db.query("SELECT * FROM s")
            msg = b"no error"
        except laminardb.LaminarError as e:
            msg = f"{e.status}: {e}".encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    out = os.read(r, 4096).decode()
    os.close(r)
    assert os.WEXITSTATUS(status) == 0
    assert out.startswith("INVALID_STATE") and "fork" in out
    assert db.query("SELECT * FROM s").num_rows == 0  # the parent goes on


def test_a_failed_stream_raises_stream_error(db):
    """A stream that fails (division by zero) says so: StreamError naming it, the status kept."""
    db.execute("CREATE SOURCE s (k BIGINT, v BIGINT)")
    db.execute("CREATE STREAM x AS SELECT k, 10 / v AS y FROM s")
    db.execute("CREATE MATERIALIZED VIEW mv AS SELECT k, 10 / v AS y FROM s")
    sub = db.subscribe_stream("x")
    db.insert("s", {"k": [1], "v": [0]})
    with pytest.raises(laminardb.StreamError) as e:
        for _ in range(1000):
            sub.next_timeout(100)
    assert e.value.stream == "x" and e.value.status == "INVALID_DATA", e.value
    assert not isinstance(e.value, laminardb.BatchSchemaError)
    with pytest.raises(laminardb.StreamError) as e:
        db.subscribe_stream("x")
    assert e.value.stream == "x"
    with pytest.raises(laminardb.StreamError) as e:
        db.query("SELECT * FROM mv")
    assert e.value.stream == "mv" and "materialized view 'mv' has failed" in str(e.value)
    # Bad data is still a BatchSchemaError naming no stream.
    with pytest.raises(laminardb.BatchSchemaError) as e:
        db.insert("s", {"k": ["not a number"], "v": [1]})
    assert e.value.stream is None


def test_engine_errors_keep_their_cause(db):
    db.execute("CREATE SOURCE s (k BIGINT, v BIGINT)")
    with pytest.raises(laminardb.QueryError) as e:
        db.query("SELECT no_such_column FROM s")
    cause = e.value.__cause__
    assert isinstance(cause, laminardb.EngineCause), cause
    assert (cause.library, cause.kind) == ("datafusion", "SchemaError") and "no_such_column" in cause.message
    # An error made by LaminarDB itself has no underlying cause.
    with pytest.raises(laminardb.SchemaError) as e:
        db.schema("nope")
    assert e.value.__cause__ is None
