"""Shipped routes: polylines of waypoints with altitude, speed limits and stops.

A route file (``sim/routes/<name>.json``) holds ``points`` as ``[lat, lon, alt_m,
limit_kmh]`` rows (an optional fifth value is the radius in metres of the curve at that
point) and ``stops`` as ``{"at": point_index, "dwell_s": seconds, "reason": text}``.
The limit of a point applies to the segment that starts there.

Every vertex where the road turns is driven as a circular arc centred on it
(:meth:`Route.curve`), so the heading changes smoothly, as a GPS receiver reports it. A
vertex without a radius gets the one a road designer would give it: the curve taken at
its design speed (the limit, less for sharp turns, at least 15 km/h) with
:data:`DESIGN_LATERAL_MS2` of lateral acceleration. An arc never takes more than
:data:`ARC_SHARE` of either segment next to it (a tighter radius instead).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import GatewayError

ROUTES_DIR = Path(__file__).with_name("routes")
EARTH_RADIUS_M = 6_371_008.8
#: lateral acceleration of a curve taken at its design speed (comfortable in a truck)
DESIGN_LATERAL_MS2 = 1.5
#: the design speed of a curve: the limit times (1 - turn / TURN_SLOWDOWN_DEG), at least
#: MIN_CURVE_KMH
TURN_SLOWDOWN_DEG = 110.0
MIN_CURVE_KMH = 15.0
ARC_SHARE = 0.45  # the most of a neighbouring segment an arc's half may take
MIN_TURN_DEG = 0.5  # a smaller heading change is a straight road


class RouteError(GatewayError):
    """A route file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Waypoint:
    """One vertex of a route."""

    lat: float
    lon: float
    alt_m: float
    limit_kmh: float
    radius_m: float | None = None  # of the curve at this point (None: the design radius)


@dataclass(frozen=True, slots=True)
class Curve:
    """The arc a vertex is driven on: ``turn_deg`` signed (positive: to the right), over
    ``half_m`` before and after the vertex."""

    radius_m: float
    half_m: float
    turn_deg: float


@dataclass(frozen=True, slots=True)
class Stop:
    """A planned halt at a waypoint (engine idling)."""

    at: int
    dwell_s: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """A drivable polyline with cumulative distances and per-vertex turn angles."""

    name: str
    points: tuple[Waypoint, ...]
    stops: tuple[Stop, ...]
    cum_m: tuple[float, ...]
    bearings: tuple[float, ...]

    @property
    def length_m(self) -> float:
        """Total length along the polyline."""
        return self.cum_m[-1]

    def reversed(self) -> Route:
        """The return trip: same road, points and stops in the opposite order."""
        n = len(self.points)
        pts = tuple(reversed(self.points))
        # the limit of a segment is stored on its start point: shift by one when reversing
        pts = tuple(
            Waypoint(p.lat, p.lon, p.alt_m, self.points[max(n - 2 - i, 0)].limit_kmh,
                     p.radius_m)
            for i, p in enumerate(pts)
        )
        stops = tuple(sorted((Stop(n - 1 - s.at, s.dwell_s, s.reason) for s in self.stops),
                             key=lambda s: s.at))
        return build_route(self.name + "-return", pts, stops)

    def turn_deg(self, i: int) -> float:
        """Absolute heading change at vertex ``i`` (0 at the ends)."""
        if i <= 0 or i >= len(self.points) - 1:
            return 0.0
        d = abs(self.bearings[i] - self.bearings[i - 1]) % 360.0
        return min(d, 360.0 - d)

    def curve(self, i: int) -> Curve | None:
        """The arc of vertex ``i``, or None where the road runs straight (and at the ends)."""
        turn = self.turn_deg(i)
        if turn < MIN_TURN_DEG:
            return None
        theta = math.radians(turn)
        radius = self.points[i].radius_m
        if radius is None:
            limit = self.points[i - 1].limit_kmh
            v = max(MIN_CURVE_KMH, limit * (1 - turn / TURN_SLOWDOWN_DEG)) / 3.6
            radius = v * v / DESIGN_LATERAL_MS2
        room = ARC_SHARE * min(self.cum_m[i] - self.cum_m[i - 1], self.cum_m[i + 1] - self.cum_m[i])
        radius = max(1.0, min(radius, 2 * room / theta))
        signed = (self.bearings[i] - self.bearings[i - 1] + 180.0) % 360.0 - 180.0
        return Curve(radius, radius * theta / 2, signed)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def build_route(name: str, points: tuple[Waypoint, ...], stops: tuple[Stop, ...]) -> Route:
    """Compute distances and bearings; validate shape."""
    if len(points) < 2:
        raise RouteError(f"route {name!r}: needs at least 2 points")
    cum = [0.0]
    bearings = []
    for a, b in itertools.pairwise(points):
        cum.append(cum[-1] + haversine_m(a.lat, a.lon, b.lat, b.lon))
        bearings.append(bearing_deg(a.lat, a.lon, b.lat, b.lon))
    bearings.append(bearings[-1])
    for s in stops:
        if not 0 <= s.at < len(points):
            raise RouteError(f"route {name!r}: stop at {s.at} is not a point index")
    return Route(name, points, stops, tuple(cum), tuple(bearings))


def list_routes() -> list[str]:
    """Names of the shipped routes."""
    return sorted(p.stem for p in ROUTES_DIR.glob("*.json"))


def load_route(name_or_path: str | Path) -> Route:
    """Load a shipped route by name, or a route file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = ROUTES_DIR / f"{name_or_path}.json"
    try:
        doc: Any = json.loads(path.read_text())
        points = tuple(
            Waypoint(float(row[0]), float(row[1]), float(row[2]), float(row[3]),
                     float(row[4]) if len(row) > 4 and row[4] is not None else None)
            for row in doc["points"])
        stops = tuple(
            Stop(int(s["at"]), float(s["dwell_s"]), str(s.get("reason", "")))
            for s in doc.get("stops", [])
        )
        name = str(doc.get("name", path.stem))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        known = ", ".join(list_routes())
        raise RouteError(f"cannot load route {str(name_or_path)!r} ({exc}); shipped: {known}") \
            from exc
    return build_route(name, points, stops)
