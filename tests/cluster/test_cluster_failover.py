"""A 3-node NATS JetStream cluster (real nats-server processes on loopback), 20 real agent
uplinks spread over the nodes with a failover list, two ``truckgw sink run --source
jetstream`` processes sharing one durable consumer into one SQLite database.

Nodes die (SIGKILL) and come back, the sink's node among them, and a sink is SIGKILLed;
then a rolling restart.
Every seq of every truck ends up in the fleet table exactly once (or announced), no truck
stops recording, and each truck's move to another node is in its status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.sink.gaps import account
from gateway.sink.store import open_store
from sim.nats import Fleet, JetStreamSinkProcess, NatsCluster, NatsNode
from tests.sink.helpers import count, query

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(240)]

TRUCKS = 20
EVENTS_PER_TICK, TICK_S = 2, 0.1  # 20 events/s per truck while the nodes fail
#: generous bound for "publishing again": reconnect + a new session on a surviving node
AGAIN_LIMIT_S = 30.0
LOAD_S = 2.0


def _sinks(cluster: NatsCluster, url: str, tmp_path: Path) -> list[JetStreamSinkProcess]:
    urls = cluster.urls
    # sink a is on n1 (its first URL), sink b on n2; both share the durable "fleet"
    return [JetStreamSinkProcess(urls, url, tmp_path / "sink-a.out"),
            JetStreamSinkProcess(urls[1:] + urls[:1], url, tmp_path / "sink-b.out")]


async def _node_dies(fleet: Fleet, cluster: NatsCluster, node: NatsNode, *,
                     kill: bool, need_trucks: bool = True) -> list[str]:
    """Stop ``node`` (SIGKILL or SIGTERM) under load, wait until every truck publishes
    again, restart it; the trucks that were on it."""
    moved = fleet.on_node(node)
    assert moved or not need_trucks, f"no truck on {node}"
    before, connects = fleet.acked(), fleet.connects()
    recorded = {t.truck_id: len(t.appended) for t in fleet.trucks}
    addr = f"{node.host}:{node.ports.mqtt}"
    if kill:
        node.kill()
    else:
        await fleet.blocking(node.stop)
    await asyncio.sleep(LOAD_S)  # the node is gone: every truck records on meanwhile
    still = [t.truck_id for t in fleet.trucks if len(t.appended) <= recorded[t.truck_id]]
    assert still == [], f"stopped recording while {node} was down: {still}"
    await fleet.wait_all_publishing(before, AGAIN_LIMIT_S, moved=moved, connects=connects,
                                    avoid=addr)
    for t in moved:
        assert t.uplink.broker.address != addr
        assert t.uplink.broker.switches >= 1
    await asyncio.sleep(LOAD_S)
    await fleet.blocking(node.start)
    await fleet.blocking(cluster.wait_healthy)
    await asyncio.sleep(LOAD_S)
    return [t.truck_id for t in moved]


async def _finish(fleet: Fleet, url: str, sinks: list[JetStreamSinkProcess]) -> None:
    """Stop feeding, drain every buffer, wait for the table, check exactly-once."""
    await fleet.stop_feed()
    await fleet.wait_drained(60)
    total = sum(len(t.appended) for t in fleet.trucks)
    for _ in range(600):
        if await fleet.blocking(count, url) >= total:
            break
        await asyncio.sleep(0.1)
    counters = [await fleet.blocking(s.stop) for s in sinks]
    assert all(c["messages"] > 0 for c in counters), counters  # both took a share
    rows = await fleet.blocking(
        query, url, "SELECT truck_id, count(*), count(DISTINCT seq), min(seq), max(seq) "
        "FROM events GROUP BY truck_id ORDER BY truck_id")
    want = [(t.truck_id, len(t.appended), len(t.appended), 1, len(t.appended))
            for t in fleet.trucks]
    assert rows == want
    store = open_store(url)
    try:
        reports = [account(i) for i in store.gap_inputs()]
    finally:
        store.close()
    assert [(r.truck_id, r.missing) for r in reports] == [(t.truck_id, 0) for t in fleet.trucks]


def _switches_in_status(url: str, truck_id: str) -> list[tuple[str, int]]:
    """(address, switches) of every online status the sink stored for a truck."""
    rows = query(url, "SELECT body FROM status_history WHERE truck_id = "  # noqa: S608
                      f"'{truck_id}' AND state = 'online' ORDER BY ts")
    out = []
    for (body,) in rows:
        b = json.loads(body)["broker"]
        out.append((b["address"], b["switches"]))
    return out


async def test_node_killed_and_the_sinks_node_killed(nats_cluster: NatsCluster,
                                                     tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    fleet = Fleet(nats_cluster, tmp_path, TRUCKS)
    sinks = _sinks(nats_cluster, url, tmp_path)
    try:
        for sink in sinks:
            await fleet.blocking(sink.start)
        await fleet.start()
        fleet.feed(EVENTS_PER_TICK, TICK_S)
        await fleet.wait_all_publishing(dict.fromkeys(fleet.acked(), 0), AGAIN_LIMIT_S)
        await asyncio.sleep(LOAD_S)
        n1, n2, n3 = nats_cluster.nodes
        # first the busier of n2 and n3 (start-up moves trucks around: the MQTT streams are
        # created on the first connects), then n1, the node sink a is on, whoever is there
        busy = max((n2, n3), key=lambda n: len(fleet.on_node(n)))
        moved_busy = await _node_dies(fleet, nats_cluster, busy, kill=True)
        moved_n1 = await _node_dies(fleet, nats_cluster, n1, kill=True, need_trucks=False)
        # and a sink itself SIGKILLed mid-stream: what it wrote but never acked comes again
        sinks[1].kill()
        await asyncio.sleep(LOAD_S)
        await fleet.blocking(sinks[1].start)
        await _finish(fleet, url, sinks)
    finally:
        for s in sinks:
            if s.alive():
                await fleet.blocking(s.stop)
        await fleet.close()
    for node, moved in ((busy, moved_busy), (n1, moved_n1)):
        addr = f"{node.host}:{node.ports.mqtt}"
        for truck in moved:
            seen = _switches_in_status(url, truck)
            # on the node before it died, then on another one with more switches
            first = next(i for i, (a, _) in enumerate(seen) if a == addr)
            assert any(a != addr and n > seen[first][1] for a, n in seen[first:]), seen
    # sink a was on n1 (its first URL): it lost that node, connected to another one and
    # went on (a stop logs a disconnect too, never a connect after it)
    n1_addr = f"{n1.host}:{n1.ports.client}"
    lines = sinks[0].text().splitlines()
    lost = next(i for i, ln in enumerate(lines) if f"sink: disconnected from {n1_addr}" in ln)
    assert any("sink: connected to " in ln and n1_addr not in ln for ln in lines[lost:]), (
        lines[lost:lost + 20])


async def test_rolling_restart_under_load(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    fleet = Fleet(nats_cluster, tmp_path, TRUCKS)
    sinks = _sinks(nats_cluster, url, tmp_path)
    moved: list[str] = []
    switches: list[int] = []
    try:
        for sink in sinks:
            await fleet.blocking(sink.start)
        await fleet.start()
        fleet.feed(EVENTS_PER_TICK, TICK_S)
        await fleet.wait_all_publishing(dict.fromkeys(fleet.acked(), 0), AGAIN_LIMIT_S)
        for node in nats_cluster.nodes:
            moved += await _node_dies(fleet, nats_cluster, node, kill=False, need_trucks=False)
        switches = [t.uplink.broker.switches for t in fleet.trucks]
        await _finish(fleet, url, sinks)
    finally:
        for s in sinks:
            if s.alive():
                await fleet.blocking(s.stop)
        await fleet.close()
    # each truck was on a node when it restarted, unless it had moved off before
    assert all(n >= 1 for n in switches), switches
    for truck in set(moved):
        assert any(s >= 1 for _, s in _switches_in_status(url, truck))

