"""kill -9 at random moments, at least 30 times, on the same file.

After every kill the store must open without quarantine (quick_check passes) and every
seq the child reported as durable must still be stored unless the child reported it
acked; seqs keep increasing across all the runs.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest

from buffer.schema import TABLES
from buffer.store import SqliteStore
from config import BufferConfig
from tests.buffer.kill_writer import MAX_BYTES

KILLS = 30
ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(path: Path, durability: str, seed: int, rnd: random.Random) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.buffer.kill_writer", str(path), durability, str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"READY\n", (first, proc.stderr.read() if proc.stderr else b"")
        time.sleep(rnd.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    lines = out.decode().split("\n")
    return lines[:-1]  # the last piece may be a torn line


def _stored(path: Path) -> set[int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {s for t in TABLES.values() for (s,) in con.execute(f"SELECT seq FROM {t}")}  # noqa: S608 -- constant table names
    finally:
        con.close()


@pytest.mark.slow
async def test_kill_minus_9_loses_no_durable_append(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    rnd = random.Random(1234)
    durable: set[int] = set()
    acked: set[int] = set()
    high = 0
    for k in range(KILLS):
        durability: Literal["normal", "full"] = "full" if k % 2 else "normal"
        lines = _run_and_kill(path, durability, k, rnd)
        seqs = [int(x[2:]) for x in lines if x.startswith("S ")]
        if seqs:
            assert min(seqs) > high, "a seq was reused after a restart"
            assert seqs == sorted(seqs)
            high = max(seqs)
        durable |= set(seqs)
        acked |= {int(x[2:]) for x in lines if x.startswith("A ")}
        # a batch being acked at the moment of the kill may or may not be deleted
        leased = [x for x in lines if x.startswith("L ")]
        if leased:
            acked |= {int(v) for v in leased[-1].split()[1:]}
        cfg = BufferConfig(path=path, durability=durability, max_bytes=MAX_BYTES)
        async with await SqliteStore.open(cfg) as store:  # runs quick_check
            st = await store.stats()
            assert st.quarantined_files == 0, f"kill {k}: the file was found corrupt"
            assert sum(st.evicted_by_class.values()) == 0
        missing = durable - acked - _stored(path)
        assert not missing, f"kill {k}: {len(missing)} durable seqs lost: {sorted(missing)[:5]}"
    assert len(durable) > 1000, "the children appended too little to mean anything"
