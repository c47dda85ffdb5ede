"""The production backend: PostgreSQL through psycopg 3 (the ``postgres`` extra).

Small batches go in as one multi-row ``INSERT ... VALUES``, larger ones by ``COPY`` into a
session-local staging table and one ``INSERT ... SELECT`` (measured for a 200-event batch:
3.5 ms, against 13 ms for one ``INSERT ... unnest(...)`` and 6.6 ms for ``executemany``),
both ``ON CONFLICT (truck_id, stream, seq) DO NOTHING``; bodies are ``jsonb``. The connection is in
autocommit mode and a message that fits one statement (small batches, status, quarantine;
the ``trucks`` row rides along in a ``WITH`` the first time a connection sees a truck) is
one implicit transaction in one round trip; the COPY path is an explicit transaction.
A partial index on
``(truck_id, ts DESC, seq DESC) WHERE type = 'gps'`` serves
"latest position per truck" (``latest_position`` walks ``trucks`` with ``LATERAL``), the
primary key and ``(truck_id, ts)`` serve "events of a truck in a time range". A lost
connection raises :class:`SinkStoreUnavailableError` and is reopened on the next call.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.sink import schema
from gateway.sink.base import (
    SinkStoreConfigError,
    SinkStoreRejectedError,
    SinkStoreUnavailableError,
)
from gateway.sink.gaps import GapInput, gap_inputs_of
from gateway.sink.report import ReportInput, StoredEvent
from gateway.sink.rows import EventBatch, Ignored, Outcome, Quarantined, StatusRow

try:
    import psycopg
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise SinkStoreConfigError(
        "the PostgreSQL backend needs psycopg 3: pip install 'truckgw[postgres]'") from exc

#: Batches up to this many events go in as one multi-row INSERT, larger ones by COPY.
#: Measured per message: 5 events 0.6 ms by VALUES vs 1.2 ms by COPY; 200 events 6.7 ms
#: vs 3.5 ms (the staging table costs a fixed amount per transaction, rows cost less).
COPY_FROM_ROWS: Final = 32
#: Seconds to wait for a connection before the write counts as an outage.
CONNECT_TIMEOUT_S: Final = 5

#: Sinks before stream ids keyed events by (truck_id, seq): their rows become the default
#: stream '' and the key (truck_id, stream, seq). Idempotent; the views (columns appended
#: at the end) are replaced by the statements after it.
_MIGRATE_STREAM: Final = """
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                 AND table_name = 'events' AND column_name = 'stream') THEN
    ALTER TABLE events ADD COLUMN stream text NOT NULL DEFAULT '';
    ALTER TABLE events DROP CONSTRAINT events_pkey;
    ALTER TABLE events ADD PRIMARY KEY (truck_id, stream, seq);
  END IF;
