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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Self

from buffer import recovery, schema
from buffer.api import REFUSED, Batch, Lane, StoreStats
from buffer.db import Db, Start, stream_name
from buffer.disk import budget_for
from buffer.lanes import Lanes
from buffer.tally import Tally
from buffer.upkeep import Upkeep, is_full
from buffer.writer import GroupWriter, WriterState
from config import BufferConfig
from config.errors import StoreError, StoreFullError
from config.events import Event, Priority, seq_gap_event

log = logging.getLogger(__name__)


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


class SqliteStore:
    """Durable, bounded event log implementing :class:`buffer.api.EventStore`.

    Composed of parts that each own their state (docs/buffer.md, Internals): the file
    (:class:`~buffer.db.Db`), the counters (:class:`~buffer.tally.Tally`), the leases
    (:class:`~buffer.lanes.Lanes`), the bounds (:class:`~buffer.upkeep.Upkeep`) and the
    group commit with its task (:class:`~buffer.writer.GroupWriter`).
    """

    def __init__(
        self, cfg: BufferConfig, db: Db, *, next_seq: int, age_base_ms: int = 0,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        """Use :meth:`open`."""
        budget = budget_for(cfg)
        self._path = Path(cfg.path)
        self._db = db
        self._tally = Tally()
        self._lanes = Lanes(db, self._tally, top=next_seq - 1)
        self._upkeep = Upkeep(
            cfg, budget, db=db, tally=self._tally, book=self._lanes.book,
            top=lambda: self._lanes.top, age_base_ms=age_base_ms, mono=mono)
        self._writer = GroupWriter(
            cfg, budget, db=db, tally=self._tally, lanes=self._lanes, upkeep=self._upkeep,
            next_seq=next_seq)
        self._quarantined = len(recovery.quarantined_files(self._path))
        self._state = StoreState.OPEN

    def __repr__(self) -> str:
        return (
            f"SqliteStore({str(self._path)!r}, {self.state!r}, "
            f"last_committed_seq={self.last_committed_seq}, leased={len(self._lanes)})"
        )

    @property
    def state(self) -> StoreState:
        """Where the store is in its lifecycle."""
        if self._state is StoreState.OPEN and self._writer.state is WriterState.FAILED:
            return StoreState.FAILED
        return self._state

    @property
    def stream(self) -> str:
        """The buffer's stream id as it travels in batches and status (docs/wire-format.md,
        "Stream"): ``(truck_id, stream, seq)`` is unique even after the buffer was lost."""
        return stream_name(self._db.stream)

    @property
    def last_committed_seq(self) -> int:
        """The seq of the latest committed event."""
        return self._lanes.top

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls, cfg: BufferConfig, *, now_ms: Callable[[], int] | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> SqliteStore:
        """Open (or create) the buffer at ``cfg.path``; quarantine it if corrupt.

        ``now_ms`` is the wall clock used for quarantine names; ``mono`` runs the age
        clock of TTL expiry (docs/buffer.md, TTL), which no wall-clock step moves.
        """
        clock = now_ms or _wall_ms
        path = Path(cfg.path)
        recovery.prepare_folder(path)  # so the budget can look at the filesystem
        db, start = await Db.open(cfg, budget_for(cfg), clock())
        store = cls(cfg, db, next_seq=start.next_seq,
                    age_base_ms=start.meta.get(schema.META_AGE, 0), mono=mono)
        try:
            await store._load(start)
        except BaseException:
            await store._shutdown_io()
            raise
        store._writer.start()
        if start.gap is not None:
            # Tell consumers which seqs they will never get and why, so a jump over a
            # reservation is never mistaken for (or confused with) a silent loss.
            first, last, reason = start.known + 1, start.next_seq - 1, start.gap.value
            log.warning("buffer: seqs %d..%d will never be sent (%s)", first, last, reason)
            notice = store.submit(seq_gap_event(clock(), first, last, reason))
            notice.add_done_callback(_log_failed_notice)
        store._lanes.wake()
        log.info(
            "buffer: opened %s next seq %d, %d pending, durability %s",
            path, start.next_seq, store._tally.total_pending(), cfg.durability,
        )
        return store

    async def _load(self, start: Start) -> None:
        """Counters from the file, the first reservation, the ballast, a TTL pass."""
        self._tally.load_meta(start.meta)
        if start.stream and start.meta.get(schema.META_STREAM) != start.stream:
            # in this file too (a new or replacing file has it nowhere else but the mark)
            try:
                await self._db.put_meta([(schema.META_STREAM, start.stream)])
            except sqlite3.Error as exc:
                if not is_full(exc):
                    raise
                # the seq mark keeps it (written before any seq is used); the next
                # start writes it into the file once there is room
                log.warning("buffer: stream id not written into the file, disk full: %s", exc)
        for p, (n, nbytes) in (await self._db.class_totals()).items():
            self._tally.add(p, n, nbytes)
        if start.unclean:
            self._tally.extra["unclean_start"] += 1
        if start.quarantined:
            self._tally.extra["quarantined_now"] += 1
            self._tally.extra["salvaged_rows"] += start.salvaged_rows
            try:  # the salvage already wrote them into the new file; this is a refresh
                await self._upkeep.persist_counters()
            except sqlite3.Error as exc:
                if not is_full(exc):
                    raise
                log.warning("buffer: counters not refreshed at open, the disk is full: %s",
                            exc)
                self._upkeep.note_full()
        try:
            await self._writer.reserve(start.next_seq - 1)
        except StoreFullError as exc:
            # a filesystem someone else filled, even without the ballast: start anyway;
            # the writer tries again before its first commit (and drops, counted, what
            # it cannot reserve seqs for) until space comes back
            log.warning("buffer: starting on a full disk: %s", exc)
            self._upkeep.note_full()
        await self._upkeep.make_ballast()
        # one more try per start for what the broker refused last time (docs/buffer.md,
        # Dead letters): a poison event costs one refusal per start, never a loop
        try:
            retried = await self._lanes.retry_dead_letters()
        except StoreError as exc:  # they stay set aside; the store opens all the same
            log.warning("buffer: %s", exc)
            retried = 0
        if retried:
            log.warning("buffer: %d refused events moved back for one more try", retried)
        try:
            await self._upkeep.expire_now()
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise
            log.warning("buffer: no TTL pass at open, the disk is full: %s", exc)
            self._upkeep.note_full()

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
        clean = self.state is StoreState.OPEN
        self._state = StoreState.CLOSING
        await self._writer.stop()
        if clean:
            try:
                await self._writer.record_last_seq()
                await self._upkeep.mark_age()  # the age clock goes on from here next time
            except sqlite3.Error as exc:
                log.warning("buffer: could not record last seq at close: %s", exc)
                clean = False
        await self._shutdown_io(clean=clean)
        self._state = StoreState.CLOSED
        log.info("buffer: closed %s at seq %d", self._path, self.last_committed_seq)

    async def _shutdown_io(self, *, clean: bool = False) -> None:
        try:
            await self._db.close(clean_mark=self._writer.clean_mark() if clean else None)
        finally:
            self._upkeep.close()

    def _check_open(self) -> None:
        state = self.state
        if state is not StoreState.OPEN:
            raise StoreError(f"buffer {self._path} is {state.value}")

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold the file: no commit, lease, ack or upkeep runs until the block ends.

        What a commit stuck on a dying SD card looks like to the rest of the agent
        (appends queue up, their futures stay pending); for tests of the watchdog.
        """
        async with self._db.locked():
            yield

    # ------------------------------------------------------------------ ingest

    def submit(self, event: Event) -> asyncio.Future[int]:
        """Queue ``event`` for the next group commit; the future gives its seq once durable.

        Raises :class:`~config.errors.EventError` for an event that cannot be encoded,
        ``StoreError`` if the store is not open. Never waits and never refuses because
        the buffer is full.
        """
        return self._writer.submit(event)  # refuses unless running, i.e. while OPEN

    async def append(self, event: Event) -> int:
        """Store ``event`` and return its seq once durable."""
        return await self.submit(event)

    async def flush(self) -> None:
        """Wait until every append submitted so far is durable (or has failed)."""
        await self._writer.flush()

    # ------------------------------------------------------------------ agent state

    async def get_state(self, key: str) -> bytes | None:
        """The agent's persistent blob ``key`` (see :meth:`put_state`), or None;
        :class:`~config.errors.StoreError` when it cannot be read."""
        self._check_open()
        try:
            return await self._db.get_state(key)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state {key!r} from {self._path}: {exc}") from exc

    async def put_state(self, key: str, value: bytes | None) -> None:
        """Keep a small blob of the agent's own state across restarts (``None`` deletes it).

        One autocommitted row of the ``state`` table, durable like a commit of events at
        the configured durability. For a few hundred bytes written every few seconds, not
        for events: raises :class:`~config.errors.StoreError` above
        :data:`buffer.schema.STATE_MAX_BYTES` or when the store is not open.
        """
        self._check_open()
        if value is not None and len(value) > schema.STATE_MAX_BYTES:
            raise StoreError(f"state {key!r}: {len(value)} bytes, at most "
                             f"{schema.STATE_MAX_BYTES}")
        try:
            await self._db.put_state(key, value)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state {key!r} to {self._path}: {exc}") from exc

    # ------------------------------------------------------------------ uplink

    async def lease(self, lane: Lane, max_events: int, max_bytes: int) -> Batch | None:
        """Lease up to ``max_events`` / ``max_bytes`` pending events from ``lane``.

        LIVE takes the newest pending events, BACKFILL the oldest; each batch is in
        ascending seq order. At least one event is returned when any is pending, even
        if it alone is larger than ``max_bytes``. Returns None when nothing is pending.
        """
        self._check_open()
        return await self._lanes.lease(lane, max_events, max_bytes)

    async def ack(self, seqs: Sequence[int]) -> None:
        """Delete delivered events (call only after the broker acknowledged them).

        Unknown or already deleted seqs are ignored. If the disk is too full even to
        delete, the events stay pending and will be sent again (at-least-once).
        """
        self._check_open()
        await self._lanes.ack(seqs)

    async def release(self, seqs: Sequence[int]) -> None:
        """Return leased events to pending (e.g. on disconnect). Unknown seqs are ignored."""
        await self._lanes.release(seqs)

    async def release_all(self) -> None:
        """Return every leased event to pending (e.g. when the connection is lost)."""
        await self._lanes.release_all()

    async def wait_pending(self, timeout: float) -> bool:
        """Wait until an event is pending and not leased; False on timeout."""
        return await self._lanes.wait_pending(timeout)

    async def dead_letter(self, seqs: Sequence[int], reason: str = REFUSED) -> list[int]:
        """Set events the broker refused even alone aside, out of the pending log, and
        record a ``seq_gap`` notice (``reason``) for each seq moved; returns those seqs.

        They count as ``refused`` in :meth:`stats` until :meth:`retry_dead_letters`
        (called once at every open) moves them back.
        """
        self._check_open()
        moved = await self._lanes.dead_letter(seqs, reason)
        for first, last in _runs(moved):
            log.warning("buffer: seqs %d..%d set aside (%s); announced by a seq_gap notice",
                        first, last, reason)
            notice = self.submit(seq_gap_event(_wall_ms(), first, last, reason))
            notice.add_done_callback(_log_failed_notice)
        return moved

    async def retry_dead_letters(self) -> int:
        """Move every set-aside event back to pending (same seq), e.g. for a remote
        ``retry_refused`` command; returns how many. Also done once at every open."""
        self._check_open()
        n = await self._lanes.retry_dead_letters()
        if n:
            log.warning("buffer: %d refused events moved back for one more try", n)
        return n

    # ------------------------------------------------------------------ upkeep, stats

    def set_ttl_s(self, ttl_s: Mapping[str, float]) -> None:
        """New ``[buffer] ttl_s`` while running (remote configuration)."""
        self._upkeep.set_ttl_s(ttl_s)

    async def expire_now(self) -> int:
        """Drop events older than their class TTL now; returns how many (also periodic)."""
        self._check_open()
        return await self._upkeep.expire_now()

    async def stats(self) -> StoreStats:
        """Counters and sizes (one small query)."""
        oldest: int | None = None
        if self.state is StoreState.OPEN:
            async with self._db.locked() as conn:
                for (ts,) in await conn.execute_fetchall(schema.OLDEST_TS_SQL):
                    oldest = int(ts) if oldest is None else min(oldest, int(ts))
        t = self._tally
        return StoreStats(
            pending=t.total_pending(),
            pending_bytes=sum(t.pending_bytes.values()),
            pending_by_class=_by_class(t.pending),
            pending_bytes_by_class=_by_class(t.pending_bytes),
            leased=len(self._lanes),
            oldest_pending_ts_ms=oldest,
            last_seq=self.last_committed_seq,
            evicted_by_class=_by_class(t.evicted),
            expired_by_class=_by_class(t.expired),
            quarantined_files=self._quarantined,
            file_bytes=self.file_bytes(),
            disk_full=self._upkeep.disk_full,
            refused=t.dead_letters,
            lost_quarantine=t.lost_quarantine,
            extra=MappingProxyType(dict(t.extra)),
        )

    def file_bytes(self) -> int:
        """Size of the database file plus its WAL, in bytes."""
        return self._upkeep.file_bytes()


def _by_class(counts: dict[Priority, int]) -> MappingProxyType[str, int]:
    return MappingProxyType({schema.CLASS_NAMES[p]: n for p, n in counts.items()})


def _runs(seqs: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Sorted seqs as ``(first, last)`` runs of consecutive numbers."""
    run: list[int] = []
    for s in seqs:
        if run and s != run[-1] + 1:
            yield run[0], run[-1]
            run = []
        run.append(s)
    if run:
        yield run[0], run[-1]


def _log_failed_notice(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("buffer: could not record the seq gap notice: %s", fut.exception())
