"""Error-bounded one-pass simplification of sample streams (pure: time passed in, no I/O).

An *opening window* (Meratnia & de By 2004) keeps the fewest samples such that the
stream, reconstructed **linearly in time** between kept samples, stays within a bound
of every original sample. Error is measured *synchronously*: for positions the
synchronized Euclidean distance (SED) between the true position at ``t`` and the
position interpolated at ``t`` on the kept segment; for a scalar signal the
difference between the true and the interpolated value at ``t``.

Plain opening window re-checks every sample of the window for each new one (O(n) per
sample). We keep instead, in the spirit of CISED-S (Lin et al., VLDB Journal 2019), the
*feasible region* of the segment's velocity: with the window anchored at ``(t0, p0)``,
a later sample ``(ti, pi)`` is reproduced within ``eps`` by a segment of velocity
``v`` exactly when ``|v - (pi - p0)/(ti - t0)| <= eps/(ti - t0)``: a disk in velocity
space (a *synchronous circle*). The segment to a candidate end sample ``e`` is valid
when ``e``'s own velocity ``(pe - p0)/(te - t0)`` lies in the intersection of the disks
of every sample in between.

- 2-D (:class:`SedCone`): each disk is replaced by the regular ``m``-gon *inscribed* in
  it (default 16 sides), all with the same orientation. Such polygons are intersections
  of ``m`` half-planes with fixed normals, so their intersection is again described by
  ``m`` numbers (the smallest offset per normal): O(m) memory and O(m) work per sample,
  independent of the window length. Inscribed means conservative: anything inside the
  polygons is inside the disks, so the bound is never exceeded; the price is that a
  window may close a little early (the polygon's inner radius is ``eps*cos(pi/m)``,
  98 % of ``eps`` at 16 sides).
- 1-D (:class:`ValueCone`): the disks are intervals of slope, and their intersection is
  one interval, exactly: two numbers, no approximation.

Positions are projected equirectangularly around the window's anchor (x east =
``R cos(lat0) dlon``, y north = ``R dlat``, ``R`` the mean Earth radius). Over a window
(at most ``max_interval`` seconds, about 1 km at motorway speed) this differs from the
geodesic by far less than a metre. Interpolating latitude and longitude linearly in
time is *exactly* linear interpolation in that projection, so a consumer can rebuild
the path from the kept points in plain degrees (longitude differences taken across the
antimeridian the short way).

:class:`OpeningWindow` drives any set of cones over one stream and decides what to keep:

- the first sample (``FIRST``), and any sample the caller forces (``FORCED``: stops,
  starts, fix acquired, ...); the window restarts at a kept sample;
- the previous sample when the new one would break a bound (``ERROR``): it is only
  then known to be needed, so a kept sample lags the stream by one sample;
- the time-out: with ``max_interval > 0`` no two consecutive kept samples are more
  than ``max_interval`` apart while samples keep coming (``MAX_INTERVAL``), and after a
  silence longer than ``max_interval`` both the last sample before and the first after
  it are kept (``GAP``), so the reconstruction never bridges a gap;
- samples whose time is not after the previous sample's are **ignored** and counted
  (:attr:`OpeningWindow.ignored`): a duplicate or out-of-order sample carries no new
  information, and dropping it keeps the bound intact for every sample that was used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
#: Sides of the polygon inscribed in each synchronous circle (SED cone).
DEFAULT_SIDES = 16


class Reason(StrEnum):
    """Why a sample was kept."""

    FIRST = "first"
    FORCED = "forced"
    ERROR = "error_bound"
    MAX_INTERVAL = "max_interval"
    GAP = "gap"
    FLUSH = "flush"


@dataclass(frozen=True, slots=True)
class Kept(Generic[T]):
    """A kept sample: its time, the caller's item and why it was kept."""

    t: float
    item: T
    reason: Reason


