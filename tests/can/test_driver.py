"""CanDriver end to end on python-can's virtual bus and on slcan over a pseudo-terminal.

The driver hands decoded messages on; :class:`gateway.ingest.Ingest` turns them into
events, as in the agent (``pipe``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import select
import time
import tty
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import can
import pytest

from buffer.api import Lane
from buffer.store import SqliteStore
from config import BufferConfig, CanConfig, CanSampling
from config.events import Event, decode_body, encode_body
from drivers import can as can_driver
from drivers.can import CanDriver, CanState
from drivers.j1939 import Decoded
from gateway.clock import Clock
from gateway.ingest import Ingest

TRUCK_LOG = Path(__file__).parent.parent / "data" / "j1939" / "css_j1939_truck.log"
EVERY = CanSampling(min_interval_s=0, max_interval_s=0, dtc_refresh_s=0)


def pipe(cfg: CanConfig, sink: Callable[[Event], object], **kw: object) -> CanDriver:
    """A driver whose messages go through an :class:`Ingest` (``driver.ingest``) to ``sink``."""
    ingest = Ingest(sink, Clock(), can=cfg.sampling)
    driver = CanDriver(cfg, ingest.on_can, **kw)  # type: ignore[arg-type]  # bus_factory only
    driver.ingest = ingest  # type: ignore[attr-defined]  # test-only handle
    return driver


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``pred`` every 10 ms; fail the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110 - driver state has no event to wait on
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(driver: CanDriver) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(driver.run(), name="can-driver")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert driver.state is CanState.STOPPED


def frames() -> list[can.Message]:
    """EEC1, CCVS1 with not-available speed, and a 2-DTC DM1 over BAM."""
    def m(can_id: int, hexdata: str) -> can.Message:
        return can.Message(arbitration_id=can_id, data=bytes.fromhex(hexdata), is_extended_id=True)

    return [
        m(0x0CF00400, "F07D8A5E1400F084"),
        m(0x18FEF100, "F3FFFF00FFFFFFFF"),
        m(0x1CECFF00, "200E0002FFCAFE00"),
        m(0x1CEBFF00, "0154FF6E000401BE"),
        m(0x1CEBFF00, "02000F02FFFFFFFF"),
    ]


def vcfg(channel: str, **kw: object) -> CanConfig:
    base: dict[str, object] = {"interface": "virtual", "channel": channel, "sampling": EVERY}
    base.update(kw)
    return CanConfig(**base)  # type: ignore[arg-type]  # test-only keyword pass-through


async def test_virtual_bus_end_to_end_listen_only() -> None:
    channel = f"test-{uuid.uuid4()}"
    bodies: list[bytes] = []
    driver = pipe(vcfg(channel), lambda ev: bodies.append(encode_body(ev)))
    assert driver.state is CanState.STOPPED
    with can.Bus(interface="virtual", channel=channel) as tx:
        async with running(driver):
            await until(lambda: driver.state is CanState.ACTIVE)
            for msg in frames():
                tx.send(msg)
            await until(lambda: len(bodies) >= 3)
            stats = driver.stats()
            # listen-only: the gateway never transmits
            assert tx.recv(timeout=0.2) is None
    events = [decode_body(b) for b in bodies]
    engine = [e for e in events if e["type"] == "engine"]
    assert engine[0]["engine_speed_rpm"] == 651.75
    assert engine[0]["src"] == 0
    assert engine[-1]["parking_brake"] is False
    assert "vehicle_speed_kmh" not in engine[-1]  # FF FF: absent, never 255.996
    (dtc,) = [e for e in events if e["type"] == "dtc"]
    assert dtc["active"] == [{"spn": 110, "fmi": 4, "oc": 1}, {"spn": 190, "fmi": 15, "oc": 2}]
    assert dtc["lamps"] == {"mil": "on", "red_stop": "on", "amber_warning": "on", "protect": "off"}
    assert stats.frames_total == 5
    assert stats.tp_completed == 1
    assert stats.tp_errors == 0
    assert stats.requests_sent == 0
    assert stats.state == "active"


async def test_requests_when_not_listen_only() -> None:
    channel = f"test-{uuid.uuid4()}"
    driver = pipe(vcfg(channel, listen_only=False, request_interval_s=60.0), lambda ev: None)
    with can.Bus(interface="virtual", channel=channel) as rx:
        async with running(driver):
            got: list[can.Message] = []
            async with asyncio.timeout(5):
                while len(got) < 3:
                    msg = rx.recv(timeout=0)
                    if msg is None:
                        await asyncio.sleep(0.01)
                    else:
                        got.append(msg)
    assert [m.arbitration_id for m in got] == [0x18EAFFF9] * 3
    # engine hours, fuel counters, and Address Claimed (every ECU answers with its NAME)
    assert [bytes(m.data) for m in got] == [bytes.fromhex("E5FE00"), bytes.fromhex("E9FE00"),
                                           bytes.fromhex("00EE00")]


async def test_absent_adapter_is_retried_with_backoff_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = f"test-{uuid.uuid4()}"
    attempts: list[float] = []

    def factory() -> can.BusABC:
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise can.CanInitializationError("no such device")
        return can.Bus(interface="virtual", channel=channel)

    driver = pipe(vcfg(channel), lambda ev: None, bus_factory=factory)
    caplog.set_level(logging.INFO, logger="drivers.can")
    async with running(driver):
        await until(lambda: driver.state is CanState.BACKOFF)
        await until(lambda: driver.state is CanState.ACTIVE, timeout=10)
        stats = driver.stats()
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(g >= 0.2 for g in gaps)  # never a tight retry loop
    assert stats.reconnects == 3
    assert "CanInitializationError: no such device" in str(stats.last_error)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the same failure three times is logged once
    assert "no such device" in warnings[0].getMessage()


async def test_cancel_while_opening_leaves_no_thread() -> None:
    def slow_factory() -> can.BusABC:
        time.sleep(0.5)  # like slcan's sleep after opening the port
        return can.Bus(interface="virtual", channel=f"test-{uuid.uuid4()}")

    driver = pipe(vcfg("x"), lambda ev: None, bus_factory=slow_factory)
    async with running(driver):
        await asyncio.sleep(0.1)
        assert driver.state is CanState.CONNECTING
    # the autouse leak check fails the test if the reader thread or the bus survived


async def test_sink_failure_is_counted_not_fatal() -> None:
    channel = f"test-{uuid.uuid4()}"
    seen: list[list[Decoded]] = []

    def sink(batch: list[Decoded]) -> None:
        seen.append(batch)
        if len(seen) == 1:
            raise RuntimeError("ingest broken")

    driver = CanDriver(vcfg(channel), sink)
    with can.Bus(interface="virtual", channel=channel) as tx:
        async with running(driver):
            await until(lambda: driver.state is CanState.ACTIVE)
            tx.send(frames()[0])
            await until(lambda: len(seen) >= 1)
            tx.send(frames()[1])
            await until(lambda: len(seen) >= 2)
            assert driver.stats().sink_errors == 1
            assert driver.state is CanState.ACTIVE


async def test_submit_failure_is_counted_by_ingest_not_fatal() -> None:
    channel = f"test-{uuid.uuid4()}"
    seen: list[Event] = []

    def submit(ev: Event) -> None:
        seen.append(ev)
        if len(seen) == 1:
            raise RuntimeError("store closed")

    driver = pipe(vcfg(channel), submit)
    with can.Bus(interface="virtual", channel=channel) as tx:
        async with running(driver):
            await until(lambda: driver.state is CanState.ACTIVE)
            for msg in frames()[:2]:
                tx.send(msg)
            await until(lambda: len(seen) >= 2)
            assert driver.ingest.stats().submit_errors == 1  # type: ignore[attr-defined]
            assert driver.stats().sink_errors == 0
            assert driver.state is CanState.ACTIVE


# ------------------------------------------------------------------ slcan over a pty


class FakeSlcanAdapter:
    """Plays a USB slcan adapter on the master side of a pseudo-terminal."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.commands: list[str] = []
        self._buf = b""

    def pump(self) -> None:
        """Answer every complete command with CR (OK); non-blocking."""
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 1024)
            except OSError:
                return
            if not chunk:
                return
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\r")
            for line in lines:
                self.commands.append(line.decode())
                os.write(self.master, b"\r")

    def send(self, msg: can.Message) -> None:
        line = f"T{msg.arbitration_id:08X}{len(msg.data)}{bytes(msg.data).hex().upper()}\r"
        os.write(self.master, line.encode())

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.mark.slow
async def test_slcan_over_pty_end_to_end_and_unplug() -> None:
    adapter = FakeSlcanAdapter()
    cfg = CanConfig(interface="slcan", channel=adapter.path, bitrate=250000, sampling=EVERY)
    events: list[Event] = []
    driver = pipe(cfg, events.append)
    try:
        async with running(driver):
            loop = asyncio.get_running_loop()
            loop.add_reader(adapter.master, adapter.pump)
            try:
                # python-can's slcan sleeps 2 s after opening the port
                await until(lambda: driver.state is CanState.ACTIVE, timeout=10)
                await until(lambda: "L" in adapter.commands)
                for msg in frames():
                    adapter.send(msg)
                await until(lambda: any(e.type == "dtc" for e in events))
            finally:
                loop.remove_reader(adapter.master)
            assert "S5" in adapter.commands  # 250 kbit/s
            assert "L" in adapter.commands and "O" not in adapter.commands  # listen-only
            assert events[0].fields["engine_speed_rpm"] == 651.75
            assert driver.stats().frames_total == 5
            adapter.unplug()
            await until(lambda: driver.state is CanState.BACKOFF, timeout=10)
            assert "read failed" in str(driver.stats().last_error)
    finally:
        adapter.unplug()


