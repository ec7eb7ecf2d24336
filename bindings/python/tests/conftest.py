import datetime
import os
from pathlib import Path

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


def kafka_address():
    """The broker of ``scripts/services.sh start kafka``: ``$LAMINAR_KAFKA``, else the
    ``LAMINAR_KAFKA=`` line of ``<target dir>/services.env``; None when neither exists."""
    if os.environ.get("LAMINAR_KAFKA"):
        return os.environ["LAMINAR_KAFKA"]
    env = services_env()
    if env.exists():
        for line in env.read_text().splitlines():
            if line.startswith("LAMINAR_KAFKA="):
                return line.split("=", 1)[1]
    return None


def services_env() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).resolve().parents[3] / "target"))
    return target / "services.env"
