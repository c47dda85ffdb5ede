"""The embedded default backend: one SQLite file (stdlib :mod:`sqlite3`), WAL mode.

Several sink processes may share one file: each write is a ``BEGIN IMMEDIATE``
transaction (the writer lock up front, so two writers never deadlock on an upgrade) and
waits up to :data:`BUSY_TIMEOUT_MS` for the other writer. A lock that outlasts it, a full
disk or an unreachable file raise :class:`SinkStoreUnavailableError`: the consumer does not
ack and retries.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from gateway.sink import schema
from gateway.sink.base import SinkStoreRejectedError, SinkStoreUnavailableError
from gateway.sink.gaps import GapInput, gap_inputs_of
from gateway.sink.report import ReportInput, StoredEvent
from gateway.sink.rows import EventBatch, Ignored, Outcome, Quarantined, StatusRow

#: How long a write waits for another process's write transaction on the same file.
BUSY_TIMEOUT_MS: Final = 10_000

_EVENTS_TABLE: Final = """CREATE TABLE IF NOT EXISTS {name} (
        truck_id TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
        type TEXT NOT NULL, body TEXT NOT NULL, arrival_ms INTEGER NOT NULL,
        stream TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (truck_id, stream, seq)) WITHOUT ROWID"""

#: Sinks before stream ids keyed events by (truck_id, seq): their rows are the default
#: stream ''. SQLite cannot change a primary key in place: copy into the new table.
MIGRATE_STREAM: Final = [
    _EVENTS_TABLE.format(name="events_stream"),
    """INSERT INTO events_stream (truck_id, seq, ts, type, body, arrival_ms, stream)
       SELECT truck_id, seq, ts, type, body, arrival_ms, '' FROM events""",
    "DROP TABLE events",
    "ALTER TABLE events_stream RENAME TO events",
]

DDL: Final = [
    """CREATE TABLE IF NOT EXISTS trucks (
        truck_id TEXT PRIMARY KEY, first_seen_ms INTEGER NOT NULL) WITHOUT ROWID""",
    _EVENTS_TABLE.format(name="events"),
    "CREATE INDEX IF NOT EXISTS events_truck_ts ON events (truck_id, ts)",
    "CREATE INDEX IF NOT EXISTS events_truck_type_ts ON events (truck_id, type, ts, seq)",
    """CREATE TABLE IF NOT EXISTS status_history (
        truck_id TEXT NOT NULL, ts INTEGER NOT NULL, state TEXT NOT NULL,
        body TEXT NOT NULL, arrival_ms INTEGER NOT NULL,
        PRIMARY KEY (truck_id, ts, state)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY, arrival_ms INTEGER NOT NULL, topic TEXT NOT NULL,
        truck_id TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL, payload BLOB NOT NULL)""",
    """CREATE VIEW IF NOT EXISTS positions AS
       SELECT truck_id, seq, ts, json_extract(body, '$.lat') AS lat,
              json_extract(body, '$.lon') AS lon, json_extract(body, '$.alt_m') AS alt_m,
              json_extract(body, '$.speed_kmh') AS speed_kmh,
              json_extract(body, '$.heading_deg') AS heading_deg,
              json_extract(body, '$.fix') AS fix,
              coalesce(json_extract(body, '$.provisional'), 0) AS provisional, stream
       FROM events WHERE type = 'gps'""",
    """CREATE VIEW IF NOT EXISTS latest_position AS
       SELECT p.* FROM trucks t JOIN positions p ON p.truck_id = t.truck_id
         AND (p.stream, p.seq) = (
         SELECT x.stream, x.seq FROM events x WHERE x.truck_id = t.truck_id AND x.type = 'gps'
         ORDER BY x.ts DESC, x.seq DESC LIMIT 1)""",
    """CREATE VIEW IF NOT EXISTS latest_status AS
       SELECT s.* FROM trucks t JOIN status_history s ON s.truck_id = t.truck_id
         AND s.ts = (SELECT max(ts) FROM status_history x WHERE x.truck_id = t.truck_id)""",
    """CREATE VIEW IF NOT EXISTS latest_state AS
       SELECT t.truck_id, p.ts AS position_ts, p.lat, p.lon, p.speed_kmh,
              (SELECT body FROM events e WHERE e.truck_id = t.truck_id AND e.type = 'engine'
               ORDER BY e.ts DESC, e.seq DESC LIMIT 1) AS engine,
              s.state, s.ts AS status_ts, json_extract(s.body, '$.pending') AS pending
       FROM trucks t LEFT JOIN latest_position p ON p.truck_id = t.truck_id
       LEFT JOIN latest_status s ON s.truck_id = t.truck_id""",
    """CREATE VIEW IF NOT EXISTS active_faults AS
       SELECT d.truck_id, json_extract(d.body, '$.src') AS src, d.ts, d.seq,
              json_extract(f.value, '$.spn') AS spn, json_extract(f.value, '$.fmi') AS fmi,
              json_extract(f.value, '$.oc') AS oc
       FROM events d, json_each(json_extract(d.body, '$.active')) AS f
       WHERE d.type = 'dtc' AND (d.stream, d.seq) = (
         SELECT x.stream, x.seq FROM events x WHERE x.truck_id = d.truck_id
           AND x.type = 'dtc'
           AND json_extract(x.body, '$.src') IS json_extract(d.body, '$.src')
         ORDER BY x.ts DESC, x.seq DESC LIMIT 1)""",
    """CREATE VIEW IF NOT EXISTS gap_notices AS
       SELECT truck_id, seq, json_extract(body, '$.first') AS first,
              json_extract(body, '$.last') AS last, json_extract(body, '$.reason') AS reason,
              stream
       FROM events WHERE type = 'seq_gap'""",
]

_INSERT_EVENT: Final = (
    "INSERT INTO events (truck_id, stream, seq, ts, type, body, arrival_ms)"
    " VALUES (?,?,?,?,?,?,?) ON CONFLICT (truck_id, stream, seq) DO NOTHING")
#: the status body's stream, "" when it names none (older trucks)
_STATUS_STREAM: Final = "coalesce(CAST(json_extract(body, '$.stream') AS TEXT), '')"


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an ``events`` table of a sink before stream ids to (truck_id, stream, seq);
    inside the caller's transaction. Idempotent: a no-op on a new or migrated file."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(events)")]
    if not cols or "stream" in cols:
        return
    for view in schema.VIEWS:  # they name the old table; DDL makes them anew
        db.execute(f"DROP VIEW IF EXISTS {view}")
    for stmt in MIGRATE_STREAM:
        db.execute(stmt)


class SqliteSinkStore:
    """A :class:`~gateway.sink.base.SinkStore` in one SQLite file."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        #: ``synchronous=FULL`` (True) or ``NORMAL`` (``?synchronous=normal`` in the URL)
        self.durable = durable
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteSinkStore({str(self.path)!r}, open={self._db is not None})"

    def open(self) -> None:
        """Open the file and create the schema now rather than at the first write."""
        self._conn()

    def _conn(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=BUSY_TIMEOUT_MS / 1000)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: each commit is on disk before the PUBACK that follows it; NORMAL (WAL)
            # is never torn either, but a power cut may take the latest acked commits
            db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            _migrate(db)
            for stmt in DDL:
                db.execute(stmt)
            db.execute("DROP VIEW IF EXISTS seq_gaps")  # a view of an older sink: made anew
            db.execute(schema.SEQ_GAPS_VIEW)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SinkStoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        self._db = db
        return db

    def write(self, outcome: Outcome) -> int:
        """Store one message in one transaction; the number of new event rows."""
        if isinstance(outcome, Ignored):
            return 0
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                inserted = self._rows(db, outcome)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise SinkStoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        except (sqlite3.DataError, sqlite3.IntegrityError, OverflowError) as exc:
            raise SinkStoreRejectedError(f"sqlite {self.path}: {exc}") from exc
        return inserted

    @staticmethod
    def _rows(db: sqlite3.Connection, outcome: EventBatch | StatusRow | Quarantined) -> int:
        if isinstance(outcome, Quarantined):
            db.execute(
                "INSERT INTO quarantine (arrival_ms, topic, truck_id, reason, detail, payload)"
                " VALUES (?,?,?,?,?,?)",
                (outcome.received_ms, outcome.topic, outcome.truck_id, str(outcome.reason),
                 outcome.detail, outcome.payload))
            return 0
        db.execute("INSERT INTO trucks VALUES (?, ?) ON CONFLICT DO NOTHING",
                   (outcome.truck_id, outcome.received_ms))
        if isinstance(outcome, StatusRow):
            db.execute("INSERT INTO status_history VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                       (outcome.truck_id, outcome.ts, outcome.state, outcome.body,
                        outcome.received_ms))
            return 0
        before = db.total_changes
        db.executemany(_INSERT_EVENT, [(r.truck_id, outcome.stream, r.seq, r.ts, r.type,
                                        r.body, outcome.received_ms) for r in outcome.rows])
        return db.total_changes - before

    def gap_inputs(self, truck_id: str | None = None) -> list[GapInput]:
        """Islands, notices and latest status counters per truck."""
        db = self._conn()
        where, args = ("WHERE truck_id = ?", (truck_id,)) if truck_id else ("", ())
        try:
            db.execute("BEGIN")
            try:
                trucks = [r[0] for r in db.execute(schema.TRUCKS.format(where=where), args)]
                islands = db.execute(schema.ISLANDS.format(where=where), args).fetchall()
                notices = db.execute(schema.NOTICES.format(where=where), args).fetchall()
                per_stream = db.execute(schema.STREAM_STATUS.format(
                    stream=_STATUS_STREAM, body="body", where=where), args).fetchall()
                latest = db.execute(schema.LATEST_STATUS.format(body="body", where=where),
                                    args).fetchall()
            finally:
                db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise SinkStoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        return gap_inputs_of(trucks, islands, notices, per_stream, latest)

    def report_input(self, truck_id: str, from_ms: int | None = None,
                     to_ms: int | None = None) -> ReportInput:
        """The events of one truck's trip report (one read transaction)."""
        db = self._conn()
        lo = schema.TS_MIN if from_ms is None else from_ms
        hi = schema.TS_MAX if to_ms is None else to_ms
        try:
            db.execute("BEGIN")
            try:
                events = db.execute(schema.REPORT_EVENTS.format(body="body", p="?"),
                                    (truck_id, lo, hi)).fetchall()
                before = [] if from_ms is None else db.execute(
                    schema.REPORT_FAULTS_BEFORE.format(
                        body="body", src="json_extract(body, '$.src')", p="?"),
                    (truck_id, from_ms)).fetchall()
            finally:
                db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise SinkStoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        return ReportInput(truck_id, from_ms, to_ms,
                           tuple(StoredEvent(*r) for r in events),
                           tuple(StoredEvent(*r) for r in before))

    def count_events(self, truck_id: str | None = None) -> int:
        """Rows in ``events`` (of one truck)."""
        db = self._conn()
        if truck_id is None:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        return int(db.execute("SELECT count(*) FROM events WHERE truck_id = ?",
                              (truck_id,)).fetchone()[0])

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None
