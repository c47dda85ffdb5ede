"""A real Mosquitto with the ACL of docs/remote.md, real ``truckgw run`` agents and the
real ``truckgw fleet`` CLI, for the remote-management tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sim.broker import Mosquitto
from sim.gateway_proc import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-"  # + user name
#: The ACL of docs/remote.md, word for word (test_remote_commands.py checks it).
ACL = """\
# fleet operators
user ops
topic write fleet/+/config/desired
topic write fleet/+/cmd
topic read fleet/#

# every other authenticated client: a truck, whose username is its truck id
pattern write fleet/%u/events
pattern write fleet/%u/events/#
pattern write fleet/%u/status
pattern write fleet/%u/config/reported
pattern write fleet/%u/cmd/res/#
pattern read fleet/%u/config/desired
pattern read fleet/%u/cmd
"""
USERS = ("ops", "intruder")


def schema(name: str) -> Draft202012Validator:
    """A validator for docs/schema/remote-NAME.schema.json."""
    doc = json.loads((ROOT / "docs" / "schema" / f"remote-{name}.schema.json").read_text())
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc)


def assert_wire_valid(obs: Observer) -> int:
    """Every remote-management message the observer saw meets its JSON Schema; how many."""
    signed, n = schema("signed"), 0
    for topic, payload, _retain in list(obs.messages):
        if not payload:
            continue
        kind = ("reported" if topic.endswith("/config/reported") else
                "desired" if topic.endswith("/config/desired") else
                "request" if topic.endswith("/cmd") else
                "reply" if "/cmd/res/" in topic else None)
        if kind is None:
            continue
        doc = json.loads(payload)
        if kind in ("desired", "request") and "signed" in doc:
            signed.validate(doc)
            doc = json.loads(doc["signed"])
        schema(kind).validate(doc)
        n += 1
    return n


def acl_in_docs() -> str:
    """The acl_file block of docs/remote.md."""
    text = (ROOT / "docs" / "remote.md").read_text()
    start = text.index("```\n# fleet operators") + 4
    return text[start:text.index("```", start)]


def broker_conf(tmp: Path, trucks: tuple[str, ...]) -> list[str]:
    """Password file for the operators, an intruder and the trucks; the ACL file."""
    pw = tmp / "passwords"
    pw.write_text("")
    for user in (*USERS, *trucks):
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, PASSWORD + user],
                       check=True, capture_output=True, timeout=30)
    acl = tmp / "acl"
    acl.write_text(ACL)
    root = ["user root"] if os.geteuid() == 0 else []
    return [*root, f"password_file {pw}", f"acl_file {acl}"]


def secret(tmp: Path, user: str) -> Path:
    """A password file with that user's password."""
    p = tmp / f"{user}.password"
    p.write_text(PASSWORD + user + "\n")
    p.chmod(0o600)
    return p


def agent_config(tmp: Path, truck: str, broker: Mosquitto, *, port: int | None = None,
                 mqtt_extra: str = "", remote: str = "", sections: str = "",
                 keepalive: int = 10) -> str:
    """The TOML of an agent managed remotely."""
    work = tmp / truck
    work.mkdir(parents=True, exist_ok=True)
    return f"""truck_id = "{truck}"
{sections}
[buffer]
path = "{work / 'buffer.db'}"

[mqtt]
host = "{broker.host}"
port = {port or broker.port}
keepalive_s = {keepalive}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
status_interval_s = 2.0
username = "{truck}"
password_file = "{secret(tmp, truck)}"
allow_insecure_password = true
{mqtt_extra}
[metrics]
state_file = "{work / 'state.json'}"
interval_s = 1.0

[remote]
enabled = true
{remote}
"""


def start_agent(tmp: Path, truck: str, text: str, env: dict[str, str] | None = None
                ) -> GatewayProcess:
    gw = GatewayProcess(tmp / truck, text)
    if env:
        old = dict(os.environ)
        os.environ.update(env)
        try:
            gw.start()
        finally:
            os.environ.clear()
            os.environ.update(old)
    else:
        gw.start()
    return gw


def fleet(broker: Mosquitto, tmp: Path, *args: str, user: str = "ops",
          timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``truckgw fleet ...`` as a child process."""
    cmd = [sys.executable, "-m", "gateway.cli", "fleet", "--host", broker.host,
           "--port", str(broker.port), "--username", user,
           "--password-file", str(secret(tmp, user)), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def reply(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), (proc.returncode, proc.stderr)
    out = json.loads(proc.stdout)
    assert isinstance(out, dict)
    return out


class Observer:
    """An operator's paho client in its own thread: records what arrives, publishes."""

    def __init__(self, broker: Mosquitto, tmp: Path, topic: str = "fleet/#", *,
                 user: str = "ops") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{user}-{id(self)}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(user, PASSWORD + user)
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        #: (topic, MQTT 5 Correlation Data) of every message, in arrival order
        self.correlations: list[tuple[str, bytes | None]] = []
        self.pubacks: dict[int, int] = {}
        sub = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: sub.set()
        self.client.on_publish = self._on_publish
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        if not sub.wait(10):
            self.close()
            raise RuntimeError("observer did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
            self.correlations.append((msg.topic, None if corr is None else bytes(corr)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self.lock:
            self.pubacks[mid] = int(getattr(rc, "value", rc) or 0)

    def docs(self, topic: str) -> list[Any]:
        with self.lock:
            out = []
            for t, payload, _r in self.messages:
                if t == topic and payload:
                    out.append(json.loads(payload))
            return out

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                expiry_s: int | None = None, response_topic: str | None = None,
                correlation: bytes = b"corr") -> int:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        if response_topic is not None:
            props.ResponseTopic = response_topic
            props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10)
        return info.mid

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(what: str, cond: Callable[[], Any], limit_s: float,
             gw: GatewayProcess | None = None) -> Any:
    """Poll ``cond`` every 0.2 s until it is truthy (bounded in count and time)."""
    for _ in range(int(limit_s / 0.2) + 1):
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    tail = gw.log_tail(40) if gw is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def reported(obs: Observer, truck: str, **match: Any) -> Callable[[], dict[str, Any] | None]:
    """A condition: the latest report of ``truck`` matching ``match``."""
    def cond() -> dict[str, Any] | None:
        for doc in reversed(obs.docs(f"fleet/{truck}/config/reported")):
            if isinstance(doc, dict) and all(doc.get(k) == v for k, v in match.items()):
                return doc
        return None
    return cond
