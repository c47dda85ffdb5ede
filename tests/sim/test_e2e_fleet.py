"""End to end: derived fleet events from a simulated drive, through a real agent process.

Simulator ptys (GPS, slcan USB-CAN) -> ``truckgw run`` child -> real Mosquitto -> sink.
The truck drives the short leg of tests/can/fleet_drive.py (a long warm-up at idle with
the driver's card pulled for a while, a solo tractor's hard pull-away, a curve taken too
fast, one emergency stop, the depot, ignition off) at a time-lapse of :data:`SPEED`.
Mid-trip the agent is killed with SIGKILL and started again: the sink must still get ONE
trip whose odometer distance covers the whole leg, plus the idle event, the harsh
acceleration, cornering and braking, and the driver events (card out, card in).

Time-lapse: the agent's clock is real, the truck's is :data:`SPEED` times faster, so
durations shrink and accelerations grow by that factor; the ``[events]`` thresholds
below are scaled accordingly (a speed change over one real second is :data:`SPEED`
model seconds of it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sim.broker import Mosquitto
from sim.gateway_proc import GatewayProcess, truck_config
from sim.ports import PtyPort
from sim.runner import TruckSim
from sim.sink import Sink, session_store_conf
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import FAST_CORNER_MS2, SOLO_LAUNCH_MS2, Phase
from tests.can.fleet_drive import CARD_OUT_FOR_S, CURVE_R_M, LEG_M, WARMUP_S, short_truck

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TRUCK = "E2E-FLEET-1"
SPEED = 3.0
TRIP_END_S = 15.0  # real seconds: longer than a restart of the agent
EVENTS = (f"\n[events]\nstate_interval_s = 1\ntrip_end_timeout_s = {TRIP_END_S}\n"
          f"idle_min_s = {WARMUP_S / SPEED / 2:.1f}\n"
          f"harsh_brake_ms2 = {2.5 * SPEED}\nharsh_accel_ms2 = {1.5 * SPEED}\n"
          f"harsh_corner_ms2 = {2.5 * SPEED}\n")
KILL_AT_M = 250.0  # metres into the leg: after the idle event, before the emergency stop
LIMIT_S = 150.0  # the whole drive, bounded


async def wait_for(cond: Callable[[], bool], what: str, limit_s: float,
                   gw: GatewayProcess) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if cond():
            return
        assert gw.running, gw.log_tail()
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} not within {limit_s:.0f} s\n{gw.log_tail()}")


def truck_seen(sink: Sink) -> dict[str, Any]:
    seen: dict[str, Any] = sink.summary()["trucks"].get(TRUCK, {})
    return seen


async def test_a_drive_killed_mid_trip_gives_one_trip_and_every_derived_event(
        mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    broker = mosquitto_factory(session_store_conf(tmp_path / "mosq-store"))
    gps = PtyPort(tmp_path / "gps0")
    can = SlcanPtyAdapter(tmp_path / "can0")
    gw = GatewayProcess(tmp_path / "gw", truck_config(
        truck_id=TRUCK, workdir=tmp_path / "gw", mqtt_host=broker.host, mqtt_port=broker.port,
        gps_port=str(gps.link), can_channel=can.channel, extra=EVENTS))
    received = tmp_path / "events.jsonl"
    sink = Sink(broker.host, broker.port, "fleet", client_id=f"e2e-fleet-{broker.port}",
                jsonl=received)
    truck = short_truck(park_s=3600.0)  # stays parked after the leg
    sim = TruckSim(truck, gps=gps, can=can, speed=SPEED, seed=11)
    can.device.on_transmit = sim.on_frame_from_host
    stop = asyncio.Event()
    sink.start()
    gw.start()
    task = asyncio.create_task(sim.run(LIMIT_S, stop), name="e2e-fleet-sim")
    odo: dict[str, float] = {}
    try:
        st = truck.state
        await wait_for(lambda: truck.state.phase is not Phase.PARKED, "ignition on", 10, gw)
        odo["on"] = truck.state.odometer_km
        await wait_for(lambda: truck.state.odometer_km - odo["on"] >= KILL_AT_M / 1000,
                       "the truck driving", 60, gw)
        killed_ms = time.time() * 1000
        gw.kill()  # SIGKILL mid-trip: no clean stop, the saved trip is what is left
        assert truck.harsh_brakes == 0, "the emergency stop came before the kill"
        gw.start()
        await wait_for(lambda: truck.state.phase is Phase.PARKED, "the depot", 60, gw)
        odo["off"] = truck.state.odometer_km
        await wait_for(lambda: truck_seen(sink).get("by_type", {}).get("trip", 0) >= 1,
                       "the trip event at the sink", TRIP_END_S + 30, gw)
        stop.set()
        await task
        await asyncio.sleep(2.0)  # anything else the agent had pending
        seen = truck_seen(sink)
        live = sink.live(TRUCK)
    finally:
        stop.set()
        if not task.done():
            await task
        gw.stop()
        sink.stop()
        sim.close()
    by_type = seen["by_type"]
    assert by_type.get("trip") == 1, by_type  # one trip across the restart, not two
    trip = live["latest"]["trip"]
    assert trip["distance_source"] == "odometer"
    leg_km = odo["off"] - odo["on"]
    assert leg_km == pytest.approx(LEG_M / 1000, abs=0.02)  # the simulator drove the leg
    assert trip["distance_km"] == pytest.approx(leg_km, abs=0.011), (trip, odo)
    assert trip["start_ts"] < killed_ms < trip["ts"]  # started before the kill, ended after
    assert trip["idle_s"] > 0 and trip["driving_s"] > 0
    assert by_type.get("idle", 0) >= 1, by_type  # the warm-up
    assert live["latest"]["idle"]["duration_s"] >= WARMUP_S / SPEED / 2
    assert truck.harsh_brakes == 1
    assert by_type.get("harsh", 0) >= 1, by_type
    assert live["latest"]["harsh"]["kind"] == "braking"
    assert seen["ranges"]["harsh.peak_ms2"][1] > 2.5 * SPEED
    assert by_type.get("driver", 0) >= 1, by_type
    assert live["latest"]["driver"]["src"] == 0xEE
    # the only seqs missing are the ones the restart's seq_gap notice announced
    assert seen["missing"] == seen["missing_announced"], seen
    assert by_type.get("seq_gap", 0) >= 1, by_type
    assert st.odometer_km <= odo["on"]
    # every event once, in the order the agent recorded them
    events = sorted((e for line in received.read_text().splitlines()
                     if not (e := json.loads(line))["duplicate"]), key=lambda e: e["seq"])
    harsh = [e for e in events if e["type"] == "harsh"]
    assert [e["kind"] for e in harsh] == ["acceleration", "cornering", "braking"], harsh
    accel, corner, brake = harsh
    assert (truck.hard_launches, truck.fast_corners) == (1, 1)
    # over one agent second (SPEED model seconds) of the pull-away at SOLO_LAUNCH_MS2
    assert accel["peak_ms2"] / SPEED == pytest.approx(SOLO_LAUNCH_MS2, abs=0.2)
    # it starts within the first agent second of the pull-away, and before the kill
    assert accel["speed_kmh"] <= SOLO_LAUNCH_MS2 * SPEED * 3.6 + 3 and accel["ts"] < killed_ms
    # the 45 m curve at 43 km/h (3.2 m/s^2): the 1 Hz fixes are 36 m of it apart here
    assert 2.8 <= corner["peak_ms2"] / SPEED <= FAST_CORNER_MS2 + 0.3, corner
    assert corner["speed_kmh"] == pytest.approx((FAST_CORNER_MS2 * CURVE_R_M) ** 0.5 * 3.6,
                                                abs=2.5)
    assert killed_ms < corner["ts"] < brake["ts"] < trip["ts"]
    assert truck.card_removals == 1
    card = [(e["ts"], e["card_present"], e["working_state"]) for e in events
            if e["type"] == "driver" and e["driver"] == 1]
    assert [(c, w) for _ts, c, w in card] == [(True, 2), (False, 0), (True, 2), (True, 3)], card
    assert (card[2][0] - card[1][0]) / 1000 == pytest.approx(CARD_OUT_FOR_S / SPEED, abs=0.5)
    assert trip["start_ts"] < card[1][0] < card[3][0] <= accel["ts"]  # in the warm-up
