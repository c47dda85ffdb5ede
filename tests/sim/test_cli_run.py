"""`truckgw sim sink` and `truckgw sim fleet` as subprocesses against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sim.broker import Mosquitto

pytestmark = pytest.mark.broker


def truckgw(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def wait_for_line(proc: subprocess.Popen[bytes], needle: bytes, limit_s: float = 15) -> bytes:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    deadline = time.monotonic() + limit_s
    while needle not in buf and time.monotonic() < deadline and proc.poll() is None:
        buf += proc.stdout.read() or b""
        time.sleep(0.05)
    assert needle in buf, buf
    return buf


def test_sink_command_exits_1_on_gaps_and_writes_outputs(mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    report, jsonl = tmp_path / "trip.html", tmp_path / "ev.jsonl"
    proc = subprocess.Popen(
        truckgw("sim", "sink", "--host", mosquitto.host, "--port", str(mosquitto.port),
                "--duration", "4", "--expect-no-gaps", "--report", str(report),
                "--jsonl", str(jsonl), "-q"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ,
                                                               "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_line(proc, b"sink: subscribed")
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="p",
                          protocol=mqtt.MQTTv5)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        now = int(time.time() * 1000)
        for seqs in ([1, 2], [5]):
            batch = {"truck_id": "T9", "events": [
                {"seq": s, "ts": now, "type": "gps", "lat": 1.0 + s, "lon": 2.0}
                for s in seqs]}
            pub.publish("fleet/T9/events", json.dumps(batch), qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 1, out
    assert b"missing=2" in out and b"FAIL" in out
    assert "<svg" in report.read_text()
    assert len(jsonl.read_text().splitlines()) == 3


@pytest.mark.slow
def test_fleet_of_two_trucks_with_their_gateways(mosquitto: Mosquitto, tmp_path: Path) -> None:
    res = subprocess.run(
        truckgw("sim", "fleet", "-n", "2", "--host", mosquitto.host, "--port",
                str(mosquitto.port), "--duration", "12", "--speed", "4", "--sink",
                "--expect-no-gaps", "--dir", str(tmp_path / "fleet")),
        capture_output=True, timeout=90, check=False)
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()[-2000:]
    for tid in ("SIM-0001", "SIM-0002"):
        line = next(x for x in out.splitlines() if x.startswith(f"{tid}: events="))
        assert "missing=0" in line
        assert int(line.split("events=")[1].split()[0]) > 3
