"""The remote-management wire contract: topics, result codes, the signed envelope.

Pure: no I/O, no clock reads. docs/remote.md and docs/wire-format.md describe it for a
fleet side written in any language.

Topics, under the uplink's ``{prefix}/{truck_id}``:

- ``config/desired`` (fleet -> truck, retained): :mod:`gateway.remote.desired`;
- ``config/reported`` (truck -> fleet, retained): what the truck runs and the outcome of
  the latest desired version;
- ``cmd`` (fleet -> truck): a request (:mod:`gateway.remote.commands`);
- ``cmd/res/...`` (truck -> fleet): replies; the MQTT 5 response topic must lie under it.

A message is either the document itself (a JSON object) or a signed envelope
``{"signed": "<the document as JSON text>", "sig": "<hex HMAC-SHA256 of that text's
UTF-8 bytes under the truck's key>"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from config.errors import GatewayError

#: HMAC algorithm of the signed envelope
SIG_ALG = "hmac-sha256"


def desired_topic(prefix: str, truck_id: str) -> str:
    """Where the fleet keeps a truck's desired configuration (retained)."""
    return f"{prefix}/{truck_id}/config/desired"


def reported_topic(prefix: str, truck_id: str) -> str:
    """Where the truck reports what it runs (retained)."""
    return f"{prefix}/{truck_id}/config/reported"


def cmd_topic(prefix: str, truck_id: str) -> str:
    """Where the fleet sends a truck's commands."""
    return f"{prefix}/{truck_id}/cmd"


def response_prefix(prefix: str, truck_id: str) -> str:
    """Every reply topic lies under this (the one place the ACL lets the truck answer)."""
    return f"{prefix}/{truck_id}/cmd/res/"


class Code(IntEnum):
    """Result codes of a reply (HTTP-like, so a script can branch on them)."""

    OK = 200
    BAD_REQUEST = 400
    UNAUTHORIZED = 401  # unsigned when signing is required, bad signature, stale ts
    FORBIDDEN = 403  # not in the allow-list, or refused by the truck's own settings
    UNKNOWN = 404  # no such command
    DUPLICATE = 409  # this request id already ran
    EXPIRED = 410  # past its expiry
    ERROR = 500  # the command ran and failed
    NOT_AVAILABLE = 501  # the command exists but this truck cannot do it (yet)
    UNAVAILABLE = 503  # a component the command needs is not running


class RefusedError(GatewayError):
    """A message that is not acted on: its :class:`Code` and the reason (never a secret)."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Opened:
    """A message's document, and whether a valid signature covered it."""

    doc: dict[str, Any]
    signed: bool


def sign(doc: dict[str, Any], key: bytes) -> bytes:
    """The signed envelope of ``doc`` (what a fleet side publishes)."""
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"signed": text, "sig": mac, "alg": SIG_ALG}).encode()


def open_message(payload: bytes, key: bytes | None, *, require_signed: bool) -> Opened:
    """Decode a message, verify its signature if it carries one.

    Raises :class:`RefusedError`: ``BAD_REQUEST`` for what is not a JSON object,
    ``UNAUTHORIZED`` for a missing signature when ``require_signed``, a signature the
    truck cannot check (no key) or a wrong one.
    """
    outer = _json_object(payload, "message")
    if "sig" not in outer and "signed" not in outer:
        if require_signed:
            raise RefusedError(Code.UNAUTHORIZED, "unsigned: this truck requires signed requests")
        return Opened(outer, signed=False)
    text, mac = outer.get("signed"), outer.get("sig")
    if not isinstance(text, str) or not isinstance(mac, str):
        raise RefusedError(Code.BAD_REQUEST, 'a signed envelope needs "signed" and "sig" strings')
    if outer.get("alg", SIG_ALG) != SIG_ALG:
        raise RefusedError(Code.UNAUTHORIZED, f"unknown signature algorithm (only {SIG_ALG})")
    if key is None:
        raise RefusedError(Code.UNAUTHORIZED, "signed, but this truck has no remote.key_file")
    want = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac.lower()):
        raise RefusedError(Code.UNAUTHORIZED, "bad signature")
    return Opened(_json_object(text.encode(), "signed document"), signed=True)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RefusedError(Code.BAD_REQUEST, f"{what} is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RefusedError(Code.BAD_REQUEST, f"{what} is not a JSON object")
    return obj
