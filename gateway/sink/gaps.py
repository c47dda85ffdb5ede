"""Gap accounting per truck and stream, as docs/wire-format.md ("Gaps") defines it (pure).

Seqs are numbered per stream (a truck whose buffer was lost starts a new stream at seq 1),
so every ``(truck_id, stream)`` is accounted on its own. From what the database holds
about one stream: the islands of stored seqs, its ``seq_gap`` notices and the latest
status that named it, compute

- ``missing``: seqs below the highest stored one that are not stored, from seq 1 (every
  numbering starts there, docs/wire-format.md "Stream"), so a stream whose first events
  never arrived is not taken for complete;
- ``announced``: those inside a ``seq_gap`` range (never sent: not a loss);
- ``by_counters``: once the truck reported ``pending == 0``, the rest up to the number the
  status counts as ``evicted`` + ``expired`` (dropped on the truck, counted not listed);
- ``unexplained``: the remainder. While the truck still has pending events (or sent no
  status yet) the remainder may still arrive: the report's state is ``DRAINING``, and
  only a ``FINAL`` report's ``unexplained`` is a loss. A stream the truck has left (its
  latest status names another one: the buffer was lost) is ``FINAL`` too: nothing more
  can arrive for it, so what its last status does not explain was lost with the buffer.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Range = tuple[int, int]

#: The first seq of every stream (a new buffer numbers from here).
FIRST_SEQ = 1


class GapState(enum.Enum):
    """Whether a truck's gaps can still close."""

    #: no status yet, or ``pending > 0``: missing seqs may still arrive
    DRAINING = "draining"
    #: the latest status said ``pending == 0``: gaps are final
    FINAL = "final"

    def __repr__(self) -> str:
        return f"GapState.{self.name}"


@dataclass(frozen=True, slots=True)
class TruckCounters:
    """What gap accounting reads from a truck's latest status."""

    pending: int | None
    dropped: int

    @classmethod
    def from_status_body(cls, body: str | None) -> TruckCounters | None:
        """Parse a stored status body (None when there is none)."""
        if body is None:
            return None
        obj: Any = json.loads(body)
        pending = obj.get("pending")
        return cls(pending if isinstance(pending, int) else None,
                   _count(obj.get("evicted")) + _count(obj.get("expired")))


def status_stream(body: str | None) -> str:
    """The ``stream`` a stored status body names (``""``: the default stream)."""
    if body is None:
        return ""
    stream = json.loads(body).get("stream", "")
    return stream if isinstance(stream, str) else ""


def gap_inputs_of(
    trucks: Iterable[str],
    islands: Iterable[tuple[str, str, int, int]],
    notices: Iterable[tuple[str, str, int, int]],
    stream_status: Iterable[tuple[str, str, str]],
    latest_status: Iterable[tuple[str, str]],
) -> list[GapInput]:
    """Per ``(truck, stream)`` inputs from what the backends' queries return: islands and
    notices ``(truck, stream, lo, hi)``, the newest status per stream ``(truck, stream,
    body)`` and per truck ``(truck, body)``. A truck without events gets one input for the
    stream its latest status names."""
    by_stream: dict[tuple[str, str], list[Range]] = {}
    for tid, stream, lo, hi in islands:
        by_stream.setdefault((tid, stream), []).append((lo, hi))
    notes: dict[tuple[str, str], list[Range]] = {}
    for tid, stream, first, last in notices:
        notes.setdefault((tid, stream), []).append((first, last))
    per_stream = {(tid, stream): body for tid, stream, body in stream_status}
    current = {tid: status_stream(body) for tid, body in latest_status}
    for tid in trucks:
        if not any(k[0] == tid for k in by_stream):
            by_stream[(tid, current.get(tid, ""))] = []
    return [
        GapInput(tid, tuple(ranges), tuple(notes.get((tid, stream), ())),
                 TruckCounters.from_status_body(per_stream.get((tid, stream))),
                 stream=stream, superseded=(tid, stream) in per_stream
                 and current.get(tid, stream) != stream)
        for (tid, stream), ranges in sorted(by_stream.items())
    ]


def _count(section: Any) -> int:
    if not isinstance(section, dict):
        return 0
    return sum(v for v in section.values() if isinstance(v, int) and not isinstance(v, bool))


@dataclass(frozen=True, slots=True)
class GapInput:
    """What a store returns per truck for accounting."""

    truck_id: str
    islands: tuple[Range, ...]
    notices: tuple[Range, ...]
    counters: TruckCounters | None
    stream: str = ""
    #: a status named this stream, and the truck's latest status names another one: this
    #: stream will not grow (a stream no status named yet may be the newest)
    superseded: bool = False


@dataclass(frozen=True, slots=True)
class GapReport:
    """The gap accounting of one truck."""

    truck_id: str
    state: GapState
    first: int | None
    last: int | None
    stored: int
    missing: int
    announced: int
    by_counters: int
    unexplained: int
    gaps: tuple[Range, ...]
    stream: str = ""

    def line(self) -> str:
        """One human-readable line."""
        head = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in self.gaps[:10])
        more = f" (+{len(self.gaps) - 10} more)" if len(self.gaps) > 10 else ""
        name = f"{self.truck_id} stream {self.stream}" if self.stream else self.truck_id
        return (f"{name}: {self.state.value} seq {self.first}..{self.last} "
                f"stored={self.stored} missing={self.missing} announced={self.announced} "
                f"by_counters={self.by_counters} unexplained={self.unexplained}"
                + (f" gaps: {head}{more}" if self.gaps else ""))


def merge(ranges: Iterable[Range]) -> list[Range]:
    """The union of inclusive ranges, sorted and disjoint (adjacent ones joined)."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def overlap(ranges: list[Range], others: list[Range]) -> int:
    """How many integers lie in both unions (each list sorted and disjoint)."""
    total = i = j = 0
    while i < len(ranges) and j < len(others):
        lo = max(ranges[i][0], others[j][0])
        hi = min(ranges[i][1], others[j][1])
        if lo <= hi:
            total += hi - lo + 1
        if ranges[i][1] < others[j][1]:
            i += 1
        else:
            j += 1
    return total


def account(inp: GapInput) -> GapReport:
    """The :class:`GapReport` of one truck's stream."""
    islands = merge(inp.islands)
    gaps = [(FIRST_SEQ, islands[0][0] - 1)] if islands and islands[0][0] > FIRST_SEQ else []
    gaps += [(a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(islands)]
    missing = sum(hi - lo + 1 for lo, hi in gaps)
    announced = overlap(gaps, merge(inp.notices))
    final = inp.superseded or (inp.counters is not None and inp.counters.pending == 0)
    rest = missing - announced
    by_counters = min(rest, inp.counters.dropped) if final and inp.counters else 0
    return GapReport(
        truck_id=inp.truck_id,
        state=GapState.FINAL if final else GapState.DRAINING,
        first=islands[0][0] if islands else None,
        last=islands[-1][1] if islands else None,
        stored=sum(hi - lo + 1 for lo, hi in islands),
        missing=missing,
        announced=announced,
        by_counters=by_counters,
        unexplained=rest - by_counters,
        gaps=tuple(gaps),
        stream=inp.stream,
    )
