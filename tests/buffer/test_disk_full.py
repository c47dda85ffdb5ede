"""Disk full on a real, size-limited filesystem (a tmpfs mounted for the test; needs root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buffer.api import Lane
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event

FS_BYTES = 3 * 2**20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs; skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
        capture_output=True, check=False, timeout=10,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=10)


def _ev(i: int, kind: str = "gps") -> Event:
    return Event(kind, i, {"i": i, "pad": "z" * 250})


async def _append(
    store: SqliteStore, start: int, n: int, kinds: list[str], log: dict[int, str] | None = None
) -> list[int]:
    futs = [(kinds[i % len(kinds)], store.submit(_ev(start + i, kinds[i % len(kinds)])))
            for i in range(n)]
    await store.flush()
    out = []
    for kind, f in futs:
        if not f.exception():
            out.append(f.result())
            if log is not None:
                log[f.result()] = kind
    return out


async def test_filling_the_disk_evicts_keeps_newest_and_reports(small_fs: Path) -> None:
    cfg = BufferConfig(path=small_fs / "buf.db", max_bytes=256 * 2**20, commit_interval_ms=5)
    total = 0
    async with await SqliteStore.open(cfg) as store:
        stored: list[int] = []
        kinds: dict[int, str] = {}
        for r in range(20):  # ~20 x 1000 x 300 B = 6 MB into a 3 MiB filesystem
            stored += await _append(
                store, r * 1000, 1000, ["gps", "engine"] * 10 + ["dtc"], kinds)
            total += 1000
        st = await store.stats()
        assert st.disk_full
        assert sum(st.evicted_by_class.values()) > 0
        assert st.evicted_by_class["critical"] == 0
        assert st.pending + sum(st.evicted_by_class.values()) == total
        # telemetry went first; the newest positions and every critical event are there
        assert st.evicted_by_class["telemetry"] > st.evicted_by_class["position"]
        pending: dict[str, set[int]] = {"gps": set(), "engine": set(), "dtc": set()}
        for _ in range(100):
            batch = await store.lease(Lane.BACKFILL, 1000, 10**9)
            if batch is None:
                break
            for e in batch.events:
                pending[e.type].add(e.seq)
        assert pending["dtc"] == {s for s, k in kinds.items() if k == "dtc"}
        newest_gps = {s for s in stored[-1000:] if kinds[s] == "gps"}
        assert newest_gps and newest_gps <= pending["gps"]


async def test_disk_filled_by_someone_else_while_running(small_fs: Path) -> None:
    cfg = BufferConfig(path=small_fs / "buf.db", max_bytes=256 * 2**20, commit_interval_ms=5)
    async with await SqliteStore.open(cfg) as store:
        await _append(store, 0, 2000, ["gps"])
        hog = small_fs / "hog"
        with hog.open("wb", buffering=0) as f:  # another process takes (almost) all free space
            try:
                for _ in range(FS_BYTES // 4096):
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        seqs = await _append(store, 2000, 3000, ["engine", "gps", "dtc"])
        st = await store.stats()
        assert st.disk_full
        assert seqs, "ingest carried on"
        batch = await store.lease(Lane.LIVE, 50, 10**9)
        assert batch is not None and batch.seqs[-1] == seqs[-1]
        await store.release(batch.seqs)
        hog.unlink()
        more = await _append(store, 5000, 200, ["gps"])
        assert len(more) == 200
    async with await SqliteStore.open(cfg) as store:  # the file is intact after all that
        assert (await store.stats()).pending > 0
