"""The MQTT shell of the sink: receive, store in one transaction, then PUBACK.

paho's network thread (``loop_start``) receives; ``manual_ack=True`` keeps it from
acking. Messages go, in arrival order, to one writer coroutine, which hands what has
arrived to a dedicated database thread; that thread classifies each message
(:func:`gateway.sink.rows.classify`), writes it in one transaction and only then calls
``client.ack(mid, qos)``; acks therefore leave in the order the messages came (as MQTT 5
requires for QoS 1). While the database is down the writer keeps the messages it could not
store and retries them with the project's backoff
(:func:`config.retry.retry_forever`): nothing more is acked, the broker stops sending once
:data:`RECEIVE_MAXIMUM` messages are unacknowledged and keeps the rest.

The session is persistent (fixed client id, ``clean_start=False``, an expiry), so what
was delivered but not acked before a crash or a SIGKILL is delivered again when the same
client id reconnects. A message received on an earlier connection is written but not
acked: its packet id may belong to another message now, and the broker redelivers it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from config.retry import RetryPolicy, retry_forever
from gateway.sink.base import SinkStore, SinkStoreRejectedError, SinkStoreUnavailableError
from gateway.sink.rows import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    EventBatch,
    LogThrottle,
    Quarantined,
    QuarantineReason,
    classify,
)

log = logging.getLogger(__name__)

#: Unacknowledged messages the broker may have in flight to one sink (MQTT 5 Receive
#: Maximum): the bound on what a sink holds in memory during a database outage.
RECEIVE_MAXIMUM: Final = 256
#: How long the broker keeps a sink's session (and its queued messages) after it vanished.
SESSION_EXPIRY_S: Final = 3600
KEEPALIVE_S: Final = 15
#: Database retries: quick first, capped, so an outage costs little after it ends.
STORE_RETRY: Final = RetryPolicy(min_s=0.2, max_s=5.0, stable_s=30.0)
#: Most messages handed to the database thread at once.
HANDOFF_MAX: Final = 64
#: New events whose lag the counters keep (a sliding window for p50/p99).
MAX_LAGS: Final = 100_000


class SinkState(enum.Enum):
    """Where the sink is; :attr:`FleetSink.state`."""

    STARTING = "starting"
    CONNECTING = "connecting"
    SUBSCRIBED = "subscribed"
    STORE_DOWN = "store_down"
    STOPPED = "stopped"

    def __repr__(self) -> str:
        return f"SinkState.{self.name}"


@dataclass(frozen=True, slots=True)
class SinkOptions:
    """How a sink connects and what it subscribes to."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "fleet"
    #: MQTT 5 shared subscription group for the events topics (None: not shared)
    group: str | None = None
    client_id: str = "truckgw-sink"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    receive_maximum: int = RECEIVE_MAXIMUM
    session_expiry_s: int = SESSION_EXPIRY_S
    retry: RetryPolicy = STORE_RETRY

    def __post_init__(self) -> None:
        if self.session_expiry_s < 0:
            raise ValueError(f"session_expiry_s must be >= 0, got {self.session_expiry_s}")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError(f"receive_maximum must be in 1..65535, got {self.receive_maximum}")
        if self.group is not None and not self.group.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"share group must be [A-Za-z0-9_-]+, got {self.group!r}")

    def topics(self) -> list[str]:
        """The subscriptions. Events are shared in ``group``; status is not: it is retained,
        and a broker sends retained messages to no shared subscription, while every sink
        writes status idempotently anyway."""
        events = f"{self.prefix}/+/events/#"
        if self.group:
            events = f"$share/{self.group}/{events}"
        return [events, f"{self.prefix}/+/status"]


@dataclass(frozen=True, slots=True)
class SinkCounters:
    """A snapshot of what a sink did since it started."""

    messages: int = 0
    new_events: int = 0
    duplicate_events: int = 0
    quarantined: int = 0
    store_failures: int = 0
    stale_acks_skipped: int = 0
    connects: int = 0
    #: end-to-end lag, event ``ts`` to the commit that stored it, over the last
    #: :data:`MAX_LAGS` new events (None before the first)
    lag_p50_ms: int | None = None
    lag_p99_ms: int | None = None


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    content_type: str | None
    mid: int
    qos: int
    connection: int
    received_ms: int


