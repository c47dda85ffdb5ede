"""The CAN bus shell: python-can access, reconnect with backoff, requests, statistics.

All bus I/O happens in one :class:`drivers.can_io.BusReader` thread per connection
attempt, which hands frames over in batches; decoding (:mod:`drivers.j1939`) runs on the
event loop, which hands each batch of decoded messages to the sink. The driver knows
nothing of events, recording or the clock: that is :mod:`gateway.ingest`'s.

Device problems never escape :meth:`CanDriver.run`: an adapter absent at start, a
read error, an unplugged USB adapter all end the connection attempt and the driver
retries with the project's one backoff policy (:mod:`config.retry`). Each state change
is logged once; a failure repeating with the same reason is logged at debug level only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import can

from config import CanConfig
from config.retry import Backoff, RetryPolicy
from drivers.can_io import BusReader
from drivers.dbc import load_dbc
from drivers.j1939 import (
    DEFAULT_SPECS,
    GLOBAL,
    OTHER_PGNS,
    PGN_HOURS,
    PGN_LFC,
    PGN_REQUEST,
    PGN_TABLE,
    Decoded,
    J1939Decoder,
    Spec,
    build_table,
    make_id,
    request_payload,
)
from drivers.j1939_fms import PGN_ADDRESS_CLAIMED
from drivers.slcan import BufferedSlcanBus

log = logging.getLogger(__name__)

TICK_S = 1.0  # housekeeping period: TP timeouts, silence, requests, rates
SILENT_AFTER_S = 5.0  # no frame for this long on an open bus: state SILENT
RETRY = RetryPolicy(min_s=0.5, max_s=30.0, stable_s=0.0)  # stable: frames were heard
STOP_WAIT_S = 5.0  # how long cancellation waits for the reader thread (slcan opens take 2 s)
REQUEST_SA = 0xF9  # off-board diagnostic tool #1: the address a gateway requests from
#: Asked for every ``request_interval_s`` when the gateway may transmit: the on-request
#: engine hours and fuel counters, and Address Claimed, to which every ECU answers with
#: its NAME (they claim only at power-up, which a gateway started later would miss).
REQUESTED_PGNS = (PGN_HOURS, PGN_LFC, PGN_ADDRESS_CLAIMED)
# an extended data frame is 67 + 8 * len bits before stuffing; real traffic stuffs ~8 %
STUFFING = 141.9 / 131.0


def decode_table(dbc_file: Path | None) -> Mapping[int, Spec]:
    """The built-in J1939 table plus the messages of ``dbc_file`` for PGNs it lacks.

    The built-in entry of a PGN wins over a DBC message of the same PGN (many DBC files
    carry the standard J1939 messages too): the wire contract's field names stay the
    same whatever DBC a truck is given. The skipped messages are logged once.
    """
    if dbc_file is None:
        return PGN_TABLE
    extra = load_dbc(dbc_file)
    taken = {s.name: s.pgn for s in extra if s.pgn in PGN_TABLE or s.pgn in OTHER_PGNS}
    if taken:
        log.warning("CAN: DBC %s: built-in decoding kept for %s", dbc_file,
                    ", ".join(f"{n} (PGN {p})" for n, p in sorted(taken.items())))
    added = [s for s in extra if s.name not in taken]
    log.info("CAN: %d message(s) from DBC file %s", len(added), dbc_file)
    specs: list[Spec] = [*DEFAULT_SPECS, *added]
    return build_table(specs)


@dataclass(frozen=True, slots=True)
class CanStats:
    """What :meth:`CanDriver.stats` reports (the status file's ``can`` section)."""

    state: str
    interface: str
    channel: str
    frames_total: int
    frames_per_s: float
    bus_load_pct: float
    decoded: int
    ignored: int
    decode_errors: int
    dm1: int
    tp_completed: int
    tp_errors: int
    tp_sessions: int
    error_frames: int
    dropped: int
    reconnects: int
    sink_errors: int
    requests_sent: int
    request_errors: int
    last_error: str | None
    address_claims: int
    address_moves: int
    names: Mapping[str, Mapping[str, object]]
    fms: Mapping[str, Mapping[str, object]]
    drivers: Mapping[str, Mapping[str, str]]


class CanState(enum.Enum):
    """Where the driver is in its lifecycle."""

    STOPPED = "stopped"  # run() not running
    CONNECTING = "connecting"  # opening the bus
    ACTIVE = "active"  # bus open, frames heard within SILENT_AFTER_S
    SILENT = "silent"  # bus open, no frame for SILENT_AFTER_S (ignition off?)
    BACKOFF = "backoff"  # the last attempt failed; waiting before the next

    def __repr__(self) -> str:
        return f"CanState.{self.name}"

    def __str__(self) -> str:
        return self.value


class CanDriver:
    """Reads a J1939 bus through python-can and hands decoded messages to a sink.

    ``bus_factory`` builds the bus (tests and the simulator may pass a ``virtual``
    bus); by default it is ``can.Bus(interface=cfg.interface, channel=cfg.channel,
    bitrate=cfg.bitrate)``, except for ``slcan``, which opens
    :class:`drivers.slcan.BufferedSlcanBus` (python-can's slcan with buffered reads)
    with ``listen_only`` from the config. Other backends take listen-only from the
    interface setup (``ip link set can0 type can listen-only on`` for socketcan).

    ``sink`` gets, on the event loop, the list of :data:`~drivers.j1939.Decoded`
    messages (signal sets, DM1 lists) of each batch of frames, oldest first. ``run()``
    never raises for device problems; :attr:`state` and :meth:`stats` tell how it goes.
    """

    def __init__(
        self,
        cfg: CanConfig,
        sink: Callable[[list[Decoded]], object],
        *,
        bus_factory: Callable[[], can.BusABC] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.bus_factory = bus_factory or self._default_bus
        self.decoder = J1939Decoder(decode_table(cfg.dbc_file))
        self._state = CanState.STOPPED
        self._reader: BusReader | None = None
        self._failure: str | None = None
        self._last_frame_at = 0.0
        self._last_request_at: float | None = None
        self._bits = 0.0
        self._rate_mark: tuple[float, int, float] | None = None
        self._frames_per_s = 0.0
        self._bus_load = 0.0
        self._counts = {"error_frames": 0, "dropped": 0, "reconnects": 0, "sink_errors": 0,
                        "requests_sent": 0, "request_errors": 0}
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public

    @property
    def state(self) -> CanState:
        """The current :class:`CanState`."""
        return self._state

    def stats(self) -> CanStats:
        """Counters and rates for status/metrics; cheap, call as often as you like.

        ``names`` maps each source address seen in an Address Claimed (two hex digits)
        to its NAME, ``fms`` to the FMS-Standard identity, ``drivers`` to the driver
        identifications of DI (docs/fleet-data.md).
        """
        dc, tp = self.decoder.counters, self.decoder.tp
        counts = dict(self._counts)
        reader = self._reader
        if reader is not None:  # the live attempt's counters join the totals when it ends
            counts["dropped"] += reader.dropped
            counts["requests_sent"] += reader.sent
            counts["request_errors"] += reader.send_errors
        ident = self.decoder.identity
        return CanStats(
            state=self._state.value,
            interface=self.cfg.interface,
            channel=self.cfg.channel,
            frames_total=dc["frames"],
            frames_per_s=round(self._frames_per_s, 1),
            bus_load_pct=round(self._bus_load, 1),
            decoded=dc["decoded"],
            ignored=dc["ignored"],
            decode_errors=dc["decode_errors"],
            dm1=dc["dm1"],
            tp_completed=tp.counters["completed"],
            tp_errors=tp.errors,
            tp_sessions=tp.active_sessions,
            error_frames=counts["error_frames"],
            dropped=counts["dropped"],
            reconnects=counts["reconnects"],
            sink_errors=counts["sink_errors"],
            requests_sent=counts["requests_sent"],
            request_errors=counts["request_errors"],
            last_error=self._last_error,
            address_claims=ident.claims,
            address_moves=ident.moves,
            names=MappingProxyType(ident.names_dict()),
            fms=MappingProxyType(ident.fms_dict()),
            drivers=MappingProxyType(ident.drivers_dict()),
        )

    async def run(self) -> None:
        """Read the bus until cancelled; retries device failures with backoff."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(RETRY)
        try:
            while True:
                self._set_state(CanState.CONNECTING, quiet=backoff.attempt > 0)
                frames_before = self.decoder.counters["frames"]
                error = await self._connection(loop)
                if self.decoder.counters["frames"] > frames_before:
                    backoff.reset()  # it worked for a while: start the backoff over
                self._counts["reconnects"] += 1
                delay = backoff.next_delay()
                self._last_error = error
                self._set_state(CanState.BACKOFF, reason=error, retry_s=delay)
                await asyncio.sleep(delay)
        finally:
            await self._stop_reader()
            self._set_state(CanState.STOPPED)

    # ------------------------------------------------------------------ connection

    async def _connection(self, loop: asyncio.AbstractEventLoop) -> str:
        """Run one connection attempt; return why it ended."""
        done = asyncio.Event()
        reader = BusReader(
            self.bus_factory, loop, wake=self._drain, on_open=self._opened, done=done,
            name=f"can-{self.cfg.channel}",
        )
        self._reader = reader
        self._last_request_at = None
        reader.start()
        self._mark_rates(loop.time(), reset=True)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await done.wait()
            self._tick(loop.time())
        reader.join(timeout=STOP_WAIT_S)
        self._drain()
        self._reader = None
        self._counts["dropped"] += reader.dropped
        self._counts["requests_sent"] += reader.sent
        self._counts["request_errors"] += reader.send_errors
        exc = reader.error
        if exc is None:
            return "reader stopped"
        return f"{'read' if reader.opened else 'open'} failed: {type(exc).__name__}: {exc}"

    def _tick(self, now: float) -> None:
        reader = self._reader
        if reader is None:
            return
        self.decoder.expire(int(now * 1000))
        self._mark_rates(now)
        if self._state is CanState.ACTIVE and now - self._last_frame_at > SILENT_AFTER_S:
            self._set_state(CanState.SILENT)
        if reader.opened:
            self._maybe_request(reader, now)

    def _opened(self) -> None:
        """The reader opened its bus (called on the loop)."""
        reader = self._reader
        if reader is None or self._state is not CanState.CONNECTING:
            return
        now = asyncio.get_running_loop().time()
        self._last_frame_at = now
        self._set_state(CanState.ACTIVE)
        self._maybe_request(reader, now)

    def _maybe_request(self, reader: BusReader, now: float) -> None:
        """Queue Requests for the on-request PGNs when due (never when listen-only)."""
        cfg = self.cfg
        if cfg.listen_only or cfg.request_interval_s <= 0:
            return
        if self._last_request_at is not None and (
            now - self._last_request_at < cfg.request_interval_s
        ):
            return
        self._last_request_at = now
        for pgn in REQUESTED_PGNS:
            reader.outbox.put(can.Message(
                arbitration_id=make_id(PGN_REQUEST, REQUEST_SA, da=GLOBAL, priority=6),
                data=request_payload(pgn),
                is_extended_id=True,
            ))

    def request(self, pgn: int) -> bool:
        """Queue one J1939 Request (PGN 59904) for ``pgn`` to all nodes; False when the
        bus is not open or the driver is listen-only (it never transmits then)."""
        reader = self._reader
        if reader is None or self.cfg.listen_only:
            return False
        reader.outbox.put(can.Message(
            arbitration_id=make_id(PGN_REQUEST, REQUEST_SA, da=GLOBAL, priority=6),
            data=request_payload(pgn), is_extended_id=True))
        return True

    def _drain(self) -> None:
        """Decode every frame the reader has handed over and pass them on (on the loop)."""
        reader = self._reader
        if reader is None:
            return
        reader.wake_pending = False
        inbox = reader.inbox
        if not inbox:
            return
        # transport-protocol timeouts run on the monotonic loop clock: immune to clock steps
        mono_ms = int(asyncio.get_running_loop().time() * 1000)
        feed = self.decoder.feed
        decoded: list[Decoded] = []
        bits = 0
        n = 0
        while inbox:
            msg = inbox.popleft()
            n += 1
            dlc = msg.dlc
            if msg.is_error_frame:
                self._counts["error_frames"] += 1
                continue
            bits += (67 if msg.is_extended_id else 47) + 8 * dlc
            if msg.is_remote_frame:
                continue
            out = feed(mono_ms, msg.arbitration_id, msg.data, extended=msg.is_extended_id)
            if out is not None:
                decoded.append(out)
        if decoded:
            self._emit(decoded)
        self._bits += bits * STUFFING
        if n:
            self._last_frame_at = asyncio.get_running_loop().time()
            if self._state in (CanState.SILENT, CanState.CONNECTING):
                self._set_state(CanState.ACTIVE)

    def _emit(self, decoded: list[Decoded]) -> None:
        try:
            self.sink(decoded)
        except Exception:
            self._counts["sink_errors"] += 1
            log.exception("CAN sink failed")

    async def _stop_reader(self) -> None:
        reader = self._reader
        if reader is None:
            return
        reader.stop.set()
        deadline = time.monotonic() + STOP_WAIT_S
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_WAIT_S):
                    await reader.done.wait()
        finally:
            reader.join(timeout=max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                log.error("CAN reader thread did not stop within %.1f s", STOP_WAIT_S)
            self._reader = None

    # ------------------------------------------------------------------ helpers

    def _default_bus(self) -> can.BusABC:
        cfg = self.cfg
        kwargs: dict[str, Any] = {"interface": cfg.interface, "channel": cfg.channel,
                                  "bitrate": cfg.bitrate}
        if cfg.interface == "slcan":
            # python-can's slcan, reading whole buffers instead of byte by byte
            return BufferedSlcanBus(cfg.channel, bitrate=cfg.bitrate, listen_only=cfg.listen_only)
        return can.Bus(**kwargs)

    def _mark_rates(self, now: float, *, reset: bool = False) -> None:
        frames = self.decoder.counters["frames"]
        mark = self._rate_mark
        if reset or mark is None:
            self._rate_mark = (now, frames, self._bits)
            return
        dt = now - mark[0]
        if dt < 0.5:
            return
        self._frames_per_s = (frames - mark[1]) / dt
        self._bus_load = 100.0 * (self._bits - mark[2]) / dt / self.cfg.bitrate
        self._rate_mark = (now, frames, self._bits)

    def _set_state(
        self, new: CanState, *, reason: str | None = None, retry_s: float = 0.0, quiet: bool = False
    ) -> None:
        old = self._state
        if new is old:
            return
        self._state = new
        where = f"{self.cfg.interface}:{self.cfg.channel}"
        if new is CanState.BACKOFF:
            if reason != self._failure:
                self._failure = reason
                log.warning("CAN %s: %s; retrying in %.1f s (and backing off)", where, reason,
                            retry_s)
            else:
                log.debug("CAN %s: %s again; retrying in %.1f s", where, reason, retry_s)
            return
        if new is CanState.ACTIVE:
            self._failure = None
        level = logging.DEBUG if quiet else logging.INFO
        log.log(level, "CAN %s: %s -> %s", where, old, new)
