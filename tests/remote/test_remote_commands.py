"""Commands with real processes: a real Mosquitto with the ACL of docs/remote.md, a real
``truckgw run`` and the real ``truckgw fleet`` CLI (its exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.can import REQUEST_SA
from drivers.j1939 import GLOBAL, PGN_REQUEST, make_id
from gateway.remote.wire import sign
from sim.broker import Mosquitto, free_port
from sim.j1939_out import Frame
from sim.slcan_adapter import SlcanPtyAdapter
from tests.remote.harness import (
    ACL,
    Observer,
    acl_in_docs,
    agent_config,
    assert_wire_valid,
    broker_conf,
    fleet,
    reply,
    reported,
    start_agent,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TRUCK = "RMT-CMD"
RES = f"fleet/{TRUCK}/cmd/res/test"


def test_the_tested_acl_is_the_documented_one() -> None:
    assert acl_in_docs() == ACL


def remote_counters(broker: Mosquitto, tmp: Path) -> dict[str, Any]:
    proc = fleet(broker, tmp, "cmd", TRUCK, "status")
    assert proc.returncode == 0, proc.stderr
    counters = reply(proc)["body"]["remote"]
    assert isinstance(counters, dict)
    return counters


def restart_and_wait(gw: Any, obs: Observer) -> None:
    """Stop and start the agent; return once it reported again (it subscribes first)."""
    topic = f"fleet/{TRUCK}/config/reported"
    n = len(obs.docs(topic))
    gw.stop()
    gw.start()
    wait_for("the agent connected again", lambda: len(obs.docs(topic)) > n, 30, gw)


@pytest.fixture
def agent(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> Any:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    gw = start_agent(tmp_path, TRUCK, agent_config(tmp_path, TRUCK, broker))
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        yield broker, gw, obs
        assert assert_wire_valid(obs) > 0
    finally:
        obs.close()
        gw.stop()


def test_commands_and_exit_codes(agent: Any, tmp_path: Path) -> None:
    broker, gw, _obs = agent
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "ping")
    assert proc.returncode == 0
    assert reply(proc)["body"]["pong"] is True
    status = reply(fleet(broker, tmp_path, "cmd", TRUCK, "status"))["body"]
    assert status["truck_id"] == TRUCK
    assert "buffer" in status
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "set_log_level", "level=debug")
    assert proc.returncode == 0
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "set_log_level", "level=loud")
    assert (proc.returncode, reply(proc)["code"]) == (3, 400)
    assert reply(fleet(broker, tmp_path, "cmd", TRUCK, "flush"))["code"] == 200
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "position")  # no GPS configured
    assert (proc.returncode, reply(proc)["code"]) == (1, 503)
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "dtc")
    assert reply(proc)["body"] == {"active": []}
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "retry_refused")  # nothing set aside
    assert (proc.returncode, reply(proc)["code"], reply(proc)["body"]) == (
        0, 200, {"moved_back": 0})
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "format_disk")
    assert (proc.returncode, reply(proc)["code"]) == (3, 404)
    # a truck that is not there: no reply within the timeout
    proc = fleet(broker, tmp_path, "cmd", "NO-SUCH-TRUCK", "ping", "--timeout", "2")
    assert proc.returncode == 4
    assert gw.running


def test_the_fleet_cli_exit_codes_for_bad_input_and_no_broker(agent: Any,
                                                              tmp_path: Path) -> None:
    """66: the file cannot be read; 69: no broker there, or it refused us; 2: usage."""
    broker, gw, _obs = agent
    proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "nope.toml"))
    assert proc.returncode == 66, proc.stderr
    assert "nope.toml" in proc.stderr
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "ping", user="stranger")  # not a user
    assert proc.returncode == 69, (proc.stdout, proc.stderr)
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "set_log_level", "level")  # no KEY=VALUE
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    cmd = [sys.executable, "-m", "gateway.cli", "fleet", "--host", "127.0.0.1",
           "--port", str(free_port()), "cmd", TRUCK, "ping", "--timeout", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 69, (proc.stdout, proc.stderr)
    proc = fleet(broker, tmp_path, "cmd", TRUCK, "request_pgn", "pgn=65260")  # no [can]
    assert (proc.returncode, reply(proc)["code"]) == (1, 503)
    assert gw.running


def test_a_reply_carries_the_correlation_data_of_its_request(agent: Any) -> None:
    """MQTT 5 request/response: each reply echoes its request's Correlation Data."""
    _broker, gw, obs = agent
    for i in range(3):
        obs.publish(f"fleet/{TRUCK}/cmd", json.dumps(
            {"request_id": f"corr-{i}", "name": "ping"}).encode(),
            response_topic=RES, correlation=f"c-{i}".encode())
    wait_for("three replies", lambda: len(obs.docs(RES)) == 3, 20, gw)
    with obs.lock:
        corr = [c for t, c in obs.correlations if t == RES]
    ids = [d["request_id"] for d in obs.docs(RES)]
    assert sorted(zip(ids, corr, strict=True)) == [
        (f"corr-{i}", f"c-{i}".encode()) for i in range(3)]


