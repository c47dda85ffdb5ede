"""Simulator encoders checked by the gateway's own decoders (NMEA, J1939, TP, DM1)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.j1939 import DtcUpdate, J1939Decoder, SignalUpdate
from drivers.nmea import ChecksumError, Gga, Gsa, NmeaFramer, Rmc, Vtg, parse_sentence
from sim import j1939_out, nmea_out
from sim.faults import FaultPlan, FaultSpecError, corrupt_sentences, garbage, parse_fault
from sim.j1939_out import Frame, Schedule
from sim.route import load_route
from sim.tacho import TachoState, WorkingState
from sim.truck import Dtc, Phase, Truck, TruckParams, TruckState

T = dt.datetime(2026, 3, 18, 17, 19, 26, 500000, tzinfo=dt.UTC)


def lines(data: bytes) -> list[bytes]:
    return NmeaFramer().feed(data)


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(-89.9, 89.9), lon=st.floats(-179.9, 179.9),
       speed=st.floats(0, 160), course=st.floats(0, 359.9), alt=st.floats(-100, 5000))
# minutes that round to 60.00000 must carry into the degrees (was printed as 00160.00000)
@example(lat=0.0, lon=1.9999999999999716, speed=0.0, course=0.0, alt=0.0)
@example(lat=-45.99999999, lon=-179.9, speed=0.0, course=0.0, alt=0.0)
def test_nmea_epoch_round_trips_through_the_gateway_parser(
        lat: float, lon: float, speed: float, course: float, alt: float) -> None:
    fix = nmea_out.GpsFix(lat=lat, lon=lon, alt_m=alt, speed_kmh=speed, course_deg=course)
    parsed = [parse_sentence(x) for x in lines(nmea_out.epoch(T, fix))]
    rmc = next(p for p in parsed if isinstance(p, Rmc))
    gga = next(p for p in parsed if isinstance(p, Gga))
    vtg = next(p for p in parsed if isinstance(p, Vtg))
    gsa = next(p for p in parsed if isinstance(p, Gsa))
    assert rmc.talker == "GN" and rmc.valid
    assert rmc.lat == pytest.approx(lat, abs=1e-6)
    assert rmc.lon == pytest.approx(lon, abs=1e-6)
    assert rmc.speed_kn == pytest.approx(speed / 1.852, abs=1e-3)
    assert rmc.date == T.date()
    assert rmc.tod_ms == ((17 * 60 + 19) * 60 + 26) * 1000 + 500
    assert gga.quality == 1 and gga.alt_m == pytest.approx(alt, abs=0.051)
    assert vtg.speed_kmh == pytest.approx(speed, abs=1e-3)
    assert gsa.mode == 3


def test_no_fix_epoch_has_no_position() -> None:
    parsed = [parse_sentence(x) for x in lines(nmea_out.epoch(T, None))]
    rmc = next(p for p in parsed if isinstance(p, Rmc))
    gga = next(p for p in parsed if isinstance(p, Gga))
    assert not rmc.valid and rmc.lat is None and rmc.lon is None
    assert gga.quality == 0 and gga.lat is None


def test_corrupted_sentences_are_rejected_by_the_parser() -> None:
    rng = random.Random(1)
    fix = nmea_out.GpsFix(48.1, 11.6, 500, 80, 90)
    good = nmea_out.epoch(T, fix) * 5
    bad = corrupt_sentences(good, rng)
    rejected = 0
    for line in lines(bad):
        try:
            parse_sentence(line)
        except ChecksumError:
            rejected += 1
    assert rejected >= 10  # of 20 sentences; truncated ones may not even frame
    noise = garbage(rng)
    assert noise.startswith(b"\xb5\x62")


def state(**kw: Any) -> TruckState:
    truck = Truck(load_route("hamburg-port-loop"), seed=1, params=TruckParams(fault_every_s=0))
    truck.step(60)
    return replace(truck.state, **kw)


def decode_all(frames: list[Frame]) -> list[SignalUpdate | DtcUpdate]:
    dec = J1939Decoder()
    out = []
    for i, f in enumerate(frames):
        r = dec.feed(i * 50, f.arbitration_id, f.data)
        if r is not None:
            out.append(r)
    return out


def values_of(frames: list[Frame]) -> dict[str, object]:
    merged: dict[str, object] = {}
    for r in decode_all(frames):
        if isinstance(r, SignalUpdate):
            merged.update(r.values)
    return merged


def test_every_telemetry_pgn_decodes_to_the_model_values() -> None:
    s = state(engine_rpm=1432.5, speed_kmh=83.2, pedal_pct=40.0, load_pct=55.0,
              fuel_level_pct=62.4, fuel_rate_lph=31.25, economy_kmpl=2.66, total_fuel_l=123456.5,
              engine_hours_h=8765.45, coolant_c=88.0, oil_kpa=400.0, odometer_km=345678.125,
              torque_pct=55.0, phase=Phase.DRIVING)
    frames = [j1939_out.Frame(j1939_out.can_id(p, pgn, sa), enc(s))
              for _n, pgn, p, sa, _per, enc in j1939_out.CYCLIC]
    frames += [j1939_out.Frame(j1939_out.can_id(6, pgn, 0), enc(s))
               for _n, pgn, enc in j1939_out.ON_REQUEST]
    v = values_of(frames)
    assert v["engine_speed_rpm"] == pytest.approx(1432.5)
    assert v["vehicle_speed_kmh"] == pytest.approx(83.2, abs=0.01)
    assert v["accelerator_pedal_pct"] == pytest.approx(40.0)
    assert v["engine_load_pct"] == pytest.approx(55)
    assert v["fuel_level_pct"] == pytest.approx(62.4)
    assert v["fuel_rate_lph"] == pytest.approx(31.25)
    assert v["instant_fuel_economy_kmpl"] == pytest.approx(2.66, abs=0.01)
    assert v["total_fuel_used_l"] == pytest.approx(123456.5)
    assert v["engine_hours_h"] == pytest.approx(8765.45)
    assert v["coolant_temp_c"] == pytest.approx(88)
    assert v["oil_pressure_kpa"] == pytest.approx(400)
    assert v["total_distance_km"] == pytest.approx(345678.125, abs=0.01)
    assert v["engine_torque_pct"] == pytest.approx(55)


def test_not_available_fields_stay_absent() -> None:
    s = state(economy_kmpl=None)
    v = values_of([Frame(j1939_out.can_id(6, j1939_out.PGN_LFE, 0), j1939_out.lfe(s))])
    assert "instant_fuel_economy_kmpl" not in v
    assert "fuel_rate_lph" in v


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_dm1_single_frame_and_bam_reassemble(n: int) -> None:
    dtcs = tuple(Dtc(spn=520000 + i, fmi=i % 32, oc=i + 1, lamp="amber_warning")
                 for i in range(n))
    lamps = {"mil": False, "red_stop": n > 2, "amber_warning": n > 0, "protect": False}
    payload = j1939_out.dm1(lamps, dtcs)
    frames = ([Frame(j1939_out.can_id(6, j1939_out.PGN_DM1, 0), payload)] if len(payload) <= 8
              else j1939_out.bam(j1939_out.PGN_DM1, payload, 0))
    if n >= 2:
        assert len(frames) == 1 + (len(payload) + 6) // 7
    results = [r for r in decode_all(frames) if isinstance(r, DtcUpdate)]
    assert len(results) == 1
    dm1 = results[0].dm1
    assert [(d.spn, d.fmi, d.oc) for d in dm1.active] == [(d.spn, d.fmi, d.oc) for d in dtcs]
    assert dm1.lamps_dict()["amber_warning"] == ("on" if n else "off")
    assert dm1.lamps_dict()["red_stop"] == ("on" if n > 2 else "off")


def test_schedule_rates_and_silence_with_ignition_off() -> None:
    truck = Truck(load_route("a9-munich-nuremberg"), seed=1, params=TruckParams(fault_every_s=0))
    truck.step(40)
    assert truck.state.ignition
    sched = Schedule()
    counts: dict[int, int] = {}
    t = 0.0
    while t < 10.0:
        for f in sched.due(t, truck.state):
            counts[f.pgn] = counts.get(f.pgn, 0) + 1
        t += 0.005
    assert 490 <= counts[j1939_out.PGN_EEC1] <= 510  # 20 ms
    assert 95 <= counts[j1939_out.PGN_CCVS1] <= 105  # 100 ms
    assert 9 <= counts[j1939_out.PGN_DD] <= 11  # 1 s
    assert counts[j1939_out.PGN_REQUEST] >= 2 and counts[j1939_out.PGN_HOURS] >= 1
    parked = state(phase=Phase.PARKED)
    drained = sched.due(20.0, parked)  # frames queued before the key was turned off
    assert all(f.pgn != j1939_out.PGN_EEC1 for f in drained)
    assert sched.due(30.0, parked) == []


def test_malformed_tp_drops_the_message_but_not_the_next() -> None:
    s = state(dtcs=(Dtc(110, 0, 1, "red_stop"), Dtc(100, 1, 1, "red_stop"),
                    Dtc(157, 3, 2, "amber_warning")))
    sched = Schedule(request_every_s=0)
    sched.corrupt_tp = True
    frames: list[Frame] = []
    t = 0.0
    while t < 2.5:
        frames += sched.due(t, s)
        t += 0.01
    dm1s = [r for r in decode_all(frames) if isinstance(r, DtcUpdate)]
    # three BAMs sent (t=0, 1, 2): the first lost a packet, the other two arrive whole
    assert len(dm1s) == 2
    assert all(len(r.dm1.active) == 3 for r in dm1s)


def test_fault_specs() -> None:
    w = parse_fault("tunnel@30+20")
    assert (w.kind, w.start_s, w.duration_s) == ("tunnel", 30, 20)
    assert w.active(30) and w.active(49.9) and not w.active(50)
    plan = FaultPlan.parse(["dtc@5", "can-silence@1+2"])
    assert plan.active(1.5) == {"can-silence"}
    assert [x.kind for x in plan.fire_once(6)] == ["dtc", "can-silence"]
    assert plan.fire_once(7) == []
    with pytest.raises(FaultSpecError):
        parse_fault("meteor@3")


def test_fms_pgns_round_trip_through_the_gateway_decoder() -> None:
    tacho = TachoState(driver1=WorkingState.DRIVE, card1=True, time_state1=1, motion=True,
                       driver1_id="DF000000012345601")
    s = state(speed_kmh=85.0, accel_ms2=0.0, gear=12, phase=Phase.DRIVING, tacho=tacho,
              def_level_pct=63.2, battery_v=27.8, ambient_c=-5.5, service_km=12_345.0,
              trip_km=123.4, axle_kg=(7100.0, 11400.0, 11500.0), trip_fuel_l=42.125,
              total_fuel_l=123456.789, odometer_km=345678.125)
    frames = [Frame(j1939_out.can_id(p, pgn, sa), enc(s))
              for _n, pgn, p, sa, _per, enc in j1939_out.CYCLIC]
    v = values_of(frames)
    assert v["selected_gear"] == 12
    assert v["current_gear"] == 12
    assert v["cruise_control_active"] is True  # steady 85 km/h
    assert v["clutch_switch"] is False
    assert v["pto_state"] == 0
    assert v["brake_pedal_pct"] == 0.0
    assert v["abs_active"] is False
    assert v["driver1_working_state"] == int(WorkingState.DRIVE)
    assert v["driver2_working_state"] == int(WorkingState.REST)
    assert v["driver1_card_present"] is True
    assert v["driver2_card_present"] is False
    assert v["driver1_time_state"] == 1
    assert v["tacho_vehicle_motion"] is True
    assert v["tacho_overspeed"] is False
    assert v["tacho_reverse"] is False
    assert v["tacho_speed_kmh"] == pytest.approx(85.0, abs=0.01)
    assert v["def_tank_level_pct"] == pytest.approx(63.2)
    assert v["battery_potential_v"] == pytest.approx(27.8)
    assert v["ambient_air_temp_c"] == pytest.approx(-5.5)
    assert v["service_distance_km"] == pytest.approx(12_345, abs=2.5)  # 5 km/bit
    assert v["trip_distance_km"] == pytest.approx(123.4, abs=0.005)
    assert v["total_fuel_used_l"] == pytest.approx(123456.789)  # HRLFC: 0.001 L/bit
    assert v["trip_fuel_l"] == pytest.approx(42.125)
    assert v["total_distance_km"] == pytest.approx(345678.125, abs=0.005)
    assert (v["axle1_weight_kg"], v["axle2_weight_kg"], v["axle3_weight_kg"]) == (
        7100.0, 11400.0, 11500.0)


def test_schedule_claims_addresses_and_sends_di_over_bam() -> None:
    truck = Truck(load_route("a9-munich-nuremberg"), seed=1, params=TruckParams(fault_every_s=0))
    truck.step(40)
    assert truck.state.tacho.card1
    sched = Schedule(request_every_s=0)
    dec = J1939Decoder()
    t = 0.0
    while t < 12.0:
        for i, f in enumerate(sched.due(t, truck.state)):
            dec.feed(round(t * 1000) + i, f.arbitration_id, f.data)
        t += 0.01
    ident = dec.identity
    assert sorted(ident.names) == sorted(sa for sa, _fn in j1939_out.ECUS)
    assert ident.names[j1939_out.SA_TACHO].function == 38
    assert ident.drivers_dict() == {"EE": {"driver1": truck.state.tacho.driver1_id or ""}}
    assert ident.fms_dict()["27"]["version"] == "0400"
    assert dec.tp.counters["completed"] >= 2  # a DI at t=0 and t=10 s
