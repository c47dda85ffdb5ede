"""Bounded memory: peak RSS with 1,000,000 pending events within 10 MB of 1,000."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 10 * 1000 * 1000


def _child(*args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "tests.buffer.rss_probe", *args],
        cwd=ROOT, capture_output=True, check=False, timeout=110,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    return res.stdout.decode()


def _measure(tmp: Path, n: int) -> dict[str, Any]:
    path = tmp / f"buf{n}.db"
    _child("build", str(path), str(n))
    out: dict[str, Any] = json.loads(_child("probe", str(path)))
    assert out["pending_at_open"] == n and out["pending"] == n - 800
    return out


@pytest.mark.slow
def test_rss_does_not_grow_with_the_backlog(tmp_path: Path) -> None:
    small = _measure(tmp_path, 1_000)
    big = _measure(tmp_path, 1_000_000)
    grow = big["hwm"] - small["hwm"]
    print(f"peak RSS {small['hwm'] / 1e6:.1f} MB (1k pending) vs "
          f"{big['hwm'] / 1e6:.1f} MB (1M pending): +{grow / 1e6:.1f} MB")
    assert grow < LIMIT
