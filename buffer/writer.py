"""The write side of the store: group commit, seq reservation, room-making on a full disk.

A mixin of :class:`buffer.store.SqliteStore`, kept apart to keep each module short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import aiosqlite

from buffer import policy, recovery, schema
from buffer.disk import DiskGuard
from buffer.leases import LeaseBook
from buffer.maint import evict_to
from buffer.tally import Tally
from config.errors import StoreError, StoreFullError
from config.events import Priority

log = logging.getLogger(__name__)

#: Retries of a group commit that hit a full disk, evicting in between.
MAX_FULL_RETRIES = 3


class Pending(NamedTuple):
    """An event waiting for its group commit."""

    seq: int
    prio: Priority
    ts_ms: int
    type: str
    body: bytes
    fut: asyncio.Future[int]


def is_full(exc: BaseException) -> bool:
    """Whether a SQLite error means the disk (or the file) is full."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


class CommitOps:
    """Group commit and its helpers over the store's connection."""

    _conn: aiosqlite.Connection
    _lock: asyncio.Lock
    _book: LeaseBook
    _tally: Tally
    _pending_evt: asyncio.Event
    _path: Path
    _full: bool
    _budget: policy.Budget
    _disk: DiskGuard
    _pool: ThreadPoolExecutor
    _reserved: int
    _disk_full: bool
    last_committed_seq: int

    def _drop_queued(self, item: Pending, reason: str) -> None:
        self._tally.evicted[item.prio] += 1
        self._tally.extra[reason] += 1
        if not item.fut.done():
            item.fut.set_exception(StoreFullError(f"event seq {item.seq} dropped: {reason}"))
            item.fut.exception()  # mark retrieved: a dropped append is counted, not an error

    async def _commit(self, batch: list[Pending]) -> None:
        if not batch:
            return
        est = sum(policy.row_cost(len(i.body)) for i in batch)
        if batch[-1].seq > self._reserved:
            await self._reserve(batch[-1].seq)
        for attempt in range(MAX_FULL_RETRIES + 1):
            async with self._lock:
                await self._make_room(est, shrink=attempt > 0)
                try:
                    await self._insert(batch)
                except sqlite3.Error as exc:
                    if not is_full(exc):
                        raise
                    self._disk_full = True
                    self._tally.extra["disk_full_errors"] += 1
                    log.warning("buffer: disk full on commit (attempt %d): %s", attempt + 1, exc)
                    await self._run_sync(self._disk.drop_ballast)
                    with contextlib.suppress(sqlite3.Error):
                        await self._conn.execute("PRAGMA wal_checkpoint(RESTART)")
                    continue
            break
        else:
            for item in batch:
                self._drop_queued(item, "dropped_disk_full")
            with contextlib.suppress(sqlite3.Error, StoreError):
                await self._persist_counters()
            return
        for item in batch:
            self._tally.add(item.prio, 1, len(item.body))
        self.last_committed_seq = batch[-1].seq
        for item in batch:
            if not item.fut.done():
                item.fut.set_result(item.seq)
        self._pending_evt.set()

    async def _insert(self, batch: list[Pending]) -> None:
        rows: dict[Priority, list[tuple[int, int, str, bytes]]] = {}
        for i in batch:
            rows.setdefault(i.prio, []).append((i.seq, i.ts_ms, i.type, i.body))
        conn = self._conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for p, r in rows.items():
                await conn.executemany(schema.insert_sql(p), r)
            # In every mode: after a crash the file then knows its own last commit, so
            # the seq_gap notice of an unclean start covers only numbers never committed
            # (normal mode still jumps over the reservation: a power cut may take back
            # commits that were already delivered, and their seqs must not be reused).
            await conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                (schema.META_LAST_SEQ, batch[-1].seq),
            )
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
            raise

    async def _reserve(self, seq: int) -> None:
        """Durably reserve seqs above ``seq`` before any of them becomes visible."""
        mark = recovery.SeqMark(seq + recovery.SEQ_RESERVE_BLOCK, clean=False, full=self._full)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._pool, recovery.write_mark, recovery.mark_path(self._path), mark)
        except OSError as exc:
            raise StoreError(f"cannot write seq mark for {self._path}: {exc}") from exc
        self._reserved = mark.reserved

    async def _used_bytes(self) -> int:
        ((pages, free),) = await self._conn.execute_fetchall(schema.SPACE_SQL)
        return (int(pages) - int(free)) * schema.PAGE_SIZE

    async def _make_room(self, incoming: int, *, shrink: bool) -> None:
        """Evict (lock held) so that ``incoming`` more bytes fit in the budget."""
        ((pages, free),) = await self._conn.execute_fetchall(schema.SPACE_SQL)
        used = (int(pages) - int(free)) * schema.PAGE_SIZE
        cap = self._disk.space_cap(int(pages) * schema.PAGE_SIZE)
        if shrink:  # a commit hit ENOSPC although statvfs said it fits: ask for more room
            cap = min(cap, used - incoming)
        self._disk_full = cap < self._budget.data_bytes
        if used + incoming <= cap:
            return
        target = int(cap * (1 - policy.EVICT_HEADROOM)) - incoming
        try:
            ok = await evict_to(self._conn, self._book, self._tally, target, self._used_bytes)
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise
            self._tally.extra["disk_full_errors"] += 1
            ok = False
        self._tally.extra["evictions"] += 1
        if not ok:
            log.warning("buffer: cannot free enough room (%d used, cap %d)", used, cap)

    async def _persist_counters(self) -> None:
        """Write the in-memory eviction counters to meta (after drops outside SQL)."""
        rows = [(schema.meta_evicted(p), n) for p, n in self._tally.evicted.items()]
        rows += [(schema.meta_expired(p), n) for p, n in self._tally.expired.items()]
        async with self._lock:
            await self._conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", rows)

    async def _run_sync(self, fn: Callable[[], object]) -> None:
        """Run blocking file work (fsync, ballast) on the store's own worker thread."""
        await asyncio.get_running_loop().run_in_executor(self._pool, fn)


