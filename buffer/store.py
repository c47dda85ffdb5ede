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
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

import aiosqlite

from buffer import policy, recovery, schema
from buffer.api import StoreStats
from buffer.leases import LeaseBook
from buffer.maint import Tally, evict_to, expire
from buffer.reader import LeaseOps
from gateway.config import BufferConfig
from gateway.errors import StoreError, StoreFullError
from gateway.events import Event, Priority, encode_body

log = logging.getLogger(__name__)

#: In ``normal`` durability the WAL is fsynced at least this often (the loss window).
NORMAL_SYNC_INTERVAL_S = 1.0
#: Writer housekeeping tick (TTL expiry, normal-mode sync) when idle.
TICK_S = 1.0
#: TTL expiry runs at most this often.
EXPIRE_INTERVAL_S = 10.0
#: Events waiting for a commit beyond this are dropped oldest first (writer stalled).
MAX_QUEUED_EVENTS = 200_000
#: Retries of a group commit that hit a full disk, evicting in between.
MAX_FULL_RETRIES = 3
#: Share of the filesystem's size the buffer plans for at most (if max_bytes is larger).
FS_SHARE = 0.9
#: Free space kept on the filesystem beyond the WAL bound.
FS_RESERVE_BYTES = 256 * 1024
#: Ballast file kept beside the buffer: deleted on ENOSPC so that a checkpoint and an
#: eviction can still run on a filesystem that someone else filled up; recreated
#: when the filesystem has room again.
BALLAST_BYTES = 512 * 1024


class StoreState(Enum):
    """Lifecycle of a :class:`SqliteStore`."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"  # an unexpected SQLite error: close and reopen the store

    def __repr__(self) -> str:
        return f"StoreState.{self.name}"


class _Pending(NamedTuple):
    seq: int
    prio: Priority
    ts_ms: int
    type: str
    body: bytes
    fut: asyncio.Future[int]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _is_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def _budget_for(cfg: BufferConfig) -> policy.Budget:
    """The size budget: ``max_bytes``, or less on a filesystem smaller than that."""
    limit = cfg.max_bytes
    with contextlib.suppress(OSError):
        st = os.statvfs(Path(cfg.path).parent)
        limit = min(limit, max(policy.MIN_MAX_BYTES, int(st.f_blocks * st.f_frsize * FS_SHARE)))
    return policy.make_budget(limit)


class SqliteStore(LeaseOps):
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
        self._budget = _budget_for(cfg)
        self._full = cfg.durability == "full"
        self._lock = asyncio.Lock()
        self._book = LeaseBook()
        self._tally = Tally()
        self._queue: deque[_Pending] = deque()
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
        self._wal_fd: int | None = None
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
        budget = _budget_for(cfg)
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
            await store._run_sync(store._make_ballast)
            await store.expire_now()
        except BaseException:
            await store._shutdown_io()
            raise
        store._writer = asyncio.create_task(store._run_writer(), name="buffer-writer")
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
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
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
        self._queue.append(_Pending(seq, event.priority, event.ts_ms, event.type, body, fut))
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

    def _drop_queued(self, item: _Pending, reason: str) -> None:
        self._tally.evicted[item.prio] += 1
        self._tally.extra[reason] += 1
        if not item.fut.done():
            item.fut.set_exception(StoreFullError(f"event seq {item.seq} dropped: {reason}"))
            item.fut.exception()  # mark retrieved: a dropped append is counted, not an error

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

    def _take(self) -> list[_Pending]:
        out: list[_Pending] = []
        nbytes = 0
        while self._queue and len(out) < self._cfg.commit_max_events:
            cost = policy.row_cost(len(self._queue[0].body))
            if out and nbytes + cost > self._budget.commit_bytes:
                break
            out.append(self._queue.popleft())
            nbytes += cost
        return out

    # ------------------------------------------------------------------ commit path

    async def _commit(self, batch: list[_Pending]) -> None:
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
                    if not _is_full(exc):
                        raise
                    self._disk_full = True
                    self._tally.extra["disk_full_errors"] += 1
                    log.warning("buffer: disk full on commit (attempt %d): %s", attempt + 1, exc)
                    await self._run_sync(self._drop_ballast)
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

    async def _insert(self, batch: list[_Pending]) -> None:
        rows: dict[Priority, list[tuple[int, int, str, bytes]]] = {}
        for i in batch:
            rows.setdefault(i.prio, []).append((i.seq, i.ts_ms, i.type, i.body))
        conn = self._conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for p, r in rows.items():
                await conn.executemany(schema.insert_sql(p), r)
            if self._full:  # in normal mode the seq mark covers an unclean stop
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

    def _space_cap(self, file_bytes: int) -> int:
        """Bytes the used pages may reach: max_bytes' share, or less if the disk is full."""
        try:
            st = os.statvfs(self._path.parent)
        except OSError:
            return self._budget.data_bytes
        reserve = self._budget.wal_bytes + 2 * self._budget.commit_bytes + FS_RESERVE_BYTES
        growth = st.f_bavail * st.f_frsize - reserve
        return min(self._budget.data_bytes, file_bytes + max(0, growth))

    async def _make_room(self, incoming: int, *, shrink: bool) -> None:
        """Evict (lock held) so that ``incoming`` more bytes fit in the budget."""
        ((pages, free),) = await self._conn.execute_fetchall(schema.SPACE_SQL)
        used = (int(pages) - int(free)) * schema.PAGE_SIZE
        cap = self._space_cap(int(pages) * schema.PAGE_SIZE)
        if shrink:  # a commit hit ENOSPC although statvfs said it fits: ask for more room
            cap = min(cap, used - incoming)
        self._disk_full = cap < self._budget.data_bytes
        if used + incoming <= cap:
            return
        target = int(cap * (1 - policy.EVICT_HEADROOM)) - incoming
        try:
            ok = await evict_to(self._conn, self._book, self._tally, target, self._used_bytes)
        except sqlite3.Error as exc:
            if not _is_full(exc):
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
            await self._run_sync(self._sync_wal if not self._full else self._make_ballast)
            if not self._full:
                await self._run_sync(self._make_ballast)

    async def _run_sync(self, fn: Callable[[], object]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _ballast(self) -> Path:
        return self._path.with_name(self._path.name + ".ballast")

    def _drop_ballast(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._ballast().unlink()
            log.warning("buffer: released %d bytes of ballast to recover", BALLAST_BYTES)

    def _make_ballast(self) -> None:
        """(Re)create the ballast file if the filesystem has comfortable room for it."""
        path = self._ballast()
        try:
            if path.exists():
                return
            st = os.statvfs(self._path.parent)
            if st.f_bavail * st.f_frsize < 4 * BALLAST_BYTES:
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, bytes(BALLAST_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("buffer: no ballast: %s", exc)
            with contextlib.suppress(OSError):
                path.unlink()

    def _sync_wal(self) -> None:
        """fsync the WAL (normal durability): bounds what a power cut can take."""
        wal = self._path.with_name(self._path.name + "-wal")
        try:
            if self._wal_fd is not None and os.fstat(self._wal_fd).st_nlink == 0:
                os.close(self._wal_fd)
                self._wal_fd = None
            if self._wal_fd is None:
                self._wal_fd = os.open(wal, os.O_RDONLY)
            os.fsync(self._wal_fd)
        except OSError as exc:
            log.debug("buffer: WAL fsync skipped: %s", exc)

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
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(self._path.with_name(self._path.name + suffix)).st_size
        return total
