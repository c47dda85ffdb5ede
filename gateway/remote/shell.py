"""The remote shell: subscribes on the uplink's connection, applies, answers.

The uplink calls :class:`RemoteShell` as its :class:`LinkHooks` (``on_connected`` after
the online status, ``on_message`` from paho's read on the loop thread,
``on_disconnected``). Messages go through a queue to :meth:`RemoteShell.run`, a task of
the agent. The decisions are the pure cores' (:mod:`gateway.remote.desired`,
:mod:`~gateway.remote.commands`, :mod:`~gateway.remote.rollback`); this module does the
I/O: the loader, the files, the publishes.

The shell runs whenever ``[remote] enabled`` or a pushed change awaits its confirmation
(so a push that switched remote management off still rolls back); it subscribes only
when enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from config.errors import ConfigError
from config.loader import check_parsed
from config.schema import TruckConfig
from gateway import __version__
from gateway.logsetup import LEVELS
from gateway.remote import commands, desired, files, rollback
from gateway.remote.startup import EX_RESTART
from gateway.remote.wire import (
    Code,
    RefusedError,
    cmd_topic,
    desired_topic,
    open_message,
    reported_topic,
    response_prefix,
)

log = logging.getLogger(__name__)

#: How often the grace period is advanced and, while waiting, persisted.
TICK_S = 0.5
PERSIST_EVERY_S = 5.0
#: A reply is published this long before a ``restart`` command stops the agent.
RESTART_DELAY_S = 0.5
QUEUE_MAX = 256


class AgentPort(Protocol):
    """What the shell needs of the agent (:class:`gateway.app.Agent` provides it)."""

    cfg: TruckConfig

    def wall_ms(self) -> int:
        """The truck's best wall clock (UNIX ms)."""

    def snapshot(self) -> Mapping[str, Any]:
        """The latest local health snapshot."""

    def position(self) -> dict[str, Any] | None:
        """The latest GPS fix."""

    def dtcs(self) -> list[dict[str, Any]]:
        """The active faults per source."""

    async def flush(self) -> int:
        """Make pending events durable; the committed seq high-water mark."""

    async def retry_refused(self) -> int:
        """Move the dead letters back to pending; how many."""

    def apply_live(self, cfg: TruckConfig) -> None:
        """Make the live keys of ``cfg`` take effect now."""

    def request_stop(self, code: int = 0, reason: str = "stop requested") -> None:
        """Begin the orderly shutdown (with :data:`EX_RESTART`: then re-exec)."""

    def request_pgn(self, pgn: int) -> bool:
        """Queue a J1939 request for ``pgn``; False when no CAN bus is running."""


def read_key(cfg: TruckConfig) -> bytes | None:
    """The per-truck HMAC key (never logged)."""
    path = cfg.remote.key_file
    if path is None:
        return None
    return path.read_bytes().strip() or None


