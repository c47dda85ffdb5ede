"""Trustworthy event timestamps on a machine without a real-time clock.

A Raspberry Pi boots with whatever time it saved at shutdown (or 1970) and only gets
the right time from NTP, which a truck in a dead zone may never reach. GPS UTC is
then the only good time source. :class:`Clock` keeps an estimate of
``UTC - monotonic`` fed by GPS fixes and answers :meth:`Clock.now_ms` from it:

- Until GPS time has been seen, ``now_ms`` is the system clock (``wall``).
- Each trusted GPS time ``T`` that arrived at monotonic ``m`` gives a candidate offset
  ``T - m``. Serial transmission only ever *delays* a sentence, so every candidate is
  at most the true offset; the best estimate is the largest candidate of the last
  :data:`WINDOW_S` seconds (the least delayed one), which also follows slow drift of
  the monotonic clock.
- The clock becomes ``synced`` after :data:`CONFIRM` consecutive candidates agree
  within :data:`AGREE_MS`; from then on ``now_ms`` is ``offset + monotonic`` and the
  system clock is no longer consulted. A candidate far from the current estimate (a
  bogus date, a receiver restarting with a wrong clock) must likewise be confirmed
  by :data:`CONFIRM` agreeing ones before the estimate jumps.
- Untrusted GPS times (week rollover, before 2020) are counted and ignored.
- ``now_ms`` never goes backwards by less than :data:`MAX_HOLD_MS` (window jitter is
  held flat); a larger correction is a real step and is applied.
- Once verified (GPS-synced, or NTP per the kernel), :attr:`Clock.correction` holds
  ``UTC - CLOCK_BOOTTIME`` of this boot (kernel boot id): the encoder corrects the ``ts``
  of events stamped before verification in this boot with it
  (:mod:`gateway.ts_correct`).

See ``docs/time.md``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.ts_correct import Correction

log = logging.getLogger(__name__)

#: Seconds of candidates over which the least-delayed one is kept.
WINDOW_S = 60.0
#: Consecutive agreeing candidates needed to sync or to step the estimate.
CONFIRM = 3
#: Candidates within this many ms of each other agree (serial delay is < 1 s).
AGREE_MS = 1500
#: Backward moves of ``now_ms`` smaller than this are held flat.
MAX_HOLD_MS = 1000


#: adjtimex(2) returns this clock state while the kernel's clock is not synchronized.
TIME_ERROR = 5
#: How long one answer of the kernel about NTP sync is reused.
SYSTEM_SYNC_CACHE_S = 5.0


#: systemd-timesyncd creates this file once it has synchronized the system clock
#: (and removes it at boot): readable under any sandbox, unlike adjtimex(2).
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


def system_clock_synced(flag: Path = TIMESYNC_FLAG) -> bool | None:
    """Whether the kernel's clock is disciplined by NTP (timesyncd, chrony, ntpd).

    Asks ``adjtimex(2)`` without changing anything. Under the shipped unit's
    ``ProtectClock=yes`` / ``SystemCallFilter=~@clock`` even that read-only call fails
    (EPERM), so then the answer comes from systemd-timesyncd's ``flag`` file: True when
    it exists, False when timesyncd runs (its folder exists) but has not synced,
    ``None`` when nothing can tell. A Pi without network after boot answers False: its
    clock is fake-hwclock's guess.
    """
    state = adjtimex_state()
    if state is not None:
        return state != TIME_ERROR
    try:
        if flag.exists():
            return True
        return False if flag.parent.is_dir() else None
    except OSError:
        return None


def adjtimex_state() -> int | None:
    """The kernel clock state from a read-only ``adjtimex(2)``, None if it cannot be
    called (not in this libc, or refused by a seccomp filter)."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
    state = int(adjtimex(timex))
    return None if state < 0 else state


@functools.cache
def _adjtimex() -> Any:
    """libc's adjtimex, looked up once: the symbols already loaded into this process
    include libc, so no library search (``find_library`` forks ``ldconfig``)."""
    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None


