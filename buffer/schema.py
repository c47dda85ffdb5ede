"""The on-disk layout of the buffer: tables, SQL statements and SQLite settings.

One table per eviction class (``ev_critical``, ``ev_position``, ``ev_telemetry``), each
keyed by ``seq`` (the rowid, so rows are stored in seq order). Separate tables mean that
thinning or dropping old points of one class empties whole B-tree pages instead of
punching holes in pages shared with other classes, so the freed space is really
reusable; a class never needs a secondary index (no extra write amplification).

``meta`` holds integers that must survive restarts: the seq high-water mark, the
eviction / expiry counters per class and the age clock; ``age_marks`` maps seqs to the
age clock at their commit (TTL expiry); ``dead_letter`` holds events the broker refused
even alone (too large), set aside until a restart or a ``retry_refused`` command moves
them back (docs/buffer.md, Dead letters). ``state`` holds small opaque blobs of the
agent's own state that must survive a restart (the open trip of the fleet events), one
row per key; the store does not look inside them.
"""

# ruff: noqa: S608  -- the only names interpolated into SQL here are the constant table
# names of TABLES and integer constants; every value is a bound parameter.

from __future__ import annotations

from collections.abc import Mapping

from config.events import Priority

SCHEMA_VERSION = 1

#: SQLite page size: the ext4 block size and a multiple of SD-card write units.
PAGE_SIZE = 4096
#: Page cache per connection, KiB. Fixed so RAM does not grow with the backlog.
CACHE_KIB = 2048

#: Config / counter names of the eviction classes.
CLASS_NAMES: Mapping[Priority, str] = {
    Priority.CRITICAL: "critical",
    Priority.POSITION: "position",
    Priority.TELEMETRY: "telemetry",
}
CLASS_BY_NAME: Mapping[str, Priority] = {v: k for k, v in CLASS_NAMES.items()}
TABLES: Mapping[Priority, str] = {p: f"ev_{n}" for p, n in CLASS_NAMES.items()}

#: Eviction order: raw telemetry goes first, then GPS points, critical events last.
EVICTION_ORDER: tuple[Priority, ...] = (Priority.TELEMETRY, Priority.POSITION, Priority.CRITICAL)

# meta keys
META_VERSION = "schema_version"
META_LAST_SEQ = "last_seq"
#: The buffer's stream id: a random 63-bit number drawn when a buffer starts with no seq
#: history at all (no file, no seq mark), so that (stream, seq) stays unique per truck
#: when seq restarts at 1; 0 (absent) for buffers created by older agents.
META_STREAM = "stream_id"
#: The buffer's age clock (ms the store has been open, summed over runs): TTLs run on it.
META_AGE = "age_ms"
#: Every stored row has a seq >= this (written with the age marks; bounds a salvage).
META_FLOOR = "floor_seq"
#: Seqs announced lost (not salvaged) with quarantined files, summed.
META_LOST_QUARANTINE = "lost_quarantine"

#: ``age_marks(seq, age_ms)``: every seq up to ``seq`` was committed at an age of at most
#: ``age_ms``. Written every expiry pass; TTL expiry reads it, never a wall clock.
MARK_SQL = "INSERT OR IGNORE INTO age_marks(seq, age_ms) VALUES (?, ?)"  # the earliest age wins
EXPIRED_UPTO_SQL = "SELECT max(seq) FROM age_marks WHERE age_ms <= ?"
#: Marks below the oldest stored seq are of no use, except the newest of them.
PRUNE_MARKS_SQL = (
    "DELETE FROM age_marks WHERE seq < (SELECT max(seq) FROM age_marks WHERE seq < ?)"
)


#: ``state(key, value)``: the agent's small persistent blobs (docs/buffer.md has none of
#: their meaning; :meth:`buffer.store.SqliteStore.put_state`).
STATE_GET_SQL = "SELECT value FROM state WHERE key = ?"
STATE_PUT_SQL = "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)"
STATE_DELETE_SQL = "DELETE FROM state WHERE key = ?"
#: A state blob larger than this is refused (it is meant for a few hundred bytes).
STATE_MAX_BYTES = 65536


def meta_evicted(p: Priority) -> str:
    """Meta key of the evicted counter of class ``p``."""
    return f"evicted_{CLASS_NAMES[p]}"


def meta_expired(p: Priority) -> str:
    """Meta key of the expired counter of class ``p``."""
    return f"expired_{CLASS_NAMES[p]}"


def create_script() -> str:
    """DDL for a new (or existing: idempotent) buffer file."""
    meta = "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
    parts = [meta + " WITHOUT ROWID;",
             ("CREATE TABLE IF NOT EXISTS age_marks("
              "seq INTEGER PRIMARY KEY, age_ms INTEGER NOT NULL);"),
             ("CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value BLOB NOT NULL)"
             " WITHOUT ROWID;")]
    parts.extend(
        f"CREATE TABLE IF NOT EXISTS {table}("
        "seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, type TEXT NOT NULL,"
        " body BLOB NOT NULL);"
        for table in TABLES.values()
    )
    parts.append(DEAD_LETTER_DDL)
    parts.append(
        f"INSERT OR IGNORE INTO meta(key, value) VALUES ('{META_VERSION}', {SCHEMA_VERSION});"
    )
    return "\n".join(parts)


