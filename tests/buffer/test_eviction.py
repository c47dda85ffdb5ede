"""Bounded size: eviction by class then age, thinning, counters, file size cap."""

from __future__ import annotations

from collections.abc import Callable

from buffer.api import Lane
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event

MAX = 3 * 2**20  # every buffer file is inside it, the ballast too (docs/buffer.md)
ROUNDS = 24
PER_ROUND = 1000


def _event(kind: str, ts: int) -> Event:
    return Event(kind, ts, {"v": ts, "pad": "y" * 150})


async def _fill(store: SqliteStore, kinds: list[str]) -> tuple[dict[str, list[int]], int]:
    """Append ROUNDS x PER_ROUND events cycling through ``kinds``; track the largest file."""
    seqs: dict[str, list[int]] = {k: [] for k in set(kinds)}
    biggest = 0
    for r in range(ROUNDS):
        futs = []
        for i in range(PER_ROUND):
            k = kinds[i % len(kinds)]
            futs.append((k, store.submit(_event(k, r * PER_ROUND + i))))
        await store.flush()
        for k, f in futs:
            seqs[k].append(f.result())
        biggest = max(biggest, store.file_bytes())
    return seqs, biggest


async def _pending(store: SqliteStore) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for _ in range(10_000):
        b = await store.lease(Lane.BACKFILL, 2000, 10**9)
        if b is None:
            return out
        for e in b.events:
            out.setdefault(e.type, []).append(e.ts_ms)
    raise AssertionError("unbounded")


async def test_telemetry_goes_first_and_is_thinned_not_cut(
    make_cfg: Callable[..., BufferConfig],
) -> None:
    cfg = make_cfg(max_bytes=MAX)
    async with await SqliteStore.open(cfg) as store:
        kinds = ["engine", "engine", "gps", "engine"] * 24 + ["dtc"]
        seqs, biggest = await _fill(store, kinds)
        st = await store.stats()
        assert biggest <= MAX * 1.05, f"file reached {biggest} > 105 % of {MAX}"
        assert st.evicted_by_class["telemetry"] > 0
        assert st.evicted_by_class["critical"] == 0
        assert st.evicted_by_class["position"] == 0
        assert st.pending_by_class["critical"] == len(seqs["dtc"])
        assert st.pending_by_class["position"] == len(seqs["gps"])
        for name, kind in (("telemetry", "engine"), ("position", "gps"), ("critical", "dtc")):
            assert st.pending_by_class[name] + st.evicted_by_class[name] == len(seqs[kind])
        kept = await _pending(store)
        engine = sorted(kept["engine"])
        # thinning: the oldest telemetry stretch is still represented, only sparser,
        # and the newest telemetry is complete
        assert engine[0] < ROUNDS * PER_ROUND // 4
        newest = [t for t in range((ROUNDS - 1) * PER_ROUND, ROUNDS * PER_ROUND)
                  if kinds[t % PER_ROUND % len(kinds)] == "engine"]
        assert set(newest) <= set(engine)
        first_quarter = [t for t in engine if t < ROUNDS * PER_ROUND // 4]
        last_quarter = [t for t in engine if t >= ROUNDS * PER_ROUND * 3 // 4]
        assert 0 < len(first_quarter) < len(last_quarter)
    async with await SqliteStore.open(cfg) as store:
        again = await store.stats()
        assert again.evicted_by_class == st.evicted_by_class, "counters survive a restart"


async def test_positions_go_after_telemetry_and_critical_outlives_them(
    make_cfg: Callable[..., BufferConfig],
) -> None:
    cfg = make_cfg(max_bytes=MAX)
    async with await SqliteStore.open(cfg) as store:
        kinds = ["gps"] * 9 + ["dtc"]
        seqs, biggest = await _fill(store, kinds)
        st = await store.stats()
        assert biggest <= MAX * 1.05
        assert st.evicted_by_class["position"] > 0
        assert st.evicted_by_class["critical"] == 0
        assert st.pending_by_class["critical"] == len(seqs["dtc"])
        # the newest positions are all there
        kept = await _pending(store)
        newest_gps = {t for t in range((ROUNDS - 1) * PER_ROUND, ROUNDS * PER_ROUND)
                      if kinds[t % len(kinds)] == "gps"}
        assert newest_gps <= set(kept["gps"])


async def test_critical_only_drops_oldest_and_ingest_never_stops(
    make_cfg: Callable[..., BufferConfig],
) -> None:
    cfg = make_cfg(max_bytes=MAX)
    async with await SqliteStore.open(cfg) as store:
        _seqs, biggest = await _fill(store, ["dtc"])
        st = await store.stats()
        assert biggest <= MAX * 1.05
        assert st.evicted_by_class["critical"] > 0
        assert st.pending + st.evicted_by_class["critical"] == ROUNDS * PER_ROUND
        kept = sorted((await _pending(store))["dtc"])
        # dropped by range: what is left is the newest contiguous stretch
        assert kept == list(range(kept[0], ROUNDS * PER_ROUND))


async def test_leased_events_are_not_evicted(make_cfg: Callable[..., BufferConfig]) -> None:
    cfg = make_cfg(max_bytes=MAX)
    async with await SqliteStore.open(cfg) as store:
        first = [store.submit(_event("engine", i)) for i in range(200)]
        await store.flush()
        batch = await store.lease(Lane.BACKFILL, 200, 10**9)
        assert batch is not None and len(batch.events) == 200
        await _fill(store, ["engine"])
        assert (await store.stats()).evicted_by_class["telemetry"] > 0
        await store.ack(batch.seqs)
        st = await store.stats()
        assert st.extra["acked"] == 200, "every leased event was still there to ack"
        assert "ack_missing" not in st.extra
        assert [f.result() for f in first] == list(batch.seqs)
