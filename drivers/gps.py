"""GPS driver: an NMEA 0183 receiver on a serial port, as a thin asyncio shell.

A reader thread does the blocking pyserial reads and hands each chunk to the event
loop with ``loop.call_soon_threadsafe``; everything else (decoding, baud detection,
reconnects) runs on the loop. The codec is :mod:`drivers.nmea_epoch`; every decoded
epoch (a :class:`~drivers.nmea_epoch.Fix`, stamped with the monotonic time its data
arrived) goes to the sink. What becomes an event, and its time, is decided by
:mod:`gateway.ingest`: the driver knows nothing of recording, events or the clock.

Device trouble never escapes :meth:`GpsDriver.run`: a port missing at start or
unplugged later (USB receivers) is reopened with the project's one backoff policy
(:mod:`config.retry`), and each change of state is logged once rather than at every
retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from config import GpsConfig
from config.errors import DeviceUnavailableError
from config.retry import Backoff, RetryPolicy
from drivers.nmea_epoch import Fix, NmeaDecoder

log = logging.getLogger(__name__)

#: Rates tried, in order, when ``baudrate = "auto"``.
AUTO_BAUDRATES = (4800, 9600, 38400, 115200)
#: Consecutive checksum-valid sentences that lock an autodetected rate.
LOCK_SENTENCES = 3
#: pyserial read timeout in the reader thread: bounds how long stopping it takes, and
#: how often an idle reader wakes (docs/performance.md: idle agent CPU).
READ_TIMEOUT_S = 0.25


class GpsState(enum.Enum):
    """Where the driver is; ``repr`` shows the name, ``str`` the value."""

    CLOSED = "closed"  # not running
    OPENING = "opening"
    UNAVAILABLE = "unavailable"  # port missing or unplugged; retrying with backoff
    DETECTING_BAUD = "detecting_baud"
    SILENT = "silent"  # port open, no valid sentence for a while
    RECEIVING = "receiving"  # valid sentences, no epoch decoded yet
    NO_FIX = "no_fix"
    FIX = "fix"

    def __repr__(self) -> str:
        return f"GpsState.{self.name}"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class GpsStats:
    """Counters and state of the GPS driver and its decoder (the status ``gps`` section)."""

    state: GpsState
    port: str
    baudrate: int | None
    bytes_received: int
    opens: int
    open_failures: int
    last_error: str | None
    epochs: int
    sink_errors: int
    last_fix_age_s: float | None
    sentences_ok: int
    checksum_errors: int
    parse_errors: int
    dropped_bytes: int
    overlong_lines: int
    late_sentences: int
    fixes: int


class _Reader(threading.Thread):
    """Blocking reads off the loop; every chunk or the final error goes to ``queue``."""

    def __init__(self, ser: serial.Serial, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue[tuple[bytes, float] | BaseException]) -> None:
        super().__init__(name=f"gps-reader:{ser.port}", daemon=True)
        self._ser, self._loop, self._queue = ser, loop, queue
        self.stopping = threading.Event()

    def run(self) -> None:
        item: tuple[bytes, float] | BaseException
        while not self.stopping.is_set():
            try:
                data = self._ser.read(max(1, self._ser.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial reading a port closed under it
                item = exc
            else:
                if not data:
                    continue
                item = (data, time.monotonic())
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # loop closed: nobody is listening any more
                return
            if isinstance(item, BaseException):
                return


class GpsDriver:
    """Reads the configured port and hands every decoded epoch to ``sink``.

    ``sink`` receives each :class:`~drivers.nmea_epoch.Fix` (with or without a fix) on
    the event loop, in order; ``fix.received`` is the monotonic time its data arrived.
    """

    def __init__(
        self,
        cfg: GpsConfig,
        sink: Callable[[Fix], object],
        *,
        idle_flush_s: float = 0.2,
        silence_s: float = 5.0,
        detect_window_s: float = 3.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self._sink = sink
        self._idle_flush_s = idle_flush_s
        self._silence_s = silence_s
        self._detect_window_s = detect_window_s
        self._retry = RetryPolicy(min_s=retry_min_s, max_s=retry_max_s, stable_s=0.0)
        self._state = GpsState.CLOSED
        self._logged_state = GpsState.CLOSED
        self.decoder = NmeaDecoder()
        self.epochs = 0
        self.sink_errors = 0
        self._baudrate: int | None = cfg.baudrate if isinstance(cfg.baudrate, int) else None
        self._last_fix_mono: float | None = None
        self._bytes = 0
        self._opens = 0
        self._failures = 0
        self._bytes_this_session = 0
        self._locked_before: int | None = None  # last autodetected rate, tried first
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public

    @property
    def state(self) -> GpsState:
        """The current :class:`GpsState`."""
        return self._state

    def stats(self) -> GpsStats:
        """Counters and state for the health report."""
        dec = self.decoder
        return GpsStats(
            state=self._state,
            port=self.cfg.port,
            baudrate=self._baudrate,
            bytes_received=self._bytes,
            opens=self._opens,
            open_failures=self._failures,
            last_error=self._last_error,
            epochs=self.epochs,
            sink_errors=self.sink_errors,
            last_fix_age_s=(
                None if self._last_fix_mono is None
                else round(time.monotonic() - self._last_fix_mono, 3)
            ),
            sentences_ok=dec.sentences_ok,
            checksum_errors=dec.checksum_errors,
            parse_errors=dec.parse_errors,
            dropped_bytes=dec.framer.dropped_bytes,
            overlong_lines=dec.framer.overlong,
            late_sentences=dec.merger.late,
            fixes=dec.fixes,
        )

    async def run(self) -> None:
        """Read the receiver until cancelled; never raises for device problems."""
        backoff = Backoff(self._retry)
        try:
            while True:
                try:
                    await self._session()
                except DeviceUnavailableError as exc:
                    self._last_error = str(exc)
                    self._set_state(GpsState.UNAVAILABLE, str(exc))
                if self._bytes_this_session:
                    backoff.reset()  # it worked for a while: start backing off afresh
                await asyncio.sleep(backoff.next_delay())
        finally:
            self._set_state(GpsState.CLOSED)

    # ------------------------------------------------------------------ session

    async def _session(self) -> None:
        """One open port: open, detect the rate if needed, read until it fails."""
        self._bytes_this_session = 0
        self._set_state(GpsState.OPENING)
        baud = self._baudrate or AUTO_BAUDRATES[0]
        try:
            ser = serial.Serial(self.cfg.port, baudrate=baud, timeout=READ_TIMEOUT_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._failures += 1
            raise DeviceUnavailableError(f"cannot open {self.cfg.port}: {exc}") from exc
        self._opens += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[bytes, float] | BaseException] = asyncio.Queue()
        reader = _Reader(ser, loop, queue)
        reader.start()
        try:
            while True:
                if self.cfg.baudrate == "auto" and self._baudrate is None:
                    await self._detect(ser, queue)
                self._set_state(GpsState.RECEIVING, f"{self.cfg.port} at {self._baudrate} baud")
                await self._receive(queue)
                # only garbage for silence_s in auto mode: the receiver's rate has changed
                self._locked_before, self._baudrate = self._baudrate, None
        finally:
            reader.stopping.set()
            for _ in range(100):  # bounded: the thread wakes every READ_TIMEOUT_S
                if not reader.is_alive():
                    break
                await asyncio.sleep(0.01)
            with contextlib.suppress(Exception):
                ser.close()

    async def _next(
        self, queue: asyncio.Queue[tuple[bytes, float] | BaseException], timeout: float
    ) -> tuple[bytes, float] | None:
        """Next chunk, None after ``timeout`` s of quiet; reader errors become ours."""
        try:
            async with asyncio.timeout(timeout):
                item = await queue.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise DeviceUnavailableError(f"{self.cfg.port} lost: {item}") from item
        self._bytes += len(item[0])
        self._bytes_this_session += len(item[0])
        return item

    async def _detect(
        self, ser: serial.Serial, queue: asyncio.Queue[tuple[bytes, float] | BaseException]
    ) -> None:
        """Cycle through :data:`AUTO_BAUDRATES` until one gives valid sentences."""
        self._set_state(GpsState.DETECTING_BAUD, f"trying {AUTO_BAUDRATES}")
        last = self._locked_before
        rates = ([last] if last else []) + [b for b in AUTO_BAUDRATES if b != last]
        while True:
            for baud in rates:
                try:
                    ser.baudrate = baud
                    ser.reset_input_buffer()
                except (serial.SerialException, OSError) as exc:
                    raise DeviceUnavailableError(f"{self.cfg.port}: {exc}") from exc
                probe = NmeaDecoder()
                # a chunk read before the switch may still be queued: skip it, or the
                # tail of a good rate could lock the next one
                fresh = time.monotonic() + READ_TIMEOUT_S
                deadline = time.monotonic() + self._detect_window_s
                while (left := deadline - time.monotonic()) > 0:
                    item = await self._next(queue, left)
                    if item is None:
                        break
                    if item[1] < fresh:
                        continue
                    probe.feed(item[0])
                    if probe.consecutive_ok >= LOCK_SENTENCES:
                        self._baudrate = self._locked_before = baud
                        log.info("gps %s: locked at %d baud", self.cfg.port, baud)
                        return
                log.debug("gps %s: nothing valid at %d baud", self.cfg.port, baud)

    async def _receive(self, queue: asyncio.Queue[tuple[bytes, float] | BaseException]) -> None:
        """Decode chunks until the reader reports an error (raised) or, with
        ``baudrate = "auto"``, until only garbage has come for ``silence_s`` (returns).
        """
        quiet_since = time.monotonic()
        garbage = 0  # bytes since the last valid sentence
        while True:
            item = await self._next(queue, self._idle_flush_s)
            if item is not None:
                before = self.decoder.sentences_ok
                self._handle(self.decoder.feed(item[0], item[1]))
                if self.decoder.sentences_ok != before:
                    quiet_since, garbage = time.monotonic(), 0
                    if self._state is GpsState.SILENT:
                        self._set_state(GpsState.RECEIVING)
                    continue
                garbage += len(item[0])
            else:
                self._handle(self.decoder.flush())
            if time.monotonic() - quiet_since < self._silence_s:
                continue
            if garbage and self.cfg.baudrate == "auto":
                log.info("gps %s: only garbage at %s baud, detecting again",
                         self.cfg.port, self._baudrate)
                return
            self._set_state(GpsState.SILENT, f"no valid NMEA for {self._silence_s:g} s")

    def _handle(self, fixes: list[Fix]) -> None:
        for decoded in fixes:
            self._set_state(GpsState.FIX if decoded.fix else GpsState.NO_FIX)
            fix = decoded  # the decoder stamps every epoch it was fed; flush() may not
            if fix.received is None:
                fix = dataclasses.replace(fix, received=time.monotonic())
            if fix.fix:
                self._last_fix_mono = fix.received
            self.epochs += 1
            try:
                self._sink(fix)
            except Exception:
                self.sink_errors += 1
                log.exception("GPS sink failed")

    def _set_state(self, state: GpsState, detail: str = "") -> None:
        self._state = state
        # OPENING is transient (it precedes every retry); log the rest once per change
        if state is GpsState.OPENING or state is self._logged_state:
            return
        self._logged_state = state
        bad = state in (GpsState.UNAVAILABLE, GpsState.SILENT)
        level = logging.WARNING if bad else logging.INFO
        log.log(level, "gps %s: %s%s", self.cfg.port, state.value, f" ({detail})" if detail else "")
