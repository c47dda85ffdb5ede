"""SqliteStore on real SQLite files: append, lanes, lease/ack/release, restarts, TTL."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest

from buffer import writer as writer_mod
from buffer.api import Lane
from buffer.recovery import mark_path
from buffer.store import SqliteStore, StoreState
from config import BufferConfig
from config.errors import StoreError
from config.events import Priority, decode_body, encode_body

from .conftest import make_event


async def drain(store: SqliteStore, lane: Lane = Lane.BACKFILL, n: int = 1000) -> list[int]:
    """Lease and ack everything pending; returns the seqs in lease order."""
    out: list[int] = []
    for _ in range(100_000):
        batch = await store.lease(lane, n, 10**9)
        if batch is None:
            return out
        out.extend(batch.seqs)
        await store.ack(batch.seqs)
    raise AssertionError("drain did not finish")


async def test_append_gives_increasing_seqs_and_bodies_round_trip(store: SqliteStore) -> None:
    events = [make_event("gps"), make_event("engine"), make_event("dtc")]
    seqs = [await store.append(e) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert store.last_committed_seq == seqs[-1]
    batch = await store.lease(Lane.BACKFILL, 10, 10**6)
    assert batch is not None
    assert batch.seqs == tuple(seqs)
    for got, ev in zip(batch.events, events, strict=True):
        assert got.body == encode_body(ev)
        assert got.type == ev.type and got.ts_ms == ev.ts_ms and got.priority is ev.priority
        assert decode_body(got.body)["ts"] == ev.ts_ms


async def test_group_commit_resolves_many_submits(store: SqliteStore) -> None:
    futs = [store.submit(make_event()) for _ in range(5000)]
    seqs = await asyncio.gather(*futs)
    assert seqs == list(range(seqs[0], seqs[0] + 5000))
    st = await store.stats()
    assert st.pending == 5000 and st.pending_by_class["position"] == 5000
    assert st.extra.get("commits", 0) == 0 or st.extra["commits"] < 5000


async def test_lanes_take_opposite_ends_without_overlap(store: SqliteStore) -> None:
    seqs = [await store.submit(make_event()) for _ in range(100)]
    live = await store.lease(Lane.LIVE, 10, 10**6)
    back = await store.lease(Lane.BACKFILL, 10, 10**6)
    assert live is not None and back is not None
    assert live.seqs == tuple(seqs[-10:])
    assert back.seqs == tuple(seqs[:10])
    seen = set(live.seqs) | set(back.seqs)
    for _ in range(20):  # alternate lanes until everything is leased
        b = await store.lease(Lane.LIVE, 7, 10**6) or await store.lease(Lane.BACKFILL, 7, 10**6)
        if b is None:
            break
        assert not seen & set(b.seqs), "a leased seq was handed out twice"
        seen |= set(b.seqs)
    assert seen == set(seqs)
    assert await store.lease(Lane.BACKFILL, 10, 10**6) is None
    assert await store.wait_pending(0.01) is False


async def test_release_makes_events_pending_again(store: SqliteStore) -> None:
    for _ in range(30):
        store.submit(make_event())
    await store.flush()
    a = await store.lease(Lane.BACKFILL, 10, 10**6)
    b = await store.lease(Lane.BACKFILL, 10, 10**6)
    assert a is not None and b is not None
    await store.release(a.seqs)
    again = await store.lease(Lane.BACKFILL, 10, 10**6)
    assert again is not None and again.seqs == a.seqs
    await store.ack(b.seqs)
    await store.ack(again.seqs)
    rest = await drain(store)
    assert len(rest) == 10 and not set(rest) & (set(a.seqs) | set(b.seqs))


async def test_max_bytes_limits_batch_but_returns_at_least_one(store: SqliteStore) -> None:
    for _ in range(10):
        store.submit(make_event(pad=1000))
    await store.flush()
    one = await store.lease(Lane.BACKFILL, 10, 10)
    assert one is not None and len(one.events) == 1
    some = await store.lease(Lane.BACKFILL, 10, 3500)
    assert some is not None and len(some.events) == 3 and some.nbytes <= 3500


async def test_wait_pending(store: SqliteStore) -> None:
    assert await store.wait_pending(0.01) is False
    waiter = asyncio.create_task(store.wait_pending(5))
    await asyncio.sleep(0)
    await store.append(make_event())
    assert await waiter is True
    batch = await store.lease(Lane.LIVE, 10, 10**6)
    assert batch is not None
    assert await store.wait_pending(0.01) is False  # everything is leased
    await store.release(batch.seqs)
    assert await store.wait_pending(0.01) is True


async def test_restart_keeps_pending_drops_leases_and_continues_seq(cfg: BufferConfig) -> None:
    async with await SqliteStore.open(cfg) as s:
        seqs = [await s.append(make_event()) for _ in range(20)]
        b = await s.lease(Lane.BACKFILL, 5, 10**6)
        assert b is not None
        await s.ack(b.seqs)
        await s.lease(Lane.BACKFILL, 5, 10**6)  # leased, never acked
    async with await SqliteStore.open(cfg) as s:
        st = await s.stats()
        assert st.pending == 15 and st.leased == 0 and st.last_seq == seqs[-1]
        got = await drain(s)
        assert got == seqs[5:]
        nxt = await s.append(make_event())
        assert nxt == seqs[-1] + 1, "a clean restart leaves no gap"


async def test_seq_never_reused_when_file_deleted(cfg: BufferConfig) -> None:
    async with await SqliteStore.open(cfg) as s:
        last = max([await s.append(make_event()) for _ in range(5)])
    cfg.path.unlink()
    async with await SqliteStore.open(cfg) as s:
        assert await s.append(make_event()) > last
        b = await s.lease(Lane.BACKFILL, 10, 10**6)
        assert b is not None
        assert decode_body(b.events[0].body)["reason"] == "missing_file"


async def test_unclean_normal_stop_jumps_over_the_reservation(cfg: BufferConfig) -> None:
    """Without a clean mark, normal durability may have lost its last window: skip it."""
    async with await SqliteStore.open(cfg) as s:
        last = await s.append(make_event())
    reserved = 10**6 + last
    mark_path(cfg.path).write_text(f'{{"reserved": {reserved}, "clean": false, "full": false}}')
    async with await SqliteStore.open(cfg) as s:
        # the jump is announced to consumers with a seq_gap notice, then data continues
        assert await s.append(make_event()) == reserved + 2
        assert (await s.stats()).extra["unclean_start"] == 1
        b = await s.lease(Lane.BACKFILL, 10, 10**6)
        assert b is not None
        notice = decode_body(b.events[-2].body)
        assert notice == {"ts": notice["ts"], "type": "seq_gap", "first": last + 1,
                          "last": reserved, "reason": "unclean_start"}


async def test_unclean_full_stop_trusts_the_database(make_cfg: Callable[..., BufferConfig]) -> None:
    cfg = make_cfg(durability="full")
    async with await SqliteStore.open(cfg) as s:
        last = await s.append(make_event())
    mark_path(cfg.path).write_text(f'{{"reserved": {last + 999}, "clean": false, "full": true}}')
    async with await SqliteStore.open(cfg) as s:
        assert await s.append(make_event()) == last + 1


async def test_close_commits_queued_appends(cfg: BufferConfig) -> None:
    s = await SqliteStore.open(cfg)
    futs = [s.submit(make_event()) for _ in range(300)]
    await s.close()
    assert s.state is StoreState.CLOSED
    assert all(f.done() and not f.exception() for f in futs)
    with pytest.raises(StoreError):
        s.submit(make_event())
    async with await SqliteStore.open(cfg) as s2:
        assert (await s2.stats()).pending == 300


async def test_second_open_of_same_file_is_refused_not_quarantined(cfg: BufferConfig) -> None:
    async with await SqliteStore.open(cfg) as s:
        await s.append(make_event())
        with pytest.raises(StoreError, match="in use"):
            await SqliteStore.open(cfg)
        assert (await s.stats()).quarantined_files == 0
    assert not list(cfg.path.parent.glob("*.corrupt-*"))


async def test_open_close_leaves_no_threads(cfg: BufferConfig) -> None:
    before = set(threading.enumerate())
    async with await SqliteStore.open(cfg) as s:
        await s.append(make_event())
        await asyncio.sleep(0)
    assert set(threading.enumerate()) <= before


async def test_ttl_expires_old_events_of_configured_class(
    make_cfg: Callable[..., BufferConfig],
) -> None:
    mono = [1000.0]
    cfg = make_cfg(ttl_s={"telemetry": 60.0})
    async with await SqliteStore.open(cfg, mono=lambda: mono[0]) as s:
        old = [await s.append(make_event("engine")) for _ in range(5)]
        gps_old = await s.append(make_event("gps"))
        assert await s.expire_now() == 0  # just arrived
        mono[0] += 61.0  # a minute in the buffer
        young = await s.append(make_event("engine"))
        leased = await s.lease(Lane.BACKFILL, 1, 10**6)
        assert leased is not None and leased.seqs == (old[0],)
        assert await s.expire_now() == 4  # the leased one is in flight: left alone
        st = await s.stats()
        assert st.expired_by_class == {"critical": 0, "position": 0, "telemetry": 4}
        await s.ack(leased.seqs)
        assert set(await drain(s)) == {young, gps_old}
    async with await SqliteStore.open(cfg, mono=lambda: mono[0]) as s:
        assert (await s.stats()).expired_by_class["telemetry"] == 4


async def test_ttl_ignores_wall_clock_steps(make_cfg: Callable[..., BufferConfig]) -> None:
    """A Pi boots 14 days behind and GPS steps the clock: nothing expires for it."""
    wall = [1_700_000_000_000]
    mono = [50.0]
    cfg = make_cfg(ttl_s={"telemetry": 7 * 86400.0, "position": 60.0})
    async with await SqliteStore.open(cfg, now_ms=lambda: wall[0], mono=lambda: mono[0]) as s:
        seqs = [await s.append(make_event("engine", ts_ms=wall[0])) for _ in range(10)]
        wall[0] += 14 * 86_400_000  # forward 14 days
        mono[0] += 30.0
        assert await s.expire_now() == 0
        wall[0] -= 30 * 86_400_000  # and back 30
        assert await s.expire_now() == 0
        assert (await s.stats()).pending == len(seqs)


async def test_ttl_age_survives_a_restart(make_cfg: Callable[..., BufferConfig]) -> None:
    """Time in the buffer adds up over runs (each run's monotonic clock starts anew)."""
    cfg = make_cfg(ttl_s={"telemetry": 100.0})
    mono = [10.0]
    async with await SqliteStore.open(cfg, mono=lambda: mono[0]) as s:
        first = await s.append(make_event("engine"))
        await s.expire_now()  # the periodic pass marks its age (every EXPIRE_INTERVAL_S)
        mono[0] += 60.0
    mono[0] = 3.0  # a new boot: the monotonic clock starts again
    async with await SqliteStore.open(cfg, mono=lambda: mono[0]) as s:
        second = await s.append(make_event("engine"))
        await s.expire_now()
        mono[0] += 30.0  # 90 s in the buffer for the first
        assert await s.expire_now() == 0
        mono[0] += 15.0  # 105 s: past its TTL; the second has 45 s
        assert await s.expire_now() == 1
        assert await drain(s) == [second]
    assert first < second


async def test_stats_report_classes_and_sizes(store: SqliteStore) -> None:
    kinds: dict[str, Any] = {"dtc": "critical", "gps": "position", "engine": "telemetry"}
    for k in kinds:
        await store.append(make_event(k, ts_ms=1000 + len(k)))
    st = await store.stats()
    assert st.pending == 3
    assert st.pending_by_class == {"critical": 1, "position": 1, "telemetry": 1}
    assert st.oldest_pending_ts_ms == 1003
    assert st.file_bytes > 0 and st.quarantined_files == 0 and not st.disk_full
    assert sum(st.pending_bytes_by_class.values()) == st.pending_bytes
    assert Priority.CRITICAL < Priority.TELEMETRY


async def test_ack_of_unleased_seq_deletes_it(store: SqliteStore) -> None:
    a = await store.append(make_event("dtc"))
    await store.ack([a, 12345])
    assert (await store.stats()).pending == 0


async def test_full_durability_round_trip(make_cfg: Callable[..., BufferConfig]) -> None:
    async with await SqliteStore.open(make_cfg(durability="full")) as s:
        seqs = await asyncio.gather(*[s.submit(make_event()) for _ in range(500)])
        assert await drain(s, Lane.LIVE, 64) != [] and len(set(seqs)) == 500


async def test_stats_are_a_read_only_snapshot(store: SqliteStore) -> None:
    await store.append(make_event("dtc"))
    st = await store.stats()
    with pytest.raises(TypeError):
        st.pending_by_class["critical"] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        st.extra["acked"] = 1  # type: ignore[index]
    await store.append(make_event("dtc"))
    assert st.pending_by_class["critical"] == 1, "a snapshot does not follow the store"


async def test_hold_blocks_commits_until_released(store: SqliteStore) -> None:
    async with store.hold():
        fut = store.submit(make_event())
        flushing = asyncio.ensure_future(store.flush())
        for _ in range(100):  # let the writer run as far as it can: up to the held file
            await asyncio.sleep(0)
        assert not fut.done() and not flushing.done()
    await flushing
    assert fut.result() == store.last_committed_seq


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_a_failed_commit_fails_counts_and_never_reuses_its_seqs(
    make_cfg: Callable[..., BufferConfig], monkeypatch: pytest.MonkeyPatch, durability: str,
) -> None:
    """An I/O error in a group commit: the batch's futures fail (none pending for ever),
    the events are counted, and no later start hands their seqs out again."""
    cfg = make_cfg(durability=durability)
    s = await SqliteStore.open(cfg)
    first = await s.append(make_event())
    real_insert = writer_mod._insert

    async def failing_insert(conn: Any, batch: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(writer_mod, "_insert", failing_insert)
    futs = [s.submit(make_event()) for _ in range(20)]
    done, pending = await asyncio.wait(futs, timeout=10)
    assert not pending
    assert all(isinstance(f.exception(), StoreError) for f in done)
    assert s.state is StoreState.FAILED
    st = await s.stats()
    assert st.extra.get("dropped_commit_failed", 0) + st.extra.get("dropped_writer_failed", 0) == 20
    assert sum(st.evicted_by_class.values()) == 20
    monkeypatch.setattr(writer_mod, "_insert", real_insert)
    await s.close()  # not clean: the writer failed (like the agent's exit, then a restart)
    async with await SqliteStore.open(cfg) as s2:
        nxt = await s2.append(make_event())
        assert nxt > first + 20  # the failed numbers are never handed out again
        b = await s2.lease(Lane.BACKFILL, 10, 10**6)
        assert b is not None
        notices = [decode_body(e.body) for e in b.events if e.seq not in (first, nxt)]
        assert [n["type"] for n in notices] == ["seq_gap"]
        assert notices[0]["first"] <= first + 1 and notices[0]["last"] >= first + 20
