"""Events stamped before any clock could be confirmed are marked ``ts_unverified``."""

from __future__ import annotations

from pathlib import Path

from buffer.api import Lane
from buffer.store import SqliteStore
from config import parse_config
from config.events import Event, decode_body
from gateway.app import Agent
from gateway.clock import Clock
from gateway.sdnotify import Notifier


def agent(tmp_path: Path, *, ntp_synced: bool) -> Agent:
    cfg = parse_config({"truck_id": "TRK-1", "mqtt": {"host": "127.0.0.1"},
                        "can": {"interface": "virtual"},
                        "buffer": {"path": str(tmp_path / "buf.db")}})
    a = Agent(cfg, notifier=Notifier(None))
    a.clock = Clock(system_synced=lambda: ntp_synced)
    return a


async def submit_and_read(a: Agent, event: Event) -> dict[str, object]:
    a.store = await SqliteStore.open(a.cfg.buffer)
    try:
        await a.submit(event)
        batch = await a.store.lease(Lane.BACKFILL, 10, 1 << 20)
        assert batch is not None
        return decode_body(batch.events[-1].body)
    finally:
        await a.store.close()


async def test_engine_event_before_any_sync_is_marked(tmp_path: Path) -> None:
    a = agent(tmp_path, ntp_synced=False)
    body = await submit_and_read(a, Event("engine", a.clock.now_ms(), {"src": 0}))
    assert body["ts_unverified"] is True


async def test_engine_event_with_ntp_time_is_not_marked(tmp_path: Path) -> None:
    a = agent(tmp_path, ntp_synced=True)
    body = await submit_and_read(a, Event("engine", a.clock.now_ms(), {"src": 0}))
    assert "ts_unverified" not in body


async def test_gps_points_keep_their_own_judgement(tmp_path: Path) -> None:
    # the GPS driver marks a point itself when it had to use the clock; the agent
    # never marks a point that carries the receiver's own UTC
    a = agent(tmp_path, ntp_synced=False)
    body = await submit_and_read(a, Event("gps", 1_780_000_000_000, {"fix": 3}))
    assert "ts_unverified" not in body
