"""One MQTT message in, the rows to store out (pure: no I/O, the arrival time is passed in).

The truck id is the topic's, because the topic is what the broker's ACL vouches for
(``pattern write fleet/%c/#``); a payload that names another truck is quarantined, so it
can neither land events under a truck that did not send them nor make that truck's real
events look like duplicates. Every message that is not a well-formed batch or status is
quarantined with a :class:`QuarantineReason`: the sink acks it, so it cannot block the
subscription, and keeps it for inspection.
"""

from __future__ import annotations

import enum
import json
import string
from dataclasses import dataclass
from typing import Any, Final

import zstandard

from config.errors import WireError
from gateway import wire

#: Default bound on a payload after decompression. The contract caps a batch at the
#: truck's ``[mqtt].max_payload_bytes`` (128 KiB by default); 1 MiB leaves room for
#: trucks configured larger while keeping one bad message far from the memory budget.
DEFAULT_MAX_PAYLOAD_BYTES: Final = 1024 * 1024
#: Bad payloads of one truck are logged at most once per this many seconds.
LOG_INTERVAL_S: Final = 60.0
#: The throttle forgets trucks beyond this many keys (a flood of invented topics).
MAX_THROTTLE_KEYS: Final = 10_000


class TopicKind(enum.Enum):
    """What a subscribed topic carries."""

    EVENTS = "events"
    STATUS = "status"

    def __repr__(self) -> str:
        return f"TopicKind.{self.name}"


class QuarantineReason(enum.StrEnum):
    """Why a message was quarantined (the ``reason`` column)."""

    BAD_TOPIC = "bad_topic"
    UNDECODABLE = "undecodable"
    TOO_BIG = "too_big"
    SCHEMA = "schema"
    TRUCK_MISMATCH = "truck_mismatch"
    #: the database refused the rows of this message (and only this one)
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed ``{prefix}/{truck_id}/events[/...]`` or ``{prefix}/{truck_id}/status``."""

    kind: TopicKind
    truck_id: str


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of ``events``; ``body`` is the event's JSON object as received."""

    truck_id: str
    seq: int
    ts: int
    type: str
    body: str


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The rows of one events message (possibly empty), all of the batch's ``stream``
    (``""``, the default stream, for batches of trucks older than revision 3)."""

    truck_id: str
    rows: tuple[EventRow, ...]
    received_ms: int
    stream: str = ""


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One row of ``status_history``."""

    truck_id: str
    ts: int
    state: str
    body: str
    received_ms: int


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A message the sink refused, kept with its topic and reason."""

    topic: str
    truck_id: str | None
    reason: QuarantineReason
    detail: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message with nothing to store (an empty retained status clears the topic)."""

    topic: str


#: Everything one message can become.
Outcome = EventBatch | StatusRow | Quarantined | Ignored

_TRUCK_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_-")
_MAX_DETAIL: Final = 300
#: Integers the tables hold (SQLite INTEGER, PostgreSQL bigint).
_INT64_MAX: Final = 2**63 - 1


