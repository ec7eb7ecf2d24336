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

#: name -> ``CREATE SOURCE`` statement of the Nexmark sources (the engine's own DDL).
SOURCES = dict(_laminardb.nexmark_sources())


def generate(count: int, *, first: int = 0, seed: int = 0, rate: int = 10_000_000,
             base_time_ms: int = 1_700_000_000_000) -> Tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch]:
    """Events ``[first, first + count)`` as (person, auction, bid) record batches. ``rate`` is
    events per second of event time; the same seed always gives the same events."""
    p, a, b = _laminardb.nexmark(first, count, seed, rate, base_time_ms)
    return pa.record_batch(p), pa.record_batch(a), pa.record_batch(b)
