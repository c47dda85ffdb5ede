"""The pure CAN recording policy: intervals, deadbands, staleness, DTC changes."""

from __future__ import annotations

from types import MappingProxyType

from config import CanSampling
from config.events import Event, encode_body
from gateway.recording.can import DEFAULT_STALE_MS, CanRecorder

EEC1 = 61444
CCVS = 65265


def rec(
    min_interval_s: float = 1.0,
    max_interval_s: float = 60.0,
    deadbands: dict[str, float] | None = None,
    dtc_refresh_s: float = 600.0,
) -> CanRecorder:
    return CanRecorder(CanSampling(
        min_interval_s=min_interval_s,
        max_interval_s=max_interval_s,
        deadbands=MappingProxyType(deadbands or {}),
        dtc_refresh_s=dtc_refresh_s,
    ))


def test_first_frame_is_recorded_with_src() -> None:
    r = rec()
    ev = r.on_signals(1000, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1)
    assert ev == Event("engine", 1000, {"src": 0, "engine_speed_rpm": 650.0})
    encode_body(ev)


def test_small_changes_wait_for_max_interval() -> None:
    r = rec(min_interval_s=1, max_interval_s=60)
    assert r.on_signals(0, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1) is not None
    for t in range(100, 59_900, 100):
        assert r.on_signals(t, 0, {"engine_speed_rpm": 650.0 + (t % 3)}, pgn=EEC1) is None
    ev = r.on_signals(60_000, 0, {"engine_speed_rpm": 651.0}, pgn=EEC1)
    assert ev is not None
    assert ev.fields["engine_speed_rpm"] == 651.0


def test_deadband_crossing_records_after_min_interval() -> None:
    r = rec(min_interval_s=1, max_interval_s=60)
    r.on_signals(0, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1)
    assert r.on_signals(500, 0, {"engine_speed_rpm": 900.0}, pgn=EEC1) is None  # too soon
    assert r.on_signals(900, 0, {"engine_speed_rpm": 905.0}, pgn=EEC1) is None
    ev = r.on_signals(1000, 0, {"engine_speed_rpm": 910.0}, pgn=EEC1)
    assert ev is not None
    assert ev.fields["engine_speed_rpm"] == 910.0


def test_slow_drift_is_caught_against_last_recorded_value() -> None:
    r = rec(min_interval_s=1, max_interval_s=600, deadbands={"vehicle_speed_kmh": 5})
    r.on_signals(0, 0, {"vehicle_speed_kmh": 50.0}, pgn=CCVS)
    got = []
    for i in range(1, 40):
        ev = r.on_signals(i * 1000, 0, {"vehicle_speed_kmh": 50.0 + i * 0.5}, pgn=CCVS)
        if ev is not None:
            got.append(ev.fields["vehicle_speed_kmh"])
    assert got[:3] == [55.0, 60.0, 65.0]


def test_configured_deadband_overrides_default() -> None:
    r = rec(min_interval_s=0, max_interval_s=600, deadbands={"engine_speed_rpm": 1000})
    r.on_signals(0, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1)
    assert r.on_signals(10, 0, {"engine_speed_rpm": 1500.0}, pgn=EEC1) is None
    assert r.on_signals(20, 0, {"engine_speed_rpm": 1650.0}, pgn=EEC1) is not None


def test_all_zero_thresholds_record_every_frame() -> None:
    r = rec(min_interval_s=0, max_interval_s=0)
    evs = [r.on_signals(t, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1) for t in range(50)]
    assert all(e is not None for e in evs)
    assert r.engine_events == 50


def test_zero_max_interval_gives_fixed_period() -> None:
    r = rec(min_interval_s=1, max_interval_s=0)
    times = [t for t in range(0, 5000, 100)
             if r.on_signals(t, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1)]
    assert times == [0, 1000, 2000, 3000, 4000]


def test_bool_change_is_significant() -> None:
    r = rec(min_interval_s=0, max_interval_s=600)
    r.on_signals(0, 0, {"brake_switch": False}, pgn=CCVS)
    assert r.on_signals(10, 0, {"brake_switch": False}, pgn=CCVS) is None
    assert r.on_signals(20, 0, {"brake_switch": True}, pgn=CCVS) is not None


