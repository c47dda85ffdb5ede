"""The blocking half of the CAN driver: one thread that owns the python-can bus.

All bus I/O (opening, ``recv``, ``send``, ``shutdown``) happens here, so a slow adapter
open (slcan sleeps after opening its port) or a blocking read never stalls the event
loop. Frames are handed over in batches, every :data:`FLUSH_S` or :data:`FLUSH_FRAMES`
frames, with ``call_soon_threadsafe``; the loop side (:mod:`drivers.can`) decodes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import can

log = logging.getLogger(__name__)

FLUSH_S = 0.02  # hand frames to the loop at least this often ...
FLUSH_FRAMES = 256  # ... or when this many are waiting
RECV_TIMEOUT_S = 0.1  # bounds how long the reader takes to notice a stop request
INBOX_MAX = 50_000  # frames waiting for the loop; beyond this they are dropped and counted
SEND_TIMEOUT_S = 0.1


class BusReader(threading.Thread):
    """Owns one bus for one connection attempt: opens it, reads, sends, shuts it down.

    ``wake`` is scheduled on ``loop`` when frames wait in :attr:`inbox`, ``on_open``
    once the bus is open, and ``done.set`` when the thread ends (:attr:`error` then
    says why, or is ``None`` after a requested stop).
    """

    def __init__(
        self,
        factory: Callable[[], can.BusABC],
        loop: asyncio.AbstractEventLoop,
        *,
        wake: Callable[[], None],
        on_open: Callable[[], None],
        done: asyncio.Event,
        name: str,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.factory = factory
        self.loop = loop
        self.wake = wake
        self.on_open = on_open
        self.done = done
        self.stop = threading.Event()
        self.inbox: deque[can.Message] = deque()
        self.outbox: queue.SimpleQueue[can.Message] = queue.SimpleQueue()
        self.opened = False
        self.error: BaseException | None = None
        self.dropped = 0
        self.sent = 0
        self.send_errors = 0
        self.wake_pending = False

    def run(self) -> None:
        try:
            bus = self.factory()
        except Exception as exc:  # noqa: BLE001 - any open failure means "retry later"
            self.error = exc
            self._signal_done()
            return
        self.opened = True
        self._call(self.on_open)
        try:
            self._loop(bus)
        except Exception as exc:  # noqa: BLE001 - a read error ends this attempt only
            self.error = exc
        finally:
            try:
                bus.shutdown()
            except Exception as exc:  # noqa: BLE001 - closing a dead adapter may fail too
                log.debug("bus shutdown failed: %r", exc)
            self._flush()
            self._signal_done()

    def _loop(self, bus: can.BusABC) -> None:
        inbox = self.inbox
        first_wait = 0.0  # monotonic time of the oldest frame not yet handed over
        while not self.stop.is_set():
            self._send_pending(bus)
            timeout = RECV_TIMEOUT_S
            if first_wait:
                timeout = max(0.0, min(timeout, first_wait + FLUSH_S - time.monotonic()))
            msg = bus.recv(timeout=timeout)
            if msg is not None:
                if len(inbox) < INBOX_MAX:
                    inbox.append(msg)
                else:
                    self.dropped += 1
                if not first_wait:
                    first_wait = time.monotonic()
            if first_wait and (
                len(inbox) >= FLUSH_FRAMES or time.monotonic() - first_wait >= FLUSH_S
            ):
                self._flush()
                first_wait = 0.0

    def _send_pending(self, bus: can.BusABC) -> None:
        while True:
            try:
                msg = self.outbox.get_nowait()
            except queue.Empty:
                return
            try:
                bus.send(msg, timeout=SEND_TIMEOUT_S)
                self.sent += 1
            except can.CanError as exc:
                # a full TX queue or no ACK (nobody else on the bus) is not fatal
                self.send_errors += 1
                log.debug("request not sent: %r", exc)

    def _flush(self) -> None:
        if self.inbox and not self.wake_pending:
            self.wake_pending = True
            self._call(self.wake)

    def _signal_done(self) -> None:
        self._call(self.done.set)

    def _call(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(fn)
