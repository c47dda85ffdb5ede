"""Test helpers: a notify socket, truck configs and input feeders for the agent."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.health import read_state
from sim.j1939_out import Frame, can_id
from sim.nmea_out import GpsFix, epoch
from sim.ports import PtyPort
from sim.slcan_adapter import SlcanPtyAdapter

EEC1_PGN = 61444


def free_port() -> int:
    """A loopback TCP port nobody listens on (a broker that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NotifyListener:
    """The service manager's side of sd_notify: an abstract AF_UNIX datagram socket."""

    def __init__(self) -> None:
        self.name = f"truckgw-test-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    @property
    def address(self) -> str:
        """The ``NOTIFY_SOCKET`` value."""
        return "@" + self.name

    def drain(self) -> list[str]:
        """Collect what arrived since the last call (non-blocking)."""
        new: list[str] = []
        if self.sock.fileno() < 0:  # closed: keep what was collected
            return new
        for _ in range(10_000):
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            for line in data.decode().split("\n"):
                new.append(line)
                self.messages.append((time.monotonic(), line))
        return new

    def lines(self) -> list[str]:
        """Every line received so far."""
        self.drain()
        return [m for _, m in self.messages]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def truck_toml(workdir: Path, *, mqtt_port: int, gps_port: Path | None = None,
               can_channel: str | None = None, can_interface: str = "slcan",
               buffer_path: Path | None = None, interval_s: float = 1.0) -> str:
    """A config recording every GPS fix and every changed engine value."""
    buf = buffer_path or workdir / "buffer.db"
    out = ['truck_id = "T1"', ""]
    if gps_port is not None:
        out += ["[gps]", f'port = "{gps_port}"', "baudrate = 9600",
                "[gps.sampling]", 'mode = "thresholds"', "min_interval_s = 0", "max_interval_s = 0",
                "min_distance_m = 0", "min_heading_change_deg = 0", "min_speed_change_kmh = 0",
                "stopped_interval_s = 0", ""]
    if can_channel is not None:
        out += ["[can]", f'interface = "{can_interface}"', f'channel = "{can_channel}"',
                "[can.sampling]", "min_interval_s = 0", "max_interval_s = 0",
                "[can.sampling.deadbands]", "engine_speed_rpm = 0", ""]
    out += ["[buffer]", f'path = "{buf}"', "",
            "[mqtt]", 'host = "127.0.0.1"', f"port = {mqtt_port}", 'protocol = "5"',
            "keepalive_s = 10", "reconnect_min_s = 0.2", "reconnect_max_s = 1.0",
            "status_interval_s = 2.0", 'status_detail = "full"', "",
            "[metrics]", f'state_file = "{workdir / "state.json"}"', f"interval_s = {interval_s}",
            f'textfile = "{workdir / "truckgw.prom"}"', "",
            "[log]", 'level = "info"', ""]
    return "\n".join(out)


def eec1_frame(rpm: float) -> Frame:
    """An EEC1 frame from the engine (SA 0) with ``rpm``."""
    raw = int(rpm / 0.125)
    data = bytes([0xF0, 0x7D, 0x7D, raw & 0xFF, raw >> 8, 0xFF, 0xFF, 0xFF])
    return Frame(can_id(3, EEC1_PGN, 0x00), data)


class Inputs:
    """A GPS on a pty and an slcan CAN adapter on a pty, fed from the test thread."""

    def __init__(self, workdir: Path, *, gps: bool = True, can: bool = True) -> None:
        self.gps = PtyPort(workdir / "gps") if gps else None
        self.can = SlcanPtyAdapter(workdir / "can") if can else None
        self.t = dt.datetime(2026, 5, 1, 8, 0, 0, tzinfo=dt.UTC)
        self.frames_sent = 0
        self.epochs_sent = 0
        self._rpm = 800.0

    def pump(self, seconds: float, *, can_per_tick: int = 20, tick_s: float = 0.01,
             notify: NotifyListener | None = None) -> None:
        """About ``can_per_tick / tick_s`` CAN frames/s and a 10 Hz GPS for ``seconds``."""
        ticks = max(1, int(seconds / tick_s))
        for i in range(ticks):
            if self.can is not None:
                frames = []
                for _ in range(can_per_tick):
                    self._rpm = 2400.0 if self._rpm < 1600 else 800.0
                    frames.append(eec1_frame(self._rpm))
                self.can.send(frames)
                if self.can.device.is_open:
                    self.frames_sent += len(frames)
            if self.gps is not None and self.gps.present and i % max(1, int(0.1 / tick_s)) == 0:
                self.t += dt.timedelta(milliseconds=100)
                fix = GpsFix(48.1 + self.epochs_sent * 1e-5, 11.5, 520.0, 50.0, 90.0)
                self.gps.write(epoch(self.t, fix))
                self.epochs_sent += 1
            if notify is not None:
                notify.drain()
            time.sleep(tick_s)

    def pumped(self, check: Callable[[], object], seconds: float = 0.2) -> object:
        """Feed for ``seconds``, then evaluate ``check`` (for :func:`wait_for`)."""
        self.pump(seconds)
        return check()

    def close(self) -> None:
        """Release both ptys."""
        if self.gps is not None:
            self.gps.close()
        if self.can is not None:
            self.can.close()


def devices_and_config(workdir: Path, mqtt_port: int) -> tuple[Inputs, Path]:
    """A GPS and a CAN adapter on ptys, and ``truck.toml`` in ``workdir`` for them
    (:func:`truck_toml`, broker on ``mqtt_port``)."""
    inputs = Inputs(workdir)
    assert inputs.gps is not None and inputs.can is not None
    conf = workdir / "truck.toml"
    conf.write_text(truck_toml(workdir, mqtt_port=mqtt_port, gps_port=inputs.gps.link,
                               can_channel=inputs.can.channel))
    return inputs, conf


def state_section(workdir: Path, name: str) -> dict[str, Any]:
    """One section of the agent's state file in ``workdir`` (empty until there is one)."""
    sec = (read_state(workdir / "state.json") or {}).get(name)
    return sec if isinstance(sec, dict) else {}


def start_agent(config: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``truckgw run -c config`` with its output in ``log_path``."""
    with log_path.open("ab") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
        )


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Kill the agent if a test fails half-way."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def wait_for(pred: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Poll ``pred()`` until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