# ------------------------------------------------------------------ into the real buffer


async def test_truck_log_over_virtual_bus_into_sqlite_buffer(tmp_path: Path) -> None:
    """Replay the first 3,000 frames of the real truck log through the driver into the store."""
    channel = f"test-{uuid.uuid4()}"
    with can.CanutilsLogReader(TRUCK_LOG) as reader:
        log_msgs = list(itertools.islice(reader, 3000))
    async with await SqliteStore.open(BufferConfig(path=tmp_path / "buf.db")) as store:
        driver = pipe(vcfg(channel, sampling=CanSampling(min_interval_s=0.2)), store.submit)
        with can.Bus(interface="virtual", channel=channel) as tx:
            async with running(driver):
                await until(lambda: driver.state is CanState.ACTIVE)
                for i, msg in enumerate(log_msgs):
                    tx.send(msg)
                    if i % 500 == 0:
                        await asyncio.sleep(0.05)  # let the driver and the store keep up
                await until(lambda: driver.stats().frames_total == len(log_msgs))
                stats = driver.stats()
                recorded = driver.ingest.stats()  # type: ignore[attr-defined]
        await store.flush()
        batch = await store.lease(Lane.BACKFILL, 10_000, 10_000_000)
    assert batch is not None
    events = [decode_body(e.body) for e in batch.events]
    kinds = Counter(e["type"] for e in events)
    assert kinds["dtc"] == 1
    assert kinds["engine"] >= 1
    assert kinds["engine"] == recorded.engine_events
    engine = [e for e in events if e["type"] == "engine"]
    assert all(600 < e["engine_speed_rpm"] < 700 for e in engine if "engine_speed_rpm" in e)
    (dtc,) = [e for e in events if e["type"] == "dtc"]
    assert {"spn": 980, "fmi": 9, "oc": 126} in dtc["active"]
    assert stats.decode_errors == 0
    assert stats.tp_errors == 0
    assert stats.dropped == 0


