"""Transport-protocol reassembly and DM1 decoding, from bytes."""

from __future__ import annotations

from pathlib import Path

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import DecodeError
from drivers.dm1 import Dm1, Dtc, decode_dm1
from drivers.j1939 import DtcUpdate, J1939Decoder, SignalUpdate, make_id
from drivers.j1939_tp import MAX_MESSAGE, T1_MS, TpMessage, TpReassembler

DATA = Path(__file__).parent.parent / "data" / "j1939"


def bam(size: int, pgn: int, packets: int | None = None) -> bytes:
    n = (size + 6) // 7 if packets is None else packets
    return bytes([32, size & 0xFF, size >> 8, n, 0xFF]) + pgn.to_bytes(3, "little")


def dts(payload: bytes) -> list[bytes]:
    out = []
    for i in range(0, len(payload), 7):
        chunk = payload[i : i + 7]
        out.append(bytes([i // 7 + 1]) + chunk + b"\xff" * (7 - len(chunk)))
    return out


def send_bam(tp: TpReassembler, sa: int, pgn: int, payload: bytes, t0: int = 0) -> TpMessage | None:
    tp.on_cm(t0, sa, 0xFF, bam(len(payload), pgn))
    got = None
    for i, dt in enumerate(dts(payload)):
        got = tp.on_dt(t0 + 50 * (i + 1), sa, 0xFF, dt)
    return got


# ------------------------------------------------------------------ TP


def test_bam_reassembles() -> None:
    tp = TpReassembler()
    payload = bytes(range(20))
    assert send_bam(tp, 0x00, 65226, payload) == TpMessage(65226, 0x00, 0xFF, payload)
    assert tp.counters["completed"] == 1
    assert tp.active_sessions == 0


def test_pretty_j1939_tp_fixture() -> None:
    """pretty_j1939's test_tp_frames: a 9-byte connection-mode transfer of PGN 0."""
    tp = TpReassembler()
    got = []
    for m in can.CanutilsLogReader(DATA / "pretty_j1939-test_tp_frames.txt"):
        sa, da = m.arbitration_id & 0xFF, (m.arbitration_id >> 8) & 0xFF
        if (m.arbitration_id >> 16) & 0xFF == 0xEC:
            tp.on_cm(0, sa, da, m.data)
        else:
            got.append(tp.on_dt(0, sa, da, m.data))
    assert got[-1] == TpMessage(0, 0x00, 0xFF, bytes([1, 2, 3, 4, 5, 6, 7, 1, 2]))


def test_connection_mode_is_followed_passively() -> None:
    tp = TpReassembler()
    payload = bytes(range(30))
    rts = bytes([16, 30, 0, 5, 0xFF]) + (65226).to_bytes(3, "little")
    tp.on_cm(0, 0x00, 0xF9, rts)
    tp.on_cm(10, 0xF9, 0x00, bytes([17, 5, 1, 0xFF, 0xFF, 0xCA, 0xFE, 0x00]))  # CTS
    got = [tp.on_dt(20 + i, 0x00, 0xF9, d) for i, d in enumerate(dts(payload))]
    assert got[-1] == TpMessage(65226, 0x00, 0xF9, payload)


def test_out_of_order_packet_aborts_session() -> None:
    tp = TpReassembler()
    p = dts(bytes(20))
    tp.on_cm(0, 1, 0xFF, bam(20, 65226))
    assert tp.on_dt(1, 1, 0xFF, p[0]) is None
    assert tp.on_dt(2, 1, 0xFF, p[2]) is None  # packet 2 is missing
    assert tp.on_dt(3, 1, 0xFF, p[1]) is None
    assert tp.counters["out_of_order"] == 1
    assert tp.counters["orphan_dt"] == 1
    assert tp.counters["completed"] == 0


def test_duplicate_packet_is_dropped_and_counted() -> None:
    tp = TpReassembler()
    payload = bytes(range(14))
    p = dts(payload)
    tp.on_cm(0, 1, 0xFF, bam(14, 65226))
    tp.on_dt(1, 1, 0xFF, p[0])
    assert tp.on_dt(2, 1, 0xFF, p[0]) is None
    assert tp.on_dt(3, 1, 0xFF, p[1]) == TpMessage(65226, 1, 0xFF, payload)
    assert tp.counters["duplicate"] == 1


def test_missing_packets_time_out() -> None:
    tp = TpReassembler()
    p = dts(bytes(20))
    tp.on_cm(0, 1, 0xFF, bam(20, 65226))
    tp.on_dt(100, 1, 0xFF, p[0])
    assert tp.expire(100 + T1_MS) == 0
    assert tp.expire(101 + T1_MS) == 1
    assert tp.on_dt(200 + T1_MS, 1, 0xFF, p[1]) is None
    assert tp.counters["timeout"] == 1
    # a late packet after the deadline, without an expire() sweep, also fails
    tp.on_cm(10_000, 2, 0xFF, bam(20, 65226))
    assert tp.on_dt(10_000 + T1_MS + 1, 2, 0xFF, p[0]) is None
    assert tp.counters["timeout"] == 2


@pytest.mark.parametrize(
    ("cm", "counter"),
    [
        (bam(MAX_MESSAGE + 1, 65226, packets=255), "oversize"),
        (bam(20, 65226, packets=9), "bad_announcement"),  # size and packet count disagree
        (bam(8, 65226), "bad_announcement"),  # fits a single frame: not a TP message
    ],
)
def test_bad_announcements_are_rejected(cm: bytes, counter: str) -> None:
    tp = TpReassembler()
    tp.on_cm(0, 1, 0xFF, cm)
    assert tp.counters[counter] == 1
    assert tp.active_sessions == 0


def test_packet_beyond_announced_count_is_oversize() -> None:
    tp = TpReassembler()
    tp.on_cm(0, 1, 0xFF, bam(14, 65226))
    assert tp.on_dt(1, 1, 0xFF, bytes([5]) + bytes(7)) is None
    assert tp.counters["oversize"] == 1


def test_new_bam_from_same_source_replaces_old() -> None:
    tp = TpReassembler()
    for i in range(1000):  # a BAM flood from one source holds one session
        tp.on_cm(i, 7, 0xFF, bam(1785, 65226))
    assert tp.active_sessions == 1
    assert tp.counters["replaced"] == 999


def test_connection_exhaustion_is_bounded_and_refused() -> None:
    tp = TpReassembler(max_sessions=8)
    for sa in range(100):
        tp.on_cm(0, sa, 0xFF, bam(1785, 65226))
    assert tp.active_sessions == 8
    assert tp.counters["exhausted"] == 92
    # sessions in progress are not evicted by the flood: source 0 still completes ...
    payload = bytes(range(255)) * 7
    got = [tp.on_dt(1 + i, 0, 0xFF, d) for i, d in enumerate(dts(payload))]
    assert got[-1] == TpMessage(65226, 0, 0xFF, payload)
    assert tp.counters["orphan_dt"] == 0
    # ... and once the others time out, a newcomer gets a slot
    tp.on_cm(10_000, 200, 0xFF, bam(20, 65226))
    tp.on_cm(10_001, 201, 0xFF, bam(20, 65226))  # table full again: the stale 7 are swept
    assert tp.counters["exhausted"] == 92
    assert tp.counters["timeout"] == 7
    assert tp.active_sessions == 2


def test_abort_closes_session() -> None:
    tp = TpReassembler()
    tp.on_cm(0, 1, 0x02, bytes([16, 20, 0, 3, 0xFF, 0xCA, 0xFE, 0]))
    tp.on_cm(1, 2, 0x01, bytes([255, 1, 0xFF, 0xFF, 0xFF, 0xCA, 0xFE, 0]))
    assert tp.active_sessions == 0
    assert tp.counters["aborted"] == 1


frame = st.tuples(
    st.integers(0, 3000),  # time step
    st.integers(0, 40),  # source
    st.booleans(),  # CM or DT
    st.binary(min_size=0, max_size=8),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(frame, max_size=300))
def test_random_tp_traffic_stays_bounded(frames: list[tuple[int, int, bool, bytes]]) -> None:
    tp = TpReassembler(max_sessions=16)
    t = 0
    for step, sa, is_cm, data in frames:
        t += step
        if is_cm:
            # bias towards valid announcements so DT packets have sessions to hit
            cm = bam(9 + data[1] % 254 * 7, 65226) if len(data) == 8 and data[0] % 2 else data
            tp.on_cm(t, sa, 0xFF, cm)
        else:
            msg = tp.on_dt(t, sa, 0xFF, data)
            assert msg is None or len(msg.data) <= MAX_MESSAGE
        assert tp.active_sessions <= 16
        assert tp.buffered_bytes <= 16 * MAX_MESSAGE


# ------------------------------------------------------------------ DM1


def test_pretty_j1939_dm1_fixture() -> None:
    msgs = list(can.CanutilsLogReader(DATA / "pretty_j1939-test_dm1.log"))
    none, one = (decode_dm1(m.data) for m in msgs)
    off = (("mil", "off"), ("red_stop", "off"), ("amber_warning", "off"), ("protect", "off"))
    assert none == Dm1(lamps=off, active=())
    assert one.lamps_dict()["mil"] == "on"
    assert one.active == (Dtc(spn=91, fmi=3, oc=1),)


def test_dm1_multi_packet_through_decoder() -> None:
    d = J1939Decoder()
    payload = bytes.fromhex("54FF6E000401BE000F02E4040321")  # lamps, 3 DTCs
    cm = bam(len(payload), 65226)
    d.feed(0, make_id(60416, 0x00, priority=7), cm)
    outs = [d.feed(i, make_id(60160, 0x00, priority=7), p) for i, p in enumerate(dts(payload))]
    out = outs[-1]
    assert isinstance(out, DtcUpdate)
    assert out.sa == 0
    assert out.dm1.lamps_dict() == {
        "mil": "on", "red_stop": "on", "amber_warning": "on", "protect": "off"
    }
    got = [(x.spn, x.fmi, x.oc) for x in out.dm1.active]
    assert got == [(110, 4, 1), (190, 15, 2), (1252, 3, 33)]


def test_dm1_high_spn_bits_and_cm() -> None:
    # b3=00 b4=F0 b5=FF b6=FF: SPN 0x7F000 (3 high bits from b5), FMI 31, CM 1, OC 127;
    # only all four bytes FF is padding
    dm1 = decode_dm1(bytes.fromhex("00FF00F0FFFF"))
    assert dm1.active == (Dtc(spn=0x7F000, fmi=31, oc=127, cm=1),)
    assert decode_dm1(bytes.fromhex("00FFFFFFFFFF")).active == ()


def test_dm1_too_short_raises_decode_error_and_is_counted() -> None:
    with pytest.raises(DecodeError):
        decode_dm1(b"\x00\xff\x00")
    d = J1939Decoder()
    assert d.feed(0, 0x18FECA00, b"\x00\xff\x00") is None
    assert d.counters["decode_errors"] == 1


def test_dm1_lamp_not_available_is_absent() -> None:
    dm1 = decode_dm1(bytes.fromhex("FFFF00000000FFFF"))
    assert dm1.lamps_dict() == {}
    dm1 = decode_dm1(bytes.fromhex("C3FF00000000FFFF"))  # MIL n/a, protect n/a
    assert dm1.lamps_dict() == {"red_stop": "off", "amber_warning": "off"}


@settings(deadline=None)  # no per-example time limit on a busy CI machine
@given(st.binary(max_size=64))
def test_dm1_any_bytes(data: bytes) -> None:
    d = J1939Decoder()
    out = d.feed(0, 0x18FECA00, data)
    assert out is None or isinstance(out, DtcUpdate | SignalUpdate)
