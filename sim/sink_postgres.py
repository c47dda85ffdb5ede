"""Run a private PostgreSQL (the Debian ``postgresql-15`` binaries) for the sink's tests,
benchmarks and demo: ``initdb`` into a temporary folder, ``pg_ctl start`` on a free
loopback port, stopped by its postmaster pid.

PostgreSQL refuses to run as root, so when started as root the cluster belongs to an
unprivileged user (``nobody`` by default) and the tools run through ``runuser -u USER --``.
Missing binaries raise :class:`PostgresUnavailableError` with the install command, so a
test run without PostgreSQL fails loudly instead of skipping.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from config.errors import GatewayError
from sim.broker import free_port

INSTALL_HINT = "install it with: sudo apt-get install -y postgresql-15"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class PostgresUnavailableError(GatewayError):
    """PostgreSQL is not installed or did not start."""


def find_pg_bin(name: str) -> str:
    """Path of a PostgreSQL server tool (PATH, then /usr/lib/postgresql/*/bin)."""
    found = shutil.which(name)
    if found:
        return found
    for cand in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return cand
    raise PostgresUnavailableError(f"{name} not found on PATH or in /usr/lib/postgresql; "
                                   f"{INSTALL_HINT}")


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, listening on ``127.0.0.1:port``.

    ``fast=True`` turns off fsync and synchronous commit (tests: a clean stop still
    writes everything); the benchmark keeps the durable defaults. ``start()``/``stop()``
    may be called repeatedly to simulate outages; the port and the data stay.
    """

    def __init__(self, *, user: str = "nobody", port: int | None = None,
                 fast: bool = False) -> None:
        self.initdb, self.pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.fast = fast
        self.as_root = os.geteuid() == 0
        self.user = user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        # /tmp itself: pytest's tmp_path is private to root, which the cluster user cannot enter
        self.root = Path(tempfile.mkdtemp(prefix="truckgw-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        if self.as_root:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._initialised = False

    def __repr__(self) -> str:
        return f"PostgresServer({self.host}:{self.port}, running={self.running})"

    @property
    def url(self) -> str:
        """The libpq URL of the ``postgres`` database as superuser ``postgres``."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        cmd = [*(["runuser", "-u", self.user, "--"] if self.as_root else []), *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                              check=False, cwd=self.root)
        if proc.returncode != 0:
            raise PostgresUnavailableError(
                f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]} "
                f"{self.log_tail()}")

    def start(self) -> None:
        """initdb (first time), then start and wait until it accepts connections."""
        if self.running:
            return
        if not self._initialised:
            self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--no-locale", "-E", "UTF8", "--no-sync")
            self._initialised = True
        opts = [f"-p {self.port}", f"-c listen_addresses={self.host}",
                f"-c unix_socket_directories={self.root}", "-c max_connections=50"]
        if self.fast:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log_path), "-w",
                  "-t", str(int(START_TIMEOUT_S)), "-o", " ".join(opts), "start")

    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    @property
    def running(self) -> bool:
        return self.pid() is not None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), immediate after a timeout; waits."""
        pid = self.pid()
        if pid is None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(0.05)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop and remove the cluster."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours would look alive: pg_ctl daemonises, so it is never ours
    return True
