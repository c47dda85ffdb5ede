"""The pure parts: a message becomes rows or a quarantine entry; gap accounting."""

from __future__ import annotations

import json

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import wire
from gateway.sink.gaps import GapInput, GapState, TruckCounters, account, merge, overlap
from gateway.sink.rows import (
    EventBatch,
    Ignored,
    LogThrottle,
    Quarantined,
    QuarantineReason,
    StatusRow,
    classify,
    parse_topic,
)
from sim.sink_fleet import fleet_events, truck_messages


def batch(truck: str, *events: dict[str, object]) -> bytes:
    return json.dumps({"truck_id": truck, "events": list(events)}).encode()


def test_a_batch_becomes_rows_keyed_by_the_topic_truck() -> None:
    [msg] = truck_messages("fleet", "T1", fleet_events(5, 3, 1000), batch=10)
    out = classify(msg.topic, msg.payload, msg.content_type, 9)
    assert isinstance(out, EventBatch)
    assert [(r.truck_id, r.seq, r.ts, r.type) for r in out.rows] == [
        ("T1", 5, 1000, "gps"), ("T1", 6, 1100, "engine"), ("T1", 7, 1200, "gps")]
    assert json.loads(out.rows[1].body)["engine_speed_rpm"] == 1400.125


def test_compact_batches_on_both_topics() -> None:
    [msg] = truck_messages("fleet", "T1", fleet_events(1, 4, 1000), batch=10,
                           encoding="compact")
    out = classify(msg.topic, msg.payload, msg.content_type, 9)
    assert isinstance(out, EventBatch) and len(out.rows) == 4
    out311 = classify("fleet/T1/events/json-zstd", msg.payload, None, 9)
    assert isinstance(out311, EventBatch) and out311.rows == out.rows


@pytest.mark.parametrize(("topic", "payload", "ctype", "reason"), [
    ("fleet/T1/events", batch("T2", {"seq": 1, "ts": 1, "type": "gps"}), None,
     QuarantineReason.TRUCK_MISMATCH),
    ("fleet/T1/events", b"\xff not json", None, QuarantineReason.UNDECODABLE),
    ("fleet/T1/events", b"garbage", wire.CONTENT_TYPE_COMPACT, QuarantineReason.UNDECODABLE),
    ("fleet/T1/events", zstandard.ZstdCompressor().compress(b" " * 2_000_000),
     wire.CONTENT_TYPE_COMPACT, QuarantineReason.TOO_BIG),
    ("fleet/T1/events", b"[" * 10 + b" " * 1_100_000, None, QuarantineReason.TOO_BIG),
    ("fleet/T1/events", batch("T1", {"seq": "1", "ts": 1, "type": "gps"}), None,
     QuarantineReason.SCHEMA),
    ("fleet/T1/events", batch("T1", {"seq": 0, "ts": 1, "type": "gps"}), None,
     QuarantineReason.SCHEMA),
    ("fleet/T1/events", batch("T1", {"seq": 3, "ts": 1, "type": "seq_gap", "first": 5,
                                     "last": 2}), None, QuarantineReason.SCHEMA),
    ("fleet/T1/events", b'{"truck_id": "T1"}', None, QuarantineReason.SCHEMA),
    ("fleet/T1/events", batch("T1", {"seq": 2**63, "ts": 1, "type": "gps"}), None,
     QuarantineReason.SCHEMA),
    ("fleet/T1/events", batch("T1", {"seq": 1, "ts": 1, "type": "gps", "x": "a\u0000"}),
     None, QuarantineReason.SCHEMA),
    ("fleet/T1/events", b'{"truck_id":"T1","events":[{"seq":1,"ts":1,"type":"gps","x":1e400}]}',
     None, QuarantineReason.SCHEMA),
    ("fleet/T1/status", b'{"state": "online", "ts": 1, "x": NaN}', None,
     QuarantineReason.SCHEMA),
    ("fleet/T1/status", b"{", None, QuarantineReason.UNDECODABLE),
    ("fleet/T1/status", b'{"state": "online"}', None, QuarantineReason.SCHEMA),
    ("fleet/T1/status", b'{"state": "online", "ts": 1, "truck_id": "T9"}', None,
     QuarantineReason.TRUCK_MISMATCH),
    ("fleet/bad id/events", b"{}", None, QuarantineReason.BAD_TOPIC),
    ("other/T1/events", b"{}", None, QuarantineReason.BAD_TOPIC),
])
def test_bad_messages_are_quarantined_with_a_reason(
        topic: str, payload: bytes, ctype: str | None, reason: QuarantineReason) -> None:
    out = classify(topic, payload, ctype, 42)
    assert isinstance(out, Quarantined)
    assert (out.reason, out.topic, out.payload, out.received_ms) == (reason, topic, payload, 42)
    assert len(out.detail) <= 300


