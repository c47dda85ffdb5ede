"""``truckgw demo``: broker + simulated truck + gateway + sink, with a live view.

Starts Mosquitto on a free loopback port, the simulator on two ptys, ``truckgw run``
with a generated config, and an in-process sink. Once a second it redraws a plain
ANSI view: position, speed, rpm, fuel level, gear, AdBlue level, the driver (card number
from the gateway's state file, working state from the tachograph), the trips, idling and
harsh driving events, active faults (as received by the sink), the gateway's buffer depth
and uplink state (from its state file), the broker's state and events/s. The gateway's
``[events]`` thresholds are scaled by the time-lapse (:func:`events_config`): at
``--speed 4`` a second of the agent's clock is four seconds of the truck's.
``--outage-at S --outage-for N`` stops the broker for N seconds so one can watch the
buffer fill and drain.
``--push-config-at S`` pushes a new config to the gateway S seconds in
(``truckgw fleet config push``, docs/remote.md): every CAN frame recorded instead of
the deadbands, applied live, so the events/s line jumps. Ctrl-C / SIGTERM stops
everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from gateway import wire
from sim.broker import INSTALL_HINT, BrokerUnavailableError, Mosquitto, find_mosquitto
from sim.gateway_proc import EVERY_FRAME, GatewayProcess, truck_config
from sim.ports import PtyPort
from sim.report import write_report
from sim.route import list_routes, load_route
from sim.runner import TruckSim
from sim.signals import stop_event_on_signals
from sim.sink import Sink, format_summary, session_store_conf
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import DTC_CATALOGUE, Truck, TruckParams

EX_OK, EX_FAIL, EX_UNAVAILABLE = 0, 1, 69
TRUCK_ID = "DEMO-0001"
WORKING_STATES = ("rest", "available", "work", "drive")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: ``--push-config-at``: remote management on, and the pushed change (live)
REMOTE_ON = "\n[remote]\nenabled = true\n"
DTC_TEXT = {(spn, fmi): desc for spn, fmi, desc, _lamp in DTC_CATALOGUE}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``truckgw demo``."""
    p = sub.add_parser(
        "demo", help="one-command demo: broker, simulated truck, gateway and sink, live view",
        description="Start Mosquitto, a simulated truck, the gateway and a sink; show a live "
        "view. Ctrl-C stops everything.")
    p.add_argument("--route", default="hamburg-port-loop",
                   help=f"route to drive ({', '.join(list_routes())})")
    p.add_argument("--speed", type=float, default=4.0,
                   help="time-lapse factor of the drive (default 4)")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="end by itself after S seconds")
    p.add_argument("--outage-at", type=float, default=None, metavar="S",
                   help="stop the broker S seconds into the demo")
    p.add_argument("--outage-for", type=float, default=20.0, metavar="N",
                   help="length of the broker outage in seconds (default 20)")
    p.add_argument("--push-config-at", type=float, default=None, metavar="S",
                   help="push a config that records every CAN frame S seconds into the "
                   "demo (remote configuration, applied live)")
    p.add_argument("--fault-every", type=float, default=120.0, metavar="S",
                   help="mean seconds of drive between DTC episodes (default 120)")
    p.add_argument("--encoding", choices=wire.ENCODINGS, default="json",
                   help="wire encoding of the gateway")
    p.add_argument("--report", type=Path, default=None, help="write a trip report at the end")
    p.add_argument("--keep", type=Path, default=None,
                   help="work folder to keep (configs, buffer, logs); default: temporary")
    p.add_argument("--plain", action="store_true",
                   help="print the view as plain lines instead of redrawing the screen")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns 69 when Mosquitto is missing."""
    try:
        find_mosquitto()
    except BrokerUnavailableError as exc:
        print(f"truckgw demo needs the Mosquitto broker: {exc}", file=sys.stderr)
        print(f"On Debian/Ubuntu/Raspberry Pi OS: {INSTALL_HINT}; on macOS: brew install "
              "mosquitto", file=sys.stderr)
        return EX_UNAVAILABLE
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="truckgw-demo-")
    base: Path = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    base.mkdir(parents=True, exist_ok=True)
    demo = Demo(args, base)
    try:
        return demo.run()
    finally:
        demo.close()
        if tmp is not None:
            tmp.cleanup()


class Demo:
    """The demo's parts and their lifecycle."""

    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.out: TextIO = sys.stdout
        # keep sessions across the outage so the sink's queued messages survive it
        self.broker = Mosquitto(workdir=_mkdir(base / "broker"),
                                extra_conf=session_store_conf(base / "broker" / "store"))
        self.gps = PtyPort(base / "gps0")
        self.can = SlcanPtyAdapter(base / "can0")
        params = TruckParams(warmup_s=8.0, start_parked_s=2.0, fault_every_s=args.fault_every)
        self.sim = TruckSim(Truck(load_route(args.route), seed=args.seed, params=params),
                            gps=self.gps, can=self.can, speed=args.speed, seed=args.seed)
        self.can.device.on_transmit = self.sim.on_frame_from_host
        self._gw_config = functools.partial(
            truck_config, truck_id=TRUCK_ID, workdir=base / "gateway",
            mqtt_host=self.broker.host, mqtt_port=self.broker.port,
            gps_port=str(self.gps.link), can_channel=self.can.channel,
            encoding=args.encoding)
        self._events = events_config(args.speed)
        remote = REMOTE_ON if args.push_config_at is not None else ""
        self.gateway = GatewayProcess(base / "gateway",
                                      self._gw_config(extra=self._events + remote))
        self.push: subprocess.Popen[str] | None = None
        self.push_line: str | None = None
        # the fleet side's embedded default: every event once in a SQLite database
        # (docs/sink.md), which `truckgw sink gaps/report --db` read afterwards
        self.fleet_db = base / "fleet.db"
        self.sink = Sink(self.broker.host, self.broker.port, "fleet",
                         client_id=f"truckgw-demo-sink-{self.broker.port}",
                         sqlite=self.fleet_db)
        self.t0 = time.monotonic()
        self.outage_until: float | None = None

    def run(self) -> int:
        """Start everything, show the view until stopped, return the exit status."""
        self.broker.start()
        self.sink.start()
        self.gateway.start()
        print(f"truckgw demo: broker {self.broker.host}:{self.broker.port}, work folder "
              f"{self.base}\ngateway config: {self.gateway.config_path}", file=self.out,
              flush=True)
        asyncio.run(self._main())
        summary = self.sink.summary()
        print("\n" + format_summary(summary), file=self.out)
        if self.args.report:
            write_report(self.args.report, {TRUCK_ID: self.sink.track(TRUCK_ID)},
                         summary["trucks"])
            print(f"trip report: {self.args.report}", file=self.out)
        if self.args.keep:
            db = f"sqlite:///{self.fleet_db}"
            print(f"fleet database: {self.fleet_db}\n  truckgw sink gaps --db {db}\n"
                  f"  truckgw sink report {TRUCK_ID} --db {db}", file=self.out)
        print("demo stopped cleanly", file=self.out, flush=True)
        return EX_OK

    async def _main(self) -> None:
        stop = stop_event_on_signals()
        sim_task = asyncio.create_task(self.sim.run(self.args.duration, stop), name="demo-sim")
        try:
            while not sim_task.done():
                self._outage()
                self._push_config()
                self.render()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sim_task), timeout=1.0)
                if not self.gateway.running:
                    print(f"gateway exited ({self.gateway.returncode}):\n"
                          f"{self.gateway.log_tail()}", file=self.out, flush=True)
                    stop.set()
        finally:
            stop.set()
            await sim_task

    def _outage(self) -> None:
        a = self.args
        if a.outage_at is None:
            return
        elapsed = time.monotonic() - self.t0
        if self.outage_until is None and elapsed >= a.outage_at and self.broker.running:
            self.broker.stop()
            self.outage_until = a.outage_at + a.outage_for
        elif self.outage_until is not None and elapsed >= self.outage_until:
            self.broker.start()
            self.outage_until = None
            a.outage_at = None  # one outage

    def _push_config(self) -> None:
        """``--push-config-at``: push once, then show the truck's verdict."""
        a = self.args
        if a.push_config_at is None:
            return
        if self.push is None and time.monotonic() - self.t0 >= a.push_config_at:
            path = self.base / "pushed.toml"
            path.write_text(self._gw_config(extra=self._events + REMOTE_ON + EVERY_FRAME))
            self.push = subprocess.Popen(  # our own CLI
                [sys.executable, "-m", "gateway.cli", "fleet", "--host", self.broker.host,
                 "--port", str(self.broker.port), "config", "push", TRUCK_ID, str(path),
                 "--timeout", "60"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                text=True)
            self.push_line = (f"config push at t={a.push_config_at:.0f} s: every CAN frame "
                              "recorded ... waiting for the truck")
        elif self.push is not None and self.push.poll() is not None and a.push_config_at:
            out = self.push.communicate()[0]
            self.push_line = f"config push failed (exit {self.push.returncode})"
            with contextlib.suppress(ValueError, AttributeError):
                rep = json.loads(out)
                self.push_line = (f"config push: version {rep.get('version')} "
                                  f"{rep.get('status')} "
                                  f"({', '.join(rep.get('live_keys') or [])} live)")
            a.push_config_at = 0.0  # done: keep the line, never push again

    def render(self) -> None:
        """Draw one frame of the live view."""
        lines = view_lines(self.sink.live(TRUCK_ID), self.gateway.state(),
                           broker_up=self.broker.running, elapsed=time.monotonic() - self.t0,
                           outage_left=(self.outage_until - (time.monotonic() - self.t0))
                           if self.outage_until is not None else None,
                           phase=self.sim.truck.state.phase.value,
                           counts=self.sink.summary()["trucks"].get(TRUCK_ID, {}).get(
                               "by_type", {}), remote=self.push_line)
        if not self.args.plain and self.out.isatty():
            self.out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        else:  # a log or a pipe: plain lines, one block per refresh
            self.out.write(_ANSI.sub("", "\n".join(lines)) + "\n\n")
        self.out.flush()

    def close(self) -> None:
        """Stop the gateway (SIGTERM), the sink, the simulator's ports and the broker."""
        if self.push is not None and self.push.poll() is None:
            self.push.kill()
            self.push.wait(5)
        self.gateway.stop()
        if not self.broker.running:
            with contextlib.suppress(BrokerUnavailableError):
                self.broker.start()
        self.sink.stop()
        self.sim.close()
        self.broker.close()


def events_config(speed: float) -> str:
    """``[events]`` for a drive at ``speed`` times real time: the agent's clock is real,
    so durations shrink by ``speed`` and a speed change over one of its seconds spans
    ``speed`` seconds of the truck (accelerations grow by ``speed``; capped at the
    config's bounds, so above about 5x a harsh braking may go unnoticed)."""
    s = max(speed, 1.0)
    return ("\n[events]\n"
            f"trip_end_timeout_s = {max(1.0, 120.0 / s):.1f}\n"
            f"idle_min_s = {300.0 / s:.1f}\n"
            f"state_interval_s = {max(1.0, 10.0 / s):.1f}\n"
            f"harsh_accel_ms2 = {min(20.0, 1.5 * s):.2f}\n"
            f"harsh_brake_ms2 = {min(20.0, 2.5 * s):.2f}\n"
            f"harsh_corner_ms2 = {min(20.0, 2.5 * s):.2f}\n")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _fmt(v: Any, spec: str, unit: str = "") -> str:
    return "--" if not isinstance(v, int | float) else f"{format(v, spec)}{unit}"


def _driver_text(eng: dict[str, Any], driver: dict[str, Any], state: dict[str, Any]) -> str:
    idents = (state.get("can") or {}).get("drivers") or {}
    card = next((d.get("driver1") for d in idents.values() if d.get("driver1")), None)
    ws = eng.get("driver1_working_state")
    if driver.get("driver") == 1 and "working_state" in driver:
        ws = driver["working_state"]  # the latest change (engine fields are deadbanded)
    present = driver.get("card_present") if driver.get("driver") == 1 else \
        eng.get("driver1_card_present")
    state_text = WORKING_STATES[ws] if isinstance(ws, int) and 0 <= ws < 4 else "--"
    card_text = card or ("card in" if present else "no card" if present is False else "--")
    return f"{card_text}   working state {state_text}"


def _trips_text(latest: dict[str, Any], counts: dict[str, int]) -> str:
    trip, harsh, idle = latest.get("trip"), latest.get("harsh"), latest.get("idle")
    text = f"{counts.get('trip', 0)}"
    if trip:
        text += (f", last {_fmt(trip.get('distance_km'), '.2f', ' km')} in "
                 f"{_fmt((trip.get('duration_s') or 0) / 60, '.0f', ' min')}"
                 f" ({_fmt(trip.get('fuel_used_l'), '.1f', ' L')})")
    text += f"   idling {counts.get('idle', 0)}"
    if idle:
        text += f" (last {_fmt(idle.get('duration_s'), '.0f', ' s')})"
    text += f"   harsh {counts.get('harsh', 0)}"
    if harsh:
        text += f" (last {harsh.get('kind')} {_fmt(harsh.get('peak_ms2'), '.1f', ' m/s2')})"
    return text


def view_lines(live: dict[str, Any], state: dict[str, Any], *, broker_up: bool,
               elapsed: float, outage_left: float | None, phase: str,
               counts: dict[str, int] | None = None, remote: str | None = None
               ) -> list[str]:
    """The text of one frame of the live view (pure, for tests); ``counts`` are the
    events received per type, ``remote`` the line of a config push."""
    counts = counts or {}
    latest = live.get("latest", {})
    gps, eng, dtc = latest.get("gps", {}), latest.get("engine", {}), latest.get("dtc", {})
    broker = "\x1b[32mup\x1b[0m" if broker_up else "\x1b[31mDOWN\x1b[0m"
    if outage_left is not None:
        broker += f" (outage, back in {max(0.0, outage_left):.0f} s)"
    buf = state.get("buffer") or {}
    uplink = (state.get("uplink") or {}).get("state", "?")
    faults = [f"SPN {a.get('spn')} FMI {a.get('fmi')} "
              f"({DTC_TEXT.get((a.get('spn'), a.get('fmi')), '?')})"
              for a in dtc.get("active", [])]
    lamps = [k for k, v in (dtc.get("lamps") or {}).items() if v == "on"]
    status = live.get("status", {}).get("state", "?")
    speed = eng.get("vehicle_speed_kmh", gps.get("speed_kmh"))
    fault_text = "; ".join(faults) if faults else "none"
    if lamps:
        fault_text += f"   lamps: {', '.join(lamps)}"
    return [
        f"\x1b[1mtruckgw demo\x1b[0m  t={elapsed:5.0f} s   broker {broker}",
        (f"truck {TRUCK_ID}  simulator: {phase}   cloud status: {status}"
         f"   gateway uplink: {uplink}"),
        (f"  position  {_fmt(gps.get('lat'), '.5f')}, {_fmt(gps.get('lon'), '.5f')}  "
         f"heading {_fmt(gps.get('heading_deg'), '.0f', ' deg')}  sats {gps.get('sats', '--')}"),
        (f"  speed     {_fmt(speed, '.1f', ' km/h')}"
         f"   rpm {_fmt(eng.get('engine_speed_rpm'), '.0f')}"
         f"   fuel {_fmt(eng.get('fuel_level_pct'), '.1f', ' %')}"
         f"   coolant {_fmt(eng.get('coolant_temp_c'), '.0f', ' C')}"),
        (f"  gear      {_fmt(eng.get('current_gear'), 'd')}"
         f" (selected {_fmt(eng.get('selected_gear'), 'd')})"
         f"   AdBlue {_fmt(eng.get('def_tank_level_pct'), '.1f', ' %')}"),
        f"  driver    {_driver_text(eng, latest.get('driver', {}), state)}",
        f"  trips     {_trips_text(latest, counts)}",
        f"  faults    {fault_text}",
        f"  buffer    {buf.get('pending', '--')} events pending (evicted {buf.get('evicted', 0)})",
        (f"  received  {live.get('events', 0)} events, {live.get('rate', 0.0):.1f}/s, "
         f"missing {live.get('missing', 0)}, duplicates {live.get('duplicates', 0)}"),
        *([f"  remote    {remote}"] if remote else []),
    ]
