"""The agent as systemd runs it: a ``truckgw run`` subprocess fed through real ptys."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from buffer import schema
from gateway.health import read_state
from sim.broker import Mosquitto
from sim.sink import Sink
from tests.service.agent_env import (
    Inputs,
    NotifyListener,
    devices_and_config,
    free_port,
    reaped,
    start_agent,
    state_section,
    truck_toml,
    wait_for,
)

HWM_RE = re.compile(
    r"stopped with exit code (\d+); committed seq high-water mark (\d+); shutdown ([\d.]+) s")


def _db_seqs(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        rows: list[int] = []
        for table in schema.TABLES.values():
            rows += [r[0] for r in con.execute(f"SELECT seq FROM {table}")]  # noqa: S608
        return sorted(rows)
    finally:
        con.close()


@pytest.mark.slow
def test_ready_watchdog_and_sigterm_during_heavy_ingest(tmp_path: Path) -> None:
    """READY=1, periodic WATCHDOG=1; SIGTERM mid-ingest: exit 0, every commit on disk."""
    notify = NotifyListener()
    inputs = Inputs(tmp_path)
    assert inputs.can is not None and inputs.gps is not None
    conf = tmp_path / "truck.toml"
    conf.write_text(truck_toml(tmp_path, mqtt_port=free_port(), gps_port=inputs.gps.link,
                               can_channel=inputs.can.channel))
    log = tmp_path / "agent.log"
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}
    try:
        with reaped(start_agent(conf, log, env)) as proc:
            ready = lambda: "READY=1" in notify.lines() or proc.poll() is not None  # noqa: E731
            assert wait_for(lambda: inputs.pumped(ready), 30), log.read_text()
            assert proc.poll() is None, log.read_text()
            inputs.pump(3.0, notify=notify)  # ~2,000 CAN frames/s + 10 Hz GPS
            pings = notify.lines().count("WATCHDOG=1")
            assert pings >= 2, notify.lines()
            proc.send_signal(signal.SIGTERM)
            for _ in range(200):  # keep the inputs busy while it shuts down
                if proc.poll() is not None:
                    break
                inputs.pump(0.05, notify=notify)
            assert proc.wait(15) == 0, log.read_text()
    finally:
        inputs.close()
        notify.close()
    text = log.read_text()
    m = HWM_RE.search(text)
    assert m, text
    hwm = int(m.group(2))
    assert hwm > 1000, text  # it really was ingesting
    assert float(m.group(3)) < 5.0  # the bound (measured ~0.1 s; wide margin)
    assert "STOPPING=1" in notify.lines()
    # the broker was down: every committed event must still be in the file, no gaps
    seqs = _db_seqs(tmp_path / "buffer.db")
    assert seqs == list(range(1, hwm + 1))
    state = read_state(tmp_path / "state.json")
    assert state is not None
    assert state["phase"] == "stopped"
    assert state["buffer"]["committed_seq"] == hwm
    assert state["can"]["frames_total"] > 0


@pytest.mark.slow
@pytest.mark.broker
def test_gps_vanishing_and_can_errors_do_not_stop_the_uplink(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Unplug the GPS, then the CAN adapter: delivery goes on; SIGTERM publishes offline."""
    inputs, conf = devices_and_config(tmp_path, mosquitto.port)
    assert inputs.can is not None and inputs.gps is not None
    log = tmp_path / "agent.log"
    sink = Sink(mosquitto.host, mosquitto.port, sqlite=tmp_path / "sink.db")
    sink.start()

    def arrived(kind: str, since_ms: int) -> int:
        con = sqlite3.connect(tmp_path / "sink.db")
        try:
            return int(con.execute("SELECT count(*) FROM events WHERE type = ? AND"
                                   " arrival_ms > ?", (kind, since_ms)).fetchone()[0])
        finally:
            con.close()

    def section(name: str) -> dict[str, Any]:
        return state_section(tmp_path, name)

    try:
        assert sink.wait_connected(15)
        with reaped(start_agent(conf, log, {})) as proc:
            both = lambda: arrived("gps", 0) and arrived("engine", 0)  # noqa: E731
            assert wait_for(lambda: inputs.pumped(both), 30), log.read_text()
            # 1. the GPS vanishes: CAN events keep arriving at the broker
            inputs.gps.vanish()
            t_gps_gone = int(time.time() * 1000)
            assert wait_for(lambda: inputs.pumped(lambda: arrived("engine", t_gps_gone)), 20), (
                log.read_text())
            assert wait_for(lambda: inputs.pumped(
                lambda: section("gps").get("state") in ("unavailable", "opening")), 20)
            # 2. the CAN adapter fails too, and the GPS comes back: GPS points arrive
            inputs.can.vanish()
            inputs.gps.open()
            t_can_gone = int(time.time() * 1000)
            assert wait_for(lambda: inputs.pumped(lambda: arrived("gps", t_can_gone)), 30), (
                log.read_text())
            assert wait_for(lambda: inputs.pumped(
                lambda: section("can").get("state") in ("backoff", "connecting")), 20)
            # 3. the adapter is plugged back in: engine events resume
            inputs.can.reappear()
            t_can_back = int(time.time() * 1000)
            assert wait_for(lambda: inputs.pumped(lambda: arrived("engine", t_can_back)), 40), (
                log.read_text())
            assert proc.poll() is None
            assert section("uplink").get("state") == "connected"
            # the retained status topic carries the health summary too

            def online() -> dict[str, Any]:
                status = sink.live("T1").get("status")
                return status if isinstance(status, dict) else {}

            assert wait_for(lambda: online().get("state") == "online" and
                            (online().get("can") or {}).get("state") == "active", 15), online()
            assert online()["buffer"]["committed_seq"] > 0
            assert online()["gps"]["fix"] is True
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, log.read_text()
        assert wait_for(lambda: sink.live("T1").get("status", {}).get("state") == "offline", 10)
    finally:
        sink.stop()
        inputs.close()
    assert "Traceback" not in log.read_text()


