"""Replay of real J1939 captures (CSS Electronics truck log, pretty_j1939 fixtures)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import can
import pytest

from config import CanSampling
from config.events import encode_body
from drivers.j1939 import DtcUpdate, J1939Decoder, SignalUpdate, split_id
from gateway.recording.can import CanRecorder

DATA = Path(__file__).parent.parent / "data" / "j1939"
TRUCK_LOG = DATA / "css_j1939_truck.log"

#: signal -> plausible (low, high) on a truck; the log is an idling truck
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "engine_speed_rpm": (550, 800),  # idle
    "engine_torque_pct": (0, 30),
    "engine_load_pct": (0, 30),
    "accelerator_pedal_pct": (0, 100),
    "vehicle_speed_kmh": (0, 0),  # parked
    "fuel_level_pct": (5, 100),
    "fuel_rate_lph": (0.5, 10),  # idle consumption
    "instant_fuel_economy_kmpl": (0, 50),
    "coolant_temp_c": (40, 110),
    "oil_temp_c": (40, 130),
    "oil_pressure_kpa": (100, 700),
    "total_distance_km": (1, 3_000_000),
    # FMS signals this truck sends (values checked by hand against the log's bytes)
    "pto_state": (0, 0),  # CCVS1 byte 7 = 0x00: off/disabled
    "battery_potential_v": (12, 30),  # VEP1 bytes 5-6 = 09 01: 13.25 V
    "ambient_air_temp_c": (-40, 60),  # AMB bytes 4-5 = D3 23: 13.59 degC
    "barometric_pressure_kpa": (60, 110),  # AMB byte 1 = C5: 98.5 kPa
    "def_tank_level_pct": (0, 100),  # AT1T1I byte 1 = FA: 100 %
    "def_tank_temp_c": (-40, 80),  # AT1T1I byte 2 = 3A: 18 degC
}
BOOLS = {"brake_switch", "parking_brake", "cruise_control_active", "clutch_switch"}


@pytest.fixture(scope="module")
def replay() -> tuple[J1939Decoder, dict[str, list[object]], list[DtcUpdate], Counter[int]]:
    dec = J1939Decoder()
    values: dict[str, list[object]] = {}
    dm1s: list[DtcUpdate] = []
    bams: Counter[int] = Counter()
    for m in can.CanutilsLogReader(TRUCK_LOG):
        ts = round(m.timestamp * 1000)
        jid = split_id(m.arbitration_id)
        if jid.pgn == 60416 and m.data[0] == 32:
            bams[m.data[5] | m.data[6] << 8 | m.data[7] << 16] += 1
        out = dec.feed(ts, m.arbitration_id, m.data, extended=m.is_extended_id)
        if isinstance(out, SignalUpdate):
            for k, v in out.values.items():
                values.setdefault(k, []).append(v)
        elif isinstance(out, DtcUpdate):
            dm1s.append(out)
    return dec, values, dm1s, bams


def test_every_frame_is_read(replay: tuple[J1939Decoder, dict[str, list[object]],
                                           list[DtcUpdate], Counter[int]]) -> None:
    dec = replay[0]
    assert dec.counters["frames"] == 45_571
    assert dec.counters["decode_errors"] == 0


def test_signals_in_plausible_ranges(replay: tuple[J1939Decoder, dict[str, list[object]],
                                                   list[DtcUpdate], Counter[int]]) -> None:
    values = replay[1]
    assert set(values) == set(PLAUSIBLE) | BOOLS  # every signal the log carries is decoded
    for name, vs in values.items():
        if name in BOOLS:
            assert {type(v) for v in vs} == {bool}, name
            continue
        lo, hi = PLAUSIBLE[name]
        nums = [float(v) for v in vs if isinstance(v, int | float)]
        assert len(nums) == len(vs)
        assert lo <= min(nums), (name, min(nums))
        assert max(nums) <= hi, (name, max(nums))
    # 12,719 EEC1 frames at 10 ms: engine speed is there nearly every time
    assert len(values["engine_speed_rpm"]) > 12_000


def test_every_bam_is_reassembled(replay: tuple[J1939Decoder, dict[str, list[object]],
                                                list[DtcUpdate], Counter[int]]) -> None:
    dec, _, dm1s, bams = replay
    assert sum(bams.values()) == 152
    assert dec.tp.counters["completed"] == 152
    assert dec.tp.errors == 0
    assert dec.counters["tp_messages"] == 152
    assert len(dm1s) == bams[65226] == 127


def test_dm1_codes(replay: tuple[J1939Decoder, dict[str, list[object]],
                                 list[DtcUpdate], Counter[int]]) -> None:
    dm1s = replay[2]
    first = dm1s[0]
    assert first.sa == 0
    assert first.dm1.lamps_dict() == {"mil": "on", "red_stop": "off", "amber_warning": "off"}
    assert [(d.spn, d.fmi, d.oc) for d in first.dm1.active] == [
        (980, 9, 126), (3216, 20, 2), (609, 9, 1), (609, 12, 3),
    ]
    assert {d.dm1.key() for d in dm1s} == {first.dm1.key()}


def test_replay_through_recorder_defaults_and_every_frame() -> None:
    dec = J1939Decoder()
    default = CanRecorder(CanSampling())
    every = CanRecorder(CanSampling(min_interval_s=0, max_interval_s=0))
    engine = dtc = decoded = 0
    for m in can.CanutilsLogReader(TRUCK_LOG):
        ts = round(m.timestamp * 1000)
        out = dec.feed(ts, m.arbitration_id, m.data)
        if isinstance(out, SignalUpdate):
            decoded += 1
            ev = default.on_signals(ts, out.sa, out.values, pgn=out.pgn, missing=out.missing)
            if ev is not None:
                engine += 1
                encode_body(ev)
            assert every.on_signals(ts, out.sa, out.values, pgn=out.pgn) is not None
        elif isinstance(out, DtcUpdate):
            lamps = out.dm1.lamps_dict()
            ev = default.on_dtc(ts, out.sa, lamps, [d.as_dict() for d in out.dm1.active])
            if ev is not None:
                dtc += 1
                encode_body(ev)
    # 127 s of an idling truck: the first record plus two heartbeats, one DM1 state
    assert 2 <= engine <= 10
    assert dtc == 1
    assert every.engine_events == decoded


def test_pretty_j1939_candump() -> None:
    dec = J1939Decoder()
    got = {}
    for m in can.CanutilsLogReader(DATA / "pretty_j1939-candump.log"):
        out = dec.feed(0, m.arbitration_id, m.data)
        if isinstance(out, SignalUpdate):
            got.update(out.values)
    assert got == {"total_distance_km": 854934.0, "engine_speed_rpm": 649.0,
                   "engine_torque_pct": 10}


def test_pretty_j1939_request() -> None:
    (m,) = list(can.CanutilsLogReader(DATA / "pretty_j1939-test_requests.log"))
    jid = split_id(m.arbitration_id)
    assert (jid.pgn, jid.sa, jid.da) == (59904, 0x0B, 0xFF)
    assert int.from_bytes(m.data[:3], "little") == 65260  # vehicle identification
    assert J1939Decoder().feed(0, m.arbitration_id, m.data) is None
