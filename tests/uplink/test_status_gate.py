"""Status on change plus a slow heartbeat (issue #14): the pure gate, then a real broker."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from buffer.store import SqliteStore
from gateway.uplink import Uplink
from gateway.uplink_status import StatusGate, backlog_level, vehicle_identity
from sim.broker import Mosquitto
from tests.uplink.helpers import Subscriber, append_many, make_cfg, wait_until

BASE: dict[str, Any] = {
    "version": "0.1.0", "stream": "0123456789abcdef", "pending": 0, "pending_bytes": 0,
    "oldest_pending_ts": None, "oldest_pending_age_s": None, "evicted": {}, "expired": {},
    "disk_full": False, "refused": 0, "lost_quarantine": 0, "encoding": "json",
    "uplink": {"reconnects": 0, "published_events": 10, "acked_events": 10, "refusals": 0,
               "ack_failures": 0, "size_refusals": 0},
    "broker": {"address": "a:1", "index": 0, "switches": 0},
}


def changed(**kw: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    for k, v in kw.items():
        if k.startswith("uplink_"):
            out["uplink"][k[len("uplink_"):]] = v
        else:
            out[k] = v
    return out


def test_first_status_goes_then_only_on_change_or_heartbeat() -> None:
    g = StatusGate(heartbeat_s=3600.0)
    assert g.due(BASE, 0.0)
    g.sent(BASE, 0.0)
    # counters that move with every event are not a change
    busy = changed(uplink_published_events=5000, uplink_acked_events=4990, pending=7,
                   pending_bytes=900, oldest_pending_age_s=3.0, oldest_pending_ts=1)
    for t in (60.0, 120.0, 3599.0):
        assert not g.due(busy, t)
    assert g.skipped == 3
    assert g.due(busy, 3600.0)  # the heartbeat
    g.sent(busy, 3600.0)
    assert not g.due(busy, 3660.0)


@pytest.mark.parametrize("change", [
    {"evicted": {"telemetry": 3}}, {"expired": {"position": 1}}, {"refused": 1},
    {"lost_quarantine": 2}, {"disk_full": True}, {"stream": "fedcba9876543210"},
    {"version": "0.2.0"}, {"encoding": "compact"}, {"uplink_refusals": 1},
    {"uplink_ack_failures": 1}, {"uplink_size_refusals": 1},
    {"broker": {"address": "b:1", "index": 1, "switches": 1}},
    {"budget": {"step": 1}},
    # the vehicle: an ECU at another address, a driver's card in
    {"vehicle": {"names": {"03": "A00C810102E00000"}, "address_moves": 1}},
    {"vehicle": {"drivers": {"EE": {"driver1": "DF000000123456"}}}},
    # a backlog builds up (an outage), and grows by a decade
    {"pending": 500, "oldest_pending_age_s": 900.0},
])
def test_what_a_fleet_acts_on_is_a_change(change: dict[str, Any]) -> None:
    g = StatusGate(heartbeat_s=3600.0)
    g.sent(BASE, 0.0)
    assert g.due(changed(**change), 60.0), change


def test_backlog_levels_by_decade_and_caught_up() -> None:
    assert backlog_level({"pending": 0, "oldest_pending_age_s": None}) == 0
    assert backlog_level({"pending": 40, "oldest_pending_age_s": 5.0}) == 0  # live traffic
    assert backlog_level({"pending": 5, "oldest_pending_age_s": 600.0}) == 2
    assert backlog_level({"pending": 50, "oldest_pending_age_s": 600.0}) == 3
    assert backlog_level({"pending": 50_000, "oldest_pending_age_s": 600.0}) == 6
    # the drain ends: caught up again is a change too
    g = StatusGate(heartbeat_s=3600.0)
    behind = changed(pending=50_000, oldest_pending_age_s=900.0)
    g.sent(behind, 0.0)
    assert not g.due(changed(pending=60_000, oldest_pending_age_s=960.0), 60.0)
    assert g.due(changed(pending=0, oldest_pending_age_s=None), 120.0)


CAN = {"state": "active", "frames_total": 5000, "address_moves": 0,
       "names": {"00": {"name": "A00C810000E00000", "manufacturer": 0x50, "function": 0,
                        "identity": 1}},
       "fms": {"27": {"version": "0400", "diagnostics": True, "requests": True}},
       "drivers": {}}


def test_the_vehicle_identity_of_the_can_section() -> None:
    assert vehicle_identity(None) == {} and vehicle_identity({"state": "active"}) == {}
    assert vehicle_identity(CAN) == {
        "names": {"00": "A00C810000E00000"},
        "fms": {"27": {"version": "0400", "diagnostics": True, "requests": True}}}
    moved = {**CAN, "address_moves": 2, "drivers": {"EE": {"driver1": "DF1"}}}
    assert vehicle_identity(moved)["address_moves"] == 2
    assert vehicle_identity(moved)["drivers"] == {"EE": {"driver1": "DF1"}}


@pytest.mark.broker
async def test_the_slim_status_carries_the_vehicle_and_a_card_in_sends_one(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore,
) -> None:
    """Who drives and which ECUs are on the bus reach the fleet with the default (slim)
    status, and a driver's card going in is a change: a status within the interval."""
    from tests.uplink.test_schema import STATUS, errors  # noqa: PLC0415

    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, status_interval_s=0.5,
                   status_heartbeat_s=3600.0, max_latency_s=0.0)
    extra: dict[str, Any] = {"can": copy.deepcopy(CAN), "healthy": True}
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store, status_extra=lambda: extra)
    task = asyncio.create_task(up.run(), name="uplink")

    def online() -> list[dict[str, Any]]:
        with sub.lock:
            return [s for s in sub.status if s["state"] == "online"]

    try:
        assert await wait_until(lambda: len(online()) == 1, 15)
        first = online()[0]
        assert "can" not in first  # slim
        assert first["vehicle"] == {"names": {"00": "A00C810000E00000"},
                                    "fms": {"27": {"version": "0400", "diagnostics": True,
                                                   "requests": True}}}
        assert errors(STATUS, first) == []
        gate = up._status.gate
        assert await wait_until(lambda: gate.skipped >= 2, 15)  # nothing changed: held
        extra["can"] = {**extra["can"], "drivers": {"EE": {"driver1": "DF000000123456"}}}
        assert await wait_until(lambda: len(online()) == 2, 15), online()
        assert online()[1]["vehicle"]["drivers"] == {"EE": {"driver1": "DF000000123456"}}
        assert errors(STATUS, online()[1]) == []
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()