def test_steady_state_writes_no_info_line_every_interval(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Recording and delivering for eight metrics intervals (and four status intervals):
    no INFO message comes back interval after interval (the seq high-water mark is at
    DEBUG and in the state file), so a truck in steady state does not fill its journal."""
    inputs, conf = devices_and_config(tmp_path, mosquitto.port)
    assert inputs.can is not None and inputs.gps is not None
    log = tmp_path / "agent.log"

    def section(name: str) -> dict[str, Any]:
        return state_section(tmp_path, name)

    try:
        with reaped(start_agent(conf, log, {})) as proc:
            assert wait_for(lambda: inputs.pumped(lambda: section("uplink").get("state")
                                                  == "connected"
                                                  and section("buffer").get("committed_seq")),
                            30), log.read_text()
            inputs.pump(3.0)  # past the start-up lines (connected, fix, clock)
            start = len(log.read_bytes())
            seq0 = int(section("buffer")["committed_seq"])
            for _ in range(8):  # bounded: eight 1 s metrics intervals
                inputs.pump(1.0)
            assert int(section("buffer")["committed_seq"]) > seq0 + 100  # it was recording
            window = log.read_bytes()[start:].decode()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, log.read_text()
    finally:
        inputs.close()
    info = [re.sub(r"\d+(\.\d+)?", "N", ln.split(" INFO ", 1)[1])
            for ln in window.splitlines() if " INFO " in ln]
    repeated = {m: info.count(m) for m in set(info) if info.count(m) > 2}
    assert repeated == {}, window


def test_unopenable_buffer_exits_non_zero_without_ready(tmp_path: Path) -> None:
    notify = NotifyListener()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    conf = tmp_path / "truck.toml"
    conf.write_text(truck_toml(tmp_path, mqtt_port=free_port(),
                               buffer_path=blocker / "buffer.db", can_channel="vc0",
                               can_interface="virtual"))
    log = tmp_path / "agent.log"
    try:
        with reaped(start_agent(conf, log, {"NOTIFY_SOCKET": notify.address})) as proc:
            code = proc.wait(30)
    finally:
        lines = notify.lines()
        notify.close()
    assert code == 1, log.read_text()
    assert "READY=1" not in lines
    assert "cannot open the buffer" in log.read_text()
    state = read_state(tmp_path / "state.json")
    assert state is not None and state["phase"] == "failed"
    assert "cannot open the buffer" in str(state["unhealthy_reason"])


def test_bad_config_exits_78(tmp_path: Path) -> None:
    conf = tmp_path / "truck.toml"
    conf.write_text('truck_id = "T1"\n[mqtt]\nhost = "x"\nport = 0\n')
    log = tmp_path / "agent.log"
    with reaped(start_agent(conf, log, {})) as proc:
        assert proc.wait(30) == 78
    assert "mqtt.port" in log.read_text()


def test_status_command_reads_the_state_file(tmp_path: Path) -> None:
    """``truckgw status`` of an agent that ran and stopped (JSON form)."""
    conf = tmp_path / "truck.toml"
    conf.write_text(truck_toml(tmp_path, mqtt_port=free_port(), can_channel="vc1",
                               can_interface="virtual"))
    log = tmp_path / "agent.log"
    with reaped(start_agent(conf, log, {})) as proc:
        running = lambda: (read_state(tmp_path / "state.json") or {}).get("can")  # noqa: E731
        assert wait_for(running, 30), log.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, log.read_text()
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "-c", str(conf),
                          "--json"], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    report = json.loads(res.stdout)
    assert report["status"] == "stopped"
    assert report["state"]["can"]["state"] == "stopped"
    assert (tmp_path / "truckgw.prom").read_text().count('truckgw_up{truck="T1"} 0') == 1
