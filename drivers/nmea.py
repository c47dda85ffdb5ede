"""Pure NMEA 0183 codec, sentence level: bounded framer and strict sentence parser.

No I/O and no clock reads. The epoch merge that turns sentences into fixes, and the
:class:`~drivers.nmea_epoch.NmeaDecoder` that chains all three, live in
:mod:`drivers.nmea_epoch`.

- :class:`NmeaFramer` cuts a byte stream into candidate sentences. It resyncs on
  ``$`` (a ``$$`` start or a line cut short by a new ``$`` restarts the line), drops
  the partial line at start, any line holding a byte outside printable ASCII (UBX
  and SiRF binary frames) and any line longer than :data:`MAX_LINE`. Memory is
  bounded by :data:`MAX_LINE` whatever the input.
- :func:`parse_sentence` checks the mandatory ``*HH`` checksum and decodes RMC,
  GGA, GLL, VTG and GSA of any well-formed talker (two capital letters: the GNSS ones,
  and also ``IN`` integrated navigation, ``II`` integrated instrumentation, ...) into
  typed records. A value outside its physical range (a negative speed, a course of
  -400 degrees) is dropped from the record; the rest of the sentence is kept.

Why not pynmea2: it accepts sentences without checksums, yields 0.0 latitude with no
fix and misreads u-blox RMC status; see docs/gps.md.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from config.errors import DecodeError

#: Longest line accepted, ``$`` to checksum. The spec says 82 bytes, real receivers
#: send 93-byte GGA and 134-byte proprietary lines; anything longer is garbage.
MAX_LINE = 200

#: The GNSS talkers. Position sentences of any well-formed talker are decoded (a receiver
#: fused with an IMU talks as ``IN``); this set only documents the common ones.
TALKERS = frozenset({"GP", "GN", "GL", "GA", "GB", "BD", "GQ", "GI"})
_TALKER = re.compile(r"[A-Z]{2}")

#: Physical ranges: a value outside is a receiver fault and is dropped from the record.
MAX_SPEED_KMH = 1000.0  # faster than any road vehicle (or airliner at cruise)
ALT_RANGE_M = (-1000.0, 20000.0)
MAX_HDOP = 100.0

KNOT_KMH = 1.852
_PRINTABLE = bytes(range(0x20, 0x7F))


class ChecksumError(DecodeError):
    """A sentence has no ``*HH`` checksum or the checksum does not match."""


class NmeaParseError(DecodeError):
    """A sentence passed its checksum but a field is malformed."""


# --------------------------------------------------------------------------- framing


class NmeaFramer:
    """Incremental, bounded line framer: ``feed(bytes) -> list of sentences``.

    Each returned sentence starts with ``$`` and has its line terminator removed;
    its checksum is not checked here.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._line = bytearray()
        self._in_line = False  # False: skipping bytes until the next '$'
        self.dropped_bytes = 0
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data`` and return the complete lines it finished."""
        out: list[bytes] = []
        line = self._line
        for b in data:
            if b == 0x24:  # '$' always starts a line: resync, and '$$' just restarts it
                self.dropped_bytes += len(line)
                line.clear()
                line.append(b)
                self._in_line = True
            elif not self._in_line:
                if b not in (0x0D, 0x0A):  # the LF of a CRLF is not garbage
                    self.dropped_bytes += 1
            elif b in (0x0D, 0x0A):
                out.append(bytes(line))
                line.clear()
                self._in_line = False
            elif b < 0x20 or b > 0x7E or len(line) >= self.max_line:
                # binary frame or runaway line: drop it and wait for the next '$'
                if len(line) >= self.max_line:
                    self.overlong += 1
                self.dropped_bytes += len(line) + 1
                line.clear()
                self._in_line = False
            else:
                line.append(b)
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line (never more than ``max_line``)."""
        return len(self._line)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Sentence:
    """Any checksum-valid sentence; the base of the decoded kinds."""

    talker: str
    kind: str