def test_request_pgn_puts_one_j1939_request_on_the_bus(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    """A truck that may transmit (``listen_only = false``): the command queues one
    Request (PGN 59904) for the PGN asked, seen by the CAN adapter (slcan over a pty)."""
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    sent: list[Frame] = []
    adapter = SlcanPtyAdapter(tmp_path / "can0", on_transmit=sent.append)
    stop = threading.Event()

    def pump() -> None:  # answer the agent's slcan commands; bounded to 2 minutes
        for _ in range(6000):
            if stop.wait(0.02):
                return
            adapter.poll()

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    can = (f'[can]\ninterface = "slcan"\nchannel = "{adapter.channel}"\n'
           "bitrate = 250000\nlisten_only = false\nrequest_interval_s = 0\n")
    gw = start_agent(tmp_path, TRUCK, agent_config(tmp_path, TRUCK, broker, sections=can))
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        wait_for("the CAN channel open", lambda: (gw.state().get("can") or {}).get("state")
                 in ("active", "silent"), 30, gw)
        assert sent == []  # request_interval_s = 0: no periodic requests
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "request_pgn", "pgn=65260")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert reply(proc)["body"] == {"requested": 65260}
        wait_for("the Request on the bus", lambda: sent, 10, gw)
        want = make_id(PGN_REQUEST, REQUEST_SA, da=GLOBAL, priority=6)
        assert [(f.arbitration_id, bytes(f.data)) for f in sent] == [
            (want, bytes([0xEC, 0xFE, 0x00]))]  # PGN 65260 little-endian
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "request_pgn", "pgn=300000")
        assert (proc.returncode, reply(proc)["code"]) == (3, 400)
        time.sleep(0.5)
        assert len(sent) == 1
    finally:
        stop.set()
        pumper.join(5)
        obs.close()
        gw.stop()
        adapter.close()


def test_request_pgn_is_refused_while_listen_only(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    can = '[can]\ninterface = "virtual"\nchannel = "rmt-vcan"\nlisten_only = true\n'
    gw = start_agent(tmp_path, TRUCK, agent_config(tmp_path, TRUCK, broker, sections=can))
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "request_pgn", "pgn=65253")
        assert (proc.returncode, reply(proc)["code"]) == (3, 403)
        assert "listen_only" in reply(proc)["body"]["reason"]
    finally:
        obs.close()
        gw.stop()


