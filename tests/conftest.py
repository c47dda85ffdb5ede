"""Shared fixtures: a real Mosquitto broker and leak checks.

A missing broker is a failure with an install hint, never a skip.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from sim.broker import BrokerUnavailableError, Mosquitto
from tests.service.install_env import Sandbox, sandbox_root

LEAK_GRACE_S = 3.0
#: user property under which the chaos suite reports its one-line summary
CHAOS_SUMMARY_KEY = "chaos_summary"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print each chaos run's summary line at the end (also under xdist, whose workers
    send user properties back to the controller, where only this conftest is loaded)."""
    lines = []
    for key in ("passed", "failed"):
        for report in terminalreporter.stats.get(key, []):
            for name, value in getattr(report, "user_properties", []):
                if name == CHAOS_SUMMARY_KEY:
                    lines.append(f"{report.nodeid}: {value}")
    if lines:
        terminalreporter.section("chaos summary")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running Mosquitto on a free loopback port; ``.host``/``.port``; stop/start for outages."""
    yield from _broker(tmp_path)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Build brokers with extra config lines (ACL, TLS, limits); all are stopped at teardown."""
    made: list[Mosquitto] = []

    def make(extra_conf: list[str] | None = None, *, start: bool = True, **kw: object) -> Mosquitto:
        workdir = tmp_path / f"mosq{len(made)}"
        workdir.mkdir()
        try:
            broker = Mosquitto(extra_conf=extra_conf or [], workdir=workdir, **kw)  # type: ignore[arg-type]
        except BrokerUnavailableError as exc:
            pytest.fail(str(exc), pytrace=False)
        made.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for b in made:
        b.close()


def _broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "mosq"
    workdir.mkdir()
    try:
        broker = Mosquitto(workdir=workdir)
        broker.start()
    except BrokerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads behind (paho loops, aiosqlite, serial readers)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"test leaked threads: {[t.name for t in leaked]}", pytrace=False)


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves tasks running on its event loop."""
    before = asyncio.all_tasks()
    yield
    # pytest-asyncio runs setup and teardown of an async fixture in different tasks
    me = asyncio.current_task()
    leaked: set[asyncio.Task[object]] = set()
    for _ in range(20):
        leaked = {
            t for t in asyncio.all_tasks() if t is not me and t not in before and not t.done()
        }
        if not leaked:
            return
        await asyncio.sleep(0.05)
    names = sorted(t.get_name() for t in leaked)
    for t in leaked:
        t.cancel()
    pytest.fail(f"test leaked asyncio tasks: {names}", pytrace=False)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A throwaway root for systemd/install.sh (tests/service/install_env.py)."""
    yield from sandbox_root()