END $$
"""

DDL: Final = [
    """CREATE TABLE IF NOT EXISTS trucks (
        truck_id text PRIMARY KEY, first_seen_ms bigint NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS events (
        truck_id text NOT NULL, seq bigint NOT NULL, ts bigint NOT NULL, type text NOT NULL,
        body jsonb NOT NULL, arrival_ms bigint NOT NULL, stream text NOT NULL DEFAULT '',
        PRIMARY KEY (truck_id, stream, seq))""",
    _MIGRATE_STREAM,
    "CREATE INDEX IF NOT EXISTS events_truck_ts ON events (truck_id, ts)",
    """CREATE INDEX IF NOT EXISTS events_latest_gps ON events (truck_id, ts DESC, seq DESC)
       WHERE type = 'gps'""",
    # rare types only: an index over every engine event would cost each insert for one view
    """CREATE INDEX IF NOT EXISTS events_truck_rare_ts ON events (truck_id, type, ts DESC)
       WHERE type IN ('dtc', 'seq_gap')""",
    """CREATE TABLE IF NOT EXISTS status_history (
        truck_id text NOT NULL, ts bigint NOT NULL, state text NOT NULL, body jsonb NOT NULL,
        arrival_ms bigint NOT NULL, PRIMARY KEY (truck_id, ts, state))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id bigserial PRIMARY KEY, arrival_ms bigint NOT NULL, topic text NOT NULL,
        truck_id text, reason text NOT NULL, detail text NOT NULL, payload bytea NOT NULL)""",
    """CREATE OR REPLACE VIEW positions AS
       SELECT truck_id, seq, ts, (body->>'lat')::float8 AS lat, (body->>'lon')::float8 AS lon,
              (body->>'alt_m')::float8 AS alt_m, (body->>'speed_kmh')::float8 AS speed_kmh,
              (body->>'heading_deg')::float8 AS heading_deg, (body->>'fix')::int AS fix,
              coalesce((body->>'provisional')::boolean, false) AS provisional, stream
       FROM events WHERE type = 'gps'""",
    """CREATE OR REPLACE VIEW latest_position AS
       SELECT p.* FROM trucks t CROSS JOIN LATERAL (
         SELECT * FROM positions x WHERE x.truck_id = t.truck_id
         ORDER BY x.ts DESC, x.seq DESC LIMIT 1) AS p""",
    """CREATE OR REPLACE VIEW latest_status AS
       SELECT s.* FROM trucks t CROSS JOIN LATERAL (
         SELECT * FROM status_history x WHERE x.truck_id = t.truck_id
         ORDER BY x.ts DESC LIMIT 1) AS s""",
    """CREATE OR REPLACE VIEW latest_state AS
       SELECT t.truck_id, p.ts AS position_ts, p.lat, p.lon, p.speed_kmh,
              (SELECT body FROM events e WHERE e.truck_id = t.truck_id AND e.type = 'engine'
               ORDER BY e.ts DESC LIMIT 1) AS engine,
              s.state, s.ts AS status_ts, (s.body->>'pending')::bigint AS pending
       FROM trucks t LEFT JOIN latest_position p ON p.truck_id = t.truck_id
       LEFT JOIN latest_status s ON s.truck_id = t.truck_id""",
    """CREATE OR REPLACE VIEW active_faults AS
       SELECT d.truck_id, d.src, d.ts, d.seq, (f->>'spn')::int AS spn, (f->>'fmi')::int AS fmi,
              (f->>'oc')::int AS oc
       FROM (SELECT DISTINCT ON (truck_id, body->'src') truck_id, body->'src' AS src, ts, seq,
                    body->'active' AS active
             FROM events WHERE type = 'dtc'
             ORDER BY truck_id, body->'src', ts DESC, seq DESC) AS d
       CROSS JOIN LATERAL jsonb_array_elements(d.active) AS f""",
    """CREATE OR REPLACE VIEW gap_notices AS
       SELECT truck_id, seq, (body->>'first')::bigint AS first, (body->>'last')::bigint AS last,
              body->>'reason' AS reason, stream
       FROM events WHERE type = 'seq_gap'""",
    schema.SEQ_GAPS_VIEW.replace("CREATE VIEW", "CREATE OR REPLACE VIEW"),
]

#: Per connection; emptied by every commit (and by a rollback, being transactional).
_STAGING: Final = """
CREATE TEMP TABLE IF NOT EXISTS events_staging (
    seq bigint, ts bigint, type text, body jsonb) ON COMMIT DELETE ROWS