def test_sources_are_independent_and_events_carry_merged_state() -> None:
    r = rec(min_interval_s=0, max_interval_s=600)
    r.on_signals(0, 0x00, {"engine_speed_rpm": 650.0}, pgn=EEC1)
    ev = r.on_signals(1, 0x31, {"fuel_level_pct": 50.0}, pgn=65276)
    assert ev is not None
    assert ev.fields == {"src": 0x31, "fuel_level_pct": 50.0}
    ev = r.on_signals(2, 0x00, {"vehicle_speed_kmh": 20.0}, pgn=CCVS)  # a new signal appears
    assert ev is not None
    assert ev.fields == {"src": 0, "engine_speed_rpm": 650.0, "vehicle_speed_kmh": 20.0}
    assert r.sources == [0x00, 0x31]


def test_not_available_removes_signal_and_counts_as_change() -> None:
    r = rec(min_interval_s=0, max_interval_s=600)
    r.on_signals(0, 0, {"vehicle_speed_kmh": 20.0, "engine_speed_rpm": 650.0}, pgn=CCVS)
    ev = r.on_signals(10, 0, {}, pgn=CCVS, missing=("vehicle_speed_kmh",))
    assert ev is not None
    assert "vehicle_speed_kmh" not in ev.fields
    assert r.latest(0) == {"engine_speed_rpm": 650.0}


def test_missing_from_other_pgn_keeps_value() -> None:
    """total_distance_km from VD stays when VDHR reports it not available."""
    r = rec(min_interval_s=0, max_interval_s=600)
    r.on_signals(0, 0x17, {"total_distance_km": 1000.0}, pgn=65248)
    assert r.on_signals(1, 0x17, {}, pgn=65217, missing=("total_distance_km",)) is None
    assert r.latest(0x17) == {"total_distance_km": 1000.0}


def test_stale_signals_are_dropped() -> None:
    r = rec(min_interval_s=1, max_interval_s=600)
    r.on_signals(0, 0, {"coolant_temp_c": 70, "engine_hours_h": 100.0}, pgn=65262)
    t = DEFAULT_STALE_MS + 1000
    ev = r.on_signals(t, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1)
    assert ev is not None
    # coolant went quiet for longer than its stale time; on-request hours live longer
    assert ev.fields == {"src": 0, "engine_speed_rpm": 650.0, "engine_hours_h": 100.0}


def test_clock_going_back_records_and_restarts() -> None:
    r = rec(min_interval_s=1, max_interval_s=60)
    r.on_signals(100_000, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1)
    assert r.on_signals(5_000, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1) is not None
    assert r.on_signals(5_500, 0, {"engine_speed_rpm": 650.0}, pgn=EEC1) is None


ON = {"mil": "on", "red_stop": "off", "amber_warning": "off", "protect": "off"}
OFF = {"mil": "off", "red_stop": "off", "amber_warning": "off", "protect": "off"}


def test_dtc_event_on_first_sight_change_back_to_none_and_refresh() -> None:
    r = rec(dtc_refresh_s=600)
    code = [{"spn": 91, "fmi": 3, "oc": 1}]
    ev = r.on_dtc(0, 0, OFF, [])
    assert ev == Event("dtc", 0, {"src": 0, "lamps": OFF, "active": []})
    assert r.on_dtc(1000, 0, OFF, []) is None
    ev = r.on_dtc(2000, 0, ON, code)
    assert ev is not None
    assert ev.fields == {"src": 0, "lamps": ON, "active": code}
    encode_body(ev)
    # occurrence count ticking up is not a change
    assert r.on_dtc(3000, 0, ON, [{"spn": 91, "fmi": 3, "oc": 2}]) is None
    assert r.on_dtc(4000, 0, OFF, []) is not None  # back to none
    assert r.on_dtc(5000, 0, OFF, []) is None
    assert r.on_dtc(604_000, 0, OFF, []) is not None  # long refresh
    assert r.dtc_events == 4


def test_dtc_lamp_change_alone_is_a_change() -> None:
    r = rec()
    code = [{"spn": 91, "fmi": 3, "oc": 1}]
    r.on_dtc(0, 0, ON, code)
    assert r.on_dtc(1000, 0, {**ON, "amber_warning": "on"}, code) is not None


def test_dtc_refresh_zero_records_every_dm1() -> None:
    r = rec(dtc_refresh_s=0)
    assert all(r.on_dtc(t, 0, OFF, []) is not None for t in range(0, 5000, 1000))
