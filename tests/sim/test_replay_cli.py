"""Replay parsing and playback over real ptys; the CLI's help on every command."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import can
import pytest
import serial

from gateway.cli import build_parser
from sim.ports import PtyPort
from sim.replay import CandumpLog, nmea_epochs, parse_candump, replay
from sim.slcan_adapter import SlcanPtyAdapter

DATA = Path(__file__).resolve().parents[1] / "data"
NMEA_LOG = DATA / "nmea" / "neo-m8n.log"
CAN_LOG = DATA / "j1939" / "css_j1939_truck.log"


def test_nmea_log_splits_into_epochs_verbatim() -> None:
    raw = NMEA_LOG.read_bytes()
    epochs = nmea_epochs(raw)
    rmc_count = raw.count(b"RMC,")
    assert abs(len(epochs) - rmc_count) <= 1
    body = b"".join(epochs)
    assert b"# Name" not in body
    assert body.count(b"$") == sum(1 for x in raw.splitlines() if not x.startswith(b"#")
                                   for _ in range(x.count(b"$")))


def test_candump_log_parses_every_frame() -> None:
    log = parse_candump(CAN_LOG.read_bytes())
    assert len(log.frames) == 45571
    assert log.skipped == 0
    assert 120 < log.duration_s < 135
    ts, first = log.frames[0]
    assert ts == pytest.approx(1635188455.020850)
    assert first.arbitration_id == 0x18F00E00 and first.data == bytes.fromhex("821639C4FFFFFFFF")
    assert parse_candump(b"(1.0) can0 123#00\n(x) junk\n").skipped == 2


async def test_replay_reaches_the_gateway_side_of_the_ptys(tmp_path: Path) -> None:
    full = parse_candump(CAN_LOG.read_bytes())
    dump = CandumpLog(full.frames[:600], 0)  # ~1.7 s of bus time
    epochs = nmea_epochs(NMEA_LOG.read_bytes())[:5]
    gps = PtyPort(tmp_path / "gps0")
    adapter = SlcanPtyAdapter(tmp_path / "can0")
    reader = serial.Serial(str(gps.link), 9600, timeout=0)
    bus = can.Bus(interface="slcan", channel=adapter.channel, bitrate=250000,
                  sleep_after_open=0)
    try:
        adapter.poll()
        received: list[can.Message] = []

        def drain() -> None:
            deadline = time.monotonic() + 30
            while len(received) < 600 and time.monotonic() < deadline:
                msg = bus.recv(0.2)
                if msg is not None:
                    received.append(msg)

        drainer = threading.Thread(target=drain, name="drain")
        drainer.start()
        try:
            sent = await replay(epochs=epochs, candump=dump, gps=gps, can=adapter, speed=4.0)
        finally:
            drainer.join(40)
        nmea = reader.read(100_000)
    finally:
        reader.close()
        bus.shutdown()
        adapter.close()
        gps.close()
    assert sent == {"epochs": 5, "frames": 600}
    assert nmea == b"".join(epochs)
    assert [(m.arbitration_id, bytes(m.data)) for m in received] == [
        (f.arbitration_id, f.data) for _, f in dump.frames]


def all_parsers() -> list[tuple[str, ...]]:
    return [("sim",), ("sim", "truck"), ("sim", "replay"), ("sim", "sink"), ("sim", "fleet"),
            ("demo",)]


@pytest.mark.parametrize("argv", all_parsers())
def test_every_command_has_help(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
                                ) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: truckgw " + " ".join(argv))