@pytest.mark.broker
async def test_a_quiet_truck_sends_its_status_once_then_the_heartbeat(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore,
) -> None:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, status_interval_s=1.0,
                   status_heartbeat_s=3600.0, max_latency_s=0.0)
    extra = {"gps": {"fix": True}, "can": {"sources": 4}, "buffer": {"pending": 0},
             "uptime_s": 1.0, "healthy": True}
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store, status_extra=lambda: extra)
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        seqs = await append_many(store, 20)
        assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 15)
        gate = up._status.gate  # the gate's own count of held-back checks
        assert await wait_until(lambda: gate.skipped >= 3, 20), gate.skipped
        with sub.lock:
            online = [s for s in sub.status if s["state"] == "online"]
        assert len(online) == 1, online  # the connect's; every later check held back
        # slim: what a fleet needs; the health sections stay local
        assert online[0]["healthy"] is True
        assert not {"gps", "can", "buffer", "uptime_s"} & set(online[0])
        for key in ("pending", "evicted", "expired", "refused", "lost_quarantine", "uplink"):
            assert key in online[0], key  # the gap accounting's counters
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()
    with sub.lock:
        assert sub.status[-1]["state"] == "offline"
    assert json.loads(json.dumps(sub.status[-1]))["reason"] == "shutdown"


@pytest.mark.broker
async def test_full_detail_and_a_short_heartbeat(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore,
) -> None:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, status_interval_s=1.0,
                   status_heartbeat_s=2.0, status_detail="full")
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store, status_extra=lambda: {"gps": {"fix": True}, "healthy": True})
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        assert await sub.wait_for(
            lambda s: sum(1 for x in s.status if x["state"] == "online") >= 3, 20)
        with sub.lock:
            assert all("gps" in x for x in sub.status if x["state"] == "online")
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()


@pytest.mark.parametrize(("detail", "section_change_is_due"), [("slim", False), ("full", True)])
async def test_health_changes_are_changes(
    tmp_path: Path, store: SqliteStore, detail: str, section_change_is_due: bool,
) -> None:
    from gateway.delivery_actions import UplinkState, UplinkStats  # noqa: PLC0415
    from gateway.uplink_status import StatusReport  # noqa: PLC0415

    extra: dict[str, Any] = {"healthy": True, "can": {"state": "active"}}
    cfg = make_cfg(tmp_path, "127.0.0.1", 1, status_detail=detail)
    report = StatusReport(cfg, store, lambda: UplinkStats(UplinkState.CONNECTED),
                          lambda: extra)
    fields = await report.online_fields()
    report.gate.sent(report.gate_view(fields), 0.0)
    assert not report.gate.due(report.gate_view(fields), 60.0)
    extra["can"] = {"state": "silent"}
    assert report.gate.due(report.gate_view(fields), 120.0) is section_change_is_due
    extra["healthy"] = False  # a truck turning unhealthy is news, slim or full
    assert report.gate.due(report.gate_view(fields), 180.0)
