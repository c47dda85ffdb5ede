"""The buffer's stream id: new only when seq restarts, kept by everything that keeps seq.

Real buffer files; the seq mark sidecar is read back from disk. See docs/wire-format.md
("Stream"): ``(truck_id, stream, seq)`` is the identity of an event.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

from buffer import schema
from buffer.recovery import mark_path
from buffer.store import SqliteStore
from config import BufferConfig
from tests.buffer.conftest import make_event

HEX16 = re.compile(r"^[0-9a-f]{16}$")


async def _run(cfg: BufferConfig, n: int = 5) -> tuple[str, int, int]:
    """Open, append ``n`` events, close: (stream, first seq, last seq) of this run."""
    async with await SqliteStore.open(cfg) as s:
        seqs = [await s.append(make_event()) for _ in range(n)]
        return s.stream, seqs[0], seqs[-1]


def _purge(path: Path) -> None:
    """What ``uninstall.sh`` with ``PURGE=1`` or a new SD card does: file and mark gone."""
    for p in path.parent.iterdir():
        if p.name.startswith(path.name):
            p.unlink()


async def test_a_new_buffer_draws_a_stream_that_the_file_and_the_mark_keep(
    cfg: BufferConfig,
) -> None:
    stream, first, _ = await _run(cfg)
    assert HEX16.match(stream) and first == 1
    assert json.loads(mark_path(cfg.path).read_text())["stream"] == int(stream, 16)
    with contextlib.closing(sqlite3.connect(cfg.path)) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = ?",
                              (schema.META_STREAM,)).fetchone()
    assert value == int(stream, 16)
    again, first2, _ = await _run(cfg)
    assert again == stream and first2 > 5


async def test_purged_buffer_gets_a_new_stream_as_seq_restarts(cfg: BufferConfig) -> None:
    stream, _, _ = await _run(cfg)
    _purge(cfg.path)
    new, first, _ = await _run(cfg)
    assert first == 1  # seq restarts: only the stream tells these events apart
    assert HEX16.match(new) and new != stream


async def test_one_survivor_is_enough_to_keep_the_stream(cfg: BufferConfig) -> None:
    stream, _, last = await _run(cfg)
    cfg.path.unlink()  # the file deleted by hand: the mark continues seq and stream
    for side in ("-wal", "-shm"):
        cfg.path.with_name(cfg.path.name + side).unlink(missing_ok=True)
    kept, first, last2 = await _run(cfg)
    assert kept == stream and first > last
    mark_path(cfg.path).unlink()  # the mark lost: the file's meta has it
    kept2, first3, _ = await _run(cfg)
    assert kept2 == stream and first3 > last2


async def test_a_corrupt_file_is_quarantined_and_its_stream_salvaged(
    cfg: BufferConfig,
) -> None:
    stream, _, last = await _run(cfg, 50)
    with cfg.path.open("r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 25)
    kept, first, _ = await _run(cfg)
    assert kept == stream and first > last


async def test_a_buffer_of_an_older_agent_keeps_the_default_stream(
    cfg: BufferConfig,
) -> None:
    await _run(cfg)
    # as an agent without stream ids left it: no meta key, a mark without "stream"
    with contextlib.closing(sqlite3.connect(cfg.path, isolation_level=None)) as db:
        db.execute("DELETE FROM meta WHERE key = ?", (schema.META_STREAM,))
    mark = json.loads(mark_path(cfg.path).read_text())
    del mark["stream"]
    mark_path(cfg.path).write_text(json.dumps(mark))
    # its consumers know its seqs as the default stream "", and seq goes on: keep it
    stream, first, _ = await _run(cfg)
    assert stream == "" and first > 5
