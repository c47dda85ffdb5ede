"""Commands: the request codec, the request-id window, expiry, the allow-list.

Pure: no I/O, no clock reads (``now_ms``, the truck's wall clock, is passed in).

A request on ``{prefix}/{truck_id}/cmd`` (may be signed, :mod:`gateway.remote.wire`)::

    {"request_id": "8c1f...", "name": "ping", "args": {}, "ts_ms": 1764700000000,
     "expires_at_ms": 1764700030000, "reply_to": "fleet/TRK-0001/cmd/res/ops-7"}

- ``request_id``: 1..128 printable characters; a request id the truck already ran is
  answered ``409 duplicate`` and not run again (a bounded window, persisted);
- ``name``: one of :data:`config.schema.REMOTE_COMMANDS` and in ``[remote] commands``;
- ``args``: an object (optional);
- ``ts_ms``: when the fleet sent it (UNIX ms); required when signed, and then within
  ``[remote] signature_window_s`` of the truck's clock (replay protection);
- ``expires_at_ms``: optional; a request past it is answered ``410 expired`` and not run
  (MQTT 5 message expiry does the same at the broker);
- ``reply_to``: the reply topic when the message has no MQTT 5 response topic (MQTT
  3.1.1). Either must lie under ``{prefix}/{truck_id}/cmd/res/``.

The reply, published to the response topic with the request's correlation data::

    {"request_id": "8c1f...", "name": "ping", "code": 200, "result": "ok",
     "body": {...}, "truck_id": "TRK-0001", "ts_ms": 1764700000012}
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config.schema import REMOTE_COMMANDS
from gateway.remote.wire import Code, Opened, RefusedError

REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
#: Request ids remembered against duplicates and replays.
WINDOW_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded command request."""

    request_id: str
    name: str
    args: Mapping[str, Any]
    ts_ms: int | None
    expires_at_ms: int | None
    reply_to: str | None
    signed: bool


def decode_request(opened: Opened) -> Request:
    """The request in an opened message, or :class:`RefusedError` (``BAD_REQUEST``)."""
    doc = opened.doc
    rid = doc.get("request_id")
    if not isinstance(rid, str) or not REQUEST_ID_RE.fullmatch(rid):
        raise RefusedError(Code.BAD_REQUEST, '"request_id" must be 1..128 printable characters')
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise RefusedError(Code.BAD_REQUEST, '"name" must be a command name')
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise RefusedError(Code.BAD_REQUEST, '"args" must be an object')
    ts, exp = _opt_int(doc, "ts_ms"), _opt_int(doc, "expires_at_ms")
    reply_to = doc.get("reply_to")
    if reply_to is not None and not isinstance(reply_to, str):
        raise RefusedError(Code.BAD_REQUEST, '"reply_to" must be a topic')
    return Request(rid, name, args, ts, exp, reply_to, opened.signed)


def _opt_int(doc: Mapping[str, Any], key: str) -> int | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise RefusedError(Code.BAD_REQUEST, f'"{key}" must be an integer (UNIX ms)')
    return v


@dataclass(frozen=True, slots=True)
class Policy:
    """What the truck accepts (from ``[remote]`` and ``[mqtt] protocol``)."""

    allowed: frozenset[str]
    signature_window_ms: int
    v5: bool


def check(req: Request, policy: Policy, now_ms: int, *, has_response_topic: bool) -> None:
    """Raise :class:`RefusedError` unless ``req`` may run now (the dedup is separate)."""
    if req.signed:
        if req.ts_ms is None:
            raise RefusedError(Code.UNAUTHORIZED, 'a signed request needs "ts_ms"')
        if abs(now_ms - req.ts_ms) > policy.signature_window_ms:
            raise RefusedError(Code.UNAUTHORIZED,
                          "ts_ms is outside the signature window of the truck's clock")
    elif not policy.v5:
        raise RefusedError(Code.UNAUTHORIZED,
                      "MQTT 3.1.1 (no response topic, no expiry): only signed requests run")
    if req.expires_at_ms is not None and now_ms > req.expires_at_ms:
        raise RefusedError(Code.EXPIRED, f"expired {now_ms - req.expires_at_ms} ms ago")
    if req.name not in REMOTE_COMMANDS:
        raise RefusedError(Code.UNKNOWN, f"unknown command {req.name!r}")
    if req.name not in policy.allowed:
        raise RefusedError(Code.FORBIDDEN, f"command {req.name!r} is not in [remote] commands")
    if not has_response_topic and req.reply_to is None:
        raise RefusedError(Code.BAD_REQUEST, "no response topic and no reply_to")


def reply_topic_ok(topic: str, prefix: str) -> bool:
    """A reply goes only under the truck's own ``cmd/res/`` (and never to a wildcard)."""
    return topic.startswith(prefix) and len(topic) > len(prefix) and not any(
        c in topic for c in "#+\x00")


def encode_reply(req_id: str | None, name: str | None, code: Code, body: Any, *,
                 truck_id: str, now_ms: int) -> bytes:
    """The JSON reply."""
    result = "ok" if code is Code.OK else code.name.lower()
    return json.dumps({"request_id": req_id, "name": name, "code": int(code),
                       "result": result, "body": body, "truck_id": truck_id,
                       "ts_ms": now_ms}, default=str).encode()


@dataclass(slots=True)
class RequestWindow:
    """The last :data:`WINDOW_SIZE` request ids and their result codes, oldest first."""

    size: int = WINDOW_SIZE
    _order: deque[str] = field(default_factory=deque)
    _codes: dict[str, int] = field(default_factory=dict)

    def seen(self, request_id: str) -> int | None:
        """The code this id was answered with, or None if it is new."""
        return self._codes.get(request_id)

    def add(self, request_id: str, code: int) -> None:
        """Remember ``request_id`` (forgetting the oldest beyond the size)."""
        if request_id in self._codes:
            self._codes[request_id] = code
            return
        self._order.append(request_id)
        self._codes[request_id] = code
        while len(self._order) > self.size:
            self._codes.pop(self._order.popleft(), None)

    def __len__(self) -> int:
        return len(self._order)

    def dump(self) -> list[list[Any]]:
        """A JSON-able form, oldest first."""
        return [[rid, self._codes[rid]] for rid in self._order]

    @classmethod
    def load(cls, items: Iterable[Any], size: int = WINDOW_SIZE) -> RequestWindow:
        """Back from :meth:`dump` (malformed entries are skipped)."""
        w = cls(size)
        for item in items:
            if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], int)):
                w.add(item[0], item[1])
        return w
