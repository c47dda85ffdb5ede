"""The J1939 decode table: signal shapes, the not-available rule, the built-in PGNs.

Data, not code paths: each :class:`PgnSpec` lists its signals (SPN, byte position,
raw width, scale, offset), and :func:`decode_signals` applies J1939-71's not-available
and error encodings (such values are absent from the result). :mod:`drivers.j1939`
dispatches frames to it; :mod:`drivers.dbc` adds specs from a DBC file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Final, Protocol, TypeVar

PGN_HOURS: Final = 65253
PGN_LFC: Final = 65257
PGN_VD: Final = 65248
PGN_VDHR: Final = 65217
PGN_HRLFC: Final = 64777
SignalValue = float | int | bool


class Kind(Enum):
    """Raw width of a signal and so its not-available / error encoding.

    Bit fields (``BITSn``, inside one byte) follow J1939-71: all ones is not available,
    all ones but the last bit is error; ``BITS2`` decodes to a bool, the others to an
    int code (a :class:`Signal` may lower the largest valid code with ``limit``).
    """

    U8 = (1, 0xFA, 0)
    U16 = (2, 0xFAFF, 0)
    U32 = (4, 0xFAFFFFFF, 0)
    BITS2 = (1, 0x01, 2)  # 00 off, 01 on, 10 error, 11 not available
    BITS3 = (1, 0x05, 3)  # 110 error, 111 not available
    BITS4 = (1, 0x0D, 4)  # 1110 error, 1111 not available
    BITS5 = (1, 0x1D, 5)  # 11110 error, 11111 not available

    def __init__(self, nbytes: int, max_valid: int, width: int) -> None:
        self.nbytes = nbytes
        self.max_valid = max_valid
        self.width = width  # bits of a bit field; 0 for whole bytes

    def __repr__(self) -> str:
        return f"Kind.{self.name}"


@dataclass(frozen=True, slots=True)
class Signal:
    """One SPN: where it sits and how to scale it.

    ``byte`` is numbered from 1 as in J1939-71; ``bit`` (bit fields only) is the first
    bit of the field, numbered from 1 (``bits 5-6`` -> ``bit=5``). ``limit`` is the
    largest valid raw value when the SPN defines fewer codes than its width allows
    (a tachograph working state has four); by default the :class:`Kind`'s.
    """

    name: str
    spn: int
    byte: int
    kind: Kind
    scale: float = 1.0
    offset: float = 0.0
    bit: int = 1
    digits: int = 3
    limit: int = -1

    def __post_init__(self) -> None:
        if self.limit < 0:
            object.__setattr__(self, "limit", self.kind.max_valid)

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
        if kind is Kind.U8:
            raw = data[i]
        elif kind is Kind.U16:
            raw = data[i] | data[i + 1] << 8
        elif kind is Kind.U32:
            raw = int.from_bytes(data[i : i + 4], "little")
        else:
            st = (data[i] >> (self.bit - 1)) & ((1 << kind.width) - 1)
            if st > self.limit:
                return None
            return st == 1 if kind is Kind.BITS2 else st
        if raw > self.limit:
            return None
        if self.scale == 1.0 and self.offset == int(self.offset):
            return raw + int(self.offset)
        return round(raw * self.scale + self.offset, self.digits)


class Spec(Protocol):
    """What the decoder needs of a table entry (:class:`PgnSpec`, ``drivers.dbc.DbcSpec``)."""

    @property
    def pgn(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def min_len(self) -> int: ...
    @property
    def supersedes(self) -> int: ...

    def decode(self, data: bytes | bytearray) -> dict[str, SignalValue]:
        """Every available signal of ``data``; not available / error ones absent."""
        ...


@dataclass(frozen=True, slots=True)
class PgnSpec:
    """A parameter group and its signals.

    ``supersedes`` is the PGN of a lower-resolution twin whose same-named signals this
    one replaces (0: none).
    """

    pgn: int
    name: str
    signals: tuple[Signal, ...]
    supersedes: int = 0
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    min_len: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once: the decoder reads both for every frame
        object.__setattr__(self, "names", tuple(s.name for s in self.signals))
        object.__setattr__(self, "min_len", max((s.end for s in self.signals), default=0))

    def decode(self, data: bytes | bytearray) -> dict[str, SignalValue]:
        """Every available signal of ``data`` (see :func:`decode_signals`)."""
        return decode_signals(self, data)


def _s(  # noqa: PLR0917 - a compact table row reads best positionally
    name: str, spn: int, byte: int, kind: Kind, scale: float = 1.0, offset: float = 0.0,
    *, bit: int = 1, digits: int = 3, limit: int = -1,
) -> Signal:
    return Signal(name, spn, byte, kind, scale, offset, bit, digits, limit)


#: The built-in decode table (J1939-71 positions; docs/can.md and docs/fleet-data.md).
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
        _s("cruise_control_active", 595, 4, Kind.BITS2, bit=1),
        _s("brake_switch", 597, 4, Kind.BITS2, bit=5),
        _s("clutch_switch", 598, 4, Kind.BITS2, bit=7),
        _s("pto_state", 976, 7, Kind.BITS5, bit=1),  # 0 off, 5 set, ... (SPN 976)
    )),
    PgnSpec(65276, "DD", (_s("fuel_level_pct", 96, 2, Kind.U8, 0.4, digits=1),)),
    PgnSpec(65266, "LFE", (
        _s("fuel_rate_lph", 183, 1, Kind.U16, 0.05, digits=2),
        _s("instant_fuel_economy_kmpl", 184, 3, Kind.U16, 1 / 512),
    )),
    PgnSpec(PGN_LFC, "LFC", (
        _s("trip_fuel_l", 182, 1, Kind.U32, 0.5, digits=1),
        _s("total_fuel_used_l", 250, 5, Kind.U32, 0.5, digits=1),
    )),
    PgnSpec(PGN_HRLFC, "HRLFC", (
        _s("trip_fuel_l", 5053, 1, Kind.U32, 0.001),
        _s("total_fuel_used_l", 5054, 5, Kind.U32, 0.001),
    ), supersedes=PGN_LFC),
    PgnSpec(PGN_HOURS, "HOURS", (_s("engine_hours_h", 247, 1, Kind.U32, 0.05, digits=2),)),
    PgnSpec(65262, "ET1", (
        _s("coolant_temp_c", 110, 1, Kind.U8, 1, -40),
        _s("oil_temp_c", 175, 3, Kind.U16, 0.03125, -273, digits=2),
    )),
    PgnSpec(65263, "EFL/P1", (_s("oil_pressure_kpa", 100, 4, Kind.U8, 4),)),
    PgnSpec(PGN_VDHR, "VDHR", (
        _s("total_distance_km", 917, 1, Kind.U32, 0.005),
        _s("trip_distance_km", 918, 5, Kind.U32, 0.005),
    ), supersedes=PGN_VD),
    PgnSpec(PGN_VD, "VD", (
        _s("trip_distance_km", 244, 1, Kind.U32, 0.125),
        _s("total_distance_km", 245, 5, Kind.U32, 0.125),
    )),
    # FMS-Standard 4 signals (docs/fleet-data.md)
    PgnSpec(61445, "ETC2", (
        _s("selected_gear", 524, 1, Kind.U8, 1, -125),
        _s("current_gear", 523, 4, Kind.U8, 1, -125),
    )),
    PgnSpec(61441, "EBC1", (
        _s("abs_active", 563, 1, Kind.BITS2, bit=5),
        _s("brake_pedal_pct", 521, 2, Kind.U8, 0.4, digits=1),
    )),
    PgnSpec(65132, "TCO1", (
        _s("driver1_working_state", 1612, 1, Kind.BITS3, bit=1, limit=3),
        _s("driver2_working_state", 1613, 1, Kind.BITS3, bit=4, limit=3),
        _s("tacho_vehicle_motion", 1611, 1, Kind.BITS2, bit=7),
        _s("driver1_time_state", 1617, 2, Kind.BITS4, bit=1, limit=8),
        _s("driver1_card_present", 1615, 2, Kind.BITS2, bit=5),
        _s("tacho_overspeed", 1614, 2, Kind.BITS2, bit=7),
        _s("driver2_time_state", 1618, 3, Kind.BITS4, bit=1, limit=8),
        _s("driver2_card_present", 1616, 3, Kind.BITS2, bit=5),
        _s("tacho_reverse", 1619, 4, Kind.BITS2, bit=7),
        _s("tacho_speed_kmh", 1624, 7, Kind.U16, 1 / 256),
    )),
    PgnSpec(64932, "PTODE", (_s("pto_engaged", 3948, 7, Kind.BITS2, bit=1),)),
    PgnSpec(65216, "SERV", (_s("service_distance_km", 914, 2, Kind.U16, 5, -160_635),)),
    PgnSpec(65269, "AMB", (
        _s("barometric_pressure_kpa", 108, 1, Kind.U8, 0.5, digits=1),
        _s("ambient_air_temp_c", 171, 4, Kind.U16, 0.03125, -273, digits=2),
    )),
    PgnSpec(65271, "VEP1", (
        _s("charging_potential_v", 167, 3, Kind.U16, 0.05, digits=2),
        _s("battery_potential_v", 168, 5, Kind.U16, 0.05, digits=2),
    )),
    PgnSpec(65110, "AT1T1I", (
        _s("def_tank_level_pct", 1761, 1, Kind.U8, 0.4, digits=1),
        _s("def_tank_temp_c", 3031, 2, Kind.U8, 1, -40),
    )),
)


S = TypeVar("S", bound=Spec)


def build_table(specs: Iterable[S]) -> Mapping[int, S]:
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
