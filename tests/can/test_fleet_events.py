"""Derived fleet events (trip, idle, harsh, driver) from scripted signal streams."""

from __future__ import annotations

import json

import pytest

from config.events import Event
from config.schema import EventsConfig
from gateway.recording.fleet_events import FRESH_MS, FleetEvents

CFG = EventsConfig(trip_end_timeout_s=120, idle_min_s=30)


def run(fe: FleetEvents, samples: list[tuple[int, dict[str, float]]]) -> list[Event]:
    out: list[Event] = []
    for ts, values in samples:
        out += fe.on_signals(ts, 0, values)
    return out


def drive_script() -> list[tuple[int, dict[str, float]]]:
    """60 s idling, 60 s accelerating to 60 km/h, 60 s cruising, 5 s braking hard, engine off."""
    rows: list[tuple[int, dict[str, float]]] = []
    odo, fuel, speed = 1000.0, 500.0, 0.0
    for s in range(186):
        if s < 60:
            speed = 0.0
        elif s < 120:
            speed = (s - 60) * 1.0  # 1 km/h per second: 0.28 m/s2, not harsh
        elif s < 180:
            speed = 60.0
        else:
            speed = max(0.0, 60.0 - (s - 180) * 12.0)  # 12 km/h per second: 3.3 m/s2
        odo += speed / 3600
        fuel += 0.001 if speed == 0 else 0.01
        rows.append((s * 1000, {"engine_speed_rpm": 600.0 if speed == 0 else 1400.0,
                                "vehicle_speed_kmh": speed, "total_distance_km": odo,
                                "total_fuel_used_l": fuel, "fuel_rate_lph": 3.6}))
    rows.append((186_000, {"engine_speed_rpm": 0.0, "vehicle_speed_kmh": 0.0}))
    return rows


def test_trip_idle_and_harsh_braking_from_a_scripted_drive() -> None:
    fe = FleetEvents(CFG)
    fe.on_position(0, 53.5, 10.0, 0.0, 0.0)
    events = run(fe, drive_script())
    idle = [e for e in events if e.type == "idle"]
    harsh = [e for e in events if e.type == "harsh"]
    assert len(idle) == 1
    assert idle[0].fields["start_ts"] == 0
    # 1 km/h at 61 s is still "standing" (standstill_kmh = 1): it ends at 62 s
    assert idle[0].fields["duration_s"] == 62.0
    assert idle[0].fields["fuel_l"] == pytest.approx(0.001 * 60 + 0.01 * 2)  # counter delta
    assert idle[0].fields["lat"] == 53.5
    assert [h.fields["kind"] for h in harsh] == ["braking"]
    assert harsh[0].fields["peak_ms2"] == pytest.approx(12 / 3.6, abs=0.01)
    assert harsh[0].ts_ms == 181_000
    assert fe.tick(185_000 + 119_000) == []  # the timeout runs from the last sign of ignition
    fe.on_position(200_000, 53.51, 10.01, 0.0, 0.0)
    (trip,) = fe.tick(185_000 + 121_000)
    f = trip.fields
    assert trip.type == "trip"
    assert f["start_ts"] == 0
    assert f["duration_s"] == 185.0  # last sign of ignition: 185 s (rpm 0 at 186 s)
    assert f["distance_source"] == "odometer"
    # the odometer delta: 60 s ramp (0.49 km) + 60 s at 60 km/h (1 km) + braking (0.05 km)
    assert f["distance_km"] == pytest.approx((1770 + 3600 + 180) / 3600, abs=0.001)
    assert f["fuel_used_l"] == pytest.approx(0.001 * 61 + 0.01 * 124, abs=0.02)
    assert f["max_speed_kmh"] == 60.0
    assert f["driving_s"] == pytest.approx(124, abs=2)
    assert f["idle_s"] == pytest.approx(61, abs=2)
    assert (f["start_lat"], f["end_lat"]) == (53.5, 53.51)


