"""Opening the buffer file safely: integrity check, quarantine, seq high-water mark.

A file that fails ``PRAGMA quick_check`` or cannot be read as a database is renamed to
``<name>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm`` beside it), never
deleted, and a new file is started. A file locked by another process is *not* corrupt:
that raises :class:`~config.errors.StoreError` and leaves the file alone.

The seq mark (``<name>.seq``) is a tiny sidecar, replaced atomically (write, fsync,
rename, fsync directory), that records a *reservation*: no seq above ``reserved`` is
ever handed out before the mark saying so is durable. It lets seq continue above every
value ever issued even when the database is lost, quarantined, or (in ``normal``
durability) lost its last commits in a power cut.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from buffer import schema
from config.errors import StoreCorruptError, StoreError

log = logging.getLogger(__name__)

#: Seqs reserved per durable mark update: one tiny fsync per this many events.
SEQ_RESERVE_BLOCK = 100_000
QUARANTINE_INFIX = ".corrupt-"
#: How long an open waits for another process holding the file before giving up.
LOCK_TIMEOUT_S = 2.0
_SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True, slots=True)
class SeqMark:
    """Contents of the ``.seq`` sidecar."""

    reserved: int  # no seq above this has been handed out
    clean: bool  # written by a clean close: reserved == the last seq issued
    full: bool  # the writer ran with durability "full"
    #: the buffer's stream id (docs/wire-format.md, "Stream"); 0 in marks of older agents
    stream: int = 0


def mark_path(db: Path) -> Path:
    """Where the seq mark of buffer file ``db`` lives."""
    return db.with_name(db.name + ".seq")


def read_mark(path: Path) -> SeqMark | None:
    """The seq mark, or None if absent or unreadable (logged)."""
    try:
        obj = json.loads(path.read_bytes())
        return SeqMark(int(obj["reserved"]), bool(obj["clean"]), bool(obj["full"]),
                       int(obj.get("stream", 0)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("buffer: seq mark %s unreadable (%s); ignoring it", path, exc)
        return None


def write_mark(path: Path, mark: SeqMark) -> None:
    """Durably replace the seq mark (blocking: call from a worker thread)."""
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps({"reserved": mark.reserved, "clean": mark.clean, "full": mark.full,
                       "stream": mark.stream})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or file creation in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Opened:
    """Result of :func:`open_checked`."""

    conn: aiosqlite.Connection
    quarantined: Path | None = None
    fresh: bool = False  # the file did not exist (or was just quarantined)
    salvaged_seq: int = 0  # highest seq read from a quarantined file, best effort
    salvaged_meta: dict[str, int] = field(default_factory=dict)


def quarantined_files(db: Path) -> list[Path]:
    """Quarantined copies of ``db`` lying beside it."""
    prefix = db.name + QUARANTINE_INFIX
    try:
        names = os.listdir(db.parent)
    except OSError:
        return []
    return sorted(
        db.parent / n for n in names if n.startswith(prefix) and not n.endswith(_SIDE_FILES)
    )


def prepare_folder(db: Path) -> bool:
    """Create the folder of ``db``; returns whether ``db`` already exists."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create buffer folder {db.parent}: {exc}") from exc
    return db.exists()


async def open_checked(db: Path, pragmas: str, now_ms: int) -> Opened:
    """Open ``db`` with ``pragmas``, check it, and quarantine it if corrupt."""
    existed = prepare_folder(db)  # a few metadata syscalls, once at start
    try:
        conn = await _open_and_check(db, pragmas)
    except (StoreCorruptError, sqlite3.DatabaseError) as exc:
        if _is_locked(exc):
            raise StoreError(f"buffer {db} is in use by another process: {exc}") from exc
        if not existed:
            raise StoreError(f"cannot create buffer {db}: {exc}") from exc
        target = _quarantine(db, now_ms)
        log.error(  # noqa: TRY400 -- the cause is in the message; no traceback wanted
            "buffer: %s is corrupt or unreadable (%s); moved to %s", db, exc, target)
        seq, meta = await _salvage(target)
        try:
            conn = await _open_and_check(db, pragmas)
        except (StoreCorruptError, sqlite3.DatabaseError) as exc2:
            raise StoreError(f"cannot start a new buffer {db}: {exc2}") from exc2
        return Opened(conn, quarantined=target, fresh=True, salvaged_seq=seq, salvaged_meta=meta)
    return Opened(conn, fresh=not existed)


def _is_locked(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


async def _open_and_check(db: Path, pragmas: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(db, isolation_level=None, timeout=LOCK_TIMEOUT_S)
    try:
        await conn.executescript(pragmas)
        mode = [tuple(r) for r in await conn.execute_fetchall("PRAGMA journal_mode")]
        rows = [tuple(r) for r in await conn.execute_fetchall("PRAGMA quick_check")]
        _check_opened(db, mode, rows)
        await conn.executescript(schema.create_script())
    except BaseException:
        await conn.close()
        raise
    return conn


def _check_opened(db: Path, mode: list[tuple[object, ...]], check: list[tuple[object, ...]]
                  ) -> None:
    if check != [("ok",)]:
        raise StoreCorruptError(f"quick_check failed: {check[:5]}")
    if mode != [("wal",)]:
        raise StoreError(f"buffer {db}: cannot enable WAL (journal_mode={mode})")


def _quarantine(db: Path, now_ms: int) -> Path:
    stamp = datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    target = db.with_name(f"{db.name}{QUARANTINE_INFIX}{stamp}")
    n = 1
    while target.exists():
        target = db.with_name(f"{db.name}{QUARANTINE_INFIX}{stamp}-{n}")
        n += 1
    try:
        db.rename(target)
        for side in _SIDE_FILES:
            src = db.with_name(db.name + side)
            if src.exists():
                src.rename(target.with_name(target.name + side))
        fsync_dir(db.parent)
    except OSError as exc:
        raise StoreError(f"cannot quarantine corrupt buffer {db}: {exc}") from exc
    return target


async def _salvage(path: Path) -> tuple[int, dict[str, int]]:
    """Best effort: the highest seq and the counters of a quarantined file."""
    seq, meta = 0, {}
    with contextlib.suppress(sqlite3.Error, OSError, ValueError):
        uri = f"file:{path}?mode=ro&immutable=1"
        async with aiosqlite.connect(uri, uri=True) as conn:
            with contextlib.suppress(sqlite3.Error):
                for key, value in await conn.execute_fetchall("SELECT key, value FROM meta"):
                    meta[str(key)] = int(value)
            for (value,) in await conn.execute_fetchall(schema.MAX_SEQ_SQL):
                seq = max(seq, int(value or 0))
    seq = max(seq, meta.get(schema.META_LAST_SEQ, 0))
    if seq:
        log.info("buffer: salvaged seq %d from quarantined %s", seq, path)
    return seq, meta
