"""The cloud sink: pure bookkeeping, and against a real Mosquitto (both encodings)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from buffer.api import StoredEvent
from config.errors import SimError
from config.events import Event, encode_body
from gateway import wire
from sim.broker import Mosquitto
from sim.report import render
from sim.sink import Sink, format_summary
from sim.sink_stats import FleetStats, SeqTracker


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=400))
def test_seq_tracker_matches_a_set(seqs: list[int]) -> None:
    tr = SeqTracker()
    seen: set[int] = set()
    for s in seqs:
        assert tr.add(s) == (s in seen)
        seen.add(s)
    assert tr.unique() == len(seen)
    if seen:
        lo, hi = min(seen), max(seen)
        assert (tr.first, tr.last) == (lo, hi)
        holes = [x for x in range(lo, hi + 1) if x not in seen]
        assert tr.missing() == len(holes)
        assert [x for a, b in tr.gaps() for x in range(a, b + 1)] == holes


def test_fleet_stats_counts_lag_ranges_and_latest() -> None:
    fs = FleetStats()
    batch = {"truck_id": "T1", "events": [
        {"seq": 1, "ts": 1000, "type": "gps", "lat": 48.1, "lon": 11.5, "speed_kmh": 10.0},
        {"seq": 2, "ts": 1500, "type": "engine", "engine_speed_rpm": 900.0},
        {"seq": 4, "ts": 1600, "type": "engine", "fuel_level_pct": 55.0},
    ]}
    assert len(fs.add_batch(batch, arrival_ms=2000)) == 3
    assert fs.add_batch({"truck_id": "T1", "events": batch["events"][:1]}, 2100) == []
    s = fs.trucks["T1"].summary()
    assert (s["events"], s["unique"], s["duplicates"], s["missing"]) == (4, 3, 1, 1)
    assert s["gaps"] == [(3, 3)]
    assert s["lag_ms"]["max"] == 1000
    assert s["ranges"]["gps.lat"] == [48.1, 48.1]
    latest = fs.trucks["T1"].latest["engine"]
    assert latest["engine_speed_rpm"] == 900.0 and latest["fuel_level_pct"] == 55.0


def stored(seq: int, etype: str, ts: int, **fields: object) -> StoredEvent:
    ev = Event(etype, ts, fields)
    return StoredEvent(seq, ts, etype, ev.priority, encode_body(ev))


def publisher(broker: Mosquitto) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="pub",
                    protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def wait_for(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cond(), "condition not met in time"


@pytest.mark.broker
def test_sink_decodes_json_and_compact_and_finds_gaps(mosquitto: Mosquitto,
                                                      tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    events = [stored(i, "gps", now - 500 + i, lat=53.5, lon=9.9 + i / 1000, speed_kmh=30.0)
              for i in range(1, 11) if i != 7]
    jsonl, db = tmp_path / "out.jsonl", tmp_path / "out.db"
    sink = Sink(mosquitto.host, mosquitto.port, "fleet", jsonl=jsonl, sqlite=db)
    sink.start()
    pub = publisher(mosquitto)
    try:
        assert sink.wait_connected(10)  # every SUBACK is in
        (p1, _), = wire.encode_batches("TRK-1", events[:4], "json", 100_000)
        (p2, _), = wire.encode_batches("TRK-1", events[4:], "compact", 100_000)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = wire.CONTENT_TYPE_COMPACT
        pub.publish("fleet/TRK-1/events", p1, qos=1).wait_for_publish(5)
        pub.publish("fleet/TRK-1/events", p2, qos=1, properties=props).wait_for_publish(5)
        pub.publish("fleet/TRK-1/events", p1, qos=1).wait_for_publish(5)  # a redelivery
        pub.publish("fleet/TRK-1/events", b"not json", qos=1).wait_for_publish(5)
        status = {"state": "online", "truck_id": "TRK-1", "ts": now}
        pub.publish("fleet/TRK-1/status", json.dumps(status), qos=1,
                    retain=True).wait_for_publish(5)
        wait_for(lambda: sink.summary()["totals"]["events"] >= 13
                 and sink.summary()["trucks"]["TRK-1"]["status"] != {})
    finally:
        pub.loop_stop()
        pub.disconnect()
        sink.stop()
    t = sink.summary()["trucks"]["TRK-1"]
    assert (t["unique"], t["duplicates"], t["missing"], t["bad_payloads"]) == (9, 4, 1, 1)
    assert t["gaps"] == [(7, 7)]
    assert t["status"]["state"] == "online"
    assert t["lag_ms"]["max"] >= 0
    assert "missing=1" in format_summary(sink.summary())
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(lines) == 13 and sum(x["duplicate"] for x in lines) == 4
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(DISTINCT seq) FROM events").fetchone()[0] == 9
    conn.close()
    page = render({"TRK-1": sink.track("TRK-1")}, sink.summary()["trucks"])
    assert "<svg" in page and "<polyline" in page


@pytest.mark.broker
def test_shared_subscription_splits_the_traffic(mosquitto: Mosquitto) -> None:
    sinks = [Sink(mosquitto.host, mosquitto.port, "fleet", share="g1") for _ in range(2)]
    for s in sinks:
        s.start()
    pub = publisher(mosquitto)
    try:
        assert all(s.wait_connected(10) for s in sinks)
        now = int(time.time() * 1000)
        for i in range(1, 41):
            (payload, _), = wire.encode_batches("TRK-2", [stored(i, "gps", now, lat=1.0,
                                                                 lon=2.0)], "json", 10_000)
            pub.publish("fleet/TRK-2/events", payload, qos=1).wait_for_publish(5)
        wait_for(lambda: sum(s.summary()["totals"]["unique"] for s in sinks) >= 40)
    finally:
        pub.loop_stop()
        pub.disconnect()
        for s in sinks:
            s.stop()
    counts = [s.summary()["totals"]["unique"] for s in sinks]
    assert sum(counts) == 40
    assert all(c > 0 for c in counts)  # each group member got a share


def test_share_needs_mqtt5() -> None:
    with pytest.raises(SimError, match="MQTT 5"):
        Sink("127.0.0.1", 1, share="g", protocol="3.1.1")


@pytest.mark.broker
def test_sink_on_mqtt311_reads_compact_from_the_topic_suffix(mosquitto: Mosquitto) -> None:
    sink = Sink(mosquitto.host, mosquitto.port, "fleet", protocol="3.1.1")
    sink.start()
    pub = publisher(mosquitto)
    try:
        assert sink.wait_connected(10)
        now = int(time.time() * 1000)
        (payload, _), = wire.encode_batches(
            "TRK-3", [stored(i, "engine", now, engine_speed_rpm=800.0 + i) for i in (1, 2, 3)],
            "compact", 10_000)
        topic = wire.events_topic("fleet", "TRK-3", "compact", "3.1.1")
        assert topic.endswith("/json-zstd")
        pub.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_for(lambda: sink.summary()["totals"]["unique"] >= 3)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sink.stop()
    t = sink.summary()["trucks"]["TRK-3"]
    assert t["ranges"]["engine.engine_speed_rpm"] == [801.0, 803.0]
    assert t["bad_payloads"] == 0


def test_announced_gaps_are_not_losses() -> None:
    sink = Sink("127.0.0.1", 1, "fleet")  # never started: fed directly
    now = int(time.time() * 1000)
    batch = {"truck_id": "T5", "events": [
        {"seq": 1, "ts": now, "type": "gps", "lat": 1.0, "lon": 2.0},
        {"seq": 9, "ts": now, "type": "seq_gap", "first": 2, "last": 5},
        {"seq": 10, "ts": now, "type": "gps", "lat": 1.0, "lon": 2.0},
    ]}
    sink.handle("fleet/T5/events", json.dumps(batch).encode(), None, now)
    sink.stop()
    tot = sink.summary()["totals"]
    assert (tot["missing"], tot["missing_announced"], tot["lost"]) == (7, 4, 3)


def test_missing_in_a_stretch_counts_overlapping_notices_once() -> None:
    stats = FleetStats()
    now = int(time.time() * 1000)
    stats.add_batch({"truck_id": "T6", "events": [
        {"seq": 1, "ts": now, "type": "gps"},
        {"seq": 20, "ts": now, "type": "seq_gap", "first": 2, "last": 8},
        {"seq": 21, "ts": now, "type": "seq_gap", "first": 5, "last": 10},
        {"seq": 30, "ts": now, "type": "gps"},
    ]}, now)
    t = stats.truck("T6")
    # missing: 2..19 and 22..29 (26); notices cover 2..10 once (9), not 5..8 twice
    assert t.missing_in() == (26, 9)
    assert t.announced_missing() == 9
    assert t.missing_in(6, 12) == (7, 5)  # 6..12 missing, 6..10 announced
    assert t.missing_in(22, 29) == (8, 0)
    assert t.missing_in(31, 40) == (0, 0)


@pytest.mark.broker
def test_the_truck_id_comes_from_the_topic(mosquitto: Mosquitto) -> None:
    """A batch on TRK-A's topic that claims to be TRK-B is a bad payload of TRK-A."""
    now = int(time.time() * 1000)
    sink = Sink(mosquitto.host, mosquitto.port, "fleet")
    sink.start()
    pub = publisher(mosquitto)
    try:
        assert sink.wait_connected(10)
        (real, _), = wire.encode_batches("TRK-B", [stored(1, "gps", now, lat=1.0, lon=2.0)],
                                         "json", 10_000)
        (forged, _), = wire.encode_batches("TRK-B", [stored(2, "gps", now, lat=1.0, lon=2.0)],
                                           "json", 10_000)
        pub.publish("fleet/TRK-B/events", real, qos=1).wait_for_publish(5)
        pub.publish("fleet/TRK-A/events", forged, qos=1).wait_for_publish(5)
        wait_for(lambda: sink.summary()["totals"]["bad_payloads"] >= 1
                 and sink.summary()["totals"]["events"] >= 1)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sink.stop()
    trucks = sink.summary()["trucks"]
    assert trucks["TRK-A"]["bad_payloads"] == 1 and trucks["TRK-A"]["events"] == 0
    assert trucks["TRK-B"]["unique"] == 1 and trucks["TRK-B"]["bad_payloads"] == 0
