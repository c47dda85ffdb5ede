"""The simulator shell on real ptys: faults on demand as the gateway would see them."""

from __future__ import annotations

import asyncio
import os
import select
import time
from pathlib import Path

from drivers.nmea import ChecksumError, Gga, NmeaFramer, Rmc, Sentence, parse_sentence
from sim.faults import FaultPlan
from sim.ports import PtyPort
from sim.route import load_route
from sim.runner import TruckSim
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import Truck, TruckParams


class Reader:
    """Reads the slave side of a pty link raw (reopens when the link comes back)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.fd = -1
        self.data = bytearray()
        self.hangups = 0

    def poll(self) -> None:
        if self.fd < 0:
            if not self.link.exists():
                return
            self.fd = os.open(self.link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        r, _, _ = select.select([self.fd], [], [], 0)
        if r:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:  # hang-up: the port vanished
                os.close(self.fd)
                self.fd = -1
                self.hangups += 1
            self.data += chunk

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


async def run_with(tmp_path: Path, faults: list[str], seconds: float,
                   can: bool = False) -> tuple[TruckSim, Reader]:
    gps = PtyPort(tmp_path / "gps0")
    adapter = SlcanPtyAdapter(tmp_path / "can0") if can else None
    truck = Truck(load_route("a9-munich-nuremberg"), seed=1,
                  params=TruckParams(start_parked_s=0, warmup_s=0, fault_every_s=0))
    sim = TruckSim(truck, gps=gps, can=adapter, gps_hz=10, speed=5,
                   faults=FaultPlan.parse(faults))
    reader = Reader(gps.link)
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            reader.poll()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(read(), name="reader")
    try:
        await sim.run(seconds)
    finally:
        stop.set()
        await task
        reader.close()
        sim.close()
    return sim, reader


def parsed(data: bytes) -> tuple[list[Sentence], int]:
    ok: list[Sentence] = []
    bad = 0
    for line in NmeaFramer().feed(data):
        try:
            ok.append(parse_sentence(line))
        except ChecksumError:
            bad += 1
    return ok, bad


async def test_tunnel_removes_the_fix_then_it_returns(tmp_path: Path) -> None:
    _sim, reader = await run_with(tmp_path, ["tunnel@1+1"], 3.0)
    ok, bad = parsed(bytes(reader.data))
    assert bad == 0
    rmc = [s for s in ok if isinstance(s, Rmc)]
    flags = [s.valid for s in rmc]
    assert flags[0] and flags[-1] and not all(flags)
    first_invalid = flags.index(False)
    assert True in flags[first_invalid:]  # the fix comes back after the tunnel
    assert all(s.lat is None for s in rmc if not s.valid)
    assert any(isinstance(s, Gga) and s.quality == 0 for s in ok)


async def test_garbage_and_bad_checksums_are_injected(tmp_path: Path) -> None:
    _sim, reader = await run_with(tmp_path, ["garbage@0.5+1", "badsum@0.5+1"], 2.0)
    ok, bad = parsed(bytes(reader.data))
    assert b"\xb5\x62" in reader.data
    assert bad >= 5
    assert ok  # good sentences before and after


async def test_gps_port_vanishes_and_comes_back(tmp_path: Path) -> None:
    sim, reader = await run_with(tmp_path, ["gps-vanish@1+1"], 3.0)
    assert reader.hangups >= 1
    assert (tmp_path / "gps0").exists() is False  # closed at the end
    ok, _ = parsed(bytes(reader.data))
    assert sum(isinstance(s, Rmc) for s in ok) >= 15  # epochs before and after (10 Hz)
    assert sim.epochs >= 20


async def test_can_silence_and_dtc_on_demand(tmp_path: Path) -> None:
    t0 = time.monotonic()
    sim, _ = await run_with(tmp_path, ["can-silence@0+10", "dtc@0.2"], 1.0, can=True)
    assert time.monotonic() - t0 < 10
    assert sim.frames == 0  # silent bus: nothing reached the adapter
    assert len(sim.truck.state.dtcs) == 3


def link_exists(path: str) -> bool:
    return os.path.lexists(path)


async def test_can_adapter_vanishes_and_returns(tmp_path: Path) -> None:
    gps = PtyPort(tmp_path / "gps0")
    adapter = SlcanPtyAdapter(tmp_path / "can0")
    truck = Truck(load_route("hamburg-port-loop"), seed=1,
                  params=TruckParams(start_parked_s=0, warmup_s=0, fault_every_s=0))
    sim = TruckSim(truck, gps=gps, can=adapter, faults=FaultPlan.parse(["can-vanish@0.5+1"]))
    first = os.readlink(adapter.channel)
    seen_gone = False

    async def watch() -> None:
        nonlocal seen_gone
        for _ in range(300):
            if not link_exists(adapter.channel):
                seen_gone = True
                return
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch(), name="watch")
    try:
        await sim.run(2.0)
        await watcher
        assert seen_gone
        assert link_exists(adapter.channel)  # back, as a new pty
        assert adapter.device.state.value == "closed"  # the host must open it again
        assert os.readlink(adapter.channel).startswith("/dev/pts/") and first
    finally:
        sim.close()
