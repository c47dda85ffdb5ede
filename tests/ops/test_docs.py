"""docs/raspberry-pi.md's commands, run as written where they can run here: the test
CA and certificates (openssl), the Mosquitto TLS listener they configure, and a truck
connecting with its client certificate; plus the names the walk-through relies on."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.cli import build_parser, main
from sim.broker import Mosquitto

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "raspberry-pi.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```\n(.*?)^```", text, flags=re.S | re.M)


def _pki_block() -> str:
    block = next(b for b in _blocks(DOC.read_text()) if "client_cert TRK-0001" in b)
    start = block.index("BROKER=")
    end = block.index("\n", block.index("openssl verify"))
    return block[start:end]


def _listener_conf() -> list[str]:
    block = next(b for b in _blocks(DOC.read_text()) if "fleet.conf" in b)
    body = block.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0]
    return body.splitlines()


def _connect(port: int, d: Path, name: str | None) -> str:
    """CONNACK reason of a client with ``name``'s certificate (None: no certificate)."""
    got: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name or "anon",
                    protocol=MQTTProtocolVersion.MQTTv5)
    c.tls_set(ca_certs=str(d / "ca.pem"),
              certfile=str(d / f"{name}.pem") if name else None,
              keyfile=str(d / f"{name}.key") if name else None)
    c.on_connect = lambda _c, _u, _f, rc, _p=None: got.append(str(rc))
    c.on_disconnect = lambda *_a: got.append("disconnected")
    try:
        c.connect("localhost", port)
    except OSError as exc:  # the broker refused the handshake outright
        return f"error: {exc}"
    c.loop_start()
    try:
        for _ in range(200):  # at most 10 s for the first CONNACK or disconnect
            if got:
                break
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0] if got else "no connack"


@pytest.mark.broker
def test_the_documented_test_pki_and_listener_work(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    d = tmp_path / "fleet-pki"
    d.mkdir()
    script = _pki_block().replace("BROKER=broker.example.com", "BROKER=localhost", 1)
    res = subprocess.run(["sh", "-euc", script], cwd=d, capture_output=True, text=True,
                         check=False, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "server.pem: OK" in res.stdout and "TRK-0001.pem: OK" in res.stdout
    conf = []
    for line in _listener_conf():
        key, _, value = line.partition(" ")
        if key == "listener":
            continue  # the fixture picks a free loopback port
        conf.append(f"{key} {d / Path(value).name}" if value.startswith("/etc/") else line)
    broker = mosquitto_factory([*(["user root"] if os.geteuid() == 0 else []), *conf],
                               allow_anonymous=False)
    assert _connect(broker.port, d, "TRK-0001") == "Success"
    assert _connect(broker.port, d, None) != "Success"  # no client certificate: refused
    # and the truck's config as install.sh writes it for these files agrees with the port
    cfg = tmp_path / "truckgw.toml"
    for src, dst in (("ca.pem", "ca.pem"), ("TRK-0001.pem", "client.pem"),
                     ("TRK-0001.key", "client.key")):
        (tmp_path / dst).write_bytes((d / src).read_bytes())
    (tmp_path / "client.key").chmod(0o640)
    cfg.write_text(f'truck_id = "TRK-0001"\n[gps]\nport = "/dev/null"\n[mqtt]\n'
                   f'host = "localhost"\nport = {broker.port}\n[mqtt.tls]\nca_file = "ca.pem"\n'
                   'cert_file = "client.pem"\nkey_file = "client.key"\n')
    assert main(["diagnose", "-c", str(cfg), "--timeout", "3"]) == 0


def test_walkthrough_names_exist() -> None:
    """Every `truckgw SUBCOMMAND`, installer setting and script the docs use exists."""
    text = DOC.read_text() + (REPO / "docs" / "operations.md").read_text()
    sub_action = next(a for a in build_parser()._actions
                      if isinstance(a, argparse._SubParsersAction))
    commands = set(sub_action.choices)
    for sub in set(re.findall(r"\btruckgw ([a-z][a-z-]+) (?:-c|--|/)", text)):
        assert sub in commands, sub
    installer = (REPO / "systemd" / "install.sh").read_text()
    for var in set(re.findall(r"\b(MQTT_[A-Z]+|TRUCK_ID|GPS_PORT|CAN_CHANNEL)=", text)):
        assert f"#   {var}" in installer or f"#   {var}," in installer or (
            var in ("MQTT_CERT", "MQTT_KEY") and "MQTT_CERT, MQTT_KEY" in installer), var
    for opt in ("--wheelhouse", "--uninstall", "--purge"):
        assert opt in text and opt in installer
    assert (REPO / "deploy" / "wheelhouse.sh").exists()
    assert "systemd-networkd-wait-online" in text


def test_the_docs_stand_on_their_own() -> None:
    """Nothing in the repository cites the team's reference files outside it (DOMAIN.md and
    the rest of ../shared): a fresh clone does not have them; what the code relies on is
    in docs/, in the project's words."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(files) > 100  # a checkout, not an empty listing
    outside = re.compile(r"DOMAIN\.md|ARCHITECTURE\.md|STYLE\.md|\.\./shared\b")
    cited = []
    for name in files:
        path = REPO / name
        if path == Path(__file__).resolve():
            continue  # this test names them
        if path.suffix in (".py", ".md", ".toml", ".yaml", ".sh", ".in", ".service", ".txt"):
            text = path.read_text(errors="replace")
            cited += [f"{name}: {m.group(0)}" for m in outside.finditer(text)]
    assert cited == []
