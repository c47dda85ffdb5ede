"""The MQTT uplink: at-least-once delivery from the buffer to the broker, live first.

One connection at a time (a :class:`~gateway.uplink_session.Session`, fresh paho client
each time). Per connection: publish the retained ``online`` status, then keep up to
``inflight_window`` event messages in flight, leased from the store's live lane
(newest first) and backfill lane (oldest first) in the ``live_share`` split. A PUBACK
acks (deletes) exactly the seqs its message carried; anything not PUBACKed when the
connection ends is released and sent again later with the same seqs.

Between connections the uplink backs off (tenacity full jitter, ``reconnect_min_s`` ..
``reconnect_max_s``). Broker refusals are logged, backed off and retried; :meth:`run`
never raises for broker or network problems. The store keeps collecting meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from buffer.api import Batch, EventStore, Lane
from config import TruckConfig
from config.errors import WireError
from gateway import __version__, wire
from gateway.uplink_conn import publish_props
from gateway.uplink_flow import Backoff, LaneChooser, TokenBucket
from gateway.uplink_session import Flight, Session, UplinkState

__all__ = ["Uplink", "UplinkState"]

log = logging.getLogger(__name__)

#: Events per lease on the live lane: small batches keep the newest data quick to go.
LIVE_MAX_EVENTS = 500
#: Events per lease on the backfill lane (the byte limit usually binds first).
BACKFILL_MAX_EVENTS = 5000
#: Share of the payload limit leased as stored body bytes (the wire adds ``"seq":N,``).
LEASE_BYTES_SHARE = 0.85
#: How long close() waits for in-flight PUBACKs and the offline status.
CLOSE_GRACE_S = 3.0
#: A connection that stayed up this long resets the backoff to its minimum.
HEALTHY_AFTER_S = 30.0


class Uplink:
    """Delivers buffered events to the broker; see the module docstring."""

    def __init__(
        self,
        cfg: TruckConfig,
        store: EventStore,
        *,
        status_extra: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._cfg = cfg
        self._m = cfg.mqtt
        self._store = store
        self._status_extra = status_extra
        self._state = UplinkState.DISCONNECTED
        self._backoff = Backoff(self._m.reconnect_min_s, self._m.reconnect_max_s)
        self._chooser = LaneChooser(self._m.inflight_window, self._m.live_share)
        self.max_payload_bytes = self._m.max_payload_bytes
        self._bucket = TokenBucket(
            self._m.bandwidth_bytes_per_s, self._m.max_payload_bytes, time.monotonic()
        )
        proto = self._m.protocol
        self._events_topic = wire.events_topic(
            self._m.topic_prefix, cfg.truck_id, self._m.encoding, proto
        )
        self._status_topic = wire.status_topic(self._m.topic_prefix, cfg.truck_id)
        ctype = wire.content_type(self._m.encoding)
        self._events_props = publish_props(ctype if proto == "5" else None)
        self._status_props = publish_props(wire.CONTENT_TYPE_JSON if proto == "5" else None)
        self._session: Session | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._run_done = asyncio.Event()
        self._running = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._book: list[tuple[str, tuple[int, ...]]] = []
        self._book_task: asyncio.Task[None] | None = None
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "published_messages", "published_events", "published_bytes", "acked_messages",
                "acked_events", "released_events", "refused_publishes", "publish_timeouts",
                "connects", "connect_failures", "refusals", "half_open_detected",
                "dropped_unencodable",
            ),
            0,
        )
        self._last_publish_ts_ms: int | None = None
        self._last_ack_ts_ms: int | None = None
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> UplinkState:
        """Where the uplink is in its connection cycle."""
        return self._state

    def stats(self) -> dict[str, int | float | str | None]:
        """Counters for the status topic, the state file and metrics."""
        out: dict[str, int | float | str | None] = dict(self._counters)
        out["reconnects"] = max(0, self._counters["connects"] - 1)
        out["last_publish_ts_ms"] = self._last_publish_ts_ms
        out["last_ack_ts_ms"] = self._last_ack_ts_ms
        out["inflight_messages"] = self._session.event_inflight if self._session else 0
        out["max_payload_bytes"] = self.max_payload_bytes
        out["last_error"] = self._last_error
        out["state"] = self._state.name
        return out

    async def run(self) -> None:
        """Connect, deliver, reconnect with backoff; runs until cancelled or closed."""
        if self._running:
            raise RuntimeError("Uplink.run() is already running")
        self._running = True
        self._run_done.clear()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "truckgw-uplink-connect")
        try:
            while not self._closing:
                sess = Session(self, asyncio.get_running_loop(), self._executor)
                self._chooser.reset()
                self._session = sess
                try:
                    await sess.serve()
                finally:
                    await self._end_session(sess)
                if self.closing:
                    break
                if sess.connected_for() >= HEALTHY_AFTER_S:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                self._state = UplinkState.REFUSED if sess.refused else UplinkState.BACKOFF
                log.info("uplink: next connection attempt in %.1f s (%r)", delay, self._state)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            self._state = UplinkState.CLOSED if self._closing else UplinkState.DISCONNECTED
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._running = False
            self._run_done.set()

    async def close(self) -> None:
        """Publish the retained offline status if connected, disconnect, stop."""
        self._closing = True
        self._wake.set()
        sess = self._session
        if sess is not None and self._running:
            await sess.shutdown(CLOSE_GRACE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._run_done.wait(), CLOSE_GRACE_S * 2)
        await self._drain_book()
        self._state = UplinkState.CLOSED

    # ------------------------------------------------------------------ used by Session

    @property
    def cfg(self) -> TruckConfig:
        """The truck configuration."""
        return self._cfg

    def set_state(self, state: UplinkState) -> None:
        """Session reports a state change."""
        if state is not self._state:
            log.debug("uplink state %r -> %r", self._state, state)
        self._state = state

    def count(self, name: str, n: int = 1) -> None:
        """Bump a counter."""
        self._counters[name] += n

    def note_error(self, text: str) -> None:
        """Remember the last problem for stats()."""
        self._last_error = text

    def status_payload(self, state: str, fields: Mapping[str, Any]) -> bytes:
        """A status message body with the extra fields of the embedding app."""
        extra: dict[str, Any] = dict(fields)
        if self._status_extra is not None:
            try:
                for k, v in self._status_extra().items():
                    extra.setdefault(k, v)
            except Exception:  # a health callback must never break the uplink
                log.exception("uplink: status_extra callback failed")
        return wire.encode_status(self._cfg.truck_id, state, _now_ms(), extra)

    async def online_fields(self) -> dict[str, Any]:
        """Fields of the online status: version, buffer backlog, drop counters, uplink."""
        st = await self._store.stats()
        now = _now_ms()
        oldest = st.oldest_pending_ts_ms
        return {
            "version": __version__,
            "pending": st.pending,
            "pending_bytes": st.pending_bytes,
            "oldest_pending_ts": oldest,
            "oldest_pending_age_s": None if oldest is None else max(0, now - oldest) / 1000,
            "evicted": dict(st.evicted_by_class),
            "expired": dict(st.expired_by_class),
            "disk_full": st.disk_full,
            "encoding": self._m.encoding,
            "uplink": {
                k: v
                for k, v in self.stats().items()
                if k in ("reconnects", "published_events", "acked_events", "refusals")
            },
        }

    @property
    def events_topic(self) -> str:
        """Topic of event batches."""
        return self._events_topic

    @property
    def status_topic(self) -> str:
        """Topic of the retained status."""
        return self._status_topic

    @property
    def events_props(self) -> Any:
        """MQTT 5 properties of event batches (content type) or None."""
        return self._events_props

    @property
    def status_props(self) -> Any:
        """MQTT 5 properties of status messages or None."""
        return self._status_props

    @property
    def closing(self) -> bool:
        """close() has been called."""
        return self._closing

    def next_lane(self, sess: Session) -> Lane:
        """Which lane the next batch should come from."""
        return self._chooser.choose(
            sess.inflight_by_lane(Lane.LIVE), sess.inflight_by_lane(Lane.BACKFILL)
        )

    async def lease(self, lane: Lane) -> Batch | None:
        """Lease a batch; a lease completing after cancellation is released, not lost."""
        max_events = LIVE_MAX_EVENTS if lane is Lane.LIVE else BACKFILL_MAX_EVENTS
        max_bytes = max(256, int(self.max_payload_bytes * LEASE_BYTES_SHARE))
        fut = asyncio.ensure_future(self._store.lease(lane, max_events, max_bytes))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, fut: asyncio.Future[Batch | None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        batch = fut.result()
        if batch is not None:
            self.release(batch.seqs)

    async def wait_pending(self, timeout: float) -> bool:
        """Wait until the store has something to lease."""
        return await self._store.wait_pending(timeout)

    def encode(self, batch: Batch) -> list[tuple[bytes, tuple[int, ...]]]:
        """Wire payloads for a leased batch.

        A stored body that is not a JSON object can never be sent; rather than block
        the backlog behind it forever, it is logged, counted (``dropped_unencodable``)
        and deleted, and the rest of the batch goes.
        """
        enc, limit, tid = self._m.encoding, self.max_payload_bytes, self._cfg.truck_id
        try:
            return wire.encode_batches(tid, batch.events, enc, limit)
        except WireError:
            good = []
            for ev in batch.events:
                try:
                    wire.encode_batches(tid, [ev], enc, limit)
                except WireError as exc:
                    log.error("uplink: dropping event seq %d: %s", ev.seq, exc)  # noqa: TRY400  # the reason is the message; no traceback needed
                    self._counters["dropped_unencodable"] += 1
                    self._queue("ack", (ev.seq,))
                else:
                    good.append(ev)
            return wire.encode_batches(tid, good, enc, limit)

    def bandwidth_delay(self, nbytes: int) -> float:
        """Seconds to wait before ``nbytes`` may go (bandwidth cap)."""
        return self._bucket.delay(nbytes, time.monotonic())

    def published(self, flight: Flight) -> None:
        """A message left: count it and charge the bandwidth bucket."""
        if flight.lane is not None:
            self._chooser.sent(flight.lane)
        self._bucket.spend(flight.nbytes, time.monotonic())
        self._counters["published_messages"] += 1
        self._counters["published_events"] += len(flight.seqs)
        self._counters["published_bytes"] += flight.nbytes
        self._last_publish_ts_ms = _now_ms()

    def acked(self, flight: Flight) -> None:
        """PUBACK for an event message: delete its events from the store."""
        self._counters["acked_messages"] += 1
        self._counters["acked_events"] += len(flight.seqs)
        self._last_ack_ts_ms = _now_ms()
        self._queue("ack", flight.seqs)

    def release(self, seqs: Sequence[int]) -> None:
        """Give events back to the store's pending pool (sent again later)."""
        if seqs:
            self._counters["released_events"] += len(seqs)
            self._queue("release", tuple(seqs))

    def shrink_payload(self, refused_size: int) -> bool:
        """Broker said 'packet too large': halve the limit. False if already minimal."""
        new = max(wire_min_payload(), refused_size // 2)
        if new >= self.max_payload_bytes:
            return False
        log.warning(
            "uplink: broker refused (or dropped the link on) a %d-byte message; max payload"
            " now %d bytes (set [mqtt].max_payload_bytes below the broker's limit)",
            refused_size, new,
        )
        self.max_payload_bytes = new
        return True

    def cap_payload(self, broker_max_packet: int) -> None:
        """CONNACK announced a maximum packet size: stay below it."""
        cap = max(wire_min_payload(), broker_max_packet - 1024)
        if cap < self.max_payload_bytes:
            log.info("uplink: broker maximum packet size %d: payloads capped at %d bytes",
                     broker_max_packet, cap)
            self.max_payload_bytes = cap

    # ------------------------------------------------------------------ ack/release book

    def _queue(self, op: str, seqs: tuple[int, ...]) -> None:
        self._book.append((op, seqs))
        if self._book_task is None or self._book_task.done():
            self._book_task = asyncio.get_running_loop().create_task(
                self._run_book(), name="uplink-ack-release"
            )

    async def _run_book(self) -> None:
        """Apply queued acks and releases in order (one store call per kind and round)."""
        while self._book:
            ops, self._book = self._book, []
            acks = [s for op, seqs in ops if op == "ack" for s in seqs]
            rels = [s for op, seqs in ops if op == "release" for s in seqs]
            if acks:
                try:
                    await self._store.ack(acks)
                except Exception as exc:  # noqa: BLE001  # whatever the store raises, acks go on
                    log.error(  # noqa: TRY400  # a store error is reported, not a crash
                        "uplink: store ack of %d events failed (%s); they will be resent",
                        len(acks), exc,
                    )
                    rels.extend(acks)
            if rels:
                try:
                    await self._store.release(rels)
                except Exception as exc:  # noqa: BLE001  # as above
                    log.error(  # noqa: TRY400  # as above
                        "uplink: store release of %d events failed: %s", len(rels), exc
                    )

    async def _drain_book(self) -> None:
        while self._book_task is not None and not self._book_task.done():
            await asyncio.shield(self._book_task)

    async def _end_session(self, sess: Session) -> None:
        """After a connection: release what was not PUBACKed, settle the store."""
        sess.hard_close()
        self.release(sess.take_unacked())
        await self._drain_book()
        if self._session is sess:
            self._session = None


def wire_min_payload() -> int:
    """The smallest payload limit the uplink will shrink to."""
    return 1024


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