def test_a_duplicate_request_id_does_not_run_twice_even_after_a_restart(
    agent: Any, tmp_path: Path
) -> None:
    broker, gw, obs = agent
    rid = f"dup-{uuid.uuid4().hex[:8]}"
    first = fleet(broker, tmp_path, "cmd", TRUCK, "ping", "--request-id", rid)
    assert first.returncode == 0
    ran = remote_counters(broker, tmp_path)["commands_run"]
    again = fleet(broker, tmp_path, "cmd", TRUCK, "ping", "--request-id", rid)
    assert again.returncode == 3
    assert reply(again)["code"] == 409
    assert reply(again)["body"]["first_code"] == 200
    counters = remote_counters(broker, tmp_path)
    assert counters["commands_run"] == ran + 1  # only the status call in between
    assert counters["duplicates"] == 1
    # the window is persisted: a restart does not forget it
    restart_and_wait(gw, obs)
    third = fleet(broker, tmp_path, "cmd", TRUCK, "ping", "--request-id", rid,
                  "--timeout", "30")
    assert (third.returncode, reply(third)["code"]) == (3, 409)


def test_an_expired_command_does_not_run(agent: Any, tmp_path: Path) -> None:
    broker, gw, obs = agent
    now = time.time_ns() // 1_000_000
    doc = {"request_id": "old-1", "name": "restart", "ts_ms": now - 3 * 86_400_000,
           "expires_at_ms": now - 3 * 86_400_000 + 60_000}
    obs.publish(f"fleet/{TRUCK}/cmd", json.dumps(doc).encode(), response_topic=RES)
    got = wait_for("the refusal", lambda: obs.docs(RES), 20, gw)
    assert (got[0]["request_id"], got[0]["code"], got[0]["result"]) == ("old-1", 410, "expired")
    # a truck that was offline gets a retained command only within its MQTT 5 expiry:
    # here the broker drops it, the truck never sees it
    gw.stop()
    obs.publish(f"fleet/{TRUCK}/cmd", json.dumps({**doc, "request_id": "old-2",
                                                 "expires_at_ms": None}).encode(),
                retain=True, expiry_s=1, response_topic=RES)
    time.sleep(2.5)
    n = len(obs.docs(f"fleet/{TRUCK}/config/reported"))
    gw.start()
    wait_for("the agent back", lambda: len(obs.docs(f"fleet/{TRUCK}/config/reported")) > n,
             30, gw)
    assert remote_counters(broker, tmp_path)["expired"] == 0  # a fresh run of the agent
    assert [d["request_id"] for d in obs.docs(RES)] == ["old-1"]
    # a retained command past expires_at_ms (the broker kept it): refused, not run
    gw.stop()
    obs.publish(f"fleet/{TRUCK}/cmd", json.dumps({**doc, "request_id": "old-3"}).encode(),
                retain=True, response_topic=RES)
    gw.start()
    wait_for("the retained refusal", lambda: len(obs.docs(RES)) == 2, 30, gw)
    assert obs.docs(RES)[1]["code"] == 410
    assert gw.running


def test_unsigned_commands_are_refused_when_signing_is_required(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    key = tmp_path / "truck.key"
    key_text = "5e1f" * 16
    key.write_text(key_text + "\n")
    key.chmod(0o640)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("0" * 64)
    text = agent_config(tmp_path, TRUCK, broker,
                        remote=f'key_file = "{key}"\nrequire_signed = true\n')
    gw = start_agent(tmp_path, TRUCK, text)
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "ping")
        assert (proc.returncode, reply(proc)["code"]) == (3, 401)
        proc = fleet(broker, tmp_path, "--key-file", str(wrong), "cmd", TRUCK, "ping")
        assert (proc.returncode, reply(proc)["code"]) == (3, 401)
        assert reply(proc)["body"]["reason"] == "bad signature"
        proc = fleet(broker, tmp_path, "--key-file", str(key), "cmd", TRUCK, "status")
        assert proc.returncode == 0, proc.stdout
        counters = reply(proc)["body"]["remote"]
        assert (counters["unsigned_refused"], counters["bad_signature"]) == (1, 1)
        # and in the local health snapshot (truckgw status --json)
        wait_for("the counters in the state file", lambda: (gw.state().get("remote") or {})
                 .get("bad_signature") == 1, 10, gw)
        # a signed request replayed outside the window is refused
        stale = sign({"request_id": "stale", "name": "ping", "ts_ms": 1}, key_text.encode())
        obs.publish(f"fleet/{TRUCK}/cmd", stale, response_topic=RES)
        got = wait_for("the stale refusal", lambda: obs.docs(RES), 20, gw)
        assert got[0]["code"] == 401
        # an unsigned desired config is refused too, and does not move the version
        (tmp_path / "push.toml").write_text(text.replace("status_interval_s = 2.0",
                                                         "status_interval_s = 3.0"))
        proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "push.toml"),
                     "--timeout", "4")
        assert proc.returncode == 4
        proc = fleet(broker, tmp_path, "--key-file", str(key), "config", "push", TRUCK,
                     str(tmp_path / "push.toml"), "--version", "2", "--timeout", "30")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert assert_wire_valid(obs) >= 5
        # the key never appears in a reply or the log
        for out in (gw.log_path.read_text(), *(json.dumps(d) for d in obs.docs(RES))):
            assert key_text not in out
    finally:
        obs.close()
        gw.stop()