#: The kernel's id of the running boot (a random UUID, new at every boot).
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id(path: Path = BOOT_ID_FILE) -> str:
    """This boot's id, ``""`` when it cannot be read (then no ts is ever corrected)."""
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def boottime_s() -> float:
    """``CLOCK_BOOTTIME`` in seconds: monotonic, and counts time spent in suspend."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class ClockStats:
    """State and counters of the clock (the status ``clock`` section)."""

    synced: bool
    verified: bool
    wall_error_ms: int | None
    untrusted_gps_times: int
    rejected_gps_times: int
    steps: int


class Clock:
    """Best-estimate UTC in milliseconds, corrected by GPS time.

    ``wall`` and ``mono`` default to :func:`time.time` and :func:`time.monotonic`;
    tests pass their own. Not thread-safe: call it from the event loop.
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        system_synced: Callable[[], bool | None] = system_clock_synced,
        boot: Callable[[], float] = boottime_s,
        boot_id: str | None = None,
    ) -> None:
        self._wall = wall
        self._mono = mono
        self._boot = boot
        #: this boot's kernel id (``/proc/sys/kernel/random/boot_id``; tests pass theirs)
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        #: UTC - boottime (ms) once verified; see :attr:`correction`
        self._boot_offset_ms: int | None = None
        self._system_synced = system_synced
        self._system_checked: tuple[float, bool] | None = None  # (mono_s, answer)
        self._offset_ms: float | None = None  # UTC ms - monotonic ms, once synced
        self._window: deque[tuple[float, float]] = deque(maxlen=256)  # (mono_s, cand_ms)
        self._pending: list[float] = []  # candidates not yet agreeing with the estimate
        self._last_ms = 0
        self.untrusted = 0
        self.rejected = 0
        self.steps = 0

    @property
    def synced(self) -> bool:
        """True once GPS time has been confirmed and drives :meth:`now_ms`."""
        return self._offset_ms is not None

    @property
    def verified(self) -> bool:
        """True when :meth:`now_ms` can be trusted: GPS-synced, or the system clock is
        NTP-synced. False in the first seconds after a Pi boots without network, when
        the system clock may be off by however long the truck was switched off."""
        if self._offset_ms is not None:
            return True
        now = self._mono()
        if self._system_checked is None or now - self._system_checked[0] > SYSTEM_SYNC_CACHE_S:
            self._system_checked = (now, self._system_synced() is True)
        if self._system_checked[1] and self._boot_offset_ms is None:
            self._boot_offset_ms = round(self._wall() * 1000 - self._boot() * 1000)
        return self._system_checked[1]

    def boot_ms(self) -> int:
        """``CLOCK_BOOTTIME`` now, in ms (what an unverified stamp records)."""
        return round(self._boot() * 1000)

    @property
    def correction(self) -> Correction | None:
        """``UTC - CLOCK_BOOTTIME`` of this boot, known once the clock was seen verified
        (GPS: updated with every fix that moves the estimate); None before. Reads no clock."""
        if self._boot_offset_ms is None or not self.boot_id:
            return None
        return Correction(self.boot_id, self._boot_offset_ms)

    def now_ms(self) -> int:
        """Best-estimate UTC milliseconds since the Unix epoch."""
        if self._offset_ms is None:
            return int(self._wall() * 1000)
        now = int(self._offset_ms + self._mono() * 1000)
        if self._last_ms - MAX_HOLD_MS < now < self._last_ms:
            return self._last_ms
        self._last_ms = now
        return now

    def on_gps_time(self, utc_ms: int, monotonic_s: float, trusted: bool) -> None:
        """Feed the UTC time of a GPS fix and the monotonic time its data arrived."""
        if not trusted:
            self.untrusted += 1
            return
        cand = utc_ms - monotonic_s * 1000.0
        if self._offset_ms is not None and abs(cand - self._offset_ms) <= AGREE_MS:
            self.rejected += len(self._pending)  # outliers that were never confirmed
            self._pending.clear()
            self._add(monotonic_s, cand)
            return
        # no estimate yet, or a candidate far off it: needs CONFIRM agreeing in a row
        if self._pending and abs(cand - self._pending[-1]) > AGREE_MS:
            self.rejected += len(self._pending)
            self._pending.clear()
        self._pending.append(cand)
        if len(self._pending) < CONFIRM:
            return
        first = self._offset_ms is None
        old_now = self.now_ms()
        self._window.clear()
        for c in self._pending:
            self._add(monotonic_s, c)
        self._pending.clear()
        new_now = self.now_ms()
        if first:
            log.info("clock synced to GPS: system clock was off by %+d ms",
                     old_now - new_now)
        else:
            self.steps += 1
            log.warning("clock stepped by %+d ms to follow GPS time", new_now - old_now)

    def _add(self, mono_s: float, cand: float) -> None:
        self._window.append((mono_s, cand))
        while self._window and self._window[0][0] < mono_s - WINDOW_S:
            self._window.popleft()
        self._offset_ms = max(c for _, c in self._window)
        # UTC - boottime = (UTC - monotonic) - (boottime - monotonic), read back to back
        boot_minus_mono_ms = (self._boot() - self._mono()) * 1000.0
        self._boot_offset_ms = round(self._offset_ms - boot_minus_mono_ms)

    def wall_error_ms(self) -> int | None:
        """System clock minus GPS-corrected time (positive: system clock ahead)."""
        if self._offset_ms is None:
            return None
        return int(self._wall() * 1000) - int(self._offset_ms + self._mono() * 1000)

    def stats(self) -> ClockStats:
        """Counters and state for the health report."""
        return ClockStats(
            synced=self.synced,
            verified=self.verified,
            wall_error_ms=self.wall_error_ms(),
            untrusted_gps_times=self.untrusted,
            rejected_gps_times=self.rejected,
            steps=self.steps,
        )
