"""LeaseBook: the in-memory lease set and its skip intervals (pure)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.leases import SEQ_MAX, LeaseBook
from config.events import Priority

P = Priority.POSITION


def test_cover_merges_touching_intervals() -> None:
    book = LeaseBook()
    book.add([(1, P, 10)], 1, 5)
    book.add([(7, P, 10)], 6, 9)
    book.add([(20, P, 10)], 20, 20)
    assert book.intervals == [(1, 9), (20, 20)]
    assert book.gap_up(1) == (10, 19)
    assert book.gap_up(20) == (21, SEQ_MAX)
    assert book.gap_down(20) == (19, 10)
    assert book.gap_down(5) == (0, 0)


def test_release_uncovers_and_returns_to_pending() -> None:
    book = LeaseBook()
    book.add([(s, P, 1) for s in range(1, 11)], 1, 10)
    assert book.release([4, 5, 99]) == 2
    assert 4 not in book and 3 in book
    assert book.intervals == [(1, 3), (6, 10)]
    assert len(book) == 8


def test_pop_returns_known_only() -> None:
    book = LeaseBook()
    book.add([(3, Priority.TELEMETRY, 7)], 3, 3)
    assert book.pop([3, 4]) == [(3, Priority.TELEMETRY, 7)]
    assert len(book) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 60), st.integers(0, 8)), max_size=40))
def test_coverage_matches_a_naive_model(ops: list[tuple[bool, int, int]]) -> None:
    """Covered == union of covered ranges minus released ranges, for any op sequence."""
    book = LeaseBook()
    covered: set[int] = set()
    for is_cover, lo, width in ops:
        hi = lo + width
        if is_cover:
            book.add([], lo, hi)
            covered |= set(range(lo, hi + 1))
        else:
            book.add([(lo, P, 1), (hi, P, 1)], 1, 0)  # lease without coverage
            book.release([lo, hi])
            covered -= set(range(lo, hi + 1))
    got = {s for lo, hi in book.intervals for s in range(lo, hi + 1)}
    assert got == covered
    ivs = book.intervals
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ivs))
    for x in range(80):
        start, end = book.gap_up(x)
        assert start >= x and start not in covered
        assert all(s not in covered for s in range(start, min(end, 80) + 1))
        start, end = book.gap_down(x)
        assert start <= x and (start not in covered or start == 0)
