"""Uplink benchmark: backlog drain, bytes per event, live-first latency (issue 4).

Against a private Mosquitto on loopback, and through sim.proxy adding 100 ms of
round-trip delay (50 ms each way), side by side:

1. drain of a backlog (default 200,000 events, QoS 1, acked and deleted from the
   real SQLite store): our uplink (json, compact) vs. a naive baseline that publishes
   one JSON message per event and waits for each PUBACK (paho's ``wait_for_publish``).
   The baseline leases from the same store 1,000 at a time and acks each 1,000 in one
   call, which flatters it. Through the proxy the baseline is bounded by count and
   time and its rate extrapolated (it cannot do better than 1 event per RTT).
2. bytes on the wire per event (PUBLISH packet = fixed header + topic + packet id +
   properties + payload) for json, compact and the baseline on a realistic mix.
3. live-first latency: with a backlog draining, new events are appended every 20 ms;
   p50/p99 from submit() to arrival at a subscriber.

Run: ``.venv/bin/python -m bench.uplink_bench [--events 200000] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from buffer.api import Lane, StoredEvent
from buffer.store import SqliteStore
from config import BufferConfig, MqttConfig, TruckConfig
from config.events import Event, encode_body
from gateway import wire
from gateway.uplink import Uplink
from sim.broker import Mosquitto
from sim.proxy import TcpProxy

TRUCK = "truck-0042"
PREFIX = "fleet"
RTT_MS = 100.0


# ----------------------------------------------------------------------------- data


def realistic_events(n: int, seed: int = 7) -> Iterator[Event]:
    """A drive: 1 Hz GPS, engine events at ~3 Hz with a handful of changed signals."""
    rnd = random.Random(seed)
    t = 1_760_000_000_000
    lat, lon, heading, speed = 48.137154, 11.576124, 90.0, 70.0
    rpm, fuel, dist = 1400.0, 62.4, 412345.6
    i = 0
    while i < n:
        t += 1000
        heading = (heading + rnd.gauss(0, 2)) % 360
        speed = max(0.0, min(110.0, speed + rnd.gauss(0, 1.5)))
        d = speed / 3.6
        lat += d * math.cos(math.radians(heading)) / 111_320
        lon += d * math.sin(math.radians(heading)) / (111_320 * math.cos(math.radians(lat)))
        dist += d / 1000
        yield Event("gps", t, {
            "lat": round(lat, 7), "lon": round(lon, 7),
            "alt_m": round(520 + rnd.gauss(0, 3), 1), "speed_kmh": round(speed, 1),
            "heading_deg": round(heading, 1), "fix": 3, "sats": rnd.randint(8, 14),
            "hdop": round(rnd.uniform(0.6, 1.4), 1),
        })
        i += 1
        for k in range(3):
            if i >= n:
                break
            rpm = max(600.0, min(2100.0, rpm + rnd.gauss(0, 40)))
            fuel -= 0.0004
            fields: dict[str, Any] = {
                "src": 0, "engine_speed_rpm": round(rpm / 0.125) * 0.125,
                "vehicle_speed_kmh": round(speed * 256) / 256,
                "engine_load_pct": rnd.randint(20, 80),
                "accelerator_pedal_pct": round(rnd.randint(0, 250) * 0.4, 1),
                "fuel_rate_lph": round(rnd.randint(200, 900) * 0.05, 2),
            }
            if k == 0:
                fields.update({"coolant_temp_c": 88 + rnd.randint(-2, 2),
                               "oil_pressure_kpa": 4 * rnd.randint(80, 100),
                               "fuel_level_pct": round(fuel / 0.4) * 0.4,
                               "total_distance_km": round(dist / 0.125) * 0.125})
            yield Event("engine", t + 250 * (k + 1), fields)
            i += 1


def stored(events: list[Event]) -> list[StoredEvent]:
    return [StoredEvent(i + 1, e.ts_ms, e.type, e.priority, encode_body(e))
            for i, e in enumerate(events)]


def publish_packet_bytes(topic: str, payload_len: int, content_type: str | None) -> int:
    """Size of a QoS 1 PUBLISH packet (MQTT 5 when content_type is given, else 3.1.1)."""
    props = 0
    if content_type is not None:
        props = 1 + 2 + len(content_type)  # content type property
    var = 2 + len(topic) + 2 + (_varint_len(props) + props if content_type is not None else 0)
    remaining = var + payload_len
    return 1 + _varint_len(remaining) + remaining


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2_097_152 else 4


def baseline_payload(ev: StoredEvent) -> bytes:
    """What a naive uplink sends per event: one JSON object with truck id and seq."""
    return b'{"truck_id":"%s",' % TRUCK.encode() + wire.wire_event_json(ev.seq, ev.body)[1:]


# ----------------------------------------------------------------------------- helpers


def truck_cfg(db: Path, host: str, port: int, **mqtt_kw: Any) -> TruckConfig:
    return TruckConfig(
        truck_id=TRUCK,
        mqtt=MqttConfig(host=host, port=port, reconnect_min_s=0.1, reconnect_max_s=1.0,
                        **mqtt_kw),
        buffer=BufferConfig(path=db),
    )


async def filled_store(db: Path, n: int) -> SqliteStore:
    store = await SqliteStore.open(BufferConfig(path=db, commit_max_events=20000))
    chunk: list[asyncio.Future[int]] = []
    for ev in realistic_events(n):
        chunk.append(store.submit(ev))
        if len(chunk) >= 20000:
            await asyncio.gather(*chunk)
            chunk = []
    await asyncio.gather(*chunk)
    return store


async def drain_ours(workdir: Path, host: str, port: int, n: int, encoding: str) -> float:
    db = workdir / f"ours-{encoding}-{port}.db"
    store = await filled_store(db, n)
    up = Uplink(truck_cfg(db, host, port, encoding=encoding, keepalive_s=30), store)
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        while (await store.stats()).pending:  # noqa: ASYNC110  # polling the store is the measurement
            await asyncio.sleep(0.02)
        return n / (time.perf_counter() - t0)
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def drain_baseline(workdir: Path, host: str, port: int, n: int,
                         max_events: int, max_s: float) -> tuple[float, int]:
    """One publish per event, wait for each PUBACK; returns (events/s, events sent)."""
    db = workdir / f"base-{port}.db"
    store = await filled_store(db, n)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="naive",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(host, port, 30)
    client.loop_start()
    topic = f"{PREFIX}/{TRUCK}/events"
    sent = 0
    t0 = time.perf_counter()

    def send(events: tuple[StoredEvent, ...]) -> int:
        done = 0
        for ev in events:
            info = client.publish(topic, baseline_payload(ev), qos=1)
            info.wait_for_publish(30)
            done += 1
            if time.perf_counter() - t0 > max_s:
                break
        return done

    try:
        while sent < max_events and time.perf_counter() - t0 < max_s:
            batch = await store.lease(Lane.BACKFILL, min(1000, max_events - sent), 1 << 30)
            if batch is None:
                break
            done = await asyncio.to_thread(send, batch.events)
            await store.ack(batch.seqs[:done])
            await store.release(batch.seqs[done:])
            sent += done
        return sent / (time.perf_counter() - t0), sent
    finally:
        client.disconnect()
        client.loop_stop()
        await store.close()


class LatencyProbe:
    """A subscriber thread noting when each watched seq arrives."""

    def __init__(self, host: str, port: int) -> None:
        self.watch: dict[int, float] = {}
        self.arrived: dict[int, float] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/+/events/#", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, 30)
        self.client.loop_start()
        self.ready.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        payload = bytes(msg.payload)
        with self.lock:
            for seq in list(self.watch):
                if b'{"seq":%d,' % seq in payload:
                    self.arrived[seq] = now
                    del self.watch[seq]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def live_latency(workdir: Path, host: str, port: int, backlog: int,
                       probe_host: str, probe_port: int, rate: int = 0) -> tuple[list[float], int]:
    db = workdir / f"live-{port}-{rate}.db"
    store = await filled_store(db, backlog)
    probe = LatencyProbe(probe_host, probe_port)
    up = Uplink(truck_cfg(db, host, port, keepalive_s=30, bandwidth_bytes_per_s=rate), store)
    task = asyncio.create_task(up.run(), name="uplink")
    sent_at: dict[int, float] = {}
    lat: list[float] = []
    try:
        live = realistic_events(10**6, seed=99)
        while (await store.stats()).pending > 1000 and len(sent_at) < 500:
            t = time.perf_counter()
            seq = await store.append(next(live))
            with probe.lock:
                probe.watch[seq] = t
            sent_at[seq] = t
            await asyncio.sleep(0.02)
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            with probe.lock:
                if not probe.watch:
                    break
            await asyncio.sleep(0.05)
        with probe.lock:
            lat = [probe.arrived[s] - sent_at[s] for s in sent_at if s in probe.arrived]
        return lat, len(sent_at)
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        probe.close()
        await store.close()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


# ----------------------------------------------------------------------------- main


async def drains(work: Path, broker: Mosquitto, proxy: TcpProxy, n: int) -> None:
    """Backlog drain: ours vs. the naive baseline, on loopback and through the proxy."""
    print(f"\n## drain of a {n}-event backlog (QoS 1, acked + deleted)", flush=True)
    res: dict[str, float] = {}
    res["ours json loopback"] = await drain_ours(work, broker.host, broker.port, n, "json")
    print(f"- ours json, loopback: {res['ours json loopback']:,.0f} events/s", flush=True)
    res["ours compact loopback"] = await drain_ours(work, broker.host, broker.port, n,
                                                    "compact")
    print(f"- ours compact, loopback: {res['ours compact loopback']:,.0f} events/s",
          flush=True)
    base_lo, base_lo_n = await drain_baseline(work, broker.host, broker.port, n, n, 60)
    print(f"- naive baseline, loopback: {base_lo:,.0f} events/s ({base_lo_n} events"
          f"{'' if base_lo_n == n else ', bounded at 60 s'})", flush=True)
    res["ours json 100ms"] = await drain_ours(work, proxy.host, proxy.port, n, "json")
    print(f"- ours json, 100 ms RTT proxy: {res['ours json 100ms']:,.0f} events/s",
          flush=True)
    res["ours compact 100ms"] = await drain_ours(work, proxy.host, proxy.port, n,
                                                 "compact")
    print(f"- ours compact, 100 ms RTT proxy: {res['ours compact 100ms']:,.0f} events/s",
          flush=True)
    base_px, base_px_n = await drain_baseline(work, proxy.host, proxy.port, 2000, 150, 20)
    print(f"- naive baseline, 100 ms RTT proxy: {base_px:,.1f} events/s (measured on "
          f"{base_px_n} events, extrapolated: {n} events would take "
          f"{n / base_px / 3600:.1f} h)", flush=True)
    print(f"- speed-up: loopback {res['ours json loopback'] / base_lo:.1f}x, "
          f"100 ms RTT {res['ours json 100ms'] / base_px:,.0f}x (json)", flush=True)


async def main(n: int, live_backlog: int, *, skip_drain: bool = False) -> None:
    print(f"# uplink bench: {n} events, python {sys.version.split()[0]}, "
          f"cores shared with other work", flush=True)
    evs = stored(list(realistic_events(20_000)))
    topic = f"{PREFIX}/{TRUCK}/events"
    rows = []
    for enc in ("json", "compact"):
        payloads = wire.encode_batches(TRUCK, evs, enc, 131072)
        total = sum(publish_packet_bytes(topic, len(p), wire.content_type(enc))
                    for p, _ in payloads)
        rows.append((f"ours {enc} (MQTT 5, 128 KiB batches)", total / len(evs), len(payloads)))
    base = sum(publish_packet_bytes(topic, len(baseline_payload(e)), None) for e in evs)
    rows.append(("naive baseline (1 JSON msg/event)", base / len(evs), len(evs)))
    print("\n## bytes on the wire per event (PUBLISH packet incl. header), 20,000-event mix "
          "(1 gps : 3 engine)")
    for name, per, msgs in rows:
        print(f"- {name}: {per:.1f} B/event ({msgs} messages; {base / len(evs) / per:.1f}x "
              "smaller than baseline)")

    with tempfile.TemporaryDirectory(prefix="truckgw-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto()
        with broker, TcpProxy(broker.host, broker.port) as proxy:
            proxy.delay(RTT_MS / 2)
            if not skip_drain:
                await drains(work, broker, proxy, n)
            print(f"\n## live-first latency, {live_backlog}-event backlog draining, "
                  "a new event every 20 ms", flush=True)
            for name, host, port, rate in (
                ("loopback", broker.host, broker.port, 0),
                ("100 ms RTT proxy", proxy.host, proxy.port, 0),
                ("100 ms RTT proxy + 1 MB/s cap", proxy.host, proxy.port, 1_000_000),
            ):
                lat, sent = await live_latency(work, host, port, live_backlog,
                                               broker.host, broker.port, rate)
                if lat:
                    print(f"- {name}: p50 {statistics.median(lat) * 1000:.0f} ms, "
                          f"p99 {pct(lat, 99) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
                          f"({len(lat)}/{sent} live events arrived)", flush=True)
                else:
                    print(f"- {name}: no live event arrived ({sent} sent)", flush=True)
    print(f"\ncommand: .venv/bin/python -m bench.uplink_bench --events {n} "
          f"--live-backlog {live_backlog}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="uplink benchmark (issue 4)")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--live-backlog", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="20k events, 20k live backlog")
    ap.add_argument("--skip-drain", action="store_true", help="only bytes and latency")
    a = ap.parse_args()
    if a.quick:
        a.events, a.live_backlog = 20_000, 20_000
    asyncio.run(main(a.events, a.live_backlog, skip_drain=a.skip_drain))