@dataclass(frozen=True, slots=True)
class Rmc(Sentence):
    """Recommended minimum: time, validity, position, speed, course, date."""

    tod_ms: int | None
    valid: bool
    lat: float | None
    lon: float | None
    speed_kn: float | None
    course_deg: float | None
    date: dt.date | None


@dataclass(frozen=True, slots=True)
class Gga(Sentence):
    """Fix data: time, position, quality, satellites, HDOP, altitude (MSL)."""

    tod_ms: int | None
    lat: float | None
    lon: float | None
    quality: int
    sats: int | None
    hdop: float | None
    alt_m: float | None


@dataclass(frozen=True, slots=True)
class Gll(Sentence):
    """Geographic position: position, time, validity."""

    tod_ms: int | None
    valid: bool
    lat: float | None
    lon: float | None


@dataclass(frozen=True, slots=True)
class Vtg(Sentence):
    """Course and speed over ground."""

    course_deg: float | None
    speed_kmh: float | None
    valid: bool


@dataclass(frozen=True, slots=True)
class Gsa(Sentence):
    """DOP and active satellites: fix mode 1/2/3 and HDOP."""

    mode: int | None
    hdop: float | None


def checksum(body: bytes) -> int:
    """XOR of the bytes between ``$`` and ``*``."""
    c = 0
    for b in body:
        c ^= b
    return c


def parse_sentence(line: bytes) -> Sentence:
    """Verify and decode one framed sentence (``$...*HH``).

    Raises :class:`ChecksumError` when the checksum is missing or wrong and
    :class:`NmeaParseError` for malformed fields. Sentences of other kinds or talkers
    come back as a plain :class:`Sentence`.
    """
    star = line.rfind(b"*")
    if not line.startswith(b"$") or star < 0 or len(line) - star != 3:
        raise ChecksumError(f"no checksum: {line[:40]!r}")
    body = line[1:star]
    try:
        want = int(line[star + 1 :], 16)
    except ValueError as exc:
        raise ChecksumError(f"bad checksum digits: {line[star:]!r}") from exc
    if checksum(body) != want:
        raise ChecksumError(f"checksum mismatch: {line[:40]!r}")
    try:
        f = body.decode("ascii").split(",")
    except UnicodeDecodeError as exc:  # the framer never passes these; direct callers may
        raise NmeaParseError(f"non-ASCII sentence: {line[:40]!r}") from exc
    addr = f[0]
    if addr.startswith("P") or len(addr) != 5:
        return Sentence(talker="P" if addr.startswith("P") else addr[:2], kind=addr)
    talker, kind = addr[:2], addr[2:]
    parser = _PARSERS.get(kind)
    if not _TALKER.fullmatch(talker) or parser is None:
        return Sentence(talker=talker, kind=kind)
    try:
        return parser(talker, f)
    except (ValueError, IndexError) as exc:
        raise NmeaParseError(f"bad {addr}: {exc}") from exc


def _field(f: list[str], i: int) -> str:
    return f[i] if i < len(f) else ""


# plain decimals only: float() would also take "nan", "inf", "1e5" and "1_0"
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_UNSIGNED = re.compile(r"\d+")


def _num(f: list[str], i: int) -> float | None:
    s = _field(f, i)
    if not s:
        return None
    if not _DECIMAL.fullmatch(s):
        raise ValueError(f"number {s!r}")
    return float(s)


def _int(f: list[str], i: int) -> int | None:
    s = _field(f, i)
    if not s:
        return None
    if not _UNSIGNED.fullmatch(s):
        raise ValueError(f"integer {s!r}")
    return int(s)


def _tod(s: str) -> int | None:
    """``hhmmss[.sss]`` -> milliseconds since midnight."""
    if not s:
        return None
    if len(s) < 6 or not _DECIMAL.fullmatch(s) or not s[:6].isdigit():
        raise ValueError(f"time {s!r}")
    h, m, sec = int(s[0:2]), int(s[2:4]), float(s[4:])
    if h > 23 or m > 59 or sec >= 61:
        raise ValueError(f"time {s!r}")
    return (h * 3600 + m * 60) * 1000 + round(sec * 1000)


