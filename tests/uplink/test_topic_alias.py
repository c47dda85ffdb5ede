"""MQTT 5 topic aliases: the topic once per connection, then the alias, up to the broker's
Topic Alias Maximum; a new connection never assumes an alias of the old one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from gateway.uplink_conn import TopicAliases
from sim.broker import Mosquitto
from sim.proxy import TcpProxy
from tests.uplink.helpers import (
    Subscriber,
    append_many,
    counter,
    make_cfg,
    running,
    wait_until,
)

EVENTS = "fleet/truck-001/events"
STATUS = "fleet/truck-001/status"


def has_all(seqs: list[int]) -> Callable[[Subscriber], bool]:
    want = set(seqs)
    return lambda s: want <= s.seen()


def test_first_use_carries_the_topic_later_ones_the_alias() -> None:
    a = TopicAliases(1)
    topic, props = a.publish_args(EVENTS, "application/json")
    assert topic == EVENTS
    assert props is not None
    assert getattr(props, "TopicAlias", None) == 1
    assert getattr(props, "ContentType", None) == "application/json"
    for _ in range(3):
        topic, props = a.publish_args(EVENTS, "application/json")
        assert topic == ""
        assert props is not None
        assert getattr(props, "TopicAlias", None) == 1
        assert getattr(props, "ContentType", None) == "application/json"
    # the broker allows one alias: a second topic goes in full, every time
    for _ in range(2):
        topic, props = a.publish_args(STATUS, None)
        assert topic == STATUS
        assert props is None


def test_no_alias_without_a_broker_maximum() -> None:
    a = TopicAliases(0)
    for _ in range(3):
        topic, props = a.publish_args(EVENTS, "application/json+zstd-dict")
        assert topic == EVENTS
        assert props is not None
        assert not hasattr(props, "TopicAlias")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``buf[i]``: (value, index after it)."""
    n, mult = 0, 1
    while True:
        b = buf[i]
        n += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            return n, i


def publishes(stream: bytes) -> list[tuple[str, int | None]]:
    """(topic, topic alias) of every MQTT 5 PUBLISH in what a client sent, in order."""
    out: list[tuple[str, int | None]] = []
    i = 0
    while i < len(stream):
        head = stream[i]
        n, j = _varint(stream, i + 1)
        body, i = stream[j:j + n], j + n
        if head >> 4 != 3:  # not a PUBLISH
            continue
        tlen = int.from_bytes(body[0:2], "big")
        topic = body[2:2 + tlen].decode()
        k = 2 + tlen + (2 if (head >> 1) & 3 else 0)  # the packet id of QoS > 0
        plen, k = _varint(body, k)
        props, alias, p = body[k:k + plen], None, 0
        while p < len(props):  # the properties the agent sends
            if props[p] == 0x03:  # content type: a UTF-8 string
                p += 3 + int.from_bytes(props[p + 1:p + 3], "big")
            elif props[p] == 0x23:  # topic alias: two bytes
                alias = int.from_bytes(props[p + 1:p + 3], "big")
                p += 3
            else:
                raise AssertionError(f"unexpected PUBLISH property 0x{props[p]:02x}")
        out.append((topic, alias))
    return out


@pytest.mark.broker
@pytest.mark.parametrize("max_alias", [10, 0])
async def test_aliases_on_the_wire_and_across_a_reconnect(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], store: SqliteStore,
    max_alias: int,
) -> None:
    broker = mosquitto_factory([f"max_topic_alias {max_alias}"])
    sub = Subscriber(broker.host, broker.port)
    with TcpProxy(broker.host, broker.port, record=True) as proxy:
        cfg = make_cfg(tmp_path, proxy.host, proxy.port, max_latency_s=0.0)
        try:
            async with running(cfg, store) as up:
                seqs: list[int] = []
                for i in range(4):  # four messages at least: one append round each
                    seqs += await append_many(store, 5, start=i * 5)
                    assert await sub.wait_for(has_all(seqs), 10)
                proxy.cut()
                assert await wait_until(lambda: counter(up, "connects") >= 2, 10)
                for i in range(4, 8):
                    seqs += await append_many(store, 5, start=i * 5)
                    assert await sub.wait_for(has_all(seqs), 10), (
                        up.stats(), broker.log_tail(20))
                assert counter(up, "connects") == 2  # no alias the broker refused
        finally:
            sub.close()
        sent = [publishes(bytes(s)) for s in proxy.sent]
    # the subscriber got every batch under the truck's real topic
    assert {t for t, _, _ in sub.raw} == {EVENTS, STATUS}
    assert len(sent) == 2
    for conn in sent:
        if max_alias:
            # the online status goes first (alias 1, with its topic), the events get 2;
            # on the second connection too: a new connection starts with no alias
            assert conn[0] == (STATUS, 1), conn
            ev = [p for p in conn if p[0] == EVENTS or p[1] == 2]
            assert len(ev) >= 2, conn
            assert ev[0] == (EVENTS, 2), conn
            assert all(p == ("", 2) for p in ev[1:]), conn
        else:
            assert sum(t == EVENTS for t, _ in conn) >= 2, conn
            assert all(t in (EVENTS, STATUS) and a is None for t, a in conn), conn
