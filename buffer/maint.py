"""Housekeeping transactions of the store: eviction by class, TTL expiry.

Every function here runs on the store's connection while the caller holds the store's
lock, and never touches a leased row (an event in flight is about to be acked, so
evicting it frees nothing and would miscount it as lost). They are called by
:class:`buffer.upkeep.Upkeep`; the counters they update are the store's
:class:`~buffer.tally.Tally`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import aiosqlite

from buffer import policy, schema
from buffer.db import write_transaction
from buffer.leases import LeaseBook
from buffer.tally import Tally
from config.events import Priority

log = logging.getLogger(__name__)

#: Rows examined per TTL page; pages per expiry pass.
EXPIRE_PAGE_ROWS = 1000
EXPIRE_MAX_PAGES = 50
#: Upper bound on eviction steps per call (each is one bounded transaction).
MAX_EVICT_STEPS = 256

UPSERT_COUNTER_SQL = (
    "INSERT INTO meta(key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value"
)


async def delete_rows(
    conn: aiosqlite.Connection,
    p: Priority,
    rows: list[tuple[int, int]],
    counter_key: str | None,
) -> None:
    """Delete ``(seq, size)`` rows of class ``p`` in one transaction, bumping a counter."""
    async with write_transaction(conn):
        await conn.executemany(schema.delete_sql(p), [(s,) for s, _ in rows])
        if counter_key is not None:
            await conn.execute(UPSERT_COUNTER_SQL, (counter_key, len(rows)))


async def _oldest(
    conn: aiosqlite.Connection, p: Priority, after: int, limit: int
) -> list[tuple[int, int, int]]:
    rows = await conn.execute_fetchall(schema.oldest_sql(p), (after, limit))
    return [(int(s), int(t), int(n)) for s, t, n in rows]


async def evict_to(
    conn: aiosqlite.Connection,
    book: LeaseBook,
    tally: Tally,
    target_used: int,
    used_bytes: Callable[[], Awaitable[int]],
) -> bool:
    """Evict by class and age until the used pages fit in ``target_used`` bytes.

    Returns False if nothing evictable is left (everything pending is leased).
    """
    ineffective: set[Priority] = set()
    thinned = dict.fromkeys(Priority, 0)
    freed = dict.fromkeys(Priority, 0)
    for _ in range(MAX_EVICT_STEPS):
        used = await used_bytes()
        if used <= target_used:
            return True
        leased = book.leased_by_class()
        cls = next((p for p in schema.EVICTION_ORDER if tally.pending[p] > leased[p]), None)
        if cls is None:
            return False
        action = policy.choose_action(
            tally.pending[cls] - leased[cls],
            thinnable=cls is not Priority.CRITICAL,
            thin_ineffective=cls in ineffective,
        )
        window = policy.window_rows(used - target_used, tally.avg_row(cls), action)
        after = tally.thin_mark[cls] if action is policy.EvictAction.THIN else 0
        found = await _oldest(conn, cls, after, window + leased[cls])
        rows = [(s, n) for s, _, n in found if s not in book][:window]
        if action is policy.EvictAction.THIN:
            # thin the oldest stretch not yet thinned in this round; at the newest end
            # start the next round (the whole class then gets sparser, oldest first)
            tally.thin_mark[cls] = rows[-1][0] if len(rows) >= window else 0
            drop = set(policy.thin([s for s, _ in rows]))
            rows = [r for r in rows if r[0] in drop]
            if not rows:
                continue
        if not rows:
            ineffective.add(cls)
            continue
        await delete_rows(conn, cls, rows, schema.meta_evicted(cls))
        nbytes = sum(n for _, n in rows)
        tally.remove(cls, len(rows), nbytes)
        tally.evicted[cls] += len(rows)
        if action is policy.EvictAction.THIN:
            thinned[cls] += nbytes
            freed[cls] += used - await used_bytes()
            if thinned[cls] > policy.THIN_JUDGE_BYTES and (
                freed[cls] < policy.THIN_MIN_YIELD * thinned[cls]
            ):
                ineffective.add(cls)
        log.debug("buffer: %s %d %s rows (%d bytes)", action.value, len(rows), cls.name, nbytes)
    return await used_bytes() <= target_used


async def expire(
    conn: aiosqlite.Connection,
    book: LeaseBook,
    tally: Tally,
    ttl_ms: Mapping[Priority, int],
    age_ms: int,
) -> int:
    """Delete unleased rows that spent more than their class TTL in the buffer.

    Time in the buffer is the age clock (``age_ms`` now), never a wall clock: the
    ``age_marks`` table says up to which seq every row was committed at least ``ttl``
    ago. Rows are examined oldest-seq first, a page at a time, and the pass stops at the
    first page without an expired row: cost follows the expired rows, not the backlog.
    """
    total = 0
    for p, ttl in ttl_ms.items():
        ((upto,),) = await conn.execute_fetchall(schema.EXPIRED_UPTO_SQL, (age_ms - ttl,))
        if upto is None:
            continue  # nothing has been in the buffer that long
        after = 0
        for _ in range(EXPIRE_MAX_PAGES):
            page = await _oldest(conn, p, after, EXPIRE_PAGE_ROWS)
            if not page:
                break
            old = [(s, n) for s, _t, n in page if s <= int(upto)]
            rows = [(s, n) for s, n in old if s not in book]
            if rows:
                await delete_rows(conn, p, rows, schema.meta_expired(p))
                tally.remove(p, len(rows), sum(n for _, n in rows))
                tally.expired[p] += len(rows)
                total += len(rows)
            if not old or len(page) < EXPIRE_PAGE_ROWS:
                break
            after = page[-1][0]
    return total
