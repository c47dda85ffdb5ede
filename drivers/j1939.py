"""Pure SAE J1939 codec: identifier split, table-driven signal decoding, frame dispatch.

No I/O and no clock reads: :class:`J1939Decoder` takes ``(ts_ms, can_id, data)`` and
returns what the frame meant. Messages are matched on PGN (and reported with their
source address), never on the full identifier: the same PGN arrives with different
priorities on real buses.

Not-available and error encodings (J1939-71) give *no value*: the signal is absent
from the result, never a number such as 255.996 km/h.

The decode table :data:`PGN_TABLE` is data. Extend it with :func:`build_table` and
extra :class:`PgnSpec` entries (e.g. loaded from a DBC file by the caller).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Final, NamedTuple

from config.errors import DecodeError
from drivers.dm1 import PGN_DM1, Dm1, decode_dm1
from drivers.j1939_tp import PGN_TP_CM, PGN_TP_DT, TpReassembler

PGN_REQUEST: Final = 59904  # 0xEA00
PGN_HOURS: Final = 65253
PGN_LFC: Final = 65257
GLOBAL: Final = 0xFF

SignalValue = float | int | bool


class J1939Id(NamedTuple):
    """The parts of a 29-bit J1939 identifier."""

    priority: int
    pgn: int
    sa: int
    da: int  # 0xFF (global) for PDU2 messages


def split_id(can_id: int) -> J1939Id:
    """Split a 29-bit identifier: PGN with the PDU1/PDU2 rule, SA, DA, priority."""
    pf = (can_id >> 16) & 0xFF
    ps = (can_id >> 8) & 0xFF
    dp_pf = (can_id >> 8) & 0x3FF00  # EDP, DP and PF, already shifted into PGN position
    if pf < 240:
        return J1939Id((can_id >> 26) & 7, dp_pf, can_id & 0xFF, ps)
    return J1939Id((can_id >> 26) & 7, dp_pf | ps, can_id & 0xFF, GLOBAL)


def make_id(pgn: int, sa: int, *, da: int = GLOBAL, priority: int = 6) -> int:
    """Build a 29-bit identifier (PDU1 PGNs carry ``da`` in PS)."""
    if not 0 <= pgn <= 0x3FFFF or not 0 <= sa <= 0xFF or not 0 <= priority <= 7:
        raise ValueError("pgn, sa or priority out of range")
    if (pgn >> 8) & 0xFF < 240:
        pgn = (pgn & 0x3FF00) | (da & 0xFF)
    return priority << 26 | pgn << 8 | sa


def request_payload(pgn: int) -> bytes:
    """The 3 data bytes of a Request (PGN 59904) for ``pgn``: the PGN, little-endian."""
    return pgn.to_bytes(3, "little")


# --------------------------------------------------------------------------- table


class Kind(Enum):
    """Raw width of a signal and so its not-available / error encoding."""

    U8 = (1, 0xFA)
    U16 = (2, 0xFAFF)
    U32 = (4, 0xFAFFFFFF)
    BITS2 = (1, 0x01)  # 00 off, 01 on, 10 error, 11 not available

    def __init__(self, nbytes: int, max_valid: int) -> None:
        self.nbytes = nbytes
        self.max_valid = max_valid

    def __repr__(self) -> str:
        return f"Kind.{self.name}"


@dataclass(frozen=True, slots=True)
class Signal:
    """One SPN: where it sits and how to scale it.

    ``byte`` is numbered from 1 as in J1939-71; ``bit`` (BITS2 only) is the first
    bit of the pair, numbered from 1 (``bits 5-6`` -> ``bit=5``).
    """

    name: str
    spn: int
    byte: int
    kind: Kind
    scale: float = 1.0
    offset: float = 0.0
    bit: int = 1
    digits: int = 3

    @property
    def end(self) -> int:
        """One past the last data byte used (0-based)."""
        return self.byte - 1 + self.kind.nbytes

    def decode(self, data: bytes | bytearray) -> SignalValue | None:
        """Value of this signal in ``data``, or ``None`` if not available / error / absent."""
        i = self.byte - 1
        kind = self.kind
        if len(data) < i + kind.nbytes:
            return None
        if kind is Kind.BITS2:
            st = (data[i] >> (self.bit - 1)) & 3
            return None if st > 1 else st == 1
        if kind is Kind.U8:
            raw = data[i]
        elif kind is Kind.U16:
            raw = data[i] | data[i + 1] << 8
        else:
            raw = int.from_bytes(data[i : i + 4], "little")
        if raw > kind.max_valid:
            return None
        if self.scale == 1.0 and self.offset == int(self.offset):
            return raw + int(self.offset)
        return round(raw * self.scale + self.offset, self.digits)


@dataclass(frozen=True, slots=True)
class PgnSpec:
    """A parameter group and its signals."""

    pgn: int
    name: str
    signals: tuple[Signal, ...]

    @property
    def min_len(self) -> int:
        """Bytes a frame needs to carry every signal."""
        return max((s.end for s in self.signals), default=0)


def _s(  # noqa: PLR0917 - a compact table row reads best positionally
    name: str, spn: int, byte: int, kind: Kind, scale: float = 1.0, offset: float = 0.0,
    *, bit: int = 1, digits: int = 3,
) -> Signal:
    return Signal(name, spn, byte, kind, scale, offset, bit, digits)


#: The built-in decode table (J1939-71 positions; see docs/DOMAIN section 1).
DEFAULT_SPECS: tuple[PgnSpec, ...] = (
    PgnSpec(61444, "EEC1", (
        _s("engine_torque_pct", 513, 3, Kind.U8, 1, -125),
        _s("engine_speed_rpm", 190, 4, Kind.U16, 0.125),
    )),
    PgnSpec(61443, "EEC2", (
        _s("accelerator_pedal_pct", 91, 2, Kind.U8, 0.4, digits=1),
        _s("engine_load_pct", 92, 3, Kind.U8),
    )),
    PgnSpec(65265, "CCVS1", (
        _s("parking_brake", 70, 1, Kind.BITS2, bit=3),
        _s("vehicle_speed_kmh", 84, 2, Kind.U16, 1 / 256),
        _s("brake_switch", 597, 4, Kind.BITS2, bit=5),
    )),
    PgnSpec(65276, "DD", (_s("fuel_level_pct", 96, 2, Kind.U8, 0.4, digits=1),)),
    PgnSpec(65266, "LFE", (
        _s("fuel_rate_lph", 183, 1, Kind.U16, 0.05, digits=2),
        _s("instant_fuel_economy_kmpl", 184, 3, Kind.U16, 1 / 512),
    )),
    PgnSpec(65257, "LFC", (
        _s("trip_fuel_l", 182, 1, Kind.U32, 0.5, digits=1),
        _s("total_fuel_used_l", 250, 5, Kind.U32, 0.5, digits=1),
    )),
    PgnSpec(65253, "HOURS", (_s("engine_hours_h", 247, 1, Kind.U32, 0.05, digits=2),)),
    PgnSpec(65262, "ET1", (
        _s("coolant_temp_c", 110, 1, Kind.U8, 1, -40),
        _s("oil_temp_c", 175, 3, Kind.U16, 0.03125, -273, digits=2),
    )),
    PgnSpec(65263, "EFL/P1", (_s("oil_pressure_kpa", 100, 4, Kind.U8, 4),)),
    PgnSpec(65217, "VDHR", (_s("total_distance_km", 917, 1, Kind.U32, 0.005),)),
    PgnSpec(65248, "VD", (_s("total_distance_km", 245, 5, Kind.U32, 0.125),)),
)


def build_table(specs: Iterable[PgnSpec]) -> Mapping[int, PgnSpec]:
    """Index specs by PGN; a later spec for the same PGN replaces an earlier one."""
    return MappingProxyType({s.pgn: s for s in specs})


PGN_TABLE: Mapping[int, PgnSpec] = build_table(DEFAULT_SPECS)


def decode_signals(spec: PgnSpec, data: bytes | bytearray) -> dict[str, SignalValue]:
    """Decode every available signal of ``spec`` from ``data``; missing ones are absent."""
    out: dict[str, SignalValue] = {}
    for sig in spec.signals:
        v = sig.decode(data)
        if v is not None:
            out[sig.name] = v
    return out


# --------------------------------------------------------------------------- dispatch


@dataclass(frozen=True, slots=True)
class SignalUpdate:
    """Signals decoded from one message of source ``sa``."""

    sa: int
    pgn: int
    values: dict[str, SignalValue]
    missing: tuple[str, ...] = ()  # signals of this PGN that were not available / error


@dataclass(frozen=True, slots=True)
class DtcUpdate:
    """A DM1 from source ``sa``."""

    sa: int
    dm1: Dm1


Decoded = SignalUpdate | DtcUpdate

COUNTER_NAMES = ("frames", "decoded", "ignored", "decode_errors", "dm1", "tp_messages")


class J1939Decoder:
    """Turns raw CAN frames into :class:`SignalUpdate` / :class:`DtcUpdate` results.

    Feeds TP.CM/TP.DT into a bounded :class:`TpReassembler` and decodes reassembled
    messages (DM1 and table PGNs) the same way as single frames. Counts everything in
    :attr:`counters`; never raises on bus input.
    """

    def __init__(
        self, table: Mapping[int, PgnSpec] = PGN_TABLE, tp: TpReassembler | None = None
    ) -> None:
        self.table = table
        self.tp = tp if tp is not None else TpReassembler()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    def feed(
        self, ts_ms: int, can_id: int, data: bytes | bytearray, *, extended: bool = True
    ) -> Decoded | None:
        """Decode one frame received at ``ts_ms``."""
        c = self.counters
        c["frames"] += 1
        if not extended:
            c["ignored"] += 1  # J1939 uses 29-bit identifiers only
            return None
        pf = (can_id >> 16) & 0xFF
        sa = can_id & 0xFF
        if pf < 240:
            pgn = (can_id >> 8) & 0x3FF00
            if pgn == PGN_TP_DT:
                msg = self.tp.on_dt(ts_ms, sa, (can_id >> 8) & 0xFF, data)
                if msg is None:
                    return None
                c["tp_messages"] += 1
                return self._payload(msg.pgn, sa, msg.data)
            if pgn == PGN_TP_CM:
                self.tp.on_cm(ts_ms, sa, (can_id >> 8) & 0xFF, data)
                return None
        else:
            pgn = (can_id >> 8) & 0x3FFFF
        return self._payload(pgn, sa, data)

    def _payload(self, pgn: int, sa: int, data: bytes | bytearray) -> Decoded | None:
        c = self.counters
        spec = self.table.get(pgn)
        if spec is not None:
            if len(data) < spec.min_len:
                c["decode_errors"] += 1  # still decode what the short frame carries
            c["decoded"] += 1
            values = decode_signals(spec, data)
            if len(values) == len(spec.signals):
                return SignalUpdate(sa, pgn, values)
            missing = tuple(s.name for s in spec.signals if s.name not in values)
            return SignalUpdate(sa, pgn, values, missing)
        if pgn == PGN_DM1:
            try:
                dm1 = decode_dm1(data)
            except DecodeError:
                c["decode_errors"] += 1
                return None
            c["dm1"] += 1
            return DtcUpdate(sa, dm1)
        c["ignored"] += 1
        return None

    def expire(self, ts_ms: int) -> None:
        """Time out stalled TP sessions (call about once a second)."""
        self.tp.expire(ts_ms)
