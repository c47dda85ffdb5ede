"""A live config push against a real Mosquitto (ACL of docs/remote.md) and a real
``truckgw run`` fed by the simulator: applied without a restart, visible in the event
rate, reported, and on disk; an invalid push rejected with check-config's lines."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.loader import check_config
from gateway.wire import decode_payload
from sim.broker import Mosquitto
from sim.faults import FaultPlan
from sim.gateway_proc import EVERY_FRAME
from sim.ports import PtyPort
from sim.route import load_route
from sim.runner import TruckSim
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import Truck, TruckParams
from tests.remote.harness import (
    Observer,
    agent_config,
    assert_wire_valid,
    broker_conf,
    reported,
    secret,
    start_agent,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TRUCK = "RMT-LIVE"
SLOW = "[can.sampling]\nmin_interval_s = 20.0\nmax_interval_s = 60.0\n"


async def fleet(broker: Mosquitto, tmp: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "fleet", "--host", broker.host,
        "--port", str(broker.port), "--username", "ops",
        "--password-file", str(secret(tmp, "ops")), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def until(what: str, cond: Callable[[], Any], limit_s: float, log: str = "") -> Any:
    for _ in range(int(limit_s / 0.2) + 1):
        got = cond()
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{log}")


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def event_seqs(obs: Observer) -> list[int]:
    """The seqs of every event the observer received, in arrival order (any encoding)."""
    out: list[int] = []
    for topic, payload, _retain in list(obs.messages):
        if f"/{TRUCK}/events" in topic and payload:
            batch = decode_payload(payload, compact=payload[:4] == ZSTD_MAGIC)
            out += [int(ev["seq"]) for ev in batch["events"]]
    return out


async def test_live_push_changes_the_event_rate_without_a_restart(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    gps, can = PtyPort(tmp_path / "gps0"), SlcanPtyAdapter(tmp_path / "can0")
    devices = (f'[gps]\nport = "{gps.link}"\n\n[can]\ninterface = "slcan"\n'
               f'channel = "{can.channel}"\n')
    old_text = agent_config(tmp_path, TRUCK, broker, sections=devices + SLOW)
    new_text = agent_config(tmp_path, TRUCK, broker, sections=devices + EVERY_FRAME)
    gw = start_agent(tmp_path, TRUCK, old_text)
    obs = Observer(broker, tmp_path)
    truck = Truck(load_route("hamburg-port-loop"), seed=5,
                  params=TruckParams(start_parked_s=0, warmup_s=0, fault_every_s=0))
    sim = TruckSim(truck, gps=gps, can=can, speed=4.0, seed=5,
                   faults=FaultPlan.parse(["dtc@1+300"]))
    can.device.on_transmit = sim.on_frame_from_host
    stop = asyncio.Event()
    drive = asyncio.create_task(sim.run(120.0, stop), name="remote-sim")
    try:
        def engine_events() -> int | None:
            return (gw.state().get("can") or {}).get("engine_events")

        await until("engine events", lambda: (engine_events() or 0) > 0, 40, gw.log_tail())
        await until("the first report", reported(obs, TRUCK), 20, gw.log_tail())
        started = gw.state()["started_at"]

        async def rate(window_s: float) -> float:
            a = engine_events() or 0
            t = time.monotonic()
            await asyncio.sleep(window_s)
            return ((engine_events() or 0) - a) / (time.monotonic() - t)

        before = await rate(4.0)
        (tmp_path / "new.toml").write_text(new_text)
        rc, out, err = await fleet(broker, tmp_path, "config", "push", TRUCK,
                                   str(tmp_path / "new.toml"), "--timeout", "30")
        assert rc == 0, (out, err, gw.log_tail())
        verdict = json.loads(out)
        assert verdict["status"] == "applied"
        assert verdict["running_version"] == verdict["version"] == 1
        assert sorted(verdict["live_keys"]) == ["can.sampling.max_interval_s",
                                                "can.sampling.min_interval_s"]
        assert verdict["restart_keys"] == []
        pushed_at = max(event_seqs(obs), default=0)  # what the fleet had at the push
        await asyncio.sleep(1.5)  # the state file is rewritten once a second
        after = await rate(4.0)
        assert after > 5 * before + 5, (before, after)
        # no restart: the same run of the agent, and the file on disk is what was pushed
        assert gw.running
        assert gw.state()["started_at"] == started
        assert gw.config_path.read_text() == new_text
        assert (gw.config_path.parent / "truck.toml.prev").read_text() == old_text
        cfg, _ = check_config(gw.config_path)
        assert cfg.can is not None
        assert cfg.can.sampling.min_interval_s == 0.0
        rc, out, _err = await fleet(broker, tmp_path, "cmd", TRUCK, "position")
        assert rc == 0, out
        fix = json.loads(out)["body"]
        assert fix["fix"] in (2, 3)
        assert 53.0 < fix["lat"] < 54.0  # the Hamburg port loop
        assert 0 <= fix["age_s"] < 10
        rc, out, _err = await fleet(broker, tmp_path, "cmd", TRUCK, "dtc")
        assert rc == 0, out
        active = json.loads(out)["body"]["active"]
        assert any(src["active"] for src in active), active  # the injected fault, now
        rc, out, _err = await fleet(broker, tmp_path, "config", "get", TRUCK)
        assert rc == 0
        assert json.loads(out)["reported"]["running_version"] == 1
        assert assert_wire_valid(obs) >= 3
        # nothing dropped or sent twice across the push: once drained, the seqs the
        # fleet received run without a hole and each arrived once (no reconnect here)
        stop.set()
        await drive
        def drained() -> bool:
            buf = gw.state().get("buffer") or {}
            seqs = event_seqs(obs)
            return bool(buf.get("pending") == 0 and seqs and max(seqs) == buf.get("last_seq"))
        await until("the buffer drained to the observer", drained, 30, gw.log_tail())
        assert (gw.state().get("uplink") or {}).get("connects") == 1
        seqs = event_seqs(obs)
        assert len(seqs) == len(set(seqs))
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1))
        assert min(seqs) < pushed_at < max(seqs)
    finally:
        stop.set()
        await drive
        obs.close()
        gw.stop()
        gps.close()
        can.close()


async def test_invalid_push_is_rejected_whole_with_check_configs_lines(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    old_text = agent_config(tmp_path, TRUCK, broker, remote="", sections="")
    gw = start_agent(tmp_path, TRUCK, old_text)
    obs = Observer(broker, tmp_path)
    try:
        await until("the first report", reported(obs, TRUCK), 30, gw.log_tail())
        # a live key changed, and two errors: the whole document is refused
        bad = (old_text.replace("status_interval_s = 2.0", "status_interval_s = 0.0")
               .replace("keepalive_s = 10", "keepalive_s = 10\nkeep_alive = 3"))
        (tmp_path / "bad.toml").write_text(bad)
        rc, out, err = await fleet(broker, tmp_path, "config", "push", TRUCK,
                                   str(tmp_path / "bad.toml"), "--timeout", "30")
        assert rc == 1, (out, err)
        verdict = json.loads(out)
        assert verdict["status"] == "rejected"
        assert verdict["running_version"] == 0
        # the same words check-config prints for that text at that path
        probe = tmp_path / "probe"
        probe.mkdir()
        (probe / "truck.toml").write_text(bad)
        with pytest.raises(ConfigError) as info:
            check_config(probe / "truck.toml")
        want = [line.replace(str(probe / "truck.toml"), str(gw.config_path))
                for line in info.value.lines()]
        assert verdict["errors"] == want
        assert len(want) == 2
        assert gw.config_path.read_text() == old_text  # the running config stays
        assert not (gw.config_path.parent / "truck.toml.prev").exists()
        rc, out, _ = await fleet(broker, tmp_path, "cmd", TRUCK, "config_get")
        assert rc == 0
        body = json.loads(out)["body"]
        assert body["config"]["mqtt"]["status_interval_s"] == 2.0
        assert body["config"]["mqtt"]["password_file"] == "<redacted>"
        # a TOML syntax error is refused with check-config's words too
        (tmp_path / "syntax.toml").write_text("truck_id = \n")
        rc, out, _ = await fleet(broker, tmp_path, "config", "push", TRUCK,
                                 str(tmp_path / "syntax.toml"), "--timeout", "30")
        assert rc == 1
        assert "TOML syntax error" in json.loads(out)["errors"][0]
        assert gw.running
        assert assert_wire_valid(obs) >= 5
    finally:
        obs.close()
        gw.stop()
