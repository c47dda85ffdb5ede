"""What a fleet consumer learns from a stream of batches (pure; arrival time passed in).

:class:`SeqTracker` keeps the seen ``seq`` numbers as merged ranges, so duplicates
and gaps are exact at any volume; one per ``stream`` of a truck, since an event's identity
is ``(truck_id, stream, seq)`` (docs/wire-format.md: a truck whose buffer was lost numbers
a new stream from 1). :class:`FleetStats` folds decoded batches into
per-truck figures: events, duplicates, gaps, lag between ``ts`` and arrival, the
range of every numeric field, the latest values (for the demo view) and a bounded
track for the trip report.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field
from typing import Any

from gateway.sink.gaps import merge, overlap

MAX_TRACK = 20_000
MAX_LAGS = 10_000
RATE_WINDOW_MS = 5_000


class SeqTracker:
    """Seen sequence numbers as sorted, disjoint ``[lo, hi]`` ranges."""

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []

    def add(self, seq: int) -> bool:
        """Record ``seq``; return True if it was seen before (a duplicate)."""
        i = bisect.bisect_right(self._lo, seq) - 1
        if i >= 0 and self._lo[i] <= seq <= self._hi[i]:
            return True
        joins_left = i >= 0 and self._hi[i] == seq - 1
        joins_right = i + 1 < len(self._lo) and self._lo[i + 1] == seq + 1
        if joins_left and joins_right:
            self._hi[i] = self._hi[i + 1]
            del self._lo[i + 1], self._hi[i + 1]
        elif joins_left:
            self._hi[i] = seq
        elif joins_right:
            self._lo[i + 1] = seq
        else:
            self._lo.insert(i + 1, seq)
            self._hi.insert(i + 1, seq)
        return False

    @property
    def first(self) -> int | None:
        """Lowest seq seen."""
        return self._lo[0] if self._lo else None

    @property
    def last(self) -> int | None:
        """Highest seq seen."""
        return self._hi[-1] if self._hi else None

    def unique(self) -> int:
        """How many distinct seqs were seen."""
        return sum(h - lo + 1 for lo, h in zip(self._lo, self._hi, strict=True))

    def gaps(self) -> list[tuple[int, int]]:
        """Missing ``[lo, hi]`` ranges between the first and the last seq seen."""
        return [(self._hi[i] + 1, self._lo[i + 1] - 1) for i in range(len(self._lo) - 1)]

    def missing(self) -> int:
        """Count of seqs missing between the first and the last seen."""
        return sum(hi - lo + 1 for lo, hi in self.gaps())


@dataclass
class TruckStats:
    """Everything the sink knows about one truck."""

    truck_id: str
    #: the seqs of the truck's current stream (the one seen last for the first time)
    seqs: SeqTracker = field(default_factory=SeqTracker)
    #: every stream's seqs and ``seq_gap`` ranges (``seqs`` / ``never_sent`` among them)
    streams: dict[str, SeqTracker] = field(default_factory=dict)
    never_sent_by: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    stream: str = ""
    events: int = 0
    duplicates: int = 0
    batches: int = 0
    bad_payloads: int = 0
    by_type: collections.Counter[str] = field(default_factory=collections.Counter)
    lags_ms: collections.deque[int] = field(default_factory=lambda: collections.deque(
        maxlen=MAX_LAGS))
    lag_max_ms: int = 0
    ranges: dict[str, list[float]] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    track: list[dict[str, Any]] = field(default_factory=list)
    arrivals: collections.deque[int] = field(default_factory=collections.deque)
    #: ``[first, last]`` ranges the truck announced it will never send (``seq_gap`` events)
    never_sent: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.streams.setdefault(self.stream, self.seqs)
        self.never_sent_by.setdefault(self.stream, self.never_sent)

    def of_stream(self, stream: str) -> tuple[SeqTracker, list[tuple[int, int]]]:
        """The seqs and ``seq_gap`` ranges of ``stream``; a stream seen for the first time
        becomes the current one (a truck that has not sent anything yet takes its first
        stream as the current one instead of the default)."""
        if stream not in self.streams:
            if not self.seqs.unique() and not self.never_sent:
                del self.streams[self.stream], self.never_sent_by[self.stream]
            self.seqs, self.never_sent, self.stream = SeqTracker(), [], stream
            self.streams[stream], self.never_sent_by[stream] = self.seqs, self.never_sent
        return self.streams[stream], self.never_sent_by[stream]

    def announced_missing(self) -> int:
        """Missing seqs that a ``seq_gap`` notice explains (not losses)."""
        return self.missing_in()[1]

    def missing_in(self, lo: int | None = None, hi: int | None = None) -> tuple[int, int]:
        """``(missing, announced)``: seqs missing between the first and last seen (within
        ``[lo, hi]`` when given), and how many of them a ``seq_gap`` notice explains."""
        # clipped to [lo, hi]; the fleet sink's accounting counts overlapping notices once;
        # every stream on its own (seq is numbered per stream)
        missing = announced = 0
        for key, seqs in self.streams.items():
            never_sent = self.never_sent_by[key]
            gaps = [(g_lo if lo is None else max(lo, g_lo),
                     g_hi if hi is None else min(hi, g_hi)) for g_lo, g_hi in seqs.gaps()]
            gaps = [(a, b) for a, b in gaps if a <= b]
            missing += sum(b - a + 1 for a, b in gaps)
            announced += overlap(gaps, merge(never_sent))
        return missing, announced

    def rate(self, now_ms: int) -> float:
        """Events per second over the last few seconds of arrivals."""
        while self.arrivals and self.arrivals[0] < now_ms - RATE_WINDOW_MS:
            self.arrivals.popleft()
        return len(self.arrivals) / (RATE_WINDOW_MS / 1000.0)

    def summary(self) -> dict[str, Any]:
        """Plain-dict figures (JSON-able)."""
        lags = sorted(self.lags_ms)
        p95 = lags[min(len(lags) - 1, int(len(lags) * 0.95))] if lags else None
        return {
            "events": self.events,
            "unique": sum(t.unique() for t in self.streams.values()),
            "duplicates": self.duplicates,
            "first_seq": self.seqs.first,
            "last_seq": self.seqs.last,
            "missing": self.missing_in()[0],
            "missing_announced": self.announced_missing(),
            "stream": self.stream,
            "streams": {k: {"first_seq": t.first, "last_seq": t.last, "unique": t.unique(),
                            "missing": t.missing()} for k, t in sorted(self.streams.items())},
            "gaps": self.seqs.gaps()[:20],
            "seq_gaps": [list(r) for r in self.never_sent[:20]],
            "batches": self.batches,
            "bad_payloads": self.bad_payloads,
            "by_type": dict(self.by_type),
            "lag_ms": {"p50": lags[len(lags) // 2] if lags else None, "p95": p95,
                       "max": self.lag_max_ms},
            "ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
            "status": dict(self.status),
        }


class FleetStats:
    """Per-truck :class:`TruckStats`, fed with decoded batches and status payloads."""

    def __init__(self) -> None:
        self.trucks: dict[str, TruckStats] = {}

    def truck(self, truck_id: str) -> TruckStats:
        """The stats of ``truck_id`` (created on first use)."""
        st = self.trucks.get(truck_id)
        if st is None:
            st = self.trucks[truck_id] = TruckStats(truck_id)
        return st

    def add_batch(self, batch: dict[str, Any], arrival_ms: int) -> list[dict[str, Any]]:
        """Fold one decoded batch in; returns its events that were new (not duplicates)."""
        st = self.truck(str(batch["truck_id"]))
        st.batches += 1
        seqs, never_sent = st.of_stream(str(batch.get("stream", "")))
        fresh = []
        for ev in batch["events"]:
            st.events += 1
            st.arrivals.append(arrival_ms)
            if seqs.add(int(ev["seq"])):
                st.duplicates += 1
                continue
            fresh.append(ev)
            self._fold_event(st, ev, arrival_ms, never_sent)
        return fresh

    def add_bad(self, truck_id: str) -> None:
        """Count a payload that did not decode."""
        self.truck(truck_id).bad_payloads += 1

    def add_status(self, truck_id: str, status: dict[str, Any]) -> None:
        """Remember the latest status message of a truck."""
        self.truck(truck_id).status = status

    @staticmethod
    def _fold_event(st: TruckStats, ev: dict[str, Any], arrival_ms: int,
                    never_sent: list[tuple[int, int]]) -> None:
        etype = str(ev.get("type"))
        st.by_type[etype] += 1
        if etype == "seq_gap" and isinstance(ev.get("first"), int) and isinstance(
                ev.get("last"), int):
            never_sent.append((ev["first"], ev["last"]))
        lag = arrival_ms - int(ev["ts"])
        st.lags_ms.append(lag)
        st.lag_max_ms = max(st.lag_max_ms, lag)
        for k, v in ev.items():
            if k in ("seq", "ts") or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            key = f"{etype}.{k}"
            r = st.ranges.get(key)
            if r is None:
                st.ranges[key] = [v, v]
            else:
                r[0], r[1] = min(r[0], v), max(r[1], v)
        prev = st.latest.get(etype)
        if prev is None or int(ev["ts"]) >= int(prev.get("ts", 0)):
            merged = dict(prev or {}) if etype == "engine" else {}
            merged.update(ev)
            st.latest[etype] = merged
        if etype in ("gps", "engine") and len(st.track) < MAX_TRACK:
            st.track.append(ev)
