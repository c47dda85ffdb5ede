"""Cluster benchmark (issue 17): a fleet through a 3-node NATS JetStream cluster into the
fleet database, and the cost of a node's death.

Everything on this machine, on loopback: three real ``nats-server`` processes (MQTT
listeners, JetStream R3, sim/nats.py), real agent uplinks (:class:`gateway.uplink.Uplink`,
one SQLite buffer each, in this process), real ``truckgw sink run --source jetstream``
processes sharing one durable consumer into one SQLite file. A fresh cluster per phase.

1. drain: ``--trucks`` trucks with ``--backlog`` buffered events each, uplinks started at
   once; events/s = events / (uplinks started -> last row counted in the table); two
   JetStream sinks, one, and the sink over MQTT instead (one persistent 3.1.1 session, the
   only MQTT way on NATS: no MQTT 5, no shared subscriptions), for the choice of the source.
2. live: the trucks record ``--rate`` events/s between them (event ``ts`` = append time) for
   ``--seconds``; the sinks' lag p50/p99 is event ``ts`` (recorded on the truck) to the
   commit that stored it: buffer, uplink batching, cluster, sink, database.
3. failover: under the live load, each node in turn SIGKILLed; seconds from the kill to the
   last truck that was on it having a new PUBACK (an ack counted by its uplink), against
   the target of 2 x the uplinks' reconnect backoff cap.

Run: ``.venv/bin/python -m bench.cluster_bench [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.sink.rows import classify
from gateway.sink.store import open_store
from sim.nats import RECONNECT_MAX_S, Fleet, JetStreamSinkProcess, NatsCluster

POLL_S = 0.05


def _count(url: str) -> int:
    store = open_store(url)
    try:
        return store.count_events()
    finally:
        store.close()


async def _wait_count(fleet: Fleet, url: str, total: int, limit_s: float) -> float:
    """Until the table holds ``total`` events; the monotonic time it did."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await fleet.blocking(_count, url) >= total:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"table did not reach {total} events in {limit_s} s")


def _rows(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(url[len("sqlite:///"):], timeout=30)) as db:
        return [tuple(r) for r in db.execute(sql, params)]


