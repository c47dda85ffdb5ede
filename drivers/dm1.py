"""Pure decoder of J1939-73 DM1, active diagnostic trouble codes (PGN 65226).

Layout: byte 1 lamp status (bits 8-7 MIL, 6-5 red stop, 4-3 amber warning, 2-1
protect), byte 2 flash codes (ignored), then 4 bytes per DTC::

    SPN = b3 | b4 << 8 | (b5 >> 5) << 16;  FMI = b5 & 0x1F;  CM = b6 >> 7;  OC = b6 & 0x7F

A DM1 without faults carries one all-zero DTC (``00 FF 00 00 00 00 FF FF``); the
last packet of a multi-packet DM1 is padded with ``FF``. Both are dropped. A lamp in
the error (10) or not-available (11) state is left out of :attr:`Dm1.lamps`.

DTCs with the conversion-method bit set (CM = 1, J1939-73 versions 1-3) are decoded
with the version-4 layout like every other tool does; ``cm`` is kept so a consumer
can tell.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import DecodeError

PGN_DM1 = 65226

#: Lamp name -> bit shift of its 2-bit status in byte 1.
LAMPS: tuple[tuple[str, int], ...] = (
    ("mil", 6),
    ("red_stop", 4),
    ("amber_warning", 2),
    ("protect", 0),
)
_LAMP_STATE = ("off", "on")


@dataclass(frozen=True, slots=True, order=True)
class Dtc:
    """One diagnostic trouble code."""

    spn: int
    fmi: int
    oc: int
    cm: int = 0

    def as_dict(self) -> dict[str, int]:
        """The wire-contract form ``{"spn", "fmi", "oc"}``."""
        return {"spn": self.spn, "fmi": self.fmi, "oc": self.oc}


@dataclass(frozen=True, slots=True)
class Dm1:
    """A decoded DM1: lamp states (``"on"``/``"off"``) and the active codes, in wire order."""

    lamps: tuple[tuple[str, str], ...]
    active: tuple[Dtc, ...]

    def lamps_dict(self) -> dict[str, str]:
        """Lamps as a mapping; unavailable lamps are absent."""
        return dict(self.lamps)

    def key(self) -> tuple[tuple[tuple[str, str], ...], frozenset[tuple[int, int]]]:
        """What counts as "a change": the lamps and the set of (SPN, FMI) codes.

        The occurrence count is left out on purpose: it may tick up while a fault
        stays active and the fleet wants an event when faults come and go.
        """
        return self.lamps, frozenset((d.spn, d.fmi) for d in self.active)


def decode_dm1(data: bytes | bytearray) -> Dm1:
    """Decode a DM1 payload (8 bytes single-frame, or a reassembled TP message).

    Raises :class:`DecodeError` for a payload shorter than one lamp byte, flash byte
    and DTC (6 bytes).
    """
    if len(data) < 6:
        raise DecodeError(f"DM1 payload of {len(data)} bytes, need at least 6")
    b0 = data[0]
    lamps = []
    for name, shift in LAMPS:
        st = (b0 >> shift) & 3
        if st < 2:
            lamps.append((name, _LAMP_STATE[st]))
    active: list[Dtc] = []
    seen: set[tuple[int, int]] = set()
    for i in range(2, len(data) - 3, 4):
        b3, b4, b5, b6 = data[i], data[i + 1], data[i + 2], data[i + 3]
        if b3 == b4 == b5 == b6 == 0xFF or (b3 | b4 | b5) == 0:
            continue  # TP padding, or the "no fault" placeholder (SPN 0 FMI 0)
        spn = b3 | b4 << 8 | (b5 >> 5) << 16
        fmi = b5 & 0x1F
        if (spn, fmi) in seen:
            continue  # some ECUs repeat a code; one fault is one entry
        seen.add((spn, fmi))
        active.append(Dtc(spn=spn, fmi=fmi, oc=b6 & 0x7F, cm=b6 >> 7))
    return Dm1(lamps=tuple(lamps), active=tuple(active))