def test_short_idle_is_not_an_event_and_engine_off_is_not_idling() -> None:
    fe = FleetEvents(CFG)
    rows = [(s * 1000, {"engine_speed_rpm": 600.0, "vehicle_speed_kmh": 0.0}) for s in range(20)]
    rows += [(20_000 + s * 1000, {"engine_speed_rpm": 1200.0, "vehicle_speed_kmh": 2.0 + s})
             for s in range(5)]
    assert [e.type for e in run(fe, rows)] == []


def test_gps_distance_and_harsh_acceleration_without_wheel_speed() -> None:
    fe = FleetEvents(CFG)
    fe.on_signals(0, 0, {"engine_speed_rpm": 800.0})  # no wheel speed, no odometer
    events: list[Event] = []
    for s in range(1, 12):
        speed = min(s * 10.0, 60.0)  # 10 km/h per second = 2.8 m/s2 until 60 km/h
        events += fe.on_position(s * 1000, 48.0 + s * 0.0001, 11.0, speed, 0.0)
        fe.on_signals(s * 1000, 0, {"engine_speed_rpm": 1500.0})
    (harsh,) = [e for e in events if e.type == "harsh"]
    assert harsh.fields["kind"] == "acceleration"
    assert harsh.fields["peak_ms2"] == pytest.approx(10 / 3.6, abs=0.01)
    fe.on_signals(12_000, 0, {"engine_speed_rpm": 0.0})
    (trip,) = fe.tick(12_000 + 200_000)
    assert trip.fields["distance_source"] == "gps"
    assert trip.fields["distance_km"] == pytest.approx(10 * 0.0001 * 111.2, rel=0.01)


def test_harsh_cornering_from_gps_heading_rate() -> None:
    fe = FleetEvents(CFG)
    events: list[Event] = []
    heading = 0.0
    for s in range(10):
        turning = 3 <= s < 7
        heading = (heading + (20.0 if turning else 0.0)) % 360  # 20 deg/s at 36 km/h
        events += fe.on_position(s * 1000, 48.0, 11.0, 36.0, heading)
    (corner,) = events
    assert corner.fields["kind"] == "cornering"
    assert corner.fields["peak_ms2"] == pytest.approx(10 * 0.349, abs=0.01)  # v * yaw rate
    assert corner.ts_ms == 3000
    assert corner.fields["duration_s"] == 4.0


def test_driver_card_and_working_state_changes() -> None:
    fe = FleetEvents(CFG)
    tco1 = {"driver1_card_present": True, "driver1_working_state": 2,
            "driver2_card_present": False, "driver2_working_state": 0}
    first = fe.on_signals(0, 0xEE, tco1)
    assert [(e.fields["driver"], e.fields["card_present"]) for e in first] == [(1, True),
                                                                              (2, False)]
    assert fe.on_signals(50, 0xEE, tco1) == []  # no change, no event
    (drive,) = fe.on_signals(100, 0xEE, {**tco1, "driver1_working_state": 3})
    assert drive.fields == {"src": 0xEE, "driver": 1, "card_present": True, "working_state": 3}
    (out,) = fe.on_signals(200, 0xEE, {**tco1, "driver1_card_present": False,
                                        "driver1_working_state": 3})
    assert out.fields["card_present"] is False


def test_trip_survives_a_restart_through_its_snapshot() -> None:
    fe = FleetEvents(CFG)
    fe.on_position(0, 53.5, 10.0, 0.0, 0.0)
    run(fe, drive_script()[:150])
    state = fe.snapshot()
    assert state is not None
    again = FleetEvents(CFG)  # the agent restarted
    again.restore(state)
    run(again, drive_script()[150:])
    (trip,) = again.tick(400_000)
    assert trip.fields["start_ts"] == 0
    assert trip.fields["start_lat"] == 53.5
    assert trip.fields["max_speed_kmh"] == 60.0
    assert FleetEvents(CFG).snapshot() is None


