"""The native JetStream source of the sink: a durable pull consumer on the cluster's MQTT
message stream, shared by every sink process that names the same durable, acked after the
database commit.

Why this stream: a NATS server answers an MQTT QoS 1 PUBLISH with PUBACK only after the
message is stored in the replicated ``$MQTT_msgs`` stream (subjects ``$MQTT.msgs.<subject>``;
nats-server 2.9 ``mqttProcessPub``: the PUBACK waits for the stream's store reply). A truck
deletes events on PUBACK, so this stream is the one place that holds every event the
fleet acknowledged. (A user stream on ``fleet.>`` is filled asynchronously, outside the
PUBACK: a node killed at the wrong moment loses from it what the truck already deleted.)
``$MQTT_msgs`` has interest retention: a message stays until every consumer with interest
acked it, so the durable must exist before the trucks publish (:meth:`JetStreamSink.run`
creates it, and the stream with the servers' own settings when no MQTT client came yet).

Each fetched message is classified and written exactly as the MQTT consumer does
(:func:`gateway.sink.rows.classify`, one transaction per message, idempotent on
``(truck_id, seq)``), then acked. A sink killed between commit and ack gets the message
again after ``ack_wait`` (or another sink does): a duplicate the table absorbs. While the
database is down nothing is acked; after ``max_ack_pending`` unacked messages the cluster
stops handing out more and keeps them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from config.retry import Backoff, RetryPolicy, sleep_unless
from gateway.sink.base import SinkStore, SinkStoreRejectedError, SinkStoreUnavailableError
from gateway.sink.consumer import STORE_RETRY, SinkCounters, SinkState, Tally
from gateway.sink.rows import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    EventBatch,
    LogThrottle,
    Quarantined,
    QuarantineReason,
    classify,
)

log = logging.getLogger(__name__)

#: The stream nats-server keeps MQTT QoS 1 messages in, and its subject prefix.
MQTT_STREAM: Final = "$MQTT_msgs"
MQTT_SUBJECT_PREFIX: Final = "$MQTT.msgs."
DEFAULT_DURABLE: Final = "truckgw-sink"
#: Messages fetched per pull request.
FETCH_BATCH: Final = 256
#: How long one pull waits for a full batch: nats-py returns a partial batch only when this
#: expires, so it bounds the lag a quiet fleet adds (and makes 5 pulls a second when idle).
FETCH_TIMEOUT_S: Final = 0.2
#: Unacked messages the cluster hands out to all sinks of one durable together.
MAX_ACK_PENDING: Final = 8192
#: A message not acked this long goes to another sink (or the same one) again.
ACK_WAIT_S: Final = 30.0
#: How long the connection's close may take at stop (pending acks flushed, or dropped).
CLOSE_TIMEOUT_S: Final = 5.0
#: Cluster trouble (no stream leader yet, a node gone): retried quickly, capped.
CLUSTER_RETRY: Final = RetryPolicy(min_s=0.2, max_s=3.0, stable_s=30.0)


def subject_to_topic(subject: str) -> str | None:
    """``$MQTT.msgs.fleet.T1.events`` -> ``fleet/T1/events`` (the MQTT topic the truck
    published on; NATS maps MQTT's ``/`` to ``.``); None for another subject."""
    if not subject.startswith(MQTT_SUBJECT_PREFIX):
        return None
    return subject[len(MQTT_SUBJECT_PREFIX):].replace(".", "/")


@dataclass(frozen=True, slots=True)
class JetStreamOptions:
    """Where a JetStream sink reads from."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    prefix: str = "fleet"
    durable: str = DEFAULT_DURABLE
    #: replicas of ``$MQTT_msgs`` when the sink creates it (match ``mqtt.stream_replicas``)
    replicas: int = 3
    user: str | None = None
    password: str | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    fetch_batch: int = FETCH_BATCH
    max_ack_pending: int = MAX_ACK_PENDING
    ack_wait_s: float = ACK_WAIT_S
    retry: RetryPolicy = STORE_RETRY

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("at least one NATS server URL is needed")
        if not self.durable.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"durable name must be [A-Za-z0-9_-]+, got {self.durable!r}")
        if not 1 <= self.replicas <= 5:
            raise ValueError(f"replicas must be 1..5, got {self.replicas}")
        if "." in self.prefix or " " in self.prefix:
            raise ValueError(f"NATS cannot carry MQTT topics with '.' or ' ': {self.prefix!r}")

    @property
    def filter_subject(self) -> str:
        return f"{MQTT_SUBJECT_PREFIX}{self.prefix.replace('/', '.')}.>"


class JetStreamSink:
    """``await JetStreamSink(options, store).run(stop)``: one sink process on the cluster."""

    def __init__(self, options: JetStreamOptions, store: SinkStore, *,
                 on_subscribed: Callable[[], None] | None = None,
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.options = options
        self.store = store
        self.state = SinkState.STARTING
        self._on_subscribed = on_subscribed
        self._clock_ms = clock_ms
        self._tally = Tally()
        self._lock = threading.Lock()
        self._throttle = LogThrottle()
        self.server: str | None = None
        self._nc: Any = None

    def __repr__(self) -> str:
        return f"JetStreamSink({self.options.durable!r}, state={self.state!r})"

    def counters(self) -> SinkCounters:
        with self._lock:
            return self._tally.snapshot()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; what was not acked stays in the stream."""
        db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sink-db")
        self.state = SinkState.CONNECTING
        nc = await nats.connect(
            servers=list(self.options.servers), user=self.options.user,
            password=self.options.password, name=f"truckgw-sink {self.options.durable}",
            connect_timeout=2, reconnect_time_wait=0.5, max_reconnect_attempts=-1,
            dont_randomize=True,  # the first URL first: a sink placed on a node stays there
            ping_interval=5, max_outstanding_pings=2,
            error_cb=self._nats_error, disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected)
        self._nc = nc
        await self._reconnected()
        try:
            js = nc.jetstream(timeout=5)
            psub = await self._subscribe(js, stop)
            if psub is not None:
                await self._consume(psub, db, stop)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):  # a lost node must not hang us
                    await nc.close()
            await asyncio.get_running_loop().run_in_executor(db, self.store.close)
            db.shutdown(wait=True)
            self.state = SinkState.STOPPED

    async def _nats_error(self, exc: Exception) -> None:
        log.info("sink: nats: %s", exc)

    async def _disconnected(self) -> None:
        log.warning("sink: disconnected from %s", self.server)

    async def _reconnected(self) -> None:
        url = getattr(self._nc, "connected_url", None)
        self.server = f"{url.hostname}:{url.port}" if url is not None else None
        with self._lock:
            self._tally.add("connects")
        log.info("sink: connected to %s", self.server)

    async def _subscribe(self, js: JetStreamContext,
                         stop: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        """The stream (created like nats-server would, if missing), the durable and a pull
        subscription on it; retried while the cluster elects leaders."""
        o = self.options
        backoff = Backoff(CLUSTER_RETRY)
        while not stop.is_set():
            try:
                try:
                    await js.stream_info(MQTT_STREAM)
                except nats.js.errors.NotFoundError:
                    await js.add_stream(StreamConfig(
                        name=MQTT_STREAM, subjects=[f"{MQTT_SUBJECT_PREFIX}>"],
                        storage=StorageType.FILE, retention=RetentionPolicy.INTEREST,
                        num_replicas=o.replicas))
                psub = await js.pull_subscribe(
                    o.filter_subject, durable=o.durable, stream=MQTT_STREAM,
                    config=ConsumerConfig(
                        durable_name=o.durable, ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL, filter_subject=o.filter_subject,
                        max_ack_pending=o.max_ack_pending, ack_wait=o.ack_wait_s,
                        max_deliver=-1))
            except (nats.errors.Error, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("sink: cannot subscribe yet (%r); retry in %.1f s", exc, delay)
                await sleep_unless(stop, delay)
                continue
            self.state = SinkState.SUBSCRIBED
            log.info("sink: durable %s on %s (%s)", o.durable, MQTT_STREAM, o.filter_subject)
            if self._on_subscribed is not None:
                self._on_subscribed()
            return psub
        return None

    async def _consume(self, psub: JetStreamContext.PullSubscription,
                       db: concurrent.futures.Executor, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        cluster, store = Backoff(CLUSTER_RETRY), Backoff(self.options.retry)
        while not stop.is_set():
            try:
                msgs = await psub.fetch(self.options.fetch_batch, timeout=FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, TimeoutError):  # nothing came within the wait
                cluster.reset()
                continue
            except (nats.errors.Error, OSError) as exc:  # a node gone, a leader moving
                delay = cluster.next_delay()
                log.info("sink: fetch failed (%r); again in %.1f s", exc, delay)
                await sleep_unless(stop, delay)
                continue
            cluster.reset()
            while True:  # the same messages until they are committed (or we stop)
                try:
                    await loop.run_in_executor(db, self._commit, msgs)
                    break
                except SinkStoreUnavailableError as exc:
                    self.state = SinkState.STORE_DOWN
                    delay = store.next_delay()
                    with self._lock:
                        self._tally.add("store_failures")
                    log.warning("sink: database unavailable (retry in %.1f s): %s", delay, exc)
                    if await sleep_unless(stop, delay):
                        return  # unacked: redelivered after ack_wait
            if self.state is SinkState.STORE_DOWN:
                log.info("sink: database back")
                self.state = SinkState.SUBSCRIBED
            store.reset()
            # after the commit; a lost ack is a redelivery, not a loss
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                async with asyncio.timeout(self.options.ack_wait_s):
                    for m in msgs:
                        await m.ack()

    def _commit(self, msgs: list[Msg]) -> None:
        """On the database thread: classify and store each message, one transaction each."""
        o = self.options
        for m in msgs:
            received_ms = self._clock_ms()
            topic = subject_to_topic(m.subject) or m.subject
            outcome = classify(topic, m.data, None, received_ms, prefix=o.prefix,
                               max_payload_bytes=o.max_payload_bytes)
            try:
                new = self.store.write(outcome)
            except SinkStoreRejectedError as exc:
                outcome = Quarantined(topic, getattr(outcome, "truck_id", None),
                                      QuarantineReason.REJECTED, str(exc)[:300], m.data,
                                      received_ms)
                new = self.store.write(outcome)
            self._count(outcome, new)

    def _count(self, outcome: object, new: int) -> None:
        committed_ms = self._clock_ms()
        with self._lock:
            self._tally.add("messages")
            if isinstance(outcome, EventBatch):
                self._tally.add("new_events", new)
                self._tally.add("duplicate_events", len(outcome.rows) - new)
                if new:
                    self._tally.lags_ms.extend(committed_ms - r.ts for r in outcome.rows)
            elif isinstance(outcome, Quarantined):
                self._tally.add("quarantined")
                if self._throttle.should_log(outcome.truck_id or "?", time.monotonic()):
                    log.warning("sink: quarantined a message on %s (%s): %s", outcome.topic,
                                outcome.reason, outcome.detail)

