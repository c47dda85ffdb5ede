"""Building a paho-mqtt client from the config, and driving its socket from asyncio.

Why paho directly (not aiomqtt): we need PUBACK-level control of an in-flight window
(one message id -> the seqs it carries), and aiomqtt is a thin layer over the same
paho client anyway. paho's network loop is driven from our asyncio loop through its
socket callbacks (``loop_read`` / ``loop_write`` / ``loop_misc``), so every paho
callback runs on the event loop thread: no loop thread, no locks, and we see every
inbound byte (the half-open watchdog needs that). Only the blocking part of a
connection attempt (DNS, TCP connect, TLS handshake) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config import MqttConfig, TlsConfig
from config.errors import UplinkError

log = logging.getLogger(__name__)

#: TCP connect + TLS handshake bound for one attempt (seconds).
CONNECT_TIMEOUT_S = 10.0


def read_password(cfg: MqttConfig) -> str | None:
    """The password from ``password_file`` (first line, without its line break)."""
    if cfg.password_file is None:
        return None
    try:
        text = cfg.password_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UplinkError(f"cannot read mqtt.password_file {cfg.password_file}: {exc}") from exc
    return text.splitlines()[0] if text else ""


class _TlsContext(ssl.SSLContext):
    """An SSLContext that remembers its last socket: paho leaks the socket of a failed
    TLS handshake, so :func:`connect_blocking` closes it.

    And TLS session resumption (issue #14): paho wraps its socket with
    ``ctx.wrap_socket(sock, server_hostname=..., do_handshake_on_connect=False)``; the
    session kept from the previous connection (:meth:`keep_session`, a TLS 1.3 ticket)
    is passed in, so a reconnect to the same broker skips the certificates both ways.
    A broker that cannot resume (restarted, ticket expired) does a full handshake."""

    last_socket: ssl.SSLSocket | None = None
    session: ssl.SSLSession | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.session is not None:
            kwargs.setdefault("session", self.session)
        sock = super().wrap_socket(*args, **kwargs)
        self.last_socket = sock
        return sock

    def keep_session(self) -> None:
        """Keep the last socket's session for the next connection, if it has a ticket."""
        sock = self.last_socket
        if sock is None:
            return
        try:
            sess = sock.session
        except (OSError, ValueError):
            return
        if sess is not None and sess.has_ticket:
            self.session = sess


#: One context per TLS configuration and certificate files' state: a session can only be
#: resumed with the context that made it; a changed file (renewed certificate) makes a new one.
_CONTEXTS: dict[tuple[Any, ...], _TlsContext] = {}


def _files_state(tls: TlsConfig) -> tuple[int, ...]:
    out = []
    for p in (tls.ca_file, tls.cert_file, tls.key_file):
        try:
            out.append(p.stat().st_mtime_ns if p is not None else 0)
        except OSError:
            out.append(-1)
    return tuple(out)


def shared_tls_context(tls: TlsConfig) -> _TlsContext:
    """:func:`tls_context`, made once per configuration and certificate files (so the
    TLS session of one connection can be resumed by the next)."""
    key = (tls, _files_state(tls))
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        new = tls_context(tls)
        assert isinstance(new, _TlsContext)  # noqa: S101  # tls_context makes one
        for old in [k for k in _CONTEXTS if k[0] == tls]:
            del _CONTEXTS[old]
        _CONTEXTS[key] = ctx = new
    return ctx


def keep_tls_session(client: mqtt.Client) -> None:
    """After CONNACK: keep this connection's TLS session for the next one."""
    data = client.user_data_get()
    ctx = data.get("tls") if isinstance(data, dict) else None
    if isinstance(ctx, _TlsContext):
        ctx.keep_session()


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client TLS context that always verifies the server (never a silent downgrade).

    ``ca_file`` absent means the system trust store. A client certificate and key turn
    on mutual TLS.
    """
    try:
        ctx = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.ca_file is not None:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert_file is not None:
            key = str(tls.key_file) if tls.key_file else None
            ctx.load_cert_chain(str(tls.cert_file), key)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"cannot load TLS material: {exc}") from exc
    # asserted so that a refactor cannot silently drop verification
    if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
        raise UplinkError("TLS context does not verify the server")
    return ctx


def make_client(
    cfg: MqttConfig, client_id: str, *, will_topic: str, will_payload: bytes, inflight: int
) -> mqtt.Client:
    """A fresh paho client (one per connection attempt: no state leaks between them)."""
    protocol = MQTTProtocolVersion.MQTTv5 if cfg.protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if cfg.protocol == "5" else True,
        reconnect_on_failure=False,
    )
    client.connect_timeout = CONNECT_TIMEOUT_S
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, read_password(cfg))
    if cfg.tls is not None:
        ctx = shared_tls_context(cfg.tls)
        client.tls_set_context(ctx)
        client.user_data_set({"tls": ctx})
    props = None
    if cfg.protocol == "5":
        props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]  # paho leaves Properties.__init__ unannotated
        props.ContentType = "application/json"
    client.will_set(will_topic, will_payload, qos=1, retain=True, properties=props)
    return client


def connect_blocking(client: mqtt.Client, cfg: MqttConfig) -> MQTTErrorCode:
    """DNS + TCP + TLS + send CONNECT (blocking; run in a worker thread).

    Returns paho's result of sending CONNECT; raises OSError/SSLError when the TCP or
    TLS connection cannot be made.
    """
    try:
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # as above
            props.SessionExpiryInterval = 0
            return client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True,
                                  properties=props)
        return client.connect(cfg.host, cfg.port, cfg.keepalive_s)
    except BaseException:
        data = client.user_data_get()
        ctx = data.get("tls") if isinstance(data, dict) else None
        if isinstance(ctx, _TlsContext) and ctx.last_socket is not None:
            ctx.last_socket.close()
        raise


class SocketDriver:
    """Drives a connected paho client's socket from the asyncio loop.

    Call :meth:`attach` on the loop thread after the blocking connect returned. Every
    inbound read updates :attr:`last_inbound` (monotonic), which the half-open watchdog
    compares against the keepalive.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client) -> None:
        self.loop = loop
        self.client = client
        self.sock: socket.socket | None = None
        self.last_inbound = time.monotonic()
        self._writing = False

    def attach(self) -> None:
        """Register the socket with the loop and flush anything paho queued meanwhile."""
        sock = self.client.socket()
        if not isinstance(sock, socket.socket):
            raise UplinkError("paho returned no socket after connect")
        self.sock = sock
        self.client.on_socket_close = self._on_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self.loop.add_reader(sock, self._readable)
        if self.client.want_write():
            self.client.loop_write()  # registers the writer if it cannot finish now

    def _readable(self) -> None:
        self.last_inbound = time.monotonic()
        self.client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    def _on_register_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if not self._writing:
            self._writing = True
            self.loop.add_writer(sock, self._writable)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if self._writing:
            self._writing = False
            self.loop.remove_writer(sock)

    def _on_close(self, _client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        self.detach()

    def detach(self) -> None:
        """Unregister the socket (idempotent)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self.loop.remove_reader(sock)
        if self._writing:
            self._writing = False
            self.loop.remove_writer(sock)

    def misc(self) -> int:
        """Run paho's periodic work (keepalive pings); returns paho's result code."""
        return int(self.client.loop_misc())


def publish_props(content_type: str | None) -> Properties | None:
    """MQTT 5 PUBLISH properties carrying the content type (None for 3.1.1)."""
    if content_type is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # as above
    props.ContentType = content_type
    return props


class TopicAliases:
    """The MQTT 5 topic aliases of one connection (MQTT 5 §3.3.2.3.4).

    The first PUBLISH of a topic on a connection carries the topic and an alias; every
    later one an empty topic and the alias only, which saves the topic's bytes on each
    message (``fleet/TRK-0001/events``: 22 of them, some 4 % of a driving truck's
    bytes). Up to the broker's Topic Alias Maximum from CONNACK (none: no aliases, as
    under MQTT 3.1.1). Aliases live as long as the connection, and so does this object
    and the paho client it serves (:func:`make_client`: one client per connection, never
    reconnected), so a message is never resent on a new connection with an alias that
    connection does not know (the paho bug eclipse-paho/paho.mqtt.python#893 needs a
    client reconnected with messages in flight; ours re-publishes them through here).
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = max(0, maximum)
        self._alias: dict[str, int] = {}
        self._next: dict[str, tuple[str, Properties | None]] = {}

    def publish_args(self, topic: str, content_type: str | None,
                     ) -> tuple[str, Properties | None]:
        """The topic and properties to publish ``topic`` with on this connection."""
        later = self._next.get(topic)
        if later is not None:
            return later
        if len(self._alias) >= self.maximum:
            self._next[topic] = (topic, publish_props(content_type))
            return self._next[topic]
        alias = len(self._alias) + 1
        self._alias[topic] = alias
        self._next[topic] = ("", _alias_props(content_type, alias))
        return topic, _alias_props(content_type, alias)


def _alias_props(content_type: str | None, alias: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # as above
    if content_type is not None:
        props.ContentType = content_type
    props.TopicAlias = alias
    return props


def reason_text(rc: Any) -> str:
    """A reason code as 'Name (0xNN)' for logs."""
    value = getattr(rc, "value", rc)
    name = getattr(rc, "getName", lambda: str(rc))()
    try:
        return f"{name} (0x{int(value):02X})"
    except (TypeError, ValueError):
        return str(name)


def is_failure(rc: Any) -> bool:
    """True for an MQTT reason code that means refusal (>= 0x80)."""
    failure: Callable[[], bool] | None = getattr(rc, "is_failure", None)
    if failure is not None:
        return bool(failure) if not callable(failure) else bool(failure())
    return int(rc) >= 0x80
