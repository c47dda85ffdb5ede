"""``truckgw demo --push-config-at S``: the demo pushes a config that the gateway applies
live, and says so in its view."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.demo import view_lines

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def test_view_shows_the_push_line() -> None:
    lines = view_lines({}, {}, broker_up=True, elapsed=1.0, outage_left=None, phase="x",
                       remote="config push: version 1 applied")
    assert lines[-1] == "  remote    config push: version 1 applied"
    assert not any("remote" in ln for ln in view_lines(
        {}, {}, broker_up=True, elapsed=1.0, outage_left=None, phase="x"))


def test_demo_pushes_a_config_that_is_applied_live(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--plain", "--duration", "22",
         "--speed", "6", "--push-config-at", "8", "--keep", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "remote    config push at t=8 s" in text
    line = next((ln for ln in text.splitlines() if "config push: version 1 applied" in ln), None)
    assert line is not None, text[-3000:]
    assert "can.sampling.min_interval_s, can.sampling.max_interval_s live" in line
    pushed = (tmp_path / "demo" / "pushed.toml").read_text()
    assert (tmp_path / "demo" / "gateway" / "truck.toml").read_text() == pushed
