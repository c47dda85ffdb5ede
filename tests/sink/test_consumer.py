"""The sink against a real Mosquitto and real databases: exactly once, quarantine, outage."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.sink.consumer import SinkOptions, SinkState
from sim.broker import Mosquitto
from sim.sink import session_store_conf
from sim.sink_fleet import FleetPublisher, fleet_events, truck_messages
from sim.sink_postgres import PostgresServer
from tests.sink.helpers import BROKER_CONF, count, query, running_sink, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return mosquitto_factory(BROKER_CONF)


def opts(broker: Mosquitto, client_id: str = "sink-test") -> SinkOptions:
    return SinkOptions(host=broker.host, port=broker.port, client_id=client_id)


async def test_redelivered_batches_land_once(broker: Mosquitto, db_url: str) -> None:
    events = fleet_events(1, 30, 1_760_000_000_000)
    whole = truck_messages("fleet", "T1", events, batch=30)
    resplit = truck_messages("fleet", "T1", events[10:], batch=7, encoding="compact")
    async with running_sink(opts(broker), db_url) as sink:
        with FleetPublisher(broker.host, broker.port) as pub:
            for m in [*whole, *whole, *resplit]:
                pub.publish(m)
            pub.wait_all()
        n = 2 + len(resplit)
        await wait_until(lambda: sink.counters().messages == n)
        c = sink.counters()
    assert (c.new_events, c.duplicate_events) == (30, 30 + 20)
    assert query(db_url, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) "
                 "FROM events WHERE truck_id = 'T1'") == [(30, 30, 1, 30)]


async def test_truck_from_topic_bad_payloads_quarantined_and_acked(
        broker: Mosquitto, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    good = truck_messages("fleet", "T1", fleet_events(1, 5, 1_760_000_000_000), batch=5)[0]
    claims_t2 = json.dumps({"truck_id": "T2", "events": [
        {"seq": 100, "ts": 1, "type": "gps"}]}).encode()
    caplog.set_level(logging.WARNING, logger="gateway.sink.consumer")
    async with running_sink(opts(broker), db_url) as sink:
        with FleetPublisher(broker.host, broker.port) as pub:
            pub.publish(good)
            pub.publish_raw("fleet/T1/events", claims_t2)
            pub.publish_raw("fleet/T1/events", b"\x00garbage")
            pub.publish_raw("fleet/T1/events", b" " * 2_000_000)
            pub.wait_all()
            await wait_until(lambda: sink.counters().messages == 4)
    assert sink.counters().quarantined == 3
    assert sorted(query(db_url, "SELECT topic, truck_id, reason FROM quarantine")) == [
        ("fleet/T1/events", "T1", "too_big"), ("fleet/T1/events", "T1", "truck_mismatch"),
        ("fleet/T1/events", "T1", "undecodable")]
    assert count(db_url, "WHERE truck_id = 'T2'") == 0 and count(db_url) == 5
    # logged once per truck per minute: three bad payloads of T1, one line
    assert len([r for r in caplog.records if "quarantined" in r.getMessage()]) == 1
    # acked: the same session reconnecting gets nothing again before the next message
    sentinel = truck_messages("fleet", "T1", fleet_events(6, 1, 1_760_000_001_000), batch=1)[0]
    async with running_sink(opts(broker), db_url) as again:
        with FleetPublisher(broker.host, broker.port) as pub:
            pub.publish(sentinel)
            pub.wait_all()
        await wait_until(lambda: count(db_url) == 6)
        assert again.counters().quarantined == 0
    assert len(query(db_url, "SELECT id FROM quarantine")) == 3


async def test_postgres_outage_stops_acking_and_loses_nothing(
        broker: Mosquitto, pg_url: str, postgres_server: PostgresServer) -> None:
    ts0 = 1_760_000_000_000
    msgs = {t: truck_messages("fleet", t, fleet_events(1, 300, ts0), batch=10)
            for t in ("T1", "T2")}
    per_phase = 10  # messages per truck and phase, 3 phases

    def phase(pub: FleetPublisher, k: int) -> None:
        for ms in msgs.values():
            for m in ms[k * per_phase:(k + 1) * per_phase]:
                pub.publish(m)
        pub.wait_all()

    with FleetPublisher(broker.host, broker.port) as pub:
        async with running_sink(opts(broker), pg_url) as sink:
            phase(pub, 0)
            await wait_until(lambda: count(pg_url) == 200)
            postgres_server.stop()
            phase(pub, 1)
            await wait_until(lambda: sink.state is SinkState.STORE_DOWN)
            postgres_server.start()
            await wait_until(lambda: count(pg_url) == 400)
            assert sink.counters().store_failures >= 1
            # second outage: the sink stops while the database is down; the broker keeps
            # what was never acked for the session
            postgres_server.stop()
            phase(pub, 2)
            await wait_until(lambda: sink.state is SinkState.STORE_DOWN)
        postgres_server.start()
        async with running_sink(opts(broker), pg_url):
            await wait_until(lambda: count(pg_url) == 600)
    rows = query(pg_url, "SELECT truck_id, count(*), count(DISTINCT seq), min(seq), max(seq) "
                 "FROM events GROUP BY truck_id ORDER BY truck_id")
    assert rows == [("T1", 300, 300, 1, 300), ("T2", 300, 300, 1, 300)]


async def test_broker_restart_mid_stream_loses_nothing(
        mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    broker = mosquitto_factory([*BROKER_CONF, *session_store_conf(tmp_path / "store")])
    url = f"sqlite:///{tmp_path / 'sink.db'}"
    msgs = truck_messages("fleet", "T1", fleet_events(1, 200, 1_760_000_000_000), batch=10)
    async with running_sink(opts(broker), url) as sink:
        with FleetPublisher(broker.host, broker.port) as pub:
            for m in msgs[:10]:
                pub.publish(m)
            pub.wait_all()
        await wait_until(lambda: count(url) == 100)
        broker.stop()
        await wait_until(lambda: sink.state is SinkState.CONNECTING)
        broker.start()
        await wait_until(lambda: sink.state is SinkState.SUBSCRIBED)
        with FleetPublisher(broker.host, broker.port) as pub:
            for m in msgs[10:]:
                pub.publish(m)
            pub.wait_all()
        await wait_until(lambda: count(url) == 200)
        assert sink.counters().connects == 2
    assert query(url, "SELECT count(DISTINCT seq), min(seq), max(seq) FROM events") == [
        (200, 1, 200)]
