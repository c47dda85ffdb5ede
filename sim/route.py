"""Shipped routes: polylines of waypoints with altitude, speed limits and stops.

A route file (``sim/routes/<name>.json``) holds ``points`` as ``[lat, lon, alt_m,
limit_kmh]`` rows and ``stops`` as ``{"at": point_index, "dwell_s": seconds,
"reason": text}``. The limit of a point applies to the segment that starts there.
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


class RouteError(GatewayError):
    """A route file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Waypoint:
    """One vertex of a route."""

    lat: float
    lon: float
    alt_m: float
    limit_kmh: float


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
            Waypoint(p.lat, p.lon, p.alt_m, self.points[max(n - 2 - i, 0)].limit_kmh)
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
        points = tuple(Waypoint(*(float(v) for v in row[:4])) for row in doc["points"])
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
