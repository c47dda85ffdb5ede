"""Error-bounded point recording for GPS fixes (``[gps.sampling] mode = "curve"``); pure.

The same inputs as :class:`gateway.recording.gps.GpsRecorder` (a :class:`Fix` and the
caller's monotonic ``t_s``, an optional ``moving`` hint) but a list of
:class:`CurvePoint` out: a point is usually known to be needed only one fix later,
so a point may be an *earlier* fix than the one just offered. docs/recording.md has
the algorithm, the guarantee and how a consumer rebuilds the path.

While moving, fixes go through :class:`~gateway.recording.curve.OpeningWindow` with an
SED cone (``max_error_m``) and a speed cone (``max_speed_error_kmh``, 0 = off): a fix
is recorded when the next one would take some fix off the path by more than the bound
(``error_bound``), at least every ``max_interval_s`` (``max_interval``), and on both
sides of a silence longer than that (``gap``). Reconstructed linearly in time between
recorded points, every fix offered while moving is within ``max_error_m`` (SED) and
its speed within ``max_speed_error_kmh``.

Events of their own, as in the threshold policy: the first fix, fix lost / acquired,
started, stopped, and a ``stopped_interval_s`` heartbeat while stopped or without a
fix. Before a stop or a lost fix, the last moving fix is recorded first when the path
needs it (``error_bound``) or, for a lost fix, always (``flush``): the path ends where
the fix was last seen. At a start, the last stopped fix is recorded first
(``last_stopped``) unless it already was, so the path and the speed profile stay at the
stop until the truck moves.

Time: the window runs on the receiver's own time (``utc_ms``) when it is trusted, which
is what the event's ``ts`` carries, so arrival jitter on the serial line does not
count as position error; otherwise on ``t_s``. A change between the two restarts the
window (both ends recorded). A fix whose time is not after the previous one is
ignored by the window (counted in :attr:`CurveGpsRecorder.ignored`).

Live view: when nothing was emitted for ``provisional_interval_s`` while moving, the
newest fix is returned as a ``provisional`` point (not part of the recorded path; a
consumer shows it until a newer point arrives). ``min_interval_s``,
``min_distance_m``, ``min_heading_change_deg`` and ``min_speed_change_kmh`` are not
used in this mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from config import GpsSampling
from drivers.nmea_epoch import Fix
from gateway.recording.curve import Kept, OpeningWindow, Reason, SedCone, ValueCone
from gateway.recording.gps import GpsRecorder, RecordReason

#: Field added to a provisional ``gps`` event (docs/recording.md, wire format).
PROVISIONAL_FIELD = "provisional"


class CurveReason(StrEnum):
    """Reasons of the curve policy beyond :class:`RecordReason`."""

    ERROR_BOUND = "error_bound"
    GAP = "gap"
    FLUSH = "flush"
    LAST_STOPPED = "last_stopped"
    PROVISIONAL = "provisional"


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One fix to send: ``t_s`` is the caller's stamp offered with *that* fix."""

    fix: Fix
    t_s: float
    reason: RecordReason | CurveReason

    @property
    def provisional(self) -> bool:
        """True for a live-view position that is not part of the recorded path."""
        return self.reason is CurveReason.PROVISIONAL

    def fields(self) -> dict[str, int | float | bool]:
        """The wire fields of this point's ``gps`` event."""
        out: dict[str, int | float | bool] = dict(self.fix.fields())
        if self.provisional:
            out[PROVISIONAL_FIELD] = True
        return out


@dataclass(frozen=True, slots=True)
class _Sample:
    fix: Fix
    t_s: float
    lat: float
    lon: float


_WINDOW_REASON: dict[Reason, RecordReason | CurveReason] = {
    Reason.ERROR: CurveReason.ERROR_BOUND,
    Reason.MAX_INTERVAL: RecordReason.MAX_INTERVAL,
    Reason.GAP: CurveReason.GAP,
    Reason.FLUSH: CurveReason.FLUSH,
    # a stream (re)started without a reason of the policy's own: after a time-base change
    Reason.FIRST: CurveReason.GAP,
    Reason.FORCED: CurveReason.GAP,
}