class Cone(Protocol[T_contra]):
    """The feasible region of one bounded quantity over the open window."""

    def anchor(self, t: float, item: T_contra) -> None:
        """Start a new window at this (kept) sample."""

    def admit(self, t: float, item: T_contra) -> bool:
        """True when the segment from the anchor to this sample keeps every sample so far
        within the bound; the region then narrows by this sample. False leaves it as is."""


class SedCone(Generic[T]):
    """2-D synchronized-Euclidean-distance cone over ``position(item) = (lat, lon)``."""

    __slots__ = ("_h", "_kx", "_lat0", "_lon0", "_n", "_position", "_slack", "_t0")

    def __init__(
        self,
        max_error_m: float,
        position: Callable[[T], tuple[float, float]],
        sides: int = DEFAULT_SIDES,
    ) -> None:
        if max_error_m <= 0 or sides < 3:
            raise ValueError("SedCone needs max_error_m > 0 and at least 3 sides")
        self._position = position
        step = 2 * math.pi / sides
        self._n = tuple((math.cos(k * step), math.sin(k * step)) for k in range(sides))
        self._slack = max_error_m * math.cos(math.pi / sides)  # inner radius of the m-gon
        self._h: list[float] = [math.inf] * sides
        self._t0 = self._lat0 = self._lon0 = 0.0
        self._kx = _M_PER_DEG

    def anchor(self, t: float, item: T) -> None:
        """Start a new window at ``item``."""
        self._t0 = t
        self._lat0, self._lon0 = self._position(item)
        self._kx = _M_PER_DEG * math.cos(math.radians(self._lat0))
        self._h = [math.inf] * len(self._n)

    def admit(self, t: float, item: T) -> bool:
        """See :meth:`Cone.admit`."""
        lat, lon = self._position(item)
        dlon = lon - self._lon0
        if dlon > 180.0:
            dlon -= 360.0
        elif dlon < -180.0:
            dlon += 360.0
        dt = t - self._t0
        x, y = dlon * self._kx, (lat - self._lat0) * _M_PER_DEG
        # the segment's velocity (x, y)/dt must satisfy n.v <= h for every normal n
        h = self._h
        for (nx, ny), hk in zip(self._n, h, strict=True):
            if nx * x + ny * y > hk * dt:
                return False
        # this sample's inscribed polygon: n.v <= n.(x, y)/dt + slack/dt
        self._h = [
            min(hk, (nx * x + ny * y + self._slack) / dt)
            for (nx, ny), hk in zip(self._n, h, strict=True)
        ]
        return True


class ValueCone(Generic[T]):
    """1-D cone over ``value(item)`` against time; a ``None`` value adds no constraint.

    A window anchored on a sample without a value has no constraint until the next
    anchor (the bound then holds between kept samples that both carry a value).
    """

    __slots__ = ("_hi", "_lo", "_max_error", "_t0", "_v0", "_value")

    def __init__(self, max_error: float, value: Callable[[T], float | None]) -> None:
        if max_error <= 0:
            raise ValueError("ValueCone needs max_error > 0")
        self._value = value
        self._max_error = max_error
        self._t0 = 0.0
        self._v0: float | None = None
        self._lo, self._hi = -math.inf, math.inf

    def anchor(self, t: float, item: T) -> None:
        """Start a new window at ``item``."""
        self._t0, self._v0 = t, self._value(item)
        self._lo, self._hi = -math.inf, math.inf

    def admit(self, t: float, item: T) -> bool:
        """See :meth:`Cone.admit`."""
        v, v0 = self._value(item), self._v0
        if v is None or v0 is None:
            return True
        dt = t - self._t0
        slope = (v - v0) / dt
        if slope < self._lo or slope > self._hi:
            return False
        self._lo = max(self._lo, (v - self._max_error - v0) / dt)
        self._hi = min(self._hi, (v + self._max_error - v0) / dt)
        return True


