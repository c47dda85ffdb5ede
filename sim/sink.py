"""The cloud sink: a fleet consumer that subscribes, decodes and keeps the books.

``Sink(host, port, prefix)`` subscribes (QoS 1) to ``{prefix}/+/events/#`` (both
encodings, both protocols) and ``{prefix}/+/status``, decodes batches with
:func:`gateway.wire.decode_payload` and folds them into :class:`~sim.sink_stats.FleetStats`.
Given a ``client_id`` it uses a persistent MQTT session (no clean start, 1 h expiry),
so messages published while it was reconnecting after a broker restart are queued for
it when the broker keeps sessions; without one it uses a random id and a clean session.
``share="group"`` subscribes through ``$share/group/...`` (MQTT 5) so several sinks
split one fleet's traffic.

Usable in-process (tests, the demo) with ``start()``/``stop()``/``summary()``, or as
``truckgw sim sink``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from config.errors import SimError, WireError
from gateway import wire
from gateway.sink.rows import classify
from gateway.sink.sqlite_store import SqliteSinkStore
from sim.sink_stats import FleetStats

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600


class Sink:
    """An MQTT consumer of one fleet prefix; thread-safe figures via :meth:`summary`."""

    def __init__(self, host: str, port: int, prefix: str = "fleet", *,
                 share: str | None = None, protocol: str = "5", client_id: str | None = None,
                 jsonl: Path | None = None, sqlite: Path | None = None) -> None:
        if share and protocol != "5":
            raise SimError("shared subscriptions need MQTT 5 (--protocol 5)")
        self.host, self.port, self.prefix = host, port, prefix
        self.share = share
        self.protocol = protocol
        # a persistent session only for a named client: a random id would leave an
        # orphaned session (and its queued messages) on the broker after every run
        self.persistent = client_id is not None
        self.client_id = client_id or f"truckgw-sink-{uuid.uuid4().hex[:8]}"
        self.stats = FleetStats()
        #: set once the broker has acknowledged every subscription (SUBACK), cleared on
        #: disconnect: a message published after this is seen by the sink
        self.connected = threading.Event()
        self.connects = 0
        self._suback_pending: set[int] = set()
        self._lock = threading.Lock()
        self._jsonl: IO[str] | None = jsonl.open("a", encoding="utf-8") if jsonl else None
        # the fleet sink's schema (docs/sink.md), so `truckgw sink gaps` reads the file too
        self._db: SqliteSinkStore | None = None
        if sqlite is not None:
            self._db = SqliteSinkStore(sqlite)
            self._db.open()  # readers may query the file before the first event
        v5 = protocol == "5"
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not self.persistent,
        )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._started = False

    def topics(self) -> list[str]:
        """The subscriptions (with ``$share/GROUP/`` when sharing)."""
        base = [f"{self.prefix}/+/events/#", f"{self.prefix}/+/status"]
        if self.share:
            # status is retained: every sink wants it, so it is not shared
            return [f"$share/{self.share}/{base[0]}", base[1]]
        return base

    def start(self) -> None:
        """Connect in the background (retries until the broker is up)."""
        props = None
        kwargs: dict[str, Any] = {}
        if self.protocol == "5" and self.persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            kwargs = {"clean_start": False, "properties": props}
        self._client.connect_async(self.host, self.port, keepalive=10, **kwargs)
        self._client.loop_start()
        self._started = True

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Block until every subscription is acknowledged (or timeout); True when it is."""
        return self.connected.wait(timeout)

    def stop(self) -> None:
        """Disconnect, stop the network thread, flush and close the output files."""
        if self._started:
            self._started = False
            self._client.disconnect()
            self._client.loop_stop()
        with self._lock:
            if self._jsonl is not None:
                self._jsonl.close()
                self._jsonl = None
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ callbacks

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("sink: connect refused: %s", rc)
            return
        mids = set()
        with self._lock:
            for topic in self.topics():
                if self.protocol == "5":
                    _rc, mid = client.subscribe(topic, options=SubscribeOptions(qos=1))
                else:
                    _rc, mid = client.subscribe(topic, qos=1)
                if mid is not None:
                    mids.add(mid)
            self._suback_pending = mids
        self.connects += 1
        log.info("sink: connected to %s:%s, subscribing %s", self.host, self.port, self.topics())

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        refused = [c for c in (codes or ()) if getattr(c, "is_failure", False)]
        if refused:
            log.warning("sink: subscription %s refused: %s", mid, refused)
            return
        with self._lock:
            self._suback_pending.discard(mid)
            done = not self._suback_pending
        if done:
            self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        log.info("sink: disconnected (%s)", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.handle(msg.topic, bytes(msg.payload), _content_type(msg), int(time.time() * 1000))

    def handle(self, topic: str, payload: bytes, content_type: str | None,
               arrival_ms: int) -> None:
        """Process one message (also callable directly, e.g. from tests)."""
        parts = topic.split("/")
        prefix_levels = len(self.prefix.split("/"))
        if len(parts) < prefix_levels + 2:
            return
        truck_id, kind = parts[prefix_levels], parts[prefix_levels + 1]
        with self._lock:
            if kind == "status":
                self._status(truck_id, payload)
            elif kind == "events":
                self._events(truck_id, topic, payload, content_type, arrival_ms)

    def _status(self, truck_id: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            self.stats.add_bad(truck_id)
            return
        if isinstance(obj, dict):
            self.stats.add_status(truck_id, obj)

    def _events(self, truck_id: str, topic: str, payload: bytes, ctype: str | None,
                arrival_ms: int) -> None:
        if self._db is not None:
            # stored (once per seq) or quarantined exactly as `truckgw sink run` would; this
            # in-memory sink acks on receipt, so only `truckgw sink run` is at-least-once
            self._db.write(classify(topic, payload, ctype, arrival_ms, prefix=self.prefix))
        try:
            batch = wire.decode_payload(payload, compact=wire.is_compact(topic, ctype))
        except WireError as exc:
            log.warning("sink: bad payload from %s: %s", truck_id, exc)
            self.stats.add_bad(truck_id)
            return
        if batch.get("truck_id") != truck_id:
            # the topic is what the broker's ACL vouches for; a payload that claims another
            # truck must not make that truck's real events look like duplicates
            log.warning("sink: payload on %s claims truck %r", topic, batch.get("truck_id"))
            self.stats.add_bad(truck_id)
            return
        fresh = self.stats.add_batch(batch, arrival_ms)
        self._write(batch, fresh, arrival_ms)

    def _write(self, batch: dict[str, Any], fresh: list[dict[str, Any]], arrival_ms: int) -> None:
        tid = str(batch["truck_id"])
        fresh_ids = {id(e) for e in fresh}
        if self._jsonl is not None:
            for ev in batch["events"]:
                line = {"truck_id": tid, "arrival_ms": arrival_ms,
                        "duplicate": id(ev) not in fresh_ids, **ev}
                self._jsonl.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._jsonl.flush()

    # ------------------------------------------------------------------ figures

    def summary(self) -> dict[str, Any]:
        """Per-truck figures: ``{"trucks": {id: {...}}, "totals": {...}}``."""
        with self._lock:
            trucks = {tid: st.summary() for tid, st in sorted(self.stats.trucks.items())}
        totals = {k: sum(int(t[k]) for t in trucks.values())
                  for k in ("events", "unique", "duplicates", "missing", "missing_announced",
                            "bad_payloads")}
        # seqs the agent announced it never committed (seq_gap notices) are not losses
        totals["lost"] = totals["missing"] - totals["missing_announced"]
        return {"trucks": trucks, "totals": totals, "connected": self.connected.is_set()}

    def missing_in(self, truck_id: str, lo: int, hi: int) -> tuple[int, int]:
        """(missing, announced by ``seq_gap``) seqs of one truck in ``[lo, hi]`` now."""
        with self._lock:
            return self.stats.truck(truck_id).missing_in(lo, hi)

    def live(self, truck_id: str) -> dict[str, Any]:
        """Latest values of one truck for a live view (gps, engine, dtc, status, rate)."""
        with self._lock:
            st = self.stats.trucks.get(truck_id)
            if st is None:
                return {}
            return {"latest": {k: dict(v) for k, v in st.latest.items()},
                    "status": dict(st.status), "events": st.events,
                    "missing": st.seqs.missing(), "duplicates": st.duplicates,
                    "rate": st.rate(int(time.time() * 1000))}

    def track(self, truck_id: str) -> list[dict[str, Any]]:
        """The gps and engine events kept for the trip report."""
        with self._lock:
            st = self.stats.trucks.get(truck_id)
            return list(st.track) if st else []


def session_store_conf(store: Path) -> list[str]:
    """Mosquitto config lines that keep sessions (and queued QoS 1 messages) across a restart.

    A consumer with a persistent session then misses nothing published while it was
    reconnecting after a broker outage. Mosquitto started as root drops to its own
    user before it saves, which cannot write a private temporary folder: stay root then.
    """
    store.mkdir(parents=True, exist_ok=True)
    lines = ["persistence true", f"persistence_location {store}/"]
    if os.geteuid() == 0:
        lines.append("user root")
    return lines


def _content_type(msg: mqtt.MQTTMessage) -> str | None:
    props = getattr(msg, "properties", None)
    value = getattr(props, "ContentType", None) if props is not None else None
    return str(value) if value else None


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable report of :meth:`Sink.summary`."""
    lines = []
    for tid, t in summary["trucks"].items():
        lag = t["lag_ms"]
        types = " ".join(f"{k}={v}" for k, v in t["by_type"].items()) or "-"
        lines.append(
            f"{tid}: events={t['events']} unique={t['unique']} dup={t['duplicates']} "
            f"seq={t['first_seq']}..{t['last_seq']} missing={t['missing']} "
            f"(announced {t.get('missing_announced', 0)}) "
            f"bad={t['bad_payloads']} lag_ms p50={lag['p50']} p95={lag['p95']} max={lag['max']} "
            f"types={types} state={t['status'].get('state', '?')}")
        if t["gaps"]:
            lines.append("  gaps: " + ", ".join(
                f"{lo}" if lo == hi else f"{lo}..{hi}" for lo, hi in t["gaps"]))
    if not lines:
        lines.append("no events received")
    return "\n".join(lines)
