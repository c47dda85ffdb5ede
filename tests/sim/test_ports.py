"""Real pseudo-terminals: NMEA port, the slcan adapter opened by python-can, vanishing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import can
import serial

from sim.j1939_out import Frame, can_id
from sim.ports import PtyPort
from sim.slcan_adapter import ChannelState, SlcanDevice, SlcanPtyAdapter, frame_line


def read_until(port: serial.Serial, want: bytes, limit_s: float = 5.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + limit_s
    while want not in buf and time.monotonic() < deadline:
        buf += port.read(4096)
    return buf


def test_slcan_device_protocol() -> None:
    seen: list[Frame] = []
    dev = SlcanDevice(seen.append)
    assert dev.feed(b"V\r") == b"V1013\r"
    assert dev.feed(b"C\rS5\r") == b"\r\r"
    assert dev.bitrate == 250000
    assert dev.feed(b"S9\r") == b"\a"
    assert dev.feed(b"T18EA00F9") == b""  # incomplete: waits for CR
    assert dev.feed(b"3E1FE00\r") == b"\a"  # transmit on a closed channel
    assert dev.feed(b"O\r") == b"\r"
    assert dev.state is ChannelState.OPEN
    assert dev.feed(b"S6\r") == b"\a"  # bitrate only while closed
    assert dev.feed(b"T18EA00F93E1FE00\r") == b"Z\r"
    assert seen == [Frame(0x18EA00F9, bytes.fromhex("E1FE00"))]
    assert dev.feed(b"Txyz\r") == b"\a"
    assert dev.feed(b"x" * 100) == b""  # garbage without CR is dropped, bounded
    assert dev.feed(b"\rL\r").endswith(b"\r")
    assert dev.is_open
    assert repr(dev.state) == "<ChannelState.LISTEN_ONLY>"
    assert frame_line(Frame(0x0CF00400, bytes(range(8)))) == b"T0CF0040080001020304050607\r"


def test_python_can_slcan_bus_opens_on_the_adapter_and_receives(tmp_path: Path) -> None:
    adapter = SlcanPtyAdapter(tmp_path / "can0")
    requests: list[Frame] = []
    adapter.device.on_transmit = requests.append
    bus = can.Bus(interface="slcan", channel=adapter.channel, bitrate=250000,
                  sleep_after_open=0)
    try:
        adapter.poll()
        assert adapter.device.is_open
        assert adapter.device.bitrate == 250000
        frames = [Frame(can_id(3, 61444, 0), bytes([0xF0, 125, 125, 0x40, 0x2D, 0, 0xFF, 125])),
                  Frame(can_id(6, 65265, 0), bytes.fromhex("F3004FCF0000FFFF"))]
        adapter.send(frames)
        got: list[can.Message] = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            msg = bus.recv(timeout=0.2)
            if msg is not None:
                got.append(msg)
        assert [(m.arbitration_id, bytes(m.data), m.is_extended_id) for m in got] == [
            (f.arbitration_id, f.data, True) for f in frames]
        bus.send(can.Message(arbitration_id=0x18EA00F9, data=b"\xe1\xfe\x00",
                             is_extended_id=True))
        deadline = time.monotonic() + 5
        while not requests and time.monotonic() < deadline:
            adapter.poll()
            time.sleep(0.01)
        assert requests == [Frame(0x18EA00F9, b"\xe1\xfe\x00")]
    finally:
        bus.shutdown()
        adapter.close()


def test_frames_are_not_forwarded_before_the_channel_opens(tmp_path: Path) -> None:
    adapter = SlcanPtyAdapter(tmp_path / "can0")
    try:
        adapter.send([Frame(can_id(3, 61444, 0), bytes(8))])
        assert adapter.dropped == 1
    finally:
        adapter.close()


def test_pty_port_vanishes_and_returns_under_the_same_link(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "gps0")
    first = os.readlink(port.link)
    reader = serial.Serial(str(port.link), 9600, timeout=0.1)
    try:
        port.write(b"$GNTXT,hello*00\r\n")
        assert b"hello" in read_until(reader, b"hello")
        port.vanish()
        assert not port.link.exists() and not port.present
        assert port.write(b"lost") == 0
    finally:
        reader.close()
    port.open()
    try:
        assert port.link.exists()
        reader = serial.Serial(str(port.link), 9600, timeout=0.1)
        try:
            port.write(b"again\r\n")
            assert b"again" in read_until(reader, b"again")
        finally:
            reader.close()
        assert os.readlink(port.link) != first or port.slave_name == first
    finally:
        port.close()


def test_unread_port_overruns_instead_of_blocking(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "gps0")
    try:
        for _ in range(2000):  # ~160 kB with nobody reading
            port.write(b"$GNRMC," + b"0" * 70 + b"\r\n")
        assert port.overruns >= 1
    finally:
        port.close()


def test_python_can_virtual_output_answers_requests() -> None:
    from sim.runner import PythonCanOutput  # noqa: PLC0415

    seen: list[Frame] = []
    out = PythonCanOutput("virtual", "sim-test-bus", on_request=seen.append)
    peer = can.Bus(interface="virtual", channel="sim-test-bus")
    try:
        out.send([Frame(can_id(3, 61444, 0), bytes(8))])
        msg = peer.recv(timeout=2)
        assert msg is not None and msg.arbitration_id == can_id(3, 61444, 0)
        assert msg.is_extended_id
        peer.send(can.Message(arbitration_id=0x18EA00F9, data=b"\xe5\xfe\x00",
                              is_extended_id=True))
        deadline = time.monotonic() + 2
        while not seen and time.monotonic() < deadline:
            out.poll()
            time.sleep(0.01)
        assert seen == [Frame(0x18EA00F9, b"\xe5\xfe\x00")]
        out.vanish()
        out.send([Frame(can_id(3, 61444, 0), bytes(8))])  # dropped while off the bus
        assert peer.recv(timeout=0.2) is None
        out.reappear()
        out.send([Frame(can_id(3, 61444, 0), bytes(8))])
        assert peer.recv(timeout=2) is not None
    finally:
        peer.shutdown()
        out.close()
