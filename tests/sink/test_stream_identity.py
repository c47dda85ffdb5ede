"""Issue #13 case 7 end to end: the buffer and its seq mark are deleted between two runs
of a real ``truckgw run`` child (what ``uninstall.sh`` with ``PURGE=1`` or a new SD card
does); seq restarts at 1, and the real sink (SQLite and PostgreSQL, through a real
Mosquitto) stores the second run's events instead of discarding them as duplicates of
the first run's, and accounts the gaps of each stream on its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.sink.consumer import SinkOptions
from gateway.sink.gaps import GapState, account
from gateway.sink.store import open_store
from sim.broker import Mosquitto
from sim.gateway_proc import EVERY_FIX, GatewayProcess, truck_config
from sim.ports import PtyPort
from sim.route import load_route
from sim.runner import TruckSim
from sim.truck import Truck, TruckParams
from tests.sink.helpers import BROKER_CONF, count, query, running_sink

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TRUCK = "PURGE-01"
#: events each run records before its drive ends (bounded by DRIVE_S)
EVENTS_PER_RUN = 8
DRIVE_S = 40.0
DRAIN_S = 40.0


async def drive_and_drain(tmp_path: Path, broker: Mosquitto, db_url: str, run: int,
                          stored_before: int) -> int:
    """One agent run: drive, wait until the sink has every event the agent committed,
    stop it cleanly. Returns the run's last seq."""
    gps = PtyPort(tmp_path / f"gps{run}")
    gw = GatewayProcess(tmp_path / "gw", truck_config(
        truck_id=TRUCK, workdir=tmp_path / "gw", mqtt_host=broker.host,
        mqtt_port=broker.port, gps_port=str(gps.link), can_channel=None, extra=EVERY_FIX))
    gw.start()
    try:
        sim = TruckSim(Truck(load_route("hamburg-port-loop"), seed=run,
                             params=TruckParams(start_parked_s=0, warmup_s=1,
                                                fault_every_s=0)),
                       gps=gps, speed=8, seed=run)
        stop = asyncio.Event()
        task = asyncio.create_task(sim.run(DRIVE_S, stop), name=f"purge-sim-{run}")
        deadline = time.monotonic() + DRIVE_S
        while not task.done() and time.monotonic() < deadline:
            if ((ours(gw).get("buffer") or {}).get("last_seq") or 0) >= EVENTS_PER_RUN:
                break
            assert gw.running, gw.log_tail()
            await asyncio.sleep(0.25)
        stop.set()
        await task
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            buf = ours(gw).get("buffer") or {}
            last = buf.get("last_seq") or 0
            if buf.get("pending") == 0 and last and count(
                    db_url, f"WHERE truck_id = '{TRUCK}'") == stored_before + last:
                return int(last)
            assert gw.running, gw.log_tail()
            await asyncio.sleep(0.25)
        stored = query(db_url, "SELECT stream, count(*), min(seq), max(seq) FROM events "
                       "GROUP BY stream")
        pytest.fail(f"run {run}: the sink did not store the agent's events: agent "
                    f"{gw.state().get('buffer')}, sink {stored} (stored before: "
                    f"{stored_before})\n{gw.log_tail()}")
    finally:
        assert gw.stop() == 0, gw.log_tail()
        gps.close()


def ours(gw: GatewayProcess) -> dict[str, Any]:
    """The state file if this run's process wrote it (the last run's stays behind)."""
    st = gw.state()
    return st if gw.proc is not None and st.get("pid") == gw.proc.pid else {}


def purge(workdir: Path) -> list[str]:
    """Delete the buffer, its WAL and its seq mark: nothing of its seq history is left."""
    gone = sorted(p.name for p in workdir.iterdir() if p.name.startswith("buffer.db"))
    for name in gone:
        (workdir / name).unlink()
    return gone


async def test_purged_buffer_starts_a_new_stream_the_sink_keeps(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], db_url: str,
) -> None:
    broker = mosquitto_factory(BROKER_CONF)
    opts = SinkOptions(host=broker.host, port=broker.port, client_id="sink-purge")
    async with running_sink(opts, db_url):
        first = await drive_and_drain(tmp_path, broker, db_url, 1, 0)
        assert "buffer.db.seq" in purge(tmp_path / "gw")
        second = await drive_and_drain(tmp_path, broker, db_url, 2, first)
    assert first >= EVENTS_PER_RUN and second >= EVENTS_PER_RUN, (first, second)
    rows = query(db_url, "SELECT stream, count(*), min(seq), max(seq) FROM events "
                 "GROUP BY stream ORDER BY min(arrival_ms)")  # one truck in this database
    assert len(rows) == 2, rows
    (s1, n1, lo1, hi1), (s2, n2, lo2, hi2) = rows
    # seq restarted at 1: the second run's events share seqs with the first run's, and
    # every one of them is stored (a (truck_id, seq) key would have dropped them)
    assert (n1, lo1, hi1) == (first, 1, first)
    assert (n2, lo2, hi2) == (second, 1, second)
    assert s1 != s2 and len(s1) == len(s2) == 16
    # every status names the stream of the buffer that was current when it was sent
    statuses = [json.loads(b) if isinstance(b, str) else b for (b,) in query(
        db_url, "SELECT body FROM status_history ORDER BY ts")]
    assert {st["stream"] for st in statuses} == {s1, s2}
    assert statuses[-1]["stream"] == s2
    # gaps per stream: nothing missing in either, the first stream is over
    store = open_store(db_url)
    try:
        reports = {r.stream: r for r in (account(i) for i in store.gap_inputs(TRUCK))}
    finally:
        store.close()
    assert set(reports) == {s1, s2}
    assert (reports[s1].state, reports[s1].stored, reports[s1].missing,
            reports[s1].unexplained) == (GapState.FINAL, first, 0, 0)
    assert (reports[s2].stored, reports[s2].missing, reports[s2].unexplained) == (
        second, 0, 0)
