"""Child process of the memory test.

``build PATH N``: bulk-load N pending events straight into a new buffer file (same
schema, one transaction; far faster than the store's durable path).
``probe PATH``: open the store on it, lease and ack from both lanes, print peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

from buffer import schema
from buffer.api import Lane
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event, encode_body

MAX_BYTES = 1024 * 2**20


def build(path: Path, n: int) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(schema.connection_pragmas(
        full=False, wal_autocheckpoint=1000, journal_size_limit=4 * 2**20))
    con.execute("PRAGMA synchronous=OFF")
    con.executescript(schema.create_script())
    kinds = ["gps", "engine", "engine", "dtc"]
    con.execute("BEGIN")
    for p in schema.TABLES:
        rows = (
            (seq, 1_700_000_000_000 + seq, kinds[seq % 4],
             encode_body(Event(kinds[seq % 4], 1_700_000_000_000 + seq,
                               {"lat": 52.52, "lon": 13.405, "speed": 81.5, "n": seq,
                                "pad": "q" * 60})))
            for seq in range(1, n + 1)
            if Event(kinds[seq % 4], 0, {}).priority is p
        )
        con.executemany(schema.insert_sql(p), rows)
    con.execute("COMMIT")
    con.close()


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


async def probe(path: Path) -> None:
    cfg = BufferConfig(path=path, max_bytes=MAX_BYTES)
    async with await SqliteStore.open(cfg) as store:
        st = await store.stats()
        for i in range(40):
            batch = await store.lease(Lane.LIVE if i % 2 else Lane.BACKFILL, 20, 10**6)
            assert batch is not None
            await store.ack(batch.seqs)
        pending = (await store.stats()).pending
        print(json.dumps({"pending_at_open": st.pending, "pending": pending,
                          "hwm": _status("VmHWM"), "rss": _status("VmRSS")}))


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        asyncio.run(probe(Path(sys.argv[2])))
