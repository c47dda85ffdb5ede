"""The monthly data budget (issue #14): the pure policy, its steps, and the uplink."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from buffer.api import Batch
from buffer.store import SqliteStore
from config import CanSampling, GpsSampling
from config.events import Priority
from gateway.budget import (
    BUDGET_LINGER_S,
    DWELL_S,
    TELEMETRY_HEARTBEAT_S,
    BudgetPolicy,
    degraded_can,
    degraded_gps,
    linger_s,
)
from gateway.delivery_actions import Lease, Publish
from gateway.uplink import Uplink
from sim.broker import Mosquitto
from tests.uplink.helpers import Subscriber, append_many, make_cfg, wait_until
from tests.uplink.test_linger import connected, event
from tests.uplink.test_schema import STATUS, errors

MB = 1_000_000


def test_steps_up_one_an_hour_while_the_projection_exceeds_the_budget() -> None:
    p = BudgetPolicy(100.0)
    assert not p.update(50 * MB, 0.0)
    assert p.step == 0
    assert p.update(150 * MB, 10.0)
    assert p.step == 1
    assert not p.update(150 * MB, 10.0 + DWELL_S - 1)  # one step an hour at most
    assert p.step == 1
    assert p.update(150 * MB, 10.0 + DWELL_S)
    assert p.update(150 * MB, 10.0 + 2 * DWELL_S)
    assert p.step == 3
    assert not p.update(500 * MB, 10.0 + 3 * DWELL_S)  # the last step: nothing further
    assert p.step == 3
    # between 80 % and 100 %: it stays; below 80 %: back one step an hour
    assert not p.update(90 * MB, 10.0 + 4 * DWELL_S)
    assert p.update(70 * MB, 10.0 + 5 * DWELL_S)
    assert p.step == 2
    assert p.view().as_status() == {"mb_month": 100.0, "projected_mb": 70.0, "step": 2,
                                    "name": "fewer_positions"}


def test_no_budget_never_degrades() -> None:
    p = BudgetPolicy(0.0)
    assert not p.enabled
    assert not p.update(10_000 * MB, 0.0)
    assert p.step == 0


def test_the_recording_steps_keep_critical_events_as_they_are() -> None:
    gps, can = GpsSampling(), CanSampling(dtc_refresh_s=600.0)
    assert degraded_gps(gps, 1) == gps
    assert degraded_can(can, 2) == can
    g = degraded_gps(gps, 2)
    assert g.max_error_m == gps.max_error_m * 5
    assert g.max_interval_s == gps.max_interval_s * 4
    c = degraded_can(can, 3)
    assert c.min_interval_s == c.max_interval_s == TELEMETRY_HEARTBEAT_S
    assert c.dtc_refresh_s == can.dtc_refresh_s  # DTCs (critical) as before
    assert linger_s(5.0, 0) == 5.0
    assert linger_s(5.0, 1) == BUDGET_LINGER_S
    assert linger_s(20.0, 3) == 120.0


def test_the_budget_linger_is_longer_and_critical_events_still_go_at_once() -> None:
    d = connected(max_latency_s=5.0)
    d.set_budget_linger(60.0)
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    d.leased(le.lane, Batch(le.lane, (event(1),)), 0.0)
    le = d.poll(30.0)  # past max_latency_s, within the budget's linger
    assert isinstance(le, Lease), le
    d.leased(le.lane, Batch(le.lane, (event(2, "dtc", Priority.CRITICAL),)), 30.0)
    pub = d.poll(30.0)
    assert isinstance(pub, Publish)
    assert pub.seqs == (1, 2)


@pytest.mark.broker
async def test_a_truck_over_its_budget_says_its_step_and_lingers_longer(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore,
) -> None:
    # a budget no truck can keep: 10 kB a month
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, data_budget_mb_month=0.01,
                   status_interval_s=1.0, max_latency_s=0.0)
    steps: list[int] = []
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store, on_budget_step=steps.append)
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        seqs = await append_many(store, 300)
        assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 15)
        assert await wait_until(lambda: up.stats().usage_up_bytes_month > 10_000, 10)
        up.check_budget()
        assert steps == [1]
        assert up._core.max_latency_s == BUDGET_LINGER_S  # the core's linger
        # the step is a change: the next status check publishes it
        assert await sub.wait_for(lambda s: any(
            (x.get("budget") or {}).get("step") == 1 for x in s.status), 10), sub.status
        with sub.lock:
            assert sub.status[0]["budget"]["name"] == "normal"  # the connect's
            first = next(x for x in sub.status if (x.get("budget") or {}).get("step") == 1)
        assert first["budget"]["name"] == "linger"
        assert errors(STATUS, first) == [], first
        assert first["budget"]["projected_mb"] > 0.01
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()


def test_the_agent_applies_the_recording_steps_and_returns_from_them(tmp_path: Path) -> None:
    """Steps 2 and 3 reach the recording policies of a real Agent (gateway.app), and
    step 0 gives the configured sampling back; critical events are not touched."""
    from config import BufferConfig, CanConfig, GpsConfig, MqttConfig, TruckConfig  # noqa: PLC0415
    from gateway.app import Agent  # noqa: PLC0415

    cfg = TruckConfig(truck_id="t1", mqtt=MqttConfig(host="broker.invalid"),
                      gps=GpsConfig(port=str(tmp_path / "gps")),
                      can=CanConfig(interface="virtual", channel="budget"),
                      buffer=BufferConfig(path=tmp_path / "buffer.db"))
    assert cfg.gps is not None and cfg.can is not None
    agent = Agent(cfg)
    gps0, can0 = cfg.gps.sampling, cfg.can.sampling
    assert agent.ingest.gps_sampling == gps0 and agent.ingest.can_sampling == can0
    agent.budget_step(1)  # the longer linger only: recording unchanged
    assert agent.ingest.gps_sampling == gps0 and agent.ingest.can_sampling == can0
    agent.budget_step(2)
    assert agent.ingest.gps_sampling == degraded_gps(gps0, 2) != gps0
    assert agent.ingest.can_sampling == can0
    agent.budget_step(3)
    assert agent.ingest.gps_sampling == degraded_gps(gps0, 3)
    assert agent.ingest.can_sampling == degraded_can(can0, 3) != can0
    agent.budget_step(0)
    assert agent.ingest.gps_sampling == gps0 and agent.ingest.can_sampling == can0
