"""Trip report: one self-contained HTML page with inline SVG (no dependencies).

For each truck: the route drawn from the ``gps`` events (equirectangular projection,
start and end marked), the trip summary (distance, duration, fuel used, idle time), then
speed, engine speed, fuel level, AdBlue level and gear plotted over one time axis, the
derived fleet events the sink received (trips, idling, harsh, driver: counts and ranges)
and the sink's figures as a table. The figures and the aligned series are
:mod:`gateway.sink.report`'s, the same as ``truckgw sink report`` prints from a database.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.sink.report import auto_step_s, build, from_dicts

#: Ticks of the plots' time axis at most (about one per pixel column would be 680).
PLOT_POINTS = 600
W, H, PAD = 720, 200, 40


def _poly(points: Sequence[tuple[float, float]], color: str, width: float = 1.5) -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (f'<polyline fill="none" stroke="{color}" stroke-width="{width}" '
            f'stroke-linejoin="round" points="{pts}"/>')


def route_svg(gps: Sequence[Mapping[str, Any]], size: int = 420) -> str:
    """The track of ``gps`` events as an SVG (north up)."""
    pts = [(float(e["lon"]), float(e["lat"])) for e in gps if "lat" in e and "lon" in e]
    if len(pts) < 2:
        return "<p>not enough GPS points for a map</p>"
    lat0 = math.radians(sum(p[1] for p in pts) / len(pts))
    xs = [p[0] * math.cos(lat0) for p in pts]
    ys = [p[1] for p in pts]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-6)
    scale = (size - 2 * 20) / span

    def proj(x: float, y: float) -> tuple[float, float]:
        return 20 + (x - min(xs)) * scale, size - 20 - (y - min(ys)) * scale

    line = [proj(x, y) for x, y in zip(xs, ys, strict=True)]
    (sx, sy), (ex, ey) = line[0], line[-1]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
            f'class="map"><rect width="100%" height="100%" fill="#f4f6f0"/>'
            f'{_poly(line, "#1b5e20", 2.5)}'
            f'<circle cx="{sx:.1f}" cy="{sy:.1f}" r="5" fill="#2e7d32">'
            "<title>start</title></circle>"
            f'<circle cx="{ex:.1f}" cy="{ey:.1f}" r="5" fill="#c62828"><title>end</title></circle>'
            f"</svg>")


def series_svg(series: Sequence[tuple[int, float]], label: str, unit: str, color: str) -> str:
    """A time plot of ``(ts_ms, value)`` pairs with min/max labels and a time axis."""
    if len(series) < 2:
        return f"<p>no {html.escape(label)} data</p>"
    series = sorted(series)
    t0, t1 = series[0][0], series[-1][0]
    vals = [v for _, v in series]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1

    def x(t: int) -> float:
        return PAD + (t - t0) / max(t1 - t0, 1) * (W - 2 * PAD)

    def y(v: float) -> float:
        return H - PAD / 2 - (v - lo) / (hi - lo) * (H - PAD)

    start = dt.datetime.fromtimestamp(t0 / 1000, dt.UTC).strftime("%H:%M:%S")
    end = dt.datetime.fromtimestamp(t1 / 1000, dt.UTC).strftime("%H:%M:%S")
    esc = html.escape(label)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" class="plot">'
            f'<rect width="100%" height="100%" fill="#fafafa"/>'
            f'<text x="{PAD}" y="14" font-size="12">{esc} ({html.escape(unit)})</text>'
            f'<text x="2" y="{y(hi) + 4:.0f}" font-size="10">{hi:.0f}</text>'
            f'<text x="2" y="{y(lo) + 4:.0f}" font-size="10">{lo:.0f}</text>'
            f'<text x="{PAD}" y="{H - 2}" font-size="10">{start} UTC</text>'
            f'<text x="{W - PAD - 60}" y="{H - 2}" font-size="10">{end} UTC</text>'
            f'{_poly([(x(t), y(v)) for t, v in series], color)}</svg>')


def _plain(value: Any) -> str:
    """A figure as plain text, never a Python repr."""
    if isinstance(value, Mapping):
        return " ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return f"{value[0]}..{value[1]}"
        return ", ".join(_plain(v) for v in value) or "-"
    if value is None:
        return "-"
    return str(value)


def engine_series(events: Sequence[Mapping[str, Any]], field: str) -> list[tuple[int, float]]:
    """``(ts, value)`` of one engine field over the kept events (ones that carry it)."""
    return [(int(e["ts"]), float(e[field])) for e in events
            if e.get("type") == "engine" and isinstance(e.get(field), int | float)
            and not isinstance(e.get(field), bool)]


def fleet_table(figures: Mapping[str, Any]) -> str:
    """Trips, idling, harsh and driver events as the sink counted them (docs/fleet-data.md)."""
    by_type = figures.get("by_type") or {}
    ranges = figures.get("ranges") or {}
    rows = [("trips", str(by_type.get("trip", 0))),
            ("idle events", str(by_type.get("idle", 0))),
            ("harsh events", str(by_type.get("harsh", 0))),
            ("driver events", str(by_type.get("driver", 0)))]
    for key, label, unit in (("trip.distance_km", "trip distance", "km"),
                             ("trip.duration_s", "trip duration", "s"),
                             ("trip.fuel_used_l", "trip fuel", "L"),
                             ("idle.duration_s", "idling", "s"),
                             ("harsh.peak_ms2", "harsh peak", "m/s2")):
        if key in ranges:
            lo, hi = ranges[key]
            rows.append((label, f"{lo:g}..{hi:g} {unit}" if lo != hi else f"{lo:g} {unit}"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f"<table class='fleet'>{body}</table>"


def truck_section(truck_id: str, events: Sequence[Mapping[str, Any]],
                  figures: Mapping[str, Any] | None = None) -> str:
    """The HTML of one truck: map, summary, plots and figures."""
    inp = from_dicts(truck_id, events)
    times = [e.ts for e in inp.events]
    span = max(times) - min(times) if times else 0
    report = build(inp, auto_step_s(span, PLOT_POINTS))
    samples = report.samples

    def series(attr: str) -> list[tuple[int, float]]:
        return [(p.ts, v) for p in samples if (v := getattr(p, attr)) is not None]

    gps = [e for e in events if e.get("type") == "gps" and not e.get("provisional")]
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                      for k, v in report.summary_items())
    parts = [f"<h2>{html.escape(truck_id)}</h2>", route_svg(gps),
             f"<table class='summary'>{summary}</table>",
             series_svg(series("speed_kmh"), "speed", "km/h", "#1565c0"),
             series_svg(series("rpm"), "engine speed", "rpm", "#6a1b9a"),
             series_svg(series("fuel_level_pct"), "fuel level", "%", "#ef6c00"),
             series_svg(engine_series(events, "def_tank_level_pct"), "AdBlue level", "%",
                        "#00838f"),
             series_svg(engine_series(events, "current_gear"), "gear", "current", "#455a64")]
    if figures:
        parts.append(fleet_table(figures))
    if figures:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_plain(v))}</td>"
                       "</tr>" for k, v in figures.items() if k not in ("ranges", "status"))
        parts.append(f"<table>{rows}</table>")
    return "\n".join(parts)


def render(tracks: Mapping[str, Sequence[Mapping[str, Any]]],
           figures: Mapping[str, Mapping[str, Any]] | None = None,
           title: str = "truckgw trip report") -> str:
    """The whole page for several trucks."""
    body = "\n".join(truck_section(tid, evs, (figures or {}).get(tid))
                     for tid, evs in sorted(tracks.items()))
    if not tracks:
        body = "<p>no events were received</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;margin:2em}svg{display:block;"
            "margin:.5em 0}th{text-align:left;padding-right:1em}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>\n")


def write_report(path: Path, tracks: Mapping[str, Sequence[Mapping[str, Any]]],
                 figures: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write the page to ``path`` (HTML only; PNG would need a plotting dependency)."""
    path.write_text(render(tracks, figures), encoding="utf-8")
