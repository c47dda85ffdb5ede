"""The shipped authorization (deploy/nats/auth.conf) on a real 3-node cluster: a truck
publishes only under its own id, the sink user can consume, a wrong password is refused;
and the shipped node configs parse."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from buffer.store import SqliteStore
from gateway.uplink import Uplink, UplinkState
from sim.nats import (
    Fleet,
    JetStreamSinkProcess,
    NatsCluster,
    find_nats_server,
    truck_config,
)
from sim.sink_fleet import fleet_events, truck_messages
from tests.cluster.conftest import running_cluster
from tests.sink.helpers import count, query
from tests.uplink.helpers import append_many, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nats"
PASSWORDS = {"TRUCK_0001_PASSWORD": "pw-0001", "TRUCK_0002_PASSWORD": "pw-0002",
             "SINK_PASSWORD": "pw-sink", "OPS_PASSWORD": "pw-ops"}


@pytest.fixture
def secured_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """The cluster with the shipped authorization (deploy/nats/auth.conf)."""
    with running_cluster(tmp_path / "nats", include=DEPLOY / "auth.conf",
                         env=PASSWORDS) as cluster:
        yield cluster


def _nats_login(url: str, user: str, password: str) -> bool:
    """Whether ``user`` may open a NATS-protocol connection (the protocol by hand: INFO,
    CONNECT, PING; the server answers PONG, or -ERR 'Authorization Violation')."""
    import json as _json  # noqa: PLC0415
    import socket  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    u = urlsplit(url)
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout=5) as s:
        s.recv(4096)  # INFO {...}
        hello = {"user": user, "pass": password, "verbose": False, "pedantic": False,
                 "protocol": 1, "lang": "python", "version": "test"}
        s.sendall(b"CONNECT " + _json.dumps(hello).encode() + b"\r\nPING\r\n")
        reply = b""
        for _ in range(20):  # bounded: a few reads until PONG or -ERR
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
            if b"PONG" in reply or b"-ERR" in reply:
                break
    return b"PONG" in reply and b"-ERR" not in reply


def _paho(addr: tuple[str, int], user: str, password: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-raw",
                    protocol=MQTTProtocolVersion.MQTTv311)
    c.username_pw_set(user, password)
    c.connect(*addr, keepalive=10)
    c.loop_start()
    return c


async def test_a_truck_publishes_only_under_its_own_id(secured_cluster: NatsCluster,
                                                      tmp_path: Path) -> None:
    cluster = secured_cluster
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    (tmp_path / "sink.pw").write_text("pw-sink\n")
    (tmp_path / "truck.pw").write_text("pw-0001\n")
    (tmp_path / "wrong.pw").write_text("not-the-password\n")
    sink = JetStreamSinkProcess(cluster.urls, url, tmp_path / "sink.out")
    sink.argv += ["--nats-user", "sink", "--nats-password-file", str(tmp_path / "sink.pw")]
    fleet = Fleet(cluster, tmp_path, 0)
    raw: mqtt.Client | None = None
    try:
        await fleet.blocking(sink.start)  # the sink user may create and use its durable
        cfg = truck_config(tmp_path, "truck-0001", cluster.mqtt_addresses, "json")
        cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(
            cfg.mqtt, username="truck-0001", password_file=tmp_path / "truck.pw",
            allow_insecure_password=True))
        store = await SqliteStore.open(cfg.buffer)
        up = Uplink(cfg, store)
        task = asyncio.create_task(up.run(), name="uplink-truck-0001")
        try:
            seqs = await append_many(store, 100)
            assert await wait_until(lambda: count(url, "WHERE truck_id = 'truck-0001'")
                                    >= len(seqs), 30), sink.text()[-2000:]
            # the same credentials, another truck's topic: dropped by the server
            raw = _paho(cluster.mqtt_addresses[1], "truck-0001", "pw-0001")
            forged = truck_messages("fleet", "truck-0002", fleet_events(1, 10, 1_760_000_000_000),
                                    batch=10)[0]
            info = raw.publish("fleet/truck-0002/events", forged.payload, qos=1)
            info.wait_for_publish(10)
            assert info.is_published()  # MQTT 3.1.1: acknowledged all the same
            more = await append_many(store, 20, start=100)  # a marker after the forgery
            assert await wait_until(lambda: count(url, "WHERE truck_id = 'truck-0001'")
                                    >= len(seqs) + len(more), 30)
            await asyncio.sleep(1.0)
            assert count(url, "WHERE truck_id = 'truck-0002'") == 0
            assert query(url, "SELECT count(*) FROM quarantine") == [(0,)]
            log = cluster.nodes[1].log_path.read_text(errors="replace")
            assert 'Publish Violation - User "truck-0001", Subject "fleet.truck-0002.events"' \
                in log, log[-2000:]
        finally:
            await up.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()
        # a wrong password: CONNACK refuses, the uplink counts a refusal and backs off
        bad = dataclasses.replace(cfg, mqtt=dataclasses.replace(
            cfg.mqtt, password_file=tmp_path / "wrong.pw"))
        store2 = await SqliteStore.open(dataclasses.replace(cfg.buffer,
                                                            path=tmp_path / "b2.db"))
        up2 = Uplink(bad, store2)
        task2 = asyncio.create_task(up2.run(), name="uplink-wrong-password")
        try:
            assert await wait_until(lambda: up2.stats().refusals >= 1, 20)
            assert up2.stats().connects == 0
            assert up2.state is not UplinkState.CONNECTED
        finally:
            await up2.close()
            task2.cancel()
            await asyncio.gather(task2, return_exceptions=True)
            await store2.close()
    finally:
        if raw is not None:
            raw.disconnect()
            raw.loop_stop()
        if sink.proc is not None:
            await fleet.blocking(sink.stop)
        await fleet.close()


@pytest.mark.parametrize("node", ["node1.conf", "node2.conf", "node3.conf"])
def test_shipped_node_configs_parse(node: str, tmp_path: Path) -> None:
    """``nats-server -t`` on each shipped node config, its paths pointed at tmp_path."""
    ca = trustme.CA()
    cert = ca.issue_cert("fleet-nats-1.example.com")
    etc = tmp_path / "etc"
    etc.mkdir()
    cert.cert_chain_pems[0].write_to_path(str(etc / "mqtt.pem"))
    cert.private_key_pem.write_to_path(str(etc / "mqtt.key"))
    text = (DEPLOY / node).read_text()
    assert "stream_replicas: 3" in text and 'include "auth.conf"' in text
    text = text.replace("/etc/nats/", f"{etc}/").replace("/var/lib/nats", str(tmp_path / "js"))
    (tmp_path / node).write_text(text)
    (tmp_path / "auth.conf").write_text((DEPLOY / "auth.conf").read_text())
    done = subprocess.run([find_nats_server(), "-t", "-c", str(tmp_path / node)],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", **PASSWORDS}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_truck_may_subscribe_only_to_its_own_remote_topics(
        secured_cluster: NatsCluster) -> None:
    """Remote management (docs/remote.md) on the shipped authorization: a truck gets its
    own desired config and commands, an operator's command reaches it; another truck's
    topics, the fleet's events and the server's delivery subjects are refused, and its
    credentials do not open a NATS (non-MQTT) connection."""
    cluster = secured_cluster
    got: list[tuple[str, bytes]] = []
    granted: dict[int, list[int]] = {}
    truck = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="truck-0001-remote",
                        protocol=MQTTProtocolVersion.MQTTv311)
    truck.username_pw_set("truck-0001", "pw-0001")
    truck.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
    truck.on_subscribe = lambda _c, _u, mid, codes, _p: granted.__setitem__(
        mid, [int(getattr(c, "value", c)) for c in codes])
    truck.connect(*cluster.mqtt_addresses[0], keepalive=10)
    truck.loop_start()
    ops: mqtt.Client | None = None
    try:
        mids: dict[str, int] = {}
        for topic in ("fleet/truck-0001/config/desired", "fleet/truck-0001/cmd",
                      "fleet/truck-0002/cmd", "fleet/+/events", "$MQTT/sub/#"):
            mid = truck.subscribe(topic, qos=1)[1]
            assert mid is not None
            mids[topic] = mid
        for _ in range(100):  # bounded: 10 s for the five SUBACKs
            if all(m in granted for m in mids.values()):
                break
            time.sleep(0.1)
        codes = {t: granted[m][0] for t, m in mids.items()}
        assert codes["fleet/truck-0001/config/desired"] == 1
        assert codes["fleet/truck-0001/cmd"] == 1
        assert codes["fleet/truck-0002/cmd"] == 0x80  # refused
        assert codes["fleet/+/events"] == 0x80
        assert codes["$MQTT/sub/#"] == 0x80  # other subscriptions' deliveries: refused
        ops = _paho(cluster.mqtt_addresses[1], "ops", "pw-ops")
        ops.publish("fleet/truck-0001/cmd", b'{"request_id": "r1", "name": "ping"}',
                    qos=1).wait_for_publish(10)
        for _ in range(100):  # bounded: 10 s
            if got:
                break
            time.sleep(0.1)
        assert got == [("fleet/truck-0001/cmd", b'{"request_id": "r1", "name": "ping"}')]
        assert _nats_login(cluster.urls[0], "truck-0001", "pw-0001") is False
        assert _nats_login(cluster.urls[0], "ops", "pw-ops") is True
    finally:
        truck.disconnect()
        truck.loop_stop()
        if ops is not None:
            ops.disconnect()
            ops.loop_stop()