"""
_COPY: Final = "COPY events_staging (seq, ts, type, body) FROM STDIN"
_ROW: Final = "(%s, %s, %s, %s, %s, %s::jsonb, %s)"
#: Prefixed to a message's one statement the first time a connection sees its truck.
_NEW_TRUCK: Final = (
    "WITH new_truck AS (INSERT INTO trucks VALUES (%s, %s) ON CONFLICT DO NOTHING) ")
_INSERT_STATUS: Final = (
    "INSERT INTO status_history VALUES (%s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING")
_INSERT_VALUES: Final = """
INSERT INTO events (truck_id, stream, seq, ts, type, body, arrival_ms) VALUES {rows}
ON CONFLICT (truck_id, stream, seq) DO NOTHING
"""
_INSERT_EVENTS: Final = """
INSERT INTO events (truck_id, stream, seq, ts, type, body, arrival_ms)
SELECT %s, %s, seq, ts, type, body, %s FROM events_staging
ON CONFLICT (truck_id, stream, seq) DO NOTHING
"""
#: the status body's stream, '' when it names none (older trucks)
_STATUS_STREAM: Final = "coalesce(body->>'stream', '')"


class PostgresSinkStore:
    """A :class:`~gateway.sink.base.SinkStore` in a PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        #: trucks whose ``trucks`` row is committed (seen on this connection)
        self._known: set[str] = set()

    def __repr__(self) -> str:
        return f"PostgresSinkStore(connected={self._conn is not None})"

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            # autocommit: a message that fits one statement is one implicit transaction, one
            # round trip (BEGIN + INSERT + COMMIT took three: 0.78 ms per 5-event message)
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S,
                                   autocommit=True)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.SCHEMA_LOCK_KEY,))
                for stmt in DDL:
                    conn.execute(stmt)
            conn.execute(_STAGING)
        except psycopg.OperationalError as exc:
            raise SinkStoreUnavailableError(f"postgresql: {exc}") from exc
        self._conn = conn
        self._known = set()
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, outcome: Outcome) -> int:
        """Store one message in one transaction; the number of new event rows."""
        if isinstance(outcome, Ignored):
            return 0
        conn = self._connection()
        try:
            new = self._rows(conn, outcome)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            raise SinkStoreUnavailableError(f"postgresql: {exc}") from exc
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise SinkStoreRejectedError(f"postgresql: {exc}") from exc
        if not isinstance(outcome, Quarantined):
            self._known.add(outcome.truck_id)
        return new

    def _rows(self, conn: psycopg.Connection[Any],
              outcome: EventBatch | StatusRow | Quarantined) -> int:
        """One statement (one implicit transaction) per message, but for COPY."""
        if isinstance(outcome, Quarantined):
            conn.execute(
                "INSERT INTO quarantine (arrival_ms, topic, truck_id, reason, detail, payload)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (outcome.received_ms, outcome.topic, outcome.truck_id, str(outcome.reason),
                 outcome.detail, outcome.payload))
            return 0
        # a data-modifying WITH runs whether or not the main statement reads it
        head: str = ""
        head_args: tuple[str, int] | tuple[()] = ()
        if outcome.truck_id not in self._known:
            head, head_args = _NEW_TRUCK, (outcome.truck_id, outcome.received_ms)
        if isinstance(outcome, StatusRow):
            conn.execute(
                head + _INSERT_STATUS,
                (*head_args, outcome.truck_id, outcome.ts, outcome.state, outcome.body,
                 outcome.received_ms))
            return 0
        if not outcome.rows:
            if head:
                conn.execute("INSERT INTO trucks VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             head_args)
            return 0
        cur = conn.cursor()
        if len(outcome.rows) <= COPY_FROM_ROWS:
            args = [*head_args, *(x for r in outcome.rows for x in (
                outcome.truck_id, outcome.stream, r.seq, r.ts, r.type, r.body,
                outcome.received_ms))]
            cur.execute(head + _INSERT_VALUES.format(rows=",".join([_ROW] * len(outcome.rows))),
                        args)
        else:
            with conn.transaction():
                with cur.copy(_COPY) as copy:
                    for r in outcome.rows:
                        copy.write_row((r.seq, r.ts, r.type, r.body))
                cur.execute(head + _INSERT_EVENTS, (*head_args, outcome.truck_id,
                                                    outcome.stream, outcome.received_ms))
        return max(cur.rowcount, 0)

    def gap_inputs(self, truck_id: str | None = None) -> list[GapInput]:
        """Islands, notices and latest status counters per truck."""
        where, args = ("WHERE truck_id = %s", (truck_id,)) if truck_id else ("", ())
        conn = self._connection()
        try:
            with conn.transaction():
                trucks = [r[0] for r in conn.execute(schema.TRUCKS.format(where=where), args)]
                islands = conn.execute(schema.ISLANDS.format(where=where), args).fetchall()
                notices = conn.execute(schema.NOTICES.format(where=where), args).fetchall()
                per_stream = conn.execute(schema.STREAM_STATUS.format(
                    stream=_STATUS_STREAM, body="body::text", where=where), args).fetchall()
                latest = conn.execute(
                    schema.LATEST_STATUS.format(body="body::text", where=where), args).fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            raise SinkStoreUnavailableError(f"postgresql: {exc}") from exc
        return gap_inputs_of(trucks, islands, notices, per_stream, latest)

    def report_input(self, truck_id: str, from_ms: int | None = None,
                     to_ms: int | None = None) -> ReportInput:
        """The events of one truck's trip report (one read transaction)."""
        lo = schema.TS_MIN if from_ms is None else from_ms
        hi = schema.TS_MAX if to_ms is None else to_ms
        conn = self._connection()
        try:
            with conn.transaction():
                events = conn.execute(schema.REPORT_EVENTS.format(body="body::text", p="%s"),
                                      (truck_id, lo, hi)).fetchall()
                before = [] if from_ms is None else conn.execute(
                    schema.REPORT_FAULTS_BEFORE.format(body="body::text", src="body->'src'",
                                                       p="%s"),
                    (truck_id, from_ms)).fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            raise SinkStoreUnavailableError(f"postgresql: {exc}") from exc
        return ReportInput(truck_id, from_ms, to_ms,
                           tuple(StoredEvent(*r) for r in events),
                           tuple(StoredEvent(*r) for r in before))

    def count_events(self, truck_id: str | None = None) -> int:
        """Rows in ``events`` (of one truck)."""
        conn = self._connection()
        with conn.transaction():
            if truck_id is None:
                row = conn.execute("SELECT count(*) FROM events").fetchone()
            else:
                row = conn.execute("SELECT count(*) FROM events WHERE truck_id = %s",
                                   (truck_id,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._drop()
