"""End to end in subprocesses: simulator ptys -> `truckgw run` -> Mosquitto -> sink.

The simulator plays a GPS on one pseudo-terminal and a USB-CAN (slcan) adapter on
another; the agent is a real ``truckgw run`` child process with a generated config;
the sink is the in-process fleet consumer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sim.broker import Mosquitto
from sim.faults import FaultPlan
from sim.gateway_proc import GatewayProcess, truck_config
from sim.nmea_out import GpsFix
from sim.ports import PtyPort
from sim.replay import nmea_epochs, parse_candump, replay
from sim.route import load_route
from sim.runner import TruckSim
from sim.sink import Sink, session_store_conf
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import Truck, TruckParams

pytestmark = [pytest.mark.slow, pytest.mark.broker]

DATA = Path(__file__).resolve().parents[1] / "data"
TRUCK = "E2E-0001"
DRAIN_S = 40.0


def persistent_broker(factory: Callable[..., Mosquitto], tmp_path: Path) -> Mosquitto:
    """A broker that keeps sessions across a restart (the sink's queued messages)."""
    return factory(session_store_conf(tmp_path / "mosq-store"))


@dataclass
class Stack:
    gps: PtyPort
    can: SlcanPtyAdapter
    gateway: GatewayProcess
    sink: Sink


@asynccontextmanager
async def stack(tmp_path: Path, broker: Mosquitto, *, protocol: str = "5",
                encoding: str = "json", extra: str = "") -> AsyncIterator[Stack]:
    gps = PtyPort(tmp_path / "gps0")
    can = SlcanPtyAdapter(tmp_path / "can0")
    gw = GatewayProcess(tmp_path / "gw", truck_config(
        truck_id=TRUCK, workdir=tmp_path / "gw", mqtt_host=broker.host, mqtt_port=broker.port,
        gps_port=str(gps.link), can_channel=can.channel, protocol=protocol, encoding=encoding,
        extra=extra))
    sink = Sink(broker.host, broker.port, "fleet", client_id=f"e2e-sink-{broker.port}",
                protocol=protocol)
    sink.start()
    gw.start()
    try:
        yield Stack(gps, can, gw, sink)
    finally:
        gw.stop()
        sink.stop()
        gps.close()
        can.close()


async def drained(s: Stack) -> dict[str, Any]:
    """Wait until the agent has nothing pending and the sink saw its last seq."""
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        st = s.gateway.state()
        buf = st.get("buffer") or {}
        seen = s.sink.summary()["trucks"].get(TRUCK, {})
        if (buf.get("pending") == 0 and buf.get("last_seq")
                and seen.get("last_seq") == buf["last_seq"] and seen.get("missing") == 0):
            return st
        assert s.gateway.running, s.gateway.log_tail()
        await asyncio.sleep(0.5)
    pytest.fail(f"not drained: state={s.gateway.state().get('buffer')} "
                f"sink={s.sink.summary()}\n{s.gateway.log_tail()}")


async def can_open(s: Stack, limit_s: float = 30.0) -> None:
    """Wait until the agent reports its CAN bus open (its state file says so)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if (s.gateway.state().get("can") or {}).get("state") in ("active", "silent"):
            return
        assert s.gateway.running, s.gateway.log_tail()
        await asyncio.sleep(0.2)
    pytest.fail(f"CAN bus never opened: {s.gateway.state().get('can')}\n{s.gateway.log_tail()}")


def in_range(ranges: dict[str, list[float]], key: str, lo: float, hi: float) -> None:
    assert key in ranges, f"{key} never arrived; got {sorted(ranges)}"
    got_lo, got_hi = ranges[key]
    assert lo <= got_lo <= got_hi <= hi, f"{key}: {ranges[key]} outside {lo}..{hi}"


async def drive(tmp_path: Path, broker: Mosquitto, *, seconds: float, speed: float,
                outage: tuple[float, float] | None = None, protocol: str = "5",
                encoding: str = "json") -> tuple[dict[str, Any], TruckSim]:
    async with stack(tmp_path, broker, protocol=protocol, encoding=encoding) as s:
        truck = Truck(load_route("hamburg-port-loop"), seed=3,
                      params=TruckParams(start_parked_s=2, warmup_s=4, fault_every_s=0))
        sim = TruckSim(truck, gps=s.gps, can=s.can, speed=speed,
                       faults=FaultPlan.parse(["dtc@6+60"]), seed=3)
        s.can.device.on_transmit = sim.on_frame_from_host
        await can_open(s)  # the ECUs claim their addresses once, at ignition on
        task = asyncio.create_task(sim.run(seconds), name="e2e-sim")
        if outage is not None:
            await asyncio.sleep(outage[0])
            broker.stop()
            await asyncio.sleep(outage[1])
            broker.start()
        await task
        state = await drained(s)
        summary = s.sink.summary()["trucks"][TRUCK]
        summary["status"] = s.sink.live(TRUCK).get("status")
    summary["agent_state"] = state
    return summary, sim


def check_plausible(t: dict[str, Any], sim: TruckSim) -> None:
    last = t["agent_state"]["buffer"]["last_seq"]
    assert t["first_seq"] == 1 and t["last_seq"] == last
    assert t["unique"] == last and t["missing"] == 0 and t["gaps"] == []
    assert t["bad_payloads"] == 0
    assert {"gps", "engine", "dtc"} <= set(t["by_type"])
    r = t["ranges"]
    in_range(r, "gps.lat", 53.52, 53.55)
    in_range(r, "gps.lon", 9.88, 9.94)
    in_range(r, "gps.speed_kmh", 0, 60)
    in_range(r, "engine.engine_speed_rpm", 500, 2200)
    in_range(r, "engine.vehicle_speed_kmh", 0, 60)
    in_range(r, "engine.fuel_level_pct", 0, 100)
    in_range(r, "engine.coolant_temp_c", -40, 110)
    in_range(r, "engine.oil_pressure_kpa", 100, 600)
    in_range(r, "engine.accelerator_pedal_pct", 0, 100)
    in_range(r, "engine.engine_load_pct", 0, 100)
    in_range(r, "engine.fuel_rate_lph", 0, 120)
    in_range(r, "engine.instant_fuel_economy_kmpl", 0, 60)
    in_range(r, "gps.sats", 4, 20)
    in_range(r, "gps.hdop", 0.5, 3)
    st = sim.truck.state
    in_range(r, "engine.total_distance_km", st.odometer_km - 5, st.odometer_km + 0.1)
    in_range(r, "engine.engine_hours_h", st.engine_hours_h - 0.5, st.engine_hours_h + 0.05)
    in_range(r, "engine.total_fuel_used_l", st.total_fuel_l - 5, st.total_fuel_l + 0.6)
    assert r["engine.vehicle_speed_kmh"][1] > 15  # it drove
    assert r["engine.fuel_level_pct"][0] == pytest.approx(st.fuel_level_pct, abs=1.0)
    assert t["lag_ms"]["max"] is not None


@pytest.mark.parametrize(("protocol", "encoding"), [("5", "json"), ("3.1.1", "compact")])
async def test_accelerated_drive_arrives_complete(mosquitto_factory: Callable[..., Mosquitto],
                                                  tmp_path: Path, protocol: str,
                                                  encoding: str) -> None:
    broker = persistent_broker(mosquitto_factory, tmp_path)
    t, sim = await drive(tmp_path, broker, seconds=16, speed=8,  # 2 minutes of driving
                         protocol=protocol, encoding=encoding)
    check_plausible(t, sim)
    assert sim.truck.state.t_s >= 60
    # the vehicle's identity reaches the fleet in the (slim) status: every ECU the
    # simulated truck claims an address for, and its FMS interface
    from sim.j1939_out import ECUS, SA_FMS  # noqa: PLC0415

    vehicle = (t["status"] or {}).get("vehicle") or {}
    assert set(vehicle.get("names") or {}) == {f"{sa:02X}" for sa, _fn in ECUS}, t["status"]
    assert f"{SA_FMS:02X}" in (vehicle.get("fms") or {}), vehicle
    assert vehicle.get("drivers") == {"EE": {"driver1": sim.truck.tacho.driver_id}}, vehicle


async def test_broker_outage_is_caught_up(mosquitto_factory: Callable[..., Mosquitto],
                                          tmp_path: Path) -> None:
    broker = persistent_broker(mosquitto_factory, tmp_path)
    t, sim = await drive(tmp_path, broker, seconds=18, speed=8, outage=(7, 6))
    check_plausible(t, sim)
    up = t["agent_state"]["uplink"]
    assert up.get("connects", 0) >= 2 or up.get("reconnects", 0) >= 1


def log_rpm_range() -> tuple[float, float]:
    """Engine speed range in the capture, decoded here independently of the gateway."""
    rpms = [int.from_bytes(f.data[3:5], "little") * 0.125
            for _, f in parse_candump((DATA / "j1939" / "css_j1939_truck.log").read_bytes()).frames
            if f.arbitration_id & 0x3FFFF00 == 0x0F00400 and f.sa == 0
            and int.from_bytes(f.data[3:5], "little") <= 0xFAFF]
    return min(rpms), max(rpms)


async def test_replay_of_a_real_capture_reaches_the_sink(
        mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    broker = persistent_broker(mosquitto_factory, tmp_path)
    dump = parse_candump((DATA / "j1939" / "css_j1939_truck.log").read_bytes())
    epochs = nmea_epochs((DATA / "nmea" / "neo-m8n.log").read_bytes())
    async with stack(tmp_path, broker) as s:
        await can_open(s)  # python-can's slcan waits ~2 s after opening the port
        await replay(epochs=epochs, candump=dump, gps=s.gps, can=s.can, speed=10.0)
        await drained(s)
        t = s.sink.summary()["trucks"][TRUCK]
    lo, hi = log_rpm_range()
    in_range(t["ranges"], "engine.engine_speed_rpm", lo, hi)
    assert t["by_type"]["engine"] >= 1  # idling truck: deadbands keep few events
    in_range(t["ranges"], "gps.lat", 44.0689, 44.0692)  # 4404.1406 N in the capture
    in_range(t["ranges"], "gps.lon", -121.3143, -121.3140)  # 12118.8548 W
    assert t["missing"] == 0


FLEET_VIEW = re.compile(
    r"gear +\d+ \(selected \d+\) +AdBlue \d+\.\d %\s*\n"
    r"\s*driver +DF\d+ +working state (drive|work|available|rest)\s*\n"
    r"\s*trips +\d+ +idling \d+ +harsh \d+")


def test_demo_runs_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--plain", "--duration", "100",
         "--speed", "6", "--keep", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    out: list[str] = []
    deadline = time.monotonic() + 60
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read()
            if chunk:
                out.append(chunk.decode(errors="replace"))
            text = "".join(out)
            if any(line.strip().startswith("received") and " 0 events" not in line
                   for line in text.splitlines()) and FLEET_VIEW.search(text):
                break
            time.sleep(0.2)
        text = "".join(out)
        assert proc.poll() is None, text
        assert "gps" in text or "position" in text
        # the live view shows what operators buy telematics for, from the real pipeline:
        # gear and AdBlue from the bus, the driver's card (DI) and tachograph state
        assert FLEET_VIEW.search(text), text[-3000:]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = "".join(out) + rest.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "demo stopped cleanly" in text
    assert "DEMO-0001: events=" in text
    assert "missing=0" in text
    # the fleet side's embedded default: the demo's events are in a SQLite database that
    # the sink's own commands read
    db = f"sqlite:///{tmp_path / 'demo' / 'fleet.db'}"
    assert f"truckgw sink gaps --db {db}" in text
    gaps = subprocess.run([sys.executable, "-m", "gateway.cli", "sink", "gaps", "--db", db,
                           "--expect-no-gaps"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert gaps.returncode == 0, gaps.stdout + gaps.stderr
    assert "DEMO-0001" in gaps.stdout
    report = subprocess.run([sys.executable, "-m", "gateway.cli", "sink", "report",
                             "DEMO-0001", "--db", db, "--json"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["truck_id"] == "DEMO-0001"


# ------------------------------------------------------------------ the recorded path

EARTH_R_M = 6_371_008.8
CURVE_BOUND_M = 3.0  # [gps.sampling] max_error_m: tighter than the default, to bite


def sed_m(fix: tuple[int, float, float], a: dict[str, Any], b: dict[str, Any]) -> float:
    """Distance of ``fix`` (ts, lat, lon) from the path interpolated in time between a, b."""
    t, lat, lon = fix
    f = (t - a["ts"]) / (b["ts"] - a["ts"])
    dlon = (b["lon"] - a["lon"] + 180.0) % 360.0 - 180.0
    plat, plon = a["lat"] + f * (b["lat"] - a["lat"]), a["lon"] + f * dlon
    x = math.radians(lon - plon) * math.cos(math.radians(lat)) * EARTH_R_M
    y = math.radians(lat - plat) * EARTH_R_M
    return math.hypot(x, y)


async def test_demo_route_is_rebuilt_from_the_sink_within_the_bound(
        mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    """The default curve policy end to end: every fix the simulator sent while the truck
    moved lies within max_error_m of the path rebuilt from what the sink received.

    At 3 m the threshold policy misses on this drive (it cut the port's corners by 10 m
    and more at 6x speed); the curve policy may not."""
    broker = persistent_broker(mosquitto_factory, tmp_path)
    truth: list[tuple[int, float, float, float]] = []  # ts, lat, lon, speed of sent fixes

    def sent(utc: dt.datetime, fix: GpsFix | None) -> None:
        if fix is not None:
            truth.append((round(utc.timestamp() * 1000), fix.lat, fix.lon, fix.speed_kmh))

    extra = f"\n[gps.sampling]\nmax_error_m = {CURVE_BOUND_M}\n"
    async with stack(tmp_path, broker, extra=extra) as s:
        truck = Truck(load_route("hamburg-port-loop"), seed=5,
                      params=TruckParams(start_parked_s=1, warmup_s=2, fault_every_s=0))
        sim = TruckSim(truck, gps=s.gps, can=s.can, speed=6)
        sim.on_epoch = sent
        s.can.device.on_transmit = sim.on_frame_from_host
        await sim.run(32)
        await drained(s)
        track = s.sink.track(TRUCK)
    points = sorted((e for e in track if e["type"] == "gps" and "lat" in e
                     and not e.get("provisional")), key=lambda e: e["ts"])
    assert len(points) >= 2, track
    moving = [f for f in truth if f[3] > 10.0]  # clearly moving by GPS and by wheel speed
    assert len(moving) >= 10, "the truck hardly moved"
    checked, worst = 0, 0.0
    for f in moving:
        after = next((i for i, p in enumerate(points) if p["ts"] >= f[0]), None)
        if after is None or after == 0:
            continue  # before the first or after the newest recorded point: not rebuilt yet
        a, b = points[after - 1], points[after]
        worst = max(worst, sed_m(f[:3], a, b) if b["ts"] > a["ts"] else 0.0)
        checked += 1
    assert checked >= 0.5 * len(moving), (checked, len(moving))
    # NMEA carries 1e-5 minutes (2 cm): the bound holds to the centimetre
    assert worst <= CURVE_BOUND_M + 0.05, worst
    # and it is a simplification: far fewer recorded points than fixes sent while moving
    assert len(points) < len(moving)
