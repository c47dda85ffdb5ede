"""The store-and-forward buffer: an asyncio event log on SQLite (aiosqlite), WAL mode.

Usage::

    async with await SqliteStore.open(cfg) as store:
        seq = await store.append(event)
        batch = await store.lease(Lane.BACKFILL, 500, 64_000)

``open`` is a coroutine returning the store; the store itself is the async context
manager (``__aexit__`` calls :meth:`close`). See docs/buffer.md for the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Self

import aiosqlite

from buffer import policy, recovery, schema
from buffer.api import StoreStats
from buffer.disk import DiskGuard, budget_for
from buffer.lanes import LeaseOps
from buffer.leases import LeaseBook
from buffer.maint import expire
from buffer.tally import Tally
from buffer.writer import CommitOps, Pending
from config import BufferConfig
from config.errors import StoreError
from config.events import Event, Priority, encode_body, seq_gap_event

log = logging.getLogger(__name__)

#: In ``normal`` durability the WAL is fsynced at least this often (the loss window).
NORMAL_SYNC_INTERVAL_S = 1.0
#: Writer housekeeping tick (TTL expiry, normal-mode sync) when idle.
TICK_S = 1.0
#: TTL expiry runs at most this often.
EXPIRE_INTERVAL_S = 10.0
#: Events waiting for a commit beyond this are dropped oldest first (writer stalled).
MAX_QUEUED_EVENTS = 200_000


class StoreState(Enum):
    """Lifecycle of a :class:`SqliteStore`."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"  # an unexpected SQLite error: close and reopen the store

    def __repr__(self) -> str:
        return f"StoreState.{self.name}"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SqliteStore(CommitOps, LeaseOps):
    """Durable, bounded event log implementing :class:`buffer.api.EventStore`."""

    def __init__(
        self,
        cfg: BufferConfig,
        opened: recovery.Opened,
        *,
        next_seq: int,
        now_ms: Callable[[], int],
    ) -> None:
        """Use :meth:`open`."""
        self._cfg = cfg
        self._path = Path(cfg.path)
        self._conn: aiosqlite.Connection = opened.conn
        self._now_ms = now_ms
        self._budget = budget_for(cfg)
        self._full = cfg.durability == "full"
        self._lock = asyncio.Lock()
        self._book = LeaseBook()
        self._tally = Tally()
        self._queue: deque[Pending] = deque()
        self._next_seq = next_seq
        self._reserved = next_seq - 1
        self.last_committed_seq = next_seq - 1
        self._last_future: asyncio.Future[int] | None = None
        self._wake = asyncio.Event()
        self._batch_ready = asyncio.Event()
        self._pending_evt = asyncio.Event()
        self._state = StoreState.OPEN
        self._disk_full = False
        self._quarantined = len(recovery.quarantined_files(self._path))
        self._ttl_ms = {schema.CLASS_BY_NAME[k]: int(v * 1000) for k, v in cfg.ttl_s.items()}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="truckgw-buffer-sync")
        self._disk = DiskGuard(self._path, self._budget)
        self._last_sync = time.monotonic()
        self._last_expire = time.monotonic()
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"SqliteStore({str(self._path)!r}, {self._state!r}, "
            f"last_committed_seq={self.last_committed_seq}, leased={len(self._book)})"
        )

    @property
    def state(self) -> StoreState:
        """Where the store is in its lifecycle."""
        return self._state

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls, cfg: BufferConfig, *, now_ms: Callable[[], int] | None = None
    ) -> SqliteStore:
        """Open (or create) the buffer at ``cfg.path``; quarantine it if corrupt.

        ``now_ms`` is the wall clock used for TTL expiry and quarantine names.
        """
        clock = now_ms or _wall_ms
        path = Path(cfg.path)
        recovery.prepare_folder(path)  # so the budget can look at the filesystem
        budget = budget_for(cfg)
        pragmas = schema.connection_pragmas(
            full=cfg.durability == "full",
            wal_autocheckpoint=budget.wal_autocheckpoint_pages,
            journal_size_limit=budget.wal_bytes,
        )
        mark = recovery.read_mark(recovery.mark_path(path))
        opened = await recovery.open_checked(path, pragmas, clock())
        conn = opened.conn
        try:
            meta = {str(k): int(v) for k, v in await conn.execute_fetchall(
                "SELECT key, value FROM meta")}
            if opened.quarantined is not None:
                meta = {**opened.salvaged_meta, **{
                    k: v for k, v in meta.items() if k != schema.META_VERSION}}
            base = max(meta.get(schema.META_LAST_SEQ, 0), opened.salvaged_seq)
            for (value,) in await conn.execute_fetchall(schema.MAX_SEQ_SQL):
                base = max(base, int(value or 0))
            known = base  # the highest seq this file can vouch for
            if mark is not None and (
                mark.clean or opened.fresh or opened.quarantined or not mark.full
            ):
                base = max(base, mark.reserved)
            store = cls(cfg, opened, next_seq=base + 1, now_ms=clock)
            store._tally.load_meta(meta)
            for p in Priority:
                ((n, nbytes),) = await conn.execute_fetchall(schema.class_totals_sql(p))
                store._tally.add(p, int(n), int(nbytes))
            if mark is not None and not mark.clean:
                store._tally.extra["unclean_start"] += 1
            if opened.quarantined is not None:
                store._tally.extra["quarantined_now"] += 1
                await store._persist_counters()
        except BaseException:
            await conn.close()
            raise
        try:
            await store._reserve(base)
            await store._run_sync(store._disk.make_ballast)
            await store.expire_now()
        except BaseException:
            await store._shutdown_io()
            raise
        store._writer = asyncio.create_task(store._run_writer(), name="buffer-writer")
        if base > known:
            # Tell consumers which seqs they will never get and why, so a jump over a
            # reservation is never mistaken for (or confused with) a silent loss.
            if opened.quarantined is not None:
                reason = "quarantine"
            elif opened.fresh:
                reason = "missing_file"
            else:
                reason = "unclean_start"
            log.warning("buffer: seqs %d..%d will never be sent (%s)", known + 1, base, reason)
            notice = store.submit(seq_gap_event(clock(), known + 1, base, reason))
            notice.add_done_callback(_log_failed_notice)
        if store._tally.total_pending():
            store._pending_evt.set()
        log.info(
            "buffer: opened %s next seq %d, %d pending, durability %s",
            path, store._next_seq, store._tally.total_pending(), cfg.durability,
        )
        return store

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit every queued append, then close the file and the threads."""
        if self._state in (StoreState.CLOSED, StoreState.CLOSING):
            return
        clean = self._state is StoreState.OPEN
        self._state = StoreState.CLOSING
        self._wake.set()
        self._batch_ready.set()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        if clean:
            try:
                async with self._lock:
                    await self._conn.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        (schema.META_LAST_SEQ, self._next_seq - 1),
                    )
            except sqlite3.Error as exc:
                log.warning("buffer: could not record last seq at close: %s", exc)
                clean = False
        await self._shutdown_io(clean_mark=clean)
        self._state = StoreState.CLOSED
        log.info("buffer: closed %s at seq %d", self._path, self.last_committed_seq)

    async def _shutdown_io(self, *, clean_mark: bool = False) -> None:
        try:
            await self._conn.close()
        finally:
            self._disk.close()
            if clean_mark:
                mark = recovery.SeqMark(self._next_seq - 1, clean=True, full=self._full)
                with contextlib.suppress(OSError):
                    await asyncio.get_running_loop().run_in_executor(
                        self._pool, recovery.write_mark, recovery.mark_path(self._path), mark)
            self._pool.shutdown(wait=True)

    def _check_open(self) -> None:
        if self._state is not StoreState.OPEN:
            raise StoreError(f"buffer {self._path} is {self._state.value}")

    # ------------------------------------------------------------------ ingest

    def submit(self, event: Event) -> asyncio.Future[int]:
        """Queue ``event`` for the next group commit; the future gives its seq once durable.

        Raises ``ValueError`` for an event that cannot be encoded, ``StoreError`` if the
        store is not open. Never waits and never refuses because the buffer is full.
        """
        self._check_open()
        body = encode_body(event)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seq = self._next_seq
        self._next_seq += 1
        self._queue.append(Pending(seq, event.priority, event.ts_ms, event.type, body, fut))
        self._last_future = fut
        if len(self._queue) > MAX_QUEUED_EVENTS:
            self._drop_queued(self._queue.popleft(), "dropped_queue_full")
        if len(self._queue) >= self._cfg.commit_max_events:
            self._batch_ready.set()
        self._wake.set()
        return fut

    async def append(self, event: Event) -> int:
        """Store ``event`` and return its seq once durable."""
        return await self.submit(event)

    async def flush(self) -> None:
        """Wait until every append submitted so far is durable (or has failed)."""
        fut = self._last_future
        if fut is not None and not fut.done():
            await asyncio.wait([fut])

    async def _run_writer(self) -> None:
        interval = self._cfg.commit_interval_ms / 1000
        try:
            while True:
                if not self._queue:
                    if self._state is not StoreState.OPEN:
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(TICK_S):
                            await self._wake.wait()
                    if not self._queue:
                        await self._housekeeping()
                        continue
                if len(self._queue) < self._cfg.commit_max_events and (
                    self._state is StoreState.OPEN
                ):
                    self._batch_ready.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await self._batch_ready.wait()
                await self._commit(self._take())
                await self._housekeeping()
        except Exception as exc:
            log.exception("buffer: writer failed; the store must be reopened")
            self._state = StoreState.FAILED
            while self._queue:
                item = self._queue.popleft()
                if not item.fut.done():
                    item.fut.set_exception(StoreError(f"buffer writer failed: {exc}"))
            raise

    def _take(self) -> list[Pending]:
        out: list[Pending] = []
        nbytes = 0
        while self._queue and len(out) < self._cfg.commit_max_events:
            cost = policy.row_cost(len(self._queue[0].body))
            if out and nbytes + cost > self._budget.commit_bytes:
                break
            out.append(self._queue.popleft())
            nbytes += cost
        return out

    async def expire_now(self) -> int:
        """Drop events older than their class TTL now; returns how many (also periodic)."""
        self._check_open()
        self._last_expire = time.monotonic()
        if not self._ttl_ms:
            return 0
        async with self._lock:
            n = await expire(self._conn, self._book, self._tally, self._ttl_ms, self._now_ms())
        if n:
            log.info("buffer: expired %d events past their TTL", n)
        return n

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._ttl_ms and now - self._last_expire >= EXPIRE_INTERVAL_S:
            await self.expire_now()
        if now - self._last_sync >= NORMAL_SYNC_INTERVAL_S:
            self._last_sync = now
            if not self._full:
                await self._run_sync(self._disk.sync_wal)
            await self._run_sync(self._disk.make_ballast)

    # ------------------------------------------------------------------ stats

    async def stats(self) -> StoreStats:
        """Counters and sizes (one small query)."""
        oldest: int | None = None
        if self._state is StoreState.OPEN:
            async with self._lock:
                for (ts,) in await self._conn.execute_fetchall(schema.OLDEST_TS_SQL):
                    oldest = int(ts) if oldest is None else min(oldest, int(ts))
        t = self._tally
        names = schema.CLASS_NAMES
        return StoreStats(
            pending=t.total_pending(),
            pending_bytes=sum(t.pending_bytes.values()),
            pending_by_class={names[p]: n for p, n in t.pending.items()},
            pending_bytes_by_class={names[p]: n for p, n in t.pending_bytes.items()},
            leased=len(self._book),
            oldest_pending_ts_ms=oldest,
            last_seq=self.last_committed_seq,
            evicted_by_class={names[p]: n for p, n in t.evicted.items()},
            expired_by_class={names[p]: n for p, n in t.expired.items()},
            quarantined_files=self._quarantined,
            file_bytes=self.file_bytes(),
            disk_full=self._disk_full,
            extra=dict(t.extra),
        )

    def file_bytes(self) -> int:
        """Size of the database file plus its WAL, in bytes."""
        return self._disk.file_bytes()


def _log_failed_notice(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("buffer: could not record the seq gap notice: %s", fut.exception())
