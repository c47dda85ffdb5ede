"""Both backends, real SQLite files and a real PostgreSQL: idempotent writes, the views."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.sink.base import (
    SinkStore,
    SinkStoreConfigError,
    SinkStoreRejectedError,
    SinkStoreUnavailableError,
)
from gateway.sink.gaps import GapState, account
from gateway.sink.rows import EventBatch, EventRow, Outcome, Quarantined, classify
from gateway.sink.store import open_store
from sim.sink_postgres import PostgresServer


def msg(truck: str, *events: dict[str, Any]) -> Outcome:
    payload = json.dumps({"truck_id": truck, "events": list(events)}).encode()
    return classify(f"fleet/{truck}/events", payload, None, 1_000)


def status(truck: str, **fields: Any) -> Outcome:
    return classify(f"fleet/{truck}/status", json.dumps(fields).encode(), None, 1_000)


def gps(seq: int, ts: int, lat: float, **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "type": "gps", "lat": lat, "lon": 11.0, "speed_kmh": 50.0,
            "fix": 3, **extra}


@pytest.fixture
def store(db_url: str) -> Iterator[SinkStore]:
    s = open_store(db_url)
    yield s
    s.close()


def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    if db_url.startswith("sqlite:///"):
        with sqlite3.connect(db_url[len("sqlite:///"):]) as db:
            return [tuple(r) for r in db.execute(sql)]
    with psycopg.connect(db_url) as conn:
        return [tuple(r) for r in conn.execute(sql)]


def test_same_batch_twice_is_stored_once(store: SinkStore) -> None:
    first = msg("T1", gps(1, 100, 48.0), gps(2, 200, 48.1))
    assert store.write(first) == 2
    assert store.write(first) == 0
    assert store.write(msg("T1", gps(2, 200, 48.1), gps(3, 300, 48.2))) == 1
    assert store.write(msg("T2", gps(2, 200, 48.1))) == 1
    assert (store.count_events(), store.count_events("T1")) == (4, 3)


def test_views_latest_state_faults_status_and_gaps(store: SinkStore, db_url: str) -> None:
    store.write(msg("T1", gps(1, 100, 48.0), gps(2, 300, 48.2),
                    {"seq": 3, "ts": 250, "type": "engine", "src": 0, "engine_speed_rpm": 900},
                    gps(5, 200, 48.1),
                    {"seq": 6, "ts": 260, "type": "dtc", "src": 0, "active": [
                        {"spn": 110, "fmi": 0, "oc": 3}, {"spn": 100, "fmi": 1, "oc": 1}]},
                    {"seq": 9, "ts": 270, "type": "dtc", "src": 3, "active": []},
                    {"seq": 12, "ts": 280, "type": "seq_gap", "first": 10, "last": 10,
                     "reason": "unclean_start"}))
    store.write(status("T1", state="online", ts=50, pending=7))
    store.write(status("T1", state="online", ts=60, pending=0, evicted={"telemetry": 1}))
    store.write(status("T1", state="online", ts=60, pending=0, evicted={"telemetry": 1}))
    assert query(db_url, "SELECT truck_id, seq, lat FROM latest_position") == [("T1", 2, 48.2)]
    assert query(db_url, "SELECT count(*) FROM positions") == [(3,)]
    assert query(db_url, "SELECT truck_id, state, status_ts, pending FROM latest_state") == [
        ("T1", "online", 60, 0)]
    assert sorted(query(db_url, "SELECT truck_id, spn, fmi, oc FROM active_faults")) == [
        ("T1", 100, 1, 1), ("T1", 110, 0, 3)]
    assert query(db_url, "SELECT count(*) FROM status_history") == [(2,)]
    assert query(db_url, "SELECT truck_id, first_missing, last_missing FROM seq_gaps "
                 "ORDER BY 2") == [("T1", 4, 4), ("T1", 7, 8), ("T1", 10, 11)]
    [inp] = store.gap_inputs("T1")
    r = account(inp)
    # missing 4, 7, 8, 10, 11: 10 announced, 1 evicted, 3 unexplained; final (pending 0)
    assert (r.state, r.missing, r.announced, r.by_counters, r.unexplained) == (
        GapState.FINAL, 5, 1, 1, 3)
    assert store.gap_inputs("nobody") == []


def test_a_stream_whose_first_events_never_arrived_is_not_complete(
        store: SinkStore, db_url: str) -> None:
    """Every numbering starts at seq 1: seqs below the lowest stored one are missing too
    (docs/wire-format.md: "missing seq below the highest seen"), unless announced."""
    store.write(msg("T1", *(gps(s, 100 + s, 48.0) for s in (4, 5, 7))))
    store.write(status("T1", state="online", ts=60, pending=0))
    assert query(db_url, "SELECT first_missing, last_missing FROM seq_gaps ORDER BY 1") == [
        (1, 3), (6, 6)]
    [r] = [account(i) for i in store.gap_inputs("T1")]
    assert (r.state, r.first, r.missing, r.unexplained, r.gaps) == (
        GapState.FINAL, 4, 4, 4, ((1, 3), (6, 6)))
    # a truck that announced its oldest seqs (evicted before it could send them)
    store.write(msg("T2", {"seq": 4, "ts": 1, "type": "seq_gap", "first": 1, "last": 3,
                           "reason": "evicted"}, gps(5, 2, 48.0)))
    store.write(status("T2", state="online", ts=60, pending=0))
    [r] = [account(i) for i in store.gap_inputs("T2")]
    assert (r.missing, r.announced, r.unexplained) == (3, 3, 0)
    # a stream that starts at seq 1 has nothing missing below it
    store.write(msg("T3", gps(1, 1, 48.0), gps(2, 2, 48.0)))
    assert query(db_url, "SELECT count(*) FROM seq_gaps WHERE truck_id = 'T3'") == [(0,)]


def test_quarantine_keeps_topic_reason_and_payload(store: SinkStore, db_url: str) -> None:
    bad = classify("fleet/T1/events", b"\x00\x01", None, 5)
    assert isinstance(bad, Quarantined)
    store.write(bad)
    assert query(db_url, "SELECT topic, truck_id, reason FROM quarantine") == [
        ("fleet/T1/events", "T1", "undecodable")]
    assert store.count_events() == 0


def test_empty_batch_and_unknown_types(store: SinkStore) -> None:
    empty = msg("T1")
    assert isinstance(empty, EventBatch) and store.write(empty) == 0
    assert store.write(msg("T1", {"seq": 1, "ts": 1, "type": "future", "x": [1]})) == 1


def test_postgres_outage_raises_unavailable_then_recovers(
        pg_url: str, postgres_server: PostgresServer) -> None:
    store = open_store(pg_url)
    try:
        store.write(msg("T1", gps(1, 100, 48.0)))
        postgres_server.stop()
        with pytest.raises(SinkStoreUnavailableError):
            store.write(msg("T1", gps(2, 200, 48.0)))
        postgres_server.start()
        assert store.write(msg("T1", gps(2, 200, 48.0))) == 1
        assert store.count_events() == 2
    finally:
        store.close()


def test_a_locked_sqlite_file_is_an_outage_then_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the file's write lock past the busy timeout: the write
    fails as unavailable (the consumer stops acking), and works once the lock is gone."""
    import gateway.sink.sqlite_store as sqlite_store  # noqa: PLC0415

    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 200)
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    store = open_store(url)
    try:
        assert store.write(msg("T1", gps(1, 100, 48.0))) == 1
        other = sqlite3.connect(tmp_path / "fleet.db", isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(SinkStoreUnavailableError, match="locked"):
                store.write(msg("T1", gps(2, 200, 48.0)))
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert store.write(msg("T1", gps(2, 200, 48.0))) == 1
        assert store.count_events() == 2
    finally:
        store.close()


def test_postgres_refusing_one_message_is_a_rejection_not_an_outage(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        bad = EventBatch("T1", (EventRow("T1", 1, 1, "gps", "{not json"),), 1)
        with pytest.raises(SinkStoreRejectedError):
            store.write(bad)
        assert store.write(msg("T1", gps(1, 100, 48.0))) == 1  # the connection is fine
    finally:
        store.close()


def test_unknown_url_is_a_config_error() -> None:
    with pytest.raises(SinkStoreConfigError):
        open_store("mysql://x")
    with pytest.raises(SinkStoreConfigError):
        open_store("sqlite:///")


def plan(db_url: str, sql: str) -> str:
    """The query plan of ``sql`` as one string (PostgreSQL with sequential scans off, so
    that a table of a few rows still shows whether an index can serve the query)."""
    if db_url.startswith("sqlite:///"):
        return " | ".join(str(r[-1]) for r in query(db_url, "EXPLAIN QUERY PLAN " + sql))
    with psycopg.connect(db_url) as conn:
        conn.execute("SET enable_seqscan = off")
        return " | ".join(str(r[0]) for r in conn.execute("EXPLAIN " + sql))


def test_the_fleet_queries_are_served_by_their_indexes(store: SinkStore, db_url: str) -> None:
    """"Latest position per truck" and "events of a truck in a time range" (docs/sink.md)
    read an index, not the whole events table."""
    store.write(msg("T1", *(gps(s, 100 * s, 48.0) for s in range(1, 20))))
    store.write(msg("T2", gps(1, 150, 49.0)))
    ranged = plan(db_url, "SELECT seq, ts, type FROM events WHERE truck_id = 'T1' "
                          "AND ts >= 300 AND ts <= 900 ORDER BY ts")
    assert "events_truck_ts" in ranged, ranged
    latest = plan(db_url, "SELECT * FROM latest_position")
    index = "events_truck_type_ts" if db_url.startswith("sqlite") else "events_latest_gps"
    assert index in latest, latest
    assert query(db_url, "SELECT truck_id, seq FROM latest_position ORDER BY 1") == [
        ("T1", 19), ("T2", 1)]


def test_sqlite_commits_are_durable_unless_the_url_opts_out(tmp_path: Path) -> None:
    """synchronous=FULL by default (an acked message survives a power cut of the sink's
    host); ``?synchronous=normal`` opts out; anything else is a config error."""
    from gateway.sink.sqlite_store import SqliteSinkStore  # noqa: PLC0415

    for query_part, want in (("", 2), ("?synchronous=normal", 1), ("?synchronous=full", 2)):
        store = open_store(f"sqlite:///{tmp_path / 'f.db'}{query_part}")
        assert isinstance(store, SqliteSinkStore)
        try:
            assert store.write(msg("T1", gps(1, 100, 48.0))) in (0, 1)
            assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == want
        finally:
            store.close()
    with pytest.raises(SinkStoreConfigError, match="synchronous"):
        open_store(f"sqlite:///{tmp_path / 'f.db'}?synchronous=off")
