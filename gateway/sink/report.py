"""The trip report of one truck over a time range, from its stored events (pure).

Rows in (:class:`ReportInput`: the ``gps``, ``engine`` and ``dtc`` events of the range as
the sink stored them, plus the newest ``dtc`` per source before the range), a
:class:`TripReport` out, and from it plain text (:meth:`TripReport.text`) or JSON
(:meth:`TripReport.to_json`). ``truckgw sink report`` (gateway/sink/cli.py) and the
demo's HTML page (sim/report.py) both build on it; docs/sink.md describes the figures.

- **One time axis**: ticks every ``step_s`` seconds (round clock times, chosen so that
  there are at most :data:`MAX_ROWS` of them unless a step is given), from the first to
  the last event of the range. At each tick: the position interpolated linearly in time
  between the recorded ``gps`` events (never through ``provisional`` ones, never across a
  ``fix`` 0 event, longitude the short way; the last position held after the last fix),
  the speed (the wheel-based ``vehicle_speed_kmh`` of the newest ``engine`` event, else
  the GPS speed), ``engine_speed_rpm`` and ``fuel_level_pct`` of the newest ``engine``
  event carrying them, and the faults active then. An engine value older than
  :data:`HOLD_MS` is unknown: the engine stopped sending (``[can.sampling]`` sends at least
  every 60 s).
- **Distance**: the odometer (``total_distance_km``, last minus first reading of the one
  source with the most readings; the gateway sends the high-resolution VDHR counter under
  that name whenever the source has it), else the haversine length of the recorded GPS
  path. ``distance_source`` says which.
- **Fuel used**: ``total_fuel_used_l`` the same way (HRLFC when the source has it); none
  without the counter.
- **Idle time**: the time with the engine running (``engine_speed_rpm > 0``) and the speed
  at or below :data:`STANDSTILL_KMH`, summed between consecutive events no more than
  :data:`HOLD_MS` apart.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: Without a given step, the axis has at most this many ticks.
MAX_ROWS: Final = 120
#: Axis steps to choose from (seconds), smallest first.
NICE_STEPS_S: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                       10800, 21600, 43200, 86400)
#: An engine (or GPS speed) value older than this is unknown, and idle time is not counted
#: across a longer silence: 1.5 x the default ``[can.sampling].max_interval_s``.
HOLD_MS: Final = 90_000
#: A speed at or below this counts as standing still (GPS speed is noisy at a standstill).
STANDSTILL_KMH: Final = 0.5
_EARTH_RADIUS_M: Final = 6_371_008.8
_REPORT_TYPES: Final = frozenset({"gps", "engine", "dtc"})


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of ``events`` as the store returns it: ``body`` is the JSON text."""

    seq: int
    ts: int
    type: str
    body: str


