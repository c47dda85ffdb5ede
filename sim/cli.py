"""``truckgw sim {truck,replay,sink,fleet}`` and ``truckgw demo``.

:func:`register` is called by :mod:`gateway.cli` with its sub-parsers action.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from config.errors import GatewayError
from sim.faults import FaultPlan
from sim.j1939_out import Schedule
from sim.ports import PtyPort, SerialPortOut
from sim.route import list_routes, load_route
from sim.runner import CanOutput, GpsOutput, PythonCanOutput, TruckSim
from sim.signals import stop_event_on_signals
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import Truck, TruckParams

log = logging.getLogger(__name__)

EX_OK, EX_FAIL, EX_USAGE, EX_UNAVAILABLE = 0, 1, 2, 69
SubParsers = argparse._SubParsersAction  # argparse has no public name for it


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``sim`` (with ``truck``, ``replay``, ``sink``, ``fleet``) and ``demo``."""
    from sim import demo, fleet, sink_cli  # noqa: PLC0415 - keep `truckgw --help` fast

    p = sub.add_parser("sim", help="truck simulator, log replay, cloud sink, fleet load",
                       description="Simulate trucks and consume what the gateway publishes.")
    simsub = p.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")

    t = simsub.add_parser(
        "truck", help="simulate one truck on pseudo-terminals (GPS NMEA + slcan CAN)",
        description="Drive a route and write NMEA and J1939 to ports the gateway can open. "
        "Prints the paths and a matching [gps]/[can] config snippet.")
    add_output_args(t)
    add_truck_args(t)
    t.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    t.set_defaults(func=cmd_truck)

    r = simsub.add_parser(
        "replay", help="replay NMEA and candump -L logs to the same outputs",
        description="Play captured logs at real (--speed 1) or accelerated speed.")
    r.add_argument("--nmea", type=Path, help="gpsd-style raw NMEA log")
    r.add_argument("--candump", type=Path, help="candump -L log")
    r.add_argument("--speed", type=float, default=1.0, help="time factor (default 1)")
    r.add_argument("--repeat", type=int, default=1, help="play the logs N times")
    add_output_args(r)
    r.set_defaults(func=cmd_replay)

    sink_cli.add_parser(simsub)
    fleet.add_parser(simsub)
    demo.add_parser(sub)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """Where NMEA and CAN go."""
    g = p.add_argument_group("outputs")
    g.add_argument("--dir", type=Path, default=None,
                   help="folder for the pty links (default: a new temporary folder)")
    g.add_argument("--gps", choices=("pty", "serial", "none"), default="pty",
                   help="NMEA output: a pseudo-terminal (default), a serial device, or none")
    g.add_argument("--gps-device", default=None, help="serial device for --gps serial")
    g.add_argument("--gps-baud", type=int, default=9600, help="baud rate for --gps serial")
    g.add_argument("--can", choices=("slcan", "virtual", "socketcan", "none"), default="slcan",
                   help="CAN output: slcan adapter on a pty (default), python-can virtual, "
                   "socketcan (e.g. vcan0), or none")
    g.add_argument("--can-channel", default="vcan0",
                   help="channel for --can virtual/socketcan (default vcan0)")


def add_truck_args(p: argparse.ArgumentParser) -> None:
    """Model knobs."""
    g = p.add_argument_group("truck model")
    g.add_argument("--route", default="hamburg-port-loop",
                   help=f"shipped route ({', '.join(list_routes())}) or a route JSON file")
    g.add_argument("--seed", type=int, default=1, help="random seed (same seed, same drive)")
    g.add_argument("--speed", type=float, default=1.0,
                   help="time-lapse factor for the drive (output rates and clocks stay real)")
    g.add_argument("--gps-hz", type=float, default=1.0, help="NMEA epochs per second (1-10)")
    g.add_argument("--rate-scale", type=float, default=1.0,
                   help="multiply every J1939 message rate (bus load)")
    g.add_argument("--fault-every", type=float, default=600.0, metavar="S",
                   help="mean seconds of drive between random DTC episodes (0: never)")
    g.add_argument("--warmup", type=float, default=20.0, metavar="S",
                   help="engine idling before the first departure")
    g.add_argument("--fault", action="append", default=[], metavar="KIND@START+DUR",
                   help="inject a fault, e.g. tunnel@30+20, gps-vanish@60+5, can-silence@90+10,"
                   " garbage@10+5, badsum@10+5, tp-malformed@40, dtc@20 (repeatable)")