class OpeningWindow(Generic[T]):
    """One stream's streaming simplifier over ``cones``; feed samples in time order.

    State is O(1): the anchor, the last sample and the cones' regions. ``max_interval``
    (seconds, 0 = off) may be changed between samples; it applies from the next one.
    """

    def __init__(self, cones: Sequence[Cone[T]], *, max_interval: float = 0.0) -> None:
        self.cones = tuple(cones)
        self.max_interval = max_interval
        self._anchor_t: float | None = None
        self._last: tuple[float, T] | None = None  # newest sample, when not kept
        self._last_t = -math.inf
        self.samples = 0
        self.kept = 0
        self.ignored = 0

    @property
    def open(self) -> bool:
        """True when a window is anchored (a sample was kept since the last reset)."""
        return self._anchor_t is not None

    def add(self, t: float, item: T, *, force: bool = False) -> list[Kept[T]]:
        """Offer one sample; return the samples kept because of it, oldest first (0-2)."""
        if t <= self._last_t:
            self.ignored += 1
            return []
        self.samples += 1
        out: list[Kept[T]] = []
        gap = self.max_interval > 0 and t - self._last_t > self.max_interval
        if self._anchor_t is None:
            self._keep(out, t, item, Reason.FORCED if force else Reason.FIRST)
            return out
        if self._last is None:
            self._admit(t, item)  # the window is empty: always fits
        elif gap or not self._admit(t, item):
            self._keep(out, *self._last, Reason.GAP if gap else Reason.ERROR)
            self._admit(t, item)
        if force:
            self._keep(out, t, item, Reason.FORCED)
            return out
        due = self.max_interval > 0 and t - self._anchor_t >= self.max_interval
        if due and self._last is not None and t - self._anchor_t > self.max_interval:
            # keeping this sample would leave more than max_interval without a point
            self._keep(out, *self._last, Reason.MAX_INTERVAL)
            self._admit(t, item)
            due = t - self._last_t >= self.max_interval
        if due:
            self._keep(out, t, item, Reason.GAP if gap else Reason.MAX_INTERVAL)
        else:
            self._last, self._last_t = (t, item), t
        return out

    def flush(self) -> list[Kept[T]]:
        """Keep the newest sample if it is not kept yet (end of stream, stop, fix lost)."""
        out: list[Kept[T]] = []
        if self._last is not None:
            self._keep(out, *self._last, Reason.FLUSH)
        return out

    def reset(self) -> None:
        """Forget the window: the next sample starts a new stream (kept as ``FIRST``),
        on any time base (times need only increase within a stream)."""
        self._anchor_t = None
        self._last = None
        self._last_t = -math.inf

    def _admit(self, t: float, item: T) -> bool:
        ok = True
        for cone in self.cones:
            # a cone that fails leaves itself unchanged; the others are re-anchored anyway
            ok = cone.admit(t, item) and ok
        return ok

    def _keep(self, out: list[Kept[T]], t: float, item: T, reason: Reason) -> None:
        out.append(Kept(t, item, reason))
        self.kept += 1
        self._anchor_t, self._last, self._last_t = t, None, t
        for cone in self.cones:
            cone.anchor(t, item)


def path_simplifier(
    max_error_m: float,
    *,
    max_interval: float = 0.0,
    sides: int = DEFAULT_SIDES,
) -> OpeningWindow[tuple[float, float]]:
    """An SED simplifier over ``(lat, lon)`` items."""
    return OpeningWindow([SedCone(max_error_m, _identity2, sides)], max_interval=max_interval)


def signal_simplifier(max_error: float, *, max_interval: float = 0.0) -> OpeningWindow[float]:
    """A value-against-time simplifier over plain float items."""
    return OpeningWindow([ValueCone(max_error, _identity1)], max_interval=max_interval)


def _identity2(p: tuple[float, float]) -> tuple[float, float]:
    return p


def _identity1(v: float) -> float | None:
    return v
