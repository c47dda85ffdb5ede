"""The asyncio shell that drives a :class:`~sim.truck.Truck` onto real outputs.

Every tick (10 ms) the model advances by the elapsed wall time times ``speed``
(``speed`` > 1 is a time-lapse: the truck covers the route faster while output rates
and NMEA/CAN timestamps stay on the real clock, so the gateway's clock logic and the
sink's lag figures stay honest). Outputs: NMEA epochs to a pty or serial port, J1939
frames to an slcan pty adapter or any python-can bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from config.errors import SimError
from sim import nmea_out
from sim.faults import FaultPlan, corrupt_sentences, garbage
from sim.j1939_out import PGN_REQUEST, Frame, Schedule
from sim.truck import Truck, TruckState

log = logging.getLogger(__name__)

TICK_S = 0.01


class CanOutput(Protocol):
    """Where simulated bus frames go (slcan pty adapter, python-can bus)."""

    def send(self, frames: list[Frame]) -> None: ...
    def poll(self) -> None: ...
    def vanish(self) -> None: ...
    def reappear(self) -> None: ...
    def close(self) -> None: ...


class GpsOutput(Protocol):
    """Where NMEA bytes go (a pty or a real serial port)."""

    def write(self, data: bytes) -> int: ...
    def vanish(self) -> None: ...
    def open(self) -> None: ...
    def close(self) -> None: ...


class PythonCanOutput:
    """Frames to any python-can interface (``virtual``, ``socketcan`` on vcan0, ...)."""

    def __init__(self, interface: str, channel: str, *, bitrate: int | None = None,
                 on_request: Any = None) -> None:
        import can  # noqa: PLC0415 - python-can is imported only when this output is used

        self._can = can
        self._args: dict[str, Any] = {"interface": interface, "channel": channel}
        if bitrate and interface not in ("virtual", "socketcan"):
            self._args["bitrate"] = bitrate
        self.bus: Any = can.Bus(**self._args)
        self.on_request = on_request

    def send(self, frames: list[Frame]) -> None:
        """Put frames on the bus (dropped while vanished)."""
        if self.bus is None:
            return
        for f in frames:
            self.bus.send(self._can.Message(arbitration_id=f.arbitration_id, data=f.data,
                                            is_extended_id=True))

    def poll(self) -> None:
        """Answer requests another node put on the bus."""
        for _ in range(32):
            if self.bus is None:
                return
            msg = self.bus.recv(timeout=0)
            if msg is None:
                return
            if self.on_request is not None:
                self.on_request(Frame(msg.arbitration_id, bytes(msg.data)))

    def vanish(self) -> None:
        """Drop off the bus."""
        if self.bus is not None:
            self.bus.shutdown()
            self.bus = None

    def reappear(self) -> None:
        """Join the bus again."""
        if self.bus is None:
            self.bus = self._can.Bus(**self._args)

    def close(self) -> None:
        """Shut the bus down."""
        self.vanish()


def fix_of(state: TruckState, sats: int, hdop: float) -> nmea_out.GpsFix:
    """The receiver's solution for a model state."""
    return nmea_out.GpsFix(lat=state.lat, lon=state.lon, alt_m=state.alt_m,
                           speed_kmh=state.speed_kmh, course_deg=state.heading_deg,
                           sats=sats, hdop=hdop)


