"""``truckgw sim fleet``: N simulated trucks, each with its own gateway and buffer.

Every truck gets its own pair of ptys (NMEA + slcan), its own ``truckgw run``
process with a generated config and SQLite buffer, all publishing to one broker --
a load test of the broker and of the machine. All models run in one asyncio loop.
``--no-gateway`` only creates the ptys (for gateways started elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path

from gateway import wire
from sim.faults import FaultPlan
from sim.gateway_proc import GatewayProcess, truck_config
from sim.j1939_out import Schedule
from sim.ports import PtyPort
from sim.route import list_routes, load_route
from sim.runner import TruckSim
from sim.signals import stop_event_on_signals
from sim.sink import Sink, format_summary
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import Truck, TruckParams

log = logging.getLogger(__name__)


def add_parser(simsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet`` under ``truckgw sim``."""
    p = simsub.add_parser(
        "fleet", help="N trucks at once, each with its own gateway process (broker load test)",
        description="Simulate N trucks; start one `truckgw run` per truck against --host/--port.")
    p.add_argument("-n", "--trucks", type=int, default=5, help="number of trucks (default 5)")
    p.add_argument("--host", default="127.0.0.1", help="broker host")
    p.add_argument("--port", type=int, default=1883, help="broker port")
    p.add_argument("--topic-prefix", default="fleet", help="topic prefix")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")
    p.add_argument("--encoding", choices=wire.ENCODINGS, default="json",
                   help="wire encoding of the gateways")
    p.add_argument("--route", default="mixed",
                   help=f"a route for all trucks, or 'mixed' to cycle {', '.join(list_routes())}")
    p.add_argument("--seed", type=int, default=1, help="seed of truck 1 (truck i uses seed+i)")
    p.add_argument("--speed", type=float, default=1.0, help="time-lapse factor of the drive")
    p.add_argument("--rate-scale", type=float, default=1.0, help="J1939 rate multiplier")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S s")
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: temporary)")
    p.add_argument("--no-gateway", action="store_true", help="only create the ptys")
    p.add_argument("--sink", action="store_true",
                   help="also run an in-process sink and print its figures at the end")
    p.add_argument("--expect-no-gaps", action="store_true", help="with --sink: exit 1 on gaps")
    p.set_defaults(func=cmd_fleet)


class FleetTruck:
    """One simulated truck with its ports and (optionally) its gateway."""

    def __init__(self, idx: int, base: Path, args: argparse.Namespace, route: str) -> None:
        self.truck_id = f"SIM-{idx:04d}"
        self.dir = base / self.truck_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.gps = PtyPort(self.dir / "gps")
        self.can = SlcanPtyAdapter(self.dir / "can")
        truck = Truck(load_route(route), seed=args.seed + idx,
                      params=TruckParams(warmup_s=10.0, start_parked_s=1.0 + idx % 5))
        self.sim = TruckSim(truck, gps=self.gps, can=self.can, speed=args.speed,
                            faults=FaultPlan(), schedule=Schedule(rate_scale=args.rate_scale),
                            seed=args.seed + idx)
        self.can.device.on_transmit = self.sim.on_frame_from_host
        self.gateway: GatewayProcess | None = None
        if not args.no_gateway:
            text = truck_config(truck_id=self.truck_id, workdir=self.dir, mqtt_host=args.host,
                                mqtt_port=args.port, gps_port=str(self.gps.link),
                                can_channel=self.can.channel, prefix=args.topic_prefix,
                                protocol=args.protocol, encoding=args.encoding)
            self.gateway = GatewayProcess(self.dir, text)

    def close(self) -> None:
        """Stop the gateway, then release the ports."""
        if self.gateway is not None:
            self.gateway.stop()
        self.sim.close()


def cmd_fleet(args: argparse.Namespace) -> int:
    """Run the fleet until Ctrl-C or ``--duration``."""
    if args.trucks < 1:
        print("error: --trucks must be >= 1", file=sys.stderr)
        return 2
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="truckgw-fleet-")
    base = args.dir or Path(tmp.name)  # type: ignore[union-attr]
    routes = itertools.cycle(list_routes() if args.route == "mixed" else [args.route])
    trucks: list[FleetTruck] = []
    sink = Sink(args.host, args.port, args.topic_prefix) if args.sink else None
    try:
        trucks.extend(FleetTruck(i, base, args, next(routes))
                      for i in range(1, args.trucks + 1))
        if sink is not None:
            sink.start()
        for t in trucks:
            if t.gateway is not None:
                t.gateway.start()
            print(f"{t.truck_id}: gps {t.gps.link} can {t.can.channel}"
                  + (f" config {t.gateway.config_path}" if t.gateway else ""), flush=True)
        t0 = time.monotonic()
        asyncio.run(_run_all(trucks, args.duration))
        print(f"fleet ran {len(trucks)} trucks for {time.monotonic() - t0:.0f} s; "
              f"{sum(t.sim.frames for t in trucks)} CAN frames, "
              f"{sum(t.sim.epochs for t in trucks)} NMEA epochs")
    finally:
        for t in trucks:
            with contextlib.suppress(Exception):
                t.close()
        if sink is not None:
            time.sleep(1.0)  # let the last acknowledged batches arrive
            sink.stop()
        if tmp is not None:
            tmp.cleanup()
    if sink is not None:
        summary = sink.summary()
        print(format_summary(summary))
        if args.expect_no_gaps and summary["totals"]["lost"]:
            return 1
    return 0


async def _run_all(trucks: list[FleetTruck], duration: float | None) -> None:
    stop = stop_event_on_signals()
    async with asyncio.TaskGroup() as tg:
        for t in trucks:
            tg.create_task(t.sim.run(duration, stop), name=f"sim-{t.truck_id}")
