"""python-can's slcan backend with buffered reads.

python-can 4.x's ``slcanBus`` reads the serial port one byte per ``read()`` call and,
with its default 1 ms port timeout, polls about a thousand times a second while the bus
is idle. At a full 250 kbit/s bus that is ~57,000 system calls a second and about 30 %
of a core on a desktop (see docs/perf/can.md). This subclass changes only how bytes
are read: everything waiting on the port is read in one call, complete lines are cut
from the buffer, and an idle port blocks in ``read`` for :data:`PORT_TIMEOUT_S` instead
of polling. A malformed line is skipped and counted instead of raising. Commands, frame
parsing and the open/close handshake stay python-can's.
"""

from __future__ import annotations

import time
from typing import Any

import can
from can.exceptions import error_check
from can.interfaces.slcan import slcanBus

PORT_TIMEOUT_S = 0.05  # the longest a read of an idle port blocks; bounds recv() overshoot
MAX_LINE = 4096  # bytes without a terminator after which the buffer is garbage


class BufferedSlcanBus(slcanBus):
    """``slcanBus`` reading all waiting bytes at once (same constructor arguments)."""

    def __init__(self, channel: str, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", PORT_TIMEOUT_S)
        self.malformed = 0
        super().__init__(channel, **kwargs)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        """python-can's parser, but a malformed line is skipped and counted, never raised.

        python-can raises ``ValueError`` / ``IndexError`` on a line such as ``Tzz``;
        line noise on a serial adapter must not end the connection.
        """
        try:
            return super()._recv_internal(timeout)
        except (ValueError, IndexError):
            self.malformed += 1
            return None, False

    def _read(self, timeout: float | None) -> str | None:
        """Return the next line (with its terminator), or ``None`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        buf: bytearray = self._buffer
        port = self.serialPortOrig
        while True:
            line = _take_line(buf)
            if line is not None:
                return line
            with error_check("Could not read from serial device"):
                waiting = port.in_waiting
                chunk = port.read(waiting or 1)
            if chunk:
                buf.extend(chunk)
                if len(buf) > MAX_LINE and b"\r" not in buf and b"\a" not in buf:
                    buf.clear()  # garbage without a terminator: never accumulate it
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return None


def _take_line(buf: bytearray) -> str | None:
    """Cut the first complete line (CR or BEL terminated) off ``buf``."""
    cr = buf.find(b"\r")
    bel = buf.find(b"\a")
    if cr < 0 and bel < 0:
        return None
    end = min(i for i in (cr, bel) if i >= 0) + 1
    line = buf[:end].decode("ascii", errors="replace")
    del buf[:end]
    return line
