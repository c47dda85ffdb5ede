"""Events stamped before any clock could be confirmed are marked ``ts_unverified``.

One place stamps every event: the agent's :class:`gateway.ingest.Ingest`; these go
through it into a real store, as the drivers' readings do.
"""

from __future__ import annotations

import time
from pathlib import Path

from buffer.api import Lane
from buffer.store import SqliteStore
from config import parse_config
from config.events import decode_body
from drivers.j1939 import SignalUpdate
from drivers.nmea_epoch import Fix
from gateway.app import Agent
from gateway.clock import Clock
from gateway.sdnotify import Notifier


def agent(tmp_path: Path, *, ntp_synced: bool) -> Agent:
    cfg = parse_config({"truck_id": "TRK-1", "mqtt": {"host": "127.0.0.1"},
                        "can": {"interface": "virtual"}, "gps": {"port": "/dev/null"},
                        "buffer": {"path": str(tmp_path / "buf.db")}})
    a = Agent(cfg, notifier=Notifier(None))
    a.clock = a.ingest.clock = Clock(system_synced=lambda: ntp_synced)
    return a


async def last_body(a: Agent) -> dict[str, object]:
    assert a.store is not None
    await a.store.flush()
    batch = await a.store.lease(Lane.BACKFILL, 10, 1 << 20)
    assert batch is not None
    return decode_body(batch.events[-1].body)


async def engine_body(a: Agent) -> dict[str, object]:
    a.store = await SqliteStore.open(a.cfg.buffer)
    try:
        a.ingest.on_can([SignalUpdate(0, 0xF004, {"engine_speed_rpm": 650.0})])
        return await last_body(a)
    finally:
        await a.store.close()


async def gps_body(a: Agent, fix: Fix) -> dict[str, object]:
    a.store = await SqliteStore.open(a.cfg.buffer)
    try:
        a.ingest.on_fix(fix)
        return await last_body(a)
    finally:
        await a.store.close()


async def test_engine_event_before_any_sync_is_marked(tmp_path: Path) -> None:
    body = await engine_body(agent(tmp_path, ntp_synced=False))
    assert body["type"] == "engine"
    assert body["ts_unverified"] is True


async def test_engine_event_with_ntp_time_is_not_marked(tmp_path: Path) -> None:
    body = await engine_body(agent(tmp_path, ntp_synced=True))
    assert body["type"] == "engine"
    assert "ts_unverified" not in body


async def test_gps_point_with_the_receivers_own_time_is_not_marked(tmp_path: Path) -> None:
    fix = Fix(43_200_000, 1_780_000_000_000, True, 3, lat=48.1, lon=11.5,
              received=time.monotonic())
    body = await gps_body(agent(tmp_path, ntp_synced=False), fix)
    assert body["ts"] == 1_780_000_000_000
    assert "ts_unverified" not in body


async def test_gps_point_stamped_by_an_unconfirmed_clock_is_marked(tmp_path: Path) -> None:
    # no date yet (no RMC): the point's time comes from the system clock
    fix = Fix(43_200_000, None, False, 3, lat=48.1, lon=11.5, received=time.monotonic())
    body = await gps_body(agent(tmp_path, ntp_synced=False), fix)
    assert body["ts_unverified"] is True


async def test_unverified_stamps_keep_their_boottime_and_boot_for_a_later_correction(
    tmp_path: Path,
) -> None:
    a = agent(tmp_path, ntp_synced=False)
    before = a.clock.boot_ms()
    body = await engine_body(a)
    assert body["ts_unverified"] is True
    stamp = body["_boot"]
    assert isinstance(stamp, list)
    boot_id, boottime_ms = stamp
    assert boot_id == a.clock.boot_id and boot_id
    assert before <= boottime_ms <= a.clock.boot_ms()
    fix = Fix(43_200_000, None, False, 3, lat=48.1, lon=11.5, received=time.monotonic() - 2)
    point = await gps_body(agent(tmp_path / "g", ntp_synced=False), fix)
    point_stamp = point["_boot"]
    assert isinstance(point_stamp, list)
    point_boot_ms = point_stamp[1]
    # the moment the fix's data arrived, 2 s ago, not the moment it was recorded
    assert abs(a.clock.boot_ms() - 2000 - point_boot_ms) < 1000


async def test_verified_stamps_carry_no_boot_stamp(tmp_path: Path) -> None:
    body = await engine_body(agent(tmp_path, ntp_synced=True))
    assert "_boot" not in body and "ts_unverified" not in body
