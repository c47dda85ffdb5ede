"""Run ``truckgw run`` as a subprocess with a generated truck config (demo, fleet, tests).

The config points the agent at the simulator's ptys (``[gps] port``, ``[can]
interface = "slcan"``, ``channel``) and at the broker; the buffer and the state file
live in ``workdir``. ``stop()`` sends SIGTERM (the agent's clean shutdown) and only
kills after a bound.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


#: ``truck_config(extra=...)``: record every GPS fix (no thresholds)
EVERY_FIX = """
[gps.sampling]
mode = "thresholds"
min_interval_s = 0
max_interval_s = 0
min_distance_m = 0
min_heading_change_deg = 0
min_speed_change_kmh = 0
stopped_interval_s = 0
"""
#: ``truck_config(extra=...)``: record every decoded CAN frame (no deadbands)
EVERY_FRAME = """
[can.sampling]
min_interval_s = 0
max_interval_s = 0
"""


def truck_config(*, truck_id: str, workdir: Path, mqtt_host: str, mqtt_port: int,
                 gps_port: str | None, can_channel: str | None, can_interface: str = "slcan",
                 prefix: str = "fleet", protocol: str = "5", encoding: str = "json",
                 extra: str = "") -> str:
    """The TOML text of a simulated truck's config."""
    lines = [f"truck_id = {_q(truck_id)}", ""]
    if gps_port:
        lines += ["[gps]", f"port = {_q(gps_port)}", "baudrate = 9600", ""]
    if can_channel:
        lines += ["[can]", f"interface = {_q(can_interface)}", f"channel = {_q(can_channel)}",
                  "bitrate = 250000", ""]
    lines += [
        "[buffer]", f"path = {_q(str(workdir / 'buffer.db'))}", "",
        "[mqtt]", f"host = {_q(mqtt_host)}", f"port = {mqtt_port}",
        f"topic_prefix = {_q(prefix)}", f"protocol = {_q(protocol)}",
        f"encoding = {_q(encoding)}", "keepalive_s = 10", "reconnect_min_s = 0.2",
        "reconnect_max_s = 2.0", "status_interval_s = 2.0", "",
        "[metrics]", f"state_file = {_q(str(workdir / 'state.json'))}", "interval_s = 1.0", "",
        "[log]", 'level = "info"', "",
    ]
    return "\n".join(lines) + extra


class GatewayProcess:
    """One ``truckgw run -c FILE`` child process."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "truck.toml"
        self.config_path.write_text(config_text)
        self.log_path = self.workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the agent (its output goes to ``gateway.log``)."""
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config_path)],
                stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
            )
        log.info("gateway started, pid %d, config %s", self.proc.pid, self.config_path)

    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once it ended."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("gateway did not stop in %.0f s: killing it", timeout)
                proc.kill()
                proc.wait(timeout=5)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (crash simulation)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def state(self) -> dict[str, Any]:
        """The agent's health snapshot (``{}`` until it wrote one)."""
        try:
            obj = json.loads((self.workdir / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def log_tail(self, n: int = 30) -> str:
        """Last lines of the agent's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