def test_trip_distance_starts_at_the_last_odometer_reading_before_moving() -> None:
    """The first odometer may be the low-resolution VD (0.125 km) of a standstill, or
    come after the engine speed: the start is the reading just before the truck moves."""
    fe = FleetEvents(CFG)
    fe.on_signals(0, 0, {"engine_speed_rpm": 600.0, "vehicle_speed_kmh": 0.0})
    fe.on_signals(100, 0x17, {"total_distance_km": 1000.125})  # VD, rounded to 0.125 km
    fe.on_signals(1000, 0x17, {"total_distance_km": 1000.06})  # VDHR: 5 m resolution
    for s in range(2, 62):  # 60 s at 36 km/h: 0.6 km
        fe.on_signals(s * 1000, 0, {"engine_speed_rpm": 1200.0, "vehicle_speed_kmh": 36.0,
                                    "total_distance_km": 1000.06 + (s - 1) * 0.01})
    fe.on_signals(62_000, 0, {"engine_speed_rpm": 0.0, "vehicle_speed_kmh": 0.0})
    (trip,) = fe.tick(62_000 + 121_000)
    assert trip.fields["distance_km"] == pytest.approx(0.6, abs=0.001)


def test_an_odometer_that_moves_without_a_wheel_speed_counts() -> None:
    fe = FleetEvents(CFG)
    fe.on_signals(0, 0, {"engine_speed_rpm": 600.0, "total_distance_km": 1000.0})
    fe.on_signals(60_000, 0, {"engine_speed_rpm": 1200.0, "total_distance_km": 1001.0})
    fe.on_signals(61_000, 0, {"engine_speed_rpm": 1200.0, "total_distance_km": 1001.05})
    (trip,) = fe.tick(61_000 + 121_000)
    assert trip.fields["distance_km"] == pytest.approx(1.05)


def test_restore_ignores_broken_snapshots_and_keeps_the_driver_states() -> None:
    for broken in ({"start_ms": "0", "last_on_ms": 1}, {"last_on_ms": 5}, {},
                   {"start_ms": True, "last_on_ms": 1}):
        fe = FleetEvents(CFG)
        fe.restore(broken)
        assert fe.snapshot() is None, broken
    fe = FleetEvents(CFG)
    tco1 = {"driver1_card_present": True, "driver1_working_state": 3}
    assert len(fe.on_signals(0, 0xEE, {**tco1, "engine_speed_rpm": 600.0})) == 1
    state = fe.snapshot()
    assert state is not None
    again = FleetEvents(CFG)
    again.restore(json.loads(json.dumps(state)))  # as the buffer keeps it
    assert again.on_signals(1000, 0xEE, tco1) == []  # the same card: no second event
    assert len(again.on_signals(2000, 0xEE, {**tco1, "driver1_working_state": 2})) == 1
    again.restore({**state, "drivers": [["x", 1, True, 3], [0xEE, 2, "yes", None]]})


def test_a_fix_without_speed_or_heading_moves_the_position_only() -> None:
    fe = FleetEvents(CFG)
    fe.on_signals(0, 0, {"engine_speed_rpm": 600.0})
    assert fe.on_position(0, 53.5, 10.0, None, None) == []
    assert fe.on_position(1000, 53.501, 10.0, 30.0, None) == []
    assert fe.on_position(2000, 53.502, 10.0, None, 90.0) == []
    state = fe.snapshot()
    assert state is not None and state["gps_m"] == pytest.approx(222.4, abs=1)


def test_a_clock_step_mid_trip_keeps_every_duration() -> None:
    """A Pi that booted with a stale clock syncs to GPS in the middle of the idle (the
    clock jumps 170 days) and is stepped back 14 days while cruising: the episodes keep
    their true durations and are stamped on the corrected clock."""
    fwd, back = 170 * 86_400_000, -14 * 86_400_000
    fe = FleetEvents(CFG)
    fe.on_position(0, 53.5, 10.0, 0.0, 0.0)
    events: list[Event] = []
    for ts, values in drive_script():
        if ts == 30_000:
            fe.shift(fwd)
        if ts == 150_000:
            fe.shift(back)
        t = ts + (fwd if ts >= 30_000 else 0) + (back if ts >= 150_000 else 0)
        events += fe.on_signals(t, 0, values)
    end = 185_000 + fwd + back
    (idle,) = [e for e in events if e.type == "idle"]
    assert idle.fields["duration_s"] == 62.0
    assert idle.fields["start_ts"] == fwd  # the start, on the clock as corrected later
    (harsh,) = [e for e in events if e.type == "harsh"]
    assert harsh.fields["duration_s"] >= 0 and harsh.ts_ms == 181_000 + fwd + back
    (trip,) = fe.tick(end + 121_000)
    assert trip.fields["duration_s"] == 185.0
    assert trip.fields["start_ts"] == fwd + back
    assert trip.fields["idle_s"] == pytest.approx(61, abs=2)
    assert trip.fields["driving_s"] == pytest.approx(124, abs=2)


