"""The buffer's SQLite file: the connection, its lock, its worker thread, the start point.

:class:`Db` owns the aiosqlite connection (opened with :func:`schema.connection_pragmas`,
checked and, if corrupt, quarantined by :func:`recovery.open_checked`), the lock that
serialises every use of it, and the one worker thread for blocking file work (fsync, the
seq mark, the ballast). The other parts of the store reach the connection only through
:meth:`Db.locked`, so "who may touch SQLite now" has one answer.

At open it also works out where seq continues (:class:`Start`): above the file's own
highest seq, what a quarantined file yielded, and the seq mark when the file cannot
vouch for itself (see docs/buffer.md, Sequence numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import aiosqlite

from buffer import disk, policy, recovery, schema
from config import BufferConfig
from config.errors import StoreError, StoreFullError
from config.events import Priority

log = logging.getLogger(__name__)

UPSERT_META_SQL = "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"


class GapReason(Enum):
    """Why seq jumps over a reservation at open (the ``reason`` of the seq_gap notice)."""

    UNCLEAN_START = "unclean_start"
    QUARANTINE = "quarantine"
    MISSING_FILE = "missing_file"

    def __repr__(self) -> str:
        return f"GapReason.{self.name}"



@contextlib.asynccontextmanager
async def write_transaction(conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; if the body (or the commit) raises, the
    transaction is rolled back (a failing rollback is not allowed to hide the error)."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
        raise

def new_stream_id() -> int:
    """A random, non-zero 63-bit stream id (fits SQLite's signed INTEGER)."""
    return secrets.randbits(63) or 1


def stream_name(stream: int) -> str:
    """The stream id as it travels: 16 lowercase hex digits; ``""`` for 0 (the default
    stream of buffers created before stream ids existed)."""
    return f"{stream:016x}" if stream else ""


@dataclass(frozen=True, slots=True)
class Start:
    """Where a freshly opened file continues, and what happened to it on the way."""

    next_seq: int
    known: int  # the highest seq this file can vouch for
    meta: Mapping[str, int]  # persisted counters (merged with a quarantined file's)
    unclean: bool  # the seq mark was not written by a clean close
    quarantined: bool  # the old file was corrupt and moved aside
    gap: GapReason | None  # set when next_seq jumps above ``known + 1``
    #: the stream id (``schema.META_STREAM``): kept from the file, a quarantined file or
    #: the seq mark; new (random) only when none of them has any seq history
    stream: int = 0
    #: a quarantined file: seq ranges announced lost (their notices are already rows of
    #: the new file) and how many rows were salvaged into it
    lost: tuple[tuple[int, int], ...] = ()
    salvaged_rows: int = 0


class Db:
    """One open buffer file; use :meth:`open`, end with :meth:`close`."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, *, full: bool) -> None:
        """Use :meth:`open`."""
        self.path = path
        self.full = full
        self._conn = conn
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="truckgw-buffer-sync")
        #: the stream id, written into every seq mark (set at open)
        self.stream = 0

    def __repr__(self) -> str:
        return f"Db({str(self.path)!r}, locked={self._lock.locked()})"

    @classmethod
    async def open(
        cls, cfg: BufferConfig, budget: policy.Budget, now_ms: int
    ) -> tuple[Db, Start]:
        """Open (or create) ``cfg.path``, quarantine it if corrupt, find the next seq."""
        path = Path(cfg.path)
        full = cfg.durability == "full"
        pragmas = schema.connection_pragmas(
            full=full,
            wal_autocheckpoint=budget.wal_autocheckpoint_pages,
            journal_size_limit=budget.wal_bytes,
        )
        mark = recovery.read_mark(recovery.mark_path(path))
        opened = await recovery.open_checked(path, pragmas, now_ms, mark)
        db = cls(path, opened.conn, full=full)
        try:
            start = await db._start(opened, mark)
            db.stream = start.stream
        except BaseException:
            await db.close()
            raise
        return db, start

    async def _start(self, opened: recovery.Opened, mark: recovery.SeqMark | None) -> Start:
        conn = self._conn
        meta = {str(k): int(v) for k, v in await conn.execute_fetchall(
            "SELECT key, value FROM meta")}
        if opened.quarantined is not None:
            meta = {**opened.salvaged_meta, **{
                k: v for k, v in meta.items() if k != schema.META_VERSION}}
        base = max(meta.get(schema.META_LAST_SEQ, 0), opened.salvaged_seq)
        for (value,) in await conn.execute_fetchall(schema.MAX_SEQ_SQL):
            base = max(base, int(value or 0))
        known = base
        if mark is not None and (
            mark.clean or opened.fresh or opened.quarantined or not mark.full
        ):
            base = max(base, mark.reserved)
        gap: GapReason | None = None
        if base > known:
            if opened.quarantined is not None:
                gap = GapReason.QUARANTINE
            elif opened.fresh:
                gap = GapReason.MISSING_FILE
            else:
                gap = GapReason.UNCLEAN_START
        stream = meta.get(schema.META_STREAM, 0) or (mark.stream if mark is not None else 0)
        if not stream and known == 0 and mark is None:
            # no seq history anywhere: seq starts at 1 again, so a consumer that has the
            # truck's earlier seqs must be able to tell these apart (docs/wire-format.md)
            stream = new_stream_id()
        return Start(
            next_seq=base + 1,
            known=known,
            meta=meta,
            unclean=mark is not None and not mark.clean,
            quarantined=opened.quarantined is not None,
            gap=gap,
            stream=stream,
            lost=opened.lost,
            salvaged_rows=opened.salvaged_rows,
        )

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, for as long as the lock is held."""
        async with self._lock:
            yield self._conn

    async def class_totals(self) -> dict[Priority, tuple[int, int]]:
        """Rows and body bytes per class (a full scan: once at open)."""
        out: dict[Priority, tuple[int, int]] = {}
        async with self.locked() as conn:
            for p in Priority:
                ((n, nbytes),) = await conn.execute_fetchall(schema.class_totals_sql(p))
                out[p] = (int(n), int(nbytes))
        return out

    async def put_meta(self, rows: list[tuple[str, int]]) -> None:
        """Write integers to ``meta`` (autocommit, lock taken here)."""
        async with self.locked() as conn:
            await conn.executemany(UPSERT_META_SQL, rows)

    async def get_state(self, key: str) -> bytes | None:
        """The ``state`` blob of ``key``, or None."""
        async with self.locked() as conn:
            rows = list(await conn.execute_fetchall(schema.STATE_GET_SQL, (key,)))
        return bytes(rows[0][0]) if rows else None

    async def put_state(self, key: str, value: bytes | None) -> None:
        """Replace (``None``: delete) the ``state`` blob of ``key`` (autocommit)."""
        async with self.locked() as conn:
            if value is None:
                await conn.execute(schema.STATE_DELETE_SQL, (key,))
            else:
                await conn.execute(schema.STATE_PUT_SQL, (key, value))

    async def run_sync(self, fn: Callable[[], object]) -> None:
        """Run blocking file work (fsync, ballast) on the store's own worker thread."""
        await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def write_mark(self, mark: recovery.SeqMark) -> None:
        """Durably replace the seq mark; ``StoreError`` if the file system refuses.

        On a full filesystem the ballast is given up first (it exists for this: a start
        on a disk that another program filled); ``StoreFullError`` if even that is not
        enough.
        """
        target = recovery.mark_path(self.path)
        mark = dataclasses.replace(mark, stream=self.stream)
        for attempt in range(2):
            try:
                await self.run_sync(lambda: recovery.write_mark(target, mark))
            except OSError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                if full and attempt == 0 and await self._release_ballast():
                    continue
                err = StoreFullError if full else StoreError
                raise err(f"cannot write seq mark for {self.path}: {exc}") from exc
            return

    async def _release_ballast(self) -> bool:
        had = disk.ballast_path(self.path).exists()
        await self.run_sync(lambda: disk.release_ballast(self.path))
        return had

    async def close(self, *, clean_mark: recovery.SeqMark | None = None) -> None:
        """Close the connection (SQLite checkpoints), write ``clean_mark``, end the thread."""
        try:
            await self._conn.close()
        finally:
            if clean_mark is not None:
                with contextlib.suppress(StoreError):
                    await self.write_mark(clean_mark)
            self._pool.shutdown(wait=True)