_COUNTS: Final = tuple(f for f in SinkCounters.__dataclass_fields__ if not f.startswith("lag_"))


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    lags_ms: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_LAGS))

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def snapshot(self) -> SinkCounters:
        lags = sorted(self.lags_ms)
        if not lags:
            return SinkCounters(**self.counts)
        return SinkCounters(**self.counts, lag_p50_ms=lags[len(lags) // 2],
                            lag_p99_ms=lags[min(len(lags) - 1, len(lags) * 99 // 100)])


#: The counters' accumulator, shared with the JetStream source (gateway/sink/jetstream.py).
Tally = _Tally


class FleetSink:
    """One sink process's consumer: ``await FleetSink(options, store).run(stop)``."""

    def __init__(self, options: SinkOptions, store: SinkStore, *,
                 on_subscribed: Callable[[], None] | None = None,
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.options = options
        self.store = store
        self.state = SinkState.STARTING
        self._on_subscribed = on_subscribed
        self._clock_ms = clock_ms
        self._tally = _Tally()
        self._lock = threading.Lock()
        self._connection = 0
        self._suback_pending: set[int] = set()
        self._throttle = LogThrottle()
        #: taken from the queue, not committed yet; only one thread at a time touches it
        #: (the loop fills it while the database thread is idle, which then empties it)
        self._pending: collections.deque[_Received] = collections.deque()
        self._stop_seen = False
        self._queue: asyncio.Queue[_Received | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._make_client()

    def __repr__(self) -> str:
        return (f"FleetSink({self.options.client_id!r}, state={self.state!r}, "
                f"store={self.store!r})")

    def counters(self) -> SinkCounters:
        """What the sink did so far."""
        with self._lock:
            return self._tally.snapshot()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; unacked messages stay with the broker."""
        self._loop = asyncio.get_running_loop()
        db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sink-db")
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.options.session_expiry_s
        props.ReceiveMaximum = self.options.receive_maximum
        self.state = SinkState.CONNECTING
        self._client.connect_async(self.options.host, self.options.port, keepalive=KEEPALIVE_S,
                                   clean_start=False, properties=props)
        self._client.loop_start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._wake_on(stop), name="sink-stop-watch")
                tg.create_task(
                    retry_forever(lambda: self._drain(db), self.options.retry, stop,
                                  retry_on=(SinkStoreUnavailableError,),
                                  on_failure=self._store_failed),
                    name="sink-writer")
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            await asyncio.get_running_loop().run_in_executor(db, self.store.close)
            db.shutdown(wait=True)
            self.state = SinkState.STOPPED

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._queue.put_nowait(None)

    def _store_failed(self, exc: BaseException, attempt: int, delay: float) -> None:
        self.state = SinkState.STORE_DOWN
        with self._lock:
            self._tally.add("store_failures")
        log.warning("sink: database unavailable (attempt %d, retry in %.1f s): %s",
                    attempt, delay, exc)

    async def _drain(self, db: concurrent.futures.Executor) -> None:
        """Hand received messages to the database thread in arrival order until stopped;
        raises on a database outage (what was not committed stays pending)."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._stop_seen:
                    return
                self._take(await self._queue.get())
                # whatever else arrived goes in the same hand-off: one thread switch for
                # many messages, still one transaction and one ack per message
                while not self._queue.empty() and len(self._pending) < HANDOFF_MAX:
                    self._take(self._queue.get_nowait())
            await loop.run_in_executor(db, self._commit_pending)

    def _take(self, item: _Received | None) -> None:
        if item is None:
            self._stop_seen = True
        elif not self._stop_seen:
            self._pending.append(item)

    def _commit_pending(self) -> None:
        """On the database thread: store, then ack, each pending message in order."""
        while self._pending:
            msg = self._pending[0]
            outcome = classify(msg.topic, msg.payload, msg.content_type, msg.received_ms,
                               prefix=self.options.prefix,
                               max_payload_bytes=self.options.max_payload_bytes)
            try:
                new = self.store.write(outcome)
            except SinkStoreRejectedError as exc:
                outcome = Quarantined(msg.topic, getattr(outcome, "truck_id", None),
                                      QuarantineReason.REJECTED, str(exc)[:300], msg.payload,
                                      msg.received_ms)
                new = self.store.write(outcome)
            if self.state is SinkState.STORE_DOWN:
                log.info("sink: database back")
                self.state = SinkState.SUBSCRIBED
            self._pending.popleft()
            self._after_commit(msg, outcome, new)

    def _after_commit(self, msg: _Received, outcome: object, new: int) -> None:
        committed_ms = self._clock_ms()
        with self._lock:
            current = msg.connection == self._connection
            self._tally.add("messages")
            if isinstance(outcome, EventBatch):
                self._tally.add("new_events", new)
                self._tally.add("duplicate_events", len(outcome.rows) - new)
                if new:  # a redelivery's lag says nothing about the pipeline
                    self._tally.lags_ms.extend(committed_ms - r.ts for r in outcome.rows)
            elif isinstance(outcome, Quarantined):
                self._tally.add("quarantined")
                key = outcome.truck_id or "?"
                if self._throttle.should_log(key, time.monotonic()):
                    log.warning("sink: quarantined a message on %s (%s): %s", outcome.topic,
                                outcome.reason, outcome.detail)
            if not current:
                self._tally.add("stale_acks_skipped")
        if current:
            self._client.ack(msg.mid, msg.qos)

    # ------------------------------------------------------------------ paho callbacks

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=self.options.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.reconnect_delay_set(1, 4)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("sink: connect refused: %s", rc)
            return
        with self._lock:
            self._connection += 1
            self._tally.add("connects")
            self._suback_pending = set()
            for topic in self.options.topics():
                _rc, mid = client.subscribe(topic, options=SubscribeOptions(qos=1))
                if mid is not None:
                    self._suback_pending.add(mid)
        log.info("sink: connected to %s:%s as %s", self.options.host, self.options.port,
                 self.options.client_id)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        refused = [c for c in (codes or ()) if getattr(c, "is_failure", False)]
        if refused:
            log.error("sink: subscription refused: %s", refused)
            return
        with self._lock:
            self._suback_pending.discard(mid)
            done = not self._suback_pending
        if done:
            if self.state is not SinkState.STORE_DOWN:
                self.state = SinkState.SUBSCRIBED
            log.info("sink: subscribed to %s", self.options.topics())
            if self._on_subscribed is not None:
                self._on_subscribed()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.state is not SinkState.STORE_DOWN:
            self.state = SinkState.CONNECTING
        log.info("sink: disconnected (%s)", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        ctype = getattr(props, "ContentType", None) if props is not None else None
        with self._lock:
            connection = self._connection
        item = _Received(msg.topic, bytes(msg.payload), str(ctype) if ctype else None,
                         msg.mid, msg.qos, connection, self._clock_ms())
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._queue.put_nowait, item)