def test_cornering_rates_use_the_receivers_time_not_the_arrival() -> None:
    """Fixes read in a burst from a backed-up serial line arrive milliseconds apart: the
    heading rate is over the receiver's own times (1 s apart), so no harsh cornering."""
    fe = FleetEvents(CFG)
    events: list[Event] = []
    for s in range(10):
        events += fe.on_position(5_000 + s * 3, 48.0, 11.0, 30.0, s * 10.0,
                                 fix_ms=1_781_524_800_000 + s * 1000)  # 10 deg/s at 30 km/h
    assert [e for e in events if e.type == "harsh"] == []
    bunched = FleetEvents(CFG)  # the arrival times alone would have made it one
    for s in range(10):
        events += bunched.on_position(5_000 + s * 3, 48.0, 11.0, 30.0, s * 10.0)
    events += bunched.on_position(6_000, 48.0, 11.0, 30.0, 90.0)
    assert [e.fields["kind"] for e in events if e.type == "harsh"] == ["cornering"]


def wheel_ramp(a_ms2: float) -> list[tuple[int, dict[str, float]]]:
    """CCVS1 at 10 Hz: 2 s standing, a ramp at ``a_ms2`` to 36 km/h, then cruising (12 s)."""
    rows: list[tuple[int, dict[str, float]]] = []
    for i in range(121):
        v_ms = min(max(0.0, (i - 20) / 10 * a_ms2), 10.0)
        rows.append((i * 100, {"vehicle_speed_kmh": v_ms * 3.6}))
    return rows


def test_harsh_acceleration_from_the_wheel_speed_at_10_hz() -> None:
    fe = FleetEvents(CFG)  # harsh_accel_ms2 = 1.5 (default)
    assert CFG.harsh_accel_ms2 == 1.5
    fe.on_position(0, 53.5, 10.0, None, None)
    (harsh,) = run(fe, wheel_ramp(2.0))  # 2 s to 7 s: 0 to 10 m/s
    assert harsh.type == "harsh"
    # the 1 s difference first exceeds 1.5 m/s2 at 2.8 s (1.6 m/s2 at 5.76 km/h); it
    # falls below it 0.3 s after the ramp ends (1.4 m/s2 at 7.3 s): recorded then
    assert harsh.ts_ms == 2800
    assert harsh.fields == {"kind": "acceleration", "peak_ms2": pytest.approx(2.0, abs=0.01),
                            "duration_s": 4.5, "speed_kmh": 5.8, "lat": 53.5, "lon": 10.0}
    assert run(FleetEvents(CFG), wheel_ramp(1.45)) == []  # just below the threshold
    (above,) = run(FleetEvents(CFG), wheel_ramp(1.6))  # just above it
    assert above.fields["kind"] == "acceleration"
    assert above.fields["peak_ms2"] == pytest.approx(1.6, abs=0.01)
    assert "lat" not in above.fields  # no fix yet: no position


