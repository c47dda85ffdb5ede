"""DBC files: OEM signals decoded with cantools, the not-available rule on raw bits,
matching on PGN, the recording policy, and a DBC that does not parse as a config error.

tests/data/j1939/oem-example.dbc (written for these tests) holds one proprietary PDU2
message (PGN 0xFF0E) with fields of 8, 16, 2, 4, 12, 1 and 16 bits, a copy of EEC1 (the
built-in decoding must win) and an 11-bit message (skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import uuid
from pathlib import Path

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import CanConfig, CanSampling, load_config
from config.dbc_check import dbc_problem
from config.errors import ConfigError
from drivers.can import CanDriver, decode_table
from drivers.dbc import field_name, load_dbc, max_valid_raw
from drivers.j1939 import Decoded, J1939Decoder, SignalUpdate
from gateway.cli import main as cli_main
from gateway.recording.can import CanRecorder, record_decoded

DATA = Path(__file__).parent.parent / "data" / "j1939"
DBC = DATA / "oem-example.dbc"
BROKEN = DATA / "oem-broken.dbc"
OEM_PGN = 0xFF0E

# RetarderTorque 0x96 - 125 = 25 %; AdBlueQuality 0x0172 * 0.1 = 37 %; byte 4 = 0xD5 =
# 11 0101 01: GearboxMode (bits 26-29) 5, TrailerConnected (24-25) 1; OilLevel 12 bits
# 0x0FA * 0.1 = 25 l; DoorOpen (bit 44) 1; BodyTemp 0x2440 * 0.03125 - 273 = 17 degC
GOOD = "967201D5FAF04024"
GOOD_VALUES = {"retarder_torque_pct": 25, "ad_blue_quality_pct": 37.0, "trailer_connected": 1,
               "gearbox_mode": 5, "oil_level_l": 25.0, "door_open": 1, "body_temp_c": 17.0}


def decoder() -> J1939Decoder:
    return J1939Decoder(decode_table(DBC))


def values(d: J1939Decoder, can_id: int, hexdata: str, ts: int = 0) -> dict[str, object]:
    out = d.feed(ts, can_id, bytes.fromhex(hexdata))
    assert isinstance(out, SignalUpdate)
    return dict(out.values)


@pytest.mark.parametrize("can_id", [0x18FF0E21, 0x0CFF0E03, 0x1CFF0EFE])
def test_dbc_message_matched_on_pgn_whatever_priority_and_source(can_id: int) -> None:
    assert values(decoder(), can_id, GOOD) == GOOD_VALUES


@pytest.mark.parametrize(
    ("hexdata", "expected"),
    [
        # every field all ones: not available; a single bit has no such code
        ("FFFFFFFFFFFFFFFF", {"door_open": 1}),
        # 0xFE (8 bits), 0xFE00 (16), 10 (2), 1110 (4) are errors; 12 bits 0xFAF is the
        # largest valid (401.5 l); BodyTemp 0xFEFF is an error
        ("FE00FEFAAFEFFFFE", {"oil_level_l": 401.5, "door_open": 0}),
        # 0xFA, 0xFAFF, 01, 1101 (13), 0xFB0 (just above 0xFAF) -> absent, 0xFAFF body
        ("FAFFFAB5B0EFFFFA", {"retarder_torque_pct": 125, "ad_blue_quality_pct": 6425.5,
                              "trailer_connected": 1, "gearbox_mode": 13, "door_open": 0,
                              "body_temp_c": 1734.96875}),
    ],
)
def test_dbc_not_available_rule_on_raw_bits(hexdata: str, expected: dict[str, object]) -> None:
    assert values(decoder(), 0x18FF0E21, hexdata) == expected


def test_short_frame_keeps_what_it_carries() -> None:
    got = values(decoder(), 0x18FF0E21, "9672")
    assert got == {"retarder_torque_pct": 25}


def test_builtin_decoding_wins_and_11bit_messages_are_skipped() -> None:
    specs = load_dbc(DBC)
    assert sorted(s.name for s in specs) == ["EEC1_OEM", "OEM_PROP1"]
    table = decode_table(DBC)
    assert table[OEM_PGN].name == "OEM_PROP1"
    assert table[61444].name == "EEC1"
    got = values(J1939Decoder(table), 0x0CF00400, "F07D8A5E1400F084")
    assert got == {"engine_torque_pct": 13, "engine_speed_rpm": 651.75}


@pytest.mark.parametrize(
    ("signal", "unit", "name"),
    [("RetarderTorque", "%", "retarder_torque_pct"), ("BodyTemp", "degC", "body_temp_c"),
     ("Speed_kmh", "km/h", "speed_kmh"), ("ABS-State", "", "abs_state"),
     ("OilLevel", "l", "oil_level_l"), ("Odd Unit", "furlong", "odd_unit")],
)
def test_field_names_carry_units(signal: str, unit: str, name: str) -> None:
    assert field_name(signal, unit) == name


def test_max_valid_raw_follows_j1939_71() -> None:
    assert [max_valid_raw(n) for n in (1, 2, 3, 4, 8, 12, 16, 32)] == [
        1, 1, 5, 13, 0xFA, 0xFAF, 0xFAFF, 0xFAFFFFFF]


def test_dbc_signals_go_through_the_recording_policy() -> None:
    d = decoder()
    rec = CanRecorder(CanSampling(min_interval_s=1, max_interval_s=60,
                                  deadbands={"oil_level_l": 5.0}))

    def offer(ts: int, hexdata: str) -> bool:
        out = d.feed(ts, 0x18FF0E21, bytes.fromhex(hexdata))
        assert out is not None
        return record_decoded(rec, ts, out) is not None

    assert offer(0, GOOD)  # first record
    assert not offer(2000, "967201D514F14024")  # oil 0x114 * 0.1 = 27.6 l: inside 5 l
    assert offer(4000, "967201D9FAF04024")  # gearbox mode 6: no deadband -> any change
    assert rec.latest(0x21)["gearbox_mode"] == 6


# --------------------------------------------------------------------------- config


def _toml(tmp_path: Path, dbc: Path) -> Path:
    p = tmp_path / "truck.toml"
    p.write_text(f'truck_id = "T1"\n[mqtt]\nhost = "localhost"\n'
                 f'[can]\ninterface = "virtual"\nchannel = "x"\ndbc_file = "{dbc}"\n')
    return p


def test_good_dbc_loads(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path, DBC))
    assert cfg.can is not None
    assert cfg.can.dbc_file == DBC


def test_broken_dbc_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_toml(tmp_path, BROKEN))
    (line,) = err.value.lines()
    assert "can.dbc_file" in line
    assert "oem-broken.dbc" in line
    assert "line 10" in line
    assert cli_main(["check-config", str(_toml(tmp_path, BROKEN))]) == 78


def test_dbc_without_j1939_messages_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "only11.dbc"
    p.write_text('VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'
                 'BO_ 1024 CLASSIC: 8 ECU\n SG_ X : 0|8@1+ (1,0) [0|255] "" ECU\n')
    problem = dbc_problem(p)
    assert problem is not None
    assert "29-bit" in problem


# --------------------------------------------------------------------------- driver


async def test_driver_decodes_dbc_signals_from_the_bus() -> None:
    channel = f"test-{uuid.uuid4()}"
    got: list[Decoded] = []
    cfg = CanConfig(interface="virtual", channel=channel, dbc_file=DBC)
    driver = CanDriver(cfg, got.extend)
    with can.Bus(interface="virtual", channel=channel) as tx:
        task = asyncio.create_task(driver.run(), name="can-driver")
        try:
            async with asyncio.timeout(5):
                while driver.stats().state != "active":  # noqa: ASYNC110 - no event to wait on
                    await asyncio.sleep(0.01)
                tx.send(can.Message(arbitration_id=0x18FF0E21, data=bytes.fromhex(GOOD),
                                    is_extended_id=True))
                while not got:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    (out,) = got
    assert isinstance(out, SignalUpdate)
    assert (out.sa, out.pgn, out.values) == (0x21, OEM_PGN, GOOD_VALUES)


@settings(deadline=None)  # no per-example time limit on a busy CI machine
@given(st.binary(max_size=8))
def test_dbc_values_never_come_from_not_available_raw(data: bytes) -> None:
    (spec,) = [s for s in load_dbc(DBC) if s.pgn == OEM_PGN]
    got = spec.decode(data)
    if len(data) < 8:
        return  # truncated: what decodes is checked by the full-frame examples
    raw = spec.message.decode(data, decode_choices=False, scaling=False)
    for sig in spec.signals:
        present = sig.name in got
        assert present == (sig.limit < 0 or (raw[sig.dbc_name] & sig.mask) <= sig.limit)


def test_float_signals_keep_their_fraction_and_drop_nan() -> None:
    (spec,) = load_dbc(DATA / "oem-float.dbc")
    assert spec.decode(struct.pack("<f", 2.75) + b"\xff" * 4) == {"flow_rate_lph": 2.75}
    assert spec.decode(struct.pack("<f", math.nan) + b"\xff" * 4) == {}  # never a NaN event
