"""What is listening on the broker's port: a diagnosis for a failed MQTT connect.

A plain connection to a TLS listener (or TLS to a plain one) fails with an error that
blames something else: a reset, an EOF, "wrong version number", or a complaint about a
client certificate. :func:`probe_port` asks the port two short questions, each on its
own connection with a bounded timeout:

1. a TLS handshake (no certificate check: we only want to know whether TLS answers);
2. if that fails, an MQTT 3.1.1 CONNECT in clear: a CONNACK means a plain MQTT listener.

:func:`explain` is pure: it turns the probe's :class:`PortKind` and the configuration
(TLS on or off) into one sentence. :func:`diagnose` does both. ``truckgw check-config
--probe`` and ``truckgw diagnose`` print it; the uplink is meant to call :func:`diagnose`
after a failed connect and log the sentence (it runs in a thread: the probe blocks for
at most ``2 x timeout_s``).
"""

from __future__ import annotations

import enum
import socket
import ssl
from dataclasses import dataclass

from config.schema import MQTT_PLAIN_PORT, MQTT_TLS_PORT

#: Seconds per probe step (connect + handshake, or connect + CONNACK).
DEFAULT_TIMEOUT_S = 3.0
#: An MQTT 3.1.1 CONNECT: clean session, keepalive 10 s, client id "truckgw-probe".
_CLIENT_ID = b"truckgw-probe"
_VARIABLE = b"\x00\x04MQTT\x04\x02\x00\x0a"
_PAYLOAD = len(_CLIENT_ID).to_bytes(2, "big") + _CLIENT_ID
MQTT_CONNECT = bytes([0x10, len(_VARIABLE) + len(_PAYLOAD)]) + _VARIABLE + _PAYLOAD
MQTT_DISCONNECT = b"\xe0\x00"
_CONNACK = 0x20


class PortKind(enum.Enum):
    """What answered on the port."""

    TLS = "tls"  # a TLS handshake completed or a TLS alert came back
    MQTT_PLAIN = "mqtt-plain"  # an MQTT CONNACK came back over plain TCP
    OTHER = "other"  # the port accepts connections but speaks neither
    CLOSED = "closed"  # connection refused: nothing listens
    UNREACHABLE = "unreachable"  # no route, name unknown or timeout

    def __repr__(self) -> str:
        return f"PortKind.{self.name}"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The probe's finding and what it means for this configuration."""

    kind: PortKind
    #: True when the port contradicts the configuration (TLS vs plain)
    mismatch: bool
    message: str


def _connect(host: str, port: int, timeout_s: float) -> socket.socket | PortKind:
    """A TCP connection to the port, or why there is none (``CLOSED``, ``UNREACHABLE``)."""
    try:
        return socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return PortKind.CLOSED
    except OSError:
        return PortKind.UNREACHABLE


def _tls_probe(host: str, port: int, timeout_s: float) -> PortKind | None:
    """``TLS`` if TLS answers, ``None`` if the port is open but not TLS, else the failure."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a probe: whether TLS answers, not whom to trust
    sock = _connect(host, port, timeout_s)
    if isinstance(sock, PortKind):
        return sock
    try:
        with ctx.wrap_socket(sock, server_hostname=host):
            return PortKind.TLS
    except ssl.SSLError as exc:
        # an alert (e.g. "certificate required", "handshake failure") is TLS speaking;
        # "wrong version number", "record layer failure", EOF are a peer that is not
        reason = str(getattr(exc, "reason", "") or "").upper()
        if "ALERT" in reason:
            return PortKind.TLS
        return None
    except OSError:  # reset, EOF, timeout: the peer gave up on our ClientHello
        return None
    finally:
        sock.close()


def _mqtt_probe(host: str, port: int, timeout_s: float) -> PortKind:
    sock = _connect(host, port, timeout_s)
    if isinstance(sock, PortKind):
        return sock
    try:
        sock.sendall(MQTT_CONNECT)
        reply = sock.recv(4)
        if len(reply) >= 2 and reply[0] == _CONNACK and reply[1] == 2:
            sock.sendall(MQTT_DISCONNECT)
            return PortKind.MQTT_PLAIN
    except OSError:
        pass  # reset or timeout: not an MQTT broker either
    finally:
        sock.close()
    return PortKind.OTHER


def probe_port(host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> PortKind:
    """Ask ``host:port`` whether it speaks TLS or plain MQTT (two bounded connections)."""
    kind = _tls_probe(host, port, timeout_s)
    if kind is not None:
        return kind
    return _mqtt_probe(host, port, timeout_s)


def explain(kind: PortKind, host: str, port: int, *, tls_configured: bool,
            error: str | None = None) -> Diagnosis:
    """One sentence for what the probe found, given whether ``[mqtt.tls]`` is on."""
    where = f"{host}:{port}"
    after = f" (connect failed: {error})" if error else ""
    if kind is PortKind.TLS and not tls_configured:
        hint = (f"port {port} speaks TLS but [mqtt.tls] is not configured: add [mqtt.tls] "
                "(ca_file for a private CA)")
        if port != MQTT_TLS_PORT:
            hint += f" or use the broker's plain port (usually {MQTT_PLAIN_PORT})"
        return Diagnosis(kind, True, f"{where}: {hint}{after}")
    if kind is PortKind.MQTT_PLAIN and tls_configured:
        return Diagnosis(kind, True,
                         f"{where}: port {port} speaks plain MQTT, not TLS, but [mqtt.tls] "
                         f"is configured: use the broker's TLS port (usually {MQTT_TLS_PORT})"
                         f"{after}")
    if kind is PortKind.TLS:
        return Diagnosis(kind, False,
                         f"{where}: port {port} speaks TLS as configured; if the connect "
                         f"fails, check ca_file, the client certificate and the clock{after}")
    if kind is PortKind.MQTT_PLAIN:
        return Diagnosis(kind, False,
                         f"{where}: port {port} speaks plain MQTT as configured{after}")
    if kind is PortKind.OTHER:
        return Diagnosis(kind, True,
                         f"{where}: port {port} accepts connections but speaks neither TLS "
                         f"nor MQTT: is this the broker's port?{after}")
    if kind is PortKind.CLOSED:
        return Diagnosis(kind, False,
                         f"{where}: connection refused: no broker listens on port {port}"
                         f"{after}")
    return Diagnosis(kind, False,
                     f"{where}: unreachable (no network, unknown host or a firewall); "
                     f"events wait in the buffer{after}")


def diagnose(host: str, port: int, *, tls_configured: bool, error: str | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> Diagnosis:
    """Probe ``host:port`` and explain a connect failure (``error``) for this config."""
    return explain(probe_port(host, port, timeout_s), host, port,
                   tls_configured=tls_configured, error=error)
