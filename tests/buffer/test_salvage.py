"""Salvage of a corrupt buffer: every readable row kept with its seq, the rest announced.

Real SQLite files of 2,000 pending events, damaged the way a failing SD card does it
while the agent is stopped: the header page, a page in the middle, the last page, and a
frame in the middle of the WAL of an agent that died before checkpointing. After the
restart every pending seq must be either in the new buffer (same seq, same bytes) or
inside a ``seq_gap`` notice with reason ``quarantine``, never both; the notices' seqs
not salvaged are counted in ``lost_quarantine`` (which survives a restart), and the
corrupt file is kept byte for byte.
"""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buffer.api import Lane
from buffer.recovery import mark_path, quarantined_files
from buffer.salvage import scan_table
from buffer.schema import PAGE_SIZE, TABLES, create_script, insert_sql
from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event, Priority, decode_body, encode_body
from gateway.health import read_state
from sim.broker import Mosquitto
from sim.sink import Sink, session_store_conf
from tests.service.agent_env import devices_and_config, reaped, start_agent, wait_for

from .conftest import make_event

PENDING = 2000
KINDS = ("gps", "gps", "engine", "engine", "engine", "dtc")


async def _fill(cfg: BufferConfig, n: int = PENDING) -> None:
    rnd = random.Random(7)
    async with await SqliteStore.open(cfg) as s:
        for _ in range(n):
            s.submit(make_event(rnd.choice(KINDS), pad=rnd.randint(40, 160)))
        await s.flush()


def _rows(path: Path) -> dict[int, bytes]:
    """Every row of a healthy buffer file, read directly."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[int, bytes] = {}
        for t in TABLES.values():
            out.update((int(s), bytes(b)) for s, b in conn.execute(f"SELECT seq, body FROM {t}"))  # noqa: S608
        return out
    finally:
        conn.close()


def _leaves(path: Path) -> list[tuple[str, int]]:
    """(table, page number) of every leaf page of the event tables (``dbstat``)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(str(n), int(p)) for n, p in conn.execute(
            "SELECT name, pageno FROM dbstat WHERE pagetype = 'leaf' AND name LIKE 'ev_%' "
            "ORDER BY pageno")]
    finally:
        conn.close()


def _smash(path: Path, pageno: int, *, seed: int = 1) -> None:
    with path.open("r+b") as f:
        f.seek((pageno - 1) * PAGE_SIZE)
        f.write(random.Random(seed).randbytes(PAGE_SIZE))


async def _after(cfg: BufferConfig, *, append: bool = True
                 ) -> tuple[dict[int, bytes], list[tuple[int, int]], int, int]:
    """Open the damaged buffer: (rows now pending, quarantine ranges, lost counter, last);
    then record one more event (``append``) above every salvaged seq."""
    async with await SqliteStore.open(cfg) as s:
        st = await s.stats()
        assert st.quarantined_files == 1 and st.extra["quarantined_now"] == 1
        got: dict[int, bytes] = {}
        for _ in range(10_000):
            b = await s.lease(Lane.BACKFILL, 500, 10**9)
            if b is None:
                break
            got.update((e.seq, e.body) for e in b.events)
        notices = [decode_body(body) for body in got.values()
                   if decode_body(body)["type"] == "seq_gap"]
        ranges = [(int(n["first"]), int(n["last"])) for n in notices
                  if n["reason"] == "quarantine"]
        if append:
            seq = await s.append(make_event())
            assert seq > max(got)
        return got, ranges, st.lost_quarantine, s.last_committed_seq


def _check(before: dict[int, bytes], got: dict[int, bytes], ranges: list[tuple[int, int]]
           ) -> tuple[int, int]:
    """Every pending seq salvaged (same bytes) or announced, not both: (salvaged, lost)."""
    def announced(seq: int) -> bool:
        return any(a <= seq <= b for a, b in ranges)

    salvaged = lost = 0
    for seq, body in before.items():
        if seq in got:
            assert got[seq] == body, f"seq {seq} salvaged with other bytes"
            assert not announced(seq), f"seq {seq} salvaged and announced as never sent"
            salvaged += 1
        else:
            assert announced(seq), f"pending seq {seq} neither salvaged nor announced"
            lost += 1
    for seq in got:
        assert seq in before or decode_body(got[seq])["type"] == "seq_gap", seq
    return salvaged, lost


