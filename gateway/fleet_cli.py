# ruff: noqa: T201  # a command-line tool: it prints (as gateway/cli.py does)
"""``truckgw fleet``: the fleet side of remote management, against any MQTT 5 broker.

- ``truckgw fleet config push TRUCK FILE``: publish FILE (the truck's whole TOML file) as
  the retained desired configuration with the next version, then wait for the truck's
  verdict on ``config/reported``;
- ``truckgw fleet config get TRUCK``: print the truck's retained report (and the version
  of the retained desired configuration);
- ``truckgw fleet cmd TRUCK NAME [KEY=VALUE ...]``: send a command (MQTT 5 response
  topic + correlation data + message expiry), print the reply;
- ``truckgw fleet watch [TRUCK]``: print what the trucks publish, one line per event
  (``TOPIC JSON``) in whichever encoding it travelled, and the status messages: the
  ``mosquitto_sub`` of docs/raspberry-pi.md for compact batches (not stored anywhere;
  ``truckgw sink`` is the consumer that stores).

Exit codes (for scripts): 0 applied / the command succeeded; 1 rejected or rolled back /
the command failed (5xx); 3 the truck refused the command (4xx: bad request, signature,
allow-list, duplicate, expired); 4 no verdict or reply within ``--timeout``; 66 FILE
cannot be read; 69 the broker cannot be reached or refused us; 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from config.errors import WireError
from gateway import wire
from gateway.remote.wire import (
    cmd_topic,
    desired_topic,
    reported_topic,
    response_prefix,
    sign,
)

EX_OK, EX_FAILED, EX_USAGE, EX_REFUSED, EX_TIMEOUT = 0, 1, 2, 3, 4
EX_NOINPUT, EX_UNAVAILABLE = 66, 69
#: How long to wait for retained messages after subscribing.
RETAINED_WAIT_S = 1.0
FINAL = frozenset({"applied", "rejected", "rolled_back", "rollback_failed"})


class _Conn:
    """A connected paho client (its own network thread) and a queue of what arrives."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        cid = args.client_id or f"truckgw-fleet-{uuid.uuid4().hex[:12]}"
        self.client_id = cid
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid,
                        protocol=MQTTProtocolVersion.MQTTv5)
        if args.username:
            pw = None
            if args.password_file:
                pw = Path(args.password_file).read_text().splitlines()[0]
            c.username_pw_set(args.username, pw)
        if args.ca_file:
            ctx = ssl.create_default_context(cafile=args.ca_file)
            if args.cert_file:
                ctx.load_cert_chain(args.cert_file, args.key_file_tls)
            c.tls_set_context(ctx)
        c.on_message = lambda _c, _u, msg: self.inbox.put(msg)
        self._connected = threading.Event()
        self._rc: Any = None

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            self._rc = rc
            self._connected.set()

        c.on_connect = on_connect
        self.client = c
        c.connect(args.host, args.port, keepalive=30, clean_start=True)
        c.loop_start()
        if not self._connected.wait(args.connect_timeout):
            self.close()
            raise OSError(f"no CONNACK from {args.host}:{args.port}")
        if getattr(self._rc, "is_failure", False):
            self.close()
            raise OSError(f"{args.host}:{args.port} refused the connection: {self._rc}")

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        done.wait(5.0)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                props: Any = None) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10.0)
        code = getattr(info, "rc", 0)
        if code != mqtt.MQTT_ERR_SUCCESS:
            raise OSError(f"publish to {topic} failed: {mqtt.error_string(code)}")

    def messages(self, until: float) -> Iterator[mqtt.MQTTMessage]:
        while (left := until - time.monotonic()) > 0:
            try:
                yield self.inbox.get(timeout=left)
            except queue.Empty:
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def _connected(args: argparse.Namespace) -> Iterator[_Conn]:
    conn = _Conn(args)
    try:
        yield conn
    finally:
        conn.close()


def _key(args: argparse.Namespace) -> bytes | None:
    return Path(args.key_file).read_bytes().strip() if args.key_file else None