def _position(s: _Sample) -> tuple[float, float]:
    return s.lat, s.lon


def _speed(s: _Sample) -> float | None:
    return s.fix.speed_kmh


class CurveGpsRecorder:
    """Decides which fixes become ``gps`` events. Feed fixes in order to :meth:`offer`."""

    def __init__(self, cfg: GpsSampling) -> None:
        self.cfg = cfg
        cones: list[SedCone[_Sample] | ValueCone[_Sample]] = [
            SedCone(cfg.max_error_m, _position)
        ]
        if cfg.max_speed_error_kmh > 0:
            cones.append(ValueCone(cfg.max_speed_error_kmh, _speed))
        self.window: OpeningWindow[_Sample] = OpeningWindow(
            cones, max_interval=cfg.max_interval_s
        )
        self._started = False
        self._had_fix = False
        self._moving = False
        self._utc_base: bool | None = None  # window time from utc_ms (True) or t_s
        self._last_record_t: float | None = None  # t_s of the last recorded point
        self._last_out_t = 0.0  # t_s of the newest fix emitted (recorded or provisional)
        self._prev: CurvePoint | None = None  # the previous fix, while it is not recorded
        self.offered = 0
        self.recorded = 0
        self.provisional = 0

    @property
    def ignored(self) -> int:
        """Fixes the window ignored because their time was not after the previous one."""
        return self.window.ignored

    def offer(self, fix: Fix, t_s: float, moving: bool | None = None) -> list[CurvePoint]:
        """Return the points due now that ``fix`` (seen at monotonic ``t_s``) arrived.

        ``moving`` overrides the speed-based moving/stopped decision when given.
        """
        self.offered += 1
        has_fix = fix.fix > 0 and fix.lat is not None and fix.lon is not None
        if moving is None:
            moving = has_fix and (fix.speed_kmh or 0.0) > self.cfg.moving_speed_kmh
        moving = moving and has_fix
        out = self._decide(fix, t_s, has_fix=has_fix, moving=moving)
        self._had_fix, self._moving = has_fix, moving
        recorded_now = any(p.fix is fix for p in out)
        self._prev = None if recorded_now else CurvePoint(fix, t_s, CurveReason.LAST_STOPPED)
        for p in out:
            self.recorded += 1
            self._last_record_t = max(self._last_record_t or p.t_s, p.t_s)
            self._last_out_t = max(self._last_out_t, p.t_s)
        if (
            moving
            and self.cfg.provisional_interval_s > 0
            and t_s - self._last_out_t >= self.cfg.provisional_interval_s
        ):
            self.provisional += 1
            self._last_out_t = t_s
            out.append(CurvePoint(fix, t_s, CurveReason.PROVISIONAL))
        return out

    def flush(self) -> list[CurvePoint]:
        """Record the newest moving fix if the path still needs it (e.g. at shutdown)."""
        out = self._points(self.window.flush())
        self.recorded += len(out)
        return out

    # ------------------------------------------------------------------ internals

    def _decide(
        self, fix: Fix, t_s: float, *, has_fix: bool, moving: bool
    ) -> list[CurvePoint]:
        if not self._started:
            self._started = True
            if moving:
                return self._force(fix, t_s, RecordReason.FIRST)
            return [CurvePoint(fix, t_s, RecordReason.FIRST)]
        if has_fix != self._had_fix:
            if has_fix:
                if moving:
                    return self._force(fix, t_s, RecordReason.FIX_ACQUIRED)
                return [CurvePoint(fix, t_s, RecordReason.FIX_ACQUIRED)]
            out = self._points(self.window.flush())
            self.window.reset()
            return [*out, CurvePoint(fix, t_s, RecordReason.FIX_LOST)]
        if moving and self._moving:
            return self._force(fix, t_s, None)
        if moving:  # just started: the path stays at the stop until the last stopped fix
            prev = [self._prev] if self._prev is not None and self._had_fix else []
            return [*prev, *self._force(fix, t_s, RecordReason.STARTED)]
        if self._moving:  # just stopped: the stop fix ends the moving path
            out = self._force(fix, t_s, RecordReason.STOPPED)
            tail = self._points(self.window.flush())  # only if the window ignored the stop
            self.window.reset()
            return [*tail, *out]
        last = self._last_record_t
        interval = self.cfg.stopped_interval_s
        if interval and (last is None or t_s - last >= interval):
            return [CurvePoint(fix, t_s, RecordReason.STOPPED_INTERVAL)]
        return []

    def _force(
        self, fix: Fix, t_s: float, reason: RecordReason | CurveReason | None
    ) -> list[CurvePoint]:
        """Offer a moving fix (or a stop fix) to the window; ``reason`` forces it."""
        if fix.lat is None or fix.lon is None:
            return []  # unreachable: callers pass fixes with a position
        utc = fix.time_trusted and fix.utc_ms is not None
        out: list[CurvePoint] = []
        if self._utc_base is not None and utc != self._utc_base and self.window.open:
            out = self._points(self.window.flush())
            self.window.reset()
            reason = reason or CurveReason.GAP
        self._utc_base = utc
        t = fix.utc_ms / 1000.0 if utc and fix.utc_ms is not None else t_s
        kept = self.window.add(t, _Sample(fix, t_s, fix.lat, fix.lon), force=reason is not None)
        if not kept and reason is not None:
            # the window ignored it (time not after the previous fix's): an event of its
            # own is still recorded, the path just does not run through it
            out.append(CurvePoint(fix, t_s, reason))
        for k in kept:
            # the forced fix (or the first of a new stream) is recorded as ``reason``
            if k.reason in (Reason.FORCED, Reason.FIRST) and reason is not None:
                out.append(CurvePoint(k.item.fix, k.item.t_s, reason))
            else:
                out.extend(self._points([k]))
        return out

    @staticmethod
    def _points(kept: list[Kept[_Sample]]) -> list[CurvePoint]:
        return [
            CurvePoint(k.item.fix, k.item.t_s, _WINDOW_REASON[k.reason])
            for k in kept
        ]


