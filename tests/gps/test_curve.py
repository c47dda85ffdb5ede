"""The pure streaming simplifiers (gateway/recording/curve.py): bounds, time-out, edges."""

from __future__ import annotations

import bisect
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.recording.curve import (
    EARTH_RADIUS_M,
    Kept,
    OpeningWindow,
    Reason,
    SedCone,
    ValueCone,
    path_simplifier,
    signal_simplifier,
)

M_PER_DEG = EARTH_RADIUS_M * math.pi / 180
EPS = 1e-6  # metres / units of float slack in the checks


def offset(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    """Move by metres in the local equirectangular frame of (lat, lon)."""
    lon2 = lon + east_m / (M_PER_DEG * math.cos(math.radians(lat)))
    return lat + north_m / M_PER_DEG, (lon2 + 180.0) % 360.0 - 180.0


def sed_m(a: Kept[tuple[float, float]], b: Kept[tuple[float, float]],
          t: float, p: tuple[float, float]) -> float:
    """SED of ``p`` at ``t`` against segment a-b, in a's equirectangular frame."""
    f = (t - a.t) / (b.t - a.t)
    dlon_ab = (b.item[1] - a.item[1] + 180.0) % 360.0 - 180.0
    lat = a.item[0] + f * (b.item[0] - a.item[0])
    lon = a.item[1] + f * dlon_ab
    kx = M_PER_DEG * math.cos(math.radians(a.item[0]))
    dlon = (p[1] - lon + 180.0) % 360.0 - 180.0
    return math.hypot((p[0] - lat) * M_PER_DEG, dlon * kx)


def run(win: OpeningWindow[tuple[float, float]],
        samples: list[tuple[float, tuple[float, float]]]) -> list[Kept[tuple[float, float]]]:
    kept: list[Kept[tuple[float, float]]] = []
    for t, p in samples:
        kept += win.add(t, p)
    return kept + win.flush()


def max_sed(kept: list[Kept[tuple[float, float]]],
            samples: list[tuple[float, tuple[float, float]]]) -> float:
    times = [k.t for k in kept]
    worst = 0.0
    for t, p in samples:
        j = bisect.bisect_right(times, t) - 1
        if kept[j].t == t:
            continue
        worst = max(worst, sed_m(kept[j], kept[j + 1], t, p))
    return worst


def straight(n: int, speed_ms: float = 25.0, heading_deg: float = 60.0,
             start: tuple[float, float] = (48.0, 11.0)) -> list[tuple[float, tuple[float, float]]]:
    h = math.radians(heading_deg)
    return [(float(i), offset(*start, speed_ms * i * math.sin(h), speed_ms * i * math.cos(h)))
            for i in range(n)]


# ------------------------------------------------------------------ properties

steps = st.lists(
    st.tuples(
        st.floats(0.05, 5.0),  # dt, s
        st.floats(-60.0, 60.0),  # east step, m
        st.floats(-60.0, 60.0),  # north step, m
    ),
    min_size=2,
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    lat0=st.floats(-75.0, 75.0),
    lon0=st.floats(-180.0, 180.0),
    bound=st.floats(0.5, 50.0),
    max_interval=st.sampled_from([0.0, 7.0, 30.0]),
    sides=st.sampled_from([4, 8, 16, 32]),
)
def test_every_sample_within_the_sed_bound(
    steps: list[tuple[float, float, float]], lat0: float, lon0: float, bound: float,
    max_interval: float, sides: int,
) -> None:
    t, p = 0.0, (lat0, lon0)
    samples = [(t, p)]
    for dt, east, north in steps:
        t, p = t + dt, offset(*p, east, north)
        samples.append((t, p))
    kept = run(path_simplifier(bound, max_interval=max_interval, sides=sides), samples)
    assert kept[0].t == 0.0 and kept[-1].t == samples[-1][0]
    assert max_sed(kept, samples) <= bound + EPS
    if max_interval:
        # the time-out holds wherever samples kept coming
        times = [s[0] for s in samples]
        for a, b in itertools.pairwise(kept):
            if b.t - a.t > max_interval:
                i = times.index(a.t)
                assert times[i + 1] == b.t  # only across a silence, with both ends kept


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0.05, 5.0), st.floats(-30.0, 30.0)),
                   min_size=2, max_size=200),
    bound=st.floats(0.1, 20.0),
)
def test_every_value_within_the_1d_bound(steps: list[tuple[float, float]], bound: float) -> None:
    t, v = 0.0, 50.0
    samples = [(t, v)]
    for dt, dv in steps:
        t, v = t + dt, v + dv
        samples.append((t, v))
    win = signal_simplifier(bound)
    kept: list[Kept[float]] = []
    for t, v in samples:
        kept += win.add(t, v)
    kept += win.flush()
    times = [k.t for k in kept]
    for t, v in samples:
        j = bisect.bisect_right(times, t) - 1
        if kept[j].t == t:
            continue
        a, b = kept[j], kept[j + 1]
        assert abs(a.item + (b.item - a.item) * (t - a.t) / (b.t - a.t) - v) <= bound + EPS


# ------------------------------------------------------------------ examples


def test_straight_constant_speed_keeps_only_the_time_out_points() -> None:
    kept = run(path_simplifier(10.0, max_interval=30.0), straight(601))
    assert [k.t for k in kept] == [30.0 * i for i in range(21)]
    assert [k.reason for k in kept] == [Reason.FIRST] + [Reason.MAX_INTERVAL] * 20


