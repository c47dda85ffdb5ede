"""The one retry policy of truckgw: capped exponential backoff with jitter, via tenacity.

Every reconnect or restart loop in the agent (GPS port, CAN bus, MQTT uplink, supervised
tasks) uses the same three pieces:

- :class:`RetryPolicy`: the numbers (``min_s``, ``max_s``, ``stable_s``), frozen; the
  delays are tenacity's ``wait_random_exponential``: attempt ``n`` waits a uniform random
  time in ``[min_s, min(max_s, min_s * 2**(n-1))]``, so two attempts are never closer
  than ``min_s`` (no tight loop against a device or broker that fails at once) and a
  fleet of trucks does not reconnect in lockstep after a broker restart.
- :class:`Backoff`: the sans-I/O counter of consecutive failures of one thing; it returns
  the next delay and reads no clock. The MQTT delivery core owns one of these.
- :func:`retry_forever`: the asyncio loop around a body that fails now and then: run,
  count the failure, wait (interruptibly), run again; a run that lasted ``stable_s``
  before it failed starts the backoff over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import tenacity


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one kind of thing is retried. ``0 < min_s <= max_s``."""

    min_s: float = 1.0
    max_s: float = 60.0
    #: a run this long before it failed counts as "it worked": the backoff starts over
    stable_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(
                f"retry policy needs 0 < min_s <= max_s, got {self.min_s}, {self.max_s}"
            )

    def wait(self) -> tenacity.wait.wait_base:
        """The tenacity wait strategy for this policy."""
        return tenacity.wait_random_exponential(
            multiplier=self.min_s, min=self.min_s, max=self.max_s
        )


class Backoff:
    """Consecutive failures of one thing and the delay before the next try.

    Pure: no clock, no sleep. Delays come from the policy's tenacity wait strategy
    evaluated through a ``tenacity.Retrying`` and its ``RetryCallState``.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._retrying = tenacity.Retrying(
            wait=policy.wait(), stop=tenacity.stop_never, reraise=True
        )
        self.attempt = 0

    def next_delay(self) -> float:
        """Count one failed attempt and return the seconds to wait before the next."""
        self.attempt += 1
        state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        state.attempt_number = self.attempt
        return float(self._retrying.wait(state))

    def reset(self) -> None:
        """Forget past failures (after a run that worked)."""
        self.attempt = 0


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True when ``stop`` is set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
    return stop.is_set()


#: Called after each failure with the exception, the attempt number and the delay.
OnFailure = Callable[[BaseException, int, float], None]


async def retry_forever(
    body: Callable[[], Awaitable[None]],
    policy: RetryPolicy,
    stop: asyncio.Event,
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    on_failure: OnFailure | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``body`` until it returns or ``stop`` is set, retrying ``retry_on`` failures.

    Any other exception propagates. The wait between attempts ends early when ``stop``
    is set. A run of at least ``policy.stable_s`` before failing resets the backoff.
    """
    backoff = Backoff(policy)
    while not stop.is_set():
        started = clock()
        try:
            await body()
        except retry_on as exc:
            if clock() - started >= policy.stable_s:
                backoff.reset()
            delay = backoff.next_delay()
            if on_failure is not None:
                on_failure(exc, backoff.attempt, delay)
            if await sleep_unless(stop, delay):
                return
        else:
            return
