"""The store's counters: pending rows and bytes per class, evicted/expired, extras.

Plain in-memory numbers, shared by the parts of :class:`buffer.store.SqliteStore`; the
evicted and expired counters mirror the ones persisted in ``meta``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from buffer import policy, schema
from config.events import Priority


@dataclass(slots=True)
class Tally:
    """In-memory counters; evicted/expired mirror the persisted meta counters."""

    pending: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    pending_bytes: dict[Priority, int] = field(
        default_factory=lambda: dict.fromkeys(Priority, 0)
    )
    evicted: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    expired: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    extra: Counter[str] = field(default_factory=Counter)
    #: Events in ``dead_letter`` now (refused by the broker even alone; not pending).
    dead_letters: int = 0
    #: seqs announced lost with quarantined files (not salvaged), persisted in meta
    lost_quarantine: int = 0
    #: Per class: thinning has passed every row up to this seq in the current round.
    thin_mark: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))

    def add(self, p: Priority, n: int, nbytes: int) -> None:
        """Rows stored."""
        self.pending[p] += n
        self.pending_bytes[p] += nbytes

    def remove(self, p: Priority, n: int, nbytes: int) -> None:
        """Rows deleted."""
        self.pending[p] -= n
        self.pending_bytes[p] -= nbytes

    def total_pending(self) -> int:
        """Stored events of all classes."""
        return sum(self.pending.values())

    def avg_row(self, p: Priority) -> int:
        """Mean stored size of a row of class ``p`` (estimate)."""
        n = self.pending[p]
        return policy.row_cost(self.pending_bytes[p] // n if n else 0)

    def load_meta(self, meta: Mapping[str, int]) -> None:
        """Take the persisted counters from ``meta``."""
        for p in Priority:
            self.evicted[p] = meta.get(schema.meta_evicted(p), 0)
            self.expired[p] = meta.get(schema.meta_expired(p), 0)
        self.lost_quarantine = meta.get(schema.META_LOST_QUARANTINE, 0)
