"""The curve recording policy (gateway/recording/gps_curve.py) on synthetic drives."""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import GpsSampling, parse_config
from config.errors import ConfigError
from config.loader import check_parsed
from drivers.nmea_epoch import Fix
from gateway.recording.curve import EARTH_RADIUS_M
from gateway.recording.gps import RecordReason
from gateway.recording.gps_curve import (
    PROVISIONAL_FIELD,
    CurveGpsRecorder,
    CurvePoint,
    CurveReason,
    ThresholdPoints,
    point_recorder,
)

M_PER_DEG = EARTH_RADIUS_M * math.pi / 180
T0_MS = 1_760_000_000_000
CFG = GpsSampling(mode="curve", max_error_m=10.0, max_speed_error_kmh=5.0,
                  provisional_interval_s=0.0)
R, C = RecordReason, CurveReason


def fix_at(t: float, lat: float | None, lon: float | None, v: float = 0.0,
           hd: float = 0.0) -> Fix:
    utc = T0_MS + round(t * 1000)
    if lat is None:
        return Fix(utc % 86_400_000, utc, True, 0, sats=2)
    return Fix(utc % 86_400_000, utc, True, 3, lat, lon, 50.0, v, hd, 9, 0.9)


def step(lat: float, lon: float, hd: float, d_m: float) -> tuple[float, float]:
    h = math.radians(hd)
    return (lat + d_m * math.cos(h) / M_PER_DEG,
            lon + d_m * math.sin(h) / (M_PER_DEG * math.cos(math.radians(lat))))


def drive(phases: list[tuple[int, float, float]], start: tuple[float, float] = (52.0, 13.0),
          ) -> list[tuple[float, Fix]]:
    """1 Hz fixes from (seconds, speed km/h, heading) phases; speed None = no fix."""
    lat, lon = start
    out: list[tuple[float, Fix]] = []
    t = 0
    for n, v, hd in phases:
        for _ in range(n):
            if math.isnan(v):
                out.append((float(t), fix_at(t, None, None)))
            else:
                out.append((float(t), fix_at(t, lat, lon, v, hd)))
                lat, lon = step(lat, lon, hd, v / 3.6)
            t += 1
    return out


def record(fixes: list[tuple[float, Fix]], cfg: GpsSampling = CFG) -> list[CurvePoint]:
    rec = CurveGpsRecorder(cfg)
    out: list[CurvePoint] = []
    for t, f in fixes:
        out += rec.offer(f, t)
    return out + rec.flush()


def worst(points: list[CurvePoint], fixes: list[tuple[float, Fix]]) -> tuple[float, float]:
    """Largest SED (m) and speed error (km/h) of the moving fixes against the path."""
    path = [p for p in points if not p.provisional and p.fix.lat is not None]
    times = [p.t_s for p in path]
    sed = dv = 0.0
    for t, f in fixes:
        if f.lat is None or f.lon is None or (f.speed_kmh or 0.0) <= CFG.moving_speed_kmh:
            continue
        j = bisect.bisect_right(times, t) - 1
        if times[j] == t:
            continue
        a, b = path[j].fix, path[j + 1].fix
        assert a.lat is not None and a.lon is not None and b.lat is not None
        assert b.lon is not None
        k = (t - times[j]) / (times[j + 1] - times[j])
        lat, lon = a.lat + k * (b.lat - a.lat), a.lon + k * (b.lon - a.lon)
        kx = M_PER_DEG * math.cos(math.radians(a.lat))
        sed = max(sed, math.hypot((f.lat - lat) * M_PER_DEG, (f.lon - lon) * kx))
        if a.speed_kmh is not None and b.speed_kmh is not None and f.speed_kmh is not None:
            dv = max(dv, abs(a.speed_kmh + k * (b.speed_kmh - a.speed_kmh) - f.speed_kmh))
    return sed, dv


def reasons(points: list[CurvePoint]) -> list[tuple[float, str]]:
    return [(p.t_s, p.reason.value) for p in points]


def test_a_straight_constant_speed_drive_yields_only_the_time_out_points() -> None:
    points = record(drive([(601, 90.0, 37.0)]))
    assert reasons(points) == [(0.0, "first")] + [(30.0 * i, "max_interval")
                                                   for i in range(1, 21)]


def test_arrival_jitter_is_not_position_error() -> None:
    rng = random.Random(3)
    fixes = [(t + rng.uniform(0.0, 0.4), f) for t, f in drive([(301, 90.0, 37.0)])]
    points = record(fixes)
    assert [p.reason for p in points] == [R.FIRST] + [R.MAX_INTERVAL] * 10