class TruckSim:
    """Run one truck: model + NMEA output + CAN output + fault plan."""

    def __init__(self, truck: Truck, *, gps: GpsOutput | None = None,
                 can: CanOutput | None = None, gps_hz: float = 1.0, speed: float = 1.0,
                 faults: FaultPlan | None = None, schedule: Schedule | None = None,
                 seed: int = 0) -> None:
        if not 0.1 <= gps_hz <= 10:
            raise SimError("gps_hz must be within 0.1..10")
        self.truck = truck
        self.gps = gps
        self.can = can
        self.gps_hz = gps_hz
        self.speed = speed
        self.faults = faults or FaultPlan()
        self.schedule = schedule or Schedule()
        self.rng = random.Random(seed ^ 0x5EED)
        #: called with (UTC time, fix or None) for every epoch written: the truth a test
        #: compares the gateway's output with
        self.on_epoch: Callable[[dt.datetime, nmea_out.GpsFix | None], None] | None = None
        self.epochs = 0
        #: seconds added to the UTC time the GPS sends (settable while driving): a receiver
        #: whose clock is off (-1024 weeks: the week rollover, untrusted) or a time jump
        self.gps_time_offset_s = 0.0
        self.frames = 0
        self.run_s = 0.0
        self._active: set[str] = set()
        self._sats, self._hdop = 11, 0.9

    def on_frame_from_host(self, frame: Frame) -> None:
        """A frame the gateway transmitted: answer Requests for HOURS/LFC."""
        if frame.pgn == PGN_REQUEST and len(frame.data) >= 3:
            pgn = int.from_bytes(frame.data[:3], "little")
            self.schedule.answer_request(self.run_s, pgn, self.truck.state)

    async def run(self, duration_s: float | None = None,
                  stop: asyncio.Event | None = None) -> None:
        """Drive until ``duration_s`` of wall time passed or ``stop`` is set."""
        t0 = time.monotonic()
        last = t0
        period = 1.0 / self.gps_hz
        next_epoch = (int(time.time() / period) + 1) * period
        while True:
            now = time.monotonic()
            self.run_s = now - t0
            if duration_s is not None and self.run_s >= duration_s:
                break
            if stop is not None and stop.is_set():
                break
            state = self.truck.step((now - last) * self.speed)
            last = now
            self.apply_faults(self.run_s)
            self._send_can(state)
            wall = time.time()
            if wall >= next_epoch:
                self._send_epoch(dt.datetime.fromtimestamp(next_epoch, dt.UTC), state)
                next_epoch += period * max(1, int((wall - next_epoch) / period) + 1)
            await asyncio.sleep(TICK_S)

    def apply_faults(self, t: float) -> None:
        """Start and end the fault windows due at run time ``t`` (:meth:`run` calls it
        every tick; an in-process drive without outputs may call it itself)."""
        for w in self.faults.fire_once(t):
            if w.kind == "dtc":
                self.truck.inject_fault(3, duration_s=max(w.duration_s, 60.0))
            elif w.kind == "tp-malformed":
                self.schedule.corrupt_tp = True
                self.truck.inject_fault(3, duration_s=max(w.duration_s, 30.0))
            elif w.kind == "corner":
                self.truck.fast_corner()
            elif w.kind == "card-out":
                self.truck.remove_card()  # back in when the window ends
        active = self.faults.active(t)
        started, ended = active - self._active, self._active - active
        self._active = active
        if "card-out" in ended:
            self.truck.insert_card()
        for kind in started | ended:
            log.info("fault %s %s at %.1f s", kind, "starts" if kind in started else "ends", t)
        if self.gps is not None:
            if "gps-vanish" in started:
                self.gps.vanish()
            if "gps-vanish" in ended:
                self.gps.open()
        if self.can is not None:
            if "can-vanish" in started:
                self.can.vanish()
            if "can-vanish" in ended:
                self.can.reappear()

    def _send_can(self, state: TruckState) -> None:
        frames = self.schedule.due(self.run_s, state)
        if self.can is None:
            return
        if "can-silence" in self._active or "can-vanish" in self._active:
            frames = []
        self.can.send(frames)
        self.frames += len(frames)

    def _send_epoch(self, utc: dt.datetime, state: TruckState) -> None:
        if self.gps is None:
            return
        if self.rng.random() < 0.05:
            self._sats = max(7, min(16, self._sats + self.rng.choice((-1, 1))))
            self._hdop = round(max(0.6, min(1.8, 2.0 - self._sats * 0.09)), 2)
        fix = None if "tunnel" in self._active else fix_of(state, self._sats, self._hdop)
        if self.gps_time_offset_s:
            utc += dt.timedelta(seconds=self.gps_time_offset_s)
        data = nmea_out.epoch(utc, fix)
        if "badsum" in self._active:
            data = corrupt_sentences(data, self.rng)
        if "garbage" in self._active:
            data = garbage(self.rng) + data
        with contextlib.suppress(OSError):
            self.gps.write(data)
        self.epochs += 1
        if self.on_epoch is not None:
            self.on_epoch(utc, fix)

    def close(self) -> None:
        """Release the outputs."""
        if self.gps is not None:
            self.gps.close()
        if self.can is not None:
            self.can.close()
