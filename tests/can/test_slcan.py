"""BufferedSlcanBus on a real pseudo-terminal: same frames as python-can's slcan, fewer reads."""

from __future__ import annotations

import contextlib
import os
import tty
from collections.abc import Iterator

import can
import pytest

from drivers.slcan import MAX_LINE, BufferedSlcanBus


@pytest.fixture
def pty_bus() -> Iterator[tuple[int, BufferedSlcanBus]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    bus = BufferedSlcanBus(os.ttyname(slave), bitrate=250000, listen_only=True,
                           sleep_after_open=0)
    try:
        os.read(master, 1024)  # the open / bitrate commands
        yield master, bus
    finally:
        bus.shutdown()
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def recv_all(bus: can.BusABC, n: int) -> list[can.Message]:
    out = []
    for _ in range(n + 20):  # bounded: a few empty polls at most
        msg = bus.recv(timeout=0.5)
        if msg is not None:
            out.append(msg)
        if len(out) == n:
            break
    return out


def test_many_frames_in_one_write_and_split_frames(pty_bus: tuple[int, BufferedSlcanBus]) -> None:
    master, bus = pty_bus
    lines = b"".join(b"T0CF004008F07D8A5E1400F0%02X\r" % i for i in range(50))
    os.write(master, b"\r" + lines[:1000])  # a command ack, then frames cut mid-line
    os.write(master, lines[1000:])
    got = recv_all(bus, 50)
    assert [m.data[-1] for m in got] == list(range(50))
    assert all(m.arbitration_id == 0x0CF00400 and m.is_extended_id for m in got)


def test_error_bell_and_garbage_do_not_stick(pty_bus: tuple[int, BufferedSlcanBus]) -> None:
    master, bus = pty_bus
    os.write(master, b"\a")  # adapter error reply
    os.write(master, b"z" * (MAX_LINE + 100))  # noise without a terminator
    os.write(master, b"\rTzz\rT18FEF1\rx\rT18FEF1008F7004B10FFFFFFFF\r")  # malformed lines
    got = recv_all(bus, 1)
    assert [bytes(m.data).hex() for m in got] == ["f7004b10ffffffff"]
    assert len(bus._buffer) < MAX_LINE
    assert bus.malformed == 3


def test_idle_port_returns_none(pty_bus: tuple[int, BufferedSlcanBus]) -> None:
    _, bus = pty_bus
    assert bus.recv(timeout=0.1) is None
