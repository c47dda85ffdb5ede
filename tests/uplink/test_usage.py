"""The agent's own count of its SIM bytes (issue #14): the pure meter, then a real broker."""

from __future__ import annotations

import asyncio
import calendar
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from config import BufferConfig
from gateway.uplink import Uplink
from gateway.usage import STATE_KEY, UsageMeter
from sim.broker import Mosquitto
from tests.uplink.helpers import Subscriber, append_many, make_cfg, wait_until


def ms(y: int, mo: int, d: int, h: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, 0, 0, 0, 0, 0)) * 1000


def test_today_and_this_month_roll_over_in_utc() -> None:
    m = UsageMeter()
    m.add(100, 10, ms(2026, 12, 2, 10))
    m.add(50, 5, ms(2026, 12, 2, 23))
    v = m.view(ms(2026, 12, 2, 23))
    assert (v.day, v.up_today, v.down_today) == ("2026-12-02", 150, 15)
    assert (v.month, v.up_month, v.down_month) == ("2026-12", 150, 15)
    m.add(1, 1, ms(2026, 12, 3, 1))  # a new day: today starts over, the month goes on
    v = m.view(ms(2026, 12, 3, 1))
    assert (v.up_today, v.down_today, v.up_month, v.down_month) == (1, 1, 151, 16)
    v = m.view(ms(2027, 1, 1, 0))  # a new month, nothing spent yet
    assert (v.month, v.up_month, v.down_month, v.up_today) == ("2027-01", 0, 0, 0)
    m.add(-5, -5, ms(2027, 1, 1, 1))  # a socket that went backwards is no credit
    assert m.view(ms(2027, 1, 1, 1)).up_month == 0


def test_projection_is_the_month_at_its_pace() -> None:
    m = UsageMeter()
    m.add(1_000_000, 0, ms(2026, 11, 1, 1))
    # 10 of November's 30 days gone with 1 MB: 3 MB at that pace
    assert m.projected_month(ms(2026, 11, 11)) == 3_000_000


def test_state_survives_a_restart_and_bad_state_starts_over() -> None:
    m = UsageMeter()
    m.add(7, 3, ms(2026, 12, 2, 5))
    again = UsageMeter.from_bytes(m.to_bytes())
    assert again.view(ms(2026, 12, 2, 6)) == m.view(ms(2026, 12, 2, 6))
    assert UsageMeter.from_bytes(b"not json").view(ms(2026, 12, 2)).up_month == 0
    assert UsageMeter.from_bytes(None).up_month == 0


@pytest.mark.broker
async def test_the_uplink_counts_its_bytes_and_keeps_them_across_restarts(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore,
) -> None:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, max_latency_s=0.0)
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store)
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        seqs = await append_many(store, 500)
        assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 15)
        # what went up is at least the payloads the broker acknowledged
        assert await wait_until(
            lambda: up.stats().usage_up_bytes_today > up.stats().published_bytes, 10), \
            (up.stats().usage_up_bytes_today, up.stats().published_bytes)
        s = up.stats()
        assert s.usage_down_bytes_today > 0  # CONNACK, PUBACKs, TCP acks
        assert s.usage_up_bytes_month == s.usage_up_bytes_today
        with sub.lock:
            online = [x for x in sub.status if x["state"] == "online"]
        assert "usage" in online[0] and online[0]["usage"]["day"]
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()
    counted = up.stats().usage_up_bytes_month
    blob = await store.get_state(STATE_KEY)
    assert blob is not None
    assert UsageMeter.from_bytes(blob).up_month == counted
    # a new run (as after a restart) goes on from the stored counts
    await store.close()
    store2 = await SqliteStore.open(BufferConfig(path=tmp_path / "buffer.db",
                                                 commit_interval_ms=10))
    try:
        up2 = Uplink(cfg, store2)
        task2 = asyncio.create_task(up2.run(), name="uplink2")
        try:
            assert await wait_until(lambda: up2.stats().usage_up_bytes_month > counted, 15)
        finally:
            await up2.close()
            task2.cancel()
            await asyncio.gather(task2, return_exceptions=True)
    finally:
        await store2.close()


def test_usage_is_in_the_prometheus_textfile() -> None:
    from gateway.health import render_prometheus  # noqa: PLC0415

    text = render_prometheus({"truck_id": "T1", "uplink": {
        "state": "connected", "usage_up_bytes_today": 1234, "usage_down_bytes_today": 56,
        "usage_up_bytes_month": 7890, "usage_down_bytes_month": 123}})
    lines = text.splitlines()
    for name, way, value in (("today", "up", "1234"), ("today", "down", "56"),
                             ("month", "up", "7890"), ("month", "down", "123")):
        hits = [ln for ln in lines if ln.startswith(f"truckgw_uplink_usage_bytes_{name}{{")
                and f'direction="{way}"' in ln]
        assert len(hits) == 1, (name, way, text)
        assert hits[0].endswith(f" {value}"), hits[0]


def test_truckgw_status_shows_the_sims_bytes(tmp_path: Path) -> None:
    import time  # noqa: PLC0415

    from gateway.health import encode_state, write_atomic  # noqa: PLC0415
    from gateway.status import build_report, render_text  # noqa: PLC0415
    from tests.service.test_status import _cfg, _state  # noqa: PLC0415

    cfg = _cfg(tmp_path)
    now = time.time()
    write_atomic(cfg.state_file, encode_state(_state(uplink={
        "state": "connected", "last_publish_at": now - 3, "usage_up_bytes_today": 1_500_000,
        "usage_down_bytes_today": 250_000, "usage_up_bytes_month": 31_000_000,
        "usage_down_bytes_month": 4_000_000})))
    text = render_text(build_report(cfg, now=now)[0], now)
    assert ("data:     today 1.50 MB up, 0.25 MB down; this month 31.00 MB up, "
            "4.00 MB down") in text, text
