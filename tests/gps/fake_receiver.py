"""A GPS receiver on the master side of a real pseudo-terminal, for driver tests.

The driver opens ``path``, a symlink to the slave side (as udev's
``/dev/serial/by-id`` links are); :meth:`FakeReceiver.unplug` closes the pty pair the
way pulling a USB receiver does, :meth:`FakeReceiver.plug` makes a new one behind the
same path. The receiver sees the baud rate the driver set on the slave (Linux reports
the slave's termios on the master) and can talk garbage at the wrong rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from pathlib import Path


class FakeReceiver:
    """Master side of a pty; writes are non-blocking and retried while the pty is full."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master: int | None = None
        self.slave: int | None = None

    def plug(self) -> None:
        """Create a pty pair and point ``path`` at its slave side."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing before the driver configures it
        os.set_blocking(master, False)
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)
        self.master, self.slave = master, slave

    def unplug(self) -> None:
        """Close both sides: the driver's reads fail and the device node disappears.

        The link goes too, as udev removes ``/dev/serial/by-id`` links: left behind, it
        could point at a pty number another test has been given meanwhile.
        """
        self.path.unlink(missing_ok=True)
        for fd in (self.slave, self.master):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    def baudrate(self) -> int:
        """The rate the driver has set on the slave side, as a termios ``B*`` constant."""
        assert self.master is not None
        return int(termios.tcgetattr(self.master)[4])

    async def write(self, data: bytes, *, patience_s: float = 5.0) -> None:
        """Write all of ``data``, waiting (bounded) while the pty buffer is full."""
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience_s
        while view:
            assert self.master is not None
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                n = 0
            view = view[n:]
            if view:
                if loop.time() > deadline:
                    raise TimeoutError("pty stayed full: is the driver reading?")
                await asyncio.sleep(0.005)

    def write_nowait(self, data: bytes) -> None:
        """Write what fits now, drop the rest (a receiver does not wait for a reader)."""
        if self.master is None:
            return
        with contextlib.suppress(OSError):  # BlockingIOError included
            os.write(self.master, data)
