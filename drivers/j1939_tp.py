"""Pure, bounded J1939-21 transport-protocol reassembly (TP.CM 60416 / TP.DT 60160).

A listen-only gateway only ever *watches* transfers, so this module reassembles both
broadcast (BAM) and connection-mode (RTS/CTS) transfers passively; it never answers a
RTS. Sessions are keyed by ``(SA, DA)``; a new announcement from the same pair
replaces the old session (J1939-21 lets a sender restart), which also means a BAM
flood from one source can hold at most one session.

Memory is bounded by :data:`MAX_SESSIONS` sessions of at most :data:`MAX_MESSAGE`
bytes each, and the table is shared fairly between sources, so that one node (or a
flood of spoofed addresses) can never starve the engine ECU's DM1 of reassembly:

- a source holds at most :data:`MAX_PER_SOURCE` sessions (one BAM plus a few
  connection-mode transfers to different destinations); more is refused (``exhausted``);
- when the table is full, expired sessions are swept first; if none expired, the
  newcomer may take the least-advanced session of the source holding the most sessions,
  but only when that source holds more than the newcomer does (``evicted``). Among
  sources holding equally many, the one first heard most recently loses first, and a
  source that has completed a transfer before is never displaced by one that has not.
  Otherwise the announcement is refused (``exhausted``): a session making progress is
  not given up for a newcomer that already has its fair share.

Every rejection is counted in :attr:`TpReassembler.counters`; nothing raises.
Time is passed in as ``ts_ms``; there are no clock reads here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PGN_TP_CM = 60416  # 0xEC00
PGN_TP_DT = 60160  # 0xEB00

CM_RTS = 16
CM_CTS = 17
CM_EOMA = 19
CM_BAM = 32
CM_ABORT = 255

MAX_MESSAGE = 1785  # 255 packets * 7 bytes
MAX_SESSIONS = 32
MAX_PER_SOURCE = 4  # one BAM plus three RTS/CTS transfers to different destinations
T1_MS = 750  # J1939-21: max gap between TP.DT packets of a BAM (and after the announcement)
T2_MS = 1250  # connection mode: a receiver's wait for data after CTS; used for any DT gap

COUNTER_NAMES = (
    "completed",
    "bad_announcement",
    "oversize",
    "out_of_order",
    "duplicate",
    "timeout",
    "replaced",
    "aborted",
    "exhausted",
    "evicted",
    "orphan_dt",
    "short_frame",
)


@dataclass(frozen=True, slots=True)
class TpMessage:
    """A reassembled multi-packet message."""

    pgn: int
    sa: int
    da: int
    data: bytes


@dataclass(slots=True)
class _Session:
    pgn: int
    size: int
    packets: int
    bam: bool
    deadline_ms: int
    next_seq: int = 1
    buf: bytearray = field(default_factory=bytearray)


class TpReassembler:
    """Reassembles TP transfers seen on the bus; bounded in sessions and bytes."""

    def __init__(self, *, max_sessions: int = MAX_SESSIONS, max_message: int = MAX_MESSAGE) -> None:
        if max_sessions < 1 or not 9 <= max_message <= MAX_MESSAGE:
            raise ValueError("max_sessions >= 1 and 9 <= max_message <= 1785")
        self.max_sessions = max_sessions
        self.max_message = max_message
        self._sessions: dict[tuple[int, int], _Session] = {}
        self._first_heard: dict[int, int] = {}  # SA -> ts of its first announcement (<= 256)
        self._completed_by: set[int] = set()  # SAs that finished a transfer at least once
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def active_sessions(self) -> int:
        """Sessions currently open."""
        return len(self._sessions)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held by open sessions (bounded by max_sessions * max_message)."""
        return sum(len(s.buf) for s in self._sessions.values())

    @property
    def errors(self) -> int:
        """All rejections together (everything but completed/replaced)."""
        c = self.counters
        return sum(v for k, v in c.items() if k not in ("completed", "replaced"))

    # ------------------------------------------------------------------ input

    def on_cm(self, ts_ms: int, sa: int, da: int, data: bytes | bytearray) -> None:
        """Handle a TP.CM frame sent by ``sa`` to ``da``."""
        if len(data) < 8:
            self.counters["short_frame"] += 1
            return
        ctrl = data[0]
        if ctrl in (CM_BAM, CM_RTS):
            self._announce(ts_ms, sa, da, data, bam=ctrl == CM_BAM)
        elif ctrl == CM_ABORT:
            # an abort may come from either end of a connection
            if self._sessions.pop((sa, da), None) or self._sessions.pop((da, sa), None):
                self.counters["aborted"] += 1
        elif ctrl == CM_CTS:
            s = self._sessions.get((da, sa))  # CTS goes receiver -> sender
            if s is not None:
                s.deadline_ms = ts_ms + T2_MS
        # EoMA and unknown control bytes need nothing: the DT stream already told us

    def on_dt(self, ts_ms: int, sa: int, da: int, data: bytes | bytearray) -> TpMessage | None:
        """Handle a TP.DT frame; return the message when its last packet arrives."""
        key = (sa, da)
        s = self._sessions.get(key)
        if s is None:
            self.counters["orphan_dt"] += 1
            return None
        if ts_ms > s.deadline_ms:
            del self._sessions[key]
            self.counters["timeout"] += 1
            self.counters["orphan_dt"] += 1
            return None
        if len(data) < 2:
            self.counters["short_frame"] += 1
            return None
        seq = data[0]
        if seq != s.next_seq:
            if seq == s.next_seq - 1:
                self.counters["duplicate"] += 1  # a repeat of the last packet: drop it, keep going
                return None
            del self._sessions[key]
            self.counters["oversize" if seq > s.packets else "out_of_order"] += 1
            return None
        s.buf += data[1:8]
        s.next_seq += 1
        s.deadline_ms = ts_ms + (T1_MS if s.bam else T2_MS)
        if s.next_seq <= s.packets:
            return None
        del self._sessions[key]
        if len(s.buf) < s.size:
            self.counters["out_of_order"] += 1  # short DT frames: data is missing
            return None
        self.counters["completed"] += 1
        self._completed_by.add(sa)
        return TpMessage(pgn=s.pgn, sa=sa, da=da, data=bytes(s.buf[: s.size]))

    def expire(self, ts_ms: int) -> int:
        """Drop sessions whose next packet is overdue; returns how many were dropped."""
        dead = [k for k, s in self._sessions.items() if ts_ms > s.deadline_ms]
        for k in dead:
            del self._sessions[k]
        self.counters["timeout"] += len(dead)
        return len(dead)

    # ------------------------------------------------------------------ helpers

    def _held_by(self, sa: int) -> int:
        return sum(1 for k in self._sessions if k[0] == sa)

    def _displaceable(self, newcomer: int) -> tuple[int, int] | None:
        """The session a newcomer from ``newcomer`` may take in a full table, if any."""
        held: dict[int, int] = {}
        for src, _da in self._sessions:
            held[src] = held.get(src, 0) + 1
        mine = held.get(newcomer, 0)
        newcomer_proven = newcomer in self._completed_by

        def rank(src: int) -> tuple[int, bool, int]:
            # most sessions first; then sources never proven; then the most recently heard
            return (held[src], src not in self._completed_by, self._first_heard.get(src, 0))

        candidates = [src for src in held if held[src] > mine + 1 or (
            held[src] > mine and self._first_heard.get(src, 0) > self._first_heard[newcomer])]
        if not newcomer_proven:
            candidates = [src for src in candidates if src not in self._completed_by]
        if not candidates:
            return None
        victim_src = max(candidates, key=rank)
        keys = [k for k in self._sessions if k[0] == victim_src]
        return min(keys, key=lambda k: self._sessions[k].next_seq)

    def _announce(
        self, ts_ms: int, sa: int, da: int, data: bytes | bytearray, *, bam: bool
    ) -> None:
        size = data[1] | data[2] << 8
        packets = data[3]
        pgn = data[5] | data[6] << 8 | (data[7] & 0x03) << 16
        if size > self.max_message:
            self.counters["oversize"] += 1
            self._sessions.pop((sa, da), None)
            return
        if size < 9 or packets != (size + 6) // 7:
            self.counters["bad_announcement"] += 1
            self._sessions.pop((sa, da), None)
            return
        key = (sa, da)
        self._first_heard.setdefault(sa, ts_ms)
        if key in self._sessions:
            del self._sessions[key]
            self.counters["replaced"] += 1
        elif self._held_by(sa) >= MAX_PER_SOURCE:
            self.counters["exhausted"] += 1
            return
        elif len(self._sessions) >= self.max_sessions and not self.expire(ts_ms):
            loser = self._displaceable(sa)
            if loser is None:
                self.counters["exhausted"] += 1
                return
            del self._sessions[loser]
            self.counters["evicted"] += 1
        self._sessions[key] = _Session(
            pgn=pgn,
            size=size,
            packets=packets,
            bam=bam,
            deadline_ms=ts_ms + (T1_MS if bam else T2_MS),
        )
