"""Liveness checks behind the systemd watchdog.

The agent pings ``WATCHDOG=1`` only while :meth:`HealthProbe.problem` finds nothing:
every supervised task's supervisor is running, appends get committed (or, when idle,
nothing waits), and the store answers its stats query. Clocks are injectable so the
rules are tested without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class CommitTracker:
    """Follows the store's futures to tell whether commits make progress.

    The watchdog withholds its ping when appends wait longer than ``stall_s`` for a
    commit, or when appends have failed for ``stall_s`` without a success since.
    """

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self.submitted_total = 0
        self.committed_total = 0
        self.failed_total = 0
        self.outstanding = 0
        self._waiting_since = clock()
        self._ok_at = clock()
        self._failing_since: float | None = None

    def submitted(self, fut: asyncio.Future[int]) -> None:
        """Count one submitted append; ``fut`` is the store's future for it."""
        self.submitted_total += 1
        self.outstanding += 1
        if self.outstanding == 1:
            self._waiting_since = self._clock()
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[int]) -> None:
        self.outstanding -= 1
        if fut.cancelled() or fut.exception() is not None:
            self.failed_total += 1
            if self._failing_since is None:
                self._failing_since = self._clock()
            return
        self.committed_total += 1
        self._ok_at = self._clock()
        self._failing_since = None

    def problem(self) -> str | None:
        """Why commits look stuck, or ``None``."""
        now = self._clock()
        if self.outstanding:
            waited = now - max(self._waiting_since, self._ok_at)
            if waited > self.stall_s:
                return f"{self.outstanding} appends waiting {waited:.0f} s for a commit"
        if self._failing_since is not None and now - self._failing_since > self.stall_s:
            return f"appends failing for {now - self._failing_since:.0f} s"
        return None


class HealthProbe:
    """Combines the liveness checks the systemd watchdog depends on."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self._store_ok_at = clock()
        self._unhealthy_since: float | None = None

    def store_ok(self) -> None:
        """The store answered a stats query."""
        self._store_ok_at = self._clock()

    def problem(self, commits: CommitTracker, dead_task: str | None) -> str | None:
        """The first problem found, or ``None`` while healthy."""
        now = self._clock()
        found: str | None
        if dead_task is not None:
            found = f"task {dead_task} ended"
        elif (c := commits.problem()) is not None:
            found = c
        elif now - self._store_ok_at > self.stall_s:
            found = f"buffer not answering for {now - self._store_ok_at:.0f} s"
        else:
            found = None
        if found is None:
            self._unhealthy_since = None
        elif self._unhealthy_since is None:
            self._unhealthy_since = now
        return found

    def unhealthy_for(self) -> float:
        """Seconds the pipeline has been unhealthy without a break (0 when healthy)."""
        since = self._unhealthy_since
        return 0.0 if since is None else self._clock() - since


