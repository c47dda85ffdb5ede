"""Child process of the kill -9 test: appends (and acks) until it is killed.

Prints ``S <seq>`` once an append has resolved (durable), ``L <seq> <seq>...`` just
before acking a batch and ``A <seq>`` once that ack has returned, flushed at once.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from buffer.api import Lane
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event

KINDS = ["gps", "engine", "dtc"]
#: Far above what 30 runs of at most 0.4 s append: eviction is a deletion of its own
#: (tests/buffer/test_eviction.py), and its counters may die with a kill -9, so here it
#: must never happen or the test could not tell it from a lost durable append.
MAX_BYTES = 256 * 2**20


async def main(path: str, durability: str, seed: int) -> None:
    rnd = random.Random(seed)
    cfg = BufferConfig(
        path=Path(path), durability="full" if durability == "full" else "normal",
        commit_interval_ms=rnd.choice([1, 5, 20]), max_bytes=MAX_BYTES,
    )
    out = sys.stdout
    async with await SqliteStore.open(cfg) as store:
        out.write("READY\n")
        out.flush()
        for i in range(1_000_000):
            futs = [
                store.submit(Event(rnd.choice(KINDS), i, {"n": i, "p": "x" * 80}))
                for _ in range(rnd.randint(1, 300))
            ]
            for f in futs:
                out.write(f"S {await f}\n")
            out.flush()
            if rnd.random() < 0.5:
                batch = await store.lease(rnd.choice(list(Lane)), rnd.randint(1, 200), 10**9)
                if batch is not None:
                    out.write("L " + " ".join(map(str, batch.seqs)) + "\n")
                    out.flush()
                    await store.ack(batch.seqs)
                    out.write("".join(f"A {s}\n" for s in batch.seqs))
                    out.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
