"""Pure tests of the delivery core's flow control: backoff, token bucket, lane split."""

from __future__ import annotations

import pytest

from buffer.api import Lane
from config.retry import Backoff, RetryPolicy
from gateway.uplink_flow import LaneChooser, TokenBucket


def test_backoff_grows_with_jitter_within_floor_and_cap() -> None:
    # the delivery core's reconnect backoff: the project's one retry policy
    b = Backoff(RetryPolicy(1.0, 120.0))
    delays = [b.next_delay() for _ in range(40)]
    assert delays[0] == 1.0  # first retry: exactly the floor
    assert all(1.0 <= d <= 120.0 for d in delays)
    for n, d in enumerate(delays[:7], start=1):
        assert d <= min(120.0, 2 ** (n - 1))
    assert max(delays[10:]) > 10  # it really grows
    assert len({round(d, 6) for d in delays[10:]}) > 5  # and is jittered
    b.reset()
    assert b.next_delay() == 1.0


def test_token_bucket_unlimited() -> None:
    tb = TokenBucket(0, 1000, now=0.0)
    tb.spend(10**9, 0.0)
    assert tb.delay(10**9, 0.0) == 0.0


def test_token_bucket_limits_rate() -> None:
    tb = TokenBucket(1000, 1000, now=0.0)
    assert tb.delay(1000, 0.0) == 0.0
    tb.spend(1000, 0.0)
    assert tb.delay(500, 0.0) == pytest.approx(0.5)
    assert tb.delay(500, 0.5) == pytest.approx(0.0)
    tb.spend(500, 0.5)
    # over a long run the rate is what was configured
    sent, now = 0, 1.0
    for _ in range(100):
        now += tb.delay(400, now)
        tb.spend(400, now)
        sent += 400
    assert sent / now == pytest.approx(1000, rel=0.1)


def test_token_bucket_message_larger_than_burst_goes_into_debt() -> None:
    tb = TokenBucket(100, 100, now=0.0)
    assert tb.delay(5000, 0.0) == 0.0  # a full bucket lets any single message go
    tb.spend(5000, 0.0)
    assert tb.delay(100, 0.0) == pytest.approx(50.0)


@pytest.mark.parametrize(("window", "share", "live_slots"),
                         [(16, 0.5, 8), (16, 0.0, 0), (16, 1.0, 16), (1, 0.5, 1), (10, 0.25, 3)])
def test_lane_split(window: int, share: float, live_slots: int) -> None:
    ch = LaneChooser(window, share)
    assert ch.live_slots == live_slots
    lanes = []
    live = back = 0
    for _ in range(window):
        lane = ch.choose(live, back)
        ch.sent(lane)
        lanes.append(lane)
        if lane is Lane.LIVE:
            live += 1
        else:
            back += 1
    assert live == live_slots
    assert back == window - live_slots
    if live_slots:
        assert lanes[0] is Lane.LIVE  # live goes first


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.75])
def test_lane_share_holds_when_acks_are_instant(share: float) -> None:
    # on a fast link every slot is free again before the next choice
    ch = LaneChooser(16, share)
    for _ in range(1000):
        ch.sent(ch.choose(0, 0))
    assert ch.live_sent / 1000 == pytest.approx(share, abs=0.01)
