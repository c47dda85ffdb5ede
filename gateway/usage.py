"""What the truck costs on its SIM, counted by the agent itself (issue #14).

:class:`UsageMeter` is pure (no I/O, no clock: the UNIX ms ``wall_ms`` is passed in): it
adds byte deltas to today's and this month's totals (UTC days and months) and rolls
over at midnight and at the month's turn. Its state is a small JSON blob the uplink keeps
in the buffer's state table, so the counts survive restarts.

:func:`tcp_ip_bytes` is the shell's reading of one connection's socket: the kernel's
``TCP_INFO`` (Linux) gives the payload bytes acked by the peer (``tcpi_bytes_acked``, sent
and delivered) and received (``tcpi_bytes_received``) and the segments each way
(``tcpi_segs_out``, ``tcpi_segs_in``); each segment adds :data:`SEGMENT_HEADER_BYTES` of
IPv4 and TCP header (20 + 20 + 12 of timestamps), which is what a mobile operator bills.
Retransmitted payload is not in ``bytes_acked``: on a lossy link the estimate is low by
the retransmissions. ``docs/performance.md`` compares it with the kernel's interface
counters.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any

#: IPv4 (20) + TCP (20) + the timestamp option (12) on every segment.
SEGMENT_HEADER_BYTES = 52
#: Offsets in Linux's ``struct tcp_info`` (include/uapi/linux/tcp.h, since 4.1/4.2).
_TCPI_BYTES_ACKED, _TCPI_BYTES_RECEIVED, _TCPI_SEGS_OUT = 120, 128, 136
_TCPI_LEN = 144
#: Key of the meter's blob in the buffer's state table.
STATE_KEY = "uplink.usage"


@dataclass(frozen=True, slots=True)
class Usage:
    """The totals at one instant (bytes at the IP level, an estimate)."""

    day: str
    up_today: int
    down_today: int
    month: str
    up_month: int
    down_month: int
    #: the month's total at this pace, to its end
    projected_month: int

    def as_status(self) -> dict[str, Any]:
        """The ``usage`` section of the status."""
        return asdict(self)


class UsageMeter:
    """Bytes up and down today and this month (UTC); pure, see the module docstring."""

    def __init__(self) -> None:
        self.day = ""
        self.month = ""
        self.up_today = self.down_today = 0
        self.up_month = self.down_month = 0

    def _roll(self, wall_ms: int) -> None:
        t = time.gmtime(wall_ms / 1000)
        day, month = time.strftime("%Y-%m-%d", t), time.strftime("%Y-%m", t)
        if month != self.month:
            self.month, self.up_month, self.down_month = month, 0, 0
        if day != self.day:
            self.day, self.up_today, self.down_today = day, 0, 0

    def add(self, up: int, down: int, wall_ms: int) -> None:
        """Count ``up`` / ``down`` bytes spent at ``wall_ms`` (negative deltas: ignored)."""
        self._roll(wall_ms)
        up, down = max(0, up), max(0, down)
        self.up_today += up
        self.down_today += down
        self.up_month += up
        self.down_month += down

    def view(self, wall_ms: int) -> Usage:
        """The totals at ``wall_ms`` (rolled over if a day or month ended meanwhile)."""
        self._roll(wall_ms)
        return Usage(self.day, self.up_today, self.down_today, self.month, self.up_month,
                     self.down_month, self.projected_month(wall_ms))

    def projected_month(self, wall_ms: int) -> int:
        """This month's bytes at this month's pace so far, to the month's end."""
        self._roll(wall_ms)
        t = time.gmtime(wall_ms / 1000)
        start = _month_start_ms(t.tm_year, t.tm_mon)
        end = _month_start_ms(t.tm_year + t.tm_mon // 12, t.tm_mon % 12 + 1)
        elapsed = max(3_600_000, wall_ms - start)  # an hour at least: no wild first guess
        return int((self.up_month + self.down_month) * (end - start) / elapsed)

    def to_bytes(self) -> bytes:
        """The meter's state for the buffer's state table."""
        return json.dumps({"day": self.day, "month": self.month,
                           "today": [self.up_today, self.down_today],
                           "month_bytes": [self.up_month, self.down_month]}).encode()

    @classmethod
    def from_bytes(cls, blob: bytes | None) -> UsageMeter:
        """A meter from :meth:`to_bytes`; a fresh one for None or a blob it cannot read."""
        m = cls()
        if not blob:
            return m
        try:
            obj = json.loads(blob)
            m.day, m.month = str(obj["day"]), str(obj["month"])
            m.up_today, m.down_today = (int(x) for x in obj["today"])
            m.up_month, m.down_month = (int(x) for x in obj["month_bytes"])
        except (ValueError, KeyError, TypeError):
            return cls()
        return m


def _month_start_ms(year: int, month: int) -> int:
    import calendar  # noqa: PLC0415  # only here

    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)) * 1000


def tcp_ip_bytes(sock: Any) -> tuple[int, int] | None:
    """IP-level bytes (up, down) of a TCP connection so far, from ``TCP_INFO``; None
    where the kernel does not say (not Linux, closed socket)."""
    opt = getattr(socket, "TCP_INFO", None)
    if sock is None or opt is None or not hasattr(sock, "getsockopt"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, opt, _TCPI_LEN)
    except (OSError, ValueError):
        return None
    if len(raw) < _TCPI_LEN:
        return None
    (acked,) = struct.unpack_from("=Q", raw, _TCPI_BYTES_ACKED)
    (received,) = struct.unpack_from("=Q", raw, _TCPI_BYTES_RECEIVED)
    segs_out, segs_in = struct.unpack_from("=II", raw, _TCPI_SEGS_OUT)
    return (acked + segs_out * SEGMENT_HEADER_BYTES,
            received + segs_in * SEGMENT_HEADER_BYTES)


class ConnectionUsage:
    """One connection's readings into the meter: each :meth:`sample` adds what the socket
    spent since the previous one (the shell calls it every tick and before closing)."""

    def __init__(self, meter: UsageMeter) -> None:
        self._meter = meter
        self._last = (0, 0)

    def sample(self, sock: Any, wall_ms: int) -> None:
        """Add what ``sock`` spent since the last sample."""
        now = tcp_ip_bytes(sock)
        if now is None:
            return
        self._meter.add(now[0] - self._last[0], now[1] - self._last[1], wall_ms)
        self._last = (max(now[0], self._last[0]), max(now[1], self._last[1]))