def test_straight_without_time_out_keeps_both_ends() -> None:
    kept = run(path_simplifier(10.0), straight(601))
    assert [(k.t, k.reason) for k in kept] == [(0.0, Reason.FIRST), (600.0, Reason.FLUSH)]


def test_a_u_turn_keeps_its_corner() -> None:
    out = straight(31, heading_deg=90.0)
    turn = out[-1][1]
    back = [(30.0 + t, p) for t, p in straight(31, heading_deg=270.0, start=turn)[1:]]
    kept = run(path_simplifier(10.0, max_interval=120.0), out + back)
    assert 30.0 in [k.t for k in kept]
    assert max_sed(kept, out + back) <= 10.0 + EPS


def test_a_corner_is_kept_one_sample_late_as_error_bound() -> None:
    win = path_simplifier(5.0)
    samples = straight(11, heading_deg=0.0)
    corner = samples[-1][1]
    turn = [(10.0 + t, p) for t, p in straight(5, heading_deg=90.0, start=corner)[1:]]
    got = [(t, [(k.t, k.reason) for k in win.add(t, p)]) for t, p in samples + turn]
    assert dict(got)[11.0] == [(10.0, Reason.ERROR)]  # known only when t=11 arrived
    assert all(not kept for t, kept in got if t not in (0.0, 11.0))


def test_speed_profile_keeps_peak_and_trough() -> None:
    # accelerate to 90, brake to 0, accelerate again (km/h, 1 Hz)
    profile = [min(90.0, 3.0 * i) for i in range(40)]
    profile += [max(0.0, 90.0 - 6.0 * i) for i in range(1, 16)]
    profile += [2.0 * i for i in range(1, 20)]
    win = signal_simplifier(2.0)
    kept: list[Kept[float]] = []
    for i, v in enumerate(profile):
        kept += win.add(float(i), v)
    kept += win.flush()
    values = {k.t: k.item for k in kept}
    peak_t = float(profile.index(90.0))
    assert any(abs(t - peak_t) <= 1 and v == 90.0 for t, v in values.items())
    assert any(v == 0.0 for v in values.values())  # the stop survives
    assert len(kept) < len(profile) / 5


def test_non_increasing_times_are_ignored_and_counted() -> None:
    win = path_simplifier(10.0)
    assert [k.reason for k in win.add(5.0, (48.0, 11.0))] == [Reason.FIRST]
    assert win.add(5.0, (49.0, 11.0)) == []
    assert win.add(4.0, (49.0, 11.0)) == []
    assert win.ignored == 2 and win.samples == 1
    assert win.flush() == []  # nothing pending: the ignored samples left no trace


def test_a_silence_longer_than_the_time_out_keeps_both_sides() -> None:
    win = path_simplifier(10.0, max_interval=30.0)
    samples = straight(10)
    later = [(100.0 + t, p) for t, p in straight(5, start=samples[-1][1])]
    kept = run(win, samples + later)
    assert [(k.t, k.reason) for k in kept] == [
        (0.0, Reason.FIRST), (9.0, Reason.GAP), (100.0, Reason.GAP), (104.0, Reason.FLUSH)]


def test_time_out_with_irregular_samples_never_exceeds_the_interval() -> None:
    win = path_simplifier(10.0, max_interval=10.0)
    times = [0.0, 4.0, 9.5, 10.5, 14.0, 19.0, 21.0]
    kept = run(win, [(t, offset(48.0, 11.0, 20.0 * t, 0.0)) for t in times])
    assert [(k.t, k.reason) for k in kept] == [
        (0.0, Reason.FIRST), (9.5, Reason.MAX_INTERVAL), (19.0, Reason.MAX_INTERVAL),
        (21.0, Reason.FLUSH)]


def test_forced_sample_is_kept_after_the_corner_it_needs() -> None:
    win = path_simplifier(5.0)
    for t, p in straight(11, heading_deg=0.0):
        win.add(t, p)
    corner = straight(11, heading_deg=0.0)[-1][1]
    p = offset(*corner, 50.0, 0.0)
    assert [(k.t, k.reason) for k in win.add(12.0, p, force=True)] == [
        (10.0, Reason.ERROR), (12.0, Reason.FORCED)]


def test_reset_starts_a_new_stream_on_any_time_base() -> None:
    win = path_simplifier(10.0)
    win.add(1e9, (48.0, 11.0))
    win.reset()
    assert [k.reason for k in win.add(3.0, (48.0, 11.0))] == [Reason.FIRST]


def test_across_the_antimeridian() -> None:
    samples = straight(200, heading_deg=90.0, start=(10.0, 179.98))
    assert any(p[1] < 0 for _, p in samples)  # it does cross
    kept = run(path_simplifier(10.0), samples)
    assert len(kept) == 2 and max_sed(kept, samples) <= 10.0 + EPS


def test_value_cone_ignores_missing_values() -> None:
    win: OpeningWindow[float | None] = OpeningWindow([ValueCone(1.0, lambda v: v)])
    kept = [k for t, v in enumerate([0.0, None, 1.0, None, 2.0]) for k in win.add(float(t), v)]
    assert [k.t for k in kept + win.flush()] == [0.0, 4.0]


@pytest.mark.parametrize(("bound", "sides"), [(0.0, 16), (-1.0, 16), (1.0, 2)])
def test_bad_parameters_are_refused(bound: float, sides: int) -> None:
    with pytest.raises(ValueError, match="needs"):
        SedCone(bound, lambda p: p, sides)


def test_value_cone_refuses_a_zero_bound() -> None:
    with pytest.raises(ValueError, match="needs"):
        ValueCone(0.0, lambda v: v)
