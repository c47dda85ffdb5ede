"""Keeping the buffer inside its bounds: TTL expiry, eviction, disk-full handling, sync.

:class:`Upkeep` owns the filesystem watch (:class:`~buffer.disk.DiskGuard`: free space,
ballast, the WAL descriptor), the TTLs and the clocks of the periodic work. The group
commit calls :meth:`Upkeep.make_room` before each insert and :meth:`Upkeep.on_disk_full`
when SQLite reports a full disk, both with the connection's lock held; between commits
the writer calls :meth:`Upkeep.tick`. The transactions themselves are in
:mod:`buffer.maint`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping

import aiosqlite

from buffer import policy, schema
from buffer.db import UPSERT_META_SQL, Db, write_transaction
from buffer.disk import DiskGuard
from buffer.leases import LeaseBook
from buffer.maint import evict_to, expire
from buffer.tally import Tally
from config import BufferConfig

log = logging.getLogger(__name__)

#: In ``normal`` durability the WAL is fsynced at least this often (the loss window).
NORMAL_SYNC_INTERVAL_S = 1.0
#: TTL expiry runs at most this often.
EXPIRE_INTERVAL_S = 10.0


def is_full(exc: BaseException) -> bool:
    """Whether a SQLite error means the disk (or the file) is full."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


