"""The demo's HTML trip report builds on gateway.sink.report: summary, plots, plain figures."""

from __future__ import annotations

from typing import Any

from sim.report import render

T0 = 1_764_669_600_000


def test_page_has_the_summary_plots_and_no_python_reprs() -> None:
    track: list[dict[str, Any]] = []
    for i, t in enumerate(range(0, 181, 10)):
        moving = t >= 60
        track.append({"seq": 2 * i + 1, "ts": T0 + t * 1000, "type": "engine", "src": 0,
                      "engine_speed_rpm": 1200.0 if moving else 600.0,
                      "vehicle_speed_kmh": 50.0 if moving else 0.0, "fuel_level_pct": 70.0})
        track.append({"seq": 2 * i + 2, "ts": T0 + t * 1000, "type": "gps", "fix": 3,
                      "lat": 48.0 + max(t - 60, 0) / 100_000, "lon": 11.0, "speed_kmh": 50.0})
    figures = {"T1": {"events": 38, "gaps": [[3, 4], [9, 9]], "by_type": {"gps": 19},
                      "lag_ms": {"p50": 3, "p95": 9}, "first_seq": None}}
    page = render({"T1": track}, figures)
    assert page.count("<polyline") == 4  # route, speed, rpm, fuel
    assert "<th>idle time</th><td>0:01:00</td>" in page
    assert "<th>distance</th><td>" in page and "(gps)" in page
    assert "<td>3..4, 9..9</td>" in page and "<td>gps=19</td>" in page
    assert "<td>p50=3 p95=9</td>" in page
    for repr_bit in ("None", "{&#x27;", "[[", "[3"):
        assert repr_bit not in page
