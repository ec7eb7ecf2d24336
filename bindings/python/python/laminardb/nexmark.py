"""Nexmark, the auction benchmark, as data: a deterministic generator of person, auction and bid
events (NEXMARK.md §2) and the DDL of the three sources, to try LaminarDB with no data of your own.

    import laminardb, laminardb.nexmark as nx
    db = laminardb.open()
    for ddl in nx.SOURCES.values():
        db.execute(ddl)
    person, auction, bid = nx.generate(100_000)
    db.insert("bid", bid)
"""

from __future__ import annotations

from typing import Tuple

import pyarrow as pa

from . import _laminardb

SOURCES = {
    "person": "CREATE SOURCE person (id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, "
    "city VARCHAR, state VARCHAR, date_time TIMESTAMP, extra VARCHAR, "
    "WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
    "auction": "CREATE SOURCE auction (id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, "
    "reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR, "
    "WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
    "bid": "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, "
    "date_time TIMESTAMP, extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
}


def generate(count: int, *, first: int = 0, seed: int = 0, rate: int = 10_000_000,
             base_time_ms: int = 1_700_000_000_000) -> Tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch]:
    """Events ``[first, first + count)`` as (person, auction, bid) record batches. ``rate`` is
    events per second of event time; the same seed always gives the same events."""
    p, a, b = _laminardb.nexmark(first, count, seed, rate, base_time_ms)
    return pa.record_batch(p), pa.record_batch(a), pa.record_batch(b)
