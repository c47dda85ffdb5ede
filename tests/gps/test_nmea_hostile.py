"""Hostile and unusual NMEA: values out of physical range, non-GNSS talkers, 0-satellite fixes."""

from __future__ import annotations

import pytest

from drivers.nmea import Gga, Rmc, Vtg, parse_sentence
from drivers.nmea_epoch import NmeaDecoder
from tests.gps.nmea_util import sentence

RMC = "{t}RMC,{tod},A,5330.0000,N,00955.0000,E,{kn},{course},150626,,,A"
GGA = "{t}GGA,{tod},5330.0000,N,00955.0000,E,1,{sats},0.9,{alt},M,45.0,M,,"


def rmc(kn: str = "10.0", course: str = "90.0", t: str = "GP", tod: str = "120000.00") -> bytes:
    return sentence(RMC.format(t=t, kn=kn, course=course, tod=tod))


def gga(sats: str = "09", alt: str = "12.0", t: str = "GP", tod: str = "120000.00") -> bytes:
    return sentence(GGA.format(t=t, sats=sats, alt=alt, tod=tod))


NEXT = "120001.00"  # a sentence of the next epoch closes the one before


@pytest.mark.parametrize(("kn", "course", "speed", "heading"), [
    ("-999.9", "90.0", None, 90.0),   # -1851.8 km/h
    ("10.0", "-400", 10.0, None),
    ("10.0", "360.0", 10.0, 0.0),
    ("700.0", "361.0", None, None),   # 1296 km/h, course past a full turn
    ("10.0", "359.9", 10.0, 359.9),
])
def test_out_of_range_fields_are_dropped_and_the_fix_kept(
        kn: str, course: str, speed: float | None, heading: float | None) -> None:
    r = parse_sentence(rmc(kn, course).rstrip())
    assert isinstance(r, Rmc) and r.valid
    assert r.speed_kn == (None if speed is None else pytest.approx(speed))
    assert r.course_deg == heading
    fixes = NmeaDecoder().feed(rmc(kn, course) + gga() + rmc(tod=NEXT))
    assert fixes and fixes[0].lat == pytest.approx(53.5)
    assert fixes[0].lon == pytest.approx(9 + 55 / 60)
    if speed is None:
        assert fixes[0].speed_kmh is None
    if heading is None:
        assert fixes[0].heading_deg is None


def test_vtg_and_gga_ranges() -> None:
    v = parse_sentence(sentence("GPVTG,-5.0,T,,M,-3.0,N,-5.6,K,A").rstrip())
    assert isinstance(v, Vtg) and v.course_deg is None and v.speed_kmh is None
    g = parse_sentence(gga(alt="99999.0").rstrip())
    assert isinstance(g, Gga) and g.alt_m is None and g.lat == pytest.approx(53.5)


@pytest.mark.parametrize("talker", ["IN", "II", "GI", "GN", "GP", "XY"])
def test_position_sentences_of_any_well_formed_talker(talker: str) -> None:
    dec = NmeaDecoder()
    fixes = dec.feed(rmc(t=talker) + gga(t=talker) + rmc(t=talker, tod=NEXT))
    assert fixes and fixes[0].fix == 3 and fixes[0].lat == pytest.approx(53.5)


@pytest.mark.parametrize("talker", ["IN", "II", "XY"])
def test_gll_of_a_non_gnss_talker_is_a_position(talker: str) -> None:
    """A receiver that sends only GLL (and VTG) under its own talker still yields fixes."""
    gll = "{t}GLL,5330.0000,N,00955.0000,E,{tod},A,A"
    dec = NmeaDecoder()
    fixes = dec.feed(sentence(gll.format(t=talker, tod="120000.00"))
                     + sentence(f"{talker}VTG,90.0,T,,M,10.0,N,18.5,K,A")
                     + sentence(gll.format(t=talker, tod=NEXT)))
    assert fixes and fixes[0].fix >= 2
    assert fixes[0].lat == pytest.approx(53.5) and fixes[0].lon == pytest.approx(9 + 55 / 60)


@pytest.mark.parametrize("talker", ["in", "I1", "G"])
def test_malformed_talkers_are_not_decoded(talker: str) -> None:
    s = parse_sentence(sentence(RMC.format(t=talker, kn="1", course="1", tod=NEXT)).rstrip())
    assert not isinstance(s, Rmc)


def test_a_gga_fix_from_zero_satellites_is_no_position() -> None:
    dec = NmeaDecoder()
    fixes = dec.feed(gga(sats="00") + gga(sats="00", tod=NEXT))
    assert fixes and fixes[0].fix == 0 and fixes[0].lat is None
