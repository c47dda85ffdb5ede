"""The live-apply seams: each component takes its live keys without losing state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from buffer.store import SqliteStore
from config import BufferConfig, CanSampling, MqttConfig
from config.events import Event
from drivers.j1939 import SignalUpdate
from gateway.clock import Clock
from gateway.delivery import Delivery
from gateway.delivery_actions import Publish, SendStatus, Wait
from gateway.ingest import Ingest


def test_delivery_takes_a_new_status_interval_at_once() -> None:
    m = MqttConfig(host="127.0.0.1", status_interval_s=60.0)
    core = Delivery("T1", m, 0.0)
    core.connecting(0.0)
    core.connack(0.0)
    assert not any(isinstance(a, SendStatus) for a in core.tick(5.0, 5.0))
    core.reconfigure(dataclasses.replace(m, status_interval_s=2.0, live_share=0.9,
                                         bandwidth_bytes_per_s=10_000), 5.0)
    assert any(isinstance(a, SendStatus) for a in core.tick(7.5, 7.5))


def test_delivery_takes_a_bandwidth_cap_while_messages_are_in_flight() -> None:
    from tests.uplink.test_delivery import batch, connected, lease, publish  # noqa: PLC0415

    d = connected(max_payload_bytes=1024)
    le = lease(d)
    d.leased(le.lane, batch(le.lane, range(1, 60)))
    first = publish(d, 0.0)
    d.sent(first, 1, 0.0)
    second = publish(d, 0.0)  # unlimited: no wait
    d.sent(second, 2, 0.0)
    assert d.in_flight(1)
    d.reconfigure(MqttConfig(host="broker.example", max_payload_bytes=1024,
                             bandwidth_bytes_per_s=100), 0.0)
    assert d.in_flight(1)  # nothing in flight is dropped
    for mid in range(3, 30):  # the new cap binds within one bucket (burst) of bytes
        act = d.poll(0.0)
        if isinstance(act, Wait):
            break
        assert isinstance(act, Publish)
        d.sent(act, mid, 0.0)
    else:
        raise AssertionError("the new bandwidth cap never made the sender wait")
    assert d.puback(1, 0, 0.1)  # the earlier message still settles


def test_ingest_switches_policies_and_keeps_counting() -> None:
    events: list[Event] = []
    slow = CanSampling(min_interval_s=3600.0, max_interval_s=3600.0)
    ingest = Ingest(events.append, Clock(), can=slow)
    frame = SignalUpdate(sa=0, pgn=61444, values={"engine_speed_rpm": 800.0})
    for _ in range(10):
        ingest.on_can([frame])
    assert len(events) == 1
    ingest.reconfigure(None, CanSampling(min_interval_s=0.0, max_interval_s=0.0))
    for _ in range(10):
        ingest.on_can([frame])
    assert len(events) == 11  # every frame now; none lost, none repeated
    assert ingest.stats().engine_events == 11
    ingest.reconfigure(None, CanSampling(min_interval_s=0.0, max_interval_s=0.0))  # no-op
    ingest.on_can([frame])
    assert ingest.stats().engine_events == 12


async def test_store_takes_new_ttls(tmp_path: Path) -> None:
    t = [0.0]
    cfg = BufferConfig(path=tmp_path / "b.db", ttl_s={"telemetry": 3600.0})
    store = await SqliteStore.open(cfg, mono=lambda: t[0])
    try:
        await store.append(Event("engine", 1, {"src": 0}))
        assert await store.expire_now() == 0
        t[0] = 100.0
        assert await store.expire_now() == 0  # an hour's TTL: far from it
        store.set_ttl_s({"telemetry": 10.0})
        assert await store.expire_now() == 1
        # a TTL switched on live ages what is already buffered from that moment on
        store.set_ttl_s({})
        await store.append(Event("engine", 2, {"src": 0}))
        t[0] = 200.0
        store.set_ttl_s({"telemetry": 10.0})
        assert await store.expire_now() == 0
        t[0] = 211.0
        assert await store.expire_now() == 1
    finally:
        await store.close()


def test_delivery_takes_a_new_live_share_for_the_next_lease() -> None:
    """``live_share`` is live: from all-live to 0 the next lease is the backlog's, and
    back; the messages in flight stay as they were."""
    from buffer.api import Lane  # noqa: PLC0415
    from tests.uplink.test_delivery import batch, connected, lease, publish  # noqa: PLC0415

    def share(x: float) -> MqttConfig:
        return MqttConfig(host="broker.example", encoding="json", live_share=x)

    d = connected(live_share=1.0)
    for mid in (1, 2):  # all live: the backlog gets no slot
        le = lease(d)
        assert le.lane is Lane.LIVE
        d.leased(le.lane, batch(le.lane, range(mid * 10, mid * 10 + 3)))
        d.sent(publish(d), mid, 0.0)
    d.reconfigure(share(0.0), 0.0)
    le = lease(d)
    assert le.lane is Lane.BACKFILL
    d.leased(le.lane, batch(le.lane, range(1, 4)))
    d.sent(publish(d), 3, 0.0)
    d.reconfigure(share(1.0), 0.0)
    assert lease(d).lane is Lane.LIVE
    assert all(d.in_flight(mid) for mid in (1, 2, 3))
    assert all(d.puback(mid, 0, 0.1) for mid in (1, 2, 3))


def test_the_agent_takes_a_new_log_level_and_gives_it_back(tmp_path: Path) -> None:
    """``[log] level`` is live: a pushed level reaches the root logger of a real Agent."""
    import logging  # noqa: PLC0415

    from config import LogConfig, TruckConfig  # noqa: PLC0415
    from gateway.app import Agent  # noqa: PLC0415

    cfg = TruckConfig(truck_id="t1", mqtt=MqttConfig(host="broker.invalid"),
                      buffer=BufferConfig(path=tmp_path / "buffer.db"))
    root = logging.getLogger()
    before = root.level
    agent = Agent(cfg)
    try:
        agent.apply_live(dataclasses.replace(cfg, log=LogConfig(level="debug")))
        assert root.level == logging.DEBUG
        assert agent.cfg.log.level == "debug"
        agent.apply_live(dataclasses.replace(cfg, log=LogConfig(level="error")))
        assert root.level == logging.ERROR
    finally:
        root.setLevel(before)
