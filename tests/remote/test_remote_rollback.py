"""Rollback with real processes: a push whose broker cannot be reached comes back on its
own after a (test-short) grace period and is reported; a kill -9 in the middle of an
apply leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.loader import check_config
from gateway.remote import files
from gateway.remote.rollback import Phase
from sim.broker import Mosquitto
from tests.remote.harness import (
    Observer,
    agent_config,
    assert_wire_valid,
    broker_conf,
    fleet,
    reported,
    start_agent,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TRUCK = "RMT-RB"


def test_unreachable_broker_rolls_back_after_the_grace_and_reports(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    old_text = agent_config(tmp_path, TRUCK, broker)
    # another broker host, on loopback, where nothing listens
    new_text = agent_config(tmp_path, TRUCK, broker, remote="grace_s = 3.0\n").replace(
        f'host = "{broker.host}"', 'host = "127.0.0.3"')
    gw = start_agent(tmp_path, TRUCK, old_text)
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        assert gw.proc is not None
        pid = gw.proc.pid
        (tmp_path / "new.toml").write_text(new_text)
        proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "new.toml"),
                     "--timeout", "60")
        assert proc.returncode == 1, (proc.stdout, proc.stderr, gw.log_tail(60))
        verdict = json.loads(proc.stdout)
        assert verdict["status"] == "rolled_back"
        assert verdict["version"] == 1
        assert verdict["running_version"] == 0
        assert "grace period of 3 s" in verdict["errors"][0]
        assert verdict["restart_keys"] == ["mqtt.host", "remote.grace_s"]
        # the truck said "pending" before it restarted onto the new file
        assert reported(obs, TRUCK, version=1, status="pending")()
        assert gw.config_path.read_text() == old_text
        assert gw.running
        assert gw.proc.pid == pid  # re-exec'ed twice, one process throughout
        state = files.read_state(gw.config_path)
        assert state.phase is Phase.ROLLED_BACK
        assert state.handled_version == 1
        # connected again on the old file: the retained version 1 is not tried again
        time.sleep(2.0)
        assert gw.config_path.read_text() == old_text
        assert files.read_state(gw.config_path).phase is Phase.ROLLED_BACK
        log = gw.log_path.read_text()
        assert log.count("config version 1 written") == 1, gw.log_tail(60)
        assert assert_wire_valid(obs) >= 4
    finally:
        obs.close()
        gw.stop()


def test_kill_9_between_write_and_rename_leaves_the_old_file_then_applies(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    old_text = agent_config(tmp_path, TRUCK, broker)
    new_text = agent_config(tmp_path, TRUCK, broker, keepalive=12)  # needs a restart
    gw = start_agent(tmp_path, TRUCK, old_text, env={files.HOLD_ENV: "60"})
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        (tmp_path / "new.toml").write_text(new_text)
        proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "new.toml"),
                     "--no-wait")
        assert proc.returncode == 0, proc.stderr
        tmp = gw.config_path.with_name("truck.toml.tmp")
        wait_for("the new file written, its rename held", tmp.exists, 20, gw)
        wait_for("the new text fsynced", lambda: tmp.read_text() == new_text, 10, gw)
        gw.kill()
        assert gw.config_path.read_text() == old_text
        check_config(gw.config_path)
        assert files.read_state(gw.config_path).phase is Phase.APPLYING
        # the next start finds the old file in force and the push not done: the
        # retained document comes again and is applied, with a restart, and confirmed
        gw.start()
        wait_for("version 1 applied", reported(obs, TRUCK, version=1, status="applied"),
                 60, gw)
        assert gw.config_path.read_text() == new_text
        assert files.read_state(gw.config_path).phase is Phase.CONFIRMED
    finally:
        obs.close()
        gw.stop()


def test_kill_9_at_random_moments_never_tears_the_file(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    texts = [agent_config(tmp_path, TRUCK, broker, keepalive=10 + i) for i in range(4)]
    gw = start_agent(tmp_path, TRUCK, texts[0])
    obs = Observer(broker, tmp_path)
    rnd = random.Random(15)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        for version in range(1, 4):
            (tmp_path / "new.toml").write_text(texts[version])
            before = gw.config_path.read_text()
            proc = fleet(broker, tmp_path, "config", "push", TRUCK,
                         str(tmp_path / "new.toml"), "--no-wait", "--version", str(version))
            assert proc.returncode == 0, proc.stderr
            time.sleep(rnd.uniform(0.0, 0.4))
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait(timeout=5)
            now = gw.config_path.read_text()
            assert now in (before, texts[version]), "torn config file"
            check_config(gw.config_path)
            gw.start()
            wait_for(f"version {version} applied",
                     reported(obs, TRUCK, version=version, status="applied"), 60, gw)
            assert gw.config_path.read_text() == texts[version]
    finally:
        obs.close()
        gw.stop()


def test_a_config_the_agent_cannot_start_on_is_rolled_back_after_max_starts(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    """The pushed file passes check-config but the agent dies at start (its buffer cannot
    be opened); restarted as Restart=on-failure would, it comes back on the old file at
    start max_starts + 1 and reports why."""
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    old_text = agent_config(tmp_path, TRUCK, broker)
    buffer_line = next(ln for ln in old_text.splitlines() if ln.startswith("path = "))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the buffer's folder should be")
    new_text = old_text.replace(buffer_line, f'path = "{blocker / "buffer.db"}"').replace(
        "enabled = true", "enabled = true\nmax_starts = 2")
    check_config_of = tmp_path / "check.toml"
    check_config_of.write_text(new_text)
    check_config(check_config_of)  # valid as a file: only starting on it fails
    gw = start_agent(tmp_path, TRUCK, old_text)
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        (tmp_path / "new.toml").write_text(new_text)
        proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "new.toml"),
                     "--no-wait")
        assert proc.returncode == 0, proc.stderr
        exits = []
        verdict = reported(obs, TRUCK, version=1, status="rolled_back")
        for _ in range(6):  # the service manager's Restart=on-failure, bounded
            for _ in range(100):
                if verdict() or not gw.running:
                    break
                time.sleep(0.2)
            if verdict():
                break
            exits.append(gw.returncode)
            gw.start()
        got = verdict()
        assert got, (exits, gw.log_tail(60))
        assert exits == [1, 1], exits  # two failed starts, the third rolled back
        assert "2 starts on the new config without reaching a broker" in got["errors"][0]
        assert gw.config_path.read_text() == old_text
        assert gw.running
    finally:
        obs.close()
        gw.stop()
