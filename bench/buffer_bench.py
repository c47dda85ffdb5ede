"""Benchmark of the store-and-forward buffer (issue 3 targets).

Prints, each with the command that reproduces it:
- append rate with durability "normal" and "full" (group commit), ~150-byte events;
- lease + ack drain rate from a large backlog, uplink-style (several batches in flight,
  live and backfill lanes alternating);
- bytes written to disk per stored event (``/proc/self/io`` write_bytes and wchar),
  against the encoded event size.

Run: ``.venv/bin/python bench/buffer_bench.py [--events N] [--backlog N] [--dir D]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Literal

from buffer.api import Batch, Lane
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event, encode_body

CMD = "python bench/buffer_bench.py " + " ".join(sys.argv[1:])
CHUNK = 2000  # events submitted between awaits (a busy ingest loop)
MAX_CHUNKS_IN_FLIGHT = 10


def _io() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def _event(i: int) -> Event:
    kind = "engine" if i % 3 == 0 else "gps"
    fields = {"lat": 52.5200066 + i * 1e-6, "lon": 13.404954, "speed": 81.25, "course": 271.5,
              "alt": 34.2, "sats": 11, "hdop": 0.8, "fix": "3d", "trip": "t-0042"}
    return Event(kind, 1_767_225_600_000 + i * 100, fields)


async def _append(cfg: BufferConfig, n: int) -> tuple[float, float, dict[str, int]]:
    t0 = time.perf_counter()
    async with await SqliteStore.open(cfg) as store:
        io0 = _io()  # after open: the one-time ballast file is not per-event cost
        outstanding: deque[asyncio.Future[int]] = deque()
        for start in range(0, n, CHUNK):
            for i in range(start, min(n, start + CHUNK)):
                fut = store.submit(_event(i))
            outstanding.append(fut)
            if len(outstanding) > MAX_CHUNKS_IN_FLIGHT:  # a producer that awaits its appends
                await outstanding.popleft()
            await asyncio.sleep(0)
        await store.flush()
        t1 = time.perf_counter()
        st = await store.stats()
        assert st.pending == n, st
        assert not sum(st.evicted_by_class.values()), st
    io1 = _io()  # after close: includes the final checkpoint
    return n / (t1 - t0), t1 - t0, {k: io1[k] - io0[k] for k in io0}


async def _trickle(cfg: BufferConfig, rate: int, seconds: float) -> dict[str, int]:
    """A truck's real pace: ``rate`` events/s, each append awaited on its own."""
    async with await SqliteStore.open(cfg) as store:
        io0 = _io()
        for i in range(int(rate * seconds)):
            store.submit(_event(i))
            await asyncio.sleep(1 / rate)
        await store.flush()
    io1 = _io()
    return {k: io1[k] - io0[k] for k in io0}


async def _drain(cfg: BufferConfig, window: int, batch: int) -> tuple[float, int, int]:
    async with await SqliteStore.open(cfg) as store:
        pending = (await store.stats()).pending
        inflight: deque[Batch] = deque()
        n = 0
        i = 0
        t0 = time.perf_counter()
        while True:
            lane = Lane.LIVE if i % 2 else Lane.BACKFILL
            i += 1
            b = await store.lease(lane, batch, 256 * 1024)
            if b is None and not inflight:
                break
            if b is not None:
                inflight.append(b)
                n += len(b.events)
            if len(inflight) >= window or b is None:
                await store.ack(inflight.popleft().seqs)
        dt = time.perf_counter() - t0
        assert (await store.stats()).pending == 0
    return n / dt, n, pending


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=300_000, help="events per append run")
    ap.add_argument("--backlog", type=int, default=1_000_000, help="backlog to drain")
    ap.add_argument("--dir", default=None, help="folder for the buffer files (default: tmp)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="buffer-bench-", dir=args.dir))
    size = len(encode_body(_event(1)))
    print(f"# buffer bench, encoded event size {size} bytes, files in {folder}")
    print(f"# reproduce: {CMD}")
    try:
        for dur in ("normal", "full"):
            d: Literal["normal", "full"] = "full" if dur == "full" else "normal"
            cfg = BufferConfig(path=folder / f"append-{dur}.db", durability=d,
                               max_bytes=2 * 2**30)
            rate, dt, io = await _append(cfg, args.events)
            print(f"append durability={dur}: {rate:,.0f} events/s "
                  f"({args.events:,} events in {dt:.2f} s)")
            print(f"  disk bytes written per event: {io['write_bytes'] / args.events:.0f} "
                  f"(write_bytes) / {io['wchar'] / args.events:.0f} (wchar) = "
                  f"{io['write_bytes'] / args.events / size:.2f}x / "
                  f"{io['wchar'] / args.events / size:.2f}x the encoded size")
        for interval in (50, 1000):
            n = 50 * 4
            cfg = BufferConfig(path=folder / f"trickle-{interval}.db", commit_interval_ms=interval)
            io = await _trickle(cfg, 50, 4.0)
            print(f"trickle 50 events/s, commit_interval_ms={interval}: "
                  f"{io['write_bytes'] / n:,.0f} disk bytes written per event "
                  f"({io['write_bytes'] / n / size:.1f}x)")
        cfg = BufferConfig(path=folder / "drain.db", max_bytes=2 * 2**30)
        rate, dt, io = await _append(cfg, args.backlog)
        print(f"backlog of {args.backlog:,} built at {rate:,.0f} events/s")
        io0 = _io()
        rate, n, pending = await _drain(cfg, window=16, batch=500)
        io1 = _io()
        print(f"drain (lease+ack, 16 batches of 500 in flight, lanes alternating): "
              f"{rate:,.0f} events/s ({n:,} of {pending:,} pending)")
        wb = io1["write_bytes"] - io0["write_bytes"]
        print(f"  disk bytes written per acked event: {wb / max(1, n):.0f} "
              f"({wb / max(1, n) / size:.2f}x the encoded size)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
