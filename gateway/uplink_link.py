"""One MQTT connection of the uplink: the asyncio shell around the delivery core.

A :class:`Link` owns a fresh paho client. It connects (DNS, TCP, TLS and CONNECT in a
worker thread; paho's socket then driven from the event loop), feeds the
:class:`~gateway.delivery.Delivery` core with what happens (CONNACK, PUBACKs,
disconnects, lease results, ticks) and executes the actions the core answers with.
While connected, three tasks live in one ``asyncio.TaskGroup``: the sender (leases and
publishes as the core says), the ticker (keepalive, watchdog, status) and the settler
(acks and releases in the store). Whatever way the connection ends, the core has
released every message that was not PUBACKed.

Library errors are translated here: OSError, ssl.SSLError and paho's refusals become
:class:`UplinkError` / :class:`BrokerRefusedError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from buffer.api import Batch, EventStore, Lane
from config import TruckConfig
from config.errors import BrokerRefusedError, UplinkError
from gateway import wire
from gateway.delivery import Delivery
from gateway.delivery_actions import (
    Ack,
    Action,
    DeadLetter,
    Lease,
    Publish,
    Reconnect,
    Release,
    SendStatus,
    UplinkState,
    WaitPending,
)
from gateway.diagnose import diagnose
from gateway.uplink_conn import (
    SocketDriver,
    TopicAliases,
    connect_blocking,
    is_failure,
    keep_tls_session,
    make_client,
    reason_text,
)
from gateway.uplink_settle import Settler
from gateway.uplink_status import StatusReport
from gateway.usage import ConnectionUsage, UsageMeter

log = logging.getLogger(__name__)

#: How long a graceful close waits for in-flight PUBACKs and the offline status.
CLOSE_GRACE_S = 3.0
#: Extra paho in-flight slots beyond the event window (status messages).
EXTRA_INFLIGHT = 4
#: How often the usage counters are written to the buffer's state table (and the data
#: budget's projection looked at).
USAGE_SAVE_S = 60.0
_OK = mqtt.MQTT_ERR_SUCCESS


def _worth_a_probe(exc: UplinkError) -> bool:
    """A failure after the TCP connect (TLS, CONNECT, CONNACK) may be a TLS/plain
    mismatch; nothing listening, no route or no name is what it says."""
    cause = exc.__cause__
    return isinstance(cause, ssl.SSLError) or not isinstance(cause, OSError)


class LinkHooks(Protocol):
    """Optional listener on the connection (remote management, :mod:`gateway.remote`):
    ``on_connected`` after the online status (it may subscribe and set
    ``client.on_message``), ``on_disconnected`` when the connection is over.
    ``sent(mid, nbytes)`` must be called after each QoS 1 publish the listener makes on
    the client: the delivery core tracks every packet id in flight, so that one paho
    hands out again while still in flight is never taken for another message's."""

    def on_connected(self, client: mqtt.Client, sent: Callable[[int, int], None]) -> None:
        """The connection is up and the online status published."""

    def on_disconnected(self) -> None:
        """The connection is gone (the client must not be used any more)."""


@dataclass(frozen=True, slots=True)
class LinkSetup:
    """What every connection of one uplink shares: config, topics, properties."""

    cfg: TruckConfig
    events_topic: str
    status_topic: str
    #: MQTT 5 content types (None under 3.1.1)
    events_type: str | None
    status_type: str | None

    @classmethod
    def from_config(cls, cfg: TruckConfig) -> LinkSetup:
        """Topics and MQTT 5 content types from the truck config."""
        m = cfg.mqtt
        v5 = m.protocol == "5"
        return cls(
            cfg,
            wire.events_topic(m.topic_prefix, cfg.truck_id, m.encoding, m.protocol),
            wire.status_topic(m.topic_prefix, cfg.truck_id),
            wire.content_type(m.encoding) if v5 else None,
            wire.CONTENT_TYPE_JSON if v5 else None,
        )


