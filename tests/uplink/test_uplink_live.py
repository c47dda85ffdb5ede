"""Live first: with a backlog draining, a new event overtakes the backlog."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from gateway.uplink import Uplink
from sim.broker import Mosquitto
from tests.uplink.helpers import (
    Subscriber,
    append_many,
    counter,
    gps_event,
    make_cfg,
    wait_until,
)

pytestmark = pytest.mark.broker


@pytest.mark.parametrize(("live_share", "overtakes"), [(0.5, True), (0.0, False)])
async def test_new_event_overtakes_backlog(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore, live_share: float,
    overtakes: bool,
) -> None:
    # a metered link (200 kB/s) makes the 3,000-event backlog take ~2 s to drain
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, max_payload_bytes=4096,
                   bandwidth_bytes_per_s=200_000, live_share=live_share)
    backlog = await append_many(store, 3000)
    sub = Subscriber(mosquitto.host, mosquitto.port)
    up = Uplink(cfg, store)
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        assert await sub.wait_for(lambda s: len(s.seen()) >= 100, 10)
        (live,) = await append_many(store, 1, start=10_000, make=gps_event)
        assert await sub.wait_for(lambda s: live in s.seen() and set(backlog) <= s.seen(), 30)
        with sub.lock:
            order = list(sub.seqs)
        live_at = order.index(live)
        backlog_done_at = max(order.index(s) for s in backlog)
        assert (live_at < backlog_done_at) is overtakes
        if overtakes:
            # oldest-first drain alongside: the first batch is the oldest data
            backfill_part = [s for s in order[: live_at] if s <= backlog[len(backlog) // 4]]
            assert backfill_part, "the backlog did not drain oldest-first alongside"
        # the subscriber may see the last batch before the truck's PUBACK round settled
        assert await wait_until(lambda: counter(up, "acked_events") == len(backlog) + 1, 10), \
            counter(up, "acked_events")
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()
