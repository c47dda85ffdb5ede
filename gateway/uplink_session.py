"""One MQTT connection of the uplink: connect, publish, track PUBACKs, end cleanly.

A :class:`Session` owns a fresh paho client. Its tasks (sender, ticker) live only as
long as the connection; whatever way the connection ends (broker gone, refusal,
half-open link, publish timeout, close()), the :class:`~gateway.uplink.Uplink`
releases every message that was not PUBACKed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from buffer.api import Lane
from config.errors import GatewayError
from gateway.uplink_conn import (
    SocketDriver,
    connect_blocking,
    is_failure,
    make_client,
    reason_text,
)

if TYPE_CHECKING:
    from gateway.uplink import Uplink

log = logging.getLogger(__name__)

#: MQTT 5 reason code "Packet too large".
RC_PACKET_TOO_LARGE = 0x95
#: Disconnect reasons after which the largest in-flight message is suspected too large:
#: malformed packet, protocol error, packet too large.
RC_MAYBE_TOO_LARGE = frozenset({0x81, 0x82, RC_PACKET_TOO_LARGE})
#: Half-open detection: no inbound byte for this many keepalives ends the connection.
KEEPALIVE_FACTOR = 1.5
#: Extra paho in-flight slots beyond the event window (status messages).
EXTRA_INFLIGHT = 4


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


@dataclass(slots=True)
class Flight:
    """A published message awaiting its PUBACK."""

    seqs: tuple[int, ...]
    lane: Lane | None  # None: a status message
    nbytes: int
    deadline: float


class Session:
    """One connection attempt and, if accepted, its delivery loop."""

    def __init__(
        self,
        up: Uplink,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.ThreadPoolExecutor,
    ) -> None:
        self.up = up
        self.loop = loop
        self.executor = executor
        m = up.cfg.mqtt
        self.m = m
        self.window = m.inflight_window
        self.client: mqtt.Client | None = None
        self.driver: SocketDriver | None = None
        self.flights: dict[int, Flight] = {}
        self.connack: asyncio.Future[Any] = loop.create_future()
        self.ended = asyncio.Event()
        self.slot = asyncio.Event()
        self.refused = False
        self.draining = False
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self.keepalive = float(m.keepalive_s)
        self.disconnect_reason = "no reason given"

    # ---------------------------------------------------------------- lifecycle

    def connected_for(self) -> float:
        """Seconds this connection was up (0 if it never was)."""
        if self.connected_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.connected_at

    @property
    def event_inflight(self) -> int:
        """Event messages awaiting PUBACK."""
        return sum(1 for f in self.flights.values() if f.lane is not None)

    def inflight_by_lane(self, lane: Lane) -> int:
        """Event messages of ``lane`` awaiting PUBACK."""
        return sum(1 for f in self.flights.values() if f.lane is lane)

    async def serve(self) -> None:
        """Connect and deliver until the connection ends; never raises for broker trouble."""
        up, m = self.up, self.m
        up.set_state(UplinkState.CONNECTING)
        try:
            will = up.status_payload("offline", {"reason": "connection lost"})
            self.client = make_client(
                m, up.cfg.client_id, will_topic=up.status_topic, will_payload=will,
                inflight=self.window + EXTRA_INFLIGHT,
            )
            done = self.executor.submit(connect_blocking, self.client, m)
            try:
                rc = await asyncio.wrap_future(done)
            except asyncio.CancelledError:
                # the worker cannot be interrupted: close whatever socket it ends up with
                done.add_done_callback(lambda _: self._close_socket())
                raise
        except (OSError, ssl.SSLError, ValueError, GatewayError) as exc:
            self._fail(f"cannot connect to {m.host}:{m.port}: {exc}", refused=_is_tls_refusal(exc))
            return
        if self.ended.is_set():  # close() came while connecting
            self._close_socket()
            return
        # callbacks only now: paho must never call us from the worker thread
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        if rc != mqtt.MQTT_ERR_SUCCESS or self.client.socket() is None:
            self._close_socket()
            self._fail(f"connection to {m.host}:{m.port} failed while sending CONNECT: "
                       f"{mqtt.error_string(rc)}; with TLS this is how a broker rejects a "
                       "missing or unknown client certificate")
            return
        self.driver = SocketDriver(self.loop, self.client)
        self.driver.attach()
        try:
            connack_timeout = max(5.0, min(self.keepalive, 30.0))
            await asyncio.wait_for(asyncio.shield(self.connack), connack_timeout)
        except TimeoutError:
            self._fail(f"no CONNACK from {m.host}:{m.port}")
            return
        if self.refused:
            return
        if self.ended.is_set():
            self.up.count("connect_failures")
            text = (f"{m.host}:{m.port} closed the connection before CONNACK "
                    f"({self.disconnect_reason}); with TLS this is how a broker rejects a "
                    "missing or unknown client certificate")
            log.warning("uplink: %s", text)
            self.up.note_error(text)
            return
        await self._connected()

    async def _connected(self) -> None:
        up = self.up
        self.connected_at = time.monotonic()
        up.count("connects")
        up.set_state(UplinkState.CONNECTED)
        log.info("uplink: connected to %s:%d as %r (MQTT %s, %s)", self.m.host, self.m.port,
                 up.cfg.client_id, self.m.protocol, self.m.encoding)
        await self.publish_status("online", await up.online_fields())
        tasks = [
            self.loop.create_task(self._sender(), name="uplink-sender"),
            self.loop.create_task(self._ticker(), name="uplink-ticker"),
        ]
        for t in tasks:
            t.add_done_callback(self._task_done)
        try:
            await self.ended.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("uplink: task %s failed: %r; reconnecting", task.get_name(), exc,
                      exc_info=exc)
            self.end(f"internal error in {task.get_name()}: {exc!r}")

    def _fail(self, text: str, *, refused: bool = False) -> None:
        self.up.count("connect_failures")
        if refused:
            self.refused = True
            self.up.count("refusals")
            log.error("uplink: %s", text)
        else:
            log.warning("uplink: %s", text)
        self.up.note_error(text)
        self.end(text)

    def end(self, reason: str) -> None:
        """Mark the connection finished (idempotent); the socket is closed by hard_close."""
        if not self.ended.is_set():
            log.debug("uplink session ends: %s", reason)
            self.ended_at = time.monotonic()
            self.ended.set()
            self.slot.set()
        if not self.connack.done():
            self.connack.set_result(None)

    def hard_close(self) -> None:
        """Drop the TCP connection without ceremony (the broker then sends our will)."""
        self.end("closed")
        if self.driver is not None:
            self.driver.detach()
        self._close_socket()

    def _close_socket(self) -> None:
        sock = self.client.socket() if self.client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def take_unacked(self) -> tuple[int, ...]:
        """Seqs of every event message not PUBACKed; forgets them."""
        seqs = tuple(s for f in self.flights.values() if f.lane is not None for s in f.seqs)
        self.flights.clear()
        return seqs

    async def shutdown(self, grace: float) -> None:
        """close(): let in-flight PUBACKs arrive, publish offline, DISCONNECT."""
        self.draining = True
        if self.connected_at is None or self.ended.is_set() or self.client is None:
            self.end("closing")
            return
        deadline = time.monotonic() + grace
        while self.event_inflight and not self.ended.is_set() and time.monotonic() < deadline:
            self.slot.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.slot.wait(), max(0.01, deadline - time.monotonic()))
        if not self.ended.is_set():
            mid = await self.publish_status("offline", {"reason": "shutdown"})
            while mid in self.flights and not self.ended.is_set() and time.monotonic() < deadline:
                self.slot.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.slot.wait(), max(0.01, deadline - time.monotonic()))
        if not self.ended.is_set():
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), 1.0)
        self.end("closed by close()")

    # ---------------------------------------------------------------- tasks

    async def publish_status(self, state: str, fields: dict[str, Any]) -> int | None:
        """Publish the retained status; returns its mid (None if not sent)."""
        if self.client is None or self.ended.is_set():
            return None
        payload = self.up.status_payload(state, fields)
        info = self.client.publish(self.up.status_topic, payload, qos=1, retain=True,
                                   properties=self.up.status_props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self.flights[info.mid] = Flight((), None, len(payload),
                                        time.monotonic() + self.m.publish_timeout_s)
        return info.mid

    async def _sender(self) -> None:
        up = self.up
        while not self.ended.is_set() and not self.draining:
            if self.event_inflight >= self.window:
                self.slot.clear()
                await self.slot.wait()
                continue
            lane = up.next_lane(self)
            batch = await up.lease(lane)
            if batch is None:
                await up.wait_pending(1.0)
                continue
            payloads = up.encode(batch)
            for i, (payload, seqs) in enumerate(payloads):
                delay = up.bandwidth_delay(len(payload))
                if delay > 0:
                    try:
                        await asyncio.sleep(delay)
                    except asyncio.CancelledError:
                        up.release([s for _, sq in payloads[i:] for s in sq])
                        raise
                if not self._publish(payload, seqs, batch.lane):
                    up.release([s for _, sq in payloads[i:] for s in sq])
                    break

    def _publish(self, payload: bytes, seqs: tuple[int, ...], lane: Lane) -> bool:
        if self.ended.is_set() or self.client is None:
            return False
        info = self.client.publish(self.up.events_topic, payload, qos=1,
                                   properties=self.up.events_props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.end(f"publish failed locally: {mqtt.error_string(info.rc)}")
            return False
        flight = Flight(seqs, lane, len(payload), time.monotonic() + self.m.publish_timeout_s)
        self.flights[info.mid] = flight
        self.up.published(flight)
        return True

    async def _ticker(self) -> None:
        """Keepalive pings, half-open watchdog, publish timeouts, periodic status."""
        tick = max(0.05, min(1.0, self.keepalive / 10))
        next_status = time.monotonic() + self.m.status_interval_s
        while not self.ended.is_set():
            await asyncio.sleep(tick)
            if self.driver is None or self.client is None:
                return
            self.driver.misc()
            now = time.monotonic()
            silent = now - self.driver.last_inbound
            if silent > KEEPALIVE_FACTOR * self.keepalive:
                self.up.count("half_open_detected")
                self._lost(f"no packet from the broker for {silent:.1f} s "
                           f"({KEEPALIVE_FACTOR} x keepalive {self.keepalive:.0f} s): link is dead")
                return
            late = [f for f in self.flights.values() if f.deadline <= now]
            if late:
                self.up.count("publish_timeouts", len(late))
                self._lost(f"{len(late)} message(s) not acknowledged within "
                           f"{self.m.publish_timeout_s:.0f} s; not counted as delivered")
                return
            if now >= next_status:
                next_status = now + self.m.status_interval_s
                await self.publish_status("online", await self.up.online_fields())

    def _lost(self, text: str) -> None:
        log.warning("uplink: %s; reconnecting", text)
        self.up.note_error(text)
        self.end(text)

    # ---------------------------------------------------------------- paho callbacks

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, rc: Any,
                    props: Any) -> None:
        if is_failure(rc):
            self._fail(f"broker {self.m.host}:{self.m.port} refused the connection of "
                       f"client id {self.up.cfg.client_id!r}: {reason_text(rc)}", refused=True)
            return
        if props is not None:
            maxp = getattr(props, "MaximumPacketSize", None)
            if isinstance(maxp, int):
                self.up.cap_payload(maxp)
        self.keepalive = float(getattr(client, "keepalive", self.keepalive) or self.keepalive)
        if not self.connack.done():
            self.connack.set_result(rc)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, rc: Any,
                       _props: Any) -> None:
        code = int(getattr(rc, "value", 0))
        self.disconnect_reason = reason_text(rc)
        sizes = [f.nbytes for f in self.flights.values() if f.lane is not None]
        if code in RC_MAYBE_TOO_LARGE and sizes and not self.ended.is_set():
            # Mosquitto 2.0 answers an oversized PUBLISH with a PUBACK paho cannot parse
            # (protocol error); other brokers DISCONNECT with 0x95. Either way: go smaller.
            self.up.shrink_payload(max(sizes))
        if not self.ended.is_set():
            text = f"disconnected from {self.m.host}:{self.m.port}: {reason_text(rc)}"
            if self.connected_at is not None and not self.draining:
                log.warning("uplink: %s", text)
            self.up.note_error(text)
        self.end("disconnected")

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, rc: Any,
                    _props: Any) -> None:
        flight = self.flights.pop(mid, None)
        if flight is None:
            return
        self.slot.set()
        if not is_failure(rc):
            if flight.lane is not None:
                self.up.acked(flight)
            return
        if flight.lane is None:
            log.error("uplink: broker refused the status message: %s", reason_text(rc))
            return
        self.up.count("refused_publishes")
        self.up.release(flight.seqs)
        if int(getattr(rc, "value", rc)) == RC_PACKET_TOO_LARGE and self.up.shrink_payload(
            flight.nbytes
        ):
            return
        text = (f"broker refused a publish of {len(flight.seqs)} events to "
                f"{self.up.events_topic!r}: {reason_text(rc)}; events kept, backing off")
        self._fail(text, refused=True)


def _is_tls_refusal(exc: BaseException) -> bool:
    """A TLS verification failure is a refusal, not a network blip (log it as an error)."""
    return isinstance(exc, ssl.SSLError)
