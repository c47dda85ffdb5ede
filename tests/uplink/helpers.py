"""Helpers for the uplink tests: configs, a decoding subscriber, event factories."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from buffer.api import EventStore
from buffer.store import SqliteStore
from config import BufferConfig, MqttConfig, TruckConfig
from config.events import Event
from gateway import wire
from gateway.uplink import Uplink


@contextlib.asynccontextmanager
async def running(cfg: TruckConfig, store: SqliteStore) -> AsyncIterator[Uplink]:
    """An uplink running in a task; closed (offline status published) and awaited at exit."""
    up = Uplink(cfg, store)
    task = asyncio.create_task(up.run(), name="uplink")
    try:
        yield up
    finally:
        await up.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll ``pred`` every 50 ms for at most ``timeout`` seconds; its last value."""
    for _ in range(int(timeout / 0.05)):
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def counter(up: Uplink, name: str) -> int:
    """An integer counter of ``up.stats()``."""
    value = getattr(up.stats(), name)
    assert isinstance(value, int), (name, value)
    return value


def as_root() -> list[str]:
    """Mosquitto started as root drops to user "mosquitto", which cannot read tmp_path:
    keep root (tests only) so it can read password, ACL, certificate and persistence
    files there."""
    return ["user root"] if os.geteuid() == 0 else []


def make_cfg(tmp_path: Path, host: str, port: int, *, truck_id: str = "truck-001",
             **mqtt_kw: Any) -> TruckConfig:
    """A truck config for tests: fast backoff, plain TCP unless told otherwise."""
    kw: dict[str, Any] = {
        "host": host, "port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
        "keepalive_s": 10, "publish_timeout_s": 10.0,
        # the sizes these tests reason about are JSON's (the shipped default is
        # compact-dict since contract revision 4); a test passes encoding= to change it
        "encoding": "json",
    }
    kw.update(mqtt_kw)
    return TruckConfig(
        truck_id=truck_id,
        mqtt=MqttConfig(**kw),
        buffer=BufferConfig(path=tmp_path / "buffer.db", commit_interval_ms=10),
    )


def with_mqtt(cfg: TruckConfig, **kw: Any) -> TruckConfig:
    return dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, **kw))


def gps_event(i: int, ts0: int = 1_760_000_000_000) -> Event:
    return Event("gps", ts0 + i * 1000, {
        "lat": 48.137154 + i * 1e-5, "lon": 11.576124 + i * 1e-5, "alt_m": 519.4,
        "speed_kmh": 72.5, "heading_deg": 181.3, "fix": 3, "sats": 11, "hdop": 0.8,
    })


def engine_event(i: int, ts0: int = 1_760_000_000_000) -> Event:
    return Event("engine", ts0 + i * 100, {
        "src": 0, "engine_speed_rpm": 1400.125 + (i % 40), "engine_load_pct": 35 + i % 20,
        "vehicle_speed_kmh": 71.5,
    })


def mixed_event(i: int) -> Event:
    return gps_event(i) if i % 4 == 0 else engine_event(i)


async def append_many(store: EventStore, n: int, start: int = 0,
                      make: Callable[[int], Event] = mixed_event) -> list[int]:
    """Append n events and wait until all are durable; returns their seqs."""
    futs = [store.submit(make(start + i)) for i in range(n)]
    return list(await asyncio.gather(*futs))


class Subscriber:
    """A paho subscriber in its own loop thread that decodes every batch it gets."""

    def __init__(self, host: str, port: int, topic: str = "fleet/#", *,
                 protocol: str = "5", persistent: bool = False, **tls: Any) -> None:
        """``persistent``: an MQTT 3.1.1 session that survives a broker restart (with
        broker persistence on) and reconnects by itself, so nothing sent meanwhile is
        missed by the test."""
        if persistent:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sub-persistent",
                                      protocol=MQTTProtocolVersion.MQTTv311,
                                      clean_session=False)
            self.client.reconnect_delay_set(1, 1)
        else:
            proto = (MQTTProtocolVersion.MQTTv5 if protocol == "5"
                     else MQTTProtocolVersion.MQTTv311)
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                      client_id=f"sub-{id(self)}", protocol=proto)
        if tls:
            self.client.tls_set(**tls)
        self.topic = topic
        self.lock = threading.RLock()
        self.seqs: list[int] = []  # in arrival order, duplicates kept
        self.batches: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self.raw: list[tuple[str, bytes, str | None]] = []
        self.errors: list[str] = []
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError("subscriber did not subscribe")

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        ctype = getattr(msg.properties, "ContentType", None) if msg.properties else None
        with self.lock:
            payload = bytes(msg.payload)
            self.raw.append((msg.topic, payload, ctype))
            try:
                if msg.topic.endswith("/status"):
                    self.status.append(json.loads(msg.payload))
                    return
                batch = wire.decode_payload(payload,
                                            compact=wire.is_compact(msg.topic, ctype))
            except Exception as exc:
                self.errors.append(f"{msg.topic}: {exc!r}")
                return
            self.batches.append(batch)
            self.seqs.extend(e["seq"] for e in batch["events"])

    def seen(self) -> set[int]:
        with self.lock:
            return set(self.seqs)

    async def wait_for(self, pred: Callable[[Subscriber], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self):
                    return True
            await asyncio.sleep(0.05)
        with self.lock:
            return pred(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