def _json(payload: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        obj = json.loads(payload)
        if isinstance(obj, dict):
            if isinstance(obj.get("signed"), str):
                inner = json.loads(obj["signed"])
                return inner if isinstance(inner, dict) else None
            return obj
    return None


def _retained(conn: _Conn, *topics: str) -> dict[str, dict[str, Any]]:
    """The retained documents on ``topics`` (waits :data:`RETAINED_WAIT_S`)."""
    conn.subscribe(*topics)
    out: dict[str, dict[str, Any]] = {}
    for msg in conn.messages(time.monotonic() + RETAINED_WAIT_S):
        doc = _json(bytes(msg.payload))
        if doc is not None and msg.retain:
            out[msg.topic] = doc
        if len(out) == len(topics):
            break
    return out


# ---------------------------------------------------------------------- commands


def cmd_config_push(args: argparse.Namespace) -> int:
    """Publish FILE as the desired configuration and wait for the truck's verdict."""
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return EX_NOINPUT
    key = _key(args)
    rtopic = reported_topic(args.topic_prefix, args.truck)
    dtopic = desired_topic(args.topic_prefix, args.truck)
    with _connected(args) as conn:
        seen = _retained(conn, rtopic, dtopic)
        version = args.version or 1 + max(
            [_int(seen.get(rtopic, {}).get(k)) for k in ("version", "running_version")]
            + [_int(seen.get(dtopic, {}).get("version"))])
        doc = {"version": version, "toml": text, "truck_id": args.truck}
        payload = sign(doc, key) if key else json.dumps(doc).encode()
        props = _props()
        props.ContentType = "application/json"
        conn.publish(dtopic, payload, retain=True, props=props)
        print(f"pushed version {version} to {dtopic}", file=sys.stderr)
        if args.no_wait:
            return EX_OK
        for msg in conn.messages(time.monotonic() + args.timeout):
            rep = _json(bytes(msg.payload)) if msg.topic == rtopic else None
            if rep is None or rep.get("version") != version:
                continue
            status = rep.get("status")
            if status == "pending":
                print(f"version {version}: pending (restart needed for "
                      f"{', '.join(rep.get('restart_keys', []))})", file=sys.stderr)
            if status in FINAL:
                print(json.dumps(rep, indent=1))
                return EX_OK if status == "applied" else EX_FAILED
    print(f"no verdict on version {version} within {args.timeout:g} s", file=sys.stderr)
    return EX_TIMEOUT


def cmd_config_get(args: argparse.Namespace) -> int:
    """Print the truck's retained report and the retained desired version."""
    rtopic = reported_topic(args.topic_prefix, args.truck)
    dtopic = desired_topic(args.topic_prefix, args.truck)
    with _connected(args) as conn:
        seen = _retained(conn, rtopic, dtopic)
    if rtopic not in seen:
        print(f"no report retained on {rtopic}", file=sys.stderr)
        return EX_TIMEOUT
    out = {"reported": seen[rtopic], "desired_version": seen.get(dtopic, {}).get("version")}
    print(json.dumps(out, indent=1))
    return EX_OK


def cmd_cmd(args: argparse.Namespace) -> int:
    """Send one command and wait for its reply."""
    try:
        cargs = dict(_arg(a) for a in args.args)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EX_USAGE
    key = _key(args)
    rid = args.request_id or uuid.uuid4().hex
    now_ms = time.time_ns() // 1_000_000
    expires = args.expires if args.expires is not None else args.timeout
    with _connected(args) as conn:
        rtopic = f"{response_prefix(args.topic_prefix, args.truck)}{conn.client_id}"
        conn.subscribe(rtopic)
        doc = {"request_id": rid, "name": args.name, "args": cargs, "ts_ms": now_ms,
               "expires_at_ms": now_ms + int(expires * 1000), "reply_to": rtopic}
        payload = sign(doc, key) if key else json.dumps(doc).encode()
        props = _props()
        props.ResponseTopic = rtopic
        props.CorrelationData = rid.encode()
        props.MessageExpiryInterval = max(1, int(expires))
        props.ContentType = "application/json"
        conn.publish(cmd_topic(args.topic_prefix, args.truck), payload, props=props)
        for msg in conn.messages(time.monotonic() + args.timeout):
            rep = _json(bytes(msg.payload))
            corr = getattr(msg.properties, "CorrelationData", None)
            if rep is None or (rep.get("request_id") != rid and corr != rid.encode()):
                continue
            print(json.dumps(rep, indent=1))
            code = _int(rep.get("code"))
            if code == 200:
                return EX_OK
            return EX_REFUSED if 400 <= code < 500 else EX_FAILED
    print(f"no reply to {args.name} ({rid}) within {args.timeout:g} s", file=sys.stderr)
    return EX_TIMEOUT


def cmd_watch(args: argparse.Namespace) -> int:
    """Print the events and status messages of one truck (or all) as they arrive."""
    truck = args.truck or "+"
    until = time.monotonic() + (args.duration if args.duration is not None else 1e9)
    shown = 0
    with _connected(args) as conn:
        conn.subscribe(f"{args.topic_prefix}/{truck}/events/#",
                       wire.status_topic(args.topic_prefix, truck))
        for msg in conn.messages(until):
            payload = bytes(msg.payload)
            if "/events" not in msg.topic:
                print(f"{msg.topic} {payload.decode(errors='replace')}", flush=True)
                continue
            ctype = getattr(msg.properties, "ContentType", None) if msg.properties else None
            try:
                batch = wire.decode_payload(payload, compact=wire.is_compact(msg.topic, ctype))
            except WireError as exc:
                print(f"{msg.topic}: undecodable batch of {len(payload)} bytes: {exc}",
                      file=sys.stderr, flush=True)
                continue
            for ev in batch["events"]:
                print(f"{msg.topic} {json.dumps(ev, ensure_ascii=False)}", flush=True)
                shown += 1
            if args.count is not None and shown >= args.count:
                break
    return EX_OK


def _arg(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"arguments are KEY=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _props() -> Any:
    return Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: unannotated


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (OSError, ssl.SSLError) as exc:
            print(f"broker {args.host}:{args.port}: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
    return run


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``truckgw fleet``."""
    p = sub.add_parser("fleet", help="the fleet side: push configs, send commands, watch",
                       description="Remote configuration and commands over MQTT 5 "
                       "(docs/remote.md).")
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--topic-prefix", default="fleet", help="topic prefix (default fleet)")
    p.add_argument("--client-id", default=None, help="MQTT client id (default random)")
    p.add_argument("--username", default=None)
    p.add_argument("--password-file", default=None, help="first line is the password")
    p.add_argument("--ca-file", default=None, help="TLS: verify the broker with this CA")
    p.add_argument("--cert-file", default=None, help="TLS client certificate")
    p.add_argument("--tls-key-file", dest="key_file_tls", default=None,
                   help="TLS client key")
    p.add_argument("--key-file", default=None,
                   help="the truck's HMAC key: sign what is sent (docs/remote.md)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S")
    fsub = p.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND")

    c = fsub.add_parser("config", help="desired configuration")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    push = csub.add_parser("push", help="publish a truck's TOML file as its desired config")
    push.add_argument("truck")
    push.add_argument("file", type=Path)
    push.add_argument("--version", type=int, default=None,
                      help="the version (default: one above what the truck reported)")
    push.add_argument("--timeout", type=float, default=60.0, metavar="S",
                      help="wait this long for applied / rejected / rolled back (default 60)")
    push.add_argument("--no-wait", action="store_true", help="publish and exit")
    push.set_defaults(func=_guarded(cmd_config_push))
    get = csub.add_parser("get", help="print the truck's retained report")
    get.add_argument("truck")
    get.set_defaults(func=_guarded(cmd_config_get))

    m = fsub.add_parser("cmd", help="send a command and print the reply")
    m.add_argument("truck")
    m.add_argument("name")
    m.add_argument("args", nargs="*", metavar="KEY=VALUE", help="VALUE is JSON or a string")
    m.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="wait this long for the reply (default 15)")
    m.add_argument("--expires", type=float, default=None, metavar="S",
                   help="the command expires after S seconds (default: --timeout)")
    m.add_argument("--request-id", default=None, help="default: a random id")
    m.set_defaults(func=_guarded(cmd_cmd))

    w = fsub.add_parser("watch", help="print the events and status messages as they arrive",
                        description="Subscribe to a truck's (default: every truck's) events "
                        "and status; print one line per event, 'TOPIC JSON', in whichever "
                        "wire encoding it travelled (json, compact, compact-dict).")
    w.add_argument("truck", nargs="?", default=None, help="default: every truck")
    w.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    w.add_argument("--count", type=int, default=None, metavar="N",
                   help="stop after N events")
    w.set_defaults(func=_guarded(cmd_watch))
