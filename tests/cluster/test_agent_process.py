"""A real ``truckgw run`` agent process with ``[mqtt] failover`` in its TOML file, on the
3-node cluster: its node is SIGKILLed, it moves to the next node, and the move is in the
status the sink stores."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sim.gateway_proc import GatewayProcess, truck_config
from sim.nats import JetStreamSinkProcess, NatsCluster
from tests.sink.helpers import query

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _brokers(url: str, truck: str) -> list[dict[str, Any]]:
    rows = query(url, "SELECT body FROM status_history WHERE truck_id = "  # noqa: S608
                      f"'{truck}' AND state = 'online' ORDER BY ts")
    return [json.loads(b)["broker"] for (b,) in rows]


def _wait(cond: Callable[[], bool], limit_s: float) -> bool:
    for _ in range(int(limit_s / 0.1)):
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_agent_process_moves_to_the_next_node(nats_cluster: NatsCluster,
                                              tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    sink = JetStreamSinkProcess(nats_cluster.urls[1:], url, tmp_path / "sink.out")
    (h1, p1), *rest = nats_cluster.mqtt_addresses
    failover = ", ".join(f'"{h}:{p}"' for h, p in rest)
    text = truck_config(truck_id="agent-01", workdir=tmp_path / "agent", mqtt_host=h1,
                        mqtt_port=p1, gps_port=None, can_channel=None, protocol="3.1.1")
    text = text.replace(f"port = {p1}\n", f"port = {p1}\nfailover = [{failover}]\n", 1)
    agent = GatewayProcess(tmp_path / "agent", text)
    sink.start()
    agent.start()
    try:
        assert _wait(lambda: bool(_brokers(url, "agent-01")), 30), (
            agent.log_path.read_text()[-3000:])
        first = _brokers(url, "agent-01")[0]  # normally n1 with 0 switches (the TOML's host)
        on = next(n for n in nats_cluster.nodes
                  if first["address"] == f"{n.host}:{n.ports.mqtt}")
        on.kill()
        assert _wait(lambda: any(b["address"] != first["address"]
                                 and b["switches"] > first["switches"]
                                 for b in _brokers(url, "agent-01")), 60), (
            agent.log_path.read_text()[-3000:])
        assert agent.running
    finally:
        agent.stop()
        sink.stop()
