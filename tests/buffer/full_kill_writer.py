"""Child process of the disk-full-then-kill test: another program (a thread here) keeps
its filesystem full, it appends until events are dropped, then waits to be killed.

Prints ``S <seq>`` for each durable append, ``D <seq>`` for each dropped one (the
number the store gave it), then ``DROPPED``, flushed at once.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from pathlib import Path

from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event

DROPPED = re.compile(r"event seq (\d+) dropped")


def fill(folder: Path, stop: threading.Event) -> None:
    """Another program takes every free byte of the filesystem, and each byte freed
    later (a WAL truncated at a checkpoint) as soon as it is free."""
    with (folder / "other-program.bin").open("ab", buffering=0) as f:
        for _ in range(1 << 18):  # bounded: 1 GiB written, or until stopped
            if stop.is_set():
                return
            try:
                f.write(b"\0" * 4096)
            except OSError:
                time.sleep(0.0005)


async def main(path: str, durability: str) -> None:
    cfg = BufferConfig(path=Path(path), durability="full" if durability == "full" else "normal",
                       commit_interval_ms=5, max_bytes=4 * 2**20)
    out = sys.stdout
    async with await SqliteStore.open(cfg) as store:
        for i in range(200):
            out.write(f"S {await store.append(Event('dtc', i, {'i': i}))}\n")
        stop = threading.Event()
        hog = threading.Thread(target=fill, args=(Path(path).parent, stop), daemon=True)
        hog.start()
        await asyncio.sleep(0.5)  # full to the last block
        dropped = 0
        for r in range(400):  # bounded: ~20 MB offered to a full filesystem
            futs = [store.submit(Event("dtc", r * 100 + i, {"i": i, "pad": "x" * 400}))
                    for i in range(100)]
            await store.flush()
            for f in futs:
                exc = f.exception()
                if exc is None:
                    out.write(f"S {f.result()}\n")
                elif m := DROPPED.search(str(exc)):
                    out.write(f"D {m.group(1)}\n")
                    dropped += 1
            if dropped >= 200:
                break
        stop.set()
        out.write("DROPPED\n")
        out.flush()
        await asyncio.sleep(120)  # killed here


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