def test_state_repr_and_str() -> None:
    assert repr(CanState.BACKOFF) == "CanState.BACKOFF"
    assert str(CanState.ACTIVE) == "active"


async def test_silent_bus_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(can_driver, "SILENT_AFTER_S", 0.3)
    monkeypatch.setattr(can_driver, "TICK_S", 0.05)
    channel = f"test-{uuid.uuid4()}"
    events: list[Event] = []
    driver = pipe(vcfg(channel), events.append)
    with can.Bus(interface="virtual", channel=channel) as tx:
        async with running(driver):
            await until(lambda: driver.state is CanState.SILENT)  # opened, nothing heard
            tx.send(frames()[0])
            await until(lambda: driver.state is CanState.ACTIVE)
            await until(lambda: driver.state is CanState.SILENT)
            assert len(events) == 1


async def test_wheel_speed_for_the_moving_decision() -> None:
    """The latest CCVS wheel speed is offered to the GPS recording (absent when N/A)."""
    channel = f"test-{uuid.uuid4()}"
    driver = pipe(vcfg(channel), lambda ev: None)
    ingest: Ingest = driver.ingest  # type: ignore[attr-defined]
    with can.Bus(interface="virtual", channel=channel) as tx:
        async with running(driver):
            await until(lambda: driver.state is CanState.ACTIVE)
            assert ingest.wheel_speed_kmh() is None  # nothing heard yet
            tx.send(frames()[1])  # CCVS with FF FF: not available
            await until(lambda: driver.stats().frames_total == 1)
            assert ingest.wheel_speed_kmh() is None
            # CCVS 42.5 km/h: bytes 2-3 = 42.5 * 256 = 0x2A80, little-endian
            tx.send(can.Message(arbitration_id=0x18FEF100,
                                data=bytes.fromhex("F3802A00FFFFFFFF"), is_extended_id=True))
            await until(lambda: ingest.wheel_speed_kmh() is not None)
            assert ingest.wheel_speed_kmh() == 42.5
