"""Sizing and eviction decisions (pure)."""

from __future__ import annotations

import pytest

from buffer import policy
from config.errors import StoreError


@pytest.mark.parametrize("max_bytes", [2**20, 8 * 2**20, 256 * 2**20, 4 * 2**30])
def test_budget_adds_up(max_bytes: int) -> None:
    b = policy.make_budget(max_bytes)
    # every file the buffer keeps is inside max_bytes: the ballast and the seq mark too
    assert (b.data_bytes + b.wal_bytes + 2 * b.commit_bytes + b.ballast_bytes
            + policy.MARK_FILES_BYTES) == max_bytes
    assert policy.BALLAST_MIN_BYTES <= b.ballast_bytes <= policy.BALLAST_MAX_BYTES
    assert b.data_bytes >= max_bytes // 2
    assert b.wal_autocheckpoint_pages >= 1
    assert b.low_water < b.data_bytes


def test_budget_rejects_tiny() -> None:
    with pytest.raises(StoreError, match="too small"):
        policy.make_budget(100_000)


def test_thin_keeps_every_nth_starting_with_first() -> None:
    seqs = list(range(10, 20))
    drop = policy.thin(seqs, keep_every=4)
    assert sorted(set(seqs) - set(drop)) == [10, 14, 18]


def test_choose_action() -> None:
    thin, drop = policy.EvictAction.THIN, policy.EvictAction.DROP
    assert policy.choose_action(1000, thinnable=True, thin_ineffective=False) is thin
    assert policy.choose_action(1000, thinnable=True, thin_ineffective=True) is drop
    assert policy.choose_action(1000, thinnable=False, thin_ineffective=False) is drop
    assert policy.choose_action(3, thinnable=True, thin_ineffective=False) is drop


def test_window_rows_bounded() -> None:
    assert policy.window_rows(10, 200, policy.EvictAction.DROP) == policy.EVICT_MIN_ROWS
    assert policy.window_rows(10**9, 200, policy.EvictAction.THIN) == policy.EVICT_MAX_ROWS
    drop = policy.window_rows(200_000, 200, policy.EvictAction.DROP)
    thin = policy.window_rows(200_000, 200, policy.EvictAction.THIN)
    assert thin > drop
