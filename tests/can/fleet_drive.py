"""A short simulated drive for the derived fleet events (trip, idle, harsh, driver).

One leg of 1.2 km at 50 km/h, 800 m east then a left turn (a 90-degree curve of 45 m
radius) and 400 m north, driven by a solo tractor (no trailer) with every optional
scenario of sim/truck.py on, in this order:

- parked, then a long warm-up at idle (an ``idle`` event) during which the driver pulls
  his tachograph card for :data:`CARD_OUT_FOR_S` (``driver`` events: card out, rest;
  card in, work);
- the hard pull-away of the solo tractor (``harsh`` acceleration,
  :data:`sim.truck.SOLO_LAUNCH_MS2`);
- the curve taken too fast (``harsh`` cornering, :data:`sim.truck.FAST_CORNER_MS2` lateral);
- the leg's emergency stop at :data:`HARSH_BRAKE_AT` of it, the last harsh event
  (``harsh`` braking, 4.5 m/s^2);
- the depot at the end (ignition off: the trip ends ``trip_end_timeout_s`` later).

Used in process by tests/can/test_fleet_wiring.py and tests/uplink/test_schema.py, and
through the real agent by tests/sim/test_e2e_fleet.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from config.events import Event
from config.schema import EventsConfig
from drivers.j1939 import J1939Decoder
from drivers.nmea_epoch import NmeaDecoder
from gateway.clock import Clock
from gateway.ingest import Ingest
from sim import nmea_out
from sim.faults import FaultPlan
from sim.j1939_out import Schedule
from sim.route import Route, Stop, Waypoint, build_route
from sim.runner import TruckSim, fix_of
from sim.truck import Phase, Truck, TruckParams

T0 = dt.datetime(2026, 12, 1, 8, 0, 0, tzinfo=dt.UTC)
LAT, LON0 = 53.54, 9.90
LEG_M = 1200.0
WARMUP_S = 40.0  # model seconds idling before departure
START_PARKED_S = 2.0
CURVE_AT_M = 800.0  # the left turn (point 2)
CURVE_R_M = 45.0
HARSH_BRAKE_AT = 0.75  # share of the leg: 900 m, after the curve
CARD_OUT_AT_S = 26.0  # model time: in the warm-up (2 s .. 42 s)
CARD_OUT_FOR_S = 8.0
#: thresholds for a drive in model time (no time-lapse)
EVENTS = EventsConfig(trip_end_timeout_s=30.0, idle_min_s=20.0)


def short_route() -> Route:
    """Three points due east, 400 m apart, then one 400 m north (a left turn of radius
    :data:`CURVE_R_M` at point 2), limit 50 km/h; the depot at the end."""
    lon_per_m = 1 / (111_320.0 * 0.5948)  # cos(53.54 deg)
    lat_per_m = 1 / 111_195.0
    east = [(LAT, LON0 + i * 400.0 * lon_per_m) for i in range(3)]
    north = (LAT + 400.0 * lat_per_m, east[-1][1])
    pts = tuple(Waypoint(lat, lon, 10.0, 50.0, CURVE_R_M if i == 2 else None)
                for i, (lat, lon) in enumerate([*east, north]))
    return build_route("fleet-short", pts, (Stop(3, 0.0, "depot"),))


def short_truck(seed: int = 11, *, park_s: float = 600.0) -> Truck:
    """The truck of :func:`short_route` (no DTCs), parked until 2 s in: a solo tractor
    that takes the curve too fast and whose driver pulls his card in the warm-up."""
    return Truck(short_route(), seed=seed, params=TruckParams(
        start_parked_s=START_PARKED_S, warmup_s=WARMUP_S, park_s=park_s, fault_every_s=0,
        harsh_brake_at=HARSH_BRAKE_AT, solo=True, fast_corner_at=0.5,
        card_out_at_s=CARD_OUT_AT_S, card_out_for_s=CARD_OUT_FOR_S))


@dataclass
class Drive:
    events: list[Event]
    truck: Truck
    odo_on_km: float  # the model's odometer when the ignition came on
    odo_off_km: float  # ... and when it went off (parked at the depot)


def drive_in_process(events_cfg: EventsConfig = EVENTS, *, after_park_s: float = 45.0,
                     dt_s: float = 0.02, truck: Truck | None = None,
                     faults: FaultPlan | None = None) -> Drive:
    """Model -> NMEA (1 Hz) and J1939 frames -> the gateway's decoders -> Ingest, with a
    tick every second; ``after_park_s`` of model time parked at the end. ``truck``:
    another than :func:`short_truck`; ``faults``: applied as ``truckgw sim truck
    --fault`` does (its times are model seconds here: no time-lapse)."""
    now = {"s": 0.0}

    def mono() -> float:
        return now["s"]

    clock = Clock(wall=lambda: T0.timestamp() + now["s"], mono=mono,
                  system_synced=lambda: True)
    out: list[Event] = []
    ingest = Ingest(out.append, clock, events=events_cfg, mono=mono)
    truck = truck or short_truck()
    sim = TruckSim(truck, faults=faults) if faults is not None else None  # no outputs
    sched = Schedule(request_every_s=0)
    can, gps = J1939Decoder(), NmeaDecoder()
    next_epoch, next_tick = 1.0, 1.0
    odo_on = odo_off = None
    parked_at = None
    for _ in range(round(900 / dt_s)):  # bounded: 15 model minutes at most
        now["s"] += dt_s
        if sim is not None:
            sim.apply_faults(now["s"])
        state = truck.step(dt_s)
        if odo_on is None and state.phase is not Phase.PARKED:
            odo_on = state.odometer_km
        if odo_on is not None and parked_at is None and state.phase is Phase.PARKED:
            odo_off, parked_at = state.odometer_km, now["s"]
        ts = round(now["s"] * 1000)
        ingest.on_can([d for f in sched.due(now["s"], state)
                       if (d := can.feed(ts, f.arbitration_id, f.data)) is not None])
        if now["s"] >= next_epoch:
            utc = T0 + dt.timedelta(seconds=next_epoch)
            for f in gps.feed(nmea_out.epoch(utc, fix_of(state, 11, 0.9)), received=now["s"]):
                ingest.on_fix(f)
            next_epoch += 1.0
        if now["s"] >= next_tick:
            ingest.tick()
            next_tick += 1.0
        if parked_at is not None and now["s"] - parked_at >= after_park_s:
            break
    assert odo_on is not None and odo_off is not None, "the truck never finished its leg"
    ingest.flush()
    return Drive(out, truck, odo_on, odo_off)
