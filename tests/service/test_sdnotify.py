"""sd_notify over a real AF_UNIX datagram socket (path and abstract names)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier, watchdog_interval_s


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_path_socket_receives_ready_watchdog_and_status(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _listener(path) as sock:
        n = Notifier.from_env({"NOTIFY_SOCKET": path})
        assert n.enabled
        assert n.ready(status="buffer open")
        assert sock.recv(4096) == b"READY=1\nSTATUS=buffer open"
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert n.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        assert n.status("line one\nline two")
        assert sock.recv(4096) == b"STATUS=line one"
        n.close()
        assert not n.watchdog()
        assert not n.enabled


def test_abstract_socket(tmp_path: Path) -> None:
    name = f"truckgw-test-{os.getpid()}-{tmp_path.name}"
    with _listener("\0" + name) as sock:
        n = Notifier(f"@{name}")
        try:
            assert n.watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"
        finally:
            n.close()


def test_without_notify_socket_everything_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    n.close()


def test_relative_address_is_ignored() -> None:
    n = Notifier("relative/path")
    assert not n.enabled


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    try:
        assert not n.watchdog()
        assert not n.watchdog()  # logged once, never raised
    finally:
        n.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env) == expected
