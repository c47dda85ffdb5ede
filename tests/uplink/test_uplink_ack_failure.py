"""Issue #13 case 4: the delete after a PUBACK fails, then works again.

A real SQLite buffer whose DELETEs of event rows fail inside the real store: an SQLite
authorizer on the store's own connection denies them (what a disk too full to delete
or an I/O error at ack time looks like to the store: the DELETE statement fails), then
is removed. A real Mosquitto and subscriber on the other side.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from sim.broker import Mosquitto
from tests.uplink.helpers import Subscriber, append_many, counter, make_cfg, running, wait_until

pytestmark = pytest.mark.broker


def _deny_event_deletes(action: int, arg1: str | None, _arg2: str | None,
                        _db: str | None, _src: str | None) -> int:
    if action == sqlite3.SQLITE_DELETE and (arg1 or "").startswith("ev_"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


async def deletes_fail(store: SqliteStore, failing: bool) -> None:
    """Make every DELETE of an event row in the store's file fail (or work again)."""
    async with store._db.locked() as conn:  # the store's real connection
        await conn.set_authorizer(_deny_event_deletes if failing else None)


def extra(stats_extra: object, key: str) -> int:
    value = dict(stats_extra).get(key, 0)  # type: ignore[call-overload]
    assert isinstance(value, int)
    return value


async def test_failed_delete_after_puback_is_resent_later_without_a_busy_loop(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, status_interval_s=1.0)
    sub = Subscriber(mosquitto.host, mosquitto.port)
    try:
        async with running(cfg, store) as up:
            first = await append_many(store, 200)
            assert await sub.wait_for(lambda s: set(first) <= s.seen(), 15), up.stats()
            assert await wait_until(lambda: counter(up, "acked_events") >= 200, 10)

            await deletes_fail(store, True)
            second = await append_many(store, 300, start=200)
            assert await sub.wait_for(lambda s: set(second) <= s.seen(), 15), up.stats()
            assert await wait_until(lambda: counter(up, "ack_failures") >= 1, 10), up.stats()
            st = await store.stats()
            assert st.pending == 300  # delivered, but not deleted: still buffered
            assert extra(st.extra, "ack_failures") >= 1

            # no busy loop: over two seconds of failing deletes the sender leases only a
            # handful of times (the old code leased, found nothing and woke at once,
            # thousands of times a second) and resends at most a few rounds
            leases0, published0 = extra(st.extra, "lease_calls"), counter(up, "published_events")
            await asyncio.sleep(2.0)
            st = await store.stats()
            assert extra(st.extra, "lease_calls") - leases0 <= 40, st.extra
            assert counter(up, "published_events") - published0 <= 3 * 300, up.stats()
            assert st.pending == 300

            # the status says so
            assert await sub.wait_for(lambda s: any(
                (m.get("uplink") or {}).get("ack_failures", 0) >= 1 for m in s.status), 10)

            # recovery by itself once deletes work again
            await deletes_fail(store, False)
            for _ in range(120):  # bounded: at most 60 s (the hold backoff caps at 30 s)
                if (await store.stats()).pending == 0:
                    break
                await asyncio.sleep(0.5)
            st = await store.stats()
            assert st.pending == 0, (st, up.stats())
            assert st.leased == 0
            assert set(first + second) <= sub.seen()
    finally:
        sub.close()
    failed = [r for r in caplog.records if "deleting" in r.getMessage() and "failed" in
              r.getMessage()]
    recovered = [r for r in caplog.records if "deletes work again" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]  # one line per episode
    assert len(recovered) == 1