def test_status_rows_and_empty_retained_status() -> None:
    out = classify("fleet/T1/status", b'{"state":"online","ts":5,"pending":0}', None, 9)
    assert isinstance(out, StatusRow) and (out.truck_id, out.ts, out.state) == ("T1", 5, "online")
    assert isinstance(classify("fleet/T1/status", b"", None, 9), Ignored)


def test_topics_parse_under_a_multi_level_prefix() -> None:
    assert parse_topic("a/b", "a/b/T-1_x/events") is not None
    assert parse_topic("a/b", "a/b/T1/events/other") is None
    assert parse_topic("fleet", "fleet/" + "x" * 65 + "/status") is None


def test_log_throttle_once_per_key_per_interval() -> None:
    th = LogThrottle(interval_s=60, max_keys=2)
    assert th.should_log("T1", 0.0) and not th.should_log("T1", 59.0)
    assert th.suppressed == {"T1": 1}
    assert th.should_log("T2", 1.0) and th.should_log("T1", 60.0)
    assert not th.should_log("T3", 60.5)  # full: T1 and T2 are recent
    assert th.should_log("T3", 200.0)  # stale keys are forgotten


def test_gap_accounting_announced_counters_and_final() -> None:
    inp = GapInput("T1", ((1, 10), (14, 20), (30, 30)), ((11, 12), (12, 12)),
                   TruckCounters(pending=5, dropped=100))
    r = account(inp)
    assert (r.state, r.first, r.last, r.stored) == (GapState.DRAINING, 1, 30, 18)
    assert (r.missing, r.announced, r.by_counters, r.unexplained) == (12, 2, 0, 10)
    assert r.gaps == ((11, 13), (21, 29))
    final = account(GapInput("T1", inp.islands, inp.notices, TruckCounters(0, 4)))
    assert (final.state, final.by_counters, final.unexplained) == (GapState.FINAL, 4, 6)
    assert "unexplained=6" in final.line()
    empty = account(GapInput("T2", (), (), None))
    assert (empty.state, empty.first, empty.missing) == (GapState.DRAINING, None, 0)


def test_counters_from_a_status_body() -> None:
    body = json.dumps({"pending": 0, "evicted": {"telemetry": 3, "x": True}, "expired": {"a": 2}})
    assert TruckCounters.from_status_body(body) == TruckCounters(0, 5)
    assert TruckCounters.from_status_body(None) is None


ranges = st.lists(st.tuples(st.integers(1, 80), st.integers(0, 10)).map(
    lambda t: (t[0], t[0] + t[1])), max_size=8)


@settings(max_examples=200, deadline=None)
@given(ranges, ranges)
def test_merge_and_overlap_match_sets(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    sa = {x for lo, hi in a for x in range(lo, hi + 1)}
    sb = {x for lo, hi in b for x in range(lo, hi + 1)}
    assert {x for lo, hi in merge(a) for x in range(lo, hi + 1)} == sa
    assert overlap(merge(a), merge(b)) == len(sa & sb)


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(1, 120), min_size=1), ranges)
def test_account_matches_a_set_model(seqs: set[int], notices: list[tuple[int, int]]) -> None:
    ordered = sorted(seqs)
    islands = merge((s, s) for s in ordered)
    r = account(GapInput("T", tuple(islands), tuple(notices), TruckCounters(0, 0)))
    holes = set(range(1, ordered[-1] + 1)) - seqs  # every stream numbers from seq 1
    announced = holes & {x for lo, hi in notices for x in range(lo, hi + 1)}
    assert (r.missing, r.announced, r.unexplained) == (len(holes), len(announced),
                                                      len(holes - announced))
