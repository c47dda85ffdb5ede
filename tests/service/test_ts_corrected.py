"""Issue #13 case 3, second half, through a real ``truckgw run`` child process.

The agent cannot step the real system clock, so the seam is the one the clock's own rules
give (gateway/clock.py): the system clock of this host is not NTP-synchronized (checked
first, with the agent's own test), and the simulated GPS receiver first reports dates
1024 weeks in the past (the week-rollover bug: untrusted, never used) and then the right
date *14 days ahead of the system clock*. To the agent the system clock was thus 14 days
behind until GPS confirmed the time. The broker is down until then, so everything
recorded before verification is still in the buffer when the clock gets verified.

- Events recorded before verification in this boot are published with ``ts`` corrected
  by CLOCK_BOOTTIME (14 days later than stamped), ``ts_corrected``, no ``ts_unverified``.
- Events of an earlier boot (a first run whose stored boot id the test replaces, as a
  reboot would have left them) keep ``ts_unverified`` and the ``ts`` they were stamped with.
- Events recorded after verification carry the GPS time, unmarked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buffer import schema
from gateway.clock import read_boot_id, system_clock_synced
from sim.broker import Mosquitto
from sim.gateway_proc import EVERY_FIX, GatewayProcess, truck_config
from sim.ports import PtyPort
from sim.route import load_route
from sim.runner import TruckSim
from sim.sink import Sink, session_store_conf
from sim.truck import Truck, TruckParams

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TRUCK = "CLOCK-01"
WEEK_ROLLOVER_S = -1024 * 7 * 86400.0  # an old receiver's date: before 2020, untrusted
AHEAD_S = 14 * 86400.0  # GPS time minus the system clock once the receiver is right
#: event types whose ts is the moment of the observation
OBSERVATIONS = ("gps", "engine", "dtc")
LIMIT_S = 40.0
EARLIER_BOOT = "00000000-0000-4000-8000-earlier-boot"


def ours(gw: GatewayProcess) -> dict[str, Any]:
    """The state file if this run's process wrote it (the last run's stays behind)."""
    st = gw.state()
    return st if gw.proc is not None and st.get("pid") == gw.proc.pid else {}


async def until(gw: GatewayProcess, what: str, cond: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        if cond(ours(gw)):
            return
        assert gw.running, gw.log_tail()
        await asyncio.sleep(0.2)
    pytest.fail(f"{what} not reached within {LIMIT_S} s: {ours(gw)}\n{gw.log_tail()}")


def last_seq(st: dict[str, Any]) -> int:
    return int((st.get("buffer") or {}).get("last_seq") or 0)


def restamp_boot(db: Path, real: str, other: str) -> tuple[int, int]:
    """Replace the boot id stored with the unverified events (as after a reboot).

    Returns how many rows were restamped and the highest seq among them: the last event of
    the run, read from the buffer itself (the state file is written on a timer, so its
    ``last_seq`` can lag behind an event recorded while the agent stopped).
    """
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as con:
        n, top = 0, 0
        for table in schema.TABLES.values():
            hit = "WHERE instr(CAST(body AS TEXT), ?) > 0"
            row = con.execute(f"SELECT max(seq) FROM {table} {hit}", (real,)).fetchone()  # noqa: S608  # constant table names
            top = max(top, int(row[0] or 0))
            cur = con.execute(
                f"UPDATE {table} SET body = CAST(replace(CAST(body AS TEXT), ?, ?) AS BLOB) "  # noqa: S608  # constant table names
                f"{hit}", (real, other, real))
            n += cur.rowcount
        return n, top


def received(jsonl: Path) -> dict[int, dict[str, Any]]:
    """The first copy of every event the sink got, by seq."""
    out: dict[int, dict[str, Any]] = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            ev = json.loads(line)
            out.setdefault(ev["seq"], ev)
    return out


async def test_events_from_before_verification_are_sent_with_the_corrected_ts(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
) -> None:
    if system_clock_synced() is True:
        pytest.fail("this host's clock is NTP-synchronized, so the agent never stamps an "
                    "unverified ts: run this test where adjtimex(2) reports TIME_ERROR or "
                    "timesyncd has not synced", pytrace=False)
    boot = read_boot_id()
    assert boot, "cannot read /proc/sys/kernel/random/boot_id"
    broker = mosquitto_factory(session_store_conf(tmp_path / "mosq"))
    jsonl = tmp_path / "events.jsonl"
    sink = Sink(broker.host, broker.port, client_id="ts-sink", jsonl=jsonl)
    sink.start()
    workdir = tmp_path / "gw"
    conf = truck_config(truck_id=TRUCK, workdir=workdir, mqtt_host=broker.host,
                        mqtt_port=broker.port, gps_port=str(tmp_path / "gps"),
                        can_channel=None, extra=EVERY_FIX)
    gps = PtyPort(tmp_path / "gps")
    procs: list[GatewayProcess] = []
    drives: list[asyncio.Task[None]] = []
    try:
        assert sink.wait_connected(), "sink did not subscribe"
        broker.stop()  # the sink's session (and what is queued for it) is persisted

        # run 1, "an earlier boot": the receiver's dates are untrusted, nothing verifies
        gw = GatewayProcess(workdir, conf)
        procs.append(gw)
        sim = TruckSim(Truck(load_route("hamburg-port-loop"), seed=1,
                             params=TruckParams(start_parked_s=0, fault_every_s=0)),
                       gps=gps, speed=4, seed=1)
        sim.gps_time_offset_s = WEEK_ROLLOVER_S
        t1 = time.time()
        gw.start()
        drives.append(asyncio.create_task(sim.run(LIMIT_S * 3)))
        await until(gw, "run 1 records", lambda st: last_seq(st) >= 4)
        assert gw.stop() == 0, gw.log_tail()
        t1_end = time.time()
        restamped, run1 = restamp_boot(workdir / "buffer.db", boot, EARLIER_BOOT)
        assert run1 >= last_seq(gw.state()) and restamped >= run1 - 1, (restamped, run1)

        # run 2, this boot: untrusted dates first, then the receiver gets it right
        gw = GatewayProcess(workdir, conf)
        procs.append(gw)
        t2 = time.time()
        gw.start()
        await until(gw, "run 2 records unverified",
                    lambda st: last_seq(st) >= run1 + 6
                    and not (st.get("clock") or {}).get("verified"))
        t_switch = time.time()
        sim.gps_time_offset_s = AHEAD_S
        await until(gw, "clock verified by GPS", lambda st: (st.get("clock") or {}).get(
            "verified") is True)
        verified_at = last_seq(ours(gw))
        await until(gw, "points after verification",
                    lambda st: last_seq(st) >= verified_at + 3)
        broker.start()  # now the backlog goes out, the clock verified
        await until(gw, "backlog delivered",
                    lambda st: (st.get("buffer") or {}).get("pending") == 0
                    and len(received(jsonl)) >= last_seq(st) - 1)
        assert gw.stop() == 0, gw.log_tail()
    finally:
        for task in drives:
            task.cancel()
        await asyncio.gather(*drives, return_exceptions=True)
        for proc in procs:
            proc.stop()
        sink.stop()
        gps.close()
    got = received(jsonl)
    assert all("_boot" not in ev for ev in got.values())
    earlier = [got[s] for s in range(1, run1 + 1) if s in got]
    assert len(earlier) >= run1 - 1  # a notice or status may hold a seq of run 1
    for ev in earlier:  # another boot: left as stamped, marked
        assert ev.get("ts_unverified") is True and "ts_corrected" not in ev, ev
        assert t1 * 1000 - 2000 <= ev["ts"] <= t1_end * 1000 + 2000, ev
    # observations, stamped when seen; derived fleet events (trip, idle, harsh) carry the
    # start of their episode instead, so they are not in recording order by ts
    this_boot = [ev for s, ev in sorted(got.items())
                 if s > run1 and ev["type"] in OBSERVATIONS]
    corrected = [ev for ev in this_boot if ev.get("ts_corrected")]
    verified = [ev for ev in this_boot if not ev.get("ts_corrected")]
    assert len(corrected) >= 3 and len(verified) >= 3, this_boot
    # this boot starts unverified (corrected later); a loaded machine may let the clock
    # lapse to unverified again for a moment, so later corrected events are allowed
    assert this_boot[0].get("ts_corrected"), this_boot[0]
    for ev in corrected:  # stamped by a system clock 14 days behind, corrected
        assert "ts_unverified" not in ev, ev
        assert (t2 + AHEAD_S) * 1000 - 2000 <= ev["ts"] <= (t_switch + AHEAD_S) * 1000 + 2000
    for ev in verified:  # the receiver's own time, 14 days ahead of the system clock
        assert "ts_unverified" not in ev and ev["ts"] >= (t_switch + AHEAD_S) * 1000 - 2000
    # one time base: in seq order (as recorded), ts never goes back across verification
    ts = [ev["ts"] for ev in this_boot]
    assert ts == sorted(ts), ts
