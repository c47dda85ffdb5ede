"""The uplink under broker outages, refusals, half-open links and size limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from gateway.uplink import UplinkState
from sim.broker import Mosquitto
from sim.proxy import TcpProxy
from tests.uplink.helpers import (
    Subscriber,
    append_many,
    as_root,
    counter,
    make_cfg,
    running,
    wait_until,
)

pytestmark = pytest.mark.broker


async def pending(store: SqliteStore) -> int:
    return (await store.stats()).pending


@pytest.mark.slow
async def test_broker_outage_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore
) -> None:
    # broker persistence + a persistent subscriber session: what the truck publishes
    # while the test's subscriber is reconnecting is queued for it, not lost to the test
    mosquitto = mosquitto_factory(
        [*as_root(), "persistence true", f"persistence_location {tmp_path}/"])
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, max_payload_bytes=4096,
                   reconnect_max_s=1.0)
    sub = Subscriber(mosquitto.host, mosquitto.port, persistent=True)
    seqs: list[int] = []
    try:
        async with running(cfg, store) as up:
            for i in range(20):  # a steady trickle before, during and after the outage
                seqs += await append_many(store, 200, start=i * 200)
                if i == 5:
                    first = set(seqs)

                    def got_first(s: Subscriber, f: set[int] = first) -> bool:
                        return f <= s.seen()

                    assert await sub.wait_for(got_first, 10)
                    mosquitto.stop()
                if 5 <= i < 15:
                    await asyncio.sleep(1.0)  # 10 s outage
                if i == 15:
                    assert await pending(store) >= 1800  # collected while down
                    mosquitto.start()
            assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 30), (
                sorted(set(seqs) - sub.seen())[:5], len(set(seqs) - sub.seen()), up.stats(),
                mosquitto.log_tail(40))
            assert counter(up, "reconnects") >= 1
            assert await wait_until(lambda: up.state is UplinkState.CONNECTED, 5)
        assert await pending(store) == 0
    finally:
        sub.close()


async def test_broker_down_at_start(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore
) -> None:
    broker = mosquitto_factory(start=False)
    cfg = make_cfg(tmp_path, broker.host, broker.port)
    async with running(cfg, store) as up:
        seqs = await append_many(store, 500)
        assert await wait_until(lambda: counter(up, "connect_failures") >= 2, 10)
        assert up.state in (UplinkState.BACKOFF, UplinkState.CONNECTING)
        seqs += await append_many(store, 500, start=500)
        assert await pending(store) == 1000
        broker.start()
        sub = Subscriber(broker.host, broker.port)
        try:
            assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 20), up.stats()
        finally:
            sub.close()


@pytest.mark.slow
async def test_half_open_link_is_detected_and_nothing_lost(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore
) -> None:
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        cfg = make_cfg(tmp_path, proxy.host, proxy.port, keepalive_s=5,
                       publish_timeout_s=60.0)
        sub = Subscriber(mosquitto.host, mosquitto.port)
        try:
            async with running(cfg, store) as up:
                seqs = await append_many(store, 300)
                assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 10)
                proxy.blackhole()
                seqs += await append_many(store, 300, start=300)
                # the keepalive watchdog, not the publish timeout (60 s), ends the session
                assert await wait_until(lambda: counter(up, "half_open_detected") >= 1, 15)
                assert counter(up, "publish_timeouts") == 0
                assert up.state is not UplinkState.CONNECTED
                proxy.forward()
                assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 30), up.stats()
            assert await pending(store) == 0
        finally:
            sub.close()


async def test_publish_timeout_is_never_delivery(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore
) -> None:
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        cfg = make_cfg(tmp_path, proxy.host, proxy.port, keepalive_s=60, publish_timeout_s=1.0)
        sub = Subscriber(mosquitto.host, mosquitto.port)
        try:
            async with running(cfg, store) as up:
                assert await wait_until(lambda: up.state is UplinkState.CONNECTED, 10)
                proxy.blackhole()
                seqs = await append_many(store, 100)
                assert await wait_until(lambda: counter(up, "publish_timeouts") >= 1, 10)
                assert counter(up, "acked_events") == 0
                assert await pending(store) == 100  # timed out, so still buffered
                proxy.forward()
                assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 30), up.stats()
        finally:
            sub.close()


async def test_cut_connection_reconnects_through_proxy(
    tmp_path: Path, mosquitto: Mosquitto, store: SqliteStore
) -> None:
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        cfg = make_cfg(tmp_path, proxy.host, proxy.port)
        sub = Subscriber(mosquitto.host, mosquitto.port)
        try:
            async with running(cfg, store) as up:
                seqs = await append_many(store, 200)
                assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 10)
                proxy.cut()
                seqs += await append_many(store, 200, start=200)
                assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 15), up.stats()
                assert counter(up, "reconnects") >= 1
        finally:
            sub.close()


@pytest.mark.parametrize("protocol", ["5"])
async def test_oversized_batch_is_split_under_message_size_limit(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore,
    protocol: str,
) -> None:
    broker = mosquitto_factory(["message_size_limit 4096"])
    cfg = make_cfg(tmp_path, broker.host, broker.port, max_payload_bytes=65536,
                   protocol=protocol)
    seqs = await append_many(store, 2000)
    sub = Subscriber(broker.host, broker.port)
    try:
        async with running(cfg, store) as up:
            assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 30), up.stats()
            assert up.max_payload_bytes <= 4096
            assert all(len(p) <= 4096 for _, p, _ in sub.raw)
        assert await pending(store) == 0
    finally:
        sub.close()


async def test_bad_password_is_refused_backed_off_and_data_kept(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore
) -> None:
    pwfile = tmp_path / "passwd"
    pwfile.write_text("truck-001:placeholder\n")
    proc = await asyncio.create_subprocess_exec("/usr/bin/mosquitto_passwd", "-U", str(pwfile))
    assert await proc.wait() == 0
    broker = mosquitto_factory([*as_root(), f"password_file {pwfile}"], allow_anonymous=False)
    secret = tmp_path / "secret"
    secret.write_text("wrong\n")
    cfg = make_cfg(tmp_path, broker.host, broker.port, username="truck-001",
                   password_file=secret, reconnect_min_s=0.2, reconnect_max_s=0.4)
    seqs = await append_many(store, 50)
    async with running(cfg, store) as up:
        assert await wait_until(lambda: counter(up, "refusals") >= 2, 10)
        assert up.state in (UplinkState.REFUSED, UplinkState.CONNECTING)
        assert counter(up, "acked_events") == 0
        assert await pending(store) == len(seqs)
        # backoff floor 0.2 s: never a tight loop. One refusal per attempt, and at most
        # one attempt per 0.2 s (a loaded machine only spaces them further apart)
        before = up.stats().refusals
        await asyncio.sleep(1.0)
        after = up.stats().refusals
        assert isinstance(before, int) and isinstance(after, int)
        assert after - before <= int(1.0 / 0.2) + 1
    # the right password then delivers everything
    secret.write_text("placeholder\n")
    async with running(cfg, store) as up:
        assert await wait_until(lambda: up.state is UplinkState.CONNECTED, 10)
        assert await wait_until(lambda: counter(up, "acked_events") == len(seqs), 10)
