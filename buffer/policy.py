"""Pure sizing and eviction decisions of the buffer (no I/O; tested from numbers alone).

The file budget: ``max_bytes`` covers every file the buffer keeps: the main file, the WAL,
the ballast and the seq mark (with its temporary). The WAL is bounded by the checkpoint
threshold plus one transaction, so the main file gets what is left::

    max_bytes = data_budget + wal_bytes + 2 * commit_bytes + ballast_bytes + MARK_FILES_BYTES

Eviction picks a class in :data:`~buffer.schema.EVICTION_ORDER` (telemetry, then
position, then critical). Telemetry and position are first *thinned*: of the oldest
window of a class every :data:`THIN_KEEP_EVERY`-th point is kept and the others go, so an
old stretch gets sparser instead of vanishing; repeated passes make the oldest data
sparser still. A class whose thinning frees too little space (or which is already too
small to thin) loses its oldest range instead. Critical events are never thinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from buffer.schema import PAGE_SIZE
from config.errors import StoreError

#: Keep one point in this many when thinning (>= 3 so emptied B-tree pages merge).
THIN_KEEP_EVERY = 4
#: A class with fewer evictable rows than this is trimmed by range, not thinned.
THIN_MIN_ROWS = 64
#: Thinning that frees less than this share of the bytes it deleted is "ineffective"
#: (judged once it has deleted THIN_JUDGE_BYTES within one eviction).
THIN_MIN_YIELD = 0.25
THIN_JUDGE_BYTES = 256 * 1024
#: Rows considered per eviction step (bounds the transaction and the WAL growth).
EVICT_MIN_ROWS = 32
EVICT_MAX_ROWS = 4096
#: Evict this much below the budget so eviction does not run at every commit.
EVICT_HEADROOM = 0.02
#: Per-row storage overhead estimate (record header, cell pointer, B-tree slack).
ROW_OVERHEAD_BYTES = 40
#: Smallest budget the store plans with (the config allows no less).
MIN_MAX_BYTES = 1024 * 1024
#: WAL bound: a share of max_bytes, clamped.
WAL_SHARE = 16  # 1/16 of max_bytes
WAL_MIN_BYTES = 64 * 1024
WAL_MAX_BYTES = 4 * 1024 * 1024
#: Largest group commit in bytes: a share of max_bytes, clamped.
COMMIT_SHARE = 32
COMMIT_MIN_BYTES = 16 * 1024
COMMIT_MAX_BYTES = 1024 * 1024
#: The ballast (a spare file deleted to recover on a full disk): a share of max_bytes.
BALLAST_SHARE = 8
BALLAST_MIN_BYTES = 64 * 1024
BALLAST_MAX_BYTES = 512 * 1024
#: The seq mark and its temporary: one filesystem block each.
MARK_FILES_BYTES = 2 * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class Budget:
    """How ``max_bytes`` is split between the main file, the WAL and one commit."""

    max_bytes: int
    data_bytes: int
    wal_bytes: int
    commit_bytes: int
    ballast_bytes: int = 0

    @property
    def wal_autocheckpoint_pages(self) -> int:
        """``PRAGMA wal_autocheckpoint`` value."""
        return max(1, self.wal_bytes // PAGE_SIZE)

    @property
    def low_water(self) -> int:
        """Eviction frees space down to this many bytes of used pages."""
        return int(self.data_bytes * (1 - EVICT_HEADROOM))


def make_budget(max_bytes: int) -> Budget:
    """Split ``max_bytes`` (>= 1 MiB) into data, WAL, commit and ballast budgets.

    Raises :class:`~config.errors.StoreError` if the data budget would be under half.
    """
    wal = min(WAL_MAX_BYTES, max(WAL_MIN_BYTES, max_bytes // WAL_SHARE))
    commit = min(COMMIT_MAX_BYTES, max(COMMIT_MIN_BYTES, max_bytes // COMMIT_SHARE))
    ballast = min(BALLAST_MAX_BYTES, max(BALLAST_MIN_BYTES, max_bytes // BALLAST_SHARE))
    data = max_bytes - wal - 2 * commit - ballast - MARK_FILES_BYTES
    if data < max_bytes // 2:
        raise StoreError(f"max_bytes {max_bytes} too small for the buffer")
    return Budget(max_bytes=max_bytes, data_bytes=data, wal_bytes=wal, commit_bytes=commit,
                  ballast_bytes=ballast)


def row_cost(body_len: int) -> int:
    """Estimated bytes a stored row occupies in the main file."""
    return body_len + ROW_OVERHEAD_BYTES


class EvictAction(Enum):
    """How a class gives up space."""

    THIN = "thin"  # keep every Nth of the oldest window
    DROP = "drop"  # delete the oldest window

    def __repr__(self) -> str:
        return f"EvictAction.{self.name}"


def choose_action(evictable_rows: int, *, thinnable: bool, thin_ineffective: bool) -> EvictAction:
    """Thin a low-priority class while it is large and thinning pays; else drop."""
    if thinnable and not thin_ineffective and evictable_rows >= THIN_MIN_ROWS:
        return EvictAction.THIN
    return EvictAction.DROP


def window_rows(need_bytes: int, avg_row_bytes: int, action: EvictAction) -> int:
    """How many of the oldest rows one eviction step should look at."""
    rows = need_bytes // max(1, avg_row_bytes) + 1
    if action is EvictAction.THIN:
        rows = rows * THIN_KEEP_EVERY // (THIN_KEEP_EVERY - 1) + 1
    return min(EVICT_MAX_ROWS, max(EVICT_MIN_ROWS, rows))


def thin(seqs: list[int], keep_every: int = THIN_KEEP_EVERY) -> list[int]:
    """The seqs to delete so that every ``keep_every``-th (starting with the first) stays."""
    return [s for i, s in enumerate(seqs) if i % keep_every]