def test_harsh_braking_and_acceleration_from_gps_when_the_wheel_speed_is_stale() -> None:
    """CCVS1 stops (the wheel speed's ECU drops off the bus): once its last value is older
    than FRESH_MS the GPS speed decides; a fix until then is ignored, even a glitch."""
    fe = FleetEvents(CFG)
    fe.on_signals(0, 0, {"engine_speed_rpm": 1400.0})
    events = run(fe, [(i * 100, {"vehicle_speed_kmh": 72.0}) for i in range(46)])  # to 4.5 s
    assert FRESH_MS == 6_500 - 4_500  # the fix at 6.5 s is the last one the wheel speed beats
    kmh = [72.0] * 6 + [30.0] + [72.0] * 2 + [61.2, 50.4, 39.6, 39.6, 46.8, 54.0, 61.2, 61.2,
                                              61.2]
    lats = [48.0 + k * 0.0002 for k in range(len(kmh))]
    for k, (v, lat) in enumerate(zip(kmh, lats, strict=True)):
        ts = 500 + k * 1000  # 1 Hz; 30 km/h at 6.5 s is a glitch (multipath)
        events += fe.on_position(ts, lat, 11.0, v, 0.0)
        fe.on_signals(ts, 0, {"engine_speed_rpm": 1400.0})
    harsh = [e for e in events if e.type == "harsh"]
    # 3 m/s2 from 9.5 s to 11.5 s, then 2 m/s2 from 13.5 s to 15.5 s, from the GPS speed
    assert [(h.ts_ms, h.fields["kind"]) for h in harsh] == [(9_500, "braking"),
                                                            (13_500, "acceleration")]
    brake, accel = harsh
    assert brake.fields == {"kind": "braking", "peak_ms2": pytest.approx(3.0, abs=0.01),
                            "duration_s": 3.0, "speed_kmh": 61.2, "lat": lats[9], "lon": 11.0}
    assert accel.fields["peak_ms2"] == pytest.approx(2.0, abs=0.01)
    assert accel.fields["duration_s"] == 3.0 and accel.fields["speed_kmh"] == 46.8


