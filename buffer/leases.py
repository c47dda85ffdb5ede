"""In-memory lease book: which seqs are handed out, and which seq ranges a scan may skip.

Leases are deliberately not written to disk: a lease means "a publish of these events is
in flight on the current connection", which cannot outlive the process. After a restart
every stored event is pending again and is sent again (at-least-once; consumers drop
duplicates by ``seq``).

Besides the leased seqs themselves the book keeps *covered* intervals: seq ranges in
which every stored row is known to be leased (or gone). Lease scans jump over them, so
handing out the next batch costs one indexed range query even with many batches in
flight. Coverage is only ever an optimisation: a scan still checks each row against the
leased set, so dropping coverage (on release, or when there are too many intervals) is
always safe. Rows are only ever added above every existing seq, and coverage never
extends above the last committed seq, so a new row cannot fall inside a covered range.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from config.events import Priority

#: Cap on covered intervals; beyond it the narrowest interval is forgotten.
MAX_COVERED_INTERVALS = 1024
#: Largest seq a gap can reach (SQLite integers are signed 64-bit).
SEQ_MAX = 2**63 - 1


class LeaseBook:
    """Leased seqs with their class and body size, plus skip intervals for scans."""

    __slots__ = ("_his", "_leased", "_los")

    def __init__(self) -> None:
        self._leased: dict[int, tuple[Priority, int]] = {}
        self._los: list[int] = []  # starts of disjoint, non-adjacent covered intervals
        self._his: list[int] = []  # their ends (inclusive)

    def __len__(self) -> int:
        return len(self._leased)

    def __contains__(self, seq: object) -> bool:
        return seq in self._leased

    def __repr__(self) -> str:
        return f"LeaseBook(leased={len(self._leased)}, intervals={len(self._los)})"

    @property
    def intervals(self) -> list[tuple[int, int]]:
        """Covered intervals (for tests and debugging)."""
        return list(zip(self._los, self._his, strict=True))

    def leased_by_class(self) -> dict[Priority, int]:
        """Number of leased events per class."""
        out = dict.fromkeys(Priority, 0)
        for prio, _ in self._leased.values():
            out[prio] += 1
        return out

    def add(self, rows: Iterable[tuple[int, Priority, int]], lo: int, hi: int) -> None:
        """Record leased ``(seq, class, size)`` rows found by a scan of ``[lo, hi]``.

        Every stored row in ``[lo, hi]`` must now be leased (or absent).
        """
        for seq, prio, size in rows:
            self._leased[seq] = (prio, size)
        if lo <= hi:
            self._cover(lo, hi)

    def pop(self, seqs: Iterable[int]) -> list[tuple[int, Priority, int]]:
        """Forget leases (after an ack); returns the known ``(seq, class, size)``."""
        out = []
        for seq in seqs:
            info = self._leased.pop(seq, None)
            if info is not None:
                out.append((seq, info[0], info[1]))
        return out

    def restore(self, rows: Iterable[tuple[int, Priority, int]]) -> None:
        """Lease again rows just popped (an ack whose delete failed): they stay out of
        scans until released. Coverage is not touched (popping never uncovered them)."""
        for seq, prio, size in rows:
            self._leased[seq] = (prio, size)

    def uncover(self, lo: int, hi: int) -> None:
        """Forget coverage of ``[lo, hi]``: rows were stored there again (dead letters
        moved back), below the top."""
        if lo <= hi:
            self._uncover(lo, hi)

    def release(self, seqs: Iterable[int]) -> int:
        """Make leased seqs pending again; returns how many were leased."""
        got = self.pop(seqs)
        if got:
            self._uncover(min(s for s, _, _ in got), max(s for s, _, _ in got))
        return len(got)

    def clear(self) -> None:
        """Release everything."""
        self._leased.clear()
        self._los.clear()
        self._his.clear()

    def gap_up(self, seq: int) -> tuple[int, int]:
        """The first uncovered stretch at or above ``seq``: ``(start, end)``."""
        i = bisect_right(self._los, seq) - 1
        if i >= 0 and self._his[i] >= seq:
            seq = self._his[i] + 1
        j = bisect_right(self._los, seq)
        end = self._los[j] - 1 if j < len(self._los) else SEQ_MAX
        return seq, end

    def gap_down(self, seq: int) -> tuple[int, int]:
        """The first uncovered stretch at or below ``seq``: ``(start, end)``, start >= end."""
        i = bisect_right(self._los, seq) - 1
        if i >= 0 and self._his[i] >= seq:
            seq = self._los[i] - 1
            i -= 1
        end = self._his[i] + 1 if i >= 0 else 0
        return seq, end

    def _cover(self, lo: int, hi: int) -> None:
        # merge with every interval that overlaps or touches [lo, hi]
        i = bisect_left(self._his, lo - 1)
        j = bisect_right(self._los, hi + 1)
        if i < j:
            lo = min(lo, self._los[i])
            hi = max(hi, self._his[j - 1])
        self._los[i:j] = [lo]
        self._his[i:j] = [hi]
        if len(self._los) > MAX_COVERED_INTERVALS:
            k = min(range(len(self._los)), key=lambda n: self._his[n] - self._los[n])
            del self._los[k], self._his[k]

    def _uncover(self, lo: int, hi: int) -> None:
        i = bisect_left(self._his, lo)
        j = bisect_right(self._los, hi)
        if i >= j:
            return
        keep_los, keep_his = [], []
        if self._los[i] < lo:
            keep_los.append(self._los[i])
            keep_his.append(lo - 1)
        if self._his[j - 1] > hi:
            keep_los.append(hi + 1)
            keep_his.append(self._his[j - 1])
        self._los[i:j] = keep_los
        self._his[i:j] = keep_his