def test_a_client_the_acl_forbids_cannot_command_or_configure(agent: Any,
                                                              tmp_path: Path) -> None:
    broker, gw, _obs = agent
    intruder = Observer(broker, tmp_path, topic=f"fleet/{TRUCK}/cmd/res/#", user="intruder")
    try:
        before = remote_counters(broker, tmp_path)["messages"]
        mid = intruder.publish(f"fleet/{TRUCK}/cmd", json.dumps(
            {"request_id": "evil", "name": "restart"}).encode(), response_topic=RES)
        mid2 = intruder.publish(f"fleet/{TRUCK}/config/desired", json.dumps(
            {"version": 99, "toml": "truck_id = 'x'"}).encode(), retain=True)
        wait_for("the broker's PUBACKs", lambda: {mid, mid2} <= set(intruder.pubacks), 10)
        assert intruder.pubacks[mid] == intruder.pubacks[mid2] == 0x87  # not authorized
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "ping", "--timeout", "3",
                     user="intruder")
        assert proc.returncode == 4  # dropped by the broker: no reply
        counters = remote_counters(broker, tmp_path)
        assert counters["messages"] == before + 1  # only the operator's status request
        assert counters["configs_applied"] == counters["configs_rejected"] == 0
        assert gw.running
    finally:
        intruder.close()


def test_under_mqtt311_only_signed_commands_run(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    key = tmp_path / "truck.key"
    key.write_text("ab" * 32)
    key.chmod(0o640)
    text = agent_config(tmp_path, TRUCK, broker, mqtt_extra='protocol = "3.1.1"\n',
                        remote=f'key_file = "{key}"\n')
    gw = start_agent(tmp_path, TRUCK, text)
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "ping")  # answered on its reply_to
        assert (proc.returncode, reply(proc)["code"]) == (3, 401)
        assert "3.1.1" in reply(proc)["body"]["reason"]
        proc = fleet(broker, tmp_path, "--key-file", str(key), "cmd", TRUCK, "ping")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert assert_wire_valid(obs) >= 3
    finally:
        obs.close()
        gw.stop()


def test_restart_command_re_execs_and_tells_systemd_it_reloads(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    """``restart``: replied, then a clean stop and a re-exec in the same process; systemd
    hears RELOADING=1 and READY=1 again, never STOPPING=1 (which would end the unit)."""
    from tests.service.agent_env import NotifyListener  # noqa: PLC0415

    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK,)))
    listener = NotifyListener()
    gw = start_agent(tmp_path, TRUCK, agent_config(tmp_path, TRUCK, broker),
                     env={"NOTIFY_SOCKET": listener.address})
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        assert gw.proc is not None
        pid = gw.proc.pid
        topic = f"fleet/{TRUCK}/config/reported"
        n = len(obs.docs(topic))
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "restart")
        assert proc.returncode == 0, proc.stderr
        wait_for("the agent connected again", lambda: len(obs.docs(topic)) > n, 30, gw)
        assert gw.running
        assert gw.proc.pid == pid
        lines = listener.lines()
        assert lines.count("READY=1") == 2, lines
        assert "RELOADING=1" in lines
        assert "STOPPING=1" not in lines
        assert gw.log_path.read_text().count("starting for truck") == 2
    finally:
        obs.close()
        gw.stop()
        listener.close()


