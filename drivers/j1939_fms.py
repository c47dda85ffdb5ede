"""Pure codecs for the identity messages of J1939 / FMS-Standard 4 that are not signals.

- **Address Claimed** (PGN 60928, 0xEE00): the 64-bit NAME an ECU claims its source
  address (SA) with. :class:`IdentityTable` keeps the NAME per SA, so a consumer of the
  status notices when an ECU moves to another address (events keep ``src``).
- **FMS identity** (PGN 64977, 0xFDD1): which FMS-Standard version the truck's FMS
  gateway offers (bytes 2-5, ASCII) and whether it supports diagnostics and requests
  (byte 1, 2-bit states).
- **DI**, driver identification (PGN 65131, 0xFE6B, usually over the transport
  protocol): ASCII fields each ended by ``*`` (driver 1, driver 2).
- **VW**, vehicle weight (PGN 65258, 0xFEEA): one message per axle, the axle location
  in byte 1 (high nibble: axle number from the front), the axle weight in bytes 2-3
  (0.5 kg/bit); trailer and cargo weight in bytes 4-5 and 6-7 (2 kg/bit). Field names
  depend on the axle, so this is a function rather than a table row.

Everything here takes bytes and returns values; nothing reads a clock or does I/O.
Not-available and error encodings (J1939-71) give no value, never a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PGN_ADDRESS_CLAIMED: Final = 60928  # 0xEE00
PGN_FMS: Final = 64977  # 0xFDD1
PGN_DI: Final = 65131  # 0xFE6B
PGN_VW: Final = 65258  # 0xFEEA

#: The most ASCII characters kept of one driver identification (a tachograph card
#: number is 16; the field is bounded so a malformed DI cannot grow the table).
MAX_DRIVER_ID = 32
NULL_SA = 0xFE  # "cannot claim address": not an address a NAME is kept for


@dataclass(frozen=True, slots=True)
class Name:
    """The fields of a J1939 NAME (J1939-81), as claimed in an Address Claimed."""

    raw: int

    @property
    def identity_number(self) -> int:
        """Bits 0-20: the ECU's serial number, unique per manufacturer."""
        return self.raw & 0x1FFFFF

    @property
    def manufacturer(self) -> int:
        """Bits 21-31: the SAE manufacturer code."""
        return (self.raw >> 21) & 0x7FF

    @property
    def function(self) -> int:
        """Bits 40-47: what the ECU does (0 engine, 3 transmission, 0x17 instrument cluster...)."""
        return (self.raw >> 40) & 0xFF

    @property
    def arbitrary_address(self) -> bool:
        """Bit 63: the ECU may claim another address when its preferred one is taken."""
        return bool(self.raw >> 63)

    def as_dict(self) -> dict[str, object]:
        """The NAME for the status file: hex value and its main fields."""
        return {"name": f"{self.raw:016X}", "manufacturer": self.manufacturer,
                "function": self.function, "identity": self.identity_number}


def decode_name(data: bytes | bytearray) -> Name | None:
    """The NAME of an Address Claimed payload (8 bytes, little-endian), or None if short."""
    if len(data) < 8:
        return None
    return Name(int.from_bytes(data[:8], "little"))


def _state2(b: int) -> bool | None:
    st = b & 3
    return None if st > 1 else st == 1


def _ascii(data: bytes | bytearray) -> str | None:
    """Printable ASCII of ``data`` (padding 0x00/0xFF/space dropped), None if nothing."""
    text = bytes(c for c in data if 0x20 <= c < 0x7F).decode("ascii").strip()
    return text or None


@dataclass(frozen=True, slots=True)
class FmsIdentity:
    """What the FMS gateway says of itself (PGN 64977)."""

    version: str | None  # e.g. "0400" for FMS-Standard 04.00; None if not available
    diagnostics: bool | None
    requests: bool | None

    def as_dict(self) -> dict[str, object]:
        """The identity for the status file (unknown parts absent)."""
        out: dict[str, object] = {}
        if self.version is not None:
            out["version"] = self.version
        if self.diagnostics is not None:
            out["diagnostics"] = self.diagnostics
        if self.requests is not None:
            out["requests"] = self.requests
        return out