#: Events the broker refused even alone, with their class and why (additive: files of
#: older agents get the table at their next open; older agents ignore it).
DEAD_LETTER_DDL = (
    "CREATE TABLE IF NOT EXISTS dead_letter("
    "seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, type TEXT NOT NULL,"
    " body BLOB NOT NULL, class INTEGER NOT NULL, reason TEXT NOT NULL);"
)
#: Dead letters per class: count and body bytes.
DEAD_LETTER_TOTALS_SQL = (
    "SELECT class, count(*), coalesce(sum(length(body)), 0) FROM dead_letter GROUP BY class"
)
#: Set one row of a class aside (``?1`` seq, ``?2`` reason); then delete it from its table.
DEAD_LETTER_MOVE_SQL = {
    p: (f"INSERT OR REPLACE INTO dead_letter(seq, ts_ms, type, body, class, reason) "
        f"SELECT seq, ts_ms, type, body, {int(p)}, ?2 FROM {t} WHERE seq = ?1")
    for p, t in TABLES.items()
}
#: Move the dead letters of one class back into its table.
DEAD_LETTER_RESTORE_SQL = {
    p: (f"INSERT OR IGNORE INTO {t}(seq, ts_ms, type, body) "
        f"SELECT seq, ts_ms, type, body FROM dead_letter WHERE class = {int(p)}")
    for p, t in TABLES.items()
}
DEAD_LETTER_RANGE_SQL = "SELECT min(seq), max(seq) FROM dead_letter"
#: A seq set aside must never be handed out again, whatever the tables hold at the next
#: open: ``last_seq`` in meta is raised to it in the same transaction.
RAISE_LAST_SEQ_SQL = (
    f"INSERT INTO meta(key, value) VALUES ('{META_LAST_SEQ}', ?) "
    "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)"
)
DEAD_LETTER_CLEAR_SQL = "DELETE FROM dead_letter"


def connection_pragmas(*, full: bool, wal_autocheckpoint: int, journal_size_limit: int) -> str:
    """Settings applied on every open (see docs/buffer.md for the reasoning).

    - ``locking_mode=EXCLUSIVE``: one agent owns the file; the WAL index lives in heap
      memory instead of a ``-shm`` file (no extra SD writes, no second writer).
    - ``journal_mode=WAL``: appends never rewrite the main file; readers of our own
      connection never block the writer.
    - ``synchronous``: FULL fsyncs the WAL at each commit; NORMAL only at checkpoints
      (the store adds its own periodic WAL fsync to bound the loss window).
    - ``wal_autocheckpoint`` / ``journal_size_limit``: bound the WAL inside ``max_bytes``.
    - ``mmap_size=0``: mapped pages would count in RSS and grow with the file.
    """
    sync = "FULL" if full else "NORMAL"
    return "\n".join(
        [
            "PRAGMA locking_mode=EXCLUSIVE;",
            f"PRAGMA page_size={PAGE_SIZE};",
            "PRAGMA auto_vacuum=NONE;",
            "PRAGMA journal_mode=WAL;",
            f"PRAGMA synchronous={sync};",
            f"PRAGMA wal_autocheckpoint={wal_autocheckpoint};",
            f"PRAGMA journal_size_limit={journal_size_limit};",
            f"PRAGMA cache_size=-{CACHE_KIB};",
            "PRAGMA mmap_size=0;",
            "PRAGMA temp_store=MEMORY;",
            "PRAGMA secure_delete=OFF;",
        ]
    )


def insert_sql(p: Priority) -> str:
    """Insert one row into the table of class ``p``."""
    return f"INSERT INTO {TABLES[p]}(seq, ts_ms, type, body) VALUES (?, ?, ?, ?)"


def delete_sql(p: Priority) -> str:
    """Delete one row (by seq) from the table of class ``p``."""
    return f"DELETE FROM {TABLES[p]} WHERE seq = ?"


def _arm(p: Priority, where: str) -> str:
    return f"SELECT seq, ts_ms, type, body, {int(p)} FROM {TABLES[p]} WHERE {where}"


#: Pending rows with ``?1 <= seq <= ?2``, ascending, at most ``?3``. SQLite merges the
#: three index-ordered arms (``MERGE (UNION ALL)``) and stops at the limit: no sort.
RANGE_ASC_SQL = (
    " UNION ALL ".join(_arm(p, "seq BETWEEN ?1 AND ?2") for p in TABLES)
    + " ORDER BY 1 ASC LIMIT ?3"
)
#: Same, descending (newest first).
RANGE_DESC_SQL = (
    " UNION ALL ".join(_arm(p, "seq BETWEEN ?1 AND ?2") for p in TABLES)
    + " ORDER BY 1 DESC LIMIT ?3"
)


def oldest_sql(p: Priority) -> str:
    """The ``limit`` oldest rows of class ``p`` above a seq: seq, ts_ms, body size."""
    return (
        f"SELECT seq, ts_ms, length(body) FROM {TABLES[p]} WHERE seq > ? "
        "ORDER BY seq LIMIT ?"
    )


def class_totals_sql(p: Priority) -> str:
    """Row count and body bytes of class ``p`` (a full scan: used once at open)."""
    return f"SELECT count(*), coalesce(sum(length(body)), 0) FROM {TABLES[p]}"


def oldest_seq_sql() -> str:
    """The smallest stored seq over every class (NULL when the buffer is empty)."""
    arms = " UNION ALL ".join(f"SELECT min(seq) AS s FROM {t}" for t in TABLES.values())
    return f"SELECT min(s) FROM ({arms})"


def lookup_sql(p: Priority) -> str:
    """Body size of one row of class ``p``."""
    return f"SELECT length(body) FROM {TABLES[p]} WHERE seq = ?"


MAX_SEQ_SQL = " UNION ALL ".join(f"SELECT max(seq) FROM {t}" for t in TABLES.values())
OLDEST_TS_SQL = " UNION ALL ".join(
    f"SELECT * FROM (SELECT ts_ms FROM {t} ORDER BY seq LIMIT 1)" for t in TABLES.values()
)
SPACE_SQL = "SELECT * FROM pragma_page_count(), pragma_freelist_count()"
