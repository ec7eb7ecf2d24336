import datetime

import laminardb
import pytest

BASE = datetime.datetime(2024, 1, 1)


@pytest.fixture
def db():
    conn = laminardb.open(config={"workers": "2"})
    yield conn
    conn.close()


@pytest.fixture
def trades(db):
    """A source `trades (sym, qty, ts)` with a 1-second watermark delay and a 10-second
    windowed stream `vol` over it."""
    db.execute(
        "CREATE SOURCE trades (sym VARCHAR, qty BIGINT, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    )
    db.execute(
        "CREATE STREAM vol AS SELECT sym, SUM(qty) AS total, COUNT(*) AS n, window_start "
        "FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)"
    )
    return db


def at(seconds: float) -> datetime.datetime:
    return BASE + datetime.timedelta(seconds=seconds)


EPOCH = datetime.datetime(1970, 1, 1)


def ms(dt: datetime.datetime) -> int:
    """Epoch milliseconds of a naive UTC datetime (independent of the machine's time zone)."""
    return (dt - EPOCH) // datetime.timedelta(milliseconds=1)
