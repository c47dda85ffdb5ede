"""The uplink against a real Mosquitto: delivery, acks, status, close."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from gateway.uplink import Uplink, UplinkState
from sim.broker import Mosquitto
from tests.uplink.helpers import Subscriber, append_many, counter, make_cfg

pytestmark = pytest.mark.broker


async def _drain(up: Uplink, store: SqliteStore, sub: Subscriber, seqs: list[int],
                 timeout: float = 30) -> None:
    want = set(seqs)
    assert await sub.wait_for(lambda s: want <= s.seen(), timeout), (
        f"missing {len(want - sub.seen())} seqs; stats={up.stats()}")
    for _ in range(200):
        if (await store.stats()).pending == 0:
            break
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("protocol", "encoding"),
                         [("5", "json"), ("5", "compact"), ("3.1.1", "json"),
                          ("3.1.1", "compact")])
async def test_delivers_every_event_and_acks(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore, protocol: str, encoding: str
) -> None:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, protocol=protocol,
                   encoding=encoding, max_payload_bytes=16384, status_detail="full")
    seqs = await append_many(store, 3000)
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store, status_extra=lambda: {"gps": {"fix": True}})
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        await _drain(up, store, sub, seqs)
        st = await store.stats()
        assert st.pending == 0
        assert up.state is UplinkState.CONNECTED
        stats = up.stats()
        assert stats.acked_events == len(seqs)
        assert counter(up, "published_messages") > 1  # 3000 events do not fit in 16 KiB
        assert not sub.errors
        assert all(b["truck_id"] == "truck-001" for b in sub.batches)
        topics = {t for t, _, _ in sub.raw if "/events" in t}
        if protocol == "3.1.1" and encoding == "compact":
            assert topics == {"fleet/truck-001/events/json-zstd"}
        else:
            assert topics == {"fleet/truck-001/events"}
        online = [s for s in sub.status if s["state"] == "online"]
        assert online and online[0]["gps"] == {"fix": True}
        assert "pending" in online[0] and "version" in online[0]
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()
    assert up.stats().state is UplinkState.CLOSED


async def test_close_publishes_retained_offline(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore
) -> None:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store)
    task = asyncio.create_task(up.run(), name="uplink")
    sub = Subscriber(mosquitto.host, mosquitto.port)
    try:
        assert await sub.wait_for(lambda s: any(x["state"] == "online" for x in s.status), 10)
    finally:
        await up.close()
        await asyncio.wait_for(task, 10)
        sub.close()
    # a fresh subscriber gets the retained status: offline, by our own shutdown
    late = Subscriber(mosquitto.host, mosquitto.port, "fleet/+/status")
    try:
        assert await late.wait_for(lambda s: bool(s.status), 5)
        assert late.status[-1]["state"] == "offline"
        assert late.status[-1]["reason"] == "shutdown"
    finally:
        late.close()


async def test_cancel_leaves_the_will(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore
) -> None:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store)
    task = asyncio.create_task(up.run(), name="uplink")
    sub = Subscriber(mosquitto.host, mosquitto.port, "fleet/+/status")
    try:
        assert await sub.wait_for(lambda s: any(x["state"] == "online" for x in s.status), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await sub.wait_for(lambda s: s.status[-1]["state"] == "offline", 10)
        assert json.loads(json.dumps(sub.status[-1]))["reason"] == "connection lost"
    finally:
        await up.close()
        sub.close()


async def test_unencodable_stored_body_is_dropped_not_blocking(
    tmp_path: Path, mosquitto: Mosquitto, open_store: Callable[[str], Awaitable[SqliteStore]]
) -> None:
    store = await open_store("buffer.db")
    seqs = await append_many(store, 20)
    await store.close()
    # a body that is not a JSON object (bit rot the integrity check did not catch)
    with sqlite3.connect(tmp_path / "buffer.db") as db:
        db.execute("UPDATE ev_telemetry SET body = ? WHERE seq = ?", (b"\xffgarbage", seqs[5]))
    db.close()
    store = await open_store("buffer.db")
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port)
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store)
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        good = set(seqs) - {seqs[5]}
        assert await sub.wait_for(lambda s: good <= s.seen(), 10), up.stats()
        assert seqs[5] not in sub.seen()
        assert counter(up, "dropped_unencodable") == 1
        for _ in range(100):
            if (await store.stats()).pending == 0:
                break
            await asyncio.sleep(0.05)
        assert (await store.stats()).pending == 0
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()
        await store.close()
