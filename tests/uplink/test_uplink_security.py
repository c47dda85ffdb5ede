"""TLS (server verification, mutual TLS) and ACL refusals against a real Mosquitto."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from buffer.store import SqliteStore
from config import TlsConfig
from gateway.uplink import UplinkState
from gateway.uplink_conn import shared_tls_context
from sim.broker import Mosquitto
from tests.uplink.helpers import (
    Subscriber,
    append_many,
    as_root,
    counter,
    make_cfg,
    running,
    wait_until,
    with_mqtt,
)

pytestmark = pytest.mark.broker


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, on disk."""

    def __init__(self, d: Path, name: str = "ca") -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = d / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = d / f"{name}-server.pem"
        self.server_key = d / f"{name}-server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = self.ca.issue_cert("truck-001")
        self.client_cert = d / f"{name}-client.pem"
        self.client_key = d / f"{name}-client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def broker_conf(self, *, require_client_cert: bool) -> list[str]:
        return [
            *as_root(),
            f"cafile {self.ca_file}",
            f"certfile {self.server_cert}",
            f"keyfile {self.server_key}",
            f"require_certificate {'true' if require_client_cert else 'false'}",
        ]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


async def test_mutual_tls_delivers(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore
) -> None:
    broker = mosquitto_factory(pki.broker_conf(require_client_cert=True))
    tls = TlsConfig(ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key)
    cfg = make_cfg(tmp_path, broker.host, broker.port, tls=tls)
    seqs = await append_many(store, 300)
    sub = Subscriber(broker.host, broker.port, ca_certs=str(pki.ca_file),
                     certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    try:
        async with running(cfg, store) as up:
            assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 15), up.stats()
    finally:
        sub.close()


async def test_client_without_certificate_is_refused_and_keeps_data(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore
) -> None:
    broker = mosquitto_factory(pki.broker_conf(require_client_cert=True))
    cfg = make_cfg(tmp_path, broker.host, broker.port, tls=TlsConfig(ca_file=pki.ca_file))
    await append_many(store, 50)
    async with running(cfg, store) as up:
        assert await wait_until(lambda: counter(up, "connect_failures") >= 2, 15)
        assert counter(up, "connects") == 0
        assert counter(up, "acked_events") == 0
    assert (await store.stats()).pending == 50


async def test_server_certificate_from_another_ca_is_refused(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore
) -> None:
    broker = mosquitto_factory(pki.broker_conf(require_client_cert=False))
    other = Pki(tmp_path / "other", "other")  # the truck trusts only this CA
    cfg = make_cfg(tmp_path, broker.host, broker.port, tls=TlsConfig(ca_file=other.ca_file))
    await append_many(store, 50)
    async with running(cfg, store) as up:
        assert await wait_until(lambda: counter(up, "refusals") >= 1, 15)
        assert up.state in (UplinkState.REFUSED, UplinkState.CONNECTING)
        assert counter(up, "connects") == 0
        assert "CERTIFICATE_VERIFY_FAILED" in str(up.stats().last_error)
    assert (await store.stats()).pending == 50
    # and the same truck trusting the right CA gets through: the refusal was the CA
    cfg_ok = with_mqtt(cfg, tls=TlsConfig(ca_file=pki.ca_file))
    async with running(cfg_ok, store) as up:
        assert await wait_until(lambda: counter(up, "acked_events") == 50, 15), up.stats()


@pytest.mark.parametrize("protocol", ["5"])
async def test_acl_refuses_another_trucks_topic_and_keeps_data(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore,
    protocol: str,
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read fleet/#\npattern write fleet/%c/#\n")
    broker = mosquitto_factory([*as_root(), f"acl_file {acl}"])
    sub = Subscriber(broker.host, broker.port)
    # truck-001's data, but configured with truck-002's client id
    cfg = make_cfg(tmp_path, broker.host, broker.port, client_id="truck-002",
                   protocol=protocol)
    seqs = await append_many(store, 100)
    try:
        async with running(cfg, store) as up:
            assert await wait_until(lambda: counter(up, "refusals") >= 2, 15), up.stats()
            assert counter(up, "acked_events") == 0
            assert "Not authorized" in str(up.stats().last_error)
        assert (await store.stats()).pending == 100
        assert not sub.seen()
        # with its own client id the same truck delivers everything it kept
        async with running(with_mqtt(cfg, client_id=None), store) as up:
            assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 15), up.stats()
    finally:
        sub.close()


async def test_a_reconnect_resumes_the_tls_session(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore
) -> None:
    """Issue #14: the second connection to the same broker resumes the first one's TLS
    session (no certificates either way): fewer bytes on the SIM per reconnect."""
    broker = mosquitto_factory(pki.broker_conf(require_client_cert=True))
    tls = TlsConfig(ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key)
    cfg = make_cfg(tmp_path, broker.host, broker.port, tls=tls)
    ctx = shared_tls_context(tls)
    async with running(cfg, store) as up:
        assert await wait_until(lambda: counter(up, "connects") == 1, 15), up.stats()
        first = ctx.last_socket
        assert first is not None
        assert not first.session_reused
        first.shutdown(socket.SHUT_RDWR)  # the link drops (as under a cellular NAT)
        assert await wait_until(lambda: counter(up, "connects") == 2
                                and up.state is UplinkState.CONNECTED, 15), up.stats()
        second = ctx.last_socket
        assert second is not None
        assert second is not first
        assert second.session_reused
        seqs = await append_many(store, 20)
        assert await wait_until(lambda: counter(up, "acked_events") >= len(seqs), 15)
