"""Run a private Mosquitto broker on a free loopback port (tests, demo, benchmarks).

The broker is a real ``mosquitto`` process with a config written to a temporary
folder. A missing ``mosquitto`` binary raises :class:`BrokerUnavailableError` with the
command that installs it, so a test run without a broker fails loudly instead of
skipping.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from config.errors import GatewayError

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: sudo apt-get install -y mosquitto"
START_TIMEOUT_S = 10.0


class BrokerUnavailableError(GatewayError):
    """Mosquitto is not installed or did not start."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary (PATH, then /usr/sbin), or raise with an install hint."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerUnavailableError(f"mosquitto not found on PATH or in /usr/sbin; {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """Stop a child we started: SIGTERM, SIGKILL once ``grace_s`` passed (None or an
    exited child: nothing to do)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Mosquitto:
    """A Mosquitto process bound to ``host:port`` on loopback.

    ``extra_conf`` lines are appended to the generated listener block (ACLs, TLS,
    message_size_limit, ...). ``start()``/``stop()`` may be called repeatedly to
    simulate outages; the port stays the same.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_conf: Iterable[str] = (),
        workdir: Path | None = None,
        allow_anonymous: bool = True,
    ) -> None:
        self.binary = find_mosquitto()
        self.host = host
        self.port = port or free_port(host)
        self._own_tmp = None if workdir else tempfile.TemporaryDirectory(prefix="truckgw-mosq-")
        self.workdir = workdir or Path(self._own_tmp.name)  # type: ignore[union-attr]
        self.extra_conf = list(extra_conf)
        self.allow_anonymous = allow_anonymous
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            *self.extra_conf,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.write_conf()
        logf = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
            )
        finally:
            logf.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailableError(
                    f"mosquitto exited with {self.proc.returncode} at start: {self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.2
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerUnavailableError(f"mosquitto did not listen on {self.host}:{self.port}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.proc = self.proc, None
        terminate(proc, 5.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {self.host}:{self.port} {state}>"
