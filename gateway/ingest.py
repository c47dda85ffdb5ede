"""Readings in, events out: the one place between the drivers and the buffer.

The drivers turn bytes into readings (:class:`~drivers.nmea_epoch.Fix` from the GPS
receiver, :data:`~drivers.j1939.Decoded` messages from the CAN bus) and hand them to
:class:`Ingest`; they know nothing of recording policies, events, the clock or the
buffer. Here, in this order, for every reading:

1. the clock learns from GPS time (:meth:`gateway.clock.Clock.on_gps_time`);
2. the moving/stopped hint comes from the latest fresh CAN wheel speed (it does not
   drift at a standstill the way a GPS speed does, docs/gps.md);
3. the recording policy decides what becomes an event (``[gps.sampling] mode`` and
   ``[can.sampling] mode`` pick it, :mod:`gateway.recording`);
4. the event is stamped: a GPS point with the receiver's own time when it is trusted,
   everything else with the corrected clock, marked ``ts_unverified`` while the clock
   is not confirmed (docs/wire-format.md), together with its CLOCK_BOOTTIME and boot id
   so that the encoder can correct it once the clock is (:mod:`gateway.ts_correct`);
5. it goes to ``submit`` (the store's ``submit``): its commit future, if any, is
   handed to ``on_future`` (the agent's commit tracker, which counts failures and
   feeds the watchdog). Nobody awaits it here: a driver never blocks on the disk.

Beside the recording policies, the derived fleet events (``trip``, ``idle``, ``harsh``,
``driver``; :class:`~gateway.recording.fleet_events.FleetEvents`, ``[events]``) see
every decoded :class:`~drivers.j1939.SignalUpdate` (stamped with the corrected clock at
its read, like the engine events), every fix with a position (stamped with the corrected
clock at its arrival, so both inputs share one time base) and :meth:`Ingest.tick`, which
the agent calls about once a second. Their events take the same stamping and ``submit``
path; :meth:`Ingest.fleet_state` / :meth:`Ingest.restore_fleet` carry the open trip
across a restart (the agent keeps it in the buffer's ``state`` table).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from config import CanSampling, GpsSampling
from config.events import TS_UNVERIFIED, Event
from config.schema import EventsConfig
from drivers.j1939 import Decoded, DtcUpdate, SignalUpdate
from drivers.nmea_epoch import Fix
from gateway.clock import Clock
from gateway.recording.can import CanRecorder, record_decoded
from gateway.recording.can_curve import DEFAULT_CURVE_ERRORS, CurveCanRecorder
from gateway.recording.fleet_events import FleetEvents
from gateway.recording.gps_curve import CurvePoint, PointRecorder, point_recorder
from gateway.ts_correct import BOOT_KEY, boot_stamp

log = logging.getLogger(__name__)

#: A wheel speed older than this says nothing about moving.
WHEEL_SPEED_FRESH_S = 3.0
WHEEL_SPEED_SIGNAL = "vehicle_speed_kmh"
#: An unverified event handed out later than this after its ts: the wall clock stepped
#: meanwhile, so its boottime is taken as now.
MAX_STAMP_AGE_MS = 3_600_000
#: a move of the clock's offset from the monotonic clock beyond this is a step (GPS
#: sync, NTP): the fleet policies' open episodes are moved with it
FLEET_STEP_MS = 2_000


@dataclass(frozen=True, slots=True)
class IngestStats:
    """What the policies made of the readings (joined into the gps / can sections)."""

    fixes: int
    points_recorded: int
    points_provisional: int
    can_messages: int
    engine_events: int
    dtc_events: int
    sources: int
    submit_errors: int


class Ingest:
    """Applies clock, moving hint, recording policy and stamping; hands events on.

    ``submit`` takes an :class:`Event` and may return a future (the store's commit);
    ``on_future`` receives each such future. ``mono`` is the monotonic clock the
    drivers stamp readings with (``Fix.received``).
    """

    def __init__(
        self,
        submit: Callable[[Event], object],
        clock: Clock,
        *,
        gps: GpsSampling | None = None,
        can: CanSampling | None = None,
        events: EventsConfig | None = None,
        on_future: Callable[[asyncio.Future[Any]], None] | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._submit = submit
        self._on_future = on_future
        self.clock = clock
        self._mono = mono
        self.gps_sampling = gps or GpsSampling()
        self.points: PointRecorder = point_recorder(self.gps_sampling)
        self._can_sampling = can or CanSampling()
        self.engine: CanRecorder | CurveCanRecorder = _can_recorder(self._can_sampling)
        events = events or EventsConfig()
        self.fleet: FleetEvents | None = FleetEvents(events) if events.enabled else None
        self._fleet_events = 0
        self._fleet_offset: int | None = None  # wall - monotonic at the last fleet input
        self._wheel: tuple[float, float] | None = None  # (km/h, mono s)
        self._fixes = 0
        self._provisional = 0
        self._can_messages = 0
        self._submit_errors = 0
        self.last_fix: Fix | None = None  # the newest fix with a position (``position``)
        self.active_dtcs: dict[int, DtcUpdate] = {}  # the latest DM1 per source (``dtc``)
        self._base = (0, 0, 0)  # counters of recorders replaced by reconfigure()

    def reconfigure(self, gps: GpsSampling | None, can: CanSampling | None) -> None:
        """New recording settings (remote configuration) from the next reading on.

        The old policies first hand over every point and engine event they still owe
        (nothing is dropped); the new ones start from a fresh baseline, so each source's
        next reading is recorded (nothing is recorded twice). Counters carry on.
        """
        gps = gps or GpsSampling()
        can = can or CanSampling()
        points, engine, dtc = self._base
        if gps != self.gps_sampling:
            for point in self.points.flush():
                self._gps_point(point)
            points += self.points.recorded
            self.gps_sampling = gps
            self.points = point_recorder(gps)
        if can != self._can_sampling:
            if isinstance(self.engine, CurveCanRecorder):
                for ev in self.engine.flush():
                    self._emit(self._stamped(ev))
            engine += self.engine.engine_events
            dtc += self.engine.dtc_events
            self._can_sampling = can
            self.engine = _can_recorder(can)
        self._base = (points, engine, dtc)

    # ------------------------------------------------------------------ GPS

    @property
    def can_sampling(self) -> CanSampling:
        """The engine recording settings in force (``reconfigure`` changes them)."""
        return self._can_sampling

    def on_fix(self, fix: Fix) -> None:
        """One decoded epoch from the receiver."""
        self._fixes += 1
        if fix.fix:
            self.last_fix = fix
        received = fix.received if fix.received is not None else self._mono()
        if fix.utc_ms is not None:
            self.clock.on_gps_time(fix.utc_ms, received, fix.time_trusted)
        for point in self.points.offer(fix, received, self.moving()):
            self._gps_point(point)
        if self.fleet is not None and fix.lat is not None and fix.lon is not None:
            self._fleet_clock()
            ts = self.clock.now_ms() - round((self._mono() - received) * 1000)
            self._fleet_out(self.fleet.on_position(ts, fix.lat, fix.lon, fix.speed_kmh,
                                                   fix.heading_deg, fix_ms=fix.utc_ms))

    def flush(self) -> None:
        """Points and engine events the policies still owe (at shutdown)."""
        for point in self.points.flush():
            self._gps_point(point)
        if isinstance(self.engine, CurveCanRecorder):
            for ev in self.engine.flush():
                self._emit(self._stamped(ev))

    def _gps_point(self, point: CurvePoint) -> None:
        fix = point.fix
        fields = point.fields()
        if point.provisional:
            self._provisional += 1
        if fix.time_trusted and fix.utc_ms is not None:
            ts = fix.utc_ms  # the receiver's own time of the measurement
        else:  # the corrected clock at the moment that fix's data arrived
            ago_ms = round((self._mono() - point.t_s) * 1000)
            ts = self.clock.now_ms() - ago_ms
            if not self.clock.verified:
                fields[TS_UNVERIFIED] = True
                self._boot_stamp(fields, ago_ms)
        self._emit(Event(type="gps", ts_ms=ts, fields=fields))

    # ------------------------------------------------------------------ CAN

    def on_can(self, batch: Sequence[Decoded]) -> None:
        """Messages decoded from one read of the bus, oldest first, stamped now."""
        if not batch:
            return
        self._can_messages += len(batch)
        ts = self.clock.now_ms()
        curve: CurveCanRecorder | None = None
        plain: CanRecorder  # DM1 always, signals unless the curve window takes them
        if isinstance(self.engine, CurveCanRecorder):
            curve, plain = self.engine, self.engine.inner
        else:
            plain = self.engine
        fleet = self.fleet
        if fleet is not None:
            self._fleet_clock()
        for out in batch:
            if type(out) is DtcUpdate:
                self.active_dtcs[out.sa] = out
            if type(out) is SignalUpdate:
                if fleet is not None:
                    derived = fleet.on_signals(ts, out.sa, out.values)
                    if derived:
                        self._fleet_out(derived)
                if WHEEL_SPEED_SIGNAL in out.values:
                    self._wheel = (float(out.values[WHEEL_SPEED_SIGNAL]), self._mono())
                if curve is not None:
                    for kept in curve.on_signals(ts, out.sa, out.values, pgn=out.pgn,
                                                 missing=out.missing):
                        self._emit(self._stamped(kept))
                    continue
            recorded = record_decoded(plain, ts, out)
            if recorded is not None:
                self._emit(self._stamped(recorded))

    # ------------------------------------------------------------------ fleet events

    def tick(self) -> None:
        """Time passes (about once a second): a trip whose ignition stayed off ends."""
        if self.fleet is not None:
            self._fleet_clock()
            self._fleet_out(self.fleet.tick(self.clock.now_ms()))

    def fleet_state(self) -> dict[str, object] | None:
        """The open trip as plain data (JSON-able), None without one or when disabled."""
        return self.fleet.snapshot() if self.fleet is not None else None

    def restore_fleet(self, state: Mapping[str, object] | None) -> None:
        """Continue the trip of :meth:`fleet_state` saved by the previous run."""
        if self.fleet is not None:
            self.fleet.restore(state)

    def _fleet_clock(self) -> None:
        """Tell the fleet policies when the clock stepped (its offset from the monotonic
        clock moved by more than :data:`FLEET_STEP_MS`), so their open episodes follow."""
        if self.fleet is None:
            return
        offset = self.clock.now_ms() - round(self._mono() * 1000)
        last, self._fleet_offset = self._fleet_offset, offset
        if last is not None and abs(offset - last) > FLEET_STEP_MS:
            self.fleet.shift(offset - last)

    def _fleet_out(self, events: list[Event]) -> None:
        for ev in events:
            self._fleet_events += 1
            self._emit(self._stamped(ev))

    @property
    def fleet_events(self) -> int:
        """Derived events (trip, idle, harsh, driver) handed on since start."""
        return self._fleet_events

    def wheel_speed_kmh(self) -> float | None:
        """The latest CCVS wheel-based speed if it is fresh, else None (unknown)."""
        if self._wheel is None:
            return None
        speed, at = self._wheel
        return speed if self._mono() - at <= WHEEL_SPEED_FRESH_S else None

    def moving(self) -> bool | None:
        """Moving vs stopped from the CAN wheel speed when known, else None (GPS decides)."""
        speed = self.wheel_speed_kmh()
        return None if speed is None else speed > self.gps_sampling.moving_speed_kmh

    def _stamped(self, ev: Event) -> Event:
        if self.clock.verified:
            return ev
        fields = {**ev.fields, TS_UNVERIFIED: True}
        # a recorder may hand an event out a message late: its ts says how long ago
        ago_ms = self.clock.now_ms() - ev.ts_ms
        self._boot_stamp(fields, ago_ms if 0 <= ago_ms <= MAX_STAMP_AGE_MS else 0)
        return Event(ev.type, ev.ts_ms, fields)

    def _boot_stamp(self, fields: dict[str, Any], ago_ms: int) -> None:
        """Where on this boot's CLOCK_BOOTTIME an unverified stamp was (internal key)."""
        if self.clock.boot_id:
            fields[BOOT_KEY] = boot_stamp(self.clock.boot_id, self.clock.boot_ms() - ago_ms)

    # ------------------------------------------------------------------ out

    def _emit(self, ev: Event) -> None:
        try:
            result = self._submit(ev)
        except Exception:  # counted and logged; the reading is what was lost, not the agent
            self._submit_errors += 1
            log.exception("cannot hand a %s event to the buffer", ev.type)
            return
        if self._on_future is not None and isinstance(result, asyncio.Future):
            self._on_future(result)

    def stats(self) -> IngestStats:
        """Counters of the policies and of the hand-over."""
        return IngestStats(
            fixes=self._fixes,
            points_recorded=self._base[0] + self.points.recorded,
            points_provisional=self._provisional,
            can_messages=self._can_messages,
            engine_events=self._base[1] + self.engine.engine_events,
            dtc_events=self._base[2] + self.engine.dtc_events,
            sources=len(self.engine.sources),
            submit_errors=self._submit_errors,
        )

    def gps_section(self) -> dict[str, int]:
        """The figures that join the status file's ``gps`` section."""
        s = self.stats()
        return {"points_recorded": s.points_recorded, "points_provisional": s.points_provisional}

    def can_section(self) -> dict[str, int]:
        """The figures that join the status file's ``can`` section."""
        s = self.stats()
        return {"engine_events": s.engine_events, "dtc_events": s.dtc_events,
                "sources": s.sources}


def _can_recorder(cfg: CanSampling) -> CanRecorder | CurveCanRecorder:
    if cfg.mode == "curve":
        return CurveCanRecorder(cfg, cfg.curve_errors or DEFAULT_CURVE_ERRORS)
    return CanRecorder(cfg)

