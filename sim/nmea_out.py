"""NMEA 0183 sentence encoders (pure): RMC, GGA, VTG, GSA with the GN talker.

Each function returns one complete sentence as bytes, ``$...*HH\\r\\n``, with a valid
checksum. Time is passed in as a UTC :class:`datetime.datetime`. A fix of ``None``
produces the no-fix forms real receivers send (status ``V``, empty position fields).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

KNOTS_PER_KMH = 1 / 1.852


@dataclass(frozen=True, slots=True)
class GpsFix:
    """A position solution to encode."""

    lat: float
    lon: float
    alt_m: float
    speed_kmh: float
    course_deg: float
    sats: int = 10
    hdop: float = 0.9
    pdop: float = 1.6
    vdop: float = 1.3
    geoid_sep_m: float = 47.0


def checksum(body: str) -> str:
    """XOR of the bytes between ``$`` and ``*`` as two uppercase hex digits."""
    x = 0
    for ch in body.encode("ascii"):
        x ^= ch
    return f"{x:02X}"


def sentence(body: str) -> bytes:
    """Frame ``body`` (without ``$``) as a full sentence with checksum and CRLF."""
    return f"${body}*{checksum(body)}\r\n".encode("ascii")


def ddmm(value: float, deg_digits: int, decimals: int = 5) -> str:
    """``abs(value)`` degrees as NMEA ``(d)ddmm.mmmmm``, rounded once, with the carry.

    Rounding the minutes alone can give ``60.00000`` (``1.9999999999999716`` degrees
    would print as ``00160.00000``, which a strict parser rightly rejects); rounding the
    whole value in units of the last minute digit first carries into the degrees.
    """
    scale = 10**decimals
    units = round(abs(value) * 60 * scale)
    deg, rest = divmod(units, 60 * scale)
    return f"{deg:0{deg_digits}d}{rest / scale:0{3 + decimals}.{decimals}f}"


def _lat(lat: float) -> tuple[str, str]:
    return ddmm(lat, 2), "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    return ddmm(lon, 3), "E" if lon >= 0 else "W"


def _hms(t: dt.datetime) -> str:
    return t.strftime("%H%M%S") + f".{t.microsecond // 10000:02d}"


def rmc(t: dt.datetime, fix: GpsFix | None, talker: str = "GN") -> bytes:
    """Recommended minimum: time, status, position, speed (knots), course, date, mode."""
    date = t.strftime("%d%m%y")
    if fix is None:
        return sentence(f"{talker}RMC,{_hms(t)},V,,,,,,,{date},,,N,V")
    la, ns = _lat(fix.lat)
    lo, ew = _lon(fix.lon)
    kn = fix.speed_kmh * KNOTS_PER_KMH
    course = f"{fix.course_deg:.2f}" if fix.speed_kmh > 0.5 else ""
    return sentence(f"{talker}RMC,{_hms(t)},A,{la},{ns},{lo},{ew},{kn:.3f},{course},{date},,,A,V")


def gga(t: dt.datetime, fix: GpsFix | None, talker: str = "GN") -> bytes:
    """Fix data: quality, satellites used, HDOP, altitude above MSL, geoid separation."""
    if fix is None:
        return sentence(f"{talker}GGA,{_hms(t)},,,,,0,00,99.99,,,,,,")
    la, ns = _lat(fix.lat)
    lo, ew = _lon(fix.lon)
    return sentence(
        f"{talker}GGA,{_hms(t)},{la},{ns},{lo},{ew},1,{fix.sats:02d},{fix.hdop:.2f},"
        f"{fix.alt_m:.1f},M,{fix.geoid_sep_m:.1f},M,,"
    )


def vtg(fix: GpsFix | None, talker: str = "GN") -> bytes:
    """Course and speed over ground (knots and km/h)."""
    if fix is None:
        return sentence(f"{talker}VTG,,T,,M,,N,,K,N")
    course = f"{fix.course_deg:.2f}" if fix.speed_kmh > 0.5 else ""
    kn = fix.speed_kmh * KNOTS_PER_KMH
    return sentence(f"{talker}VTG,{course},T,,M,{kn:.3f},N,{fix.speed_kmh:.3f},K,A")


def gsa(fix: GpsFix | None, talker: str = "GN", prns: tuple[int, ...] = ()) -> bytes:
    """DOP and active satellites: mode 3 (3D) with a fix, 1 without."""
    if fix is None:
        return sentence(f"{talker}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99")
    used = list(prns or range(1, fix.sats + 1))[:12]
    cells = [f"{p:02d}" for p in used] + [""] * (12 - len(used))
    return sentence(
        f"{talker}GSA,A,3,{','.join(cells)},{fix.pdop:.2f},{fix.hdop:.2f},{fix.vdop:.2f}"
    )


def epoch(t: dt.datetime, fix: GpsFix | None, talker: str = "GN") -> bytes:
    """One receiver epoch as a real u-blox sends it: RMC, VTG, GGA, GSA."""
    return rmc(t, fix, talker) + vtg(fix, talker) + gga(t, fix, talker) + gsa(fix, talker)