def parse_topic(prefix: str, topic: str) -> Topic | None:
    """The kind and truck of ``topic`` under ``prefix``; None if it is not one of ours."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) < 2 or not valid_truck_id(parts[0]):
        return None
    suffixes = ([wire.COMPACT_TOPIC_SUFFIX], [wire.DICT_TOPIC_SUFFIX])
    if parts[1] == "events" and (len(parts) == 2 or parts[2:] in suffixes):
        return Topic(TopicKind.EVENTS, parts[0])
    if parts[1] == "status" and len(parts) == 2:
        return Topic(TopicKind.STATUS, parts[0])
    return None


def valid_truck_id(truck_id: str) -> bool:
    """``[A-Za-z0-9_-]{1,64}``, as the wire contract defines it."""
    return 0 < len(truck_id) <= 64 and all(c in _TRUCK_ID_CHARS for c in truck_id)


def classify(
    topic: str,
    payload: bytes,
    content_type: str | None,
    received_ms: int,
    *,
    prefix: str = "fleet",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Outcome:
    """Turn one received message into what the store writes."""
    parsed = parse_topic(prefix, topic)
    if parsed is None:
        return Quarantined(topic, None, QuarantineReason.BAD_TOPIC, "not a fleet topic",
                           payload, received_ms)
    if parsed.kind is TopicKind.STATUS:
        return _status(topic, parsed.truck_id, payload, received_ms)
    return _events(topic, parsed.truck_id, payload, content_type, received_ms=received_ms,
                   limit=max_payload_bytes)


def _quarantine(topic: str, truck_id: str, reason: QuarantineReason, detail: str, *,
                payload: bytes, received_ms: int) -> Quarantined:
    return Quarantined(topic, truck_id, reason, detail[:_MAX_DETAIL], payload, received_ms)


def _events(topic: str, truck_id: str, payload: bytes, content_type: str | None, *,
            received_ms: int, limit: int) -> Outcome:
    compact = wire.is_compact(topic, content_type)
    size = _decoded_size(payload, compact=compact)
    if size is not None and size > limit:
        return _quarantine(topic, truck_id, QuarantineReason.TOO_BIG,
                           f"{size} bytes after decompression, over {limit}",
                           payload=payload, received_ms=received_ms)
    try:
        batch = wire.decode_payload(payload, compact=compact, max_decoded_bytes=limit)
    except WireError as exc:
        return _quarantine(topic, truck_id, _reason_of(exc), str(exc), payload=payload,
                           received_ms=received_ms)
    if batch["truck_id"] != truck_id:
        return _quarantine(topic, truck_id, QuarantineReason.TRUCK_MISMATCH,
                           f"payload claims truck {batch['truck_id']!r}",
                           payload=payload, received_ms=received_ms)
    rows = []
    for i, ev in enumerate(batch["events"]):
        problem = _event_problem(ev)
        if problem is not None:
            return _quarantine(topic, truck_id, QuarantineReason.SCHEMA,
                               f"events[{i}]: {problem}", payload=payload, received_ms=received_ms)
        body, problem = _encode_body(ev)
        if problem is not None:
            return _quarantine(topic, truck_id, QuarantineReason.SCHEMA,
                               f"events[{i}]: {problem}", payload=payload,
                               received_ms=received_ms)
        rows.append(EventRow(truck_id, ev["seq"], ev["ts"], ev["type"], body))
    return EventBatch(truck_id, tuple(rows), received_ms, wire.batch_stream(batch))


def _decoded_size(payload: bytes, *, compact: bool) -> int | None:
    """The size after decompression when known up front (None: let the decoder bound it)."""
    if not compact:
        return len(payload)
    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        return None  # not a frame: the decoder says so
    return size if size >= 0 else None


def _reason_of(exc: WireError) -> QuarantineReason:
    # decode_payload raises one error type; its envelope checks name the batch or an event
    text = str(exc)
    if text.startswith(("batch ", "events[")):
        return QuarantineReason.SCHEMA
    if "exceeds" in text or "inflates" in text:
        return QuarantineReason.TOO_BIG
    return QuarantineReason.UNDECODABLE


def _event_problem(ev: dict[str, Any]) -> str | None:
    """What the contract requires beyond the decoder's envelope check, and what the
    databases can hold (64-bit integers)."""
    if not 1 <= ev["seq"] <= _INT64_MAX:
        return f"seq {ev['seq']} is not in 1..2**63-1"
    if not -_INT64_MAX <= ev["ts"] <= _INT64_MAX:
        return f"ts {ev['ts']} does not fit 64 bits"
    if ev["type"] == "seq_gap":
        first, last = ev.get("first"), ev.get("last")
        if (not (isinstance(first, int) and isinstance(last, int))
                or not 1 <= first <= last <= _INT64_MAX):
            return f"seq_gap needs integers 1 <= first <= last, got {first!r}..{last!r}"
    return None


def _encode_body(obj: dict[str, Any]) -> tuple[str, str | None]:
    """The object as stored JSON text, and what no backend could store in it."""
    try:
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity: Python's parser takes them, JSON has none
        return "", "a number is NaN or infinite"
    # PostgreSQL's jsonb has no NUL character; one in any string would fail the transaction
    if "\\u0000" in body:
        return body, "a string holds a NUL character (\\u0000)"
    return body, None


def _status(topic: str, truck_id: str, payload: bytes, received_ms: int) -> Outcome:
    if not payload:
        return Ignored(topic)
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        return _quarantine(topic, truck_id, QuarantineReason.UNDECODABLE,
                           f"status is not JSON: {exc}", payload=payload, received_ms=received_ms)
    if not isinstance(obj, dict):
        return _quarantine(topic, truck_id, QuarantineReason.SCHEMA,
                           "status is not an object", payload=payload, received_ms=received_ms)
    ts, state, claimed = obj.get("ts"), obj.get("state"), obj.get("truck_id", truck_id)
    if (not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(state, str)
            or not -_INT64_MAX <= ts <= _INT64_MAX):
        return _quarantine(topic, truck_id, QuarantineReason.SCHEMA,
                           "status needs an integer ts and a string state",
                           payload=payload, received_ms=received_ms)
    if claimed != truck_id:
        return _quarantine(topic, truck_id, QuarantineReason.TRUCK_MISMATCH,
                           f"status claims truck {claimed!r}", payload=payload,
                           received_ms=received_ms)
    body, problem = _encode_body(obj)
    if problem is not None:
        return _quarantine(topic, truck_id, QuarantineReason.SCHEMA, f"status: {problem}",
                           payload=payload, received_ms=received_ms)
    return StatusRow(truck_id, ts, state, body, received_ms)


class LogThrottle:
    """At most one log line per key per ``interval_s`` (time passed in, no clock read)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S,
                 max_keys: int = MAX_THROTTLE_KEYS) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        #: how many calls were kept quiet per key since its last log line
        self.suppressed: dict[str, int] = {}

    def should_log(self, key: str, now_s: float) -> bool:
        """True when ``key`` was not logged within the interval (and remember now)."""
        last = self._last.get(key)
        if last is not None and now_s - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now_s - t < self.interval_s}
            if len(self._last) >= self.max_keys:
                return False
        self._last[key] = now_s
        self.suppressed.pop(key, None)
        return True