class PointRecorder(Protocol):
    """What the GPS driver needs of a position policy, whichever ``mode`` is chosen."""

    @property
    def recorded(self) -> int:
        """Points recorded so far (provisional ones not counted)."""

    def offer(self, fix: Fix, t_s: float, moving: bool | None = None) -> list[CurvePoint]:
        """The points due now that ``fix`` arrived, oldest first."""

    def flush(self) -> list[CurvePoint]:
        """Points still owed at the end of the stream."""


class ThresholdPoints:
    """Today's :class:`GpsRecorder` behind the :class:`PointRecorder` interface."""

    def __init__(self, cfg: GpsSampling) -> None:
        self.inner = GpsRecorder(cfg)

    @property
    def recorded(self) -> int:
        """Points recorded so far."""
        return self.inner.recorded

    def offer(self, fix: Fix, t_s: float, moving: bool | None = None) -> list[CurvePoint]:
        """``[point]`` when the threshold policy records ``fix``, else ``[]``."""
        reason = self.inner.offer(fix, t_s, moving)
        return [] if reason is None else [CurvePoint(fix, t_s, reason)]

    def flush(self) -> list[CurvePoint]:
        """Nothing: the threshold policy decides on each fix as it comes."""
        return []


def point_recorder(cfg: GpsSampling) -> PointRecorder:
    """The position policy ``cfg.mode`` selects."""
    if cfg.mode == "curve":
        return CurveGpsRecorder(cfg)
    return ThresholdPoints(cfg)
