"""Supervision of the agent's named tasks: restart on crash with the one backoff policy.

A GPS fault must never take down CAN or the uplink: each pipeline task runs under
:func:`supervise`, which restarts it after a crash and stops the agent only for a
configuration error, which no retry can fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from config import EX_CONFIG
from config.errors import ConfigError
from config.retry import Backoff, RetryPolicy

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # a task that ran this long before crashing starts its backoff afresh


@dataclass(slots=True)
class TaskInfo:
    """Supervision record of one named pipeline task."""

    name: str
    restarts: int = 0
    alive: bool = False
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For the state file."""
        return {"alive": self.alive, "restarts": self.restarts, "last_error": self.last_error}


async def supervise(
    info: TaskInfo,
    body: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    request_stop: Callable[[int, str], None],
    *,
    backoff_min_s: float = BACKOFF_MIN_S,
    backoff_max_s: float = BACKOFF_MAX_S,
) -> None:
    """Run ``body`` until ``stop`` is set, restarting it with backoff when it fails.

    A crash is logged (traceback only at debug level, so a flapping device cannot fill
    the journal) and ``body`` runs again after the project's backoff
    (:mod:`config.retry`), which starts over after a run of :data:`STABLE_S`. A
    :class:`ConfigError` cannot get better by retrying: it calls
    ``request_stop(EX_CONFIG, reason)`` and ends supervision.
    """
    backoff = Backoff(RetryPolicy(min_s=backoff_min_s, max_s=backoff_max_s, stable_s=STABLE_S))
    while not stop.is_set():
        started = time.monotonic()
        info.alive = True
        try:
            await body()
        except ConfigError as exc:
            info.last_error = str(exc)
            log.critical("task %s: configuration error: %s", info.name, exc)
            request_stop(EX_CONFIG, f"configuration error in {info.name}")
            return
        except Exception as exc:  # a crashed task restarts; the others keep running
            info.last_error = f"{type(exc).__name__}: {exc}"
            log.error("task %s crashed: %s", info.name, info.last_error,  # noqa: TRY400
                      exc_info=log.isEnabledFor(logging.DEBUG))
        else:
            if stop.is_set():
                break
            info.last_error = "returned unexpectedly"
            log.warning("task %s returned unexpectedly", info.name)
        finally:
            info.alive = False
        info.restarts += 1
        if time.monotonic() - started >= backoff.policy.stable_s:
            backoff.reset()
        delay = backoff.next_delay()
        log.info("restarting task %s in %.1f s", info.name, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