class Upkeep:
    """TTL expiry, eviction under ``max_bytes``, disk-full recovery, periodic WAL sync."""

    def __init__(
        self,
        cfg: BufferConfig,
        budget: policy.Budget,
        *,
        db: Db,
        tally: Tally,
        book: LeaseBook,
        top: Callable[[], int],
        age_base_ms: int = 0,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = budget
        self._db = db
        self._tally = tally
        self._book = book  # read only: leased rows are never evicted or expired
        self._top = top  # the last committed seq
        self._mono = mono
        self._age_base_ms = age_base_ms  # the age clock when this run started
        self._mono0 = mono()
        self._disk = DiskGuard(db.path, budget)
        self._ttl_ms = {schema.CLASS_BY_NAME[k]: int(v * 1000) for k, v in cfg.ttl_s.items()}
        self._disk_full = False
        self._last_sync = time.monotonic()
        self._last_expire = time.monotonic()

    def set_ttl_s(self, ttl_s: Mapping[str, float]) -> None:
        """New maximum ages per class (remote configuration); bind at the next expiry."""
        self._ttl_ms = {schema.CLASS_BY_NAME[k]: int(v * 1000) for k, v in ttl_s.items()}
        self._last_expire = 0.0  # expire at the next tick, not an interval later

    def __repr__(self) -> str:
        return f"Upkeep({str(self._db.path)!r}, disk_full={self._disk_full})"

    @property
    def disk_full(self) -> bool:
        """Whether the filesystem, not ``max_bytes``, limits the buffer now."""
        return self._disk_full

    def file_bytes(self) -> int:
        """Size of the database file plus its WAL, in bytes."""
        return self._disk.file_bytes()

    def note_full(self) -> None:
        """The filesystem refused a write outside SQLite (the seq mark): disk full."""
        self._disk_full = True
        self._tally.extra["disk_full_errors"] += 1

    async def make_ballast(self) -> None:
        """(Re)create the ballast file if there is room."""
        await self._db.run_sync(self._disk.make_ballast)

    async def make_room(self, conn: aiosqlite.Connection, incoming: int, *, shrink: bool) -> None:
        """Evict (lock held) so that ``incoming`` more bytes fit in the budget."""
        ((pages, free),) = await conn.execute_fetchall(schema.SPACE_SQL)
        used = (int(pages) - int(free)) * schema.PAGE_SIZE
        cap = self._disk.space_cap(int(pages) * schema.PAGE_SIZE)
        if shrink:  # a commit hit ENOSPC although statvfs said it fits: ask for more room
            cap = min(cap, used - incoming)
        self._disk_full = cap < self._budget.data_bytes
        if used + incoming <= cap:
            return

        async def used_bytes() -> int:
            ((pages, free),) = await conn.execute_fetchall(schema.SPACE_SQL)
            return (int(pages) - int(free)) * schema.PAGE_SIZE

        target = int(cap * (1 - policy.EVICT_HEADROOM)) - incoming
        try:
            ok = await evict_to(conn, self._book, self._tally, target, used_bytes)
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise
            self._tally.extra["disk_full_errors"] += 1
            ok = False
        self._tally.extra["evictions"] += 1
        if not ok:
            log.warning("buffer: cannot free enough room (%d used, cap %d)", used, cap)

    async def on_disk_full(self, conn: aiosqlite.Connection, exc: sqlite3.Error, attempt: int
                           ) -> None:
        """A commit failed with a full disk (lock held): free the ballast, checkpoint."""
        self._disk_full = True
        self._tally.extra["disk_full_errors"] += 1
        log.warning("buffer: disk full on commit (attempt %d): %s", attempt + 1, exc)
        await self._db.run_sync(self._disk.drop_ballast)
        with contextlib.suppress(sqlite3.Error):
            await conn.execute("PRAGMA wal_checkpoint(RESTART)")

    async def persist_counters(self) -> None:
        """Write the in-memory eviction counters to meta (after drops outside SQL)."""
        rows = [(schema.meta_evicted(p), n) for p, n in self._tally.evicted.items()]
        rows += [(schema.meta_expired(p), n) for p, n in self._tally.expired.items()]
        rows.append((schema.META_LOST_QUARANTINE, self._tally.lost_quarantine))
        await self._db.put_meta(rows)

    def age_ms(self) -> int:
        """The age clock: milliseconds this buffer has been open, over all runs.

        Monotonic within a run and carried across restarts in ``meta``, so no step of
        the wall clock (fake-hwclock at boot, then GPS or NTP) moves it. Time while the
        agent is stopped does not count: a TTL never expires an event early.
        """
        return self._age_base_ms + max(0, round((self._mono() - self._mono0) * 1000))

    async def mark_age(self) -> None:
        """Record that every seq committed so far is at most this old, and the clock."""
        age = self.age_ms()
        async with self._db.locked() as conn, write_transaction(conn):
            await conn.execute(schema.MARK_SQL, (self._top(), age))
            await conn.execute(UPSERT_META_SQL, (schema.META_AGE, age))
            ((oldest,),) = await conn.execute_fetchall(schema.oldest_seq_sql())
            if oldest is not None:
                await conn.execute(schema.PRUNE_MARKS_SQL, (int(oldest),))
            # every row stored now or later has a seq >= this: bounds a salvage
            floor = int(oldest) if oldest is not None else self._top() + 1
            await conn.execute(UPSERT_META_SQL, (schema.META_FLOOR, floor))

    async def expire_now(self) -> int:
        """Drop events that spent more than their class TTL in the buffer; how many."""
        self._last_expire = time.monotonic()
        if not self._ttl_ms:
            return 0
        await self.mark_age()
        async with self._db.locked() as conn:
            n = await expire(conn, self._book, self._tally, self._ttl_ms, self.age_ms())
        if n:
            log.info("buffer: expired %d events past their TTL", n)
        return n

    async def tick(self) -> None:
        """Periodic work between commits: TTL expiry, normal-mode WAL fsync, ballast."""
        now = time.monotonic()
        if self._ttl_ms and now - self._last_expire >= EXPIRE_INTERVAL_S:
            await self.expire_now()
        if now - self._last_sync >= NORMAL_SYNC_INTERVAL_S:
            self._last_sync = now
            if not self._db.full:
                await self._db.run_sync(self._disk.sync_wal)
            await self._db.run_sync(self._disk.make_ballast)

    def close(self) -> None:
        """Close the WAL descriptor."""
        self._disk.close()
