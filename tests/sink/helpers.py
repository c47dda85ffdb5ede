"""Running a sink in-process and reading what it stored (both backends)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg

from gateway.sink.consumer import FleetSink, SinkOptions
from gateway.sink.store import open_store

#: Mosquitto keeps 1000 queued messages per offline session by default; a sink's session
#: must not drop any while the sink restarts
BROKER_CONF = ["max_queued_messages 0", "max_inflight_messages 0"]


@contextlib.asynccontextmanager
async def running_sink(options: SinkOptions, url: str) -> AsyncIterator[FleetSink]:
    """A :class:`FleetSink` running on this loop; yields once it is subscribed."""
    loop = asyncio.get_running_loop()
    subscribed = asyncio.Event()

    def on_subscribed() -> None:
        loop.call_soon_threadsafe(subscribed.set)

    sink = FleetSink(options, open_store(url), on_subscribed=on_subscribed)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop), name=f"test-sink-{options.client_id}")
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        yield sink
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task


async def wait_until(cond: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Poll ``cond`` until it holds; fails the test after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit_s} s")
        await asyncio.sleep(0.05)


def wait_until_sync(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    """Blocking :func:`wait_until` (process tests)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit_s} s")
        time.sleep(0.05)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a fresh connection (never the sink's)."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url[len("sqlite:///"):], timeout=10)) as db:
            try:
                return [tuple(r) for r in db.execute(sql)]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
    with psycopg.connect(url) as conn:
        try:
            return [tuple(r) for r in conn.execute(sql)]
        except psycopg.errors.UndefinedTable:
            return []


def count(url: str, where: str = "") -> int:
    """Rows in ``events`` (0 before the schema exists)."""
    rows = query(url, "SELECT count(*) FROM events " + where)  # noqa: S608 -- test-written filter
    return int(rows[0][0]) if rows else 0
