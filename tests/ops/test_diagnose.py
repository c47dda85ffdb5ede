"""gateway/diagnose.py against real listeners on loopback: Mosquitto plain and TLS, a bare
TLS server (Python's ssl), a server that speaks neither, and a closed port."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from gateway.cli import main
from gateway.diagnose import Diagnosis, PortKind, diagnose, explain, probe_port
from sim.broker import Mosquitto, free_port

TIMEOUT_S = 3.0


class Pki:
    """A CA and a server certificate for 127.0.0.1, on disk."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = d / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = d / "server.pem"
        self.key = d / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


class _Server:
    """A loopback server that serves each connection with ``handle`` (bounded: at most
    ``max_conns`` connections, each with a timeout), in one thread."""

    def __init__(self, handle: Callable[[socket.socket], None], max_conns: int = 4) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT_S * 3)
        self.port = int(self.sock.getsockname()[1])
        self._handle = handle
        self._max = max_conns
        self._thread = threading.Thread(target=self._serve, name="diag-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for _ in range(self._max):
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT_S)
                with contextlib.suppress(OSError):
                    self._handle(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self.sock.close()
        self._thread.join(TIMEOUT_S * 4)


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[_Server]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.cert), str(pki.key))

    def handle(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except ssl.SSLError:
            pass

    srv = _Server(handle)
    yield srv
    srv.close()


@pytest.fixture
def banner_server() -> Iterator[_Server]:
    """Speaks neither TLS nor MQTT: an SSH-like banner, then closes."""
    def handle(conn: socket.socket) -> None:
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.recv(64)

    srv = _Server(handle)
    yield srv
    srv.close()


def test_bare_tls_server_is_tls(tls_server: _Server) -> None:
    assert probe_port("127.0.0.1", tls_server.port, TIMEOUT_S) is PortKind.TLS
    d = diagnose("127.0.0.1", tls_server.port, tls_configured=False, timeout_s=TIMEOUT_S)
    assert d.mismatch
    assert f"port {tls_server.port} speaks TLS but [mqtt.tls] is not configured" in d.message


@pytest.mark.broker
def test_plain_mosquitto(mosquitto: Mosquitto) -> None:
    assert probe_port(mosquitto.host, mosquitto.port, TIMEOUT_S) is PortKind.MQTT_PLAIN
    d = diagnose(mosquitto.host, mosquitto.port, tls_configured=True, timeout_s=TIMEOUT_S)
    assert d.mismatch and "speaks plain MQTT, not TLS" in d.message
    d = diagnose(mosquitto.host, mosquitto.port, tls_configured=False, timeout_s=TIMEOUT_S)
    assert not d.mismatch


def _as_root() -> list[str]:
    return ["user root"] if os.geteuid() == 0 else []


@pytest.mark.broker
@pytest.mark.parametrize("require_cert", [False, True])
def test_mosquitto_tls_listener(
    pki: Pki, mosquitto_factory: Callable[..., Mosquitto], require_cert: bool
) -> None:
    broker = mosquitto_factory([*_as_root(), f"cafile {pki.ca_file}", f"certfile {pki.cert}",
                                f"keyfile {pki.key}",
                                f"require_certificate {'true' if require_cert else 'false'}"])
    assert probe_port(broker.host, broker.port, TIMEOUT_S) is PortKind.TLS
    d = diagnose(broker.host, broker.port, tls_configured=False,
                 error="[Errno 104] Connection reset by peer", timeout_s=TIMEOUT_S)
    assert d.mismatch and "speaks TLS but [mqtt.tls] is not configured" in d.message
    assert "connect failed: [Errno 104]" in d.message


def test_neither_tls_nor_mqtt(banner_server: _Server) -> None:
    assert probe_port("127.0.0.1", banner_server.port, TIMEOUT_S) is PortKind.OTHER


def test_closed_port() -> None:
    port = free_port()
    assert probe_port("127.0.0.1", port, TIMEOUT_S) is PortKind.CLOSED
    assert not diagnose("127.0.0.1", port, tls_configured=True, timeout_s=TIMEOUT_S).mismatch


@pytest.mark.parametrize("kind", list(PortKind))
@pytest.mark.parametrize("tls", [True, False])
def test_explain_covers_every_kind(kind: PortKind, tls: bool) -> None:
    d = explain(kind, "h", 8883, tls_configured=tls)
    assert isinstance(d, Diagnosis) and d.kind is kind and d.message.startswith("h:8883: ")
    assert d.mismatch == ((kind is PortKind.TLS and not tls)
                          or (kind is PortKind.MQTT_PLAIN and tls) or kind is PortKind.OTHER)
    assert repr(kind) == f"PortKind.{kind.name}"


def _config(tmp_path: Path, port: int, *, tls: bool, ca: Path | None = None) -> Path:
    text = (f'truck_id = "TRK-1"\n[gps]\nport = "/dev/null"\n[mqtt]\nhost = "127.0.0.1"\n'
            f"port = {port}\n")
    if tls:
        text += "[mqtt.tls]\n" + (f'ca_file = "{ca}"\n' if ca else "")
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


def test_cli_check_config_probe_and_diagnose(
    tmp_path: Path, tls_server: _Server, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_cfg = _config(tmp_path, tls_server.port, tls=False)
    assert main(["check-config", "--probe", "--timeout", "3", str(plain_cfg)]) == 78
    err = capsys.readouterr().err
    assert "speaks TLS but [mqtt.tls] is not configured" in err
    assert main(["diagnose", "-c", str(plain_cfg), "--timeout", "3"]) == 1
    assert "speaks TLS but [mqtt.tls] is not configured" in capsys.readouterr().out
    tls_cfg = _config(tmp_path, tls_server.port, tls=True, ca=pki.ca_file)
    assert main(["check-config", "--probe", "--timeout", "3", str(tls_cfg)]) == 0
    assert "speaks TLS as configured" in capsys.readouterr().out
    # an unreachable broker is reported, never a failure: trucks are often offline
    closed = _config(tmp_path, free_port(), tls=True, ca=pki.ca_file)
    assert main(["check-config", "--probe", "--timeout", "3", str(closed)]) == 0
    assert "connection refused" in capsys.readouterr().out


@pytest.mark.broker
async def test_the_uplink_explains_a_plain_connection_to_a_tls_port(
    pki: Pki, mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent's own connect failure is probed once and explained, not blamed on a
    client certificate."""
    from buffer.store import SqliteStore  # noqa: PLC0415
    from tests.uplink.helpers import make_cfg, running, wait_until  # noqa: PLC0415

    broker = mosquitto_factory([*_as_root(), f"cafile {pki.ca_file}", f"certfile {pki.cert}",
                                f"keyfile {pki.key}", "require_certificate false"])
    cfg = make_cfg(tmp_path, broker.host, broker.port)  # no [mqtt.tls]
    caplog.set_level("WARNING", logger="gateway.uplink_link")
    explained = f"port {broker.port} speaks TLS but [mqtt.tls] is not configured"
    async with await SqliteStore.open(cfg.buffer) as store, running(cfg, store):
        assert await wait_until(lambda: explained in caplog.text, timeout=20), caplog.text
    assert "client certificate" not in caplog.text
    assert caplog.text.count(explained) == 1  # once per failure streak, not per retry
