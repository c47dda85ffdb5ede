"""A USB-CAN adapter speaking the slcan (Lawicel) ASCII protocol on a pty.

:class:`SlcanDevice` is the pure protocol: ``feed(bytes)`` takes what the host
wrote and returns the replies; ``frame_line(frame)`` encodes a received bus frame
as ``T<8 hex id><dlc><hex data>\\r``. Like real firmware it forwards bus frames
only while the channel is open (``O``, or ``L`` for listen-only) and acks each
command with ``\\r`` (``\\a`` on error). Frames the host transmits (``T...``) are
handed to ``on_transmit`` so the simulated ECUs can answer requests.

:class:`SlcanPtyAdapter` couples the device to a :class:`~sim.ports.PtyPort`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from pathlib import Path

from sim.j1939_out import Frame
from sim.ports import PtyPort

log = logging.getLogger(__name__)

OK = b"\r"
ERR = b"\a"
MAX_CMD = 64
BITRATES = {
    "S0": 10000, "S1": 20000, "S2": 50000, "S3": 100000, "S4": 125000,
    "S5": 250000, "S6": 500000, "S7": 750000, "S8": 1000000,
}


class ChannelState(enum.Enum):
    """Adapter channel state."""

    CLOSED = "closed"
    OPEN = "open"
    LISTEN_ONLY = "listen-only"

    def __repr__(self) -> str:
        return f"<ChannelState.{self.name}>"


class SlcanDevice:
    """The adapter's command interpreter (pure, bytes in / bytes out)."""

    def __init__(self, on_transmit: Callable[[Frame], None] | None = None) -> None:
        self.state = ChannelState.CLOSED
        self.bitrate: int | None = None
        self.on_transmit = on_transmit
        self._buf = bytearray()
        self.commands: list[str] = []

    @property
    def is_open(self) -> bool:
        """True when bus frames are forwarded to the host."""
        return self.state is not ChannelState.CLOSED

    def feed(self, data: bytes) -> bytes:
        """Consume host bytes; return the replies to write back."""
        out = bytearray()
        self._buf.extend(data)
        while True:
            idx = self._buf.find(b"\r")
            if idx < 0:
                if len(self._buf) > MAX_CMD:
                    self._buf.clear()  # garbage without a terminator
                break
            cmd = self._buf[:idx].decode("ascii", "replace").strip("\n")
            del self._buf[: idx + 1]
            out += self._command(cmd)
        return bytes(out)

    def _command(self, cmd: str) -> bytes:
        self.commands.append(cmd)
        if not cmd:
            return OK
        op = cmd[0]
        if op == "S":
            if self.is_open or cmd not in BITRATES:
                return ERR
            self.bitrate = BITRATES[cmd]
            return OK
        if op in "sYZQ":  # BTR register, data bitrate, timestamps, auto-start: accepted
            return OK
        if op in "OL":
            self.state = ChannelState.OPEN if op == "O" else ChannelState.LISTEN_ONLY
            log.info("slcan channel %s at %s bit/s", self.state.name, self.bitrate)
            return OK
        if op == "C":
            self.state = ChannelState.CLOSED
            return OK
        if op == "V":
            return b"V1013\r"
        if op == "N":
            return b"NSIM1\r"
        if op == "F":
            return b"F00\r"
        if op in "Tt":
            return self._transmit(cmd)
        return ERR

    def _transmit(self, cmd: str) -> bytes:
        if self.state is not ChannelState.OPEN:
            return ERR
        try:
            n = 8 if cmd[0] == "T" else 3
            ident = int(cmd[1 : 1 + n], 16)
            dlc = int(cmd[1 + n])
            data = bytes.fromhex(cmd[2 + n : 2 + n + 2 * dlc])
        except (ValueError, IndexError):
            return ERR
        if len(data) != dlc or dlc > 8:
            return ERR
        if self.on_transmit is not None:
            self.on_transmit(Frame(ident, data))
        return b"Z\r" if cmd[0] == "T" else b"z\r"


def frame_line(frame: Frame) -> bytes:
    """A received extended frame as an slcan line."""
    data = frame.data.hex().upper().encode()
    return b"T%08X%d%s\r" % (frame.arbitration_id, len(frame.data), data)


class SlcanPtyAdapter:
    """The simulator's CAN output when the gateway uses ``interface = "slcan"``."""

    def __init__(self, link: Path, on_transmit: Callable[[Frame], None] | None = None) -> None:
        self.port = PtyPort(link)
        self.device = SlcanDevice(on_transmit)
        self.dropped = 0

    @property
    def channel(self) -> str:
        """What the gateway puts in ``can.channel``."""
        return str(self.port.link)

    def poll(self) -> None:
        """Answer whatever the host has written (non-blocking)."""
        for _ in range(64):
            data = self.port.read()
            if not data:
                return
            reply = self.device.feed(data)
            if reply:
                self.port.write(reply)

    def send(self, frames: list[Frame]) -> None:
        """Forward bus frames to the host while the channel is open."""
        self.poll()
        if not frames:
            return
        if not self.device.is_open:
            self.dropped += len(frames)
            return
        self.port.write(b"".join(frame_line(f) for f in frames))

    def vanish(self) -> None:
        """Unplug the adapter: the channel closes with it."""
        self.port.vanish()
        self.device = SlcanDevice(self.device.on_transmit)

    def reappear(self) -> None:
        """Plug it back in (a new pty behind the same link)."""
        self.port.open()

    def close(self) -> None:
        """Release the pty."""
        self.port.close()
