"""Property-based: random append / lease / ack / release / restart sequences on a real file.

Invariants: seq strictly increasing and never reused (also across restarts); no seq
handed out twice while leased; a leased event is never evicted (its ack always finds
it); at the end every appended seq is pending, acked, or counted as evicted/expired;
the file never exceeds max_bytes by more than 5 %.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer.api import Batch, Lane
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event

MAX = 2**20
KINDS = ["dtc", "gps", "engine"]

ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from(KINDS), st.integers(1, 80),
                  st.sampled_from([0, 3000, 9000])),
        st.tuples(st.just("lease"), st.sampled_from(list(Lane)), st.integers(1, 40)),
        st.tuples(st.just("ack"), st.integers(0, 10), st.booleans()),
        st.tuples(st.just("release"), st.integers(0, 10)),
        st.tuples(st.just("restart")),
    ),
    min_size=1,
    max_size=40,
)


class Model:
    def __init__(self) -> None:
        self.appended: list[int] = []
        self.acked: set[int] = set()
        self.leased: list[Batch] = []


async def _run(path: Path, ops: list[tuple[Any, ...]]) -> None:
    cfg = BufferConfig(path=path, max_bytes=MAX, commit_interval_ms=2)
    m = Model()
    store = await SqliteStore.open(cfg)
    try:
        for op in ops:
            kind = op[0]
            if kind == "append":
                _, ev_kind, n, pad = op
                futs = [store.submit(Event(ev_kind, i, {"pad": "p" * pad})) for i in range(n)]
                seqs = [await f for f in futs]
                assert seqs == sorted(set(seqs))
                assert not m.appended or seqs[0] > m.appended[-1], "seq went backwards"
                m.appended += seqs
            elif kind == "lease":
                _, lane, n = op
                batch = await store.lease(lane, n, 10**9)
                if batch is not None:
                    got = set(batch.seqs)
                    held = {s for b in m.leased for s in b.seqs}
                    assert not got & held, "a leased seq was handed out twice"
                    assert not got & m.acked and got <= set(m.appended)
                    assert len(batch.events) <= n
                    m.leased.append(batch)
                else:
                    assert (await store.stats()).pending == sum(len(b.events) for b in m.leased)
            elif kind == "ack" and m.leased:
                _, idx, whole = op
                b = m.leased.pop(idx % len(m.leased))
                acks = b.seqs if whole else b.seqs[: max(1, len(b.seqs) // 2)]
                if not whole:
                    await store.release(b.seqs[len(acks):])
                before = (await store.stats()).extra.get("acked", 0)
                await store.ack(acks)
                after = (await store.stats()).extra.get("acked", 0)
                assert after - before == len(acks), "a leased event was evicted"
                m.acked |= set(acks)
            elif kind == "release" and m.leased:
                b = m.leased.pop(op[1] % len(m.leased))
                await store.release(b.seqs)
            elif kind == "restart":
                await store.close()
                store = await SqliteStore.open(cfg)
                m.leased.clear()
            assert store.file_bytes() <= MAX * 1.05
        for b in m.leased:
            await store.release(b.seqs)
        present: set[int] = set()
        for _ in range(10_000):
            batch = await store.lease(Lane.BACKFILL, 500, 10**9)
            if batch is None:
                break
            assert not present & set(batch.seqs)
            present |= set(batch.seqs)
        st_ = await store.stats()
        lost = set(m.appended) - present - m.acked
        assert not present & m.acked
        counted = sum(st_.evicted_by_class.values()) + sum(st_.expired_by_class.values())
        assert len(lost) == counted, f"{len(lost)} seqs missing, {counted} counted"
        assert st_.pending == len(present)
    finally:
        await store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_strategy)
def test_random_operation_sequences_keep_the_invariants(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(_run(Path(d) / "buf.db", ops))
