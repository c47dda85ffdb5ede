"""The lease book of the store: lease, ack, release, wait_pending.

:class:`Lanes` owns the leases (in memory only, :class:`~buffer.leases.LeaseBook`), the
"something is pending" signal and the top of what may be leased: the last committed
seq, which the group commit advances through :meth:`Lanes.committed`. A lease is one
indexed range query, an ack one transaction of primary-key deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Sequence

import aiosqlite

from buffer import schema
from buffer.api import Batch, Lane, StoredEvent
from buffer.db import Db, write_transaction
from buffer.leases import LeaseBook
from buffer.tally import Tally
from config.errors import StoreError
from config.events import Priority

log = logging.getLogger(__name__)

#: Range queries per lease before giving up (coverage makes the next call go further).
MAX_SCAN_STEPS = 64


class Lanes:
    """Leases from both ends of the pending log, acks and releases."""

    def __init__(self, db: Db, tally: Tally, *, top: int) -> None:
        self._db = db
        self._tally = tally
        self._book = LeaseBook()
        self._pending_evt = asyncio.Event()
        self._top = top

    def __repr__(self) -> str:
        return f"Lanes(top={self._top}, leased={len(self._book)})"

    def __len__(self) -> int:
        """Events leased now."""
        return len(self._book)

    @property
    def book(self) -> LeaseBook:
        """The leases (upkeep reads it: leased rows are never evicted or expired)."""
        return self._book

    @property
    def top(self) -> int:
        """The last committed seq: nothing above it is leased."""
        return self._top

    def committed(self, seq: int) -> None:
        """Rows up to ``seq`` are committed (the group commit calls this)."""
        self._top = seq
        self._pending_evt.set()

    def wake(self) -> None:
        """Wake waiters: rows may be pending (after open)."""
        if self._pending_unleased() > 0:
            self._pending_evt.set()

    def _pending_unleased(self) -> int:
        return self._tally.total_pending() - len(self._book)

    async def lease(self, lane: Lane, max_events: int, max_bytes: int) -> Batch | None:
        """Lease up to ``max_events`` / ``max_bytes`` pending events from ``lane``.

        LIVE takes the newest pending events, BACKFILL the oldest; each batch is in
        ascending seq order. At least one event is returned when any is pending, even
        if it alone is larger than ``max_bytes``. Returns None when nothing is pending.
        """
        self._tally.extra["lease_calls"] += 1
        if max_events <= 0 or self._pending_unleased() <= 0:
            return None
        asc = lane is Lane.BACKFILL
        top = self._top
        taken: list[StoredEvent] = []
        nbytes = 0
        pos = 1 if asc else top
        first: int | None = None
        last: int | None = None
        async with self._db.locked() as conn:
            for _ in range(MAX_SCAN_STEPS):
                if asc:
                    lo, hi = self._book.gap_up(pos)
                    hi = min(hi, top)
                    if lo > hi:
                        break
                    sql, params, edge = schema.RANGE_ASC_SQL, (lo, hi), hi
                else:
                    hi, lo = self._book.gap_down(pos)
                    lo = max(lo, 1)
                    if hi < lo:
                        break
                    sql, params, edge = schema.RANGE_DESC_SQL, (lo, hi), lo
                if first is None:
                    first = params[0] if asc else params[1]
                limit = max_events - len(taken)
                rows = list(await conn.execute_fetchall(sql, (*params, limit)))
                done = False
                for seq, ts, typ, body, p in rows:
                    if seq not in self._book:
                        if taken and nbytes + len(body) > max_bytes:
                            done = True
                            break
                        taken.append(StoredEvent(seq, ts, typ, Priority(p), body))
                        nbytes += len(body)
                    last = seq
                    if len(taken) >= max_events:
                        done = True
                        break
                if done:
                    break
                if len(rows) < limit:  # the whole stretch is scanned
                    last = edge
                    pos = edge + 1 if asc else edge - 1
                else:
                    pos = last + 1 if asc else last - 1  # type: ignore[operator]
            # still under the lock: a release between the scan's queries would otherwise
            # be covered over again and its events hidden from later scans
            if first is not None and last is not None:
                lo_c, hi_c = (first, last) if asc else (last, first)
                self._book.add(((e.seq, e.priority, len(e.body)) for e in taken), lo_c, hi_c)
        if not taken:
            return None
        if not asc:
            taken.reverse()
        return Batch(lane, tuple(taken))

    async def ack(self, seqs: Sequence[int]) -> None:
        """Delete delivered events (call only after the broker acknowledged them).

        Unknown or already deleted seqs are ignored. If the delete fails (disk too full
        even to delete, an I/O error) :class:`StoreError` is raised and the events stay
        stored *and leased*: the caller releases them when it wants them sent again
        (the uplink does so after a backoff), so a failing delete never makes them
        vanish from scans while still counting as pending.
        """
        if not seqs:
            return
        known = self._book.pop(seqs)
        async with self._db.locked() as conn:
            rows = await _stored(conn, seqs, known)
            if not rows:
                return
            deleted = 0
            try:
                async with write_transaction(conn):
                    for p, r in rows.items():
                        cur = await conn.executemany(schema.delete_sql(p), [(s,) for s, _ in r])
                        deleted += max(0, cur.rowcount)
            except sqlite3.Error as exc:
                self._tally.extra["ack_failures"] += 1
                self._book.restore((s, p, n) for p, r in rows.items() for s, n in r)
                full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                raise StoreError(
                    f"ack of {len(seqs)} events failed{' (disk full)' if full else ''}: {exc}"
                ) from exc
        for p, r in rows.items():
            self._tally.remove(p, len(r), sum(n for _, n in r))
        self._tally.extra["acked"] += deleted
        expected = sum(len(r) for r in rows.values())
        if deleted != expected:  # a leased row vanished: a bug, never expected
            log.error("buffer: ack deleted %d rows, expected %d", deleted, expected)
            self._tally.extra["ack_missing"] += expected - deleted

    async def dead_letter(self, seqs: Sequence[int], reason: str) -> list[int]:
        """Set stored events aside in ``dead_letter`` (one transaction); returns the seqs
        actually moved (unknown or already deleted seqs are ignored).

        They leave the pending count and the leases, count as refused, and their seq
        is never handed out again (``last_seq`` in meta covers it).
        """
        if not seqs:
            return []
        known = self._book.pop(seqs)
        async with self._db.locked() as conn:
            rows = await _stored(conn, seqs, known)
            if not rows:
                return []
            try:
                async with write_transaction(conn):
                    for p, r in rows.items():
                        await conn.executemany(schema.DEAD_LETTER_MOVE_SQL[p],
                                               [(s, reason) for s, _ in r])
                        await conn.executemany(schema.delete_sql(p), [(s,) for s, _ in r])
                    await conn.execute(schema.RAISE_LAST_SEQ_SQL,
                                       (max(s for r in rows.values() for s, _ in r),))
            except sqlite3.Error as exc:
                self._book.restore((s, p, n) for p, r in rows.items() for s, n in r)
                raise StoreError(f"setting {len(seqs)} events aside failed: {exc}") from exc
        moved: list[int] = []
        for p, r in rows.items():
            self._tally.remove(p, len(r), sum(n for _, n in r))
            self._tally.dead_letters += len(r)
            moved.extend(s for s, _ in r)
        self._tally.extra["dead_lettered"] += len(moved)
        return sorted(moved)

    async def retry_dead_letters(self) -> int:
        """Move every dead letter back into its class table (pending again, same seq);
        returns how many."""
        async with self._db.locked() as conn:
            totals = [(Priority(int(p)), int(n), int(b)) for p, n, b in
                      await conn.execute_fetchall(schema.DEAD_LETTER_TOTALS_SQL)]
            if not totals:
                return 0
            ((lo, hi),) = [tuple(r) for r in
                           await conn.execute_fetchall(schema.DEAD_LETTER_RANGE_SQL)]
            try:
                async with write_transaction(conn):
                    for p, _, _ in totals:
                        await conn.execute(schema.DEAD_LETTER_RESTORE_SQL[p])
                    await conn.execute(schema.DEAD_LETTER_CLEAR_SQL)
            except sqlite3.Error as exc:
                self._tally.dead_letters = sum(n for _, n, _ in totals)
                raise StoreError(f"moving refused events back failed: {exc}") from exc
            # below the top: scans must look at that stretch again
            self._book.uncover(int(lo), int(hi))
        n_all = 0
        for p, n, nbytes in totals:
            self._tally.add(p, n, nbytes)
            n_all += n
        self._tally.dead_letters = 0
        self._tally.extra["dead_letters_retried"] += n_all
        self._pending_evt.set()
        return n_all

    async def release(self, seqs: Sequence[int]) -> None:
        """Return leased events to pending (e.g. on disconnect). Unknown seqs are ignored."""
        async with self._db.locked():  # never in the middle of a lease scan (see lease)
            n = self._book.release(seqs)
        if n:
            self._tally.extra["released"] += n
            self._pending_evt.set()

    async def release_all(self) -> None:
        """Return every leased event to pending (e.g. when the connection is lost)."""
        async with self._db.locked():
            n = len(self._book)
            self._book.clear()
        if n:
            self._tally.extra["released"] += n
            self._pending_evt.set()

    async def wait_pending(self, timeout: float) -> bool:
        """Wait until an event is pending and not leased; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending_unleased() <= 0:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._pending_evt.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._pending_evt.wait()
        return True


async def _stored(
    conn: aiosqlite.Connection, seqs: Sequence[int], known: Iterable[tuple[int, Priority, int]]
) -> dict[Priority, list[tuple[int, int]]]:
    """``(seq, size)`` per class of ``seqs``: the leased ones from the lease book
    (``known``), the others looked up in the file (lock held)."""
    rows: dict[Priority, list[tuple[int, int]]] = {}
    found: set[int] = set()
    for seq, prio, size in known:
        rows.setdefault(prio, []).append((seq, size))
        found.add(seq)
    if len(found) < len(seqs):
        await _lookup(conn, set(seqs) - found, rows)
    return rows


async def _lookup(
    conn: aiosqlite.Connection, seqs: set[int], rows: dict[Priority, list[tuple[int, int]]]
) -> None:
    """Find the class and size of seqs acked without a lease (lock held)."""
    for seq in sorted(seqs):
        for p in Priority:
            got = list(await conn.execute_fetchall(schema.lookup_sql(p), (seq,)))
            if got:
                rows.setdefault(p, []).append((seq, int(got[0][0])))
                break
