"""The vocabulary of the delivery core: its state, its actions and its counters.

:class:`~gateway.delivery.Delivery` takes events as method calls and answers with these
actions; the asyncio shell (:mod:`gateway.uplink`, :mod:`gateway.uplink_link`) executes
them. All frozen: an action is a decision, not a handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from buffer.api import Lane

__all__ = [
    "Ack",
    "Action",
    "DeadLetter",
    "Lease",
    "Publish",
    "Reconnect",
    "Release",
    "SendStatus",
    "UplinkCounters",
    "UplinkState",
    "UplinkStats",
    "Wait",
    "WaitPending",
]


class UplinkState(Enum):
    """Connection cycle of the uplink."""

    DISCONNECTED = "disconnected"  # not started, or stopped by cancellation
    CONNECTING = "connecting"  # TCP/TLS/CONNECT sent, waiting for CONNACK
    CONNECTED = "connected"  # CONNACK accepted: delivering
    BACKOFF = "backoff"  # waiting before the next attempt after a failure
    REFUSED = "refused"  # the broker refused us (credentials, ACL, size); backing off
    CLOSED = "closed"  # close() finished

    def __repr__(self) -> str:
        return f"UplinkState.{self.name}"


@dataclass(frozen=True, slots=True)
class Lease:
    """Lease a batch from the store's ``lane`` within these limits, then call ``leased``."""

    lane: Lane
    max_events: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class WaitPending:
    """The store had nothing: wait (at most ``timeout_s``) until it has, then poll again."""

    timeout_s: float


@dataclass(frozen=True, slots=True)
class Wait:
    """The bandwidth cap: poll again at monotonic time ``until`` (or on any new input)."""

    until: float


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` (QoS 1) on the events topic, then report the packet id with
    ``sent`` (or ``publish_failed``). ``seqs`` are the events it carries."""

    payload: bytes
    seqs: tuple[int, ...]
    lane: Lane


@dataclass(frozen=True, slots=True)
class SendStatus:
    """The periodic status is due: publish the retained ``online`` status."""

    state: str = "online"


@dataclass(frozen=True, slots=True)
class Ack:
    """Delete these events from the store: the broker PUBACKed the message that carried
    them (or they can never be encoded, see ``dropped_unencodable``)."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Release:
    """Give these events back to the store's pending pool: they go again later."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Set these events aside in the store's dead-letter table: the broker refused a
    message carrying only them (too large). The store announces them with a
    ``seq_gap`` notice (reason ``refused``) and counts them as ``refused``."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The connection is over: close the socket, wait ``after_s``, connect again."""

    after_s: float
    reason: str
    refused: bool = False


#: What the core may ask the shell to do.
Action = (Lease | WaitPending | Wait | Publish | SendStatus | Ack | Release | DeadLetter
          | Reconnect)


@dataclass(slots=True)
class UplinkCounters:
    """The running counters of the core (mutable; ``Delivery.stats()`` freezes a copy
    into :class:`UplinkStats`)."""

    published_messages: int = 0
    published_events: int = 0
    published_bytes: int = 0
    acked_messages: int = 0
    acked_events: int = 0
    released_events: int = 0
    refused_publishes: int = 0
    publish_timeouts: int = 0
    connects: int = 0
    connect_failures: int = 0
    refusals: int = 0
    half_open_detected: int = 0
    dropped_unencodable: int = 0
    #: store deletes after a PUBACK that failed (the events stay buffered, go again later)
    ack_failures: int = 0
    #: broker refusals (PUBACK 0x95, or the link dropped on an oversized message) that
    #: shrank the payload limit or set an event aside; never a connection failure
    size_refusals: int = 0
    #: events set aside (dead letters) because the broker refused them even alone
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class UplinkStats:
    """Counters of the uplink for the status topic, the state file and metrics."""

    state: UplinkState
    published_messages: int = 0
    published_events: int = 0
    published_bytes: int = 0
    acked_messages: int = 0
    acked_events: int = 0
    released_events: int = 0
    refused_publishes: int = 0
    publish_timeouts: int = 0
    connects: int = 0
    connect_failures: int = 0
    refusals: int = 0
    half_open_detected: int = 0
    dropped_unencodable: int = 0
    #: store deletes after a PUBACK that failed (the events stay buffered, go again later)
    ack_failures: int = 0
    #: broker refusals (PUBACK 0x95, or the link dropped on an oversized message) that
    #: shrank the payload limit or set an event aside; never a connection failure
    size_refusals: int = 0
    #: events set aside (dead letters) because the broker refused them even alone
    dead_lettered: int = 0
    reconnects: int = 0
    inflight_messages: int = 0
    max_payload_bytes: int = 0
    last_publish_ts_ms: int | None = None
    last_ack_ts_ms: int | None = None
    last_error: str | None = None
    #: the SIM's bytes (IP level, estimated from TCP_INFO): today and this month (UTC)
    usage_up_bytes_today: int = 0
    usage_down_bytes_today: int = 0
    usage_up_bytes_month: int = 0
    usage_down_bytes_month: int = 0
