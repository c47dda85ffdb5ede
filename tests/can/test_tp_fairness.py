"""Transport-protocol sessions are shared fairly: a flood never starves the engine's DM1."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.j1939_tp import CM_BAM, CM_RTS, MAX_PER_SOURCE, MAX_SESSIONS, TpReassembler

DM1 = 65226
ENGINE = 0x00
GLOBAL = 0xFF


def cm(ctrl: int, size: int, pgn: int = DM1) -> bytes:
    return bytes([ctrl, size & 0xFF, size >> 8, (size + 6) // 7, 0xFF,
                  pgn & 0xFF, (pgn >> 8) & 0xFF, pgn >> 16])


def bam_transfer(tp: TpReassembler, ts: int, sa: int, payload: bytes) -> bytes | None:
    """A whole BAM from ``sa``: announcement then DT packets 50 ms apart."""
    tp.on_cm(ts, sa, GLOBAL, cm(CM_BAM, len(payload)))
    out = None
    for i in range(0, len(payload), 7):
        ts += 50
        chunk = payload[i:i + 7].ljust(7, b"\xff")
        msg = tp.on_dt(ts, sa, GLOBAL, bytes([i // 7 + 1]) + chunk)
        if msg is not None:
            out = msg.data
    return out


PAYLOAD = bytes(range(20))


def test_a_flood_of_new_sources_does_not_starve_an_engine_that_talked_before() -> None:
    tp = TpReassembler()
    assert bam_transfer(tp, 0, ENGINE, PAYLOAD) == PAYLOAD  # the engine's DM1, before the flood
    # 64 spoofed sources announce BAMs that never complete, filling the table
    for i, sa in enumerate(range(0x80, 0xC0)):
        tp.on_cm(1000 + i, sa, GLOBAL, cm(CM_BAM, 1785))
    assert tp.active_sessions == MAX_SESSIONS
    assert bam_transfer(tp, 1100, ENGINE, PAYLOAD) == PAYLOAD
    assert tp.counters["evicted"] >= 1 and tp.counters["exhausted"] >= 1
    # and again while the flood goes on
    for i, sa in enumerate(range(0xC0, 0xF0)):
        tp.on_cm(1300 + i, sa, GLOBAL, cm(CM_BAM, 1785))
    assert bam_transfer(tp, 1400, ENGINE, PAYLOAD) == PAYLOAD


def test_an_engine_transfer_in_progress_survives_a_flood() -> None:
    tp = TpReassembler()
    assert bam_transfer(tp, 0, ENGINE, PAYLOAD) == PAYLOAD
    tp.on_cm(1000, ENGINE, GLOBAL, cm(CM_BAM, len(PAYLOAD)))
    tp.on_dt(1050, ENGINE, GLOBAL, bytes([1]) + PAYLOAD[:7])
    for i, sa in enumerate(range(0x80, 0xF0)):
        tp.on_cm(1060 + i % 40, sa, GLOBAL, cm(CM_BAM, 1785))
    assert tp.on_dt(1100, ENGINE, GLOBAL, bytes([2]) + PAYLOAD[7:14]) is None
    msg = tp.on_dt(1150, ENGINE, GLOBAL, bytes([3]) + PAYLOAD[14:].ljust(7, b"\xff"))
    assert msg is not None and msg.data == PAYLOAD


def test_one_node_cannot_hold_more_than_its_share() -> None:
    tp = TpReassembler()
    for da in range(40):
        tp.on_cm(0, 0x42, da, cm(CM_RTS, 100))
    assert tp.active_sessions == MAX_PER_SOURCE
    assert tp.counters["exhausted"] == 40 - MAX_PER_SOURCE
    assert bam_transfer(tp, 10, ENGINE, PAYLOAD) == PAYLOAD


@settings(max_examples=100, deadline=None)
@given(flood=st.lists(st.tuples(st.integers(0x01, 0xFD), st.integers(0, 0xFF),
                                st.sampled_from([CM_BAM, CM_RTS])), max_size=300))
def test_any_flood_of_announcements_leaves_the_established_engine_a_slot(
        flood: list[tuple[int, int, int]]) -> None:
    tp = TpReassembler()
    assert bam_transfer(tp, 0, ENGINE, PAYLOAD) == PAYLOAD
    for i, (sa, da, ctrl) in enumerate(flood):
        tp.on_cm(1000 + i % 500, sa, da, cm(ctrl, 1785))
        assert tp.active_sessions <= MAX_SESSIONS
    assert bam_transfer(tp, 1600, ENGINE, PAYLOAD) == PAYLOAD
