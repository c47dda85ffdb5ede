"""Error-bounded CAN signals (gateway/recording/can_curve.py) against deadbands."""

from __future__ import annotations

import bisect
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import CanSampling
from config.events import Event
from gateway.recording.can import CanRecorder
from gateway.recording.can_curve import CurveCanRecorder

SA = 0
RPM = "engine_speed_rpm"


def feed(rec: CurveCanRecorder, series: list[tuple[int, float]]) -> list[Event]:
    out: list[Event] = []
    for ts, v in series:
        out += rec.on_signals(ts, SA, {RPM: v, "coolant_temp_c": 80})
    return out + rec.flush()


def worst(events: list[Event], series: list[tuple[int, float]]) -> float:
    pts = sorted((e.ts_ms, float(e.fields[RPM])) for e in events if e.type == "engine")
    times = [t for t, _ in pts]
    err = 0.0
    for ts, v in series:
        j = bisect.bisect_right(times, ts) - 1
        if times[j] == ts:
            err = max(err, abs(pts[j][1] - v))
            continue
        (ta, va), (tb, vb) = pts[j], pts[j + 1]
        err = max(err, abs(va + (vb - va) * (ts - ta) / (tb - ta) - v))
    return err


def test_constant_signal_costs_only_the_heartbeat() -> None:
    rec = CurveCanRecorder(CanSampling())  # max_interval_s = 60
    series = [(i * 20, 1400.0) for i in range(6001)]  # 50 Hz for 120 s
    events = feed(rec, series)
    assert [e.ts_ms for e in events] == [0, 60_000, 120_000]
    assert rec.curve_events == 0


def test_a_ramp_costs_its_knees_where_deadbands_cost_every_step() -> None:
    series = [(i * 100, min(1800.0, 800.0 + 5.0 * i)) for i in range(400)]  # 10 Hz
    curve = feed(CurveCanRecorder(CanSampling()), series)
    old = CanRecorder(CanSampling())
    deadband = [e for ts, v in series
                if (e := old.on_signals(ts, SA, {RPM: v, "coolant_temp_c": 80})) is not None]
    assert len(curve) == 3 and curve[0].ts_ms == 0 and curve[2].ts_ms == 39_900
    assert 20_000 <= curve[1].ts_ms <= 21_000  # the knee, within the bound
    assert len(deadband) >= 10
    assert worst(curve, series) <= 50.0


def test_a_peak_survives_and_the_event_is_one_message_late() -> None:
    rec = CurveCanRecorder(CanSampling())
    up = [(i * 100, 800.0 + 100.0 * i) for i in range(13)]  # to 2000 at 1.2 s
    down = [(1300 + i * 100, 1900.0 - 100.0 * i) for i in range(11)]
    events: list[Event] = []
    at_1300: list[Event] = []
    for ts, v in up + down:
        out = rec.on_signals(ts, SA, {RPM: v})
        if ts == 1300:
            at_1300 = out
        events += out
    events += rec.flush()
    assert [(e.ts_ms, e.fields[RPM]) for e in at_1300] == [(1200, 2000.0)]  # the peak
    assert worst(events, up + down) <= 50.0


def test_other_signals_keep_their_deadbands() -> None:
    rec = CurveCanRecorder(CanSampling(), errors={RPM: 50.0})
    assert rec.on_signals(0, SA, {RPM: 1000.0, "coolant_temp_c": 80})
    assert rec.on_signals(2000, SA, {RPM: 1000.0, "coolant_temp_c": 81}) == []
    events = rec.on_signals(4000, SA, {RPM: 1000.0, "coolant_temp_c": 83})  # deadband 2
    assert [e.fields["coolant_temp_c"] for e in events] == [83]


def test_a_clock_that_goes_back_starts_a_new_window() -> None:
    rec = CurveCanRecorder(CanSampling(max_interval_s=0, min_interval_s=1))
    for ts in range(0, 5000, 100):
        rec.on_signals(ts, SA, {RPM: 1000.0})
    assert len(rec.on_signals(100, SA, {RPM: 1000.0})) == 1  # the wrapped recorder's
    assert rec.on_signals(200, SA, {RPM: 1000.0}) == []
    out = rec.on_signals(300, SA, {RPM: 1500.0})
    assert [e.ts_ms for e in out] == [200]  # not ignored as "before 4900"


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf])
def test_bad_bounds_are_refused(bound: float) -> None:
    with pytest.raises(ValueError, match="finite and > 0"):
        CurveCanRecorder(CanSampling(), errors={RPM: bound})


def test_dtc_and_introspection_are_the_wrapped_recorders() -> None:
    rec = CurveCanRecorder(CanSampling())
    assert rec.on_dtc(0, SA, {"mil": "on"}, [{"spn": 110, "fmi": 0}]) is not None
    rec.on_signals(0, SA, {RPM: 900.0})
    assert rec.sources == [SA] and rec.latest(SA) == {RPM: 900.0}
    assert rec.engine_events == 1


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(1, 500), st.floats(-80.0, 80.0)),
                   min_size=2, max_size=300),
    bound=st.floats(1.0, 100.0),
    min_interval=st.sampled_from([0.0, 1.0]),
    max_interval=st.sampled_from([0.0, 5.0, 60.0]),
)
def test_every_message_within_the_bound(
    steps: list[tuple[int, float]], bound: float, min_interval: float, max_interval: float,
) -> None:
    ts, v = 0, 1200.0
    series = [(ts, v)]
    for dt, dv in steps:
        ts, v = ts + dt, max(0.0, v + dv)
        series.append((ts, v))
    rec = CurveCanRecorder(CanSampling(min_interval_s=min_interval, max_interval_s=max_interval),
                           errors={RPM: bound})
    assert worst(feed(rec, series), series) <= bound + 1e-6


def test_ingest_selects_the_curve_window_by_mode_and_keeps_dm1() -> None:
    """Through gateway.ingest as the agent runs it: with [can.sampling] mode = "curve"
    an rpm peak between two heartbeats is recorded; DM1 still becomes a dtc event."""
    from drivers.dm1 import decode_dm1  # noqa: PLC0415
    from drivers.j1939 import DtcUpdate, SignalUpdate  # noqa: PLC0415
    from gateway.clock import Clock  # noqa: PLC0415
    from gateway.ingest import Ingest  # noqa: PLC0415

    rpm = [800.0 + 40 * i for i in range(10)] + [1160.0 - 40 * i for i in range(10)]
    recorded: dict[str, list[Event]] = {}
    for mode in ("deadbands", "curve"):
        out: list[Event] = []
        ms = [1_000_000.0]
        def now_s(ms: list[float] = ms) -> float:
            return ms[0] / 1000

        ingest = Ingest(out.append, Clock(wall=now_s), can=CanSampling(mode=mode), mono=now_s)
        for value in rpm:
            ingest.on_can([SignalUpdate(0, 0xF004, {"engine_speed_rpm": value})])
            ms[0] += 50.0  # a 1-s rise and fall: within min_interval_s of the first event
        ingest.on_can([DtcUpdate(0, decode_dm1(bytes.fromhex("0400D3031F01FFFF")))])
        recorded[mode] = out
    peak = max(rpm)

    def rpms(events: list[Event]) -> list[float]:
        return [float(e.fields["engine_speed_rpm"]) for e in events if e.type == "engine"]

    assert peak not in rpms(recorded["deadbands"])  # min_interval_s hides the peak
    assert peak in rpms(recorded["curve"])
    for events in recorded.values():
        assert [e.type for e in events].count("dtc") == 1