_COORD = {2: re.compile(r"\d{4}(?:\.\d*)?"), 3: re.compile(r"\d{5}(?:\.\d*)?")}


def _coord(value: str, hemi: str, deg_digits: int) -> float | None:
    """``(d)ddmm.mmmm`` + hemisphere -> signed degrees; empty -> None."""
    if not value and not hemi:
        return None
    ok_hemi = ("N", "S") if deg_digits == 2 else ("E", "W")
    if hemi not in ok_hemi or not _COORD[deg_digits].fullmatch(value):
        raise ValueError(f"coordinate {value!r},{hemi!r}")
    deg, minutes = int(value[:deg_digits]), float(value[deg_digits:])
    out = deg + minutes / 60.0
    if minutes >= 60 or out > (90 if deg_digits == 2 else 180):
        raise ValueError(f"coordinate {value!r}")
    return -out if hemi in ("S", "W") else out


def _latlon(f: list[str], i: int) -> tuple[float | None, float | None]:
    lat = _coord(_field(f, i), _field(f, i + 1), 2)
    lon = _coord(_field(f, i + 2), _field(f, i + 3), 3)
    return lat, lon


def _date(s: str) -> dt.date | None:
    if not s:
        return None
    if not _UNSIGNED.fullmatch(s) or len(s) != 6:
        raise ValueError(f"date {s!r}")
    return dt.date(2000 + int(s[4:6]), int(s[2:4]), int(s[0:2]))


def _speed_kmh(kmh: float | None) -> float | None:
    return kmh if kmh is not None and 0 <= kmh <= MAX_SPEED_KMH else None


def _course(deg: float | None) -> float | None:
    if deg is None or not 0 <= deg <= 360:
        return None
    return 0.0 if deg == 360 else deg


def _rmc(talker: str, f: list[str]) -> Rmc:
    lat, lon = _latlon(f, 3)
    # field 12 (NMEA 2.3) mode 'N' = data not valid; field 13 (4.1 nav status) is ignored
    valid = _field(f, 2) == "A" and _field(f, 12) != "N"
    knots = _num(f, 7)
    if knots is not None and _speed_kmh(knots * KNOT_KMH) is None:
        knots = None
    return Rmc(talker, "RMC", _tod(_field(f, 1)), valid, lat, lon,
               knots, _course(_num(f, 8)), _date(_field(f, 9)))


def _gga(talker: str, f: list[str]) -> Gga:
    lat, lon = _latlon(f, 2)
    alt = _num(f, 9) if _field(f, 10) in ("M", "") else None
    if alt is not None and not ALT_RANGE_M[0] <= alt <= ALT_RANGE_M[1]:
        alt = None
    hdop = _num(f, 8)
    if hdop is not None and not 0 <= hdop <= MAX_HDOP:
        hdop = None
    return Gga(talker, "GGA", _tod(_field(f, 1)), lat, lon, _int(f, 6) or 0,
               _int(f, 7), hdop, alt)


def _gll(talker: str, f: list[str]) -> Gll:
    lat, lon = _latlon(f, 1)
    valid = _field(f, 6) == "A" and _field(f, 7) != "N"
    return Gll(talker, "GLL", _tod(_field(f, 5)), valid, lat, lon)


def _vtg(talker: str, f: list[str]) -> Vtg:
    kmh = _num(f, 7)
    if kmh is None and _num(f, 5) is not None:
        kmh = _num(f, 5) * KNOT_KMH  # type: ignore[operator]  # checked just above
    return Vtg(talker, "VTG", _course(_num(f, 1)), _speed_kmh(kmh), _field(f, 9) != "N")


def _gsa(talker: str, f: list[str]) -> Gsa:
    hdop = _num(f, 16)
    return Gsa(talker, "GSA", _int(f, 2), hdop if hdop is None or 0 <= hdop <= MAX_HDOP else None)


_PARSERS: dict[str, Callable[[str, list[str]], Sentence]] = {
    "RMC": _rmc, "GGA": _gga, "GLL": _gll, "VTG": _vtg, "GSA": _gsa,
}
