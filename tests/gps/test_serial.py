"""GpsDriver on real pseudo-terminals: split streams, garbage, autodetect, unplug.

The driver hands epochs on; :class:`gateway.ingest.Ingest` makes the events, as in the
agent (``pipe``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config import GpsConfig, GpsSampling
from config.events import Event
from drivers.gps import GpsDriver, GpsState
from drivers.j1939 import SignalUpdate
from drivers.nmea_epoch import NmeaDecoder
from gateway.clock import Clock
from gateway.ingest import Ingest
from tests.gps.fake_receiver import FakeReceiver
from tests.gps.nmea_util import epoch

EVERY_FIX = GpsSampling(0, 0, 0, 0, 0, 0, 5, mode="thresholds")
UBX = bytes.fromhex("b562 0107 5c00") + bytes(range(92)) + b"\x12\x34"
FAST: dict[str, Any] = {"idle_flush_s": 0.1, "silence_s": 0.5, "detect_window_s": 0.6,
        "retry_min_s": 0.05, "retry_max_s": 0.2}


def pipe(cfg: GpsConfig, sink: Callable[[Event], object], clock: Clock | None = None,
         **kw: Any) -> tuple[GpsDriver, Ingest]:
    """A driver whose epochs go through an :class:`Ingest` to ``sink``."""
    ingest = Ingest(sink, clock or Clock(), gps=cfg.sampling)
    return GpsDriver(cfg, ingest.on_fix, **kw), ingest


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(driver: GpsDriver) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(driver.run(), name="gps-driver")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert driver.state is GpsState.CLOSED
        assert not [t for t in threading.enumerate() if t.name.startswith("gps-reader")]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[FakeReceiver]:
    rx = FakeReceiver(tmp_path / "gps0")
    yield rx
    rx.unplug()


def drive_stream(n: int, start_s: int = 0) -> bytes:
    return b"".join(
        epoch(f"12{(start_s + i) // 60:02d}{(start_s + i) % 60:02d}.00", 48.1 + i * 1e-4,
              11.5 + i * 2e-4, speed_kn=10 + i, course=float(i * 7 % 360), date="150626")
        for i in range(n)
    )


async def test_stream_split_at_random_boundaries_with_garbage(receiver: FakeReceiver) -> None:
    clean = drive_stream(40)
    pure = NmeaDecoder()
    expected = [f.fields() for f in pure.feed(clean) + pure.flush()]
    assert len(expected) == 40
    rng = random.Random(5)
    noisy = bytearray(b"7,N,01131.000,E*1F\r\n")  # port opened mid-line
    for line in clean.splitlines(keepends=True):
        noisy += line
        if rng.random() < 0.3:
            noisy += rng.choice([UBX, bytes(rng.randrange(1, 256) for _ in range(40)).replace(
                b"$", b"#"), b"$GPGGA,garbage*00\r\n", b"$$"])
    receiver.plug()
    events: list[Event] = []
    # a generous idle flush: a loaded machine must not split an epoch between writes
    driver, _ = pipe(GpsConfig(port=str(receiver.path), baudrate=9600, sampling=EVERY_FIX),
                     events.append, **{**FAST, "idle_flush_s": 0.5})
    async with running(driver):
        await wait_until(lambda: driver.state is GpsState.RECEIVING)
        i = 0
        while i < len(noisy):
            n = rng.randint(1, 50)
            await receiver.write(bytes(noisy[i : i + n]))
            i += n
            await asyncio.sleep(0.001 if rng.random() < 0.5 else 0)
        await wait_until(lambda: len(events) >= 40)
    assert [dict(e.fields) for e in events] == expected
    assert all(e.type == "gps" for e in events)
    assert events[0].ts_ms == 1781524800000  # 2026-06-15T12:00:00Z, from the fix itself
    st = driver.stats()
    assert st.checksum_errors and st.dropped_bytes
    assert st.fixes == 40
    assert st.state is GpsState.CLOSED


async def test_baud_autodetect_locks_on_the_rate_that_talks(receiver: FakeReceiver) -> None:
    receiver.plug()
    events: list[Event] = []
    driver, _ = pipe(GpsConfig(port=str(receiver.path), baudrate="auto", sampling=EVERY_FIX),
                     events.append, **FAST)
    rng = random.Random(3)
    seen_rates: set[int] = set()
    good = [termios.B38400]

    async def talk() -> None:
        for i in range(600):
            rate = receiver.baudrate()
            seen_rates.add(rate)
            if rate == good[0]:
                receiver.write_nowait(drive_stream(1, i))
            else:  # what a receiver at another rate looks like: noise, a stray '$'
                receiver.write_nowait(bytes(rng.randrange(256) for _ in range(120)))
            await asyncio.sleep(0.05)

    async with running(driver):
        talker = asyncio.create_task(talk())
        try:
            await wait_until(lambda: len(events) >= 3)
            assert driver.stats().baudrate == 38400
            assert {termios.B4800, termios.B9600, termios.B38400} <= seen_rates
            # the receiver is reconfigured to 9600 baud: garbage, then a new lock
            good[0] = termios.B9600
            await wait_until(lambda: driver.stats().baudrate == 9600, timeout=20)
            before = len(events)
            await wait_until(lambda: len(events) >= before + 3)
        finally:
            talker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talker
    assert all(e.fields["fix"] == 3 for e in events)


async def test_unplug_and_replug_recovers_and_logs_once(
    receiver: FakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.plug()
    events: list[Event] = []
    driver, _ = pipe(GpsConfig(port=str(receiver.path), baudrate=9600, sampling=EVERY_FIX),
                     events.append, **FAST)
    states: list[GpsState] = []

    async def talk() -> None:
        i = 0
        while True:
            receiver.write_nowait(drive_stream(1, i))
            if not states or states[-1] is not driver.state:
                states.append(driver.state)
            i += 1
            await asyncio.sleep(0.05)

    caplog.set_level(logging.INFO, logger="drivers.gps")
    async with running(driver):
        talker = asyncio.create_task(talk())
        try:
            await wait_until(lambda: len(events) >= 3)
            receiver.unplug()
            await wait_until(lambda: driver.state is GpsState.UNAVAILABLE)
            failures = driver.stats().open_failures
            assert isinstance(failures, int)
            await wait_until(lambda: driver.stats().open_failures >= failures + 3)
            before = len(events)
            receiver.plug()
            await wait_until(lambda: len(events) >= before + 3)
        finally:
            talker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talker
    assert driver.stats().opens == 2
    assert GpsState.UNAVAILABLE in states
    assert states[-1] is GpsState.FIX
    unavailable_logs = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(unavailable_logs) == 1
    assert unavailable_logs[0].levelno == logging.WARNING


async def test_missing_port_at_start_is_retried(tmp_path: Path) -> None:
    rx = FakeReceiver(tmp_path / "gps0")
    events: list[Event] = []
    driver, _ = pipe(GpsConfig(port=str(rx.path), baudrate=9600, sampling=EVERY_FIX),
                     events.append, **FAST)
    try:
        async with running(driver):
            await wait_until(lambda: driver.stats().open_failures >= 2)
            assert driver.state is GpsState.UNAVAILABLE
            rx.plug()
            await wait_until(lambda: driver.state is GpsState.RECEIVING)
            await rx.write(drive_stream(3))
            await wait_until(lambda: len(events) == 3)
    finally:
        rx.unplug()


async def test_silent_port_is_reported(receiver: FakeReceiver) -> None:
    receiver.plug()
    driver, _ = pipe(GpsConfig(port=str(receiver.path), baudrate=4800, sampling=EVERY_FIX),
                     lambda e: None, **FAST)
    async with running(driver):
        await wait_until(lambda: driver.state is GpsState.SILENT)
        await receiver.write(drive_stream(2))
        await wait_until(lambda: driver.state is GpsState.FIX)
    assert repr(GpsState.SILENT) == "GpsState.SILENT"


async def test_clock_syncs_from_gps_time(receiver: FakeReceiver) -> None:
    receiver.plug()
    got: list[Event] = []
    clock = Clock(wall=lambda: 0.0)  # a Pi that believes it is 1970
    # what this test is about is the clock: on a loaded machine (CI saw it once) a stall
    # longer than the short idle flush splits an epoch into two fixes, and the port goes
    # "silent" before the write; neither matters here, so both are slow
    driver, _ = pipe(GpsConfig(port=str(receiver.path), baudrate=9600, sampling=EVERY_FIX),
                     got.append, clock, **{**FAST, "silence_s": 60.0, "idle_flush_s": 1.0})
    async with running(driver):
        await wait_until(lambda: driver.state is GpsState.RECEIVING)
        await receiver.write(drive_stream(5))
        await wait_until(lambda: len(got) >= 5, 30.0)
    assert clock.synced
    # the clock now follows GPS time (2026-06-15T12:00:0x), not the 1970 system clock
    assert abs(clock.now_ms() - 1781524800000) < 60_000


async def test_moving_hint_decides_moving_over_gps_speed(receiver: FakeReceiver) -> None:
    """A CAN wheel speed overrides a parked GPS's speed of 0; a stale one says nothing."""
    receiver.plug()
    got: list[Event] = []
    mono = {"now": 1000.0}
    sampling = GpsSampling(mode="thresholds", min_interval_s=0, max_interval_s=30,
                           min_distance_m=50,
                           min_heading_change_deg=10, min_speed_change_kmh=10,
                           stopped_interval_s=300, moving_speed_kmh=5)
    ingest = Ingest(got.append, Clock(), gps=sampling, mono=lambda: mono["now"])
    driver = GpsDriver(GpsConfig(port=str(receiver.path), baudrate=9600, sampling=sampling),
                       ingest.on_fix, **FAST)

    def points() -> list[Event]:
        return [e for e in got if e.type == "gps"]

    def wheels(kmh: float) -> None:
        ingest.on_can([SignalUpdate(0, 0xFEF1, {"vehicle_speed_kmh": kmh})])

    def parked(second: int) -> bytes:
        return epoch(f"1200{second:02d}.00", 48.1, 11.5, speed_kn=0.0, course=0.0,
                     date="150626")

    async with running(driver):
        await wait_until(lambda: driver.state is GpsState.RECEIVING)
        wheels(0.0)
        await receiver.write(parked(0) + parked(1))
        await wait_until(lambda: ingest.stats().fixes == 2)
        assert len(points()) == 1  # the first point; parked and stopped: nothing more
        wheels(12.0)  # the wheels turn although the GPS still says 0 km/h
        await receiver.write(parked(2))
        await wait_until(lambda: ingest.stats().fixes == 3)
        assert len(points()) == 2  # recorded as the start of a movement
        mono["now"] += 10.0  # the wheel speed is stale: GPS speed decides again (stopped)
        await receiver.write(parked(3))
        await wait_until(lambda: ingest.stats().fixes == 4)
        assert len(points()) == 3  # recorded as the stop