def test_allow_list_config_push_switch_and_off_by_default(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(broker_conf(tmp_path, (TRUCK, "RMT-OFF")))
    text = agent_config(tmp_path, TRUCK, broker,
                        remote='config_push = false\ncommands = ["ping", "status"]\n')
    gw = start_agent(tmp_path, TRUCK, text)
    off_text = agent_config(tmp_path, "RMT-OFF", broker).replace(
        "[remote]\nenabled = true", "[remote]\nenabled = false")
    off = start_agent(tmp_path, "RMT-OFF", off_text)
    obs = Observer(broker, tmp_path)
    try:
        wait_for("the first report", reported(obs, TRUCK), 30, gw)
        assert fleet(broker, tmp_path, "cmd", TRUCK, "ping").returncode == 0
        proc = fleet(broker, tmp_path, "cmd", TRUCK, "restart")
        assert (proc.returncode, reply(proc)["code"]) == (3, 403)
        (tmp_path / "push.toml").write_text(text.replace("status_interval_s = 2.0",
                                                         "status_interval_s = 3.0"))
        proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "push.toml"),
                     "--timeout", "4")
        assert proc.returncode == 4  # config pushes are off: no verdict
        assert gw.config_path.read_text() == text
        # [remote] enabled = false: nothing subscribed, nothing answered, nothing reported
        wait_for("the other truck online", lambda: any(
            t == "fleet/RMT-OFF/status" for t, _p, _r in list(obs.messages)), 30, off)
        proc = fleet(broker, tmp_path, "cmd", "RMT-OFF", "ping", "--timeout", "3")
        assert proc.returncode == 4
        assert not obs.docs("fleet/RMT-OFF/config/reported")
    finally:
        obs.close()
        gw.stop()
        off.stop()


def test_a_truck_that_was_offline_gets_the_retained_desired_config(
    agent: Any, tmp_path: Path
) -> None:
    broker, gw, obs = agent
    text = gw.config_path.read_text()
    gw.stop()
    new = text.replace("status_interval_s = 2.0", "status_interval_s = 4.0")
    (tmp_path / "push.toml").write_text(new)
    proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "push.toml"),
                 "--no-wait")
    assert proc.returncode == 0, proc.stderr
    gw.start()
    got = wait_for("version 1 applied", reported(obs, TRUCK, version=1, status="applied"),
                   30, gw)
    assert got["live_keys"] == ["mqtt.status_interval_s"]
    assert gw.config_path.read_text() == new


@pytest.mark.parametrize("change", ["status_interval_s = 4.0", "keepalive_s = 12"])
def test_a_config_file_that_cannot_be_written_is_a_rejection(agent: Any, tmp_path: Path,
                                                             change: str) -> None:
    """Live or restart: nothing half-done, the verdict says why, the agent runs on."""
    broker, gw, _obs = agent
    text = gw.config_path.read_text()
    (gw.config_path.parent / "truck.toml.prev").mkdir()  # the previous file cannot be kept
    key = change.split(" = ", maxsplit=1)[0]
    new = "\n".join(change if ln.startswith(key + " =") else ln for ln in text.splitlines())
    (tmp_path / "push.toml").write_text(new + "\n")
    proc = fleet(broker, tmp_path, "config", "push", TRUCK, str(tmp_path / "push.toml"),
                 "--timeout", "30")
    assert proc.returncode == 1, (proc.stdout, proc.stderr, gw.log_tail())
    verdict = reply(proc)
    assert verdict["status"] == "rejected"
    assert "cannot write the config file" in verdict["errors"][0]
    assert gw.config_path.read_text() == text
    assert gw.running
    assert fleet(broker, tmp_path, "cmd", TRUCK, "ping").returncode == 0
