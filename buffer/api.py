"""The seam between the store-and-forward buffer and its users.

Drivers (through the recording policies) call :meth:`EventStore.submit` / ``append``;
the uplink calls ``lease`` / ``ack`` / ``release``. Neither side knows about SQLite, and
the store knows nothing about MQTT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Protocol

from config.events import Event, Priority

#: ``seq_gap`` reason and dead-letter reason of an event the broker refused even alone
#: (too large): set aside on the truck, not deleted (docs/wire-format.md).
REFUSED = "refused"


class Lane(Enum):
    """Which end of the pending log a lease takes from."""

    LIVE = "live"  # newest pending first: the dashboard sees the truck's present at once
    BACKFILL = "backfill"  # oldest pending first: the backlog drains in order

    def __repr__(self) -> str:
        return f"Lane.{self.name}"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the store hands it out: its ``seq`` and its encoded body.

    ``body`` is the UTF-8 JSON object made by :func:`config.events.encode_body`
    (``{"ts":..,"type":..,<fields>}``), without ``seq``.
    """

    seq: int
    ts_ms: int
    type: str
    priority: Priority
    body: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Events leased together; ack or release them by their ``seqs``."""

    lane: Lane
    events: tuple[StoredEvent, ...]

    @property
    def seqs(self) -> tuple[int, ...]:
        """The sequence numbers in this batch, in the order of ``events``."""
        return tuple(e.seq for e in self.events)

    @property
    def nbytes(self) -> int:
        """Total size of the bodies in this batch."""
        return sum(len(e.body) for e in self.events)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot for ``truckgw status``, the status topic and metrics.

    Frozen, and its mappings are read-only copies (``types.MappingProxyType``) taken
    when it is built: a snapshot never changes under its reader.
    """

    pending: int
    pending_bytes: int
    pending_by_class: Mapping[str, int]
    pending_bytes_by_class: Mapping[str, int]
    leased: int
    oldest_pending_ts_ms: int | None
    last_seq: int
    evicted_by_class: Mapping[str, int]
    expired_by_class: Mapping[str, int]
    quarantined_files: int
    file_bytes: int
    disk_full: bool = False
    #: Events set aside in the dead-letter table now (the broker refused them even alone).
    refused: int = 0
    #: seqs announced lost with quarantined files: not salvaged, maybe undelivered
    lost_quarantine: int = 0
    extra: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in _STATS_MAPPINGS:
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))


_STATS_MAPPINGS = (
    "pending_by_class", "pending_bytes_by_class", "evicted_by_class", "expired_by_class", "extra",
)


class EventStore(Protocol):
    """What the buffer offers to the rest of the agent."""

    def submit(self, event: Event) -> asyncio.Future[int]:
        """Queue an event for the next group commit without waiting.

        The future resolves to the event's ``seq`` once its batch is durable at the
        configured level. Never blocks, never refuses because the buffer is full.
        """
        ...

    async def append(self, event: Event) -> int:
        """``await submit(event)``: returns the seq once durable."""
        ...

    async def lease(self, lane: Lane, max_events: int, max_bytes: int) -> Batch | None:
        """Lease up to ``max_events`` / ``max_bytes`` pending events from ``lane``.

        Leased events are not handed out again until released. Returns ``None`` when
        nothing is pending.
        """
        ...

    async def ack(self, seqs: Sequence[int]) -> None:
        """Delete delivered events (call only after the broker acknowledged them).

        Raises :class:`~config.errors.StoreError` if the delete fails; the events then
        stay stored and leased until released.
        """
        ...

    async def release(self, seqs: Sequence[int]) -> None:
        """Return leased events to pending (e.g. on disconnect)."""
        ...

    async def wait_pending(self, timeout: float) -> bool:
        """Wait until something is pending and not leased; False on timeout."""
        ...

    async def dead_letter(self, seqs: Sequence[int], reason: str = REFUSED) -> list[int]:
        """Set leased events aside (the broker refused them even alone): out of the
        pending log, counted as ``refused``, announced by a ``seq_gap`` notice with
        ``reason``. Returns the seqs moved."""
        ...

    async def retry_dead_letters(self) -> int:
        """Move every set-aside event back to pending with its seq; returns how many."""
        ...

    async def stats(self) -> StoreStats:
        """Counters and sizes; cheap enough to call every few seconds."""
        ...


class StateStore(Protocol):
    """Small blobs of the agent's own state kept in the buffer file across restarts."""

    async def get_state(self, key: str) -> bytes | None:
        """The blob stored under ``key``, or None."""
        ...

    async def put_state(self, key: str, value: bytes | None) -> None:
        """Replace the blob of ``key``; ``None`` deletes it."""
        ...
