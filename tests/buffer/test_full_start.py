"""Start on a full filesystem, and every buffer file inside ``max_bytes``.

A real ``truckgw run`` child on a real size-limited filesystem (a tmpfs mounted for the
test: needs root, which the test machines have; anything else is a failure, not a skip):
another program fills the filesystem while the agent is stopped; the agent must start,
record (newest first, into what fits), report ``disk_full``, leave no ``.tmp`` behind,
and return to normal (ballast back, ``disk_full`` false) once the space is freed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buffer.api import Lane
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event, decode_body
from gateway.health import read_state
from tests.buffer.test_salvage import _after, _check, _leaves, _rows, _smash
from tests.service.agent_env import Inputs, free_port, reaped, start_agent, truck_toml, wait_for

ROOT = Path(__file__).resolve().parents[2]
FS_BYTES = 8 * 2**20
MAX_BYTES = 4 * 2**20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.fail("mounting a size-limited tmpfs needs root", pytrace=False)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
        capture_output=True, check=False, timeout=10,
    )
    if res.returncode != 0:
        pytest.fail(f"cannot mount tmpfs: {res.stderr.decode().strip()}", pytrace=False)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=10)


def fill(folder: Path) -> Path:
    """Another program takes every free byte of the filesystem."""
    hog = folder / "other-program.bin"
    with hog.open("wb", buffering=0) as f:
        for _ in range(FS_BYTES // 4096 + 16):
            try:
                f.write(b"\0" * 4096)
            except OSError:
                break
    st = os.statvfs(folder)
    assert st.f_bavail * st.f_frsize < 4096, "the filesystem is full"
    return hog


def buffer_files(db: Path) -> int:
    """Bytes on disk of every file the buffer keeps (not the quarantined evidence)."""
    total = 0
    for name in os.listdir(db.parent):
        if name.startswith(db.name) and ".corrupt-" not in name:
            total += (db.parent / name).stat().st_size
    return total


@pytest.mark.slow
def test_agent_starts_records_and_recovers_on_a_filesystem_filled_while_stopped(
    small_fs: Path, tmp_path: Path,
) -> None:
    inputs = Inputs(tmp_path)
    assert inputs.gps is not None and inputs.can is not None
    db = small_fs / "buffer.db"
    text = truck_toml(tmp_path, mqtt_port=free_port(), gps_port=inputs.gps.link,
                      can_channel=inputs.can.channel, buffer_path=db)
    text = text.replace(f'path = "{db}"', f'path = "{db}"\nmax_bytes = {MAX_BYTES}')
    conf = tmp_path / "truck.toml"
    conf.write_text(text)
    log = tmp_path / "agent.log"

    def state() -> dict[str, Any]:
        return read_state(tmp_path / "state.json") or {}

    def buf() -> dict[str, Any]:
        sec = state().get("buffer")
        return sec if isinstance(sec, dict) else {}

    try:
        with reaped(start_agent(conf, log, {})) as proc:  # broker unreachable: all pending
            assert wait_for(lambda: inputs.pumped(
                lambda: int(buf().get("pending") or 0) > 2000), 40), log.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()
        assert (small_fs / "buffer.db.ballast").exists()
        before = int(buf()["last_seq"])
        hog = fill(small_fs)
        with reaped(start_agent(conf, log, {})) as proc:
            assert wait_for(lambda: inputs.pumped(
                lambda: proc.poll() is not None or (
                    state().get("phase") == "running" and buf().get("disk_full")
                    and int(buf().get("last_seq") or 0) > before + 500)), 40), (
                buf(), log.read_text()[-3000:])
            assert proc.poll() is None, log.read_text()[-3000:]
            assert not (small_fs / "buffer.db.seq.tmp").exists()
            assert int(buf()["pending"]) > 0
            full_seq = int(buf()["last_seq"])
            hog.unlink()  # the other program's file goes: back to normal
            assert wait_for(lambda: inputs.pumped(
                lambda: not buf().get("disk_full")
                and (small_fs / "buffer.db.ballast").exists()
                and int(buf().get("last_seq") or 0) > full_seq + 500), 40), (
                buf(), log.read_text()[-3000:])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()[-3000:]
        assert not (small_fs / "buffer.db.seq.tmp").exists()
        # newest first into what fits: the events recorded while the disk was full are
        # kept, room was made by evicting events of the earlier run (oldest first)
        kept = stored_seqs(db)
        assert set(range(full_seq - 50, full_seq + 1)) <= kept
        assert len([s for s in kept if s <= before]) < before
    finally:
        inputs.close()


def stored_seqs(db: Path) -> set[int]:
    """Every seq in the buffer's class tables (read-only, the agent stopped)."""
    import sqlite3  # noqa: PLC0415

    from buffer import schema  # noqa: PLC0415

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {int(r[0]) for t in schema.TABLES.values()
                for r in con.execute(f"SELECT seq FROM {t}")}  # noqa: S608
    finally:
        con.close()


