"""Point recording policy for GPS fixes (``[gps.sampling]``); pure, time passed in.

Fleet practice (docs/gps.md, point recording): while moving, record a point when any threshold
is crossed, and at least every ``max_interval_s``; while stopped, one point every
``stopped_interval_s``. In detail, for a fix offered at monotonic time ``t``:

1. The first fix, and every change between fix / no fix, is recorded.
2. Otherwise nothing is recorded sooner than ``min_interval_s`` after the last point.
3. Moving (speed above ``moving_speed_kmh``, or the caller's ``moving`` hint):
   record when the distance from the last point reaches ``min_distance_m``, the
   heading differs from the last point's by ``min_heading_change_deg`` (only above
   :data:`HEADING_MIN_SPEED_KMH`: a slow or parked receiver's heading is noise), the
   speed differs by ``min_speed_change_kmh``, ``max_interval_s`` has passed, or the
   truck has just started moving.
4. Stopped: record when the truck has just stopped, and every ``stopped_interval_s``.
   Without a fix the same ``stopped_interval_s`` heartbeat applies.

A threshold of 0 disables its criterion, except that when *every* threshold is 0
each fix is recorded (replays and tests rely on this).
"""

from __future__ import annotations

import math
from enum import StrEnum

from config import GpsSampling
from drivers.nmea_epoch import Fix

#: Below this speed a heading change is not a reason to record (heading is noise).
HEADING_MIN_SPEED_KMH = 6.0
_EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)


class RecordReason(StrEnum):
    """Why a fix was recorded."""

    ALL = "all"  # every threshold is 0
    FIRST = "first"
    FIX_ACQUIRED = "fix_acquired"
    FIX_LOST = "fix_lost"
    STARTED = "started"
    STOPPED = "stopped"
    DISTANCE = "distance"
    HEADING = "heading"
    SPEED = "speed"
    MAX_INTERVAL = "max_interval"
    STOPPED_INTERVAL = "stopped_interval"


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def heading_change_deg(a: float, b: float) -> float:
    """Smallest angle between two headings, 0..180 degrees."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


class GpsRecorder:
    """Decides which fixes become ``gps`` events. Feed fixes in order to :meth:`offer`."""

    def __init__(self, cfg: GpsSampling) -> None:
        self.cfg = cfg
        self.record_all = not any((
            cfg.min_interval_s, cfg.max_interval_s, cfg.min_distance_m,
            cfg.min_heading_change_deg, cfg.min_speed_change_kmh, cfg.stopped_interval_s,
        ))
        self._last_t: float | None = None
        self._last_pos: Fix | None = None  # last recorded fix with a position
        self._had_fix = False
        self._moving = False
        self.offered = 0
        self.recorded = 0

    def offer(self, fix: Fix, t_s: float, moving: bool | None = None) -> RecordReason | None:
        """Return why ``fix`` (seen at monotonic ``t_s``) is recorded, or None to skip.

        ``moving`` overrides the speed-based moving/stopped decision (e.g. from CAN
        wheel speed or ignition) when given.
        """
        self.offered += 1
        has_fix = fix.fix > 0 and fix.lat is not None and fix.lon is not None
        if moving is None:
            moving = has_fix and (fix.speed_kmh or 0.0) > self.cfg.moving_speed_kmh
        reason = self._decide(fix, t_s, has_fix=has_fix, moving=moving)
        if reason is not None:
            # transitions compare with the last *recorded* state, so one that falls
            # inside min_interval_s is recorded as soon as the interval has passed
            self.recorded += 1
            self._last_t = t_s
            self._had_fix = has_fix
            self._moving = moving
            if has_fix:
                self._last_pos = fix
        return reason

    def _decide(
        self, fix: Fix, t_s: float, *, has_fix: bool, moving: bool
    ) -> RecordReason | None:
        cfg = self.cfg
        was_moving, had_fix = self._moving, self._had_fix
        if self.record_all:
            return RecordReason.ALL
        if self._last_t is None:
            return RecordReason.FIRST
        if has_fix != had_fix:
            return RecordReason.FIX_ACQUIRED if has_fix else RecordReason.FIX_LOST
        dt = t_s - self._last_t
        if dt < cfg.min_interval_s:
            return None
        if not has_fix:
            return self._every(dt, cfg.stopped_interval_s, RecordReason.STOPPED_INTERVAL)
        if not moving:
            if was_moving:
                return RecordReason.STOPPED
            return self._every(dt, cfg.stopped_interval_s, RecordReason.STOPPED_INTERVAL)
        if not was_moving:
            return RecordReason.STARTED
        return self._moving_reason(fix, dt)

    def _moving_reason(self, fix: Fix, dt: float) -> RecordReason | None:
        cfg, last = self.cfg, self._last_pos
        if fix.lat is None or fix.lon is None:
            return None  # unreachable: the caller checked has_fix
        if last is None or last.lat is None or last.lon is None:
            return RecordReason.DISTANCE  # no recorded position yet to compare with
        if cfg.min_distance_m and (
            distance_m(last.lat, last.lon, fix.lat, fix.lon) >= cfg.min_distance_m
        ):
            return RecordReason.DISTANCE
        if (
            cfg.min_heading_change_deg
            and fix.heading_deg is not None
            and last.heading_deg is not None
            and (fix.speed_kmh or 0.0) > HEADING_MIN_SPEED_KMH
            and heading_change_deg(fix.heading_deg, last.heading_deg)
            >= cfg.min_heading_change_deg
        ):
            return RecordReason.HEADING
        if (
            cfg.min_speed_change_kmh
            and fix.speed_kmh is not None
            and last.speed_kmh is not None
            and abs(fix.speed_kmh - last.speed_kmh) >= cfg.min_speed_change_kmh
        ):
            return RecordReason.SPEED
        return self._every(dt, cfg.max_interval_s, RecordReason.MAX_INTERVAL)

    @staticmethod
    def _every(dt: float, interval: float, reason: RecordReason) -> RecordReason | None:
        return reason if interval and dt >= interval else None
