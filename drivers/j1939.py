"""Pure SAE J1939 codec: identifier split, table-driven signal decoding, frame dispatch.

No I/O and no clock reads: :class:`J1939Decoder` takes ``(ts_ms, can_id, data)`` and
returns what the frame meant. Messages are matched on PGN (and reported with their
source address), never on the full identifier: the same PGN arrives with different
priorities on real buses.

Not-available and error encodings (J1939-71) give *no value*: the signal is absent
from the result, never a number such as 255.996 km/h.

The decode table :data:`PGN_TABLE` is data: the engine PGNs plus the FMS-Standard 4
signals (docs/fleet-data.md). Extend it with :func:`build_table` and extra specs, such
as those :mod:`drivers.dbc` builds from a DBC file: anything with the :class:`Spec`
shape (``pgn``, ``name``, ``names``, ``min_len``, ``supersedes``, ``decode``).

High-resolution counters win: a spec with ``supersedes`` (HRLFC over LFC, VDHR over
VD) makes the decoder drop the superseded PGN's same-named signals from a source that
sent the high-resolution one within :data:`HIRES_HOLD_MS`.

Identity messages (Address Claimed, FMS identity, DI) update
:attr:`J1939Decoder.identity` (:mod:`drivers.j1939_fms`) instead of giving signals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from config.errors import DecodeError
from drivers.dm1 import PGN_DM1, Dm1, decode_dm1
from drivers.j1939_fms import (
    PGN_ADDRESS_CLAIMED,
    PGN_DI,
    PGN_FMS,
    PGN_VW,
    IdentityTable,
    decode_vw,
)
from drivers.j1939_table import (
    DEFAULT_SPECS,
    PGN_HOURS,
    PGN_HRLFC,
    PGN_LFC,
    PGN_TABLE,
    PGN_VD,
    PGN_VDHR,
    Kind,
    PgnSpec,
    Signal,
    SignalValue,
    Spec,
    build_table,
    decode_signals,
)
from drivers.j1939_tp import PGN_TP_CM, PGN_TP_DT, TpReassembler

__all__ = [
    "DEFAULT_SPECS", "GLOBAL", "PGN_HOURS", "PGN_HRLFC", "PGN_LFC", "PGN_REQUEST", "PGN_TABLE",
    "PGN_VD", "PGN_VDHR", "Decoded", "DtcUpdate", "J1939Decoder", "J1939Id", "Kind",
    "PgnSpec", "Signal", "SignalUpdate", "SignalValue", "Spec", "build_table",
    "decode_signals", "make_id", "request_payload", "split_id",
]

PGN_REQUEST: Final = 59904  # 0xEA00
GLOBAL: Final = 0xFF
#: PGNs decoded outside the table (DM1, transport protocol, identity, weights per axle).
OTHER_PGNS: Final = frozenset({PGN_DM1, PGN_TP_CM, PGN_TP_DT, PGN_ADDRESS_CLAIMED, PGN_FMS,
                               PGN_DI, PGN_VW, PGN_REQUEST})
#: How long a high-resolution PGN from a source keeps its low-resolution twin muted.
HIRES_HOLD_MS: Final = 10_000



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

COUNTER_NAMES = ("frames", "decoded", "ignored", "decode_errors", "dm1", "tp_messages",
                 "identity", "superseded")


class J1939Decoder:
    """Turns raw CAN frames into :class:`SignalUpdate` / :class:`DtcUpdate` results.

    Feeds TP.CM/TP.DT into a bounded :class:`TpReassembler` and decodes reassembled
    messages (DM1, DI and table PGNs) the same way as single frames. Address Claimed,
    FMS identity and DI go to :attr:`identity`. Counts everything in :attr:`counters`;
    never raises on bus input.
    """

    def __init__(
        self, table: Mapping[int, Spec] = PGN_TABLE, tp: TpReassembler | None = None
    ) -> None:
        self.table = table
        self.tp = tp if tp is not None else TpReassembler()
        self.identity = IdentityTable()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        # low-resolution PGN -> the signal names its high-resolution twin replaces
        self._twins: dict[int, frozenset[str]] = {}
        for spec in table.values():
            low = table.get(spec.supersedes) if spec.supersedes else None
            if low is not None:
                self._twins[low.pgn] = frozenset(spec.names) & frozenset(low.names)
        self._hires: dict[tuple[int, int], int] = {}  # (SA, low PGN) -> ts of the twin

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
                return self._payload(ts_ms, msg.pgn, sa, msg.data)
            if pgn == PGN_TP_CM:
                self.tp.on_cm(ts_ms, sa, (can_id >> 8) & 0xFF, data)
                return None
        else:
            pgn = (can_id >> 8) & 0x3FFFF
        return self._payload(ts_ms, pgn, sa, data)

    def _payload(self, ts_ms: int, pgn: int, sa: int, data: bytes | bytearray) -> Decoded | None:
        c = self.counters
        spec = self.table.get(pgn)
        if spec is not None:
            if len(data) < spec.min_len:
                c["decode_errors"] += 1  # still decode what the short frame carries
            c["decoded"] += 1
            values = spec.decode(data)
            names = spec.names
            if spec.supersedes:
                self._hires[(sa, spec.supersedes)] = ts_ms
            elif pgn in self._twins:
                names, values = self._mute(ts_ms, pgn, sa, names, values)
            if len(values) == len(names):
                return SignalUpdate(sa, pgn, values)
            missing = tuple(n for n in names if n not in values)
            return SignalUpdate(sa, pgn, values, missing)
        if pgn == PGN_DM1:
            try:
                dm1 = decode_dm1(data)
            except DecodeError:
                c["decode_errors"] += 1
                return None
            c["dm1"] += 1
            return DtcUpdate(sa, dm1)
        return self._other(pgn, sa, data)

    def _mute(
        self, ts_ms: int, pgn: int, sa: int, names: tuple[str, ...],
        values: dict[str, SignalValue],
    ) -> tuple[tuple[str, ...], dict[str, SignalValue]]:
        """Drop the signals a recent high-resolution twin from ``sa`` already gives."""
        seen = self._hires.get((sa, pgn))
        if seen is None or not 0 <= ts_ms - seen <= HIRES_HOLD_MS:
            return names, values
        shared = self._twins[pgn]
        self.counters["superseded"] += 1
        return (tuple(n for n in names if n not in shared),
                {k: v for k, v in values.items() if k not in shared})

    def _other(self, pgn: int, sa: int, data: bytes | bytearray) -> Decoded | None:
        """PGNs outside the table: weights per axle, identity messages."""
        c = self.counters
        ident = self.identity
        if pgn == PGN_VW:
            c["decoded"] += 1
            values, missing = decode_vw(data)
            return SignalUpdate(sa, pgn, dict(values), missing)
        if pgn == PGN_ADDRESS_CLAIMED:
            ok = ident.on_claim(sa, data)
        elif pgn == PGN_FMS:
            ok = ident.on_fms(sa, data)
        elif pgn == PGN_DI:
            ident.on_di(sa, data)
            ok = True
        else:
            c["ignored"] += 1
            return None
        c["identity" if ok else "decode_errors"] += 1
        return None

    def expire(self, ts_ms: int) -> None:
        """Time out stalled TP sessions (call about once a second)."""
        self.tp.expire(ts_ms)
