"""FMS-Standard 4 / J1939-71 signals: each PGN from a frame worked out by hand.

Each case states the raw bytes and, in the comment, the arithmetic from the SPN's
definition (byte numbered from 1, little-endian; bits numbered from 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import CanConfig
from drivers.can import CanDriver, CanState
from drivers.j1939 import HIRES_HOLD_MS, J1939Decoder, SignalUpdate, make_id
from drivers.j1939_fms import MAX_DRIVER_ID, decode_di, decode_fms, decode_name


def feed(d: J1939Decoder, can_id: int, hexdata: str, ts: int = 0) -> SignalUpdate:
    out = d.feed(ts, can_id, bytes.fromhex(hexdata))
    assert isinstance(out, SignalUpdate)
    return out


CASES = [
    # CCVS1 byte 4 = 0x4D = 01 00 11 01: clutch on (7-8), brake off (5-6), cruise active (1-2);
    # byte 7 = 0xE5: PTO state (bits 1-5) 00101 = 5 "set"; speed 0x4B00 / 256 = 75 km/h
    ("CCVS1 cruise clutch pto", 0x18FEF100, "FF004B4DFFFFE5FF",
     {"vehicle_speed_kmh": 75.0, "cruise_control_active": True, "brake_switch": False,
      "clutch_switch": True, "pto_state": 5}),
    # PTO 11111 not available, cruise 10 error, clutch 11 not available
    ("CCVS1 n/a states", 0x18FEF100, "FFFFFFFEFFFFFFFF", {}),
    # ETC2: selected gear 0x80 - 125 = 3, current gear 0x7F - 125 = 2
    ("ETC2", 0x18F00503, "80FFFF7FFFFFFFFF", {"selected_gear": 3, "current_gear": 2}),
    # reverse 0x7C = -1; neutral 0x7D = 0
    ("ETC2 reverse", 0x18F00503, "7CFFFF7DFFFFFFFF", {"selected_gear": -1, "current_gear": 0}),
    # 0xFB "park" is outside 0..250: absent; 0xFE error: absent
    ("ETC2 park / error", 0x18F00503, "FBFFFFFEFFFFFFFF", {}),
    # EBC1 byte 1 = 0xDF = 11 01 11 11: ABS active (bits 5-6 = 01); pedal 0x7D * 0.4 = 50 %
    ("EBC1", 0x18F0010B, "DF7DFFFFFFFFFFFF", {"abs_active": True, "brake_pedal_pct": 50.0}),
    # ABS 10 = error, pedal 0xFE = error
    ("EBC1 error", 0x18F0010B, "EFFEFFFFFFFFFFFF", {}),
    # TCO1 byte 1 = 0x43 = 01 000 011: motion on, driver 2 rest (0), driver 1 drive (3);
    # byte 2 = 0x10: overspeed 00, driver 1 card 01 present, time state 0000;
    # byte 3 = 0xC0: driver 2 card 00 absent, time state 0000; byte 4 = 0: forward;
    # bytes 7-8 = 0x5000 / 256 = 80 km/h
    ("TCO1", 0x0CFE6CEE, "4310C000FFFF0050",
     {"driver1_working_state": 3, "driver2_working_state": 0, "tacho_vehicle_motion": True,
      "driver1_time_state": 0, "driver1_card_present": True, "tacho_overspeed": False,
      "driver2_time_state": 0, "driver2_card_present": False, "tacho_reverse": False,
      "tacho_speed_kmh": 80.0}),
    # byte 1 = 0xFE = 11 111 110: driver 1 "110" error, driver 2 "111" n/a, motion n/a;
    # byte 2 = 0x32 = 00 11 0010: card n/a, time state 2 (4.5 h reached), no overspeed;
    # byte 4 = 0x40: direction 01 reverse
    ("TCO1 error and n/a", 0x0CFE6CEE, "FE32FF40FFFFFFFF",
     {"driver1_time_state": 2, "tacho_overspeed": False, "tacho_reverse": True}),
    # working state 100 (4) is "not used": not a value either
    ("TCO1 unused state", 0x0CFE6CEE, "FCFFFFFFFFFFFFFF", {}),
    # SERV bytes 2-3 = 0x8167 = 33127 * 5 - 160635 = 5000 km to the next service
    ("SERV", 0x18FEC017, "FF6781FFFFFFFFFF", {"service_distance_km": 5000}),
    # 0x7CB7 = 31927 * 5 - 160635 = -1000: overdue by 1000 km
    ("SERV overdue", 0x18FEC017, "FFB77CFFFFFFFFFF", {"service_distance_km": -1000}),
    ("SERV n/a", 0x18FEC017, "FFFFFFFFFFFFFFFF", {}),
    # AMB (the real log's bytes): 0xC5 * 0.5 = 98.5 kPa; 0x23D3 * 0.03125 - 273 = 13.59 degC
    ("AMB", 0x18FEF500, "C5FFFFD323FFFFFF",
     {"barometric_pressure_kpa": 98.5, "ambient_air_temp_c": 13.59}),
    # 0x20E0 = 8416 * 0.03125 - 273 = -10 degC
    ("AMB frost", 0x18FEF500, "FFFFFFE020FFFFFF", {"ambient_air_temp_c": -10.0}),
    ("AMB error", 0x18FEF500, "FEFFFF00FEFFFFFF", {}),
    # VEP1: charging 0x0230 * 0.05 = 28.0 V, battery 0x0228 * 0.05 = 27.6 V (24 V system)
    ("VEP1", 0x18FEF700, "FFFF30022802FFFF",
     {"charging_potential_v": 28.0, "battery_potential_v": 27.6}),
    ("VEP1 n/a", 0x18FEF700, "FFFFFFFFFFFFFFFF", {}),
    # AT1T1I: DEF level 0x7D * 0.4 = 50 %, DEF temperature 0x41 - 40 = 25 degC
    ("AT1T1I", 0x18FE5600, "7D41FFFFFFFFFFFF", {"def_tank_level_pct": 50.0, "def_tank_temp_c": 25}),
    ("AT1T1I n/a", 0x18FE5600, "FFFEFFFFFFFFFFFF", {}),
    # HRLFC: trip 0x3039 = 12345 mL, total 0x075BCD15 = 123456789 mL
    ("HRLFC", 0x18FD0900, "3930000015CD5B07",
     {"trip_fuel_l": 12.345, "total_fuel_used_l": 123456.789}),
    ("HRLFC total error", 0x18FD0900, "39300000000000FE", {"trip_fuel_l": 12.345}),
    # VDHR: total 0x000F4240 * 5 m = 5000 km, trip 0x2710 * 5 m = 50 km
    ("VDHR trip", 0x18FEC117, "40420F0010270000",
     {"total_distance_km": 5000.0, "trip_distance_km": 50.0}),
    # VD: trip 0x2710 * 0.125 = 1250 km, total 0x00685CB0 * 0.125 = 854934 km
    ("VD trip", 0x18FEE017, "10270000B05C6800",
     {"trip_distance_km": 1250.0, "total_distance_km": 854934.0}),
    # VW: axle location 0x1F (axle 1), 0x3778 = 14200 * 0.5 = 7100 kg; trailer, cargo n/a
    ("VW axle 1", 0x18FEEA2F, "1F7837FFFFFFFFFF", {"axle1_weight_kg": 7100.0}),
    # axle 2: 0x59D8 = 23000 * 0.5 = 11500 kg; trailer 0x2710 * 2 = 20000 kg; cargo 0x1388 * 2
    ("VW axle 2", 0x18FEEA2F, "2FD8591027881300",
     {"axle2_weight_kg": 11500.0, "trailer_weight_kg": 20000, "cargo_weight_kg": 10000}),
    ("VW n/a", 0x18FEEA2F, "2FFFFEFFFFFFFFFF", {}),
    # PTODE (PGN 64932 = 0xFDA4): byte 7 = 0xFD = 111111 01: at least one PTO engaged
    ("PTODE engaged", 0x18FDA400, "FFFFFFFFFFFFFDFF", {"pto_engaged": True}),
    ("PTODE none", 0x18FDA400, "FFFFFFFFFFFFFCFF", {"pto_engaged": False}),
    # 10 error, 11 not available: absent
    ("PTODE error", 0x18FDA400, "FFFFFFFFFFFFFEFF", {}),
    ("PTODE n/a", 0x18FDA400, "FFFFFFFFFFFFFFFF", {}),
]


@pytest.mark.parametrize(("name", "can_id", "hexdata", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_fms_signals(name: str, can_id: int, hexdata: str, expected: dict[str, object]) -> None:
    got = feed(J1939Decoder(), can_id, hexdata).values
    assert got == expected
    for v in got.values():
        assert type(v) in (int, float, bool)


def test_vw_reports_not_available_axle_as_missing() -> None:
    out = feed(J1939Decoder(), 0x18FEEA2F, "2FFFFEFFFFFFFFFF")
    assert out.missing == ("axle2_weight_kg", "trailer_weight_kg", "cargo_weight_kg")


# --------------------------------------------------------------------------- high resolution


def test_vdhr_is_preferred_over_vd_from_the_same_source() -> None:
    d = J1939Decoder()
    # before any VDHR, VD gives the distance
    assert feed(d, 0x18FEE017, "10270000B05C6800", 0).values["total_distance_km"] == 854934.0
    feed(d, 0x18FEC117, "40420F0010270000", 100)
    muted = feed(d, 0x18FEE017, "10270000B05C6800", 200)
    assert muted.values == {}
    assert muted.missing == ()  # not "not available": the VDHR value must stay recorded
    assert d.counters["superseded"] == 1
    # another source's VD is not affected
    other = feed(d, 0x18FEE021, "10270000B05C6800", 200)
    assert other.values["total_distance_km"] == 854934.0
    # the VDHR went silent: VD takes over again
    back = feed(d, 0x18FEE017, "10270000B05C6800", 100 + HIRES_HOLD_MS + 1)
    assert back.values["total_distance_km"] == 854934.0


def test_hrlfc_is_preferred_over_lfc() -> None:
    d = J1939Decoder()
    feed(d, 0x18FD0900, "3930000015CD5B07", 0)
    lfc = feed(d, 0x18FEE900, "10000000A0860100", 1000)
    assert lfc.values == {}


# --------------------------------------------------------------------------- identity


def test_address_claimed_gives_the_name_per_source_and_follows_a_move() -> None:
    d = J1939Decoder()
    # NAME = 1 (identity) | 101 << 21 (manufacturer) | 1 << 63 (arbitrary address capable)
    data = "0100A00C00000080"
    assert d.feed(0, 0x18EEFF00, bytes.fromhex(data)) is None
    name = d.identity.names[0x00]
    assert (name.identity_number, name.manufacturer, name.function) == (1, 101, 0)
    assert name.arbitrary_address
    assert d.identity.names_dict() == {
        "00": {"name": "800000000CA00001", "manufacturer": 101, "function": 0, "identity": 1}}
    d.feed(1, 0x18EEFF01, bytes.fromhex(data))  # the same ECU now claims address 0x01
    assert list(d.identity.names_dict()) == ["01"]
    assert d.identity.moves == 1
    assert d.counters["identity"] == 2


def test_cannot_claim_and_short_claims_are_not_names() -> None:
    d = J1939Decoder()
    d.feed(0, 0x18EEFFFE, bytes.fromhex("0100A00C00000080"))  # SA 254: cannot claim
    d.feed(0, 0x18EEFF03, bytes.fromhex("0100A0"))
    assert d.identity.names == {}
    assert d.counters["decode_errors"] == 2
    assert decode_name(b"\x00" * 7) is None


def test_fms_identity() -> None:
    # byte 1 = 0xF1 = 11 11 00 01: requests (3-4) 00 no, diagnostics (1-2) 01 yes; "0400"
    d = J1939Decoder()
    d.feed(0, 0x18FDD127, bytes.fromhex("F130343030FFFFFF"))
    assert d.identity.fms_dict() == {
        "27": {"version": "0400", "diagnostics": True, "requests": False}}
    na = decode_fms(bytes.fromhex("FFFFFFFFFFFFFFFF"))
    assert na is not None
    assert na.as_dict() == {}


def _bam(pgn: int, payload: bytes, sa: int) -> list[tuple[int, bytes]]:
    n = (len(payload) + 6) // 7
    cm = bytes([32, len(payload) & 0xFF, len(payload) >> 8, n, 0xFF]) + pgn.to_bytes(3, "little")
    frames = [(make_id(0xEC00, sa, priority=7), cm)]
    for i in range(n):
        chunk = payload[i * 7:(i + 1) * 7].ljust(7, b"\xff")
        frames.append((make_id(0xEB00, sa, priority=7), bytes([i + 1]) + chunk))
    return frames


def test_driver_identification_over_bam() -> None:
    d = J1939Decoder()
    payload = b"DF00000012345601*DF00000065432102*"  # 34 bytes: 5 TP.DT packets
    for i, (can_id, data) in enumerate(_bam(0xFE6B, payload, 0xEE)):
        assert d.feed(i * 50, can_id, data) is None
    assert d.identity.drivers_dict() == {
        "EE": {"driver1": "DF00000012345601", "driver2": "DF00000065432102"}}
    assert d.counters["tp_messages"] == 1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"ABC*DEF*", ("ABC", "DEF")),
        (b"ABC**", ("ABC", None)),  # no second driver
        (b"**\xff\xff", (None, None)),
        (b"ABC*DE", ("ABC", None)),  # truncated second field
        (b"\xff" * 8, (None, None)),
        (b"A" * 100 + b"*", ("A" * MAX_DRIVER_ID, None)),
    ],
)
def test_decode_di(payload: bytes, expected: tuple[str | None, str | None]) -> None:
    assert decode_di(payload) == expected


async def test_driver_stats_list_names_fms_and_drivers() -> None:
    channel = f"test-{uuid.uuid4()}"
    driver = CanDriver(CanConfig(interface="virtual", channel=channel), lambda batch: None)
    frames = [(0x18EEFF00, bytes.fromhex("0100A00C00000080")),
              (0x18FDD127, bytes.fromhex("F130343030FFFFFF")),
              *_bam(0xFE6B, b"DF00000012345601**", 0xEE)]
    with can.Bus(interface="virtual", channel=channel) as tx:
        task = asyncio.create_task(driver.run(), name="can-driver")
        try:
            async with asyncio.timeout(5):
                while driver.state is not CanState.ACTIVE:  # noqa: ASYNC110 - no event
                    await asyncio.sleep(0.01)
                for can_id, data in frames:
                    tx.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))
                while driver.stats().frames_total < len(frames):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    stats = driver.stats()
    assert stats.names == {
        "00": {"name": "800000000CA00001", "manufacturer": 101, "function": 0, "identity": 1}}
    assert stats.fms == {"27": {"version": "0400", "diagnostics": True, "requests": False}}
    assert stats.drivers == {"EE": {"driver1": "DF00000012345601"}}
    assert (stats.address_claims, stats.address_moves) == (1, 0)


@settings(deadline=None)  # no per-example time limit on a busy CI machine
@given(st.sampled_from([0x18FEEA2F, 0x18EEFF00, 0x18FDD127, 0x18FE6BEE]),
       st.binary(max_size=8), st.integers(0, 253))
def test_identity_and_weight_frames_never_raise(can_id: int, data: bytes, sa: int) -> None:
    d = J1939Decoder()
    out = d.feed(0, (can_id & ~0xFF) | sa, data)
    if isinstance(out, SignalUpdate):
        assert all(type(v) in (int, float) for v in out.values.values())
    ids = d.identity.drivers.get(sa, (None, None))
    assert all(i is None or len(i) <= MAX_DRIVER_ID for i in ids)
    assert len(d.identity.names) <= 1


def test_simulated_truck_works_a_pto_stop_with_ptode_and_ccvs1() -> None:
    """The simulator's crane stop: PTODE says engaged and CCVS1's PTO state is 5 (set);
    driving, both say off."""
    from sim.j1939_out import ccvs1, ptode  # noqa: PLC0415
    from sim.route import load_route  # noqa: PLC0415
    from sim.truck import Phase, Truck, TruckParams  # noqa: PLC0415

    truck = Truck(load_route("hamburg-port-loop"), seed=1,
                  params=TruckParams(start_parked_s=1, warmup_s=1, fault_every_s=0))
    seen: dict[bool, dict[str, float | int | bool]] = {}
    for _ in range(4000):  # 4000 s of model time at most
        st = truck.step(1.0)
        if st.phase in (Phase.DWELL, Phase.DRIVING):
            d = J1939Decoder()
            values = {**feed(d, 0x18FDA400, ptode(st).hex()).values,
                      **feed(d, 0x18FEF100, ccvs1(st).hex()).values}
            seen.setdefault(st.pto, values)
        if True in seen and False in seen:
            break
    assert seen[True]["pto_engaged"] is True and seen[True]["pto_state"] == 5
    assert seen[False]["pto_engaged"] is False and seen[False]["pto_state"] == 0
