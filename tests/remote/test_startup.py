"""The start check on real files (gateway/remote/startup.py): what ``truckgw run`` does
before it reads a file a push left behind."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from gateway.remote import files, rollback, startup
from gateway.remote.rollback import Phase
from sim.broker import Mosquitto

GOOD = """truck_id = "T1"
[buffer]
path = "{d}/buffer.db"
[mqtt]
host = "127.0.0.1"
port = {port}
[remote]
enabled = true
max_starts = 2
"""


def pushed(tmp: Path, new: str, *, applying: bool = False) -> Path:
    """A config file replaced by a push (the old one kept as .prev), its state pending."""
    cfg = tmp / "truck.toml"
    old = GOOD.format(d=tmp, port=1883)
    cfg.write_text(old)
    s = rollback.begin(rollback.State(), 1, new_sha256=hashlib.sha256(new.encode()).hexdigest(),
                       grace_s=600, live=(), restart=("mqtt.port",), at_ms=1)
    if applying:
        files.write_state(cfg, s)
        return cfg
    files.install_config(cfg, new.encode())
    files.write_state(cfg, rollback.written(s))
    return cfg


def test_a_new_file_that_does_not_load_is_rolled_back(tmp_path: Path) -> None:
    cfg = pushed(tmp_path, "truck_id = 'T1'\n[mqtt]\nport = 0\n")
    state = startup.before_run(cfg)
    assert state is not None
    assert state.phase is Phase.ROLLED_BACK
    assert state.outcome is not None
    assert "does not load" in state.outcome.errors[0]
    assert "mqtt.host: required key is missing" in state.outcome.errors[0]
    assert cfg.read_text() == GOOD.format(d=tmp_path, port=1883)
    assert files.read_state(cfg) == state


def test_a_crash_loop_on_the_new_file_is_rolled_back(tmp_path: Path) -> None:
    new = GOOD.format(d=tmp_path, port=1884)
    cfg = pushed(tmp_path, new)
    for n in (1, 2):  # max_starts = 2 starts are allowed
        state = startup.before_run(cfg)
        assert state is not None
        assert (state.phase, state.starts) == (Phase.PENDING_CONFIRM, n)
        assert cfg.read_text() == new
    state = startup.before_run(cfg)
    assert state is not None
    assert state.phase is Phase.ROLLED_BACK
    assert cfg.read_text() == GOOD.format(d=tmp_path, port=1883)


def test_killed_before_the_rename_the_push_was_never_in_force(tmp_path: Path) -> None:
    cfg = pushed(tmp_path, GOOD.format(d=tmp_path, port=1884), applying=True)
    state = startup.before_run(cfg)
    assert state is not None
    assert (state.phase, state.running_version, state.handled_version) == (Phase.IDLE, 0, 0)


def test_truckgw_run_starts_on_the_previous_file_when_the_pushed_one_does_not_load(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The real command: without the rollback it would exit 78 on the pushed file."""
    cfg = tmp_path / "truck.toml"
    good = GOOD.format(d=tmp_path, port=mosquitto.port)
    cfg.write_text(good)
    bad = "truck_id = 'T1'\n[mqtt]\nport = 0\n"
    s = rollback.begin(rollback.State(), 1, new_sha256=hashlib.sha256(bad.encode()).hexdigest(),
                       grace_s=600, live=(), restart=("mqtt.port",), at_ms=1)
    files.install_config(cfg, bad.encode())
    files.write_state(cfg, rollback.written(s))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        for _ in range(150):
            if "uplink: connected" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        assert "uplink: connected" in log.read_text(), log.read_text()
        assert cfg.read_text() == good
        state = files.read_state(cfg)
        assert state.phase is Phase.ROLLED_BACK
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_without_a_previous_file_the_start_goes_on_and_reports_it(tmp_path: Path) -> None:
    new = GOOD.format(d=tmp_path, port=1884)
    cfg = pushed(tmp_path, new)
    files.prev_path(cfg).unlink()
    for _ in range(3):
        startup.before_run(cfg)
    state = startup.before_run(cfg)  # past max_starts: a rollback, but nothing to restore
    assert state is not None
    assert state.phase is Phase.IDLE
    assert state.outcome is not None
    assert state.outcome.status == "rollback_failed"
    assert "cannot restore truck.toml.prev" in state.outcome.errors[1]
    assert cfg.read_text() == new
    assert startup.before_run(cfg) == state  # and no loop: the next start just runs
