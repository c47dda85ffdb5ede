"""A small simulated fleet for the sink's tests and benchmark: trucks that publish event
batches encoded by :mod:`gateway.wire` (QoS 1, MQTT 5), each with its own seqs.

Unlike ``truckgw sim run`` there is no agent, GPS or CAN behind it: the point is a known
set of ``(truck_id, seq)`` to check a sink's table against, at a chosen rate.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from buffer.api import StoredEvent
from config.errors import SimError
from config.events import Event, encode_body
from gateway import wire

PUBLISH_TIMEOUT_S = 30.0


def fleet_events(first_seq: int, count: int, ts0_ms: int, *,
                 spacing_ms: int = 100) -> list[StoredEvent]:
    """``count`` events from ``first_seq``: gps and engine alternating, ``spacing_ms`` apart."""
    out = []
    for i in range(count):
        seq, ts = first_seq + i, ts0_ms + spacing_ms * i
        if i % 2 == 0:
            ev = Event("gps", ts, {"lat": 48.1 + i * 1e-5, "lon": 11.5 + i * 1e-5,
                                   "alt_m": 519.4, "speed_kmh": 72.5, "heading_deg": 181.3,
                                   "fix": 3, "sats": 11, "hdop": 0.8})
        else:
            ev = Event("engine", ts, {"src": 0, "engine_speed_rpm": 1400.125,
                                      "vehicle_speed_kmh": 71.5, "engine_load_pct": 35})
        out.append(StoredEvent(seq, ts, ev.type, ev.priority, encode_body(ev)))
    return out


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message of a truck."""

    topic: str
    payload: bytes
    content_type: str
    seqs: tuple[int, ...]


def truck_messages(prefix: str, truck_id: str, events: list[StoredEvent], *,
                   batch: int, encoding: str = "json") -> list[Message]:
    """``events`` split into batches of at most ``batch`` events."""
    topic = wire.events_topic(prefix, truck_id, encoding, "5")
    out = []
    for i in range(0, len(events), batch):
        for payload, seqs in wire.encode_batches(truck_id, events[i:i + batch], encoding,
                                                 1 << 30):
            out.append(Message(topic, payload, wire.content_type(encoding), seqs))
    return out


class FleetPublisher:
    """One MQTT 5 connection that publishes for many trucks (QoS 1)."""

    def __init__(self, host: str, port: int) -> None:
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=f"fleet-pub-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5)
        self._client.max_queued_messages_set(0)
        self._client.max_inflight_messages_set(100)
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._lock = threading.Lock()
        self._client.connect(host, port, keepalive=15)
        self._client.loop_start()

    def publish(self, msg: Message, *, retain: bool = False) -> None:
        """Queue one message (QoS 1)."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = msg.content_type
        info = self._client.publish(msg.topic, msg.payload, qos=1, retain=retain,
                                    properties=props)
        with self._lock:
            self._pending.append(info)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue raw bytes (bad payloads, status)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            self._pending.append(info)

    def wait_all(self, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        """Block until the broker acked everything queued so far."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            pending, self._pending = self._pending, []
        for info in pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimError("publisher: broker did not ack in time")
            info.wait_for_publish(left)
            if not info.is_published():
                raise SimError("publisher: broker did not ack in time")

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> FleetPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
