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

On a filesystem full to the last block the temporary cannot be created. The mark is
always written as :data:`MARK_BYTES` bytes with a checksum, so it is then overwritten in
place instead (no new block needed) and fsynced: a mark that says "seqs up to N were
handed out" must get to disk exactly when the disk is full, because that is when events
are given up (dropped and counted) and a later start must not hand their numbers out
again. A torn in-place write fails its checksum and is ignored like a missing mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import aiosqlite

from buffer import disk, salvage, schema
from config.errors import StoreCorruptError, StoreError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Seqs reserved per durable mark update: one tiny fsync per this many events.
SEQ_RESERVE_BLOCK = 100_000
#: Size of every seq mark written (padded), so that it can be overwritten in place.
MARK_BYTES = 256
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


def _mark_fields(mark: SeqMark) -> dict[str, object]:
    return {"reserved": mark.reserved, "clean": mark.clean, "full": mark.full,
            "stream": mark.stream}


def _mark_sum(fields: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def encode_mark(mark: SeqMark) -> bytes:
    """The mark's bytes: JSON with a checksum, padded with spaces to :data:`MARK_BYTES`."""
    fields = _mark_fields(mark)
    data = json.dumps({**fields, "sum": _mark_sum(fields)}).encode()
    if len(data) > MARK_BYTES:  # pragma: no cover - four numbers cannot get this long
        raise ValueError(f"seq mark of {len(data)} bytes > {MARK_BYTES}")
    return data.ljust(MARK_BYTES, b" ")


def read_mark(path: Path) -> SeqMark | None:
    """The seq mark, or None if absent or unreadable (logged)."""
    try:
        obj = json.loads(path.read_bytes())
        mark = SeqMark(int(obj["reserved"]), bool(obj["clean"]), bool(obj["full"]),
                       int(obj.get("stream", 0)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("buffer: seq mark %s unreadable (%s); ignoring it", path, exc)
        return None
    if "sum" in obj and obj["sum"] != _mark_sum(_mark_fields(mark)):
        log.warning("buffer: seq mark %s fails its checksum (a torn in-place write); "
                    "ignoring it", path)
        return None
    return mark


def write_mark(path: Path, mark: SeqMark) -> None:
    """Durably replace the seq mark (blocking: call from a worker thread): a temporary
    renamed over it, or, on a full filesystem, an overwrite in place (module doc)."""
    tmp = path.with_name(path.name + ".tmp")
    data = encode_mark(mark)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # never leave a half-written mark behind
            tmp.unlink()
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _overwrite_in_place(
                path, data):
            raise
        log.warning("buffer: filesystem full: seq mark %s overwritten in place", path)
        return
    fsync_dir(path.parent)


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Write ``data`` over the blocks ``path`` already has; False if it has too few
    (a mark of an older agent, or none: that would need a new block)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size < len(data):
            return False
        if os.pwrite(fd, data, 0) != len(data):
            return False
        os.fsync(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


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
    salvaged_seq: int = 0  # the highest seq the quarantined file may have held
    salvaged_meta: dict[str, int] = field(default_factory=dict)
    #: seq ranges of the quarantined file that may have been undelivered and were not
    #: salvaged (announced ``quarantine``, counted ``lost_quarantine``)
    lost: tuple[tuple[int, int], ...] = ()
    salvaged_rows: int = 0


def quarantined_files(db: Path) -> list[Path]:
    """Quarantined copies of ``db`` lying beside it."""
    prefix = db.name + QUARANTINE_INFIX
    try:
        names = os.listdir(db.parent)
    except OSError:
        return []
    return sorted(
        db.parent / n for n in names
        if n.startswith(prefix) and not n.endswith((*_SIDE_FILES, salvage.WORK_SUFFIX))
    )


def prepare_folder(db: Path) -> bool:
    """Create the folder of ``db``; returns whether ``db`` already exists."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create buffer folder {db.parent}: {exc}") from exc
    return db.exists()


def clean_stale(db: Path) -> None:
    """Remove what an interrupted run may have left: a half-written seq mark, salvage files."""
    with contextlib.suppress(FileNotFoundError):
        mark_path(db).with_name(mark_path(db).name + ".tmp").unlink()
    for suffix in (salvage.WORK_SUFFIX, salvage.NEW_SUFFIX,
                   salvage.WORK_SUFFIX + salvage.TEMPLATE_SUFFIX):
        salvage.remove_work(db.with_name(db.name + suffix))


async def open_checked(db: Path, pragmas: str, now_ms: int, mark: SeqMark | None = None
                       ) -> Opened:
    """Open ``db`` with ``pragmas``, check it, and if corrupt salvage and quarantine it.

    ``mark`` is the seq mark read before: it bounds what a corrupt file may have held.
    """
    existed = prepare_folder(db)  # a few metadata syscalls, once at start
    clean_stale(db)
    wal = (await _in_thread(salvage.scan_wal, db.with_name(db.name + "-wal")) if existed
           else salvage.WalScan(damaged=False, top_seq=0))
    wal_lost = wal.damaged
    try:
        conn = await _open_and_check(db, pragmas, wal_lost=wal_lost)
    except (StoreCorruptError, sqlite3.DatabaseError) as exc:
        if _is_locked(exc):
            raise StoreError(f"buffer {db} is in use by another process: {exc}") from exc
        if not existed:
            raise StoreError(f"cannot create buffer {db}: {exc}") from exc
        log.error(  # noqa: TRY400 -- the cause is in the message; no traceback wanted
            "buffer: %s is corrupt or unreadable (%s); salvaging it", db, exc)
        new = db.with_name(db.name + salvage.NEW_SUFFIX)
        if _free_bytes(db.parent) < _size(db):  # the salvaged rows need room: the ballast
            disk.release_ballast(db)
        for attempt in range(2):
            try:
                got = await _in_thread(functools.partial(
                    _salvage_new, db, new, pragmas, mark=mark, wal=wal, now_ms=now_ms))
                break
            except (sqlite3.Error, OSError) as exc2:
                salvage.remove_work(new)
                # a full disk: the ballast is there for this, then once more
                if attempt == 0 and disk.release_ballast(db):
                    continue
                raise StoreError(f"cannot start a new buffer {db}: {exc2}") from exc2
        target = _quarantine(db, now_ms)
        try:
            # on a full disk the close could not checkpoint: the salvaged commits are in
            # the new file's WAL, which moves with it (first, so no moment has the file
            # without its WAL; a missing file with a WAL is rebuilt from the WAL)
            new_wal = new.with_name(new.name + "-wal")
            if _size(new_wal) > 0:
                new_wal.rename(db.with_name(db.name + "-wal"))
            new.rename(db)
            fsync_dir(db.parent)
        except OSError as exc2:
            raise StoreError(f"cannot start a new buffer {db}: {exc2}") from exc2
        log.error("buffer: moved %s to %s; %d rows salvaged, %d seqs announced lost",  # noqa: TRY400
                  db, target, got.rows, got.lost_count)
        try:
            conn = await _open_and_check(db, pragmas)
        except (StoreCorruptError, sqlite3.DatabaseError) as exc2:
            raise StoreError(f"cannot start a new buffer {db}: {exc2}") from exc2
        return Opened(conn, quarantined=target, fresh=True, salvaged_seq=got.top,
                      salvaged_meta=got.meta, lost=got.lost, salvaged_rows=got.rows)
    return Opened(conn, fresh=not existed)


async def _in_thread(fn: Callable[..., _T], *args: object) -> _T:
    """Blocking file work at open, on a thread of its own that ends with it."""
    with ThreadPoolExecutor(1, thread_name_prefix="truckgw-buffer-open") as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _salvage_new(db: Path, new: Path, pragmas: str, *, mark: SeqMark | None,
                 wal: salvage.WalScan, now_ms: int) -> salvage.Salvage:
    """Fill a new file ``new`` from corrupt ``db`` (blocking); fsynced when it returns."""
    salvage.remove_work(new)
    conn = sqlite3.connect(new, isolation_level=None)
    try:
        conn.executescript(pragmas)
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema.create_script())
        return salvage.salvage_into(
            db, conn, pragmas, now_ms=now_ms,
            mark_reserved=None if mark is None else mark.reserved,
            mark_clean=mark is not None and mark.clean, wal_lost=wal.damaged,
            wal_top=wal.top_seq, folder=new.parent)
    finally:
        # checkpoints into the file and removes its WAL; on a full disk the WAL stays
        # (the caller moves it along with the file)
        conn.close()


def _is_locked(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


async def _open_and_check(db: Path, pragmas: str, *, wal_lost: bool = False
                          ) -> aiosqlite.Connection:
    if wal_lost:  # SQLite would open it and silently drop the commits after the damage
        raise StoreCorruptError("the WAL has intact frames after a damaged one")
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