def decode_fms(data: bytes | bytearray) -> FmsIdentity | None:
    """FMS-Standard interface identity (PGN 64977), or None if the frame is short."""
    if len(data) < 5:
        return None
    return FmsIdentity(_ascii(data[1:5]), _state2(data[0]), _state2(data[0] >> 2))


def decode_di(data: bytes | bytearray) -> tuple[str | None, str | None]:
    """Driver 1 and driver 2 identification of a DI payload (``*``-ended ASCII fields).

    A field that is empty, or not ended by ``*`` (a truncated message), is None. Each
    is cut to :data:`MAX_DRIVER_ID` characters.
    """
    parts = bytes(data).split(b"*")
    complete = parts[:-1]  # the text after the last '*' is padding or a truncated field
    ids = [_ascii(p[:MAX_DRIVER_ID]) for p in complete[:2]]
    while len(ids) < 2:
        ids.append(None)
    return ids[0], ids[1]


def decode_vw(data: bytes | bytearray) -> tuple[dict[str, float], tuple[str, ...]]:
    """VW (PGN 65258): ``axle<N>_weight_kg``, ``trailer_weight_kg``, ``cargo_weight_kg``.

    Returns (available values, names carried but not available). The axle number is
    the high nibble of the axle location (1 = front axle); 0 or 0xF gives no axle field.
    """
    values: dict[str, float] = {}
    missing: list[str] = []
    if len(data) >= 3:
        axle = data[0] >> 4
        if 0 < axle < 0xF:
            name = f"axle{axle}_weight_kg"
            raw = data[1] | data[2] << 8
            if raw <= 0xFAFF:
                values[name] = raw * 0.5
            else:
                missing.append(name)
    for name, i in (("trailer_weight_kg", 3), ("cargo_weight_kg", 5)):
        if len(data) < i + 2:
            continue
        raw = data[i] | data[i + 1] << 8
        if raw <= 0xFAFF:
            values[name] = raw * 2
        else:
            missing.append(name)
    return values, tuple(missing)


class IdentityTable:
    """Who is on the bus: NAME per source address, FMS identity, driver identifications.

    Bounded by the address space: at most one entry per SA (0-253) in each map. When a
    NAME claims a new address, its old address is forgotten (the ECU moved); the number
    of such moves is counted in :attr:`moves`.
    """

    def __init__(self) -> None:
        self.names: dict[int, Name] = {}
        self.fms: dict[int, FmsIdentity] = {}
        self.drivers: dict[int, tuple[str | None, str | None]] = {}
        self.claims = 0
        self.moves = 0

    def on_claim(self, sa: int, data: bytes | bytearray) -> bool:
        """An Address Claimed from ``sa``; True if it carried a NAME."""
        name = decode_name(data)
        if name is None or sa >= NULL_SA:
            return False
        self.claims += 1
        old = [a for a, n in self.names.items() if n == name and a != sa]
        for a in old:
            del self.names[a]
            self.moves += 1
        self.names[sa] = name
        return True

    def on_fms(self, sa: int, data: bytes | bytearray) -> bool:
        """An FMS identity from ``sa``; True if it decoded."""
        ident = decode_fms(data)
        if ident is None:
            return False
        self.fms[sa] = ident
        return True

    def on_di(self, sa: int, data: bytes | bytearray) -> None:
        """A driver identification from ``sa``."""
        self.drivers[sa] = decode_di(data)

    def names_dict(self) -> dict[str, dict[str, object]]:
        """NAME per SA (two hex digits), for ``CanDriver.stats()``."""
        return {f"{sa:02X}": n.as_dict() for sa, n in sorted(self.names.items())}

    def fms_dict(self) -> dict[str, dict[str, object]]:
        """FMS identity per SA (two hex digits)."""
        return {f"{sa:02X}": f.as_dict() for sa, f in sorted(self.fms.items())}

    def drivers_dict(self) -> dict[str, dict[str, str]]:
        """Driver identifications per SA (two hex digits); unknown ones absent."""
        return {
            f"{sa:02X}": {k: v for k, v in (("driver1", d[0]), ("driver2", d[1])) if v}
            for sa, d in sorted(self.drivers.items())
        }
