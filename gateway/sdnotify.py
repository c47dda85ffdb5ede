"""The systemd notify protocol without libsystemd.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: the path of an
``AF_UNIX`` datagram socket, or an abstract socket name written with a leading ``@``.
Each message is one datagram of newline-separated ``KEY=VALUE`` assignments
(``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``). See sd_notify(3).

``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, when set, naming the process meant) gives the
``WatchdogSec=`` of the unit; the service must send ``WATCHDOG=1`` more often than that.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op, so the agent runs
the same way from a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify datagrams to the service manager, if there is one.

    ``address`` is the raw ``$NOTIFY_SOCKET`` value (``None``: notifications off).
    Send errors are logged once and never raised: a lost notification must not stop
    the agent (systemd then restarts it, which is the safe outcome).
    """

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if not address:
            return
        if address.startswith("@"):
            # abstract namespace: a leading NUL byte instead of the '@'
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning("ignoring NOTIFY_SOCKET %r: not a path or abstract name", address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` of ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if it was sent."""
        if self._sock is None or self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at %r: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (plus ``STATUS=``): start-up finished."""
        extra = (f"STATUS={status}",) if status else ()
        return self.notify("READY=1", *extra)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive and healthy."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: an orderly shutdown began."""
        extra = (f"STATUS={status}",) if status else ()
        return self.notify("STOPPING=1", *extra)

    def status(self, text: str) -> bool:
        """``STATUS=``: a one-line description shown by ``systemctl status``."""
        return self.notify(f"STATUS={text.splitlines()[0] if text else ''}")

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """The unit's ``WatchdogSec=`` in seconds, or ``None`` when no watchdog is armed.

    Follows sd_watchdog_enabled(3): ``$WATCHDOG_PID``, when present, must be our pid.
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000
