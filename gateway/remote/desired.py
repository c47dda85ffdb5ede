"""The desired configuration: its document, and what a change to it takes.

Pure: no I/O, no clock reads. The shell validates the TOML text with the loader of
``check-config`` (:func:`config.loader.check_parsed`) and hands both configs here.

The document on ``{prefix}/{truck_id}/config/desired`` (retained, may be signed,
:mod:`gateway.remote.wire`)::

    {"version": 7, "toml": "<the whole truck TOML file>", "truck_id": "TRK-0001"}

``version`` is an integer >= 1; a truck handles a version only once and only if it is
above every version it handled before (so the retained document delivered again at
every connect, or an old one replayed, does nothing). ``truck_id`` is optional; when
present it must name this truck (and so must the TOML's own ``truck_id``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from config.schema import TruckConfig
from gateway.remote.wire import Code, RefusedError

#: The config keys that change while the agent runs (a key, or a table whose every key
#: does). Every other key is written to the file and takes a restart. docs/remote.md
#: has the same table; tests/remote/test_desired.py keeps the two in step.
LIVE_KEYS: tuple[str, ...] = (
    "gps.sampling",
    "can.sampling",
    "buffer.ttl_s",
    "mqtt.live_share",
    "mqtt.bandwidth_bytes_per_s",
    "mqtt.status_interval_s",
    "metrics.interval_s",
    "log.level",
)
#: Largest TOML text accepted in a desired document.
MAX_TOML_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Desired:
    """A decoded desired-configuration document."""

    version: int
    toml: str


@dataclass(frozen=True, slots=True)
class Diff:
    """The keys that differ between the running config and a desired one."""

    live: tuple[str, ...]
    restart: tuple[str, ...]

    @property
    def needs_restart(self) -> bool:
        """Some key only takes effect at the next start."""
        return bool(self.restart)

    @property
    def empty(self) -> bool:
        """Nothing differs."""
        return not self.live and not self.restart


def decode_desired(doc: dict[str, Any], truck_id: str) -> Desired:
    """The desired document of this truck, or :class:`RefusedError` (``BAD_REQUEST``)."""
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RefusedError(Code.BAD_REQUEST, '"version" must be an integer >= 1')
    text = doc.get("toml")
    if not isinstance(text, str) or not text.strip():
        raise RefusedError(Code.BAD_REQUEST, '"toml" must be the truck\'s TOML file as text')
    if len(text.encode()) > MAX_TOML_BYTES:
        raise RefusedError(Code.BAD_REQUEST, f'"toml" is larger than {MAX_TOML_BYTES} bytes')
    named = doc.get("truck_id")
    if named is not None and named != truck_id:
        raise RefusedError(Code.FORBIDDEN,
                           f"this document is for truck {named!r}, not {truck_id!r}")
    return Desired(version, text)


def is_live(key: str) -> bool:
    """Whether config key ``key`` (dotted) changes without a restart."""
    return any(key == k or key.startswith(k + ".") for k in LIVE_KEYS)


def leaf_keys(cls: type[Any] = TruckConfig, prefix: str = "") -> list[str]:
    """Every key of the schema, dotted; a table of numbers (``ttl_s``) is one key."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        inner = _dataclass_of(hints[f.name])
        out.extend(leaf_keys(inner, key + ".") if inner is not None else [key])
    return out


def diff(old: TruckConfig, new: TruckConfig) -> Diff:
    """Split the keys that differ into live ones and ones that need a restart."""
    keys = _changed(old, new, "")
    return Diff(tuple(k for k in keys if is_live(k)), tuple(k for k in keys if not is_live(k)))


def _changed(old: Any, new: Any, prefix: str) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(old):
        if f.metadata.get("internal"):
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
            out.extend(_changed(a, b, key + "."))
        elif _plain(a) != _plain(b):
            out.append(key)  # a value, a table of numbers, or a section added or removed
    return out


def _plain(v: Any) -> Any:
    return dict(v) if isinstance(v, typing.Mapping) else v


def _dataclass_of(tp: Any) -> type[Any] | None:
    """The dataclass in ``tp`` (``GpsConfig | None`` -> ``GpsConfig``), if any."""
    if dataclasses.is_dataclass(tp):
        return typing.cast(type[Any], tp)
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return typing.cast(type[Any], arg)
    return None
