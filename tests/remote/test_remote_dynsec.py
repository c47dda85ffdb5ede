"""The dynamic-security recipe of docs/remote.md, run as it is against a real Mosquitto
with the plugin, then a real agent and the fleet CLI through it."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sim.broker import Mosquitto
from tests.remote.harness import (
    PASSWORD,
    ROOT,
    Observer,
    agent_config,
    fleet,
    reply,
    reported,
    start_agent,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TRUCK = "RMT-DYN"


def dynsec_block() -> str:
    text = (ROOT / "docs" / "remote.md").read_text()
    at = text.index("With the **dynamic security plugin**")
    start = text.index("```sh\n", at) + len("```sh\n")
    return text[start:text.index("```", start)]


def test_the_documented_dynsec_roles_gate_commands(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    plugins = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob(
        "/usr/lib/mosquitto_dynamic_security.so")
    if not plugins:
        pytest.fail("mosquitto_dynamic_security.so not found (apt-get install mosquitto)",
                    pytrace=False)
    conf = tmp_path / "dynsec.json"
    init = subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(conf), "admin", "adminpw"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert conf.exists(), init.stdout + init.stderr
    root = ["user root"] if os.geteuid() == 0 else []
    broker = mosquitto_factory([*root, f"plugin {plugins[0]}",
                                f"plugin_opt_config_file {conf}"], allow_anonymous=False)
    script = dynsec_block() + (
        f'add_operator ops "{PASSWORD}ops"\n'
        f'add_truck {TRUCK} "{PASSWORD}{TRUCK}"\n'
        f'ctrl createClient intruder -p "{PASSWORD}intruder"\n'
        f'ctrl createClient RMT-NOROLE -p "{PASSWORD}RMT-NOROLE"\n')
    env = {**os.environ, "CTRL": f"-h {broker.host} -p {broker.port} -u admin -P adminpw"}
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                         text=True, timeout=120, env=env, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Error" not in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    gw = start_agent(tmp_path, TRUCK, agent_config(tmp_path, TRUCK, broker))
    obs = Observer(broker, tmp_path)
    intruder = Observer(broker, tmp_path, topic=f"fleet/{TRUCK}/cmd/res/#", user="intruder")
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "ping")
        assert proc.returncode == 0, (proc.stdout, proc.stderr, gw.log_tail())
        assert reply(proc)["truck_id"] == TRUCK
        mid = intruder.publish(f"fleet/{TRUCK}/cmd", json.dumps(
            {"request_id": "evil", "name": "restart"}).encode(),
            response_topic=f"fleet/{TRUCK}/cmd/res/x")
        wait_for("the broker's PUBACK", lambda: mid in intruder.pubacks, 10)
        assert intruder.pubacks[mid] == 0x87
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "ping", "--timeout", "3", user="intruder")
        assert proc.returncode == 4
        assert gw.running
        # a truck the broker gives no role: its subscriptions are refused, and it says so
        norole = start_agent(tmp_path, "RMT-NOROLE", agent_config(tmp_path, "RMT-NOROLE",
                                                                  broker))
        try:
            wait_for("the refused subscriptions logged", lambda: "the broker refused a "
                     "subscription of this truck: Not authorized" in norole.log_path.read_text(),
                     30, norole)
        finally:
            norole.stop()
    finally:
        intruder.close()
        obs.close()
        gw.stop()