def test_a_u_turn_keeps_its_corner() -> None:
    # out east at 50 km/h, slow to 20 km/h, turn in 30 degree steps, back west
    phases = [(30, 50.0, 90.0), (3, 30.0, 90.0)]
    phases += [(1, 20.0, hd) for hd in range(90, 271, 30)]
    phases += [(3, 30.0, 270.0), (30, 50.0, 270.0)]
    fixes = drive(phases)
    points = record(fixes)
    sed, dv = worst(points, fixes)
    assert sed <= 10.0 + 1e-6 and dv <= 5.0 + 1e-6
    apex = max(f.lon or 0.0 for _, f in fixes)
    kept_apex = max(p.fix.lon or 0.0 for p in points)
    kx = M_PER_DEG * math.cos(math.radians(52.0))
    assert (apex - kept_apex) * kx <= 10.0  # the turn is not cut
    assert len(points) < len(fixes) / 4


def test_stop_and_go_keeps_its_zero_speed_points() -> None:
    phases: list[tuple[int, float, float]] = []
    for _ in range(3):
        phases += [(1, 0.0, 0.0)] + [(1, 6.0 * i, 0.0) for i in range(1, 8)]
        phases += [(1, 42.0 - 6.0 * i, 0.0) for i in range(1, 8)] + [(20, 0.0, 0.0)]
    fixes = drive(phases)
    points = record(fixes)
    stops = [p for p in points if p.reason is R.STOPPED]
    starts = [p for p in points if p.reason is R.STARTED]
    assert len(stops) == 3 and len(starts) == 3
    assert all(p.fix.speed_kmh is not None and p.fix.speed_kmh <= 5.0 for p in stops)
    # the path stays at each stop until the truck moves: the last zero-speed fix is kept
    kept = {p.t_s: p for p in points}
    assert all(kept[s.t_s - 1].fix.speed_kmh == 0.0 for s in starts if s.t_s > 1)
    # every peak survives within the speed bound
    peaks = [p for p in points if p.fix.speed_kmh is not None and p.fix.speed_kmh >= 37.0]
    assert len(peaks) >= 3
    sed, dv = worst(points, fixes)
    assert sed <= 10.0 + 1e-6 and dv <= 5.0 + 1e-6


def test_events_of_their_own_around_the_path() -> None:
    nan = math.nan
    fixes = drive([(5, 0.0, 0.0), (60, 72.0, 0.0), (5, 0.0, 0.0), (3, nan, 0.0),
                   (40, 72.0, 90.0), (5, nan, 0.0)])
    got = reasons(record(fixes))
    assert got == [
        # 64: the last moving fix, needed because speed drops from 72 to 0 at the stop
        (0.0, "first"), (4.0, "last_stopped"), (5.0, "started"), (35.0, "max_interval"),
        (64.0, "error_bound"),
        (65.0, "stopped"),
        (70.0, "fix_lost"), (73.0, "fix_acquired"), (103.0, "max_interval"),
        (112.0, "flush"), (113.0, "fix_lost"),
    ]


def test_stopped_heartbeat_and_no_fix_heartbeat() -> None:
    fixes = drive([(700, 0.0, 0.0), (400, math.nan, 0.0)])
    got = reasons(record(fixes))
    assert got == [(0.0, "first"), (300.0, "stopped_interval"), (600.0, "stopped_interval"),
                   (700.0, "fix_lost"), (1000.0, "stopped_interval")]


def test_provisional_points_show_the_newest_fix_between_recorded_ones() -> None:
    cfg = dataclasses.replace(CFG, provisional_interval_s=10.0)
    rec = CurveGpsRecorder(cfg)
    out: list[CurvePoint] = []
    for t, f in drive([(61, 90.0, 0.0)]):
        out += rec.offer(f, t)
    assert [(p.t_s, p.provisional) for p in out] == [
        (0.0, False), (10.0, True), (20.0, True), (30.0, False), (40.0, True), (50.0, True),
        (60.0, False)]
    assert out[1].fields()[PROVISIONAL_FIELD] is True
    assert PROVISIONAL_FIELD not in out[0].fields()
    assert (rec.recorded, rec.provisional) == (3, 4)


def test_the_moving_hint_decides() -> None:
    rec = CurveGpsRecorder(CFG)
    fixes = drive([(40, 3.0, 0.0)])  # below moving_speed_kmh, but CAN says moving
    got = [(p.t_s, p.reason) for t, f in fixes for p in rec.offer(f, t, moving=True)]
    assert got == [(0.0, R.FIRST), (30.0, R.MAX_INTERVAL)]


