"""OEM signals from a DBC file, decoded with cantools (optional extra ``truckgw[dbc]``).

:func:`load_dbc` turns every 29-bit message of a DBC file into a :class:`DbcSpec`, an
entry of the J1939 decode table (:class:`drivers.j1939.Spec`): it is matched on the
**PGN** of the message's identifier, whatever the priority and source address the
frame arrives with. A PGN the built-in table already decodes keeps its built-in
decoding (the wire contract's field names stay the same), and the DBC message is skipped
with a warning (docs/can.md).
11-bit messages are skipped (J1939 uses 29-bit identifiers only).

The J1939-71 not-available rule applies to every DBC signal, on its raw bits, as it
does to the built-in table (cantools has no such notion): for a field of ``n`` bits,

- ``n >= 8``: raw values above ``0xFA``, ``0xFAFF``, ``0xFAFFFFFF`` (``n`` = 8, 16, 32;
  generally ``0xFB << (n - 8)`` minus one) are error or not available;
- ``2 <= n < 8``: the two highest codes (all ones: not available, all ones but the
  last: error);
- a single bit and IEEE float signals have no such encoding.

Field names are the DBC signal names in snake case with the unit as a suffix when the
DBC gives a known one (``"%"`` -> ``_pct``, ``"km/h"`` -> ``_kmh``, ...), so
``RetarderTorque [%]`` is recorded as ``retarder_torque_pct``. Decoding is pure; only
:func:`load_dbc` reads a file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.dbc_check import load_database

SignalValue = float | int | bool

#: DBC unit -> field name suffix (the project's unit convention, docs/wire-format.md).
UNIT_SUFFIX: Mapping[str, str] = {
    "%": "pct", "km/h": "kmh", "kph": "kmh", "kg": "kg", "degc": "c", "°c": "c", "c": "c",
    "deg c": "c", "v": "v", "km": "km", "l": "l", "rpm": "rpm", "kpa": "kpa", "h": "h",
    "l/h": "lph", "a": "a", "bar": "bar", "m": "m", "s": "s", "nm": "nm", "kw": "kw",
}


def field_name(signal: str, unit: str | None) -> str:
    """Snake-case name with the unit suffix (``EngTemp``, ``degC`` -> ``eng_temp_c``)."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|[^A-Za-z0-9]+", "_", signal).strip("_").lower()
    s = re.sub(r"_+", "_", s) or "signal"
    suffix = UNIT_SUFFIX.get((unit or "").strip().lower())
    if suffix and not s.endswith(f"_{suffix}"):
        s = f"{s}_{suffix}"
    return s


def max_valid_raw(bits: int) -> int:
    """Largest raw value of an ``bits``-wide J1939 field that is neither error nor n/a."""
    if bits >= 8:
        return (0xFB << (bits - 8)) - 1
    if bits >= 2:
        return (1 << bits) - 3
    return 1


@dataclass(frozen=True, slots=True)
class DbcSignal:
    """One DBC signal: its cantools name, our field name, scaling and raw limit."""

    dbc_name: str
    name: str
    scale: float
    offset: float
    mask: int
    limit: int  # largest valid unsigned raw value; -1: no n/a rule (float signal)


@dataclass(frozen=True, slots=True)
class DbcSpec:
    """A DBC message as a decode-table entry (same shape as :class:`drivers.j1939.PgnSpec`)."""

    pgn: int
    name: str
    signals: tuple[DbcSignal, ...]
    message: Any = field(repr=False, compare=False)  # cantools.database.can.Message
    min_len: int = 0
    supersedes: int = 0
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(s.name for s in self.signals))

    def decode(self, data: bytes | bytearray) -> dict[str, SignalValue]:
        """Every available signal of ``data``; error / not available / absent ones left out."""
        try:
            raw = self.message.decode(bytes(data), decode_choices=False, scaling=False,
                                      allow_truncated=True)
        except Exception:  # noqa: BLE001  # cantools raises several types on bad bus data
            return {}
        out: dict[str, SignalValue] = {}
        for sig in self.signals:
            r = raw.get(sig.dbc_name)
            if r is None:
                continue  # not in this frame (truncated, or another multiplexer value)
            if sig.limit >= 0 and (int(r) & sig.mask) > sig.limit:
                continue
            value = r * sig.scale + sig.offset
            if sig.limit >= 0 and sig.scale.is_integer() and sig.offset.is_integer():
                out[sig.name] = int(value)  # an integer field with an integer scaling
            elif math.isfinite(value):
                out[sig.name] = round(float(value), 6)
        return out


def _pgn(frame_id: int) -> int:
    pf = (frame_id >> 16) & 0xFF
    if pf < 240:
        return (frame_id >> 8) & 0x3FF00
    return (frame_id >> 8) & 0x3FFFF


def specs_from_database(db: Any) -> tuple[DbcSpec, ...]:
    """Decode-table entries of a loaded cantools database (29-bit messages only)."""
    out: dict[int, DbcSpec] = {}
    for msg in db.messages:
        if not msg.is_extended_frame:
            continue
        sigs = []
        for s in msg.signals:
            mask = (1 << s.length) - 1
            limit = -1 if s.is_float else max_valid_raw(s.length)
            sigs.append(DbcSignal(s.name, field_name(s.name, s.unit), float(s.scale),
                                  float(s.offset), mask, limit))
        pgn = _pgn(msg.frame_id)
        out[pgn] = DbcSpec(pgn, msg.name, tuple(sigs), msg, min_len=0)
    return tuple(out.values())


def load_dbc(path: str | Path) -> tuple[DbcSpec, ...]:
    """Read a DBC file into decode-table entries.

    Raises :class:`~config.errors.ConfigError` when cantools is not installed or the
    file does not parse (the same check :mod:`config.loader` runs at load time).
    """
    return specs_from_database(load_database(Path(path)))
