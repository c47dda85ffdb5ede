"""Point recording policy on a synthetic drive with known distances, turns and stops."""

from __future__ import annotations

import math
import random

import pytest

from config import GpsSampling
from drivers.nmea_epoch import Fix
from gateway.recording.gps import GpsRecorder, RecordReason, distance_m, heading_change_deg

CFG = GpsSampling(min_interval_s=1, max_interval_s=30, min_distance_m=100,
                  min_heading_change_deg=15, min_speed_change_kmh=10,
                  stopped_interval_s=300, moving_speed_kmh=5)
R = RecordReason


def move(lat: float, lon: float, heading_deg: float, dist_m: float) -> tuple[float, float]:
    """Destination point on a sphere of the same radius as the recorder's."""
    r = 6_371_008.8
    p1, l1, th, d = math.radians(lat), math.radians(lon), math.radians(heading_deg), dist_m / r
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(th))
    l2 = l1 + math.atan2(math.sin(th) * math.sin(d) * math.cos(p1),
                         math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), math.degrees(l2)


def drive() -> list[tuple[int, Fix]]:
    """1 Hz fixes: (second, speed km/h, heading) per phase, position integrated."""
    rng = random.Random(7)
    lat, lon = 52.0, 13.0
    out: list[tuple[int, Fix]] = []
    for t in range(861):
        if t < 10:
            v, hd = 0.0, 0.0
        elif t < 40:
            v, hd = 43.2, 0.0  # 12 m/s north
        elif t < 50:
            v, hd = 43.2, 90.0  # sharp turn east
        elif t < 60:
            v, hd = 79.2, 90.0  # 22 m/s: speed change
        elif t < 771:
            v, hd = 0.0, rng.uniform(0, 360)  # parked: heading is noise
        elif t < 800:
            v, hd = 5.5, 0.0  # crawling: moving, but below the heading speed
        else:
            v, hd = 5.5, 30.0
        lat, lon = move(lat, lon, hd, v / 3.6)
        if 760 <= t < 770:
            fix = Fix(tod_ms=t * 1000, utc_ms=None, time_trusted=False, fix=0, sats=2)
        else:
            fix = Fix(t * 1000, None, False, 3, lat, lon, 50.0, v, hd, 9, 0.9)
        out.append((t, fix))
    return out


def test_synthetic_drive_records_exactly_the_expected_points() -> None:
    rec = GpsRecorder(CFG)
    got = [(t, r) for t, fix in drive() if (r := rec.offer(fix, float(t))) is not None]
    assert got == [
        (0, R.FIRST), (10, R.STARTED), (19, R.DISTANCE), (28, R.DISTANCE), (37, R.DISTANCE),
        (40, R.HEADING), (49, R.DISTANCE), (50, R.SPEED), (55, R.DISTANCE), (60, R.STOPPED),
        (360, R.STOPPED_INTERVAL), (660, R.STOPPED_INTERVAL), (760, R.FIX_LOST),
        (770, R.FIX_ACQUIRED), (771, R.STARTED), (801, R.MAX_INTERVAL), (831, R.MAX_INTERVAL),
    ]
    assert (rec.offered, rec.recorded) == (861, 17)


def test_all_thresholds_zero_records_every_fix() -> None:
    rec = GpsRecorder(GpsSampling(0, 0, 0, 0, 0, 0, 5))
    fixes = drive()
    assert all(rec.offer(fix, float(t)) is R.ALL for t, fix in fixes)
    assert rec.recorded == len(fixes)


def test_min_interval_limits_a_zigzag() -> None:
    cfg = GpsSampling(min_interval_s=5, max_interval_s=0, min_distance_m=0,
                      min_heading_change_deg=10, min_speed_change_kmh=0,
                      stopped_interval_s=0, moving_speed_kmh=5)
    rec = GpsRecorder(cfg)
    lat, lon = 48.0, 11.0
    got = []
    for t in range(30):
        hd = 45.0 if t % 2 else 135.0
        lat, lon = move(lat, lon, hd, 15)
        if rec.offer(Fix(None, None, False, 2, lat, lon, None, 54.0, hd), float(t)):
            got.append(t)
    assert got == [0, 5, 10, 15, 20, 25]


def test_a_stop_inside_min_interval_is_recorded_once_it_has_passed() -> None:
    cfg = GpsSampling(min_interval_s=10, max_interval_s=0, min_distance_m=0,
                      min_heading_change_deg=0, min_speed_change_kmh=0,
                      stopped_interval_s=0, moving_speed_kmh=5)
    rec = GpsRecorder(cfg)
    got = []
    for t in range(30):
        v = 50.0 if t < 3 else 0.0
        r = rec.offer(Fix(None, None, False, 2, 50.0, 8.0 + t * 1e-4, None, v, 90.0), float(t))
        if r:
            got.append((t, r))
    assert got == [(0, R.FIRST), (10, R.STOPPED)]


def test_moving_hint_overrides_gps_speed() -> None:
    rec = GpsRecorder(CFG)
    fix = Fix(None, None, False, 3, 50.0, 8.0, 100.0, 0.0, None)
    assert rec.offer(fix, 0.0) is R.FIRST
    assert rec.offer(fix, 2.0, moving=True) is R.STARTED


def test_geometry_helpers() -> None:
    assert distance_m(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-4)
    assert distance_m(52, 13, *move(52, 13, 33, 1234.5)) == pytest.approx(1234.5, abs=1e-6)
    assert heading_change_deg(350, 10) == 20
    assert heading_change_deg(10, 190) == 180
    assert heading_change_deg(90, 90) == 0
