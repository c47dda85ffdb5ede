"""The real uplink with a failover list, against real Mosquitto brokers standing in for the
nodes of a cluster: a dead first address costs no backoff, a dropped link moves the truck to
the next address, and the status says where the truck is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from config import BufferConfig
from gateway.uplink import UplinkState
from sim.broker import Mosquitto, free_port
from tests.uplink.helpers import Subscriber, append_many, make_cfg, running

pytestmark = pytest.mark.broker


async def _store(tmp_path: Path) -> SqliteStore:
    return await SqliteStore.open(BufferConfig(path=tmp_path / "buffer.db",
                                               commit_interval_ms=10))


def _online(sub: Subscriber) -> list[dict[str, object]]:
    with sub.lock:
        return [s for s in sub.status if s["state"] == "online"]


async def test_dead_first_address_next_one_at_once(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    dead = free_port()  # nothing listens there
    # a 30 s backoff floor: only the failover's "next address at once" connects in time
    cfg = make_cfg(tmp_path, "127.0.0.1", dead, reconnect_min_s=30.0, reconnect_max_s=60.0,
                   failover=(f"127.0.0.1:{mosquitto.port}",))
    store = await _store(tmp_path)
    sub = Subscriber(mosquitto.host, mosquitto.port)
    try:
        seqs = await append_many(store, 200)
        async with running(cfg, store) as up:
            assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 15), up.stats()
            assert up.state is UplinkState.CONNECTED
            assert up.broker.index == 1
            online = _online(sub)
            assert online[-1]["broker"] == {"address": f"127.0.0.1:{mosquitto.port}",
                                            "index": 1, "switches": 1}
    finally:
        sub.close()
        await store.close()


async def test_dropped_link_moves_to_the_next_node_and_stays(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    a, b = mosquitto_factory(), mosquitto_factory()
    cfg = make_cfg(tmp_path, a.host, a.port, reconnect_min_s=30.0, reconnect_max_s=60.0,
                   failover=(f"{b.host}:{b.port}",))
    store = await _store(tmp_path)
    sub_a, sub_b = Subscriber(a.host, a.port), Subscriber(b.host, b.port)
    try:
        first = await append_many(store, 100)
        async with running(cfg, store) as up:
            assert await sub_a.wait_for(lambda s: set(first) <= s.seen(), 15)
            assert _online(sub_a)[0]["broker"] == {"address": f"{a.host}:{a.port}",
                                                   "index": 0, "switches": 0}
            sub_a.close()
            a.stop()  # node A dies: the link drops
            second = await append_many(store, 100, start=100)
            assert await sub_b.wait_for(lambda s: set(second) <= s.seen(), 15), up.stats()
            assert _online(sub_b)[0]["broker"] == {"address": f"{b.host}:{b.port}",
                                                   "index": 1, "switches": 1}
            a.start()  # A is back: the truck stays where it works
            third = await append_many(store, 50, start=200)
            assert await sub_b.wait_for(lambda s: set(third) <= s.seen(), 15)
            assert up.broker.index == 1 and up.broker.switches == 1
    finally:
        sub_b.close()
        await store.close()


async def test_one_address_reports_index_zero(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port)
    store = await _store(tmp_path)
    sub = Subscriber(mosquitto.host, mosquitto.port)
    try:
        async with running(cfg, store):
            assert await sub.wait_for(lambda s: bool(_online(s)), 10)
            assert _online(sub)[0]["broker"] == {
                "address": f"{mosquitto.host}:{mosquitto.port}", "index": 0, "switches": 0}
    finally:
        sub.close()
        await store.close()

