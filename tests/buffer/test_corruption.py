"""Corrupt files are quarantined (kept), a new file is started, seq carries on."""

from __future__ import annotations

import os
from collections.abc import Callable

from buffer.api import Lane
from buffer.recovery import mark_path, quarantined_files
from buffer.schema import PAGE_SIZE
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import decode_body

from .conftest import make_event


async def _fill(cfg: BufferConfig, n: int) -> int:
    async with await SqliteStore.open(cfg) as s:
        for _ in range(n):
            s.submit(make_event(pad=200))
        await s.flush()
        return s.last_committed_seq


async def test_garbage_header_is_quarantined_and_seq_continues(cfg: BufferConfig) -> None:
    last = await _fill(cfg, 50)
    original = cfg.path.read_bytes()
    with cfg.path.open("r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 25)
    damaged = cfg.path.read_bytes()
    async with await SqliteStore.open(cfg, now_ms=lambda: 1_767_225_600_000) as s:
        st = await s.stats()
        # the rows behind the broken header are salvaged (tests/buffer/test_salvage.py)
        assert st.quarantined_files == 1 and st.pending == 50
        assert st.extra["quarantined_now"] == 1 and st.lost_quarantine == 0
        seq = await s.append(make_event())
        assert seq == last + 1  # clean stop: the mark is exact, nothing to jump over
        b = await s.lease(Lane.BACKFILL, 100, 10**6)
        assert b is not None and b.seqs == (*range(1, last + 1), seq)
        assert all(decode_body(e.body)["type"] != "seq_gap" for e in b.events)
    (q,) = quarantined_files(cfg.path)
    assert q.name == "buf.db.corrupt-20260101T000000Z"
    assert q.read_bytes() == damaged != original  # kept byte for byte


async def test_damaged_page_fails_quick_check_and_counters_are_salvaged(
    make_cfg: Callable[..., BufferConfig],
) -> None:
    cfg = make_cfg(max_bytes=2**20)
    last = await _fill(cfg, 8000)  # overflows 1 MiB: some evictions to salvage
    async with await SqliteStore.open(cfg) as s:
        evicted = dict((await s.stats()).evicted_by_class)
    assert evicted["position"] > 0
    size = cfg.path.stat().st_size
    assert size > 20 * PAGE_SIZE
    with cfg.path.open("r+b") as f:  # smash a B-tree page in the middle of the file
        f.seek((size // PAGE_SIZE // 2) * PAGE_SIZE)
        f.write(os.urandom(PAGE_SIZE))
    mark_path(cfg.path).unlink()  # only the damaged file itself knows the last seq
    async with await SqliteStore.open(cfg) as s:
        st = await s.stats()
        assert st.quarantined_files == 1
        assert await s.append(make_event()) > last
        assert st.evicted_by_class == evicted


async def test_each_corruption_gets_its_own_quarantine_file(cfg: BufferConfig) -> None:
    seen = 0
    for _ in range(2):
        seen = max(seen, await _fill(cfg, 5))
        with cfg.path.open("r+b") as f:
            f.write(b"not a database at all" * 5)
        async with await SqliteStore.open(cfg, now_ms=lambda: 0) as s:
            assert await s.append(make_event()) > seen
            seen = s.last_committed_seq
    assert len(quarantined_files(cfg.path)) == 2
    async with await SqliteStore.open(cfg) as s:
        assert (await s.stats()).quarantined_files == 2


async def test_empty_and_truncated_files(cfg: BufferConfig) -> None:
    last = await _fill(cfg, 30)
    with cfg.path.open("r+b") as f:
        f.truncate(PAGE_SIZE + 100)
    async with await SqliteStore.open(cfg) as s:
        assert await s.append(make_event()) > last
        assert (await s.stats()).quarantined_files == 1