class Outputs:
    """The GPS and CAN outputs of one simulated truck, built from CLI arguments."""

    def __init__(self, args: argparse.Namespace, name: str = "") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        base = args.dir
        if base is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="truckgw-sim-")
            base = Path(self._tmp.name)
        base.mkdir(parents=True, exist_ok=True)
        self.dir = base
        self.gps: GpsOutput | None = None
        self.can: CanOutput | None = None
        self.gps_path: str | None = None
        self.can_channel: str | None = None
        self.can_interface = args.can
        if args.gps == "pty":
            port = PtyPort(base / f"gps{name}")
            self.gps, self.gps_path = port, str(port.link)
        elif args.gps == "serial":
            if not args.gps_device:
                raise GatewayError("--gps serial needs --gps-device")
            self.gps, self.gps_path = SerialPortOut(args.gps_device, args.gps_baud), \
                args.gps_device
        if args.can == "slcan":
            adapter = SlcanPtyAdapter(base / f"can{name}")
            self.can, self.can_channel = adapter, adapter.channel
        elif args.can in ("virtual", "socketcan"):
            self.can = PythonCanOutput(args.can, args.can_channel)
            self.can_channel = args.can_channel

    def describe(self) -> str:
        """Paths and a config snippet for the gateway."""
        lines = []
        if self.gps_path:
            lines += ["[gps]", f'port = "{self.gps_path}"', "baudrate = 9600", ""]
        if self.can_channel:
            lines += ["[can]", f'interface = "{self.can_interface}"',
                      f'channel = "{self.can_channel}"', "bitrate = 250000", ""]
        return "\n".join(lines)

    def close(self) -> None:
        """Release ports and the temporary folder."""
        for out in (self.gps, self.can):
            if out is not None:
                with contextlib.suppress(OSError, GatewayError):
                    out.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def build_sim(args: argparse.Namespace, outputs: Outputs, seed_offset: int = 0) -> TruckSim:
    """A :class:`TruckSim` from CLI arguments."""
    params = TruckParams(warmup_s=args.warmup, fault_every_s=args.fault_every)
    truck = Truck(load_route(args.route), seed=args.seed + seed_offset, params=params)
    sim = TruckSim(truck, gps=outputs.gps, can=outputs.can, gps_hz=args.gps_hz,
                   speed=args.speed, faults=FaultPlan.parse(args.fault),
                   schedule=Schedule(rate_scale=args.rate_scale), seed=args.seed + seed_offset)
    if isinstance(outputs.can, SlcanPtyAdapter):
        outputs.can.device.on_transmit = sim.on_frame_from_host
    elif isinstance(outputs.can, PythonCanOutput):
        outputs.can.on_request = sim.on_frame_from_host
    return sim


def cmd_truck(args: argparse.Namespace) -> int:
    """``truckgw sim truck``."""
    try:
        outputs = Outputs(args)
        sim = build_sim(args, outputs)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_USAGE

    async def main() -> None:
        stop = stop_event_on_signals()
        await sim.run(args.duration, stop)

    print(f"simulating route {sim.truck.route.name} (seed {args.seed}, x{args.speed})")
    print("point the gateway at:\n" + outputs.describe(), flush=True)
    try:
        asyncio.run(main())
    finally:
        outputs.close()
    st = sim.truck.state
    dropped = outputs.can.dropped if isinstance(outputs.can, SlcanPtyAdapter) else 0
    print(f"done: {sim.epochs} NMEA epochs, {sim.frames} CAN frames "
          f"({dropped} dropped while the adapter was closed), "
          f"odometer {st.odometer_km:.1f} km, fuel used {st.trip_fuel_l:.1f} L")
    return EX_OK


def cmd_replay(args: argparse.Namespace) -> int:
    """``truckgw sim replay``."""
    from sim.replay import nmea_epochs, parse_candump, replay  # noqa: PLC0415

    if args.nmea is None and args.candump is None:
        print("error: give --nmea FILE and/or --candump FILE", file=sys.stderr)
        return EX_USAGE
    try:
        epochs = nmea_epochs(args.nmea.read_bytes()) if args.nmea else None
        dump = parse_candump(args.candump.read_bytes()) if args.candump else None
        outputs = Outputs(args)
    except (OSError, GatewayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_USAGE
    print("point the gateway at:\n" + outputs.describe(), flush=True)

    async def main() -> dict[str, int]:
        stop = stop_event_on_signals()
        return await replay(epochs=epochs, candump=dump, gps=outputs.gps, can=outputs.can,
                            speed=args.speed, repeat=args.repeat, stop=stop)

    t0 = time.monotonic()
    try:
        sent = asyncio.run(main())
    finally:
        outputs.close()
    print(f"replayed {json.dumps(sent)} in {time.monotonic() - t0:.1f} s")
    return EX_OK


def dump_json(obj: Any) -> str:
    """Compact JSON for summaries."""
    return json.dumps(obj, sort_keys=True, default=str)
