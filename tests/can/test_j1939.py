"""Pure J1939 codec: identifier split and the decode table, from hand-made bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.j1939 import (
    PGN_TABLE,
    J1939Decoder,
    J1939Id,
    Kind,
    PgnSpec,
    Signal,
    SignalUpdate,
    build_table,
    make_id,
    request_payload,
    split_id,
)


@pytest.mark.parametrize(
    ("can_id", "expected"),
    [
        (0x0CF00400, J1939Id(3, 61444, 0x00, 0xFF)),  # EEC1, PDU2
        (0x18FEF100, J1939Id(6, 65265, 0x00, 0xFF)),  # CCVS1 at priority 6
        (0x0CFEF100, J1939Id(3, 65265, 0x00, 0xFF)),  # ... and at priority 3: same PGN
        (0x18EAFF0B, J1939Id(6, 59904, 0x0B, 0xFF)),  # request, PDU1 to global
        (0x18EA000B, J1939Id(6, 59904, 0x0B, 0x00)),  # request, PDU1 to the engine
        (0x1CECFF00, J1939Id(7, 60416, 0x00, 0xFF)),  # TP.CM
        (0x1CEB3117, J1939Id(7, 60160, 0x17, 0x31)),  # TP.DT to a destination
        (0x19FEF131, J1939Id(6, 0x1FEF1, 0x31, 0xFF)),  # data page 1
        (0x1BFEF131, J1939Id(6, 0x3FEF1, 0x31, 0xFF)),  # extended data page + data page
        (0x00EFFF00, J1939Id(0, 0xEF00, 0x00, 0xFF)),  # PF 239: last PDU1 format
        (0x00F0FF00, J1939Id(0, 0xF0FF, 0x00, 0xFF)),  # PF 240: first PDU2 format
    ],
)
def test_split_id(can_id: int, expected: J1939Id) -> None:
    assert split_id(can_id) == expected


@settings(deadline=None)  # no per-example time limit on a busy CI machine
@given(st.integers(0, 0x3FFFF), st.integers(0, 255), st.integers(0, 255), st.integers(0, 7))
def test_make_id_round_trips(pgn: int, sa: int, da: int, prio: int) -> None:
    got = split_id(make_id(pgn, sa, da=da, priority=prio))
    pdu1 = (pgn >> 8) & 0xFF < 240
    assert got.priority == prio
    assert got.sa == sa
    assert got.pgn == ((pgn & 0x3FF00) if pdu1 else pgn)
    assert got.da == (da if pdu1 else 0xFF)


def test_request_payload_is_little_endian_pgn() -> None:
    assert request_payload(65253) == bytes.fromhex("E5FE00")
    assert make_id(59904, 0xF9) == 0x18EAFFF9


def decode(can_id: int, hexdata: str) -> dict[str, object]:
    out = J1939Decoder().feed(0, can_id, bytes.fromhex(hexdata))
    assert isinstance(out, SignalUpdate)
    return dict(out.values)


# one case per PGN of the table: frame, expected values; absent keys must be absent
CASES = [
    ("EEC1", 0x0CF00400, "F07D8A5E1400F084", {"engine_torque_pct": 13, "engine_speed_rpm": 651.75}),
    ("EEC1 n/a", 0x0CF00400, "FFFFFFFFFFFFFFFF", {}),
    ("EEC1 error", 0x0CF00400, "FFFF7DFEFEFFFFFF", {"engine_torque_pct": 0}),
    ("EEC2", 0x0CF00300, "D1FA28FFFFFFFFFF",
     {"accelerator_pedal_pct": 100.0, "engine_load_pct": 40}),
    ("EEC2 pedal error", 0x0CF00300, "D1FE28FFFFFFFFFF", {"engine_load_pct": 40}),
    ("CCVS1", 0x18FEF100, "F7004B10FFFFFFFF",
     {"vehicle_speed_kmh": 75.0, "parking_brake": True, "brake_switch": True,
      "cruise_control_active": False, "clutch_switch": False}),
    ("CCVS1 speed FF FF", 0x18FEF100, "F3FFFF00FFFFFFFF",
     {"parking_brake": False, "brake_switch": False, "cruise_control_active": False,
      "clutch_switch": False}),
    ("CCVS1 speed FE xx", 0x0CFEF100, "FFFFFEFFFFFFFFFF", {}),
    ("CCVS1 max valid", 0x18FEF100, "FFFFFAFFFFFFFFFF", {"vehicle_speed_kmh": 250.996}),
    ("DD", 0x18FEFC17, "FFBBFFFFFFFFFFFF", {"fuel_level_pct": 74.8}),
    ("LFE", 0x18FEF200, "3500000CFFFFFFFF",
     {"fuel_rate_lph": 2.65, "instant_fuel_economy_kmpl": 6.0}),
    ("LFC", 0x18FEE900, "10000000A0860100", {"trip_fuel_l": 8.0, "total_fuel_used_l": 50000.0}),
    ("LFC total n/a", 0x18FEE900, "10000000FFFFFFFF", {"trip_fuel_l": 8.0}),
    ("HOURS", 0x18FEE500, "A0860100FFFFFFFF", {"engine_hours_h": 5000.0}),
    ("HOURS error", 0x18FEE500, "A08601FEFFFFFFFF", {}),
    ("ET1", 0x18FEEE00, "70FF4025FFFFFFFF", {"coolant_temp_c": 72, "oil_temp_c": 25.0}),
    ("ET1 sub-zero", 0x18FEEE00, "1EFFFFFFFFFFFFFF", {"coolant_temp_c": -10}),
    ("EFL/P1", 0x18FEEF00, "FFFFFF3EFFFFFFFF", {"oil_pressure_kpa": 248}),
    ("VDHR", 0x18FEC117, "40420F00FFFFFFFF", {"total_distance_km": 5000.0}),
    ("VD", 0x18FEE017, "FFFFFFFFB05C6800", {"total_distance_km": 854934.0}),
]


@pytest.mark.parametrize(
    ("name", "can_id", "hexdata", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_decode_table(name: str, can_id: int, hexdata: str, expected: dict[str, object]) -> None:
    got = decode(can_id, hexdata)
    assert got == expected
    for v in got.values():
        assert type(v) in (int, float, bool)


def test_ccvs_ff_ff_never_gives_255_996() -> None:
    got = decode(0x18FEF100, "FFFFFFFFFFFFFFFF")
    assert "vehicle_speed_kmh" not in got
    assert 255.996 not in got.values()


def test_missing_names_reported_for_not_available_signals() -> None:
    out = J1939Decoder().feed(0, 0x18FEF100, bytes.fromhex("F3FFFF00FFFFFFFF"))
    assert isinstance(out, SignalUpdate)
    assert out.missing == ("vehicle_speed_kmh", "pto_state")


def test_match_is_on_pgn_and_sa_not_full_id() -> None:
    d = J1939Decoder()
    a = d.feed(0, 0x18FEF100, bytes.fromhex("FF004BFFFFFFFFFF"))
    b = d.feed(0, 0x0CFEF131, bytes.fromhex("FF004BFFFFFFFFFF"))
    assert isinstance(a, SignalUpdate)
    assert isinstance(b, SignalUpdate)
    assert (a.sa, a.pgn, a.values) == (0x00, 65265, {"vehicle_speed_kmh": 75.0})
    assert (b.sa, b.pgn, b.values) == (0x31, 65265, {"vehicle_speed_kmh": 75.0})


def test_short_frame_counts_a_decode_error_and_keeps_what_it_carries() -> None:
    d = J1939Decoder()
    out = d.feed(0, 0x0CF00400, bytes.fromhex("F07D8A"))
    assert isinstance(out, SignalUpdate)
    assert out.values == {"engine_torque_pct": 13}
    assert d.counters["decode_errors"] == 1


def test_standard_ids_and_unknown_pgns_are_ignored() -> None:
    d = J1939Decoder()
    assert d.feed(0, 0x123, b"\x00" * 8, extended=False) is None
    assert d.feed(0, 0x18FD7C00, b"\x00" * 8) is None
    assert d.counters["ignored"] == 2
    assert d.counters["frames"] == 2


def test_table_is_extensible_data() -> None:
    extra = PgnSpec(65269, "AMB", (Signal("ambient_temp_c", 171, 4, Kind.U16, 0.03125, -273),))
    d = J1939Decoder(build_table([*PGN_TABLE.values(), extra]))
    out = d.feed(0, 0x18FEF500, bytes.fromhex("FFFFFF4025FFFFFF"))
    assert isinstance(out, SignalUpdate)
    assert out.values == {"ambient_temp_c": 25.0}


@settings(deadline=None)  # no per-example time limit on a busy CI machine
@given(st.integers(0, 0x1FFFFFFF), st.binary(max_size=8), st.booleans())
def test_any_frame_never_raises(can_id: int, data: bytes, extended: bool) -> None:
    d = J1939Decoder()
    out = d.feed(0, can_id, data, extended=extended)
    if isinstance(out, SignalUpdate):
        for v in out.values.values():
            assert type(v) in (int, float, bool)
    assert d.counters["frames"] == 1
    split_id(can_id)


@settings(deadline=None)  # no per-example time limit on a busy CI machine
@given(st.sampled_from(sorted(PGN_TABLE)), st.binary(min_size=8, max_size=8))
def test_table_values_respect_not_available(pgn: int, data: bytes) -> None:
    """No decoded value ever comes from a raw field in the error / not-available range."""
    spec = PGN_TABLE[pgn]
    out = J1939Decoder().feed(0, make_id(pgn, 0), data)
    assert isinstance(out, SignalUpdate)
    for sig in spec.signals:
        i = sig.byte - 1
        raw = int.from_bytes(data[i : i + sig.kind.nbytes], "little")
        if sig.kind.width:
            raw = (data[i] >> (sig.bit - 1)) & ((1 << sig.kind.width) - 1)
        assert sig.limit <= sig.kind.max_valid
        assert (sig.name in out.values) == (raw <= sig.limit)