async def test_middle_page_loses_only_its_own_rows(cfg: BufferConfig) -> None:
    await _fill(cfg)
    before = _rows(cfg.path)
    assert len(before) == PENDING
    leaves = _leaves(cfg.path)
    table, page = leaves[len(leaves) // 2]
    _smash(cfg.path, page)
    damaged = cfg.path.read_bytes()
    got, ranges, lost_counter, _ = await _after(cfg)
    salvaged, lost = _check(before, got, ranges)
    assert 0 < lost <= 60, (table, lost)  # one 4 KiB page: tens of rows, not the file
    assert salvaged == PENDING - lost
    # counted: the seqs announced that may have held an event (clean stop: no jump)
    assert lost_counter == sum(b - a + 1 for a, b in ranges) >= lost
    assert lost_counter < 200  # only around the bad page, not everything below it
    (q,) = quarantined_files(cfg.path)
    assert q.read_bytes() == damaged
    async with await SqliteStore.open(cfg) as s:  # the counter survives a restart
        assert (await s.stats()).lost_quarantine == lost_counter


async def test_header_page_everything_salvaged(cfg: BufferConfig) -> None:
    await _fill(cfg)
    before = _rows(cfg.path)
    _smash(cfg.path, 1)
    got, ranges, lost_counter, _ = await _after(cfg)
    salvaged, lost = _check(before, got, ranges)
    assert (salvaged, lost, lost_counter, ranges) == (PENDING, 0, 0, [])


async def test_last_page(cfg: BufferConfig) -> None:
    await _fill(cfg)
    before = _rows(cfg.path)
    npages = cfg.path.stat().st_size // PAGE_SIZE
    table, page = _leaves(cfg.path)[-1]
    assert page == npages, "the last page of the file is a leaf of an event table"
    _smash(cfg.path, page)
    got, ranges, lost_counter, _ = await _after(cfg)
    salvaged, lost = _check(before, got, ranges)
    assert 0 < lost <= 60 and salvaged == PENDING - lost, table
    assert lost_counter == sum(b - a + 1 for a, b in ranges) >= lost
    # the newest rows of that table were on it: the range runs up past them
    assert max(b for _, b in ranges) >= max(s for s in before if s not in got)


async def test_damaged_wal_frame_keeps_the_frames_before_it(
    make_cfg: Callable[..., BufferConfig], tmp_path: Path,
) -> None:
    cfg = make_cfg(durability="full", max_bytes=64 * 2**20)
    crash = tmp_path / "crash"
    crash.mkdir()
    rnd = random.Random(3)
    s = await SqliteStore.open(cfg)
    try:
        for _ in range(PENDING // 10):  # many small commits: many WAL frames
            for _ in range(10):
                s.submit(make_event(rnd.choice(KINDS), pad=100))
            await s.flush()
        async with s.hold():  # a crash image: what a kill -9 now would leave behind
            for suffix in ("", "-wal", ".seq"):
                shutil.copyfile(cfg.path.with_name(cfg.path.name + suffix),
                                crash / (cfg.path.name + suffix))
        before: dict[int, bytes] = {}
        for _ in range(100):
            b = await s.lease(Lane.BACKFILL, 500, 10**9)
            if b is None:
                break
            before.update((e.seq, e.body) for e in b.events)
    finally:
        await s.close()
    assert len(before) == PENDING
    wal = crash / (cfg.path.name + "-wal")
    frame = 24 + PAGE_SIZE
    nframes = (wal.stat().st_size - 32) // frame
    assert nframes > 50
    with wal.open("r+b") as f:  # one frame in the middle of the WAL: its page is garbage
        f.seek(32 + (nframes // 2) * frame + 24 + 100)
        f.write(random.Random(5).randbytes(1000))
    for suffix in ("", "-wal", ".seq"):
        name = cfg.path.name + suffix
        shutil.copyfile(crash / name, cfg.path.with_name(name))
    got, ranges, lost_counter, _ = await _after(cfg)
    salvaged, lost = _check(before, got, ranges)
    assert salvaged > PENDING // 4, "the commits before the damaged frame are kept"
    # where the lost commits ended is read from the WAL's intact frames: counted exactly
    assert lost > 0 and lost_counter == lost
    (q,) = quarantined_files(cfg.path)
    assert q.with_name(q.name + "-wal").exists(), "the damaged WAL is kept with its file"


async def test_no_seq_mark_and_unreadable_meta_still_announces(cfg: BufferConfig) -> None:
    """Without the seq mark the file itself bounds the seqs; the announcement holds."""
    await _fill(cfg)
    before = _rows(cfg.path)
    leaves = _leaves(cfg.path)
    _smash(cfg.path, leaves[len(leaves) // 3][1])
    mark_path(cfg.path).unlink()
    got, ranges, _, _ = await _after(cfg)
    _check(before, got, ranges)


@pytest.mark.slow
@pytest.mark.broker
def test_agent_restarted_on_a_damaged_file_delivers_or_announces_every_seq(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path,
) -> None:
    """A real agent, Mosquitto and sink: broker down, 2,000+ pending, agent stopped, a
    middle page overwritten, agent started, broker up: every seq delivered or announced."""
    broker = mosquitto_factory(session_store_conf(tmp_path / "mosq-store"))
    inputs, conf = devices_and_config(tmp_path, broker.port)
    db = tmp_path / "buffer.db"
    log = tmp_path / "agent.log"
    sink = Sink(broker.host, broker.port, client_id=f"salvage-sink-{broker.port}")
    sink.start()

    def buf() -> dict[str, Any]:
        sec = (read_state(tmp_path / "state.json") or {}).get("buffer")
        return sec if isinstance(sec, dict) else {}

    try:
        assert sink.wait_connected(15)
        with reaped(start_agent(conf, log, {})) as proc:
            assert wait_for(lambda: inputs.pumped(
                lambda: sink.summary()["trucks"].get("T1", {}).get("unique", 0) > 50), 30), (
                log.read_text())
            broker.stop()
            assert wait_for(lambda: inputs.pumped(
                lambda: int(buf().get("pending") or 0) >= PENDING), 60), (buf(), log.read_text())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()
        pending = _rows(db)
        assert len(pending) >= PENDING
        leaves = _leaves(db)
        _smash(db, leaves[len(leaves) // 2][1])
        with reaped(start_agent(conf, log, {})) as proc:
            assert wait_for(lambda: inputs.pumped(
                lambda: int(buf().get("lost_quarantine") or 0) > 0), 30), log.read_text()
            inputs.pump(1.0)  # it records on the new file
            broker.start()

            def drained() -> bool:
                b = buf()
                seen = sink.summary()["trucks"].get("T1", {})
                return (b.get("pending") == 0 and bool(b.get("last_seq"))
                        and seen.get("last_seq") == b["last_seq"])

            assert wait_for(lambda: inputs.pumped(drained), 90), (buf(), log.read_text())
            final = buf()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()
        last = int(final["last_seq"])
        missing, announced = sink.missing_in("T1", 1, last)
        assert int(final.get("evicted") or 0) == 0
        assert missing == announced, (missing, announced)  # every gap is announced
        gaps = sink.stats.truck("T1").seqs.gaps()
        lost = [s for s in pending if any(a <= s <= b for a, b in gaps)]
        assert 0 < len(lost) <= int(final["lost_quarantine"]), lost
        assert final["quarantined_files"] == 1
    finally:
        sink.stop()
        inputs.close()


def test_scan_skips_a_row_whose_body_does_not_vouch_for_it(tmp_path: Path) -> None:
    """A damaged row SQLite still parses is not kept: its seq becomes a lost range."""
    conn = sqlite3.connect(tmp_path / "t.db")
    try:
        conn.executescript(create_script())
        rows = [(s, 1000 + s, "gps", encode_body(Event("gps", 1000 + s, {"i": s})))
                for s in range(1, 6)]
        rows[2] = (3, 1003, "gps", b'{"ts":1,"type":"gps"}')  # its own ts says otherwise
        conn.executemany(insert_sql(Priority.POSITION), rows)
        got = list(scan_table(conn, TABLES[Priority.POSITION]))
    finally:
        conn.close()
    assert [g[0] for g in got if len(g) == 4] == [1, 2, 4, 5]
    assert [g for g in got if len(g) == 2] == [(3, 3)]