class Link:
    """One connection attempt and, if accepted, its delivery; see the module docstring."""

    def __init__(self, setup: LinkSetup, core: Delivery, *, store: EventStore,
                 settler: Settler, status: StatusReport,
                 executor: concurrent.futures.ThreadPoolExecutor,
                 hooks: LinkHooks | None = None, usage: UsageMeter | None = None,
                 every_minute: Callable[[], Awaitable[None]] | None = None) -> None:
        self.setup = setup
        self._usage = ConnectionUsage(usage) if usage is not None else None
        self._every_minute = every_minute
        self.hooks = hooks
        self.core = core
        self.store = store
        self.settler = settler
        self.status = status
        self.executor = executor
        self.m = setup.cfg.mqtt
        self.client: mqtt.Client | None = None
        self.driver: SocketDriver | None = None
        loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[None] = loop.create_future()
        self._wake = asyncio.Event()  # the sender (and a draining close) has news
        self._stop = asyncio.Event()  # the connection is over, or close() was asked
        self._closing = False
        self._reconnect: Reconnect | None = None
        self._lease: tuple[Lane, asyncio.Future[Batch | None]] | None = None
        self._aliases = TopicAliases(0)  # the broker's maximum comes with CONNACK

    # ---------------------------------------------------------------- lifecycle

    async def serve(self) -> Reconnect | None:
        """Connect and deliver until the connection ends; the core's Reconnect, or None
        after close(). Never raises for broker or network trouble."""
        core = self.core
        core.connecting(time.monotonic())
        try:
            try:
                connected = await self._connect()
            except UplinkError as exc:  # logged with the next attempt's delay by _do
                refused = isinstance(exc, BrokerRefusedError)
                if core.failures_in_a_row == 0 and _worth_a_probe(exc):
                    await self._explain(str(exc))  # the first failure of a streak
                self._do(core.connect_failed(time.monotonic(), str(exc), refused=refused))
                return self._reconnect
            if connected:
                log.info("uplink: connected to %s:%d as %r (MQTT %s, %s)", self.m.host,
                         self.m.port, self.setup.cfg.client_id, self.m.protocol,
                         self.m.encoding)
                await self._deliver_guarded()
        finally:
            if self.hooks is not None:
                self.hooks.on_disconnected()
            self._hard_close()
            await self._settle_late_lease()
            if core.state in (UplinkState.CONNECTING, UplinkState.CONNECTED):
                self._do(core.disconnected(time.monotonic(), 0, "connection closed"))
            await self.settler.flush()
        return self._reconnect

    async def _explain(self, error: str) -> None:
        """Probe the broker port once and log what the failure means for this config
        (TLS expected but plain MQTT answers, or the other way round)."""
        m = self.m
        try:
            d = await asyncio.get_running_loop().run_in_executor(
                self.executor, functools.partial(
                    diagnose, m.host, m.port, tls_configured=m.tls is not None, error=error))
        except Exception as exc:  # noqa: BLE001  # a probe must never break the uplink
            log.debug("uplink: diagnosis failed: %s", exc)
            return
        (log.error if d.mismatch else log.warning)("uplink: %s", d.message)

    def request_close(self) -> None:
        """close(): drain the in-flight messages, publish offline, DISCONNECT."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        if not self._connack.done():
            self._connack.set_result(None)

    async def _connect(self) -> bool:
        """TCP/TLS/CONNECT and CONNACK; False if close() came meanwhile."""
        m, cfg = self.m, self.setup.cfg
        where = f"{m.host}:{m.port}"
        try:
            will = self.status.payload("offline", {"reason": "connection lost"})
            self.client = make_client(m, cfg.client_id, will_topic=self.setup.status_topic,
                                      will_payload=will,
                                      inflight=self.core.window + EXTRA_INFLIGHT)
            done = self.executor.submit(connect_blocking, self.client, m)
            try:
                rc = await asyncio.wrap_future(done)
            except asyncio.CancelledError:
                # the worker cannot be interrupted: close whatever socket it ends up with
                done.add_done_callback(lambda _: self._close_socket())
                raise
        except ssl.SSLError as exc:  # a TLS verification failure is a refusal, not a blip
            raise BrokerRefusedError(f"cannot connect to {where}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise UplinkError(f"cannot connect to {where}: {exc}") from exc
        if self._closing:
            return False
        # callbacks only now: paho must never call us from the worker thread
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        if rc != _OK or self.client.socket() is None:
            raise UplinkError(f"connection to {where} failed while sending CONNECT: "
                              f"{mqtt.error_string(rc)}")
        self.driver = SocketDriver(asyncio.get_running_loop(), self.client)
        self.driver.attach()
        try:
            async with asyncio.timeout(max(5.0, min(float(m.keepalive_s), 30.0))):
                await self._connack
        except TimeoutError as exc:
            raise UplinkError(f"no CONNACK from {where}") from exc
        return not self._closing

    async def _deliver_guarded(self) -> None:
        """The connection's TaskGroup; a task's crash ends the connection, not the uplink."""
        try:
            await self._deliver()
        except* Exception as eg:  # any bug in a task: log it and reconnect
            exc = eg.exceptions[0]
            log.exception("uplink: internal error in a connection task; reconnecting")
            self._do(self.core.disconnected(time.monotonic(), 0, f"internal error: {exc!r}"))

    def _side_sent(self, mid: int, nbytes: int) -> None:
        """A QoS 1 message of a hook (remote management) went as packet ``mid``."""
        self.core.status_sent(mid, nbytes, time.monotonic())

    async def _deliver(self) -> None:
        await self._publish_status("online", await self.status.online_fields())
        if self.hooks is not None and self.client is not None:
            self.hooks.on_connected(self.client, self._side_sent)
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._sender(), name="uplink-sender"),
                tg.create_task(self._ticker(), name="uplink-ticker"),
                tg.create_task(self.settler.run(), name="uplink-settler"),
            ]
            await self._stop.wait()
            if self._closing and self.core.state is UplinkState.CONNECTED:
                tasks[0].cancel()
                await self._drain()
            for t in tasks:
                t.cancel()

    async def _drain(self) -> None:
        """Graceful close (the core already knows): in-flight PUBACKs, the offline
        status, DISCONNECT."""
        core = self.core
        deadline = time.monotonic() + CLOSE_GRACE_S
        while core.event_inflight and await self._wait(deadline):
            pass
        mid = await self._publish_status("offline", {"reason": "shutdown"})
        while mid is not None and core.in_flight(mid) and await self._wait(deadline):
            pass
        if core.state is UplinkState.CONNECTED and self.client is not None:
            self.client.disconnect()
            await self._wait(time.monotonic() + 1.0)

    async def _wait(self, deadline: float) -> bool:
        """Wait for news until ``deadline``; False once the deadline passed or the
        connection is gone."""
        left = deadline - time.monotonic()
        if left <= 0 or self.core.state is not UplinkState.CONNECTED:
            return False
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await self._wake.wait()
        return self.core.state is UplinkState.CONNECTED

    def _sample_usage(self) -> None:
        """What the socket spent since the last sample, into the usage meter."""
        if self._usage is not None and self.client is not None:
            self._usage.sample(self.client.socket(), time.time_ns() // 1_000_000)

    def _hard_close(self) -> None:
        """Drop the TCP connection without ceremony (the broker then sends our will)."""
        self._sample_usage()
        if self.driver is not None:
            self.driver.detach()
        self._close_socket()

    def _close_socket(self) -> None:
        sock = self.client.socket() if self.client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    async def _settle_late_lease(self) -> None:
        """A lease still running when the sender was cancelled: its batch goes back."""
        if self._lease is None:
            return
        lane, fut = self._lease
        self._lease = None
        try:
            batch = await fut
        except Exception as exc:  # noqa: BLE001  # the store's problem is logged, not raised
            log.warning("uplink: lease failed: %s", exc)
            return
        self._do(self.core.leased(lane, batch))

    # ---------------------------------------------------------------- actions

    def _do(self, acts: list[Action]) -> None:
        # the sender first: its next lease then reaches the store ahead of this round
        # of acks (both take the store's lock), keeping the window full as before
        self._wake.set()
        for act in acts:
            if isinstance(act, Ack):
                self.settler.ack(act.seqs)
            elif isinstance(act, Release):
                self.settler.release(act.seqs)
            elif isinstance(act, DeadLetter):
                self.settler.dead_letter(act.seqs)
            elif isinstance(act, Reconnect):
                self._reconnect = act
                self._stop.set()
                (log.error if act.refused else log.warning)(
                    "uplink: %s; next attempt in %.1f s", act.reason, act.after_s)

    # ---------------------------------------------------------------- tasks

    async def _sender(self) -> None:
        core, client, wake = self.core, self.client, self._wake
        assert client is not None  # noqa: S101  # started only once connected
        topic, ctype, aliases = self.setup.events_topic, self.setup.events_type, self._aliases
        while True:
            wake.clear()
            now = time.monotonic()
            act = core.poll(now)
            if act is None:
                await wake.wait()
            elif isinstance(act, Publish):
                name, props = aliases.publish_args(topic, ctype)
                info = client.publish(name, act.payload, qos=1, properties=props)
                if info.rc != _OK:
                    self._do(core.publish_failed(act, now, mqtt.error_string(info.rc)))
                    return
                after = core.sent(act, info.mid, now)
                if after:
                    self._do(after)
                    if core.state is not UplinkState.CONNECTED:
                        return
            elif isinstance(act, Lease):
                await self._lease_batch(act)
            else:  # Wait: the bandwidth cap
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(act.until - now):
                        await wake.wait()

    async def _lease_batch(self, act: Lease) -> None:
        # shielded: a lease completing after cancellation is released, not lost
        fut = asyncio.ensure_future(self.store.lease(act.lane, act.max_events, act.max_bytes))
        self._lease = (act.lane, fut)
        batch = await asyncio.shield(fut)
        self._lease = None
        for a in self.core.leased(act.lane, batch, time.monotonic()):
            if isinstance(a, WaitPending):
                await self.store.wait_pending(a.timeout_s)
            else:
                self._do([a])

    async def _ticker(self) -> None:
        """Keepalive pings, half-open watchdog, publish timeouts, periodic status."""
        core, driver = self.core, self.driver
        assert driver is not None  # noqa: S101  # started only once connected
        saved = time.monotonic()
        while True:
            await asyncio.sleep(core.tick_interval)
            driver.misc()
            self._sample_usage()
            if self._every_minute is not None and time.monotonic() - saved >= USAGE_SAVE_S:
                saved = time.monotonic()
                await self._every_minute()
            for act in core.tick(time.monotonic(), driver.last_inbound):
                if isinstance(act, SendStatus):
                    fields = await self.status.online_fields()
                    if self.status.gate.due(self.status.gate_view(fields), time.monotonic()):
                        await self._publish_status(act.state, fields)
                else:
                    self._do([act])

    async def _publish_status(self, state: str, fields: dict[str, Any]) -> int | None:
        """Publish the retained status; returns its packet id (None if not sent)."""
        if self.client is None or self.core.state is not UplinkState.CONNECTED:
            return None
        payload = self.status.payload(state, fields)
        name, props = self._aliases.publish_args(self.setup.status_topic,
                                                 self.setup.status_type)
        info = self.client.publish(name, payload, qos=1, retain=True, properties=props)
        if info.rc != _OK:
            return None
        now = time.monotonic()
        self.core.status_sent(info.mid, len(payload), now)
        if state == "online":
            self.status.gate.sent(self.status.gate_view(fields), now)
        return info.mid

    # ---------------------------------------------------------------- paho callbacks

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, rc: Any,
                    props: Any) -> None:
        if self._connack.done():
            return
        if is_failure(rc):
            self._connack.set_exception(BrokerRefusedError(
                f"broker {self.m.host}:{self.m.port} refused the connection of client id "
                f"{self.setup.cfg.client_id!r}: {reason_text(rc)}"))
            return
        maxp = getattr(props, "MaximumPacketSize", None) if props is not None else None
        recv = getattr(props, "ReceiveMaximum", None) if props is not None else None
        aliases = getattr(props, "TopicAliasMaximum", None) if props is not None else None
        if isinstance(aliases, int) and self.m.protocol == "5":
            self._aliases = TopicAliases(aliases)
        self.core.connack(
            time.monotonic(),
            max_packet_size=maxp if isinstance(maxp, int) else None,
            receive_maximum=recv if isinstance(recv, int) else None,
            keepalive_s=float(getattr(client, "keepalive", 0) or self.m.keepalive_s),
        )
        keep_tls_session(client)  # a TLS 1.3 ticket came before CONNACK
        self._connack.set_result(None)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, rc: Any,
                       _props: Any) -> None:
        where = f"{self.m.host}:{self.m.port}"
        if not self._connack.done():
            self._connack.set_exception(UplinkError(
                f"{where} closed the connection before CONNACK ({reason_text(rc)})"))
            return
        self._do(self.core.disconnected(time.monotonic(), _code(rc),
                                        f"disconnected from {where}: {reason_text(rc)}"))
        self._stop.set()

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, rc: Any,
                    _props: Any) -> None:
        # a burst of PUBACKs from one socket read: the acks pile up in the settler and
        # the sender's event is set once per burst (setting a set event costs nothing)
        self._do(self.core.puback(mid, _code(rc), time.monotonic()))


def _code(rc: Any) -> int:
    """The integer of a paho reason code (0 when paho gives none)."""
    try:
        return int(getattr(rc, "value", rc) or 0)
    except (TypeError, ValueError):
        return 0
