"""The demo's live view shows the fleet data: driver, gear, AdBlue, trips (pure parts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import load_config
from sim.demo import events_config, view_lines
from sim.report import render

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_view_shows_driver_gear_adblue_and_trips() -> None:
    live = {"latest": {
        "engine": {"current_gear": 7, "selected_gear": 8, "def_tank_level_pct": 62.4,
                   "driver1_working_state": 2, "vehicle_speed_kmh": 48.0},
        "driver": {"src": 238, "driver": 1, "card_present": True, "working_state": 3},
        "trip": {"distance_km": 9.034, "duration_s": 1440.0, "fuel_used_l": 12.1},
        "idle": {"duration_s": 420.0},
        "harsh": {"kind": "braking", "peak_ms2": 4.5},
    }}
    state = {"can": {"drivers": {"EE": {"driver1": "DF000000012345601"}}}}
    text = "\n".join(ANSI.sub("", line) for line in view_lines(
        live, state, broker_up=True, elapsed=3.0, outage_left=None, phase="driving",
        counts={"trip": 2, "idle": 3, "harsh": 1}))
    assert "gear      7 (selected 8)" in text
    assert "AdBlue 62.4 %" in text
    assert "DF000000012345601   working state drive" in text  # the latest driver event
    assert "trips     2, last 9.03 km in 24 min (12.1 L)" in text
    assert "idling 3 (last 420 s)" in text
    assert "harsh 1 (last braking 4.5 m/s2)" in text


def test_view_before_anything_arrived_shows_placeholders() -> None:
    text = "\n".join(view_lines({}, {}, broker_up=False, elapsed=0.0, outage_left=None,
                                phase="parked"))
    assert "gear      -- (selected --)" in text
    assert "driver    --   working state --" in text
    assert "trips     0   idling 0   harsh 0" in text


@pytest.mark.parametrize("speed", [1.0, 4.0, 6.0, 20.0])
def test_demo_events_config_is_scaled_and_valid(tmp_path: Path, speed: float) -> None:
    path = tmp_path / "t.toml"
    path.write_text('truck_id = "T-1"\n[mqtt]\nhost = "127.0.0.1"\nport = 1883\n[can]\n'
                    + events_config(speed))
    ev = load_config(path).events
    assert ev.idle_min_s == pytest.approx(300 / speed, abs=0.1)
    assert ev.harsh_brake_ms2 == pytest.approx(min(20.0, 2.5 * speed), abs=0.01)
    assert ev.trip_end_timeout_s == pytest.approx(max(1.0, 120 / speed), abs=0.1)


def test_trip_report_has_adblue_gear_and_the_fleet_events() -> None:
    events = [{"type": "engine", "ts": 1000 * i, "src": 0, "def_tank_level_pct": 80.0 - i,
               "current_gear": i % 12 + 1, "vehicle_speed_kmh": 10.0 * i} for i in range(10)]
    figures = {"by_type": {"trip": 1, "idle": 2, "harsh": 1, "driver": 3},
               "ranges": {"trip.distance_km": [9.03, 9.03], "harsh.peak_ms2": [4.1, 4.5]}}
    page = render({"T-1": events}, {"T-1": figures})
    assert "AdBlue level (%)" in page
    assert "gear (current)" in page
    assert "<th>trips</th><td>1</td>" in page
    assert "<th>trip distance</th><td>9.03 km</td>" in page
    assert "<th>harsh peak</th><td>4.1..4.5 m/s2</td>" in page
