"""Pure policies deriving fleet events from decoded signals and GPS: trip, idle, harsh, driver.

Wired by :class:`gateway.ingest.Ingest`: it feeds :meth:`FleetEvents.on_signals` with
each decoded :class:`~drivers.j1939.SignalUpdate`, :meth:`FleetEvents.on_position` with
each GPS fix that has a position, and the agent calls :meth:`FleetEvents.tick` about once
a second; the agent keeps :meth:`FleetEvents.snapshot` in the buffer's ``state`` table
(:meth:`buffer.store.SqliteStore.put_state`) so that a trip survives an agent restart
(:meth:`FleetEvents.restore`). Thresholds: ``[events]``
(:class:`config.schema.EventsConfig`). No clock reads: every call takes ``ts_ms``.

- ``trip``: starts when the ignition is on (engine speed above 0, wheel speed above
  standstill, or, when neither is known, any signal: the bus woke up) and ends
  ``trip_end_timeout_s`` after the last such sign. Fields: ``start_ts``,
  ``duration_s``, ``distance_km`` (odometer, high resolution when the source sends it;
  its latest reading before the truck first moves is the start, since the odometer
  often comes a second after the engine speed and a low-resolution VD may come before
  the first VDHR; its first reading when the truck moved before it, as when the gateway
  boots mid-drive; the GPS path otherwise, ``distance_source`` tells which),
  ``fuel_used_l`` (total fuel counter from its first reading, when known), ``driving_s``,
  ``idle_s``, ``max_speed_kmh``, ``start_lat``/``start_lon``/``end_lat``/``end_lon``
  (when known).
- ``idle``: engine running at a standstill for at least ``idle_min_s``; recorded when
  it ends, with ``start_ts``, ``duration_s``, ``fuel_l`` (counter delta, else the
  integrated fuel rate) and the position.
- ``harsh``: ``kind`` ``acceleration`` / ``braking`` (speed change over 1 s above
  ``harsh_accel_ms2`` / ``harsh_brake_ms2``, from the CAN wheel speed, GPS speed when
  the wheel speed is not fresh) or ``cornering`` (GPS speed times heading rate above
  ``harsh_corner_ms2``); recorded when the episode ends, stamped with its start, with
  ``peak_ms2``, ``duration_s``, ``speed_kmh`` and the position.
- ``driver``: a tachograph driver card inserted or removed, or a working state change
  (TCO1): ``src``, ``driver`` (1, 2), ``card_present``, ``working_state``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from config.events import Event
from config.schema import EventsConfig
from gateway.recording.gps import distance_m

Value = float | int | bool

FRESH_MS = 2_000  # a wheel speed older than this is not current: GPS decides
WINDOW_MS = 1_000  # acceleration over this span
MAX_GAP_MS = 5_000  # a longer gap between samples is not counted as driving/idling time
CORNER_MIN_KMH = 20.0  # below this, heading changes are manoeuvring, not cornering
ODO_SAME_KM = 0.125  # one step of the low-resolution VD: odometer readings this close at a
#                      standstill before the truck moves are the same place
#: the signals the trip, idle and harsh policies read; a message with none of them (most
#: of the bus) only proves the ignition on (and may carry driver states)
_TRIP_KEYS = frozenset({"engine_speed_rpm", "vehicle_speed_kmh", "total_distance_km",
                        "total_fuel_used_l", "fuel_rate_lph"})
_DRIVER_KEYS = frozenset({"driver1_card_present", "driver1_working_state",
                          "driver2_card_present", "driver2_working_state"})


@dataclass(slots=True)
class _Episode:
    kind: str
    start_ms: int
    peak: float
    speed_kmh: float
    pos: tuple[float, float] | None


@dataclass(slots=True)
class _Trip:
    start_ms: int
    last_on_ms: int
    odo0: float | None
    fuel0: float | None
    pos0: tuple[float, float] | None
    gps_m: float = 0.0
    driving_s: float = 0.0
    idle_s: float = 0.0
    max_kmh: float = 0.0
    moved: bool = False  # the truck has moved in this trip: odo0 / fuel0 are fixed
    odo_first: float | None = None  # the trip's first odometer reading (for ODO_SAME_KM)


class FleetEvents:
    """The four derived-event policies over one truck's signals (pure)."""

    def __init__(self, cfg: EventsConfig) -> None:
        self.cfg = cfg
        self._rpm: float | None = None
        self._wheel: tuple[int, float] | None = None  # (ts, km/h)
        self._odo: float | None = None
        self._fuel: float | None = None
        self._fuel_rate: float | None = None
        self._pos: tuple[float, float] | None = None
        self._last_fix: tuple[int, float, float, float] | None = None  # ts, lat, lon, heading
        self._last_fix_utc: int | None = None  # the receiver's time of that fix
        self._trip: _Trip | None = None
        self._account_ms: int | None = None
        self._idle: tuple[int, float | None, float] | None = None  # start, fuel0, burnt
        self._speeds: deque[tuple[int, float]] = deque()
        self._speeds_src = ""
        self._episode: _Episode | None = None
        self._corner: _Episode | None = None
        self._drivers: dict[tuple[int, int], tuple[bool | None, int | None]] = {}

    # ------------------------------------------------------------------ input

    def on_signals(self, ts_ms: int, sa: int, values: Mapping[str, Value]) -> list[Event]:
        """Signals of one message from source ``sa``."""
        if _TRIP_KEYS.isdisjoint(values):  # most messages: a sign of ignition at most
            self._ignition(ts_ms)
            return [] if _DRIVER_KEYS.isdisjoint(values) else self._driver(ts_ms, sa, values)
        out: list[Event] = []
        get = values.get
        rpm = get("engine_speed_rpm")
        if rpm is not None:
            self._rpm = float(rpm)
        wheel = get("vehicle_speed_kmh")
        if wheel is not None:
            self._wheel = (ts_ms, float(wheel))
        if (v := get("total_distance_km")) is not None:
            self._odo = float(v)
        if (v := get("total_fuel_used_l")) is not None:
            self._fuel = float(v)
        if (v := get("fuel_rate_lph")) is not None:
            self._fuel_rate = float(v)
        self._ignition(ts_ms)
        trip = self._trip
        if trip is not None and not trip.moved:
            # Until the truck first moves the odometer stands still: the latest reading is
            # the start (it may come a second after the engine speed, and a low-resolution
            # VD may come before its high-resolution VDHR).
            speed = self._speed_kmh(ts_ms)
            if speed is not None and speed > self.cfg.standstill_kmh:
                trip.moved = True
            if self._odo is not None:
                if trip.odo0 is None:
                    trip.odo0 = trip.odo_first = self._odo
                # measured from the first reading: readings 1 s apart of a truck moving
                # without a wheel speed are each this close to the one before
                elif not trip.moved and abs(self._odo - (
                        trip.odo0 if trip.odo_first is None else trip.odo_first)) <= ODO_SAME_KM:
                    trip.odo0 = self._odo  # the same standstill, read more precisely
                elif not trip.moved:
                    trip.moved = True  # the odometer itself says the truck has moved
        elif trip is not None and trip.odo0 is None and self._odo is not None:
            trip.odo0 = self._odo  # moving from the start (the gateway booted mid-drive)
        if trip is not None and trip.fuel0 is None:  # fuel burns at a standstill too
            trip.fuel0 = self._fuel
        out += self._account(ts_ms)
        if wheel is not None:
            out += self._speed_sample(ts_ms, float(wheel) / 3.6, "wheel")
        if not _DRIVER_KEYS.isdisjoint(values):
            out += self._driver(ts_ms, sa, values)
        return out

    def on_position(self, ts_ms: int, lat: float, lon: float, speed_kmh: float | None,
                    heading_deg: float | None, *, fix_ms: int | None = None) -> list[Event]:
        """One GPS fix with a position (speed and heading None when the fix lacks them).

        ``fix_ms``: the receiver's own time of the fix, when it has one: heading rates are
        taken over it, since fixes read from a backed-up serial line arrive bunched.
        """
        out: list[Event] = []
        last = self._last_fix
        last_utc, self._last_fix_utc = self._last_fix_utc, fix_ms
        trip = self._trip
        if trip is not None and self._pos is not None:
            trip.gps_m += distance_m(self._pos[0], self._pos[1], lat, lon)
        if trip is not None and trip.pos0 is None:
            trip.pos0 = (lat, lon)
        self._pos = (lat, lon)
        if speed_kmh is None:
            self._last_fix = None
            return out
        if self._wheel is None or ts_ms - self._wheel[0] > FRESH_MS:
            out += self._speed_sample(ts_ms, speed_kmh / 3.6, "gps")
        if heading_deg is None:
            self._last_fix = None
            return out
        dt_ms = ts_ms - last[0] if last is not None else 0
        if fix_ms is not None and last_utc is not None:
            dt_ms = fix_ms - last_utc
        if last is not None and 0 < dt_ms <= FRESH_MS and speed_kmh >= CORNER_MIN_KMH:
            turn = (heading_deg - last[3] + 180.0) % 360.0 - 180.0
            lateral = speed_kmh / 3.6 * math.radians(abs(turn)) / (dt_ms / 1000)
            out += self._corner_sample(ts_ms, lateral, speed_kmh)
        self._last_fix = (ts_ms, lat, lon, heading_deg)
        return out

    def tick(self, ts_ms: int) -> list[Event]:
        """Time passes: ends a trip whose ignition has been off for the timeout."""
        trip = self._trip
        if trip is None or ts_ms - trip.last_on_ms < self.cfg.trip_end_timeout_s * 1000:
            return []
        out = self._end_idle(trip.last_on_ms)
        out.append(self._trip_event(trip))
        self._trip = None
        self._rpm = None
        self._account_ms = None
        return out

    # ------------------------------------------------------------------ trip and idle

    def _running(self) -> bool:
        return self._rpm is not None and self._rpm > 0

    def _speed_kmh(self, ts_ms: int) -> float | None:
        if self._wheel is not None and ts_ms - self._wheel[0] <= FRESH_MS:
            return self._wheel[1]
        return None

    def _ignition(self, ts_ms: int) -> None:
        speed = self._speed_kmh(ts_ms)
        known = self._rpm is not None or speed is not None
        on = self._running() or (speed is not None and speed > self.cfg.standstill_kmh)
        if known and not on:
            return
        if self._trip is None:
            self._trip = _Trip(ts_ms, ts_ms, self._odo, self._fuel, self._pos,
                               odo_first=self._odo)
        self._trip.last_on_ms = ts_ms

    def _account(self, ts_ms: int) -> list[Event]:
        """Driving and idling time, max speed, idle episodes."""
        trip = self._trip
        prev, self._account_ms = self._account_ms, ts_ms
        speed = self._speed_kmh(ts_ms)
        if trip is None or speed is None:
            return []
        trip.max_kmh = max(trip.max_kmh, speed)
        dt_s = (ts_ms - prev) / 1000 if prev is not None and 0 < ts_ms - prev <= MAX_GAP_MS else 0.0
        idling = self._running() and speed <= self.cfg.standstill_kmh
        if speed > self.cfg.standstill_kmh:
            trip.driving_s += dt_s
        elif idling:
            trip.idle_s += dt_s
        if idling:
            if self._idle is None:
                self._idle = (ts_ms, self._fuel, 0.0)
            elif self._fuel_rate is not None:
                start, fuel0, burnt = self._idle
                self._idle = (start, fuel0, burnt + self._fuel_rate * dt_s / 3600)
            return []
        return self._end_idle(ts_ms)

    def _end_idle(self, ts_ms: int) -> list[Event]:
        if self._idle is None:
            return []
        start, fuel0, burnt = self._idle
        self._idle = None
        duration = (ts_ms - start) / 1000
        if duration < self.cfg.idle_min_s:
            return []
        fields: dict[str, object] = {"start_ts": start, "duration_s": round(duration, 1)}
        if fuel0 is not None and self._fuel is not None and self._fuel >= fuel0:
            fields["fuel_l"] = round(self._fuel - fuel0, 3)
        elif burnt > 0:
            fields["fuel_l"] = round(burnt, 3)
        self._add_pos(fields, self._pos)
        return [Event("idle", ts_ms, fields)]

    def _trip_event(self, trip: _Trip) -> Event:
        fields: dict[str, object] = {
            "start_ts": trip.start_ms,
            "duration_s": round((trip.last_on_ms - trip.start_ms) / 1000, 1),
            "driving_s": round(trip.driving_s, 1), "idle_s": round(trip.idle_s, 1),
            "max_speed_kmh": round(trip.max_kmh, 1),
        }
        if trip.odo0 is not None and self._odo is not None and self._odo >= trip.odo0:
            fields["distance_km"] = round(self._odo - trip.odo0, 3)
            fields["distance_source"] = "odometer"
        else:
            fields["distance_km"] = round(trip.gps_m / 1000, 3)
            fields["distance_source"] = "gps"
        if trip.fuel0 is not None and self._fuel is not None and self._fuel >= trip.fuel0:
            fields["fuel_used_l"] = round(self._fuel - trip.fuel0, 3)
        self._add_pos(fields, trip.pos0, "start_")
        self._add_pos(fields, self._pos, "end_")
        return Event("trip", trip.last_on_ms, fields)

    @staticmethod
    def _add_pos(fields: dict[str, object], pos: tuple[float, float] | None,
                 prefix: str = "") -> None:
        if pos is not None:
            fields[f"{prefix}lat"], fields[f"{prefix}lon"] = pos

    # ------------------------------------------------------------------ harsh

    def _speed_sample(self, ts_ms: int, v_ms: float, source: str) -> list[Event]:
        """Acceleration over the last second of ``source`` speeds; harsh episodes."""
        speeds = self._speeds
        if source != self._speeds_src:
            speeds.clear()  # never mix wheel and GPS speeds in one difference
            self._speeds_src = source
        speeds.append((ts_ms, v_ms))
        while len(speeds) > 1 and ts_ms - speeds[1][0] >= WINDOW_MS:
            speeds.popleft()
        t0, v0 = speeds[0]
        span = ts_ms - t0
        if span < WINDOW_MS * 0.9 or span > WINDOW_MS * 3:
            return []
        a = (v_ms - v0) / (span / 1000)
        cfg = self.cfg
        kind = "acceleration" if a > cfg.harsh_accel_ms2 else \
            "braking" if -a > cfg.harsh_brake_ms2 else ""
        ep = self._episode
        if ep is not None and ep.kind == kind:
            ep.peak = max(ep.peak, abs(a))
            return []
        out = [self._harsh_event(ep, ts_ms)] if ep is not None else []
        self._episode = _Episode(kind, ts_ms, abs(a), v_ms * 3.6, self._pos) if kind else None
        return out

    def _corner_sample(self, ts_ms: int, lateral: float, speed_kmh: float) -> list[Event]:
        ep = self._corner
        if lateral > self.cfg.harsh_corner_ms2:
            if ep is None:
                self._corner = _Episode("cornering", ts_ms, lateral, speed_kmh, self._pos)
            else:
                ep.peak = max(ep.peak, lateral)
            return []
        self._corner = None
        return [self._harsh_event(ep, ts_ms)] if ep is not None else []

    @staticmethod
    def _harsh_event(ep: _Episode, end_ms: int) -> Event:
        fields: dict[str, object] = {"kind": ep.kind, "peak_ms2": round(ep.peak, 2),
                                     "duration_s": round((end_ms - ep.start_ms) / 1000, 1),
                                     "speed_kmh": round(ep.speed_kmh, 1)}
        FleetEvents._add_pos(fields, ep.pos)
        return Event("harsh", ep.start_ms, fields)

    # ------------------------------------------------------------------ driver

    def _driver(self, ts_ms: int, sa: int, values: Mapping[str, Value]) -> list[Event]:
        out = []
        for n in (1, 2):
            card = values.get(f"driver{n}_card_present")
            state = values.get(f"driver{n}_working_state")
            if card is None and state is None:
                continue
            key = (sa, n)
            old = self._drivers.get(key)
            new = (None if card is None else bool(card), None if state is None else int(state))
            if old == new:
                continue
            self._drivers[key] = new
            fields: dict[str, object] = {"src": sa, "driver": n}
            if new[0] is not None:
                fields["card_present"] = new[0]
            if new[1] is not None:
                fields["working_state"] = new[1]
            out.append(Event("driver", ts_ms, fields))
        return out

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, object] | None:
        """The open trip as plain JSON-able data (for the buffer's state), or None.

        Besides the trip it keeps the last odometer, fuel counter and position (so a trip
        that ends right after a restart, before any new signal, still has its distance)
        and the driver states (so a restart does not announce the same card again).
        """
        trip = self._trip
        if trip is None:
            return None
        return {"start_ms": trip.start_ms, "last_on_ms": trip.last_on_ms, "odo0": trip.odo0,
                "fuel0": trip.fuel0, "pos0": list(trip.pos0) if trip.pos0 else None,
                "gps_m": trip.gps_m, "driving_s": trip.driving_s, "idle_s": trip.idle_s,
                "max_kmh": trip.max_kmh, "moved": trip.moved, "odo": self._odo, "fuel": self._fuel,
                "pos": list(self._pos) if self._pos else None,
                "drivers": [[sa, n, card, state]
                            for (sa, n), (card, state) in sorted(self._drivers.items())]}

    def shift(self, delta_ms: int) -> None:
        """The truck's clock stepped by ``delta_ms`` (first GPS sync of a Pi that booted
        with a stale clock, or a later step): move every time held here with it, so an
        open trip, idle or harsh episode keeps its true duration and is stamped on the
        corrected clock."""
        if not delta_ms:
            return
        if self._wheel is not None:
            self._wheel = (self._wheel[0] + delta_ms, self._wheel[1])
        if self._last_fix is not None:
            t, lat, lon, heading = self._last_fix
            self._last_fix = (t + delta_ms, lat, lon, heading)
        if self._trip is not None:
            self._trip.start_ms += delta_ms
            self._trip.last_on_ms += delta_ms
        if self._account_ms is not None:
            self._account_ms += delta_ms
        if self._idle is not None:
            start, fuel0, burnt = self._idle
            self._idle = (start + delta_ms, fuel0, burnt)
        self._speeds = deque((t + delta_ms, v) for t, v in self._speeds)
        for ep in (self._episode, self._corner):
            if ep is not None:
                ep.start_ms += delta_ms

    def restore(self, state: Mapping[str, object] | None) -> None:
        """Continue the trip of a :meth:`snapshot` (after an agent restart).

        A malformed snapshot (wrong types, missing keys) restores nothing: the next
        signal starts a new trip.
        """
        if not state:
            return

        def num(key: str) -> float | None:
            v = state.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        def pair(key: str) -> tuple[float, float] | None:
            v = state.get(key)
            if isinstance(v, list) and len(v) == 2 and all(
                    isinstance(x, int | float) for x in v):
                return float(v[0]), float(v[1])
            return None

        start, last = num("start_ms"), num("last_on_ms")
        if start is None or last is None:
            return
        self._trip = _Trip(int(start), int(last), num("odo0"), num("fuel0"), pair("pos0"),
                           num("gps_m") or 0.0, num("driving_s") or 0.0, num("idle_s") or 0.0,
                           num("max_kmh") or 0.0, state.get("moved", True) is not False)
        self._trip.odo_first = self._trip.odo0
        self._odo = self._odo if self._odo is not None else num("odo")
        self._fuel = self._fuel if self._fuel is not None else num("fuel")
        self._pos = self._pos or pair("pos")
        drivers = state.get("drivers")
        for row in drivers if isinstance(drivers, list) else ():
            if isinstance(row, list) and len(row) == 4 and all(
                    isinstance(x, int) for x in row[:2]):
                card, ws = row[2], row[3]
                self._drivers.setdefault((row[0], row[1]), (
                    card if isinstance(card, bool) else None,
                    ws if isinstance(ws, int) and not isinstance(ws, bool) else None))