async def test_every_buffer_file_stays_inside_max_bytes(tmp_path: Path) -> None:
    """A long ingest with nothing acked (broker down): db + WAL + ballast + seq mark."""
    cfg = BufferConfig(path=tmp_path / "buf.db", max_bytes=2 * 2**20, commit_interval_ms=5)
    biggest = 0
    async with await SqliteStore.open(cfg) as store:
        for r in range(40):
            for i in range(500):
                store.submit(Event(("gps", "engine", "engine", "dtc")[i % 4], r * 500 + i,
                                   {"i": i, "pad": "q" * 200}))
            await store.flush()
            biggest = max(biggest, buffer_files(cfg.path))
        st = await store.stats()
    assert (tmp_path / "buf.db.ballast").exists()
    assert sum(st.evicted_by_class.values()) > 0, "the ingest was long enough to evict"
    assert biggest <= cfg.max_bytes * 1.05, f"{biggest} bytes on disk > 105 % of max_bytes"


async def test_corrupt_file_on_a_full_filesystem_is_salvaged_or_announced(
    small_fs: Path,
) -> None:
    """Both at once: a damaged page, and no free block left when the agent starts."""
    cfg = BufferConfig(path=small_fs / "buf.db", max_bytes=MAX_BYTES, commit_interval_ms=5)
    async with await SqliteStore.open(cfg) as store:
        for i in range(2000):
            store.submit(Event(("gps", "engine", "dtc")[i % 3], i, {"i": i, "pad": "p" * 120}))
        await store.flush()
    assert (small_fs / "buf.db.ballast").exists()
    before = _rows(cfg.path)
    leaves = _leaves(cfg.path)
    _smash(cfg.path, leaves[len(leaves) // 2][1])
    fill(small_fs)
    # no block left: a new event may be dropped (counted) until space comes back
    got, ranges, lost_counter, _ = await _after(cfg, append=False)
    salvaged, lost = _check(before, got, ranges)
    assert salvaged > 0 and lost > 0 and lost_counter >= lost


async def test_stale_temporaries_are_removed_at_open(tmp_path: Path) -> None:
    """What a run killed half-way leaves (a mark being written, a salvage) is not kept."""
    cfg = BufferConfig(path=tmp_path / "buf.db", max_bytes=MAX_BYTES, commit_interval_ms=5)
    async with await SqliteStore.open(cfg) as store:
        await store.append(Event("gps", 1, {"i": 1}))
    stale = ["buf.db.seq.tmp", "buf.db.salvage", "buf.db.salvage-wal", "buf.db.salvage-new",
             "buf.db.salvage-template"]
    for name in stale:
        (tmp_path / name).write_bytes(b"half written")
    async with await SqliteStore.open(cfg) as store:
        assert (await store.stats()).pending == 1
    assert [n for n in stale if (tmp_path / n).exists()] == []


def run_until_dropped(db: Path, durability: str) -> tuple[list[int], list[int]]:
    """tests/buffer/full_kill_writer.py until it dropped events, then SIGKILL: the seqs
    it was given, durable and dropped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.buffer.full_kill_writer", str(db), durability],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    issued: list[int] = []
    dropped: list[int] = []
    try:
        assert proc.stdout is not None
        for _ in range(200_000):  # bounded; the child stops after 200 drops or 40,000 events
            line = proc.stdout.readline()
            if not line or line == "DROPPED\n":
                break
            kind, seq = line.split()
            (dropped if kind == "D" else issued).append(int(seq))
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    return issued, dropped


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["full", "normal"])
async def test_seqs_given_up_on_a_full_disk_are_never_reused_after_a_kill(
    small_fs: Path, durability: str,
) -> None:
    """Events dropped because the filesystem is full to the last block, then kill -9:
    the next start hands none of their numbers out again, and each is announced or
    counted. (The seq mark cannot be replaced then; it is overwritten in place.)"""
    db = small_fs / "buf.db"
    issued, dropped = run_until_dropped(db, durability)
    assert dropped, "the filesystem never filled up: nothing was dropped"
    (small_fs / "other-program.bin").unlink()
    cfg = BufferConfig(path=db, durability="full" if durability == "full" else "normal",
                       commit_interval_ms=5, max_bytes=4 * 2**20)
    async with await SqliteStore.open(cfg) as store:
        st = await store.stats()
        ranges: list[tuple[int, int]] = []
        for _ in range(10_000):
            batch = await store.lease(Lane.BACKFILL, 500, 10**9)
            if batch is None:
                break
            for e in batch.events:
                body = decode_body(e.body)
                if body["type"] == "seq_gap":
                    ranges.append((int(body["first"]), int(body["last"])))
        seq = await store.append(Event("gps", 1, {"after": True}))
    assert seq > max(issued + dropped), "a number handed out before the kill is reused"
    silent = [s for s in dropped if not any(a <= s <= b for a, b in ranges)]
    assert len(silent) <= sum(st.evicted_by_class.values()), (
        f"{len(silent)} dropped seqs neither announced nor counted")