class MqttSessionSink:
    """The alternative source: one MQTT 3.1.1 persistent session (clean_session=False) on
    one node, QoS 1, each message classified and stored, then PUBACKed (manual ack)."""

    def __init__(self, addr: tuple[str, int], url: str) -> None:
        self.store = open_store(url)
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-mqtt-sink",
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=False,
                                  manual_ack=True)
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe("fleet/+/events/#", qos=1)
        self.client.connect(*addr, keepalive=15)
        self.client.loop_start()
        if not self.subscribed.wait(20):
            raise TimeoutError("mqtt sink did not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        out = classify(msg.topic, bytes(msg.payload), None, time.time_ns() // 1_000_000)
        self.store.write(out)
        self.client.ack(msg.mid, msg.qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()


async def drain(work: Path, trucks: int, backlog: int, source: str,
                n_sinks: int = 2) -> dict[str, Any]:
    url = f"sqlite:///{work / 'fleet.db'}"
    with NatsCluster(3, workdir=work / "nats") as cluster:
        fleet = Fleet(cluster, work, trucks)
        sinks: list[JetStreamSinkProcess] = []
        mq: MqttSessionSink | None = None
        try:
            if source == "jetstream":
                urls = cluster.urls
                sinks = [JetStreamSinkProcess(urls[i:] + urls[:i], url, work / f"s{i}.out",
                                              ack_wait_s=30) for i in range(n_sinks)]
                for s in sinks:
                    await fleet.blocking(s.start)
            else:
                mq = await fleet.blocking(MqttSessionSink, cluster.mqtt_addresses[0], url)
            t0 = time.monotonic()
            await fleet.start(prefill=backlog, encoding="compact", inflight_window=64)
            t_fill = time.monotonic() - t0
            t0 = time.monotonic()
            t_end = await _wait_count(fleet, url, trucks * backlog, 600)
            counters = [await fleet.blocking(s.stop) for s in sinks]
        finally:
            if mq is not None:
                await fleet.blocking(mq.close)
            for s in sinks:
                if s.alive():
                    await fleet.blocking(s.stop)
            await fleet.close()
    secs = t_end - t0
    label = f"drain/{source}" + (f"x{n_sinks}" if source == "jetstream" else "")
    return {"phase": label, "trucks": trucks, "events": trucks * backlog,
            "seconds": round(secs, 2), "events_per_s": round(trucks * backlog / secs),
            "prefill_s": round(t_fill, 1),
            "messages": sum(c.get("messages", 0) for c in counters) or None}


async def live(work: Path, trucks: int, rate: int, seconds: float,
               reconnect_max_s: float) -> dict[str, Any]:
    url = f"sqlite:///{work / 'fleet.db'}"
    tick_s = 0.1
    per_tick = max(1, round(rate * tick_s / trucks))
    out: dict[str, Any] = {}
    with NatsCluster(3, workdir=work / "nats") as cluster:
        fleet = Fleet(cluster, work, trucks, reconnect_max_s=reconnect_max_s)
        urls = cluster.urls
        sinks = [JetStreamSinkProcess(urls, url, work / "a.out", ack_wait_s=10),
                 JetStreamSinkProcess(urls[1:] + urls[:1], url, work / "b.out", ack_wait_s=10)]
        try:
            for s in sinks:
                await fleet.blocking(s.start)
            await fleet.start(encoding="compact")
            fleet.feed(per_tick, tick_s)
            # warm-up (first connects create the MQTT streams): not part of the steady state
            await fleet.wait_all_publishing(dict.fromkeys(fleet.acked(), 0), 60)
            await asyncio.sleep(1.0)
            steady_from_ms = time.time_ns() // 1_000_000
            start_count = sum(len(t.appended) for t in fleet.trucks)
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            appended = sum(len(t.appended) for t in fleet.trucks) - start_count
            offered = appended / (time.monotonic() - t0)
            connected = sum(1 for t in fleet.trucks if t.uplink.stats().connects)
            steady_until_ms = time.time_ns() // 1_000_000
            failover = await _failover(fleet, cluster)
            await fleet.stop_feed()
            await fleet.wait_drained(120)
            total = sum(len(t.appended) for t in fleet.trucks)
            await _wait_count(fleet, url, total, 120)
            counters = [await fleet.blocking(s.stop) for s in sinks]
        finally:
            for s in sinks:
                if s.alive():
                    await fleet.blocking(s.stop)
            await fleet.close()
    # steady state only (before the first kill): event ts -> the sink's write
    lags = sorted(int(r[0]) for r in _rows(
        url, "SELECT arrival_ms - ts FROM events WHERE ts >= ? AND ts < ?",
        (steady_from_ms, steady_until_ms)))
    p50 = [lags[len(lags) // 2]] if lags else []
    p99 = [lags[min(len(lags) - 1, len(lags) * 99 // 100)]] if lags else []
    out.update({"phase": "live", "trucks": trucks, "trucks_connected": connected,
                "offered_events_per_s": round(offered), "events": total,
                "lag_p50_ms": max(p50) if p50 else None, "lag_p99_ms": max(p99) if p99 else None,
                "lag_p99_ms_with_kills": max((c.get("lag_p99_ms") or 0) for c in counters),
                "failover_s": failover,
                "failover_max_s": max(failover) if failover else None,
                "reconnect_max_s": reconnect_max_s, "target_s": 2 * reconnect_max_s})
    return out


async def _failover(fleet: Fleet, cluster: NatsCluster) -> list[float]:
    """SIGKILL each node in turn under load; seconds to the last affected truck's new ack."""
    times = []
    for node in cluster.nodes:
        affected = fleet.on_node(node)
        before, connects = fleet.acked(), fleet.connects()
        addr = f"{node.host}:{node.ports.mqtt}"
        t0 = time.monotonic()
        node.kill()
        # a new connection to another node and a PUBACK on it, for each truck that was there
        while not all(fleet.publishing_again(t, before[t.truck_id], connects[t.truck_id], addr)
                      for t in affected):
            if time.monotonic() - t0 > 60:
                raise TimeoutError(f"trucks of {node.name} not publishing after 60 s")
            await asyncio.sleep(POLL_S / 5)
        times.append(round(time.monotonic() - t0, 3))
        await asyncio.sleep(1.0)
        await fleet.blocking(node.start)
        await fleet.blocking(cluster.wait_healthy)
        await asyncio.sleep(1.0)
    return times


async def main_async(args: argparse.Namespace) -> None:
    results = []
    drains = [("jetstream", 2), ("jetstream", 1), ("mqtt", 1)]
    for source, n in [] if args.live_only else drains:
        with tempfile.TemporaryDirectory(prefix="truckgw-clbench-") as d:
            r = await drain(Path(d), args.trucks, args.backlog, source, n)
            print(r, flush=True)
            results.append(r)
    for cap in [] if args.drain_only else args.backoff_caps:
        with tempfile.TemporaryDirectory(prefix="truckgw-clbench-") as d:
            r = await live(Path(d), args.trucks, args.rate, args.seconds, cap)
            print(r, flush=True)
            results.append(r)
    with contextlib.suppress(statistics.StatisticsError):
        print("failover median s:", statistics.median(results[-1]["failover_s"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trucks", type=int, default=20)
    p.add_argument("--backlog", type=int, default=10_000, help="buffered events per truck")
    p.add_argument("--rate", type=int, default=5_000, help="live events/s of the whole fleet")
    p.add_argument("--seconds", type=float, default=20.0, help="live phase before the kills")
    p.add_argument("--backoff-caps", type=float, nargs="+", default=[RECONNECT_MAX_S, 5.0],
                   metavar="S", help="[mqtt].reconnect_max_s of the trucks, one live run each")
    p.add_argument("--live-only", action="store_true", help="skip the drain phases")
    p.add_argument("--drain-only", action="store_true", help="skip the live phases")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.backlog, args.rate, args.seconds = 2_000, 1_000, 5.0
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