@dataclass(frozen=True, slots=True)
class ReportInput:
    """What a store returns for one truck's report."""

    truck_id: str
    from_ms: int | None
    to_ms: int | None
    #: the ``gps``, ``engine`` and ``dtc`` events with ``from_ms <= ts <= to_ms``
    events: tuple[StoredEvent, ...]
    #: per J1939 source, its newest ``dtc`` event before ``from_ms`` (faults active at start)
    faults_before: tuple[StoredEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Fault:
    """One active diagnostic trouble code."""

    spn: int
    fmi: int
    oc: int | None

    def code(self) -> str:
        """``SPN/FMI``, as in the series."""
        return f"{self.spn}/{self.fmi}"


@dataclass(frozen=True, slots=True)
class FaultChange:
    """A ``dtc`` event: what one source reports active from ``ts`` on (empty: cleared)."""

    ts: int
    src: int | None
    active: tuple[Fault, ...]

    def text(self) -> str:
        """One plain line without the time."""
        src = "?" if self.src is None else str(self.src)
        if not self.active:
            return f"src {src}: cleared"
        codes = ", ".join(f"SPN {f.spn} FMI {f.fmi}" + ("" if f.oc is None else f" x{f.oc}")
                          for f in self.active)
        return f"src {src}: {codes}"


@dataclass(frozen=True, slots=True)
class Sample:
    """The truck at one tick of the axis; None is unknown."""

    ts: int
    lat: float | None
    lon: float | None
    speed_kmh: float | None
    rpm: float | None
    fuel_level_pct: float | None
    faults: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of the whole range."""

    start_ts: int | None
    end_ts: int | None
    duration_s: float
    distance_km: float | None
    distance_source: str | None  # "odometer", "gps" or None
    fuel_used_l: float | None
    idle_s: float
    max_speed_kmh: float | None
    start_position: tuple[float, float] | None
    end_position: tuple[float, float] | None
    events: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TripReport:
    """The report of one truck over a range."""

    truck_id: str
    from_ms: int | None
    to_ms: int | None
    step_s: int
    summary: Summary
    samples: tuple[Sample, ...]
    faults: tuple[FaultChange, ...]
    faults_at_start: tuple[FaultChange, ...] = ()

    def summary_items(self) -> list[tuple[str, str]]:
        """The summary as (label, plain text value) pairs."""
        s = self.summary
        dist = ("unknown" if s.distance_km is None
                else f"{s.distance_km:.2f} km ({s.distance_source})")
        counts = " ".join(f"{k}={v}" for k, v in sorted(s.events.items())) or "none"
        return [
            ("start", iso(s.start_ts)), ("end", iso(s.end_ts)),
            ("duration", hms(s.duration_s)), ("distance", dist),
            ("fuel used", "unknown" if s.fuel_used_l is None else f"{s.fuel_used_l:.2f} L"),
            ("idle time", hms(s.idle_s)),
            ("max speed", _num(s.max_speed_kmh, ".1f", " km/h")),
            ("from position", _pos(s.start_position)), ("to position", _pos(s.end_position)),
            ("events", counts),
        ]

    def text(self) -> str:
        """The report as plain text: summary, the aligned series as a table, faults."""
        rng = f"{iso(self.from_ms)} .. {iso(self.to_ms)}"
        lines = [f"trip report {self.truck_id}  {rng}", ""]
        width = max(len(k) for k, _ in self.summary_items())
        lines += [f"{k:<{width}}  {v}" for k, v in self.summary_items()]
        lines += ["", f"series (every {self.step_s} s, UTC):",
                  (f"{'time':<20}  {'lat':>10}  {'lon':>11}  {'km/h':>6}  {'rpm':>6}  "
                  f"{'fuel%':>5}  faults")]
        for p in self.samples:
            lines.append(
                f"{iso(p.ts):<20}  {_num(p.lat, '.5f'):>10}  {_num(p.lon, '.5f'):>11}  "
                f"{_num(p.speed_kmh, '.1f'):>6}  {_num(p.rpm, '.0f'):>6}  "
                f"{_num(p.fuel_level_pct, '.1f'):>5}  {' '.join(p.faults) or '-'}")
        if not self.samples:
            lines.append("(no events in the range)")
        lines += ["", "faults:"]
        lines += [f"{'before':<20}  {c.text()}" for c in self.faults_at_start if c.active]
        lines += [f"{iso(c.ts):<20}  {c.text()}" for c in self.faults]
        if not self.faults and not any(c.active for c in self.faults_at_start):
            lines.append("none")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: one ``axis_ms`` and one list per series."""
        s = self.summary

        def change(c: FaultChange) -> dict[str, Any]:
            return {"ts_ms": c.ts, "time": iso(c.ts), "src": c.src,
                    "active": [{"spn": f.spn, "fmi": f.fmi, "oc": f.oc} for f in c.active]}

        return {
            "truck_id": self.truck_id, "from_ms": self.from_ms, "to_ms": self.to_ms,
            "step_s": self.step_s,
            "summary": {
                "start_ms": s.start_ts, "end_ms": s.end_ts, "duration_s": s.duration_s,
                "distance_km": s.distance_km, "distance_source": s.distance_source,
                "fuel_used_l": s.fuel_used_l, "idle_s": s.idle_s,
                "max_speed_kmh": s.max_speed_kmh,
                "start_position": list(s.start_position) if s.start_position else None,
                "end_position": list(s.end_position) if s.end_position else None,
                "events": dict(sorted(s.events.items())),
            },
            "axis_ms": [p.ts for p in self.samples],
            "series": {
                "lat": [p.lat for p in self.samples], "lon": [p.lon for p in self.samples],
                "speed_kmh": [p.speed_kmh for p in self.samples],
                "engine_speed_rpm": [p.rpm for p in self.samples],
                "fuel_level_pct": [p.fuel_level_pct for p in self.samples],
                "faults": [list(p.faults) for p in self.samples],
            },
            "faults_at_start": [change(c) for c in self.faults_at_start if c.active],
            "faults": [change(c) for c in self.faults],
        }


# ---------------------------------------------------------------------------- formatting

def iso(ts_ms: int | None) -> str:
    """``2026-12-02T10:00:00Z`` (milliseconds when there are any); ``-`` for None."""
    if ts_ms is None:
        return "-"
    t = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if ts_ms % 1000:
        text += f".{ts_ms % 1000:03d}"
    return text + "Z"


def hms(seconds: float) -> str:
    """``1:02:03`` (hours unbounded)."""
    total = round(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _num(v: float | None, fmt: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def _pos(p: tuple[float, float] | None) -> str:
    return "unknown" if p is None else f"{p[0]:.5f}, {p[1]:.5f}"


# ---------------------------------------------------------------------------- parsing

def _number(obj: Mapping[str, Any], key: str) -> float | None:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _faults(ev: StoredEvent, body: Mapping[str, Any]) -> FaultChange:
    active = body.get("active")
    faults: list[Fault] = []
    for f in active if isinstance(active, list) else []:
        if isinstance(f, dict):
            spn, fmi = _int(f.get("spn")), _int(f.get("fmi"))
            if spn is not None and fmi is not None:
                faults.append(Fault(spn, fmi, _int(f.get("oc"))))
    return FaultChange(ev.ts, _int(body.get("src")), tuple(faults))


@dataclass(frozen=True, slots=True)
class _Fix:
    ts: int
    lat: float | None  # None: no fix (a break in the path)
    lon: float | None
    speed_kmh: float | None


def _decode(events: Iterable[StoredEvent]) -> list[tuple[StoredEvent, dict[str, Any]]]:
    out = []
    for ev in sorted(events, key=lambda e: (e.ts, e.seq)):
        if ev.type not in _REPORT_TYPES:
            continue
        try:
            body = json.loads(ev.body)
        except ValueError:
            continue
        if isinstance(body, dict):
            out.append((ev, body))
    return out


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


# ---------------------------------------------------------------------------- series

class _Held:
    """The newest value of one signal at or before a time, unknown after ``HOLD_MS``."""

    def __init__(self, points: list[tuple[int, float]], hold_ms: int | None = HOLD_MS) -> None:
        self.ts = [t for t, _ in points]
        self.vals = [v for _, v in points]
        self.hold_ms = hold_ms

    def at(self, t: int) -> float | None:
        i = bisect.bisect_right(self.ts, t) - 1
        if i < 0 or (self.hold_ms is not None and t - self.ts[i] > self.hold_ms):
            return None
        return self.vals[i]


class _Path:
    """The recorded GPS path, interpolated linearly in time."""

    def __init__(self, fixes: list[_Fix]) -> None:
        self.fixes = fixes
        self.ts = [f.ts for f in fixes]

    def at(self, t: int) -> tuple[float | None, float | None, float | None]:
        """(lat, lon, speed) at ``t``; the last position is held after the last fix."""
        i = bisect.bisect_right(self.ts, t) - 1
        if i < 0:
            return None, None, None
        a = self.fixes[i]
        if a.lat is None or a.lon is None:
            return None, None, None
        b = self.fixes[i + 1] if i + 1 < len(self.fixes) else None
        if t == a.ts or b is None or b.lat is None or b.lon is None:
            fresh = t - a.ts <= HOLD_MS
            return a.lat, a.lon, a.speed_kmh if fresh else None
        w = (t - a.ts) / (b.ts - a.ts)
        dlon = (b.lon - a.lon + 180.0) % 360.0 - 180.0
        lon = (a.lon + w * dlon + 180.0) % 360.0 - 180.0
        speed = (None if a.speed_kmh is None or b.speed_kmh is None
                 else a.speed_kmh + w * (b.speed_kmh - a.speed_kmh))
        return a.lat + w * (b.lat - a.lat), lon, speed


def _axis(start: int, end: int, step_s: int) -> list[int]:
    step = step_s * 1000
    first = -(-start // step) * step
    ticks = list(range(first, end + 1, step))
    return ticks or [start]


def auto_step_s(span_ms: int, max_rows: int = MAX_ROWS) -> int:
    """The smallest of :data:`NICE_STEPS_S` that gives at most ``max_rows`` ticks."""
    for s in NICE_STEPS_S:
        if span_ms // (s * 1000) + 1 <= max_rows:
            return s
    return NICE_STEPS_S[-1]


def _counter_delta(readings: Mapping[int | None, list[tuple[int, float]]]) -> float | None:
    """Last minus first of the source with the most readings (None if unusable)."""
    if not readings:
        return None
    src = max(readings, key=lambda s: (len(readings[s]), -(s if s is not None else 999)))
    pts = readings[src]
    if len(pts) < 2:
        return None
    delta = pts[-1][1] - pts[0][1]
    return delta if delta >= 0 else None


def build(inp: ReportInput, step_s: int | None = None) -> TripReport:
    """The :class:`TripReport` of ``inp``; ``step_s`` None picks one (:func:`auto_step_s`)."""
    rows = _decode(inp.events)
    fixes: list[_Fix] = []
    signals: dict[str, list[tuple[int, float]]] = {
        "vehicle_speed_kmh": [], "engine_speed_rpm": [], "fuel_level_pct": []}
    odo: dict[int | None, list[tuple[int, float]]] = {}
    fuel: dict[int | None, list[tuple[int, float]]] = {}
    changes: list[FaultChange] = []
    counts: dict[str, int] = {}
    for ev, body in rows:
        counts[ev.type] = counts.get(ev.type, 0) + 1
        if ev.type == "gps":
            if body.get("provisional") is True:
                continue
            lat, lon = _number(body, "lat"), _number(body, "lon")
            if body.get("fix") == 0 or lat is None or lon is None:
                fixes.append(_Fix(ev.ts, None, None, None))
            else:
                fixes.append(_Fix(ev.ts, lat, lon, _number(body, "speed_kmh")))
        elif ev.type == "engine":
            for name, pts in signals.items():
                v = _number(body, name)
                if v is not None:
                    pts.append((ev.ts, v))
            src = _int(body.get("src"))
            for name, counter in (("total_distance_km", odo), ("total_fuel_used_l", fuel)):
                v = _number(body, name)
                if v is not None:
                    counter.setdefault(src, []).append((ev.ts, v))
        else:
            changes.append(_faults(ev, body))

    path = _Path(fixes)
    wheel = _Held(signals["vehicle_speed_kmh"])
    rpm = _Held(signals["engine_speed_rpm"])
    level = _Held(signals["fuel_level_pct"])

    def speed_at(t: int) -> float | None:
        w = wheel.at(t)
        return w if w is not None else path.at(t)[2]

    before = [_faults(ev, body) for ev, body in _decode(inp.faults_before) if ev.type == "dtc"]
    active: dict[int | None, tuple[Fault, ...]] = {c.src: c.active for c in before}
    start = rows[0][0].ts if rows else None
    end = rows[-1][0].ts if rows else None
    step = step_s or auto_step_s(end - start if start is not None and end is not None else 0)
    samples: list[Sample] = []
    if start is not None and end is not None:
        ci = 0
        for t in _axis(start, end, step):
            while ci < len(changes) and changes[ci].ts <= t:
                active[changes[ci].src] = changes[ci].active
                ci += 1
            codes = tuple(f.code() for _, fs in sorted(active.items(),
                                                       key=lambda kv: kv[0] or 0)
                          for f in fs)
            lat, lon, _ = path.at(t)
            samples.append(Sample(t, lat, lon, speed_at(t), rpm.at(t), level.at(t), codes))

    # idle: between consecutive event times, with the state after the earlier one
    idle_ms = 0
    times = sorted({ev.ts for ev, _ in rows if ev.type in ("gps", "engine")})
    for t0, t1 in itertools.pairwise(times):
        if t1 - t0 > HOLD_MS:
            continue
        r, v = rpm.at(t0), speed_at(t0)
        if r is not None and r > 0 and v is not None and v <= STANDSTILL_KMH:
            idle_ms += t1 - t0

    located = [(f.lat, f.lon) for f in fixes if f.lat is not None and f.lon is not None]
    gps_m = sum(haversine_m(*a, *b) for a, b in itertools.pairwise(located))
    odo_km = _counter_delta(odo)
    if odo_km is not None:
        distance, source = odo_km, "odometer"
    elif len(located) >= 2:
        distance, source = gps_m / 1000, "gps"
    else:
        distance, source = None, None
    speeds = [v for _, v in signals["vehicle_speed_kmh"]] or [
        f.speed_kmh for f in fixes if f.speed_kmh is not None]
    summary = Summary(
        start_ts=start, end_ts=end,
        duration_s=(end - start) / 1000 if start is not None and end is not None else 0.0,
        distance_km=None if distance is None else round(distance, 3),
        distance_source=source,
        fuel_used_l=None if (f := _counter_delta(fuel)) is None else round(f, 3),
        idle_s=idle_ms / 1000,
        max_speed_kmh=max(speeds) if speeds else None,
        start_position=located[0] if located else None,
        end_position=located[-1] if located else None,
        events=counts)
    return TripReport(inp.truck_id, inp.from_ms, inp.to_ms, step, summary, tuple(samples),
                      tuple(changes), tuple(before))


def from_dicts(truck_id: str, events: Sequence[Mapping[str, Any]]) -> ReportInput:
    """A :class:`ReportInput` from decoded event objects (the demo's in-memory track)."""
    rows = tuple(StoredEvent(int(e.get("seq", i + 1)), int(e["ts"]), str(e["type"]),
                             json.dumps(dict(e)))
                 for i, e in enumerate(events) if "ts" in e and "type" in e)
    return ReportInput(truck_id, None, None, rows)
