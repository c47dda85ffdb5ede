"""Helpers to build NMEA sentences with correct checksums in tests."""

from __future__ import annotations

from functools import reduce

from sim.nmea_out import ddmm


def sentence(body: str, *, crlf: bool = True) -> bytes:
    """``$body*HH`` (+ CRLF) with the right checksum."""
    cs = reduce(lambda a, b: a ^ b, body.encode(), 0)
    return f"${body}*{cs:02X}".encode() + (b"\r\n" if crlf else b"")


def dm(value: float, deg_digits: int) -> tuple[str, str]:
    """Degrees -> (``(d)ddmm.mmmmmm``, hemisphere) for lat (2) or lon (3 digits)."""
    hemi = ("N" if value >= 0 else "S") if deg_digits == 2 else ("E" if value >= 0 else "W")
    return ddmm(value, deg_digits, decimals=6), hemi


def epoch(hhmmss: str, lat: float, lon: float, *, speed_kn: float = 0.0, course: float = 0.0,
          date: str = "150626", talker: str = "GP", alt: float = 100.0, sats: int = 9,
          hdop: float = 0.9) -> bytes:
    """An RMC + GGA + GSA burst for one valid 3D fix."""
    la, ns = dm(lat, 2)
    lo, ew = dm(lon, 3)
    return (
        sentence(f"{talker}RMC,{hhmmss},A,{la},{ns},{lo},{ew},{speed_kn:.3f},{course:.2f},"
                 f"{date},,,A")
        + sentence(f"{talker}GGA,{hhmmss},{la},{ns},{lo},{ew},1,{sats:02d},{hdop},{alt},M,"
                   f"47.0,M,,")
        + sentence(f"{talker}GSA,A,3,01,02,03,04,,,,,,,,,1.5,{hdop},1.2")
    )