def test_gps_speed_changes_are_no_harsh_event_while_the_wheel_speed_is_fresh() -> None:
    """GPS speed jumps (multipath, a tunnel exit) while CCVS1 says a steady 50 km/h, then
    the wheel speed brakes hard while the GPS still says 50 km/h: one braking, the wheel's.
    The same fixes alone would be three harsh events."""
    jumps = [50.0, 50.0, 20.0, 20.0, 50.0, 80.0, 80.0, 50.0, 50.0, 50.0] + [50.0] * 6

    def wheel_kmh(i: int) -> float:  # 3 m/s2 from 10 s to 13 s
        return 50.0 - min(max(0, i - 100), 30) / 10 * 3.0 * 3.6

    def drive(fe: FleetEvents, wheel: bool) -> list[Event]:
        out: list[Event] = []
        for i in range(len(jumps) * 10):
            if wheel:
                out += fe.on_signals(i * 100, 0, {"vehicle_speed_kmh": wheel_kmh(i)})
            if i % 10 == 5:
                out += fe.on_position(i * 100, 48.0, 11.0, jumps[i // 10], 0.0)
        return out

    (brake,) = drive(FleetEvents(CFG), wheel=True)
    assert brake.fields["kind"] == "braking"
    assert brake.fields["peak_ms2"] == pytest.approx(3.0, abs=0.01)
    assert brake.ts_ms == 10_900  # 2.7 m/s2 over the 1 s to 10.9 s: above 2.5
    kinds = [e.fields["kind"] for e in drive(FleetEvents(CFG), wheel=False)]
    assert kinds == ["braking", "acceleration", "braking"]


def trip_starts(fe: FleetEvents, samples: list[tuple[int, int, dict[str, float]]]) -> list[int]:
    """Feed ``(ts, sa, values)``; the distinct start times of the open trip, in order."""
    starts: list[int] = []
    for ts, sa, values in samples:
        fe.on_signals(ts, sa, values)
        state = fe.snapshot()
        start = None if state is None else state["start_ms"]
        assert start is None or isinstance(start, int)
        if start is not None and start not in starts:
            starts.append(start)
    return starts


def test_a_trip_starts_from_the_wheel_speed_alone() -> None:
    """No engine speed on the bus: CCVS1 (10 Hz) and VDHR (1 Hz) only. A standstill is not
    ignition; the trip starts when the wheel speed first exceeds standstill_kmh."""
    rows: list[tuple[int, int, dict[str, float]]] = []
    odo = 2000.0
    for i in range(900):  # 10 s standing, 10 s at +1 m/s2, 50 s at 36 km/h, 10 s braking
        t = i / 10
        v_ms = 0.0 if t < 10 else min(t - 10, 10.0) if t < 70 else max(0.0, 80 - t)
        odo += v_ms * 0.1 / 1000
        rows.append((i * 100, 0, {"vehicle_speed_kmh": v_ms * 3.6}))
        if i % 10 == 3:
            rows.append((i * 100 + 30, 0x17, {"total_distance_km": round(odo, 3)}))
    fe = FleetEvents(CFG)
    standing = [r for r in rows if r[0] < 10_300]
    assert trip_starts(fe, standing) == []  # standing with the engine speed unknown
    assert trip_starts(fe, rows[len(standing):]) == [10_300]  # 1.08 km/h: first above 1
    end = 79_700  # the last sample above 1 km/h (1.08 km/h)
    assert fe.tick(end + 119_999) == []
    (trip,) = fe.tick(end + 120_000)
    f = trip.fields
    assert (trip.type, trip.ts_ms, f["start_ts"], f["duration_s"]) == ("trip", end, 10_300,
                                                                        69.4)
    assert f["distance_source"] == "odometer"
    assert f["distance_km"] == pytest.approx(0.6, abs=0.006)  # 50 m + 500 m + 50 m
    assert f["max_speed_kmh"] == 36.0
    assert f["driving_s"] == pytest.approx(69.4, abs=0.15)
    assert f["idle_s"] == 0.0  # no engine speed: standing is not idling
    assert fe.tick(end + 200_000) == [] and fe.snapshot() is None


def test_a_trip_started_rolling_takes_its_odometer_from_the_first_reading() -> None:
    """The gateway boots mid-drive: the first CCVS1 already says 36 km/h and the first VDHR
    comes half a second later. Its reading is the start (not a GPS distance of 0 km)."""
    rows: list[tuple[int, int, dict[str, float]]] = []
    for i in range(600):
        rows.append((i * 100, 0, {"vehicle_speed_kmh": 36.0}))
        if i % 10 == 5:
            rows.append((i * 100, 0x17, {"total_distance_km": 1000.0 + i * 0.001}))
    fe = FleetEvents(CFG)
    assert trip_starts(fe, rows) == [0]
    (trip,) = fe.tick(59_900 + 120_000)
    assert trip.fields["distance_source"] == "odometer"
    assert trip.fields["distance_km"] == pytest.approx(0.59)  # 0.5 s to 59.5 s
    assert trip.fields["duration_s"] == 59.9


def test_a_trip_starts_when_the_bus_wakes_up() -> None:
    """Neither engine nor wheel speed on the bus: any message is a sign of ignition (ET1's
    coolant temperature here, VDHR at 1 Hz while the truck drives at 36 km/h)."""
    fe = FleetEvents(CFG)
    assert fe.on_position(0, 53.5, 10.0, 0.0, 0.0) == []  # a fix alone is no ignition
    assert fe.snapshot() is None
    rows: list[tuple[int, int, dict[str, float]]] = []
    for s in range(61):
        rows.append((5_000 + s * 1000, 0, {"coolant_temp_c": 80.0}))
        rows.append((5_000 + s * 1000 + 200, 0x17, {"total_distance_km": 1000.0 + s * 0.01}))
    assert trip_starts(fe, rows) == [5_000]
    fe.on_position(70_000, 53.505, 10.0, 0.0, 0.0)
    end = 65_200  # the last message
    assert fe.tick(end + 119_999) == []
    (trip,) = fe.tick(end + 120_000)
    f = trip.fields
    assert (f["start_ts"], f["duration_s"]) == (5_000, 60.2)
    assert f["distance_source"] == "odometer"
    # readings within ODO_SAME_KM of the first are taken as the same standstill (there is
    # no wheel speed to say the truck moves): at most the first 125 m are not counted
    assert 0.475 <= f["distance_km"] <= 0.6
    assert (f["start_lat"], f["end_lat"]) == (53.5, 53.505)
    assert (f["driving_s"], f["idle_s"], f["max_speed_kmh"]) == (0.0, 0.0, 0.0)
