"""The one retry policy: delays within bounds, reset after a stable run, stop-aware waits."""

from __future__ import annotations

import asyncio

import pytest

from config.retry import Backoff, RetryPolicy, retry_forever


def test_delays_grow_within_floor_and_cap() -> None:
    policy = RetryPolicy(min_s=0.5, max_s=8.0)
    backoff = Backoff(policy)
    delays = [backoff.next_delay() for _ in range(12)]
    assert backoff.attempt == 12
    for n, d in enumerate(delays, start=1):
        assert 0.5 <= d <= min(8.0, 0.5 * 2 ** (n - 1)) + 1e-9
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == pytest.approx(0.5)  # attempt 1: [min, min]


def test_policy_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="min_s <= max_s"):
        RetryPolicy(min_s=2.0, max_s=1.0)


async def test_retry_forever_retries_then_returns() -> None:
    calls = 0
    seen: list[tuple[str, int]] = []

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError(f"fail {calls}")

    await retry_forever(
        body, RetryPolicy(min_s=0.01, max_s=0.02), asyncio.Event(),
        retry_on=(OSError,), on_failure=lambda e, n, _d: seen.append((str(e), n)),
    )
    assert calls == 3
    assert seen == [("fail 1", 1), ("fail 2", 2)]


async def test_stable_run_resets_attempts_and_other_errors_propagate() -> None:
    now = [0.0]
    attempts: list[int] = []
    calls = 0

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            now[0] += 100.0  # this run "lasted" longer than stable_s
        if calls == 5:
            raise KeyError("not retried")
        raise OSError("again")

    with pytest.raises(KeyError):
        await retry_forever(
            body, RetryPolicy(min_s=0.001, max_s=0.002, stable_s=60.0), asyncio.Event(),
            retry_on=(OSError,), on_failure=lambda _e, n, _d: attempts.append(n),
            clock=lambda: now[0],
        )
    assert attempts == [1, 2, 1, 2]


async def test_stop_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()

    async def body() -> None:
        stop.set()
        raise OSError("down")

    # a one-hour backoff would hang the test if the wait ignored stop
    await asyncio.wait_for(
        retry_forever(body, RetryPolicy(min_s=3600, max_s=3600), stop, retry_on=(OSError,)),
        timeout=5,
    )
