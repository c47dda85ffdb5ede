"""Journald-friendly logging for the agent.

Under systemd, stderr is connected to the journal and ``$JOURNAL_STREAM`` names that
stream (``device:inode``). The journal stamps every line itself and understands a
syslog priority prefix ``<N>``, so in that case lines are written as
``<N>logger: message`` with no timestamp of our own. From a terminal, lines carry an
ISO timestamp and the level name instead.

When the journal's native socket is there too (``/run/systemd/journal/socket``; the
unit's ``RestrictAddressFamilies=`` keeps ``AF_UNIX``), records go to it directly as
structured entries (the protocol python-systemd's ``JournalHandler`` speaks, written
here so the venv needs no C extension): ``MESSAGE``, ``PRIORITY``,
``SYSLOG_IDENTIFIER=truckgw``, ``TRUCK_ID``, ``SUBSYSTEM`` (``gps``, ``can``, ``uplink``,
``buffer``, ``config``, ...), ``LOGGER`` and ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, so
``journalctl -u truckgw SUBSYSTEM=uplink`` or ``TRUCK_ID=TRK-0001`` select. A datagram
the journal refuses falls back to the ``<N>`` line on stderr.

A babbling device (a GPS sending garbage at 10 Hz, a CAN adapter in bus-off) must not
flood the journal or wear the SD card: :class:`RateLimitFilter` lets through at most
``burst`` identical messages per ``window_s`` and reports how many it swallowed when the
window closes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

#: syslog priorities (sd-daemon(3)) for Python levels
SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
DEFAULT_BURST = 5
DEFAULT_WINDOW_S = 60.0
MAX_TRACKED = 512  # distinct messages remembered; the least recently seen is forgotten
#: journald's native protocol socket (systemd.journal-fields(7), sd_journal_send(3))
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "truckgw"
#: first dotted part of a logger name -> SUBSYSTEM when the module name does not say more
_PACKAGE_SUBSYSTEM = {"buffer": "buffer", "config": "config", "sim": "sim"}
#: module names (last part, without a ``_suffix``) that map to another subsystem
_MODULE_SUBSYSTEM = {"j1939": "can", "slcan": "can", "dm1": "can", "nmea": "gps",
                     "supervisor": "app", "sdnotify": "app", "liveness": "app",
                     "health": "app", "snapshot": "app", "cli": "app"}
#: set by :func:`set_journal_identity` (``truckgw run`` sets the truck id once it knows it)
_identity: dict[str, str] = {}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python log level (custom levels round down to a known one)."""
    for level in sorted(SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return SYSLOG_PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``; the journal adds time, host and unit."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = syslog_priority(record.levelno)
        # every line of a multi-line message (tracebacks) gets the prefix: journald
        # splits the stream on newlines and each line would otherwise be <6>
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def journal_stream_matches(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream named by ``$JOURNAL_STREAM``.

    systemd.exec(5): compare ``device:inode`` with the stream's ``fstat`` so that a
    child whose stderr was redirected elsewhere still prints its own timestamps.
    """
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def subsystem_of(logger_name: str) -> str:
    """The ``SUBSYSTEM`` journal field of a logger: ``drivers.gps`` -> ``gps``,
    ``gateway.uplink_session`` -> ``uplink``, ``drivers.j1939_tp`` -> ``can``."""
    parts = logger_name.split(".")
    if parts[0] in _PACKAGE_SUBSYSTEM:
        return _PACKAGE_SUBSYSTEM[parts[0]]
    if parts[0] not in ("gateway", "drivers") or len(parts) < 2:
        return parts[0] or "app"
    if parts[1] == "recording":
        return "recording"
    module = parts[1].split("_", 1)[0]
    return _MODULE_SUBSYSTEM.get(module, module)


def set_journal_identity(*, truck_id: str | None) -> None:
    """Fields every journal entry of this process carries (``TRUCK_ID``)."""
    _identity.clear()
    if truck_id:
        _identity["TRUCK_ID"] = truck_id


def encode_journal_fields(fields: Mapping[str, str]) -> bytes:
    """The native protocol's datagram: ``KEY=value\\n``, or for a value with a newline
    ``KEY\\n`` + its length as 64-bit little endian + value + ``\\n``."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Send records to journald's native socket as structured entries.

    A record the socket refuses (journald restarting, a datagram over its size limit)
    is written to ``fallback`` as a ``<N>logger: message`` line instead: never lost,
    never raised.
    """

    def __init__(self, fallback: TextIO, socket_path: Path = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.fallback = fallback
        self._fallback_fmt = JournalFormatter("%(name)s: %(message)s")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # never block the event loop on a busy journal

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        return {
            "MESSAGE": text,
            "PRIORITY": str(syslog_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
            **_identity,
            "SUBSYSTEM": subsystem_of(record.name),
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sock.sendto(encode_journal_fields(self.fields(record)),
                              str(self.socket_path))
        except OSError:
            try:
                self.fallback.write(self._fallback_fmt.format(record) + "\n")
                self.fallback.flush()
            except (OSError, ValueError):
                self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


@dataclass(slots=True)
class _Seen:
    window_start: float
    count: int
    suppressed: int
    level: int
    name: str


class RateLimitFilter(logging.Filter):
    """Let through at most ``burst`` identical messages per ``window_s`` seconds.

    Identical means same logger, level and rendered message. When a window with
    suppressed messages ends, the next identical message carries a note of how many
    were dropped; :meth:`flush` reports windows that ended without a next message.
    ``clock`` is injectable for tests (default: ``time.monotonic``).
    """

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str], _Seen] = OrderedDict()
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_truckgw_summary", False):
            return True
        now = self._clock()
        key = (record.name, record.levelno, record.getMessage())
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now, 1, 0, record.levelno, record.name)
            while len(self._seen) > MAX_TRACKED:
                self._seen.popitem(last=False)
            return True
        self._seen.move_to_end(key)
        if now - seen.window_start >= self.window_s:
            if seen.suppressed:
                record.msg = "%s [%d identical messages suppressed in the last %.0f s]"
                record.args = (key[2], seen.suppressed, now - seen.window_start)
            seen.window_start, seen.count, seen.suppressed = now, 1, 0
            return True
        seen.count += 1
        if seen.count <= self.burst:
            return True
        seen.suppressed += 1
        self.suppressed_total += 1
        return False

    def flush(self) -> None:
        """Report, once, windows that ended with messages suppressed."""
        now = self._clock()
        for (name, level, text), seen in list(self._seen.items()):
            if seen.suppressed and now - seen.window_start >= self.window_s:
                logging.getLogger(name).log(
                    level,
                    "%s [%d identical messages suppressed in the last %.0f s]",
                    text, seen.suppressed, now - seen.window_start,
                    extra={"_truckgw_summary": True},
                )
                seen.window_start, seen.count, seen.suppressed = now, 0, 0


def setup_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    burst: int = DEFAULT_BURST,
    window_s: float = DEFAULT_WINDOW_S,
    journal_socket: Path | None = None,
) -> RateLimitFilter:
    """Configure the root logger for the agent; returns the rate limiter (to flush it).

    Under systemd (``$JOURNAL_STREAM`` is ``stream``) with the journal's native socket
    present, records go to the journal as structured entries (:class:`JournalHandler`);
    with only the stream, as ``<N>`` lines; otherwise as timestamped lines.
    ``journal_socket`` overrides the socket's path (tests). Replaces handlers installed
    by an earlier call, so it is safe to call again.
    """
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    under_journal = journal_stream_matches(stream, env)
    sock_path = JOURNAL_SOCKET if journal_socket is None else journal_socket
    handler: logging.Handler
    if under_journal and sock_path.is_socket():
        handler = JournalHandler(stream, sock_path)
    elif under_journal:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    limiter = RateLimitFilter(burst=burst, window_s=window_s)
    handler.addFilter(limiter)
    handler.set_name("truckgw")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "truckgw"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    return limiter
