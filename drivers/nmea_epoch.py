"""Pure NMEA 0183 codec, epoch level: merge one epoch's sentences into one fix.

No I/O and no clock reads: bytes go in, :class:`Fix` objects come out; the caller
passes an opaque arrival stamp (``time.monotonic()`` in the driver) with each chunk.

:class:`EpochMerger` merges the sentences of one epoch (same UTC time of day) into one
:class:`Fix`. An epoch closes when a sentence with another time arrives, when a timed
sentence repeats in a time-less epoch, or on :meth:`EpochMerger.flush` (the driver
calls it when the line goes quiet after a burst). :class:`NmeaDecoder` chains
:class:`~drivers.nmea.NmeaFramer`, :func:`~drivers.nmea.parse_sentence` and the merger.

Rules: RMC status ``V`` (or mode ``N``), GGA quality 0 (or 7 manual, 8 simulator) and
GLL status ``V`` mean no fix, and so does a GGA that claims a fix from 0 satellites; a
fix without a position, or at exactly 0,0, is no fix.
The fix mode comes from GSA when it says 2 or 3, else 3 when GGA has an altitude.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from drivers.nmea import (
    KNOT_KMH,
    MAX_LINE,
    ChecksumError,
    Gga,
    Gll,
    Gsa,
    NmeaFramer,
    NmeaParseError,
    Rmc,
    Sentence,
    Vtg,
    parse_sentence,
)

#: Times outside [earliest, latest) are flagged untrusted: a 10-bit GPS week rollover
#: sends receivers back 19.6 years (to 1999 or a pivot year before 2020), and a year
#: beyond 2070 is a firmware or parse error rather than the present.
EARLIEST_TRUSTED_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
LATEST_TRUSTED_MS = 3_155_760_000_000  # 2070-01-01T00:00:00Z

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Fix:
    """One epoch's merged solution. Unknown values are ``None``, never 0.

    ``fix`` is 0 (no fix), 2 or 3; with 0 there is no position, speed or heading.
    ``utc_ms`` is ``None`` until a date is known (RMC); ``time_trusted`` is False for
    implausible dates (week rollover, before 2020, far future). ``received`` is the
    arrival stamp the caller passed with the chunk that opened the epoch.
    """

    tod_ms: int | None
    utc_ms: int | None
    time_trusted: bool
    fix: int
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    speed_kmh: float | None = None
    heading_deg: float | None = None
    sats: int | None = None
    hdop: float | None = None
    received: float | None = None

    def fields(self) -> dict[str, int | float]:
        """The wire fields of a ``gps`` event; unknown values are left out."""
        out: dict[str, int | float] = {"fix": self.fix}
        for name in ("lat", "lon", "alt_m", "speed_kmh", "heading_deg", "sats", "hdop"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(slots=True)
class _Epoch:
    key: int | None
    received: float | None
    timed: set[str] = field(default_factory=set)
    rmc: Rmc | None = None
    gga: Gga | None = None
    gll: Gll | None = None
    vtg: Vtg | None = None
    gsa_mode: int | None = None
    gsa_hdop: float | None = None


class EpochMerger:
    """Merges decoded sentences of one epoch into one :class:`Fix`."""

    def __init__(self) -> None:
        self._cur: _Epoch | None = None
        self._last_key: int | None = None
        self._date: dt.date | None = None  # last RMC date, carried to RMC-less epochs
        self._date_tod: int = 0
        self.late = 0

    def add(self, s: Sentence, received: float | None = None) -> list[Fix]:
        """Add one sentence; return the fixes of the epochs it closed (0 or 1)."""
        out: list[Fix] = []
        cur = self._cur
        if isinstance(s, Rmc | Gga | Gll):
            key = s.tod_ms
            if key is not None and key == self._last_key and (cur is None or cur.key is None):
                self.late += 1  # a straggler of an epoch already emitted (idle flush)
                return out
            if cur is not None and not (
                (key is not None and cur.key == key)
                or (cur.key is None and not cur.timed)
                or (key is None and cur.key is None and s.kind not in cur.timed)
            ):
                out.extend(self.flush())
                cur = None
            if cur is None:
                cur = self._cur = _Epoch(key, received)
            cur.key = key if key is not None else cur.key
            cur.timed.add(s.kind)
        elif isinstance(s, Vtg | Gsa):
            if cur is None:
                cur = self._cur = _Epoch(None, received)
        else:
            return out
        if isinstance(s, Rmc):
            cur.rmc = s
        elif isinstance(s, Gga):
            cur.gga = s
        elif isinstance(s, Gll):
            cur.gll = s
        elif isinstance(s, Vtg):
            cur.vtg = s
        elif isinstance(s, Gsa):
            # one GSA per constellation: keep the best mode and the first HDOP
            if s.mode in (1, 2, 3):
                cur.gsa_mode = max(cur.gsa_mode or 0, s.mode)
            cur.gsa_hdop = cur.gsa_hdop if cur.gsa_hdop is not None else s.hdop
        return out

    def flush(self) -> list[Fix]:
        """Close the open epoch (end of a burst); return its fix if it has one."""
        cur, self._cur = self._cur, None
        if cur is None or not cur.timed:
            return []
        self._last_key = cur.key
        return [self._merge(cur)]

    def _merge(self, e: _Epoch) -> Fix:
        rmc, gga, gll = e.rmc, e.gga, e.gll
        invalid = (
            (rmc is not None and not rmc.valid)
            or (gga is not None and gga.quality in (0, 7, 8))  # none, manual, simulator
            or (gga is not None and gga.sats == 0)  # a "fix" from no satellite is none
            or (gll is not None and not gll.valid)
        )
        lat = lon = None
        for src in (rmc, gga, gll):
            if src is not None and src.lat is not None and src.lon is not None:
                lat, lon = src.lat, src.lon
                break
        utc_ms, trusted = self._utc(e.key, rmc.date if rmc else None)
        sats = gga.sats if gga else None
        hdop = gga.hdop if gga and gga.hdop is not None else e.gsa_hdop
        if invalid or lat is None or lon is None or (lat == 0.0 and lon == 0.0):
            return Fix(e.key, utc_ms, trusted, 0, sats=sats, received=e.received)
        if e.gsa_mode in (2, 3):
            mode = e.gsa_mode
        else:
            mode = 3 if gga is not None and gga.alt_m is not None else 2
        speed = course = None
        if rmc is not None and rmc.speed_kn is not None:
            speed = rmc.speed_kn * KNOT_KMH
        elif e.vtg is not None and e.vtg.valid:
            speed = e.vtg.speed_kmh
        if rmc is not None and rmc.course_deg is not None:
            course = rmc.course_deg
        elif e.vtg is not None and e.vtg.valid:
            course = e.vtg.course_deg
        return Fix(
            e.key, utc_ms, trusted, mode, lat, lon,
            alt_m=gga.alt_m if gga is not None and mode == 3 else None,
            speed_kmh=speed, heading_deg=course, sats=sats, hdop=hdop, received=e.received,
        )

    def _utc(self, tod: int | None, date: dt.date | None) -> tuple[int | None, bool]:
        if tod is None:
            return None, False
        if date is not None:
            self._date, self._date_tod = date, tod
        elif self._date is not None and tod < self._date_tod - _DAY_MS // 2:
            # RMC-less epoch after midnight: the carried date moves on by a day
            self._date += dt.timedelta(days=1)
            self._date_tod = tod
        if self._date is None:
            return None, False
        day = dt.datetime(self._date.year, self._date.month, self._date.day, tzinfo=dt.UTC)
        utc_ms = int(day.timestamp()) * 1000 + tod
        return utc_ms, EARLIEST_TRUSTED_MS <= utc_ms < LATEST_TRUSTED_MS


# --------------------------------------------------------------------------- decoder


class NmeaDecoder:
    """Framer + parser + merger with counters: the whole codec behind one ``feed``."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.framer = NmeaFramer(max_line)
        self.merger = EpochMerger()
        self.sentences_ok = 0
        self.checksum_errors = 0
        self.parse_errors = 0
        self.fixes = 0
        self.consecutive_ok = 0  # checksum-valid sentences in a row (baud autodetect)
        self._partial_stamp: float | None = None

    def feed(self, data: bytes, received: float | None = None) -> list[Fix]:
        """Consume bytes; return the fixes of every epoch they closed."""
        out: list[Fix] = []
        # a line completed now may have started in an earlier chunk: stamp it with that
        first = self._partial_stamp if self.framer.buffered else received
        lines = self.framer.feed(data)
        self._partial_stamp = (first if not lines else received) if self.framer.buffered else None
        for i, line in enumerate(lines):
            stamp = first if i == 0 else received
            try:
                s = parse_sentence(line)
            except ChecksumError:
                self.checksum_errors += 1
                self.consecutive_ok = 0
                continue
            except NmeaParseError:
                self.parse_errors += 1
                self.consecutive_ok += 1  # framing and checksum were right
                continue
            self.sentences_ok += 1
            self.consecutive_ok += 1
            out.extend(self.merger.add(s, stamp))
        self.fixes += len(out)
        return out

    def flush(self) -> list[Fix]:
        """Close the open epoch, e.g. when the line has gone quiet after a burst."""
        out = self.merger.flush()
        self.fixes += len(out)
        return out

    def stats(self) -> dict[str, int]:
        """Counters since creation."""
        return {
            "sentences_ok": self.sentences_ok,
            "checksum_errors": self.checksum_errors,
            "parse_errors": self.parse_errors,
            "dropped_bytes": self.framer.dropped_bytes,
            "overlong_lines": self.framer.overlong,
            "late_sentences": self.merger.late,
            "fixes": self.fixes,
        }
