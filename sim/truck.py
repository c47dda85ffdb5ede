"""A deterministic truck model: drives a route and keeps the engine's books.

Pure: :meth:`Truck.step` advances model time by ``dt``; no clock reads, all
randomness from one seeded :class:`random.Random`. The same seed, route and step
sequence always give the same states.

Physics are coarse but consistent: a 30 t tractor-trailer with a 12-speed gearbox;
power from rolling, air and grade resistance plus acceleration; fuel rate from power
(about 240 g... expressed as 0.24 L/kWh); fuel level falls exactly with total fuel
used (except at a fuel stop); odometer, engine hours and coolant temperature follow.

For the fleet events (docs/fleet-data.md) the drive has: ignition off while parked
(start, and after each leg of the route: the ECUs fall silent), idling at the warm-up
and at every planned stop, one emergency stop per leg (``harsh_brake_at``:
:data:`HARSH_BRAKE_MS2` from at least :data:`HARSH_MIN_KMH`; ordinary braking stays
within 1.5 x :data:`BRAKE_MS2`), the PTO engaged while a stop named in :data:`PTO_WORK`
is worked, and the tachograph of :mod:`sim.tacho` (card in at ignition on, working
states drive / work / available).

Curves are arcs (:meth:`sim.route.Route.curve`): the heading turns smoothly and the driver
slows to each curve's design speed (:data:`sim.route.DESIGN_LATERAL_MS2` of lateral
acceleration) before it and holds it through it. Optional scenarios for the derived
fleet events, all off by default (they draw nothing from the random generator):

- ``solo``: a tractor without its trailer (:data:`SOLO_KG`, two axles) whose driver
  pulls away hard from every standstill (:data:`SOLO_LAUNCH_MS2`, power permitting): a
  harsh acceleration; other accelerations stay the ordinary ones;
- ``fast_corner_at`` (or :meth:`Truck.fast_corner`): the first curve of at least
  :data:`FAST_CORNER_MIN_DEG` after that share of each leg is taken too fast, at the
  speed giving :data:`FAST_CORNER_MS2` of lateral acceleration (at most the limit): a
  harsh cornering;
- ``card_out_at_s`` (or :meth:`Truck.remove_card`): the driver pulls his card at the
  first standstill with the ignition on at or after that model time (a tachograph ejects
  a card only at a standstill) and puts it back ``card_out_for_s`` later: TCO1 reports
  no card and the rest state, DI an empty driver 1 field.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field, replace

from sim.route import DESIGN_LATERAL_MS2, Route, Stop, haversine_m
from sim.tacho import Tacho, TachoState, WorkingState

MASS_KG = 30_000.0
CRR = 0.006
CDA_M2 = 6.0
AIR_RHO = 1.2
G = 9.81
P_MAX_KW = 330.0
WHEEL_R_M = 0.5
AXLE_RATIO = 2.85
GEARS = (14.9, 11.7, 9.0, 7.1, 5.6, 4.4, 3.4, 2.7, 2.1, 1.6, 1.28, 1.0)
IDLE_RPM = 600.0
IDLE_FUEL_LPH = 2.2
FUEL_L_PER_KWH = 0.24
TANK_L = 600.0
DEF_TANK_L = 80.0
DEF_PER_FUEL = 0.05  # AdBlue dosing: about 5 % of the diesel burnt, by volume
AXLES_KG = (7_100.0, 11_400.0, 11_500.0)  # steer axle, drive axle, trailer axles (30 t)
BATTERY_OFF_V = 25.2  # a 24 V system at rest
BATTERY_CHARGING_V = 27.6  # alternator charging, plus up to 0.4 V under load
BRAKE_MS2 = 1.2
#: a stop whose reason names one of these is worked with the truck's PTO engaged
PTO_WORK = ("crane", "pick-up", "tipping", "pto")
#: The one emergency stop per route (a harsh braking for the fleet events): from at least
#: HARSH_MIN_KMH down to HARSH_TO share of the speed at HARSH_BRAKE_MS2.
HARSH_BRAKE_MS2 = 4.5
HARSH_MIN_KMH = 30.0
HARSH_TO = 0.1
STEP_S = 0.1
#: the solo scenario: an unladen 4x2 tractor (no trailer) pulling away hard
SOLO_KG = 8_000.0
SOLO_AXLES_KG = (5_100.0, 2_900.0)  # steer axle, drive axle
SOLO_LAUNCH_MS2 = 2.2  # a hard pull-away, about as much as the drive axle's grip allows
LAUNCH_POWER_SHARE = 0.9  # of P_MAX at the wheels while pulling away
LAUNCH_END_MS = 1.0  # the pull-away ends this close to the driver's target speed
#: a curve taken too fast: lateral acceleration (a laden semi rolls over near 3.5-4)
FAST_CORNER_MS2 = 3.2
FAST_CORNER_MIN_DEG = 30.0  # only a real turn is taken too fast
CURVE_LEAD_M = 10.0  # the driver is at the curve's speed this far before it starts

#: Realistic active DTCs: (SPN, FMI, description, lamp) -- lamp is mil/red_stop/amber_warning.
DTC_CATALOGUE: tuple[tuple[int, int, str, str], ...] = (
    (110, 0, "coolant temperature high", "red_stop"),
    (100, 1, "oil pressure low", "red_stop"),
    (3226, 2, "aftertreatment outlet NOx sensor erratic", "mil"),
    (4364, 18, "SCR conversion efficiency low", "mil"),
    (157, 3, "fuel rail pressure sensor voltage high", "amber_warning"),
    (520, 12, "retarder torque bad device", "amber_warning"),
    (1761, 1, "DEF tank level low", "amber_warning"),
)


class Phase(enum.Enum):
    """What the truck is doing."""

    PARKED = "parked"  # ignition off: ECUs silent
    WARMUP = "warmup"  # engine idling before departure
    DRIVING = "driving"
    DWELL = "dwell"  # halted at a planned stop, engine idling

    def __repr__(self) -> str:
        return f"<Phase.{self.name}>"


@dataclass(frozen=True, slots=True)
class Dtc:
    """An active diagnostic trouble code."""

    spn: int
    fmi: int
    oc: int
    lamp: str


@dataclass(frozen=True, slots=True)
class TruckState:
    """One snapshot of everything the outputs encode."""

    t_s: float
    phase: Phase
    lat: float
    lon: float
    alt_m: float
    heading_deg: float
    speed_kmh: float
    accel_ms2: float
    gear: int
    engine_rpm: float
    pedal_pct: float
    load_pct: float
    torque_pct: float
    fuel_rate_lph: float
    economy_kmpl: float | None
    fuel_level_pct: float
    total_fuel_l: float
    trip_fuel_l: float
    engine_hours_h: float
    odometer_km: float
    coolant_c: float
    oil_kpa: float
    dtcs: tuple[Dtc, ...] = ()
    def_level_pct: float = 80.0  # AdBlue tank
    battery_v: float = BATTERY_OFF_V
    ambient_c: float = 12.0
    axle_kg: tuple[float, ...] = AXLES_KG
    service_km: float = 30_000.0  # distance to the next service (negative: overdue)
    trip_km: float = 0.0  # since the ignition was last switched on
    pto: bool = False  # a power take-off drives a body (crane, tipper) at a work stop
    tacho: TachoState = field(default_factory=TachoState)

    @property
    def ignition(self) -> bool:
        """True when the engine runs (ECUs talk on the bus)."""
        return self.phase is not Phase.PARKED

    @property
    def lamps(self) -> dict[str, bool]:
        """DM1 lamp states derived from the active DTCs."""
        on = {d.lamp for d in self.dtcs}
        return {k: k in on for k in ("mil", "red_stop", "amber_warning", "protect")}


@dataclass(slots=True)
class TruckParams:
    """Knobs of the model (all have realistic defaults)."""

    start_parked_s: float = 3.0
    warmup_s: float = 20.0
    park_s: float = 120.0
    fault_every_s: float = 600.0
    ambient_c: float = 12.0
    odometer_km: float | None = None
    fuel_level_pct: float | None = None
    def_level_pct: float | None = None
    #: where along each route (share of its length) the driver brakes hard once (an
    #: obstacle), at the first point after it at HARSH_MIN_KMH or more; None: never
    harsh_brake_at: float | None = 0.45
    #: a tractor without its trailer whose driver pulls away hard (harsh accelerations)
    solo: bool = False
    #: where along each route (share of its length) the driver takes the next curve of at
    #: least FAST_CORNER_MIN_DEG too fast (a harsh cornering); None: never
    fast_corner_at: float | None = None
    #: model time at or after which the driver pulls his card (at a standstill, ignition
    #: on), and how long it stays out; None: never
    card_out_at_s: float | None = None
    card_out_for_s: float = 30.0
    extra: dict[str, float] = field(default_factory=dict)


class Truck:
    """A truck driving ``route`` back and forth; call :meth:`step` with model time."""

    def __init__(self, route: Route, *, seed: int = 0, params: TruckParams | None = None) -> None:
        self.rng = random.Random(seed)
        self.params = params or TruckParams()
        self.route = route
        self._s = 0.0  # metres along the route
        self._v = 0.0  # m/s
        self._a = 0.0
        self._stops_done: set[int] = set()
        self._harsh_to: float | None = None  # braking hard down to this speed (m/s)
        self._harsh_done = False  # the emergency stop of this route happened
        self._pto_stop = False  # the current dwell is worked with the PTO
        self._refuel = False  # arrived at a fuel stop in this step
        self.harsh_brakes = 0  # emergency stops so far (the truth for tests)
        self.mass_kg = SOLO_KG if self.params.solo else MASS_KG
        self._launch = False  # pulling away hard (solo)
        self.hard_launches = 0  # hard pull-aways so far (the truth for tests)
        self._fast_j: int | None = None  # the vertex whose curve is taken too fast
        self._fast_armed = False  # fast_corner(): the next real curve is taken too fast
        self._fast_entered = False
        self.fast_corners = 0  # curves entered too fast so far (the truth for tests)
        self._card_pull = False  # the driver will pull his card at the next standstill
        self._card_for: float | None = None  # ... for this long (None: until next shift)
        self._card_out = False  # the card is out while the ignition is on
        self._card_back_at: float | None = None
        self._card_planned = False  # the card_out_at_s removal was armed
        self.card_removals = 0  # cards pulled with the ignition on (the truth for tests)
        self._phase = Phase.PARKED
        self._phase_left = self.params.start_parked_s
        self._cruise_jitter = 0.0
        self._fault_until = 0.0
        self._next_fault = self.rng.expovariate(1.0 / self.params.fault_every_s) \
            if self.params.fault_every_s > 0 else math.inf
        self._oc: dict[int, int] = {}
        p = self.params
        fuel_pct = p.fuel_level_pct if p.fuel_level_pct is not None else self.rng.uniform(55, 85)
        odo = p.odometer_km if p.odometer_km is not None else self.rng.uniform(80_000, 600_000)
        # fleet data from a second generator: the drive stays what it was for a given seed
        fleet = random.Random(seed + 1_000_003)
        self.tacho = Tacho(f"DF{fleet.randrange(10**13):013d}01")
        def_pct = p.def_level_pct if p.def_level_pct is not None else fleet.uniform(40, 90)
        self.state = replace(self._initial(fuel_pct, odo), def_level_pct=def_pct,
                             service_km=round(fleet.uniform(2_000, 60_000)),
                             ambient_c=p.ambient_c,
                             axle_kg=SOLO_AXLES_KG if p.solo else AXLES_KG)
        self._plan_fast_corner()

    def _initial(self, fuel_pct: float, odo: float) -> TruckState:
        w = self.route.points[0]
        total_fuel = round(odo / 3.0, 1)  # ~33 L/100 km lifetime average
        return TruckState(
            t_s=0.0, phase=Phase.PARKED, lat=w.lat, lon=w.lon, alt_m=w.alt_m,
            heading_deg=self.route.bearings[0], speed_kmh=0.0, accel_ms2=0.0, gear=0,
            engine_rpm=0.0, pedal_pct=0.0, load_pct=0.0, torque_pct=0.0, fuel_rate_lph=0.0,
            economy_kmpl=None, fuel_level_pct=fuel_pct, total_fuel_l=total_fuel,
            trip_fuel_l=0.0, engine_hours_h=round(odo / 55.0, 2), odometer_km=odo,
            coolant_c=self.params.ambient_c, oil_kpa=0.0,
        )

    # ------------------------------------------------------------------ public

    def step(self, dt_s: float) -> TruckState:
        """Advance the model by ``dt_s`` seconds (sub-stepped) and return the new state."""
        left = dt_s
        while left > 1e-9:
            h = min(STEP_S, left)
            self._tick(h)
            left -= h
        if self._refuel:  # the tanks are full at the end of the step that reached the pump
            self._refuel = False
            self.state = replace(self.state, fuel_level_pct=95.0, def_level_pct=95.0)
        return self.state

    def inject_fault(self, n_dtcs: int = 3, duration_s: float = 120.0) -> None:
        """Start a fault episode now with ``n_dtcs`` active codes (faults on demand)."""
        self._start_faults(n_dtcs, duration_s)

    def fast_corner(self) -> None:
        """The driver takes the next curve of at least :data:`FAST_CORNER_MIN_DEG` that he
        has not started braking for too fast (a harsh cornering on demand)."""
        self._fast_armed = True

    def remove_card(self, for_s: float | None = None) -> None:
        """The driver pulls his card at the next standstill with the ignition on (now if
        standing) and puts it back ``for_s`` model seconds later (None: when
        :meth:`insert_card` is called or at the next ignition on)."""
        self._card_pull, self._card_for = True, for_s

    def insert_card(self) -> None:
        """The driver's card goes back in (or is no longer going to be pulled)."""
        self._card_pull, self._card_out, self._card_back_at = False, False, None

    # ------------------------------------------------------------------ internals

    def _tick(self, h: float) -> None:
        t = self.state.t_s + h
        self._phase_left -= h
        if self._phase is Phase.PARKED and self._phase_left <= 0:
            self._phase, self._phase_left = Phase.WARMUP, self.params.warmup_s
            self.state = replace(self.state, trip_fuel_l=0.0, trip_km=0.0)
            self._card_out, self._card_back_at = False, None  # a new shift: card in
        elif self._phase in (Phase.WARMUP, Phase.DWELL) and self._phase_left <= 0:
            self._phase = Phase.DRIVING
        if self._phase is Phase.DRIVING:
            self._drive(h)  # may arrive at a fuel stop (refuelled at the end of step())
        else:
            self._v, self._a = 0.0, 0.0
        self._faults(t)  # may change the active DTCs (updates self.state)
        self.state = self._books(self.state, t, h)
        running = self._phase is not Phase.PARKED
        tacho = self.tacho.step(h, running, self.state.speed_kmh)
        if self._card(t, running):
            tacho = replace(tacho, card1=False, driver1=WorkingState.REST, driver1_id=None)
        self.state = replace(self.state, tacho=tacho,
                             pto=self._phase is Phase.DWELL and self._pto_stop)

    def _card(self, t: float, running: bool) -> bool:
        """The driver's card scenario at model time ``t``; True while the card is out."""
        at = self.params.card_out_at_s
        if at is not None and not self._card_planned and t >= at:
            self._card_planned = True
            self.remove_card(self.params.card_out_for_s)
        if self._card_pull and running and self._v < 0.3:
            self._card_pull, self._card_out = False, True
            self._card_back_at = t + self._card_for if self._card_for is not None else None
            self.card_removals += 1
        if self._card_out and self._card_back_at is not None and t >= self._card_back_at:
            self.insert_card()
        return self._card_out and running

    def _drive(self, h: float) -> None:
        route = self.route
        target = self._target_speed()
        v = self._v
        grade = self._grade()
        a_max = max(0.1, 0.9 - 0.006 * v * 3.6 - G * grade)
        if self.params.solo and v < 0.3 and target > LAUNCH_END_MS and not self._launch:
            self._launch = True  # pulling away from a standstill: the solo driver floors it
            self.hard_launches += 1
        if self._launch and target - v < LAUNCH_END_MS:
            self._launch = False
        if self._launch:
            resist = G * CRR + 0.5 * AIR_RHO * CDA_M2 * v * v / self.mass_kg
            power = LAUNCH_POWER_SHARE * P_MAX_KW * 1000 / (self.mass_kg * max(v, 1.0))
            a_max = max(0.1, min(SOLO_LAUNCH_MS2, power - resist) - G * grade)
        # the driver closes a speed gap in 2 s, but brakes within 0.6 s: the target speed
        # already follows the braking curve to the next stop, so a lazier response would
        # roll past a planned stop
        a = max(-BRAKE_MS2 * 1.5, min(a_max, (target - v) / (2.0 if target >= v else 0.6)))
        a = self._harsh_brake(v, a)
        v = max(0.0, v + a * h)
        self._s = min(route.length_m, self._s + v * h)
        self._v, self._a = v, a
        self._fast_progress()
        stop = self._next_stop()
        if stop is not None and route.cum_m[stop.at] - self._s < 1.5 and v < 0.6:
            self._arrive(stop)

    def _harsh_brake(self, v: float, a: float) -> float:
        """The route's one emergency stop: overrides the driver's planned acceleration."""
        at = self.params.harsh_brake_at
        if (self._harsh_to is None and not self._harsh_done and at is not None
                and self._s >= self.route.length_m * at and v * 3.6 >= HARSH_MIN_KMH):
            self._harsh_to, self._harsh_done = v * HARSH_TO, True
            self.harsh_brakes += 1
        if self._harsh_to is None:
            return a
        if v <= self._harsh_to:
            self._harsh_to = None
            return a
        return -HARSH_BRAKE_MS2

    def _arrive(self, stop: Stop) -> None:
        self._stops_done.add(stop.at)
        self._v, self._a = 0.0, 0.0
        last = stop.at == len(self.route.points) - 1
        if "fuel" in stop.reason:  # diesel and AdBlue, filled at the end of this step
            self._refuel = True
        if last or self._s >= self.route.length_m - 1:
            # end of trip: park (ignition off), then drive back
            self._phase, self._phase_left = Phase.PARKED, stop.dwell_s + self.params.park_s
            self.route = self.route.reversed()
            self._s = 0.0
            self._stops_done = set()
            self._harsh_to, self._harsh_done = None, False
            self._launch = False
            self._plan_fast_corner()
        else:
            self._phase, self._phase_left = Phase.DWELL, stop.dwell_s
            self._pto_stop = any(w in stop.reason.lower() for w in PTO_WORK)

    def _next_stop(self) -> Stop | None:
        for s in self.route.stops:
            if s.at not in self._stops_done and self.route.cum_m[s.at] >= self._s - 2:
                return s
        if self._s >= self.route.length_m - 1:
            return Stop(len(self.route.points) - 1, 0.0, "end")
        return None

    def _segment(self) -> int:
        cum = self.route.cum_m
        i = 0
        while i < len(cum) - 2 and cum[i + 1] <= self._s:
            i += 1
        return i

    def _target_speed(self) -> float:
        route = self.route
        i = self._segment()
        self._cruise_jitter += self.rng.gauss(0, 0.05)
        self._cruise_jitter = max(-1.2, min(0.6, self._cruise_jitter))
        target = route.points[i].limit_kmh / 3.6 + self._cruise_jitter
        # slow down for the curves ahead (at their speed CURVE_LEAD_M before they start,
        # held through them) and for the next stop
        for j in range(max(i, 1), len(route.points) - 1):
            curve = route.curve(j)
            if curve is None:
                continue
            entry = route.cum_m[j] - curve.half_m
            d = entry - CURVE_LEAD_M - self._s
            if d > 600:
                break
            if self._s > route.cum_m[j] + curve.half_m:
                continue  # behind us
            lateral = FAST_CORNER_MS2 if j == self._fast_j else DESIGN_LATERAL_MS2
            v_curve = min(route.points[j - 1].limit_kmh / 3.6,
                          math.sqrt(lateral * curve.radius_m))
            target = min(target, math.sqrt(v_curve**2 + 2 * BRAKE_MS2 * max(d, 0)))
        stop = self._next_stop()
        if stop is not None:
            d = route.cum_m[stop.at] - self._s
            target = min(target, math.sqrt(2 * BRAKE_MS2 * max(d - 1.0, 0.0)) + 0.3)
        return max(0.0, target)

    def _plan_fast_corner(self) -> None:
        """The curve of this leg that ``fast_corner_at`` says is taken too fast."""
        self._fast_j, self._fast_entered = None, False
        at = self.params.fast_corner_at
        if at is not None:
            self._fast_j = self._next_real_curve(self.route.length_m * at)

    def _next_real_curve(self, from_m: float) -> int | None:
        route = self.route
        for j in range(1, len(route.points) - 1):
            curve = route.curve(j)
            if (curve is not None and abs(curve.turn_deg) >= FAST_CORNER_MIN_DEG
                    and route.cum_m[j] - curve.half_m >= from_m):
                return j
        return None

    def _fast_progress(self) -> None:
        """Arm, enter and leave the curve taken too fast."""
        route = self.route
        if self._fast_armed and self._fast_j is None:
            # one the driver has not started braking for yet (600 m is his look-ahead)
            self._fast_j = self._next_real_curve(self._s + 600 * (self._v > 0.3))
            self._fast_armed, self._fast_entered = False, False
        j = self._fast_j
        curve = route.curve(j) if j is not None else None
        if j is None or curve is None:
            return
        if not self._fast_entered and self._s >= route.cum_m[j] - curve.half_m:
            self._fast_entered = True
            self.fast_corners += 1
        if self._s > route.cum_m[j] + curve.half_m:
            self._fast_j, self._fast_entered = None, False

    def _grade(self) -> float:
        route, i = self.route, self._segment()
        seg = route.cum_m[i + 1] - route.cum_m[i]
        return (route.points[i + 1].alt_m - route.points[i].alt_m) / seg if seg > 1 else 0.0

    def _position(self) -> tuple[float, float, float, float]:
        route, i = self.route, self._segment()
        a, b = route.points[i], route.points[i + 1]
        seg = route.cum_m[i + 1] - route.cum_m[i]
        f = min(1.0, max(0.0, (self._s - route.cum_m[i]) / seg)) if seg > 0 else 0.0
        heading = route.bearings[i]
        for j in (i, i + 1):  # the second half of the arc at i, the first of the next one
            curve = route.curve(j) if 0 < j < len(route.points) - 1 else None
            if curve is None:
                continue
            start = route.cum_m[j] - curve.half_m
            if start <= self._s <= route.cum_m[j] + curve.half_m:
                share = (self._s - start) / (2 * curve.half_m)
                heading = (route.bearings[j - 1] + curve.turn_deg * share) % 360.0
        return (a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f,
                a.alt_m + (b.alt_m - a.alt_m) * f, heading)

    def _faults(self, t: float) -> None:
        if self._fault_until and t >= self._fault_until:
            self._fault_until = 0.0
            self.state = replace(self.state, dtcs=())
        if t >= self._next_fault and self._phase is not Phase.PARKED:
            self._start_faults(self.rng.choice((1, 2, 2, 3, 4)), self.rng.uniform(60, 300))
            self._next_fault = t + self.rng.expovariate(1.0 / self.params.fault_every_s)

    def _start_faults(self, n: int, duration_s: float) -> None:
        picks = self.rng.sample(DTC_CATALOGUE, k=max(1, min(n, len(DTC_CATALOGUE))))
        dtcs = []
        for spn, fmi, _desc, lamp in picks:
            self._oc[spn] = min(126, self._oc.get(spn, 0) + 1)
            dtcs.append(Dtc(spn, fmi, self._oc[spn], lamp))
        self._fault_until = self.state.t_s + duration_s
        self.state = replace(self.state, dtcs=tuple(dtcs))

    def _books(self, st: TruckState, t: float, h: float) -> TruckState:
        v, a = self._v, self._a
        lat, lon, alt, heading = self._position()
        moved_km = haversine_m(st.lat, st.lon, lat, lon) / 1000.0
        running = self._phase is not Phase.PARKED
        gear, rpm = self._gear_rpm(v, a) if running else (0, 0.0)
        force = self.mass_kg * (G * CRR + G * self._grade() + a) + \
            0.5 * AIR_RHO * CDA_M2 * v * v
        power_kw = force * v / 1000.0 if v > 0.1 else 0.0
        if not running:
            rate, load = 0.0, 0.0
        elif power_kw <= 0:
            rate = 0.0 if rpm > 900 else IDLE_FUEL_LPH  # fuel cut on overrun
            load = 0.0 if rpm > 900 else 8.0
        else:
            load = min(100.0, 8.0 + 92.0 * power_kw / P_MAX_KW)
            rate = IDLE_FUEL_LPH + FUEL_L_PER_KWH * min(power_kw, P_MAX_KW)
        used = rate * h / 3600.0
        speed_kmh = v * 3.6
        coolant_target = (85.0 + 8.0 * load / 100.0) if running else self.params.ambient_c
        tau = 300.0 if running else 1800.0
        return replace(
            st, t_s=t, phase=self._phase, lat=lat, lon=lon, alt_m=alt,
            heading_deg=heading if v > 0.5 else st.heading_deg, speed_kmh=speed_kmh,
            accel_ms2=a, gear=gear, engine_rpm=rpm,
            pedal_pct=min(100.0, load * 1.05) if power_kw > 0 else 0.0,
            load_pct=load, torque_pct=load, fuel_rate_lph=rate,
            economy_kmpl=(speed_kmh / rate) if rate > 0 and speed_kmh > 1 else None,
            fuel_level_pct=max(0.0, st.fuel_level_pct - used / TANK_L * 100.0),
            total_fuel_l=st.total_fuel_l + used, trip_fuel_l=st.trip_fuel_l + used,
            engine_hours_h=st.engine_hours_h + (h / 3600.0 if running else 0.0),
            odometer_km=st.odometer_km + moved_km,
            coolant_c=st.coolant_c + (coolant_target - st.coolant_c) * min(1.0, h / tau),
            oil_kpa=(120.0 + 0.2 * rpm) if running else 0.0,
            def_level_pct=max(0.0, st.def_level_pct - used * DEF_PER_FUEL / DEF_TANK_L * 100.0),
            battery_v=(BATTERY_CHARGING_V + 0.4 * load / 100.0) if running else BATTERY_OFF_V,
            service_km=st.service_km - moved_km, trip_km=st.trip_km + moved_km,
        )

    def _gear_rpm(self, v: float, a: float) -> tuple[int, float]:
        if v < 0.3:
            return 0, IDLE_RPM + self.rng.uniform(-8, 8)
        wheel_rpm = v * 60.0 / (2 * math.pi * WHEEL_R_M) * AXLE_RATIO
        floor = 1250.0 if a > 0.3 else 1000.0
        for idx in range(len(GEARS) - 1, -1, -1):
            rpm = wheel_rpm * GEARS[idx]
            if rpm >= floor or idx == 0:
                return idx + 1, max(IDLE_RPM, min(2100.0, rpm))
        return 1, IDLE_RPM  # pragma: no cover - loop always returns