def test_untrusted_time_uses_the_callers_stamp_and_a_switch_restarts_the_window() -> None:
    fixes = drive([(40, 90.0, 0.0)])
    untrusted = [(t, dataclasses.replace(f, time_trusted=False)) if t >= 20 else (t, f)
                 for t, f in fixes]
    got = reasons(record(untrusted))
    assert got == [(0.0, "first"), (19.0, "flush"), (20.0, "gap"), (39.0, "flush")]


def test_repeated_fix_is_ignored() -> None:
    rec = CurveGpsRecorder(CFG)
    fixes = drive([(5, 90.0, 0.0)])
    for t, f in fixes:
        rec.offer(f, t)
    assert rec.offer(fixes[-1][1], 5.0) == []
    assert rec.ignored == 1


def test_a_stop_with_a_repeated_time_is_still_recorded() -> None:
    rec = CurveGpsRecorder(CFG)
    fixes = drive([(5, 90.0, 0.0)])
    for t, f in fixes:
        rec.offer(f, t)
    stop = dataclasses.replace(fixes[-1][1], speed_kmh=0.0)  # same epoch time as the last
    # the pending last moving fix is kept too: the path does not lose its end
    assert [(p.t_s, p.reason) for p in rec.offer(stop, 5.0)] == [(4.0, C.FLUSH),
                                                                  (5.0, R.STOPPED)]


@settings(max_examples=150, deadline=None)
@given(
    legs=st.lists(st.tuples(st.integers(1, 40),
                            st.one_of(st.floats(6.0, 130.0), st.just(0.0), st.just(math.nan)),
                            st.floats(0.0, 360.0)),
                  min_size=1, max_size=12),
    bound=st.floats(1.0, 30.0),
    speed_bound=st.floats(0.5, 10.0),
)
def test_random_drives_stay_within_both_bounds(
    legs: list[tuple[int, float, float]], bound: float, speed_bound: float,
) -> None:
    cfg = dataclasses.replace(CFG, max_error_m=bound, max_speed_error_kmh=speed_bound)
    fixes = drive(legs)
    points = record(fixes, cfg)
    path = [p for p in points if not p.provisional]
    assert path[0].t_s == 0.0
    moving = [t for t, f in fixes if (f.speed_kmh or 0.0) > 5.0]
    if moving:  # the path runs to the last moving fix
        assert max(p.t_s for p in path) >= moving[-1]
    # with stops and lost fixes between the moving legs: worst() checks the moving fixes
    rec_sed, rec_dv = worst(points, fixes)
    assert rec_sed <= bound + 1e-6 and rec_dv <= speed_bound + 1e-6


MINIMAL = """
truck_id = "TRK-0001"
[mqtt]
host = "127.0.0.1"
[gps]
port = "/dev/ttyACM0"
[gps.sampling]
"""


def test_config_selects_the_curve_mode_with_its_bounds() -> None:
    cfg = parse_config(tomllib.loads(MINIMAL + 'mode = "curve"\nmax_error_m = 5\n'))
    assert cfg.gps is not None
    s = cfg.gps.sampling
    assert (s.mode, s.max_error_m, s.max_speed_error_kmh, s.provisional_interval_s) == (
        "curve", 5.0, 5.0, 10.0)
    default = parse_config(tomllib.loads(MINIMAL)).gps
    assert default is not None and default.sampling.mode == "curve"  # chosen from the bench


def test_threshold_keys_under_curve_mode_are_warned_about() -> None:
    _, found = check_parsed(tomllib.loads(MINIMAL + "min_distance_m = 0\n"))
    assert any("min_distance_m only apply with" in w for w in found), found
    _, found = check_parsed(tomllib.loads(MINIMAL + 'mode = "thresholds"\nmin_distance_m = 0\n'))
    assert not any("only apply with" in w for w in found), found


@pytest.mark.parametrize(("line", "key"), [
    ('mode = "douglas-peucker"', "gps.sampling.mode"),
    ("max_error_m = 0.1", "gps.sampling.max_error_m"),
    ("max_speed_error_kmh = -1", "gps.sampling.max_speed_error_kmh"),
    ("provisional_interval_s = -5", "gps.sampling.provisional_interval_s"),
])
def test_config_refuses_bad_curve_settings(line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(tomllib.loads(MINIMAL + line + "\n"))


def test_point_recorder_selects_by_mode_behind_one_interface() -> None:
    assert isinstance(point_recorder(CFG), CurveGpsRecorder)
    old = point_recorder(GpsSampling(mode="thresholds"))
    assert isinstance(old, ThresholdPoints)
    fixes = drive([(5, 0.0, 0.0), (40, 72.0, 0.0)])
    got = [(p.t_s, p.reason) for t, f in fixes for p in old.offer(f, t)]
    assert got[:2] == [(0.0, R.FIRST), (5.0, R.STARTED)]
    assert old.recorded == len(got) and old.flush() == []
