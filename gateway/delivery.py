"""The MQTT delivery core: at-least-once, live first, as a pure state machine.

No sockets, no asyncio, no clock reads: the shell (:mod:`gateway.uplink_link`) feeds
it what happened, with the monotonic time ``now``, and executes the actions it answers
with (:mod:`gateway.delivery_actions`)::

    connecting(now)                       -> state CONNECTING
    connack(now, max_packet_size=, receive_maximum=, keepalive_s=)
    connect_failed(now, reason, refused=) -> [Release?, Reconnect]
    poll(now)                             -> Lease | Publish | Wait | None (window full)
    leased(lane, batch, now)              -> [Ack (unencodable)] | [WaitPending] | [Release]
                                             | [] (lingering, see below)
    sent(publish, mid, now) / publish_failed(publish, now, reason)
    status_sent(mid, nbytes, now)
    puback(mid, reason_code, now)         -> [Ack] | [Release] | [DeadLetter]
                                             | [Release, Reconnect]
    ack_failed(seqs, now, reason)         -> []  (held; released by a later tick)
    ack_stored(now)
    disconnected(now, reason_code, text)  -> [DeadLetter?, Release?, Reconnect?]
    tick(now, last_inbound)               -> [Release?] + ([SendStatus] | [Release?,
                                             Reconnect] | [])
    close(now)                            -> [Release?]
    stopped()                             -> state DISCONNECTED / CLOSED

It owns the in-flight table (packet id -> the seqs that message carries, bounded by the
configured window, the broker's Receive Maximum and the 16-bit packet ids), the lane
split, the token bucket, the payload-size adaptation, the reconnect backoff
(:class:`config.retry.Backoff`) and the counters (:class:`UplinkStats`).

**The live linger** (issue #14): a small batch (below :data:`LINGER_FULL_BYTES` of
bodies and below half of what a lease may take, no critical event in it) is not
published at once: its events wait, at most ``[mqtt].max_latency_s`` after the lease
that brought the first of them, for more to share one message (one TLS record, one
PUBACK, one round of TCP acks instead of one per event). :meth:`poll` publishes them
once that deadline is reached (the shell's wait for the store is bounded by it), or at
once when they fill that size or a critical event (``dtc``, ``trip``, ...) joins. A
batch at least that large goes at once: a backlog drains as before, and a live event
leased with backlog events is not delayed. Nor is the tail of a backlog: after CONNACK
or a large batch, the core lingers only once a lease came back empty (caught up).
``max_latency_s = 0``: every lease goes at once.

Invariant: a seq is acked only for the PUBACK (reason < 0x80) of the message that
carried it, or because it can never be encoded; it is set aside (:class:`DeadLetter`)
only when the broker refused a message carrying it alone as too large; every other way
a leased seq leaves the core is a :class:`Release`.

Two fault paths of issue #13:

- **A delete that fails after the PUBACK** (disk full, I/O error): the store keeps the
  events leased; the core holds them for a backoff (``ack_failures``, one log line per
  episode and one when deletes work again) and then releases them, so they are sent
  again later; nothing spins on events that are neither leased nor leasable.
- **Too large.** A refusal for size (PUBACK 0x95, or the link dropped with a reason in
  :data:`RC_MAYBE_TOO_LARGE` while messages were in flight: the largest one is the
  culprit, since whatever was too large, the largest is too) is not a connection
  failure: the reconnect comes after ``reconnect_min_s`` and the backoff does not grow
  (``size_refusals``). A message of several events shrinks the payload limit to the
  geometric mean of the largest size that passed (at least :data:`MIN_PAYLOAD_BYTES`)
  and the refused size, so a limit is found within a few refusals; a message holding a
  single event sets that event aside (:class:`DeadLetter`) and the backlog goes on.
  When the broker announced a Maximum Packet Size in CONNACK, a lone event whose
  PUBLISH would exceed it is set aside without being sent at all (no refusal, no drop).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from buffer.api import Batch, Lane, StoredEvent
from config import MqttConfig
from config.events import Priority
from config.retry import Backoff, RetryPolicy
from gateway import wire
from gateway.delivery_actions import (
    Ack,
    Action,
    DeadLetter,
    Lease,
    Publish,
    Reconnect,
    Release,
    SendStatus,
    UplinkCounters,
    UplinkState,
    UplinkStats,
    Wait,
    WaitPending,
)
from gateway.uplink_flow import LaneChooser, TokenBucket, encode_or_drop, reason_name

log = logging.getLogger(__name__)

#: Events per lease on the live lane: small batches keep the newest data quick to go.
LIVE_MAX_EVENTS = 500
#: Events per lease on the backfill lane (the byte limit usually binds first).
BACKFILL_MAX_EVENTS = 5000
#: Share of the payload limit leased as stored body bytes (the wire adds ``"seq":N,``).
LEASE_BYTES_SHARE = 0.85
#: A connection that stayed up this long resets the backoff to its minimum.
HEALTHY_AFTER_S = 30.0
#: The smallest payload limit the core shrinks to; a refusal below it is a refusal.
MIN_PAYLOAD_BYTES = 1024
#: Room left below the broker's Maximum Packet Size for the MQTT header and topic.
PACKET_HEADROOM = 1024
#: MQTT 5 reason code "Packet too large".
RC_PACKET_TOO_LARGE = 0x95
#: Disconnect reasons after which the largest in-flight message is suspected too large:
#: malformed packet, protocol error, packet too large.
RC_MAYBE_TOO_LARGE = frozenset({0x81, 0x82, RC_PACKET_TOO_LARGE})
#: Half-open detection: no inbound byte for this many keepalives ends the connection.
KEEPALIVE_FACTOR = 1.5
#: MQTT packet identifiers are 16 bit and never 0.
MAX_PACKET_ID = 65535
#: How long the sender waits for the store when a lease came back empty.
EMPTY_WAIT_S = 1.0
#: A refused size within this factor of the largest that passed ends the size search:
#: the limit becomes that passing size (each probe in between would cost a refusal).
SIZE_CLOSE_RATIO = 1.5
#: Events whose delete failed after their PUBACK wait this long (doubling, jittered)
#: before they are released and sent again.
ACK_RETRY_MIN_S = 1.0
ACK_RETRY_MAX_S = 30.0
#: Body bytes from which lingering events (or a leased batch) go at once: the overhead
#: of a message (about 200 bytes of TLS, MQTT, PUBACK and TCP acks) is then below 2 %.
LINGER_FULL_BYTES = 16384


@dataclass(slots=True)
class _Flight:
    """A published message awaiting its PUBACK (``lane`` None: a status message)."""

    seqs: tuple[int, ...]
    lane: Lane | None
    nbytes: int
    deadline: float


class Delivery:
    """The delivery state machine of one uplink (all its connections); see the module."""

    def __init__(self, truck_id: str, m: MqttConfig, now: float) -> None:
        self._truck_id = truck_id
        self._m = m
        self._encoding = m.encoding
        self.state = UplinkState.DISCONNECTED
        self._backoff = Backoff(RetryPolicy(
            m.reconnect_min_s, max(m.reconnect_min_s, m.reconnect_max_s), HEALTHY_AFTER_S))
        self._bucket = TokenBucket(m.bandwidth_bytes_per_s, m.max_payload_bytes, now)
        self.max_payload_bytes = m.max_payload_bytes
        self.window = min(m.inflight_window, MAX_PACKET_ID)
        self._chooser = LaneChooser(self.window, m.live_share)
        self.keepalive_s = float(m.keepalive_s)
        self._flights: dict[int, _Flight] = {}
        self._live = 0  # event messages in flight per lane: no scan per message
        self._backfill = 0
        self._outbox: deque[Publish] = deque()
        self._leasing = False
        self._closing = False
        self._connected_at: float | None = None
        self._next_status = now
        self._last_publish_at: float | None = None
        self._last_ack_at: float | None = None
        self.last_error: str | None = None
        self._n = UplinkCounters()
        #: the shell's stream id and ts correction for the encoder (state, no I/O)
        self.wire_context: Callable[[], wire.WireContext] = lambda: wire.NO_CONTEXT
        # failed deletes: (release at, seqs), the episode's failures, its backoff
        self._held: list[tuple[float, tuple[int, ...]]] = []
        self._ack_failing = 0
        self._ack_backoff = Backoff(RetryPolicy(ACK_RETRY_MIN_S, ACK_RETRY_MAX_S,
                                                HEALTHY_AFTER_S))
        #: the largest event message the broker acknowledged (size search lower bound),
        #: and the same on this connection (a broker restarted with a lower limit must
        #: not be judged by what its predecessor took)
        self._largest_ok = 0
        self._largest_ok_here = 0
        #: the broker's Maximum Packet Size (CONNACK), and what a PUBLISH adds to a payload
        self._broker_max: int | None = None
        self._publish_overhead = _publish_overhead(truck_id, m)
        #: the live linger: events waiting to share a message, and until when at most
        self._linger: list[StoredEvent] = []
        self._linger_bytes = 0
        self._linger_due: float | None = None
        #: actions of a linger flushed from poll() (unencodable events), given by tick()
        self._side: list[Action] = []
        #: the data budget's linger (gateway.budget), None: ``max_latency_s``
        self._budget_linger: float | None = None
        #: a backlog is draining (since CONNACK or a large batch, until a lease comes
        #: back empty): no linger, its tail goes at once
        self._draining = True

    # ---------------------------------------------------------------- views

    @property
    def event_inflight(self) -> int:
        """Event messages awaiting their PUBACK."""
        return self._live + self._backfill

    @property
    def closing(self) -> bool:
        """close() was called: no new leases."""
        return self._closing

    @property
    def max_latency_s(self) -> float:
        """How long live events may wait to share a message now (the data budget may
        have made it longer, :meth:`set_budget_linger`)."""
        if self._budget_linger is not None:
            return self._budget_linger
        return self._m.max_latency_s

    def set_budget_linger(self, seconds: float | None) -> None:
        """The data budget's linger (None: back to ``max_latency_s``); from the next
        lingering event on."""
        self._budget_linger = seconds

    @property
    def lingering_events(self) -> int:
        """Live events leased and waiting (at most ``max_latency_s``) to share a message."""
        return len(self._linger)

    @property
    def held_events(self) -> int:
        """Events whose delete failed, waiting to be released and sent again."""
        return sum(len(seqs) for _, seqs in self._held)

    def in_flight(self, mid: int) -> bool:
        """Whether the message with packet id ``mid`` still awaits its PUBACK."""
        return mid in self._flights

    @property
    def tick_interval(self) -> float:
        """How often the shell should call :meth:`tick` (seconds)."""
        return max(0.05, min(1.0, self.keepalive_s / 10))

    def stats(self, now: float, wall_ms: int) -> UplinkStats:
        """The counters; ``wall_ms`` (UNIX ms at ``now``) dates the last publish and ack."""
        n = self._n
        return UplinkStats(
            state=self.state, reconnects=max(0, n.connects - 1),
            inflight_messages=self.event_inflight, max_payload_bytes=self.max_payload_bytes,
            last_publish_ts_ms=_wall(self._last_publish_at, now, wall_ms),
            last_ack_ts_ms=_wall(self._last_ack_at, now, wall_ms),
            last_error=self.last_error, **asdict(n),
        )

    # ---------------------------------------------------------------- connection

    @property
    def failures_in_a_row(self) -> int:
        """Connection attempts that failed since the last one that worked."""
        return self._backoff.attempt

    def connecting(self, now: float) -> None:
        """A connection attempt starts (TCP, TLS, CONNECT)."""
        self.state = UplinkState.CONNECTING
        self._connected_at = None
        self._leasing = False
        self._next_status = now

    def connect_failed(self, now: float, reason: str, *, refused: bool = False) -> list[Action]:
        """The attempt failed before CONNACK; ``refused``: the broker said no."""
        self._n.connect_failures += 1
        if refused:
            self._n.refusals += 1
        self.last_error = reason
        return self._end(now, reason, refused=refused)

    def connack(self, now: float, *, max_packet_size: int | None = None,
                receive_maximum: int | None = None, keepalive_s: float | None = None) -> None:
        """CONNACK accepted; the broker's limits (MQTT 5 properties) bind from now on."""
        if self.state is not UplinkState.CONNECTING:
            return
        self.state = UplinkState.CONNECTED
        self._connected_at = now
        self._largest_ok_here = 0
        self._n.connects += 1
        if keepalive_s:
            self.keepalive_s = float(keepalive_s)
        self._broker_max = max_packet_size
        if max_packet_size is not None:
            cap = max(MIN_PAYLOAD_BYTES, max_packet_size - PACKET_HEADROOM)
            if cap < self.max_payload_bytes:
                log.info("uplink: broker maximum packet size %d: payloads capped at %d bytes",
                         max_packet_size, cap)
                self.max_payload_bytes = cap
        window = min(self._m.inflight_window, MAX_PACKET_ID)
        if receive_maximum is not None and receive_maximum > 0:
            # one slot stays free for the status message
            window = max(1, min(window, receive_maximum - 1))
        self.window = window
        self._chooser = LaneChooser(window, self._m.live_share)
        self._next_status = now + self._m.status_interval_s
        self._draining = True  # what piled up while offline goes at once

    def reconfigure(self, m: MqttConfig, now: float) -> None:
        """Take the live keys of a new ``[mqtt]`` (remote configuration): ``live_share``,
        ``bandwidth_bytes_per_s`` and ``status_interval_s`` bind from now on; the
        in-flight table is untouched (nothing is dropped or sent twice)."""
        old = self._m
        self._m = m
        if m.bandwidth_bytes_per_s != old.bandwidth_bytes_per_s:
            self._bucket = TokenBucket(m.bandwidth_bytes_per_s, m.max_payload_bytes, now)
        if m.live_share != old.live_share:
            self._chooser = LaneChooser(self.window, m.live_share)
        if m.status_interval_s != old.status_interval_s:
            self._next_status = min(self._next_status, now + m.status_interval_s)

    def disconnected(self, now: float, reason_code: int, text: str) -> list[Action]:
        """The connection went away (broker DISCONNECT, socket closed)."""
        if self.state is UplinkState.CONNECTING:
            self._n.connect_failures += 1
            text = (f"{text}; with TLS this is how a broker rejects a missing or unknown "
                    "client certificate")
            self.last_error = text
            return self._end(now, text)
        if self.state is not UplinkState.CONNECTED:
            return []
        if reason_code in RC_MAYBE_TOO_LARGE:
            # Mosquitto 2.0 answers an oversized PUBLISH with a PUBACK paho cannot parse
            # (protocol error); other brokers DISCONNECT with 0x95. Either way: go smaller.
            acts = self._dropped_for_size(now, text)
            if acts is not None:
                return acts
        if not self._closing:
            self.last_error = text
        return self._end(now, text)

    def close(self, now: float) -> list[Action]:
        """Stop leasing; what is not yet published goes back. In flight: awaited by the
        shell (:attr:`event_inflight`), then its disconnect ends the connection."""
        self._closing = True
        held = self._release_held(None)
        if self.state is not UplinkState.CONNECTED:
            acts = self._end(now, "closed")
            self.state = UplinkState.CLOSED
            return held + acts
        return held + self._release_linger() + self._release_outbox()

    def stopped(self) -> None:
        """The shell stopped (cancelled) between connections: DISCONNECTED, or CLOSED
        after close()."""
        self.state = UplinkState.CLOSED if self._closing else UplinkState.DISCONNECTED

    # ---------------------------------------------------------------- sending

    def poll(self, now: float) -> Lease | Publish | Wait | None:
        """What the sender should do next; None: nothing until a PUBACK (or close)."""
        if self.state is not UplinkState.CONNECTED:
            return None
        if self._live + self._backfill >= self.window:
            return None
        if self._linger and not self._outbox and (
                self._closing or self._linger_due is None or now >= self._linger_due):
            self._side.extend(self._flush_linger())
        if self._outbox:
            delay = self._bucket.delay(len(self._outbox[0].payload), now)
            if delay > 0:
                return Wait(now + delay)
            return self._outbox.popleft()
        if self._leasing or self._closing:
            return None
        lane = self._chooser.choose(self._live, self._backfill)
        self._leasing = True
        max_events = LIVE_MAX_EVENTS if lane is Lane.LIVE else BACKFILL_MAX_EVENTS
        return Lease(lane, max_events, max(256, int(self.max_payload_bytes * LEASE_BYTES_SHARE)))

    def leased(self, lane: Lane, batch: Batch | None, now: float | None = None,
               ) -> list[Action]:
        """The store answered a :class:`Lease` (None: nothing pending) at ``now`` (None:
        no linger, the batch goes at once)."""
        self._leasing = False
        if batch is None or not batch.events:
            self._draining = False  # caught up: from now on live events may linger
            wait = EMPTY_WAIT_S
            if self._linger_due is not None and now is not None:
                wait = max(0.0, min(wait, self._linger_due - now))
            return [WaitPending(wait)]
        if self.state is not UplinkState.CONNECTED or self._closing:
            seqs = batch.seqs
            self._n.released_events += len(seqs)
            return [Release(seqs)]
        if now is None or self.max_latency_s <= 0:
            return self._encode(lane, batch.events)
        nbytes, full = batch.nbytes, self._linger_full_bytes()
        if not self._linger and nbytes >= full:
            self._draining = True
            return self._encode(lane, batch.events)  # a backlog: no reason to wait
        if self._draining and not self._linger:
            return self._encode(lane, batch.events)  # the tail of a backlog
        self._linger.extend(batch.events)
        self._linger_bytes += nbytes
        if self._linger_due is None:
            self._linger_due = now + self.max_latency_s
        if (self._linger_bytes >= full
                or any(e.priority is Priority.CRITICAL for e in batch.events)):
            return self._flush_linger()
        return []

    def _linger_full_bytes(self) -> int:
        """Body bytes from which a batch (or the linger) goes at once: half of what a
        lease may take (a batch that large means the store had more: a backlog), at
        most :data:`LINGER_FULL_BYTES`."""
        lease_bytes = max(256, int(self.max_payload_bytes * LEASE_BYTES_SHARE))
        return min(LINGER_FULL_BYTES, lease_bytes // 2)

    def sent(self, pub: Publish, mid: int, now: float) -> list[Action]:
        """paho accepted ``pub`` as packet ``mid``: it is in flight. A Release if the
        connection ended meanwhile (paho reports a broken socket from inside publish).

        paho does not check that an id it hands out is free (its ids wrap at 65535): if
        ``mid`` is still in flight, a PUBACK for it could no longer be told apart from
        the new message's, so the connection ends here and everything unacknowledged,
        both of these included, goes again on a new one (a new client, fresh ids)."""
        if self.state is not UplinkState.CONNECTED:
            self._n.released_events += len(pub.seqs)
            return [Release(pub.seqs)]
        if mid in self._flights:
            self._outbox.appendleft(pub)  # released with the rest
            return self._id_reused(mid, now)
        self._flights[mid] = _Flight(pub.seqs, pub.lane, len(pub.payload),
                                     now + self._m.publish_timeout_s)
        if pub.lane is Lane.LIVE:
            self._live += 1
        else:
            self._backfill += 1
        self._chooser.sent(pub.lane)
        self._bucket.spend(len(pub.payload), now)
        n = self._n
        n.published_messages += 1
        n.published_events += len(pub.seqs)
        n.published_bytes += len(pub.payload)
        self._last_publish_at = now
        return []

    def publish_failed(self, pub: Publish, now: float, reason: str) -> list[Action]:
        """paho could not even queue ``pub``: the connection is unusable."""
        self._outbox.appendleft(pub)
        self.last_error = f"publish failed locally: {reason}"
        return self._end(now, self.last_error)

    def status_sent(self, mid: int, nbytes: int, now: float) -> None:
        """A status message went as packet ``mid`` (not part of the event window); an id
        still in flight ends the connection as in :meth:`sent` (its actions come with
        the next :meth:`tick`)."""
        if self.state is not UplinkState.CONNECTED:
            return
        if mid in self._flights:
            self._side.extend(self._id_reused(mid, now))
            return
        self._flights[mid] = _Flight((), None, nbytes, now + self._m.publish_timeout_s)

    def _id_reused(self, mid: int, now: float) -> list[Action]:
        """paho handed out ``mid`` again while it is still in flight: end the connection
        (everything unacknowledged is released; the next client has fresh ids)."""
        self.last_error = f"packet id {mid} handed out again while still in flight"
        log.error("uplink: %s; reconnecting, nothing unacknowledged is lost", self.last_error)
        return self._end(now, self.last_error, prompt=True)

    # ---------------------------------------------------------------- broker answers

    def puback(self, mid: int, reason_code: int, now: float) -> list[Action]:
        """The broker's PUBACK for packet ``mid`` (``reason_code`` 0 for MQTT 3.1.1)."""
        flight = self._flights.pop(mid, None)
        if flight is None:
            return []
        if flight.lane is None:
            if reason_code >= 0x80:
                log.error("uplink: broker refused a status or remote-management message: %s",
                          reason_name(reason_code))
            return []
        if flight.lane is Lane.LIVE:
            self._live -= 1
        else:
            self._backfill -= 1
        n = self._n
        if reason_code < 0x80:  # 0x00 success, 0x10 no matching subscribers
            n.acked_messages += 1
            n.acked_events += len(flight.seqs)
            self._last_ack_at = now
            self._largest_ok = max(self._largest_ok, flight.nbytes)
            self._largest_ok_here = max(self._largest_ok_here, flight.nbytes)
            return [Ack(flight.seqs)]
        n.refused_publishes += 1
        if reason_code == RC_PACKET_TOO_LARGE and len(flight.seqs) == 1:
            n.size_refusals += 1
            return [self._dead_letter(flight.seqs, flight.nbytes)]
        n.released_events += len(flight.seqs)
        release = Release(flight.seqs)
        if reason_code == RC_PACKET_TOO_LARGE and self._shrink(flight.nbytes):
            n.size_refusals += 1
            return [release]
        text = (f"broker refused a publish of {len(flight.seqs)} events: "
                f"{reason_name(reason_code)}; events kept, backing off")
        return [release, *self.connect_failed(now, text, refused=True)]

    # ---------------------------------------------------------------- store answers

    def ack_failed(self, seqs: tuple[int, ...], now: float, reason: str) -> list[Action]:
        """The store could not delete ``seqs`` after their PUBACK; they stay stored and
        leased. Held for a backoff, then released by :meth:`tick` (or :meth:`close`)."""
        self._n.ack_failures += 1
        delay = self._ack_backoff.next_delay()
        self._held.append((now + delay, tuple(seqs)))
        if not self._ack_failing:
            log.error("uplink: deleting %d delivered events from the buffer failed (%s); "
                      "they stay buffered and go again in %.1f s (further failures are "
                      "counted in ack_failures, logged again when deletes work)",
                      len(seqs), reason, delay)
        self._ack_failing += 1
        return []

    def ack_stored(self, now: float) -> None:
        """The store deleted acked events: a failing episode is over."""
        del now  # part of the input vocabulary; no time-based decision yet
        if self._ack_failing:
            log.warning("uplink: buffer deletes work again after %d failed attempts",
                        self._ack_failing)
            self._ack_failing = 0
            self._ack_backoff.reset()

    def tick(self, now: float, last_inbound: float) -> list[Action]:
        """Periodic: held events due again, half-open watchdog, publish timeouts, the
        status interval."""
        held = self._release_held(now)
        if self._side:
            held += self._side
            self._side = []
        if self.state is not UplinkState.CONNECTED:
            return held
        return held + self._tick_connected(now, last_inbound)

    def _tick_connected(self, now: float, last_inbound: float) -> list[Action]:
        silent = now - last_inbound
        if silent > KEEPALIVE_FACTOR * self.keepalive_s:
            self._n.half_open_detected += 1
            self.last_error = (f"no packet from the broker for {silent:.1f} s ({KEEPALIVE_FACTOR}"
                               f" x keepalive {self.keepalive_s:.0f} s): link is dead")
            return self._end(now, self.last_error)
        late = sum(1 for f in self._flights.values() if f.deadline <= now)
        if late:
            self._n.publish_timeouts += late
            self.last_error = (f"{late} message(s) not acknowledged within "
                               f"{self._m.publish_timeout_s:.0f} s; not counted as delivered")
            return self._end(now, self.last_error)
        if now >= self._next_status and not self._closing:
            self._next_status = now + self._m.status_interval_s
            return [SendStatus("online")]
        return []

    # ---------------------------------------------------------------- internals

    def _flush_linger(self) -> list[Action]:
        """The lingering events into the outbox (in seq order, one message if they fit);
        the actions for unencodable ones (Ack, DeadLetter). From :meth:`poll` they wait
        in ``_side`` for the next :meth:`tick`."""
        events = sorted(self._linger, key=lambda e: e.seq)
        self._linger, self._linger_bytes, self._linger_due = [], 0, None
        return self._encode(Lane.LIVE, tuple(events))

    def _release_linger(self) -> list[Action]:
        if not self._linger:
            return []
        seqs = tuple(e.seq for e in self._linger)
        self._linger, self._linger_bytes, self._linger_due = [], 0, None
        self._n.released_events += len(seqs)
        return [Release(seqs)]

    def _encode(self, lane: Lane, events: tuple[StoredEvent, ...]) -> list[Action]:
        """Wire payloads into the outbox; unencodable events are acked (dropped)."""
        payloads, bad = encode_or_drop(self._truck_id, events, self._encoding,
                                       self.max_payload_bytes, self.wire_context())
        acts: list[Action] = []
        fits = None if self._broker_max is None else self._broker_max - self._publish_overhead
        for p, seqs in payloads:
            if fits is not None and len(p) > fits and len(seqs) == 1:
                # the broker said how large a packet it takes: this one it would refuse
                acts.append(self._dead_letter(seqs, len(p)))
            else:
                self._outbox.append(Publish(p, seqs, lane))
        if bad:
            self._n.dropped_unencodable += len(bad)
            acts.append(Ack(bad))
        return acts

    def _shrink(self, refused_size: int) -> bool:
        """Lower the payload limit below a refused size; False if it cannot go lower.

        The new limit is the geometric mean of the largest message that passed (at
        least :data:`MIN_PAYLOAD_BYTES`) and the refused size: from 128 KiB a broker
        limit of 3000 bytes is found in three refusals (10.6 k, 3.3 k, then 1.8 k
        passes), where halving took six. A refused size within :data:`SIZE_CLOSE_RATIO`
        of one that passed settles on the one that passed. It never climbs back while
        the uplink lives: a broker limit does not change between connections, and
        probing upwards would cost a refusal each time."""
        if refused_size <= self._largest_ok:
            self._largest_ok = 0  # the limit went down (another broker): start over
        lo = max(MIN_PAYLOAD_BYTES, self._largest_ok)
        if refused_size < lo * SIZE_CLOSE_RATIO:
            new = lo  # close to a size that passed: settle there, no more probing
        else:
            new = max(MIN_PAYLOAD_BYTES, min(refused_size - 1, math.isqrt(lo * refused_size)))
        if new >= self.max_payload_bytes:
            return False
        log.warning(
            "uplink: broker refused (or dropped the link on) a %d-byte message; max payload"
            " now %d bytes (set [mqtt].max_payload_bytes below the broker's limit)",
            refused_size, new,
        )
        self.max_payload_bytes = new
        return True

    def _dropped_for_size(self, now: float, text: str) -> list[Action] | None:
        """The link dropped for a reason that may mean "too large": the largest event
        message in flight is the culprit (whatever was too large, it is too). None when
        that cannot be so (a message at least as large passed on this connection) or
        nothing can shrink."""
        events = [(mid, f) for mid, f in self._flights.items() if f.lane is not None]
        if not events:
            return None
        mid, worst = max(events, key=lambda kv: kv[1].nbytes)
        if worst.nbytes <= self._largest_ok_here:
            return None
        if len(worst.seqs) == 1:
            del self._flights[mid]
            first: list[Action] = [self._dead_letter(worst.seqs, worst.nbytes)]
        elif self._shrink(worst.nbytes):
            first = []
        else:
            return None
        self._n.size_refusals += 1
        if not self._closing:
            self.last_error = (f"{text}; taken as a refusal of a {worst.nbytes}-byte "
                               "message as too large, reconnecting without backoff")
        return first + self._end(now, self.last_error or text, prompt=True)

    def _dead_letter(self, seqs: tuple[int, ...], nbytes: int) -> DeadLetter:
        log.error("uplink: a %d-byte message holding only event seq %s is too large for "
                  "the broker; set aside in the buffer's dead letters, announced by a "
                  "seq_gap notice (reason refused), retried at the next start", nbytes,
                  ",".join(map(str, seqs)))
        self._n.dead_lettered += len(seqs)
        return DeadLetter(seqs)

    def _release_held(self, now: float | None) -> list[Action]:
        """Held events due at ``now`` (all of them when None) go back to pending."""
        if not self._held:
            return []
        due = [seqs for at, seqs in self._held if now is None or at <= now]
        if not due:
            return []
        self._held = [] if now is None else [(at, s) for at, s in self._held if at > now]
        seqs = tuple(s for group in due for s in group)
        self._n.released_events += len(seqs)
        return [Release(seqs)]

    def _release_outbox(self) -> list[Action]:
        if not self._outbox:
            return []
        seqs = tuple(s for pub in self._outbox for s in pub.seqs)
        self._outbox.clear()
        self._n.released_events += len(seqs)
        return [Release(seqs)]

    def _end(self, now: float, reason: str, *, refused: bool = False,
             prompt: bool = False) -> list[Action]:
        """The connection is over: release everything unacknowledged, back off
        (``prompt``: reconnect after ``reconnect_min_s``, the backoff does not grow)."""
        unacked = [s for f in self._flights.values() for s in f.seqs]
        self._flights.clear()
        self._live = self._backfill = 0
        self._leasing = False
        acts = self._release_linger() + self._release_outbox()
        if unacked:
            self._n.released_events += len(unacked)
            acts.append(Release(tuple(unacked)))
        was_up, self._connected_at = self._connected_at, None
        if self._closing:
            self.state = UplinkState.CLOSED
            return acts
        if was_up is not None and now - was_up >= HEALTHY_AFTER_S:
            self._backoff.reset()
        self.state = UplinkState.REFUSED if refused else UplinkState.BACKOFF
        delay = self._m.reconnect_min_s if prompt else self._backoff.next_delay()
        acts.append(Reconnect(delay, reason, refused))
        return acts




def _publish_overhead(truck_id: str, m: MqttConfig) -> int:
    """Bytes a QoS 1 PUBLISH on the events topic adds to its payload, at most: fixed
    header (1 + a 4-byte length), topic (2 + its bytes), packet id (2) and, for MQTT 5,
    the properties (a 4-byte length and the content type)."""
    topic = wire.events_topic(m.topic_prefix, truck_id, m.encoding, m.protocol)
    n = 1 + 4 + 2 + len(topic.encode()) + 2
    if m.protocol == "5":
        n += 4 + 1 + 2 + len(wire.content_type(m.encoding).encode())
    return n


def _wall(at: float | None, now: float, wall_ms: int) -> int | None:
    """UNIX ms of the monotonic instant ``at``, given that ``now`` is ``wall_ms``."""
    return None if at is None else wall_ms - round((now - at) * 1000)
