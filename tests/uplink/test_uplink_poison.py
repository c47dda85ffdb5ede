"""Issue #13 case 5: a poison event, and size refusals that are not connection failures.

Real Mosquitto 2.0 with ``message_size_limit``: it drops an MQTT 5 client's link on a
PUBLISH over the limit (paho reports a protocol error). A real SQLite buffer; a real
subscriber decoding what arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buffer.api import REFUSED
from buffer.store import SqliteStore
from config.events import Event
from sim.broker import Mosquitto
from tests.uplink.helpers import (
    Subscriber,
    append_many,
    counter,
    make_cfg,
    running,
    wait_until,
)

pytestmark = pytest.mark.broker

LIMIT = 3000
BEHIND = 2000
#: Mosquitto closes the socket right after its DISCONNECT / bad PUBACK while our next
#: messages are still unread on its side: the kernel then resets the connection, and on
#: a busy machine the reset can beat paho to the DISCONNECT, which then reads as an
#: ordinary link loss (one backoff step, and the next attempt sees the real reason).
#: So "the backoff did not climb" is: at most one failure in a row, never more.
RESET_RACE = 1


def poison_event(n_dtcs: int = 300) -> Event:
    """A DM1 with hundreds of active codes: one event of ~10 KB, over LIMIT even alone."""
    return Event("dtc", 1_760_000_000_000, {
        "src": 0,
        "lamps": {"mil": "on", "red_stop": "off", "amber_warning": "on", "protect": "off"},
        "active": [{"spn": 100 + i, "fmi": i % 32, "oc": 1} for i in range(n_dtcs)],
    })


def refused_notices(sub: Subscriber) -> list[dict[str, Any]]:
    with sub.lock:
        return [e for b in sub.batches for e in b["events"]
                if e["type"] == "seq_gap" and e.get("reason") == REFUSED]


def status_refused(sub: Subscriber) -> list[int]:
    with sub.lock:
        return [int(m["refused"]) for m in sub.status if m.get("state") == "online"
                and "refused" in m]


async def pending(store: SqliteStore) -> int:
    return (await store.stats()).pending


@pytest.mark.parametrize("limit_option", ["message_size_limit", "max_packet_size"])
async def test_poison_event_is_set_aside_and_the_backlog_drains(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
    open_store: Callable[[str], Any], limit_option: str,
) -> None:
    # message_size_limit: Mosquitto drops the link on the oversized PUBLISH;
    # max_packet_size: also sent as Maximum Packet Size in CONNACK: the payload cap
    # starts below it and the poison event is set aside without being sent at all
    broker = mosquitto_factory([f"{limit_option} {LIMIT}"])
    # production backoff numbers: a climbing backoff would take minutes here
    cfg = make_cfg(tmp_path, broker.host, broker.port, reconnect_min_s=1.0,
                   reconnect_max_s=120.0, status_interval_s=1.0)
    store: SqliteStore = await open_store("buffer.db")
    sub = Subscriber(broker.host, broker.port)
    try:
        poison = await store.append(poison_event())
        behind = await append_many(store, BEHIND, start=1)
        async with running(cfg, store) as up:
            assert await sub.wait_for(lambda s: set(behind) <= s.seen(), 60), (
                up.stats(), broker.log_tail())
            assert await sub.wait_for(lambda s: len(refused_notices(s)) >= 1, 15), up.stats()
            assert await wait_until(lambda: up.state.value == "connected", 10)
            stats = up.stats()
            # a size refusal is not a connection failure: the backoff never climbed
            assert stats.connect_failures == 0, stats
            assert up._core.failures_in_a_row <= RESET_RACE
            assert stats.dead_lettered == 1, stats
            if limit_option == "max_packet_size":  # known from CONNACK: nothing refused
                assert (stats.size_refusals, stats.reconnects) == (0, 0), stats
            else:
                assert stats.size_refusals >= 1, stats
                assert stats.reconnects <= 6, stats  # bounded: a few size refusals
            assert up.max_payload_bytes <= LIMIT
            assert await sub.wait_for(lambda s: 1 in status_refused(s), 15), sub.status[-3:]
        assert poison not in sub.seen()
        (notice,) = refused_notices(sub)
        assert (notice["first"], notice["last"]) == (poison, poison)
        st = await store.stats()
        assert (st.pending, st.refused) == (0, 1), st
        await store.close()

        # an agent restart: the poison is tried once more, refused again, set aside again
        store = await open_store("buffer.db")
        st = await store.stats()
        assert (st.pending, st.refused) == (1, 0), st
        async with running(cfg, store) as up:
            assert await sub.wait_for(lambda s: len(refused_notices(s)) >= 2, 30), up.stats()
            assert await wait_until(lambda: up.stats().dead_lettered == 1, 10)
            st = await store.stats()
            for _ in range(40):  # the second notice itself is delivered and deleted
                st = await store.stats()
                if st.pending == 0:
                    break
                await asyncio.sleep(0.25)
            assert (st.pending, st.refused) == (0, 1), st
            assert up.stats().connect_failures == 0
            dead = up.stats().dead_lettered
            await asyncio.sleep(2.0)  # only once per start: no further attempt
            assert up.stats().dead_lettered == dead
        assert poison not in sub.seen()
    finally:
        sub.close()
        await store.close()


async def test_refused_event_is_delivered_after_a_retry_once_the_broker_accepts_it(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore,
) -> None:
    broker = mosquitto_factory([f"message_size_limit {LIMIT}"])
    cfg = make_cfg(tmp_path, broker.host, broker.port)
    poison = await store.append(poison_event())
    behind = await append_many(store, 50, start=1)
    sub = Subscriber(broker.host, broker.port, persistent=True)
    try:
        async with running(cfg, store) as up:
            assert await sub.wait_for(lambda s: set(behind) <= s.seen(), 30), up.stats()
            assert await sub.wait_for(lambda s: len(refused_notices(s)) == 1, 15)
            assert (await store.stats()).refused == 1
            # the broker's limit is raised (a broker restart with a new config) and a
            # retry_refused command calls the store: the event goes, with its seq
            broker.extra_conf = []
            sub._subscribed.clear()
            broker.stop()
            broker.start()
            # the subscriber is back (the broker keeps no sessions) before the retry
            assert await wait_until(sub._subscribed.is_set, 15)
            assert await wait_until(lambda: up.state.value == "connected", 15)
            assert await store.retry_dead_letters() == 1
            assert await sub.wait_for(lambda s: poison in s.seen(), 30), (
                up.stats(), await store.stats())
            assert (await store.stats()).refused == 0
            assert counter(up, "dead_lettered") == 1
        # a consumer may thus receive a seq that was announced as refused: the event
        # itself wins (docs/wire-format.md)
        assert poison in sub.seen() and len(refused_notices(sub)) == 1
    finally:
        sub.close()


async def test_size_limit_without_poison_converges_in_a_few_refusals_without_backoff(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore,
) -> None:
    """The broker of issue #13: message_size_limit 3000, no poison event, a backlog."""
    broker = mosquitto_factory([f"message_size_limit {LIMIT}"])
    cfg = make_cfg(tmp_path, broker.host, broker.port, reconnect_min_s=1.0,
                   reconnect_max_s=120.0)
    seqs = await append_many(store, BEHIND)
    sub = Subscriber(broker.host, broker.port)
    try:
        async with running(cfg, store) as up:
            assert await sub.wait_for(lambda s: set(seqs) <= s.seen(), 60), (
                up.stats(), broker.log_tail())
            stats = up.stats()
            assert stats.connect_failures == 0, stats
            assert up._core.failures_in_a_row <= RESET_RACE
            assert 1 <= stats.size_refusals <= 4, stats  # halving took 6 or more
            assert stats.reconnects <= stats.size_refusals + RESET_RACE, stats
            assert stats.dead_lettered == 0
            assert up.max_payload_bytes <= LIMIT
        assert await pending(store) == 0
        assert not refused_notices(sub)
    finally:
        sub.close()
