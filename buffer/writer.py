"""The write side of the store: the submit queue, seq assignment and the group commit.

:class:`GroupWriter` owns the queue of submitted events, the next seq and the durable
seq reservation, and its one task (``buffer-writer``): started by :meth:`start`, ended
by :meth:`stop`, which commits what is queued and awaits the task (cancelling the
caller of ``stop`` cancels the task too). Between commits the task runs the store's
upkeep; a commit makes room first (:meth:`~buffer.upkeep.Upkeep.make_room`) and
retries on a full disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from enum import Enum
from typing import NamedTuple

import aiosqlite

from buffer import policy, recovery, schema
from buffer.db import UPSERT_META_SQL, Db, write_transaction
from buffer.lanes import Lanes
from buffer.tally import Tally
from buffer.upkeep import Upkeep, is_full
from config import BufferConfig
from config.errors import StoreError, StoreFullError
from config.events import Event, Priority, encode_body

log = logging.getLogger(__name__)

#: Retries of a group commit that hit a full disk, evicting in between.
MAX_FULL_RETRIES = 3
#: Writer housekeeping tick (TTL expiry, normal-mode sync) when idle.
TICK_S = 1.0
#: Events waiting for a commit beyond this are dropped oldest first (writer stalled).
MAX_QUEUED_EVENTS = 200_000


class Pending(NamedTuple):
    """An event waiting for its group commit."""

    seq: int
    prio: Priority
    ts_ms: int
    type: str
    body: bytes
    fut: asyncio.Future[int]


class WriterState(Enum):
    """Lifecycle of a :class:`GroupWriter`."""

    IDLE = "idle"  # built, task not started
    RUNNING = "running"
    DRAINING = "draining"  # stop requested: commit what is queued, then end
    STOPPED = "stopped"
    FAILED = "failed"  # an unexpected SQLite error ended the task

    def __repr__(self) -> str:
        return f"WriterState.{self.name}"


class GroupWriter:
    """Batches submitted events into one SQLite transaction per group commit."""

    def __init__(
        self,
        cfg: BufferConfig,
        budget: policy.Budget,
        *,
        db: Db,
        tally: Tally,
        lanes: Lanes,
        upkeep: Upkeep,
        next_seq: int,
    ) -> None:
        self._max_events = cfg.commit_max_events
        self._interval_s = cfg.commit_interval_ms / 1000
        self._commit_bytes = budget.commit_bytes
        self._db = db
        self._tally = tally
        self._lanes = lanes
        self._upkeep = upkeep
        self._queue: deque[Pending] = deque()
        self._next_seq = next_seq
        self._reserved = next_seq - 1
        self._last_future: asyncio.Future[int] | None = None
        self._wake = asyncio.Event()
        self._batch_ready = asyncio.Event()
        self._state = WriterState.IDLE
        self._task: asyncio.Task[None] | None = None
        self._distrusted = False  # the seq mark says "do not trust the file's last seq"
        self._distrust_pending = False

    def __repr__(self) -> str:
        return (f"GroupWriter({self._state!r}, next_seq={self._next_seq}, "
                f"queued={len(self._queue)})")

    @property
    def state(self) -> WriterState:
        """Where the writer is in its lifecycle."""
        return self._state

    @property
    def last_issued_seq(self) -> int:
        """The seq given to the latest submit (committed or not)."""
        return self._next_seq - 1

    # ------------------------------------------------------------------ lifecycle

    async def reserve(self, seq: int) -> None:
        """Durably reserve seqs above ``seq`` before any of them becomes visible."""
        mark = recovery.SeqMark(seq + recovery.SEQ_RESERVE_BLOCK, clean=False,
                                full=self._db.full and not self._distrusted)
        await self._db.write_mark(mark)
        self._reserved = mark.reserved

    def start(self) -> None:
        """Start the writer task."""
        if self._state is not WriterState.IDLE:
            raise StoreError(f"buffer writer cannot start: {self._state.value}")
        self._state = WriterState.RUNNING
        self._task = asyncio.get_running_loop().create_task(self._run(), name="buffer-writer")

    async def stop(self) -> None:
        """Commit everything queued, then end the task and wait for it."""
        if self._state is WriterState.RUNNING:
            self._state = WriterState.DRAINING
        self._wake.set()
        self._batch_ready.set()
        if self._task is not None:
            with contextlib.suppress(Exception):  # a failure was logged and counted
                await self._task
            self._task = None
        if self._state is not WriterState.FAILED:
            self._state = WriterState.STOPPED

    async def record_last_seq(self) -> None:
        """Write the last issued seq to ``meta`` (at a clean close)."""
        async with self._db.locked() as conn:
            await conn.execute(UPSERT_META_SQL, (schema.META_LAST_SEQ, self.last_issued_seq))

    def clean_mark(self) -> recovery.SeqMark:
        """The seq mark of a clean close: exactly the last seq issued."""
        return recovery.SeqMark(self.last_issued_seq, clean=True, full=self._db.full)

    # ------------------------------------------------------------------ ingest

    def submit(self, event: Event) -> asyncio.Future[int]:
        """Give ``event`` the next seq and queue it; the future resolves once committed.

        Raises ``StoreError`` unless the writer is running: it runs exactly while its
        store is open (the store checks nothing itself; this is the per-event path).
        """
        if self._state is not WriterState.RUNNING:
            raise StoreError(f"buffer {self._db.path} is not open (writer {self._state.value})")
        body = encode_body(event)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seq = self._next_seq
        self._next_seq += 1
        self._queue.append(Pending(seq, event.priority, event.ts_ms, event.type, body, fut))
        self._last_future = fut
        if len(self._queue) > MAX_QUEUED_EVENTS:
            self._drop(self._queue.popleft(), "dropped_queue_full")
            self._distrust_soon()
        if len(self._queue) >= self._max_events:
            self._batch_ready.set()
        self._wake.set()
        return fut

    async def flush(self) -> None:
        """Wait until every event submitted so far is committed (or has failed)."""
        fut = self._last_future
        if fut is not None and not fut.done():
            await asyncio.wait([fut])

    def _drop(self, item: Pending, reason: str, error: type[StoreError] = StoreFullError
              ) -> None:
        """Give up on a queued or committing event: counted, its future failed."""
        self._tally.evicted[item.prio] += 1
        self._tally.extra[reason] += 1
        if not item.fut.done():
            item.fut.set_exception(error(f"event seq {item.seq} dropped: {reason}"))
            item.fut.exception()  # mark retrieved: a dropped append is counted, not an error

    def _distrust_soon(self) -> None:
        """:meth:`_distrust_last_seq` from a synchronous path (the writer does it)."""
        if not self._distrusted and self._db.full:
            self._distrust_pending = True

    async def _distrust_last_seq(self) -> None:
        """Seqs were handed out and given up on: make sure no later start reuses them.

        A clean close writes the exact last seq issued, which covers them. After a crash
        a ``full``-durability start trusts the file's last committed seq and would hand
        the given-up numbers out again; the mark is rewritten as not-``full``, so that
        start jumps over the whole reservation and announces it (``seq_gap``).
        """
        if self._distrusted or not self._db.full:
            return
        try:
            await self._db.write_mark(
                recovery.SeqMark(self._reserved, clean=False, full=False))
        except StoreError as exc:
            log.warning("buffer: %s", exc)
            return
        self._distrusted = True

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._state is not WriterState.RUNNING:
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(TICK_S):
                            await self._wake.wait()
                    if not self._queue:
                        await self._upkeep.tick()
                        continue
                if len(self._queue) < self._max_events and self._state is WriterState.RUNNING:
                    self._batch_ready.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._interval_s):
                            await self._batch_ready.wait()
                await self._commit(self._take())
                if self._distrust_pending:
                    self._distrust_pending = False
                    await self._distrust_last_seq()
                await self._upkeep.tick()
        except Exception:
            log.exception("buffer: writer failed; the store must be reopened")
            self._state = WriterState.FAILED
            while self._queue:
                self._drop(self._queue.popleft(), "dropped_writer_failed", StoreError)
            with contextlib.suppress(Exception):  # best effort: the file may be failing
                await self._distrust_last_seq()
            with contextlib.suppress(Exception):
                await self._upkeep.persist_counters()
            raise

    def _take(self) -> list[Pending]:
        out: list[Pending] = []
        nbytes = 0
        while self._queue and len(out) < self._max_events:
            cost = policy.row_cost(len(self._queue[0].body))
            if out and nbytes + cost > self._commit_bytes:
                break
            out.append(self._queue.popleft())
            nbytes += cost
        return out

    async def _commit(self, batch: list[Pending]) -> None:
        if not batch:
            return
        try:
            committed = await self._commit_or_full(batch)
        except BaseException:
            # an I/O error (or cancellation) ends the writer: this batch's events fail
            # and are counted; they were never committed
            for item in batch:
                self._drop(item, "dropped_commit_failed", StoreError)
            raise
        if not committed:
            for item in batch:
                self._drop(item, "dropped_disk_full")
            await self._distrust_last_seq()
            with contextlib.suppress(sqlite3.Error, StoreError):
                await self._upkeep.persist_counters()
            return
        for item in batch:
            self._tally.add(item.prio, 1, len(item.body))
        self._lanes.committed(batch[-1].seq)
        for item in batch:
            if not item.fut.done():
                item.fut.set_result(item.seq)


    async def _commit_or_full(self, batch: list[Pending]) -> bool:
        """Insert ``batch`` in one transaction; False if the disk stayed full."""
        est = sum(policy.row_cost(len(i.body)) for i in batch)
        if batch[-1].seq > self._reserved:
            try:
                await self.reserve(batch[-1].seq)
            except StoreFullError as exc:  # not even the seq mark fits: drop, counted
                log.warning("buffer: %s", exc)
                self._upkeep.note_full()
                return False
        for attempt in range(MAX_FULL_RETRIES + 1):
            async with self._db.locked() as conn:
                await self._upkeep.make_room(conn, est, shrink=attempt > 0)
                try:
                    await _insert(conn, batch)
                except sqlite3.Error as exc:
                    if not is_full(exc):
                        raise
                    await self._upkeep.on_disk_full(conn, exc, attempt)
                    continue
            return True
        return False


async def _insert(conn: aiosqlite.Connection, batch: list[Pending]) -> None:
    rows: dict[Priority, list[tuple[int, int, str, bytes]]] = {}
    for i in batch:
        rows.setdefault(i.prio, []).append((i.seq, i.ts_ms, i.type, i.body))
    async with write_transaction(conn):
        for p, r in rows.items():
            await conn.executemany(schema.insert_sql(p), r)
        # In every mode: after a crash the file then knows its own last commit, so
        # the seq_gap notice of an unclean start covers only numbers never committed
        # (normal mode still jumps over the reservation: a power cut may take back
        # commits that were already delivered, and their seqs must not be reused).
        await conn.execute(UPSERT_META_SQL, (schema.META_LAST_SEQ, batch[-1].seq))
