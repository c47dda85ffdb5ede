"""Faults on demand: a schedule of windows and the pure byte manglers they use.

A fault is written ``KIND@START+DURATION`` in seconds of simulator run time, e.g.
``tunnel@30+20`` (no GPS fix from 30 s to 50 s) or ``dtc@10`` (a fault episode with
several DTCs at 10 s). Kinds:

- ``garbage``: binary bytes (UBX-like frames, noise) between NMEA sentences
- ``badsum``: NMEA sentences with wrong checksums, a doubled ``$``, truncated lines
- ``tunnel``: loss of fix (RMC status V, GGA quality 0, empty position fields)
- ``gps-vanish`` / ``can-vanish``: the serial port / CAN adapter disappears and returns
- ``can-silence``: the bus goes quiet (ECUs keep running, nothing reaches the adapter)
- ``tp-malformed``: a DM1 BAM with a lost TP.DT packet
- ``dtc``: a fault episode (several DTCs, sent by BAM)

Driving scenarios for the derived fleet events (docs/fleet-data.md), in the same form:

- ``corner``: the driver takes the next real curve he has not started braking for too
  fast (a harsh cornering; :meth:`sim.truck.Truck.fast_corner`); no duration
- ``card-out``: the driver pulls his tachograph card at the first standstill with the
  ignition on from START and puts it back at the end of the window (default 30 s;
  ``+0``: it stays out until the next ignition on); :meth:`sim.truck.Truck.remove_card`
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from config.errors import GatewayError

KINDS = frozenset({"garbage", "badsum", "tunnel", "gps-vanish", "can-vanish", "can-silence",
                   "tp-malformed", "dtc", "corner", "card-out"})
#: kinds that happen once at their start: a duration means nothing (default 0)
ONE_SHOT = frozenset({"dtc", "tp-malformed", "corner"})
DEFAULT_S = {"card-out": 30.0}
_SPEC = re.compile(r"(?P<kind>[a-z-]+)@(?P<start>\d+(?:\.\d+)?)(?:\+(?P<dur>\d+(?:\.\d+)?))?")


class FaultSpecError(GatewayError):
    """A ``--fault`` argument does not parse."""


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """One fault, active in ``[start_s, start_s + duration_s)``."""

    kind: str
    start_s: float
    duration_s: float

    def active(self, t_s: float) -> bool:
        """Whether the window covers ``t_s``."""
        return self.start_s <= t_s < self.start_s + max(self.duration_s, 1e-9)


def parse_fault(spec: str) -> FaultWindow:
    """Parse ``KIND@START[+DURATION]``."""
    m = _SPEC.fullmatch(spec.strip())
    if not m or m["kind"] not in KINDS:
        raise FaultSpecError(
            f"bad fault {spec!r}: expected KIND@START[+SECONDS] with KIND in "
            f"{', '.join(sorted(KINDS))}"
        )
    kind = m["kind"]
    dur = float(m["dur"]) if m["dur"] else (0.0 if kind in ONE_SHOT else DEFAULT_S.get(kind, 10.0))
    return FaultWindow(m["kind"], float(m["start"]), dur)


class FaultPlan:
    """The fault windows of one run; ask which are active and which just started."""

    def __init__(self, windows: list[FaultWindow] | None = None) -> None:
        self.windows = list(windows or [])
        self._fired: set[int] = set()

    @classmethod
    def parse(cls, specs: list[str]) -> FaultPlan:
        """Build a plan from ``--fault`` arguments."""
        return cls([parse_fault(s) for s in specs])

    def active(self, t_s: float) -> set[str]:
        """Kinds active at ``t_s``."""
        return {w.kind for w in self.windows if w.active(t_s)}

    def fire_once(self, t_s: float) -> list[FaultWindow]:
        """Windows whose start has passed and that were not reported yet (one-shot kinds)."""
        out = []
        for i, w in enumerate(self.windows):
            if i not in self._fired and t_s >= w.start_s:
                self._fired.add(i)
                out.append(w)
        return out


def garbage(rng: random.Random, n: int = 48) -> bytes:
    """Noise as seen on real GPS ports: a UBX-framed binary packet plus random bytes."""
    payload = bytes(rng.randrange(256) for _ in range(n // 2))
    ubx = b"\xb5\x62\x01\x07" + len(payload).to_bytes(2, "little") + payload + b"\x00\x00"
    return ubx + bytes(rng.randrange(256) for _ in range(n // 2))


def corrupt_sentences(data: bytes, rng: random.Random) -> bytes:
    """Break NMEA sentences the ways receivers do: wrong checksum, ``$$``, truncation."""
    out = []
    for raw in data.split(b"\r\n"):
        if not raw:
            continue
        kind = rng.randrange(3)
        if kind == 0 and b"*" in raw:
            star = raw.rindex(b"*")
            good = int(raw[star + 1 :], 16)
            bad = raw[: star + 1] + b"%02X" % (good ^ 0x5A)
        elif kind == 1:
            bad = b"$" + raw
        else:
            bad = raw[: max(8, len(raw) // 2)]
        out.append(bad + b"\r\n")
    return b"".join(out)
