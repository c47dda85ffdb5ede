"""The event model shared by drivers, recording, buffer and uplink.

An :class:`Event` is what a driver's recording policy produces. The store gives it a
``seq`` and keeps its *body*: the UTF-8 JSON object ``{"ts": ..., "type": ..., <fields>}``
made by :func:`encode_body`. The wire encoder puts ``seq`` in front of the body, so an
event is serialised to JSON exactly once, at ingest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from config.errors import EventError


class Priority(IntEnum):
    """Eviction class: a lower value outlives a higher one when the buffer is full."""

    CRITICAL = 0  # dtc, trip, status: kept longest
    POSITION = 1  # gps points
    TELEMETRY = 2  # raw engine telemetry: evicted first


#: Event type -> eviction class. Unknown types are treated as CRITICAL (never thinned first).
TYPE_PRIORITY: Mapping[str, Priority] = {
    "dtc": Priority.CRITICAL,
    "trip": Priority.CRITICAL,
    "status": Priority.CRITICAL,
    "seq_gap": Priority.CRITICAL,
    "gps": Priority.POSITION,
    "engine": Priority.TELEMETRY,
}

#: Optional key, present and true when ``ts`` came from a system clock that neither GPS
#: nor NTP had confirmed (see docs/time.md): such a ``ts`` may be far off.
TS_UNVERIFIED = "ts_unverified"

#: Keys every event body carries and which fields may therefore not use.
RESERVED_KEYS = frozenset({"seq", "ts", "type"})


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded observation, before it has a sequence number."""

    type: str
    ts_ms: int
    fields: Mapping[str, Any]

    @property
    def priority(self) -> Priority:
        """The eviction class of this event's type."""
        return TYPE_PRIORITY.get(self.type, Priority.CRITICAL)


def seq_gap_event(ts_ms: int, first: int, last: int, reason: str) -> Event:
    """The notice a store records when seqs ``first..last`` will never be delivered.

    ``reason`` is ``"unclean_start"`` (the agent stopped without closing the buffer:
    the numbers were reserved but never used, or, in ``normal`` durability after a power
    cut, lost in the last commit window) or ``"quarantine"`` (the buffer file was
    corrupt and set aside; its undelivered events stay in the quarantined file) or
    ``"missing_file"`` (the buffer file was gone at start: deleted by hand).
    Consumers treat a missing seq inside such a range as explained, not as a loss.
    """
    return Event("seq_gap", ts_ms, {"first": first, "last": last, "reason": reason})


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_body(event: Event) -> bytes:
    """Serialise an event to its stored body: ``{"ts":..,"type":..,<fields>}``.

    Raises :class:`~config.errors.EventError` (a ``ValueError``) for fields named like
    reserved keys or holding NaN/inf, which JSON cannot carry: a reading without a value
    leaves the field out rather than sending a non-number.
    """
    clash = RESERVED_KEYS.intersection(event.fields)
    if clash:
        raise EventError(f"event fields use reserved keys: {sorted(clash)}")
    obj: dict[str, Any] = {"ts": event.ts_ms, "type": event.type}
    obj.update(event.fields)
    try:
        return _ENCODER.encode(obj).encode()
    except ValueError as exc:  # NaN or infinity
        raise EventError(f"{event.type} event: {exc}") from exc


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse a stored body back into a dict (for tests, the status command and the sink)."""
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise TypeError("event body is not a JSON object")
    return obj
