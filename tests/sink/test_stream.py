"""Both backends: events are keyed by (truck_id, stream, seq), gaps accounted per stream,
and a database of a sink before stream ids is migrated in place (docs/sink.md)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from gateway.sink.base import SinkStore
from gateway.sink.gaps import GapState, account
from gateway.sink.rows import EventBatch, Outcome, classify
from gateway.sink.store import open_store
from sim.sink_stats import FleetStats

A = "0123456789abcdef"  # the stream of the truck's first buffer
B = "fedcba9876543210"  # after the buffer was purged: seq starts at 1 again


def msg(truck: str, stream: str | None, *events: dict[str, Any]) -> Outcome:
    doc: dict[str, Any] = {"truck_id": truck, "events": list(events)}
    if stream is not None:
        doc["stream"] = stream
    return classify(f"fleet/{truck}/events", json.dumps(doc).encode(), None, 1_000)


def status(truck: str, **fields: Any) -> Outcome:
    return classify(f"fleet/{truck}/status", json.dumps(fields).encode(), None, 1_000)


def gps(seq: int, ts: int, lat: float = 48.0) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "type": "gps", "lat": lat, "lon": 11.0, "fix": 3}


def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    if db_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(db_url[len("sqlite:///"):])) as db:
            return [tuple(r) for r in db.execute(sql)]
    with psycopg.connect(db_url) as conn:
        return [tuple(r) for r in conn.execute(sql)]


@pytest.fixture
def store(db_url: str) -> Iterator[SinkStore]:
    s = open_store(db_url)
    yield s
    s.close()


def test_classify_takes_the_batch_stream_and_defaults_it() -> None:
    out = msg("T1", A, gps(1, 1))
    assert isinstance(out, EventBatch) and out.stream == A
    older = msg("T1", None, gps(1, 1))
    assert isinstance(older, EventBatch) and older.stream == ""


def test_same_seq_in_another_stream_is_a_new_event(store: SinkStore, db_url: str) -> None:
    assert store.write(msg("T1", A, *(gps(s, 100 + s) for s in range(1, 6)))) == 5
    # the buffer was purged: seq restarts at 1 in a new stream; none of it is a duplicate
    assert store.write(msg("T1", B, *(gps(s, 900 + s) for s in range(1, 4)))) == 3
    assert store.write(msg("T1", B, gps(2, 902))) == 0  # a resend still is
    assert store.write(msg("T1", None, gps(1, 50))) == 1  # an older agent: stream ""
    assert store.count_events("T1") == 9
    assert sorted(query(db_url, "SELECT stream, count(*) FROM events GROUP BY stream")) == [
        ("", 1), (A, 5), (B, 3)]
    # the latest position is the newest event's, whichever stream holds that seq
    assert query(db_url, "SELECT stream, seq, ts FROM latest_position") == [(B, 3, 903)]


def test_gaps_are_accounted_per_stream(store: SinkStore, db_url: str) -> None:
    store.write(msg("T1", A, gps(1, 1), gps(2, 2), gps(5, 5),
                    {"seq": 6, "ts": 6, "type": "seq_gap", "first": 3, "last": 3,
                     "reason": "unclean_start"}))
    store.write(status("T1", state="online", ts=10, stream=A, pending=4))
    [a] = [account(i) for i in store.gap_inputs("T1")]
    assert (a.stream, a.state, a.missing, a.announced) == (A, GapState.DRAINING, 2, 1)
    # the buffer is purged with seq 4 never delivered; the new stream numbers from 1
    store.write(msg("T1", B, gps(1, 20), gps(3, 22)))
    # B's first events came before its first status: neither stream is over yet
    early = {r.stream: r.state for r in (account(i) for i in store.gap_inputs("T1"))}
    assert early == {A: GapState.DRAINING, B: GapState.DRAINING}
    store.write(status("T1", state="online", ts=30, stream=B, pending=1))
    reports = {r.stream: r for r in (account(i) for i in store.gap_inputs("T1"))}
    assert set(reports) == {A, B}
    # A can no longer grow (the truck moved on): final, and seq 4 was lost with the buffer
    assert (reports[A].state, reports[A].gaps, reports[A].unexplained) == (
        GapState.FINAL, ((3, 4),), 1)
    assert (reports[B].state, reports[B].gaps, reports[B].first) == (
        GapState.DRAINING, ((2, 2),), 1)
    assert f"T1 stream {A}: final" in reports[A].line()
    store.write(msg("T1", B, gps(2, 21)))
    store.write(status("T1", state="online", ts=40, stream=B, pending=0))
    reports = {r.stream: r for r in (account(i) for i in store.gap_inputs("T1"))}
    assert (reports[B].state, reports[B].missing) == (GapState.FINAL, 0)
    assert sorted(query(db_url, "SELECT stream, first_missing, last_missing FROM seq_gaps")
                  ) == [(A, 3, 4)]


def test_a_truck_without_events_is_reported_once(store: SinkStore) -> None:
    store.write(status("T9", state="online", ts=1, stream=A, pending=0))
    [r] = [account(i) for i in store.gap_inputs("T9")]
    assert (r.truck_id, r.stream, r.stored, r.state) == ("T9", A, 0, GapState.FINAL)


# --------------------------------------------------------------------------- migration

#: The events table and two views as sinks before stream ids made them.
OLD_SQLITE = [
    """CREATE TABLE trucks (truck_id TEXT PRIMARY KEY, first_seen_ms INTEGER NOT NULL)
       WITHOUT ROWID""",
    """CREATE TABLE events (
        truck_id TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
        type TEXT NOT NULL, body TEXT NOT NULL, arrival_ms INTEGER NOT NULL,
        PRIMARY KEY (truck_id, seq)) WITHOUT ROWID""",
    "CREATE INDEX events_truck_ts ON events (truck_id, ts)",
    """CREATE VIEW positions AS SELECT truck_id, seq, ts, json_extract(body, '$.lat') AS lat
       FROM events WHERE type = 'gps'""",
    """CREATE VIEW seq_gaps AS
       SELECT truck_id, seq + 1 AS first_missing, next_seq - 1 AS last_missing FROM (
         SELECT truck_id, seq, lead(seq) OVER (PARTITION BY truck_id ORDER BY seq) AS next_seq
         FROM events) AS neighbours WHERE next_seq > seq + 1""",
]
OLD_POSTGRES = [
    "CREATE TABLE trucks (truck_id text PRIMARY KEY, first_seen_ms bigint NOT NULL)",
    """CREATE TABLE events (
        truck_id text NOT NULL, seq bigint NOT NULL, ts bigint NOT NULL, type text NOT NULL,
        body jsonb NOT NULL, arrival_ms bigint NOT NULL, PRIMARY KEY (truck_id, seq))""",
    "CREATE INDEX events_truck_ts ON events (truck_id, ts)",
    """CREATE VIEW positions AS
       SELECT truck_id, seq, ts, (body->>'lat')::float8 AS lat, (body->>'lon')::float8 AS lon,
              (body->>'alt_m')::float8 AS alt_m, (body->>'speed_kmh')::float8 AS speed_kmh,
              (body->>'heading_deg')::float8 AS heading_deg, (body->>'fix')::int AS fix,
              coalesce((body->>'provisional')::boolean, false) AS provisional
       FROM events WHERE type = 'gps'""",
    """CREATE VIEW seq_gaps AS
       SELECT truck_id, seq + 1 AS first_missing, next_seq - 1 AS last_missing FROM (
         SELECT truck_id, seq, lead(seq) OVER (PARTITION BY truck_id ORDER BY seq) AS next_seq
         FROM events) AS neighbours WHERE next_seq > seq + 1""",
]
OLD_ROWS = [("T1", s, 100 + s, "gps", json.dumps(gps(s, 100 + s)), 1) for s in (1, 2, 4)]


def _old_database(db_url: str) -> None:
    insert = "INSERT INTO events VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
    if db_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(db_url[len("sqlite:///"):],
                                                isolation_level=None)) as db:
            for stmt in OLD_SQLITE:
                db.execute(stmt)
            db.execute("INSERT INTO trucks VALUES ('T1', 1)")
            db.executemany(insert.format(p="?"), OLD_ROWS)
        return
    with psycopg.connect(db_url, autocommit=True) as conn:
        for stmt in OLD_POSTGRES:
            conn.execute(stmt)
        conn.execute("INSERT INTO trucks VALUES ('T1', 1)")
        with conn.cursor() as cur:
            cur.executemany(insert.format(p="%s"), OLD_ROWS)


def test_a_database_before_stream_ids_is_migrated(db_url: str) -> None:
    _old_database(db_url)
    store = open_store(db_url)
    try:
        # old rows are the default stream: an older agent's resend is still a duplicate
        assert store.write(msg("T1", None, gps(2, 102))) == 0
        assert store.write(msg("T1", "", gps(3, 103))) == 1
        assert store.write(msg("T1", A, gps(1, 900))) == 1
        assert store.count_events("T1") == 5
        reports = {r.stream: r for r in (account(i) for i in store.gap_inputs("T1"))}
        assert (reports[""].missing, reports[A].missing) == (0, 0)
    finally:
        store.close()
    assert sorted(query(db_url, "SELECT stream, seq FROM events")) == [
        ("", 1), ("", 2), ("", 3), ("", 4), (A, 1)]
    assert query(db_url, "SELECT count(*) FROM positions WHERE stream = ''") == [(4,)]
    again = open_store(db_url)  # idempotent: a second open changes nothing
    try:
        assert again.count_events() == 5
    finally:
        again.close()


def test_the_in_memory_test_sink_dedups_by_stream_too() -> None:
    stats = FleetStats()
    first = {"truck_id": "T1", "stream": A, "events": [gps(s, s) for s in (1, 2, 4)]}
    assert len(stats.add_batch(first, 10)) == 3
    assert stats.add_batch(first, 10) == []  # a resend
    purged = {"truck_id": "T1", "stream": B, "events": [
        gps(1, 50), gps(2, 51), {"seq": 3, "ts": 52, "type": "seq_gap", "first": 4,
                                  "last": 4, "reason": "unclean_start"}]}
    assert len(stats.add_batch(purged, 60)) == 3  # same seqs, another stream: all new
    t = stats.truck("T1").summary()
    assert (t["unique"], t["duplicates"], t["stream"], t["first_seq"]) == (6, 3, B, 1)
    assert t["streams"][A] == {"first_seq": 1, "last_seq": 4, "unique": 3, "missing": 1}
    # B's notice explains nothing in A: seq 3 of A is missing, not announced
    assert (t["missing"], t["missing_announced"]) == (1, 0)


def test_large_batches_take_the_stream_too(store: SinkStore, db_url: str) -> None:
    # more rows than PostgreSQL's multi-row INSERT takes: the COPY path
    many = [gps(s, 1000 + s) for s in range(1, 81)]
    assert store.write(msg("T1", A, *many)) == 80
    assert store.write(msg("T1", B, *many)) == 80
    assert store.write(msg("T1", B, *many)) == 0
    assert sorted(query(db_url, "SELECT stream, count(*) FROM events GROUP BY stream")) == [
        (A, 80), (B, 80)]