class RemoteShell:
    """See the module docstring."""

    def __init__(self, agent: AgentPort) -> None:
        self.agent = agent
        cfg = agent.cfg
        if cfg.source is None:
            raise ConfigError([("<config>", "remote", "remote management needs a config file")])
        self.config_path: Path = cfg.source
        self.prefix = cfg.mqtt.topic_prefix
        self.truck_id = cfg.truck_id
        self.v5 = cfg.mqtt.protocol == "5"
        self.key = read_key(cfg)
        self.state = files.read_state(self.config_path)
        self._req_path = files.requests_path(cfg.buffer.path)
        raw = files.read_json(self._req_path)
        self.window = commands.RequestWindow.load(raw if isinstance(raw, list) else [])
        self._queue: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue(QUEUE_MAX)
        self._client: mqtt.Client | None = None
        self._sent: Callable[[int, int], None] | None = None
        self._reply_props = _props(PacketTypes.PUBLISH) if self.v5 else None
        self.counters: dict[str, int] = {
            "messages": 0, "commands_run": 0, "refused": 0, "unsigned_refused": 0,
            "bad_signature": 0, "duplicates": 0, "expired": 0, "dropped": 0,
            "configs_applied": 0, "configs_rejected": 0, "rollbacks": 0,
        }

    @property
    def needed(self) -> bool:
        """Whether the agent should run this shell at all."""
        return self.agent.cfg.remote.enabled or self.state.phase is rollback.Phase.PENDING_CONFIRM

    # ------------------------------------------------------------------ uplink hooks

    def on_connected(self, client: mqtt.Client, sent: Callable[[int, int], None]) -> None:
        """A broker accepted the connection: confirm, report, subscribe (never raises:
        remote management must not take the uplink down). ``sent(mid, nbytes)``: each
        QoS 1 publish of ours, for the uplink's table of packet ids in flight."""
        self._client = client
        self._sent = sent
        try:
            self._connected(client)
        except Exception:
            log.exception("remote: internal error after connecting")

    def _connected(self, client: mqtt.Client) -> None:
        if self.state.phase is rollback.Phase.PENDING_CONFIRM:
            self._set_state(rollback.connected(self.state, self.agent.wall_ms()))
            log.info("remote: config version %d confirmed (broker reached)",
                     self.state.running_version)
        r = self.agent.cfg.remote
        if r.enabled:
            client.on_message = self.on_message
            client.on_subscribe = self._on_subscribe
            topics = []
            if r.config_push:
                topics.append(desired_topic(self.prefix, self.truck_id))
            if r.commands:
                topics.append(cmd_topic(self.prefix, self.truck_id))
            if topics and self.v5:
                client.subscribe([(t, SubscribeOptions(qos=1, noLocal=True)) for t in topics])
            elif topics:
                client.subscribe([(t, 1) for t in topics])
        if r.enabled or self.state.outcome is not None:
            self._publish_reported()

    def on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's callback (on the loop thread): queue for :meth:`run`."""
        self.counters["messages"] += 1
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.counters["dropped"] += 1
            log.warning("remote: request queue full; message on %s dropped", msg.topic)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      codes: Any, _props: Any) -> None:
        """A refused subscription (the broker's ACL) is logged: nothing will arrive."""
        for rc in codes or ():
            if getattr(rc, "is_failure", False):
                log.error("remote: the broker refused a subscription of this truck: %s "
                          "(check its ACL, docs/remote.md)", rc)

    def on_disconnected(self) -> None:
        """The connection is gone."""
        self._client = None

    def stats(self) -> dict[str, Any]:
        """Counters and the rollback state, for the ``status`` command."""
        s = self.state
        return {**self.counters, "phase": s.phase.value, "running_version": s.running_version,
                "handled_version": s.handled_version}

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Handle queued messages; advance the grace period while not connected."""
        last = time.monotonic()
        persisted = last
        while True:
            msg: mqtt.MQTTMessage | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    msg = await self._queue.get()
            now = time.monotonic()
            dt, last = now - last, now
            if self.state.phase is rollback.Phase.PENDING_CONFIRM and self._client is None:
                decision = rollback.waited(self.state, dt)
                self.state = decision.state
                if decision.roll_back is not None:
                    if self._roll_back(decision.roll_back):
                        return
                elif now - persisted >= PERSIST_EVERY_S:
                    persisted = now
                    self._set_state(self.state)
            if msg is not None:
                try:
                    await self._handle(msg)
                except Exception:  # a bug in one message must not end remote management
                    log.exception("remote: internal error handling a message on %s",
                                  msg.topic)

    def _roll_back(self, reason: str) -> bool:
        """Restore the previous file and restart onto it; False (staying on the new file,
        reported) when it cannot be restored."""
        log.error("remote: rolling back config version %s: %s", self.state.target_version,
                  reason)
        problem = files.restore_prev(self.config_path)
        if problem is not None:
            self._set_state(rollback.rollback_failed(self.state, reason, problem,
                                                     self.agent.wall_ms()))
            return False
        self.counters["rollbacks"] += 1
        self._set_state(rollback.rolled_back(self.state, reason, self.agent.wall_ms()))
        self.agent.request_stop(EX_RESTART, f"rollback: {reason}")
        return True

    async def _handle(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == desired_topic(self.prefix, self.truck_id):
            self._handle_desired(bytes(msg.payload))
        elif msg.topic == cmd_topic(self.prefix, self.truck_id):
            await self._handle_command(msg)

    # ------------------------------------------------------------------ config

    def _handle_desired(self, payload: bytes) -> None:
        r = self.agent.cfg.remote
        if not r.config_push or not payload:
            return  # an empty retained message clears the topic
        try:
            opened = open_message(payload, self.key, require_signed=r.require_signed)
            doc = desired.decode_desired(opened.doc, self.truck_id)
        except RefusedError as exc:
            self._count_refusal(exc)
            log.warning("remote: desired config refused: %s", exc.reason)
            version = _version_of(payload)
            # an unauthenticated message never moves the version window
            if (exc.code is not Code.UNAUTHORIZED and version is not None
                    and rollback.should_handle(self.state, version)):
                self._reject(version, (f"{int(exc.code)} {exc.reason}",))
            return
        if not rollback.should_handle(self.state, doc.version):
            log.debug("remote: desired version %d already handled", doc.version)
            return
        self._apply(doc)

    def _apply(self, doc: desired.Desired) -> None:
        running = self.agent.cfg
        name = str(self.config_path)
        try:
            data = tomllib.loads(doc.toml)
            new, warnings = check_parsed(data, source=self.config_path, name=name)
        except tomllib.TOMLDecodeError as exc:  # the same words as check-config's
            self._reject(doc.version, (f"{name}: TOML syntax error: {exc}",))
            return
        except ConfigError as exc:
            self._reject(doc.version, tuple(exc.lines()))
            return
        if new.truck_id != self.truck_id:
            self._reject(doc.version, ((f"{name}: truck_id: the pushed config is for "
                                        f"{new.truck_id!r}, this truck is {self.truck_id!r}"),))
            return
        change = desired.diff(running, new)
        for w in warnings:
            log.warning("remote: config version %d: %s", doc.version, w)
        text = doc.toml.encode()
        before = self.state
        try:
            if change.needs_restart:
                self._apply_with_restart(doc.version, new, change, text)
            else:
                self._apply_live(doc.version, new, change, text)
        except OSError as exc:  # e.g. the config folder is not writable (docs/remote.md)
            self.state = before
            self._reject(doc.version, ((f"{name}: cannot write the config file or its "
                                        f"state: {exc.strerror or exc}"),))

    def _apply_live(self, version: int, new: TruckConfig, change: desired.Diff,
                    text: bytes) -> None:
        # the file first: what check-config and the next start see is what runs
        if files.sha256_of(self.config_path) != _sha(text):
            files.install_config(self.config_path, text)
        try:
            self.agent.apply_live(new)
        except Exception:  # a component refused: the file is in place, a restart applies it
            log.exception("remote: config version %d could not be applied live; "
                          "restarting onto it", version)
            self._persist(rollback.begin(self.state, version, new_sha256=_sha(text),
                                         grace_s=new.remote.grace_s, live=change.live,
                                         restart=change.restart, at_ms=self.agent.wall_ms()))
            self._persist(rollback.written(self.state))
            self.agent.request_stop(EX_RESTART, f"config version {version} needs a restart")
            return
        self.counters["configs_applied"] += 1
        self._set_state(rollback.applied_live(self.state, version, change.live,
                                              self.agent.wall_ms()))
        log.info("remote: config version %d applied live (%s)", version,
                 ", ".join(change.live) or "no change")
        self._publish_reported()

    def _apply_with_restart(self, version: int, new: TruckConfig, change: desired.Diff,
                            text: bytes) -> None:
        # the state must be durable before the file moves: the start check reads it
        self._persist(rollback.begin(self.state, version, new_sha256=_sha(text),
                                     grace_s=new.remote.grace_s, live=change.live,
                                     restart=change.restart, at_ms=self.agent.wall_ms()))
        files.install_config(self.config_path, text)
        self._persist(rollback.written(self.state))
        self._publish_reported()
        log.warning("remote: config version %d written (%s need a restart); restarting, "
                    "rollback after %g s without a broker", version,
                    ", ".join(change.restart), self.state.grace_s)
        self.agent.request_stop(EX_RESTART, f"config version {version} needs a restart")

    def _reject(self, version: int, errors: tuple[str, ...]) -> None:
        self.counters["configs_rejected"] += 1
        self._set_state(rollback.rejected(self.state, version, errors, self.agent.wall_ms()))
        log.warning("remote: config version %d rejected: %s", version, "; ".join(errors))
        self._publish_reported()

    def _set_state(self, state: rollback.State) -> None:
        """Take ``state``; persisting it is best effort (the report still goes out)."""
        self.state = state
        try:
            files.write_state(self.config_path, state)
        except OSError as exc:
            log.error("remote: cannot persist the rollback state: %s", exc)  # noqa: TRY400

    def _persist(self, state: rollback.State) -> None:
        """Persist ``state``, then take it; raises OSError (nothing taken) if it cannot."""
        files.write_state(self.config_path, state)
        self.state = state

    def reported_payload(self) -> bytes:
        """The retained ``config/reported`` document."""
        s, o = self.state, self.state.outcome
        doc: dict[str, Any] = {
            "truck_id": self.truck_id, "running_version": s.running_version,
            "phase": s.phase.value, "agent_version": __version__,
            "ts_ms": self.agent.wall_ms(),
            "version": o.version if o else None, "status": o.status if o else None,
            "errors": list(o.errors) if o else [], "at_ms": o.at_ms if o else None,
            "live_keys": list(o.live) if o else [], "restart_keys": list(o.restart) if o else [],
        }
        return json.dumps(doc).encode()

    def _publish_reported(self) -> None:
        client = self._client
        if client is None:
            return
        payload = self.reported_payload()
        self._note(client.publish(reported_topic(self.prefix, self.truck_id), payload,
                                  qos=1, retain=True, properties=self._reply_props),
                   len(payload))

    # ------------------------------------------------------------------ commands

    async def _handle_command(self, msg: mqtt.MQTTMessage) -> None:
        r = self.agent.cfg.remote
        props = getattr(msg, "properties", None)
        resp_topic = getattr(props, "ResponseTopic", None) if self.v5 else None
        corr = getattr(props, "CorrelationData", None) if self.v5 else None
        now_ms = self.agent.wall_ms()
        req: commands.Request | None = None
        policy = commands.Policy(frozenset(r.commands), int(r.signature_window_s * 1000),
                                 self.v5)
        try:
            opened = open_message(bytes(msg.payload), self.key, require_signed=r.require_signed)
            req = commands.decode_request(opened)
            commands.check(req, policy, now_ms, has_response_topic=resp_topic is not None)
        except RefusedError as exc:
            self._count_refusal(exc)
            log.warning("remote: command %s refused: %d %s",
                        req.request_id if req else "(undecodable)", exc.code, exc.reason)
            if req is not None and exc.code is not Code.UNAUTHORIZED:
                self.window.add(req.request_id, int(exc.code))
                self._save_window()
            body: dict[str, Any] = {"reason": exc.reason}
            if req is None:  # refused before it was decoded: its id, unauthenticated
                body["request_id"] = _request_id_of(bytes(msg.payload))
            self._reply(resp_topic, corr, req, exc.code, body)
            return
        seen = self.window.seen(req.request_id)
        if seen is not None:
            self.counters["duplicates"] += 1
            log.info("remote: request %s already answered (%d): not run again",
                     req.request_id, seen)
            self._reply(resp_topic, corr, req, Code.DUPLICATE,
                        {"reason": "this request id already ran", "first_code": seen})
            return
        # remembered before it runs: a crash while running must not run it twice
        self.window.add(req.request_id, 0)
        self._save_window()
        code, body = await self._run_command(req)
        self.window.add(req.request_id, int(code))
        self._save_window()
        self.counters["commands_run"] += 1
        log.info("remote: command %s (%s) -> %d", req.name, req.request_id, code)
        self._reply(resp_topic, corr, req, code, body)
        if req.name == "restart" and code is Code.OK:
            await asyncio.sleep(RESTART_DELAY_S)
            self.agent.request_stop(EX_RESTART, f"restart command {req.request_id}")

    async def _run_command(self, req: commands.Request) -> tuple[Code, Any]:
        a = self.agent
        name = req.name
        if name == "ping":
            return Code.OK, {"pong": True, "agent_version": __version__}
        if name == "status":
            return Code.OK, {**a.snapshot(), "remote": self.stats()}  # counters of now
        if name == "position":
            fix = a.position()
            return (Code.OK, fix) if fix is not None else (
                Code.UNAVAILABLE, {"reason": "no GPS fix yet"})
        if name == "dtc":
            return Code.OK, {"active": a.dtcs()}
        if name == "flush":
            return Code.OK, {"committed_seq": await a.flush()}
        if name == "config_get":
            return Code.OK, {"running_version": self.state.running_version,
                             "config": redacted(a.cfg)}
        if name == "set_log_level":
            level = req.args.get("level")
            if level not in LEVELS:
                return Code.BAD_REQUEST, {"reason": f"level must be one of {', '.join(LEVELS)}"}
            logging.getLogger().setLevel(LEVELS[str(level)])
            return Code.OK, {"level": level, "persistent": False}
        if name == "restart":
            return Code.OK, {"restarting_in_s": RESTART_DELAY_S}
        if name == "retry_refused":  # docs/buffer.md, Dead letters
            return Code.OK, {"moved_back": await a.retry_refused()}
        return self._request_pgn(req)

    def _request_pgn(self, req: commands.Request) -> tuple[Code, Any]:
        can = self.agent.cfg.can
        if can is None:
            return Code.UNAVAILABLE, {"reason": "no [can] configured"}
        if can.listen_only:
            return Code.FORBIDDEN, {"reason": "[can] listen_only = true: this truck never "
                                              "transmits on the bus"}
        pgn = req.args.get("pgn")
        if isinstance(pgn, bool) or not isinstance(pgn, int) or not 0 <= pgn <= 0x3FFFF:
            return Code.BAD_REQUEST, {"reason": '"pgn" must be an integer 0..262143'}
        if not self.agent.request_pgn(pgn):
            return Code.UNAVAILABLE, {"reason": "the CAN bus is not running"}
        return Code.OK, {"requested": pgn}

    def _reply(self, resp_topic: str | None, corr: bytes | None,
               req: commands.Request | None, code: Code, body: Any) -> None:
        topic = resp_topic or (req.reply_to if req is not None else None)
        if topic is None:
            return
        if not commands.reply_topic_ok(topic, response_prefix(self.prefix, self.truck_id)):
            log.warning("remote: reply topic %r is not under %s: no reply sent", topic,
                        response_prefix(self.prefix, self.truck_id))
            return
        client = self._client
        if client is None:
            log.warning("remote: not connected; the reply to %s is lost",
                        req.request_id if req else "?")
            return
        props = None
        if self.v5:
            props = _props(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            if corr is not None:
                props.CorrelationData = corr
        payload = commands.encode_reply(req.request_id if req else None,
                                        req.name if req else None, code, body,
                                        truck_id=self.truck_id, now_ms=self.agent.wall_ms())
        self._note(client.publish(topic, payload, qos=1, properties=props), len(payload))

    def _note(self, info: mqtt.MQTTMessageInfo, nbytes: int) -> None:
        """Tell the uplink the packet id of a message we published."""
        if self._sent is not None and info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._sent(info.mid, nbytes)

    def _count_refusal(self, exc: RefusedError) -> None:
        self.counters["refused"] += 1
        if exc.code is Code.UNAUTHORIZED:
            key = "bad_signature" if "signature" in exc.reason else "unsigned_refused"
            self.counters[key] += 1
        elif exc.code is Code.EXPIRED:
            self.counters["expired"] += 1

    def _save_window(self) -> None:
        try:
            files.write_json(self._req_path, self.window.dump())
        except OSError as exc:
            log.warning("remote: cannot persist the request-id window: %s", exc)


def redacted(cfg: TruckConfig) -> dict[str, Any]:
    """The effective config as JSON-able tables; secret fields shown as ``"<redacted>"``."""
    return _tables(cfg)


def _tables(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        v = getattr(obj, f.name)
        if f.metadata.get("secret") and v is not None:
            out[f.name] = "<redacted>"
        elif dataclasses.is_dataclass(v):
            out[f.name] = _tables(v)
        elif isinstance(v, Mapping):
            out[f.name] = dict(v)
        elif isinstance(v, Path):
            out[f.name] = str(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


def _props(kind: int) -> Any:
    return Properties(kind)  # type: ignore[no-untyped-call]  # paho leaves it unannotated


def _sha(data: bytes) -> str:
    import hashlib  # noqa: PLC0415  # only on a push

    return hashlib.sha256(data).hexdigest()


def _request_id_of(payload: bytes) -> str | None:
    """The request id a refused message claims (echoed as a hint, never trusted)."""
    with contextlib.suppress(ValueError, UnicodeDecodeError, TypeError, AttributeError):
        doc = json.loads(payload)
        if "signed" in doc and isinstance(doc["signed"], str):
            doc = json.loads(doc["signed"])
        rid = doc.get("request_id")
        if isinstance(rid, str) and commands.REQUEST_ID_RE.fullmatch(rid):
            return rid
    return None


def _version_of(payload: bytes) -> int | None:
    """The version a refused desired document claims (so the refusal can be reported)."""
    with contextlib.suppress(ValueError, UnicodeDecodeError, TypeError, AttributeError):
        doc = json.loads(payload)
        if "signed" in doc and isinstance(doc["signed"], str):
            doc = json.loads(doc["signed"])
        v = doc.get("version")
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
    return None
