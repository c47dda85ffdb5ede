"""The trip report's pure part: scripted rows in, figures, the aligned series and text out."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from gateway.sink.report import (
    HOLD_MS,
    ReportInput,
    StoredEvent,
    auto_step_s,
    build,
    from_dicts,
    haversine_m,
    hms,
    iso,
)

T0 = 1_764_669_600_000  # 2025-12-02T10:00:00Z
S = 1000


def ev(seq: int, ts: int, etype: str, **body: Any) -> StoredEvent:
    return StoredEvent(seq, ts, etype, json.dumps({"seq": seq, "ts": ts, "type": etype, **body}))


def trip() -> list[StoredEvent]:
    """10 minutes: 1 min idling, 8 min at 60 km/h north along 11 E, 1 min idling; a fault
    from 5:00 to 7:30."""
    rows: list[StoredEvent] = []
    seq = 0
    for t in range(0, 601, 10):
        seq += 1
        moving = 60 <= t < 540
        driven_min = min(max(t - 60, 0), 480) / 60
        rows.append(ev(seq, T0 + t * S, "engine", src=0,
                       engine_speed_rpm=1400.0 if moving else 700.0,
                       vehicle_speed_kmh=60.0 if moving else 0.0,
                       fuel_level_pct=round(50 - t / 600, 3),
                       total_distance_km=1000.0 + driven_min,
                       total_fuel_used_l=round(500.0 + 0.3 * driven_min + 0.01 * t / 60, 3)))
        if t % 30 == 0:
            seq += 1
            rows.append(ev(seq, T0 + t * S, "gps", lat=48.0 + driven_min / 111.2, lon=11.0,
                           speed_kmh=60.0 if moving else 0.0, fix=3))
    rows.append(ev(900, T0 + 300 * S, "dtc", src=0, active=[{"spn": 110, "fmi": 0, "oc": 3}]))
    rows.append(ev(901, T0 + 450 * S, "dtc", src=0, active=[]))
    return rows


def test_summary_from_the_odometer_fuel_counter_and_idle_time() -> None:
    r = build(ReportInput("T1", T0, T0 + 600 * S, tuple(trip())))
    s = r.summary
    assert (s.start_ts, s.end_ts, s.duration_s) == (T0, T0 + 600 * S, 600.0)
    assert (s.distance_km, s.distance_source) == (8.0, "odometer")
    assert s.fuel_used_l == pytest.approx(0.3 * 8 + 0.1, abs=1e-6)
    assert s.idle_s == 120.0  # 0:00-1:00 and 9:00-10:00: 700 rpm at 0 km/h
    assert s.max_speed_kmh == 60.0
    assert s.events == {"engine": 61, "gps": 21, "dtc": 2}
    assert s.start_position == (48.0, 11.0)
    assert s.end_position is not None and s.end_position[0] == pytest.approx(48.0 + 8 / 111.2)


def test_one_axis_carries_position_speed_rpm_fuel_and_faults() -> None:
    r = build(ReportInput("T1", None, None, tuple(trip())), step_s=60)
    assert r.step_s == 60 and [p.ts for p in r.samples] == [T0 + m * 60 * S for m in range(11)]
    at = {(p.ts - T0) // S: p for p in r.samples}
    assert (at[0].speed_kmh, at[0].rpm, at[0].faults) == (0.0, 700.0, ())
    assert (at[120].speed_kmh, at[120].rpm) == (60.0, 1400.0)
    assert at[120].lat == pytest.approx(48.0 + 1 / 111.2)
    assert at[300].faults == ("110/0",) and at[420].faults == ("110/0",)
    assert at[480].faults == ()
    assert at[600].fuel_level_pct == 49.0
    assert [(c.ts - T0, c.src, [f.code() for f in c.active]) for c in r.faults] == [
        (300 * S, 0, ["110/0"]), (450 * S, 0, [])]


def test_gps_fallback_skips_provisional_points_and_breaks_at_fix_0() -> None:
    rows = [ev(1, T0, "gps", lat=48.0, lon=11.0, speed_kmh=40.0, fix=3),
            ev(2, T0 + 30 * S, "gps", lat=50.0, lon=20.0, speed_kmh=40.0, fix=3,
               provisional=True),
            ev(3, T0 + 60 * S, "gps", lat=48.01, lon=11.0, speed_kmh=40.0, fix=3),
            ev(4, T0 + 90 * S, "gps", fix=0),
            ev(5, T0 + 120 * S, "gps", lat=48.02, lon=11.0, speed_kmh=20.0, fix=3)]
    r = build(ReportInput("T1", None, None, tuple(rows)), step_s=30)
    assert r.summary.distance_source == "gps"
    assert r.summary.distance_km == pytest.approx(
        2 * haversine_m(48.0, 11.0, 48.01, 11.0) / 1000, abs=1e-3)
    assert r.summary.fuel_used_l is None and r.summary.idle_s == 0.0
    lats = [p.lat for p in r.samples]
    assert lats[0] == 48.0 and lats[1] == pytest.approx(48.005)  # not through the provisional
    assert lats[3] is None  # no fix
    assert r.samples[1].speed_kmh == 40.0  # GPS speed without a wheel speed


def test_longitude_interpolates_across_the_antimeridian() -> None:
    rows = [ev(1, T0, "gps", lat=0.0, lon=179.9, fix=3),
            ev(2, T0 + 10 * S, "gps", lat=0.0, lon=-179.9, fix=3)]
    r = build(ReportInput("T1", None, None, tuple(rows)), step_s=5)
    mid = r.samples[1]
    assert mid.lon is not None and abs(abs(mid.lon) - 180.0) < 1e-9
    assert r.summary.distance_km == pytest.approx(22.2, abs=0.1)


def test_engine_values_expire_and_idle_is_not_counted_across_silence() -> None:
    rows = [ev(1, T0, "engine", src=0, engine_speed_rpm=650.0, vehicle_speed_kmh=0.0),
            ev(2, T0 + 10 * S, "engine", src=0, engine_speed_rpm=650.0, vehicle_speed_kmh=0.0),
            ev(3, T0 + 10 * S + HOLD_MS + 60 * S, "engine", src=0, engine_speed_rpm=0.0,
               vehicle_speed_kmh=0.0)]
    r = build(ReportInput("T1", None, None, tuple(rows)), step_s=30)
    assert r.summary.idle_s == 10.0
    assert [p.rpm for p in r.samples] == [650.0, 650.0, 650.0, 650.0, None, None]
    assert r.samples[-1].ts == T0 + 150 * S


def test_faults_active_before_the_range_and_the_busiest_odometer_source() -> None:
    before = (ev(7, T0 - 60 * S, "dtc", src=3, active=[{"spn": 520, "fmi": 2}]),)
    rows = [ev(10, T0, "engine", src=0, total_distance_km=10.0),
            ev(11, T0 + S, "engine", src=0, total_distance_km=12.5),
            ev(12, T0 + 2 * S, "engine", src=0, total_distance_km=13.0),
            ev(13, T0 + 2 * S, "engine", src=17, total_distance_km=99999.0),
            ev(14, T0 + 3 * S, "future", x=1)]
    r = build(ReportInput("T1", T0, T0 + 10 * S, tuple(rows), before), step_s=1)
    assert (r.summary.distance_km, r.summary.distance_source) == (3.0, "odometer")
    assert r.samples[0].faults == ("520/2",)
    assert "future" not in r.summary.events
    text = r.text()
    assert "before                src 3: SPN 520 FMI 2" in text


def test_text_and_json_are_plain() -> None:
    r = build(ReportInput("T1", T0, T0 + 600 * S, tuple(trip())), step_s=60)
    text = r.text()
    assert text.startswith("trip report T1  2025-12-02T10:00:00Z .. 2025-12-02T10:10:00Z")
    for line in ("distance       8.00 km (odometer)", "duration       0:10:00",
                 "fuel used      2.50 L", "idle time      0:02:00",
                 "events         dtc=2 engine=61 gps=21"):
        assert line in text, text
    assert "2025-12-02T10:05:00Z    48.03597     11.00000    60.0    1400   49.5  110/0" in text
    assert "2025-12-02T10:05:00Z  src 0: SPN 110 FMI 0 x3" in text
    assert "2025-12-02T10:07:30Z  src 0: cleared" in text
    for repr_bit in ("None", "[", "{", "Fault(", "'", "nan"):
        assert repr_bit not in text
    data = json.loads(json.dumps(r.to_json()))
    assert data["summary"]["distance_km"] == 8.0 and data["summary"]["idle_s"] == 120.0
    assert len(data["axis_ms"]) == len(data["series"]["speed_kmh"]) == 11
    assert data["series"]["faults"][5] == ["110/0"]
    assert data["faults"][0]["active"] == [{"spn": 110, "fmi": 0, "oc": 3}]


def test_empty_range_and_helpers() -> None:
    r = build(ReportInput("T1", T0, T0 + S, ()))
    assert r.samples == () and r.summary.distance_km is None
    assert "(no events in the range)" in r.text() and "None" not in r.text()
    assert auto_step_s(0) == 1 and auto_step_s(3600 * S) == 60 and auto_step_s(10**12) == 86400
    assert (iso(T0 + 5), iso(None), hms(3725.4)) == ("2025-12-02T10:00:00.005Z", "-", "1:02:05")
    inp = from_dicts("T1", [{"ts": T0, "type": "gps", "lat": 1.0, "lon": 2.0},
                            {"type": "engine"}])
    assert [e.seq for e in inp.events] == [1]
    assert math.isclose(haversine_m(0, 0, 0, 1), 111_195, rel_tol=1e-3)
