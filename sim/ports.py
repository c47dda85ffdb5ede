"""Pseudo-terminal serial ports the simulator plays the device side of.

A :class:`PtyPort` owns the master side of a pty and publishes the slave under a
stable symlink (``link``), so the gateway's config names one path even when the port
"vanishes" (master closed, link removed) and "returns" (a new pty, same link) -- the
way a USB GPS or USB-CAN adapter re-enumerates after a loose cable.

Like a real UART, nothing waits for a reader: when nobody drains the slave side, the
oldest bytes are discarded (an overrun) instead of blocking the simulator.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import termios
import tty
from pathlib import Path

from config.errors import DeviceUnavailableError

log = logging.getLogger(__name__)

OVERRUN_BYTES = 16384


class PtyPort:
    """A pty whose slave is reachable at ``link``; the simulator writes the master."""

    def __init__(self, link: Path) -> None:
        self.link = Path(link)
        self.master_fd = -1
        self._slave_fd = -1
        self.slave_name = ""
        self.overruns = 0
        self.open()

    @property
    def present(self) -> bool:
        """False while the port has vanished."""
        return self.master_fd >= 0

    def open(self) -> None:
        """Create the pty and point ``link`` at it."""
        if self.present:
            return
        master, slave = os.openpty()
        # raw from the start: no echo of our output back into our input, no CR->LF
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master_fd, self._slave_fd = master, slave
        self.slave_name = os.ttyname(slave)
        tmp = self.link.with_name(self.link.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.slave_name)
        tmp.replace(self.link)
        log.info("pty %s -> %s", self.link, self.slave_name)

    def write(self, data: bytes) -> int:
        """Write to the device side; returns bytes written (0 while vanished)."""
        if not self.present:
            return 0
        self._drop_if_unread()
        try:
            return os.write(self.master_fd, data)
        except BlockingIOError:
            self.overruns += 1
            return 0
        except OSError as exc:
            raise DeviceUnavailableError(f"pty {self.link}: {exc}") from exc

    def read(self, n: int = 4096) -> bytes:
        """Bytes the gateway wrote to the port (b"" when none)."""
        if not self.present:
            return b""
        try:
            return os.read(self.master_fd, n)
        except (BlockingIOError, OSError):
            return b""

    def _drop_if_unread(self) -> None:
        buf = fcntl.ioctl(self._slave_fd, termios.FIONREAD, struct.pack("i", 0))
        if struct.unpack("i", buf)[0] > OVERRUN_BYTES:
            termios.tcflush(self._slave_fd, termios.TCIFLUSH)
            self.overruns += 1

    def vanish(self) -> None:
        """Unplug: close both sides and remove the link; the reader sees EIO/hang-up."""
        if not self.present:
            return
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        for fd in (self.master_fd, self._slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master_fd = self._slave_fd = -1
        log.info("pty %s vanished", self.link)

    def close(self) -> None:
        """Vanish for good."""
        self.vanish()

    def __repr__(self) -> str:
        state = self.slave_name if self.present else "vanished"
        return f"<PtyPort {self.link} {state}>"


class SerialPortOut:
    """NMEA to a real serial port (e.g. a USB-serial cable looped to the gateway)."""

    def __init__(self, device: str, baudrate: int = 9600) -> None:
        import serial  # noqa: PLC0415 - only needed for this output

        self._serial_mod = serial
        self.device, self.baudrate = device, baudrate
        self._port: serial.Serial | None = None
        self.open()

    def open(self) -> None:
        """Open the device."""
        if self._port is None:
            try:
                self._port = self._serial_mod.Serial(self.device, self.baudrate, timeout=0)
            except self._serial_mod.SerialException as exc:
                raise DeviceUnavailableError(f"cannot open {self.device}: {exc}") from exc

    def write(self, data: bytes) -> int:
        """Write bytes (0 while closed)."""
        return int(self._port.write(data) or 0) if self._port is not None else 0

    def vanish(self) -> None:
        """Close the device (the reader sees silence, not a hang-up)."""
        if self._port is not None:
            self._port.close()
            self._port = None

    def close(self) -> None:
        """Close for good."""
        self.vanish()
