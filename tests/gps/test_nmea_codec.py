"""Pure codec tests from bytes: framing, strict parsing, epoch merge, property tests."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import DecodeError
from config.events import Event, encode_body
from drivers.nmea import (
    MAX_LINE,
    ChecksumError,
    Gga,
    NmeaFramer,
    NmeaParseError,
    Rmc,
    Sentence,
    checksum,
    parse_sentence,
)
from drivers.nmea_epoch import EpochMerger, NmeaDecoder
from tests.gps.nmea_util import epoch, sentence

UBX = bytes.fromhex("b562 0107 5c00") + bytes(range(92)) + b"\x12\x34"  # NAV-PVT-like frame
SIRF = bytes.fromhex("a0a2 0009") + b"\x02$GPRMC\x00\x00" + bytes.fromhex("0123 b0b3")

# ----------------------------------------------------------------------------- framer


def test_framer_drops_partial_line_at_start_and_splits_lines() -> None:
    fr = NmeaFramer()
    out = fr.feed(b"34.5,N,01234.5,E*7A\r\n$GPGGA,1\r\n$GPVTG,2\n")
    assert out == [b"$GPGGA,1", b"$GPVTG,2"]
    assert fr.dropped_bytes == len(b"34.5,N,01234.5,E*7A")  # line terminators do not count


def test_framer_handles_doubled_dollar_and_cut_lines() -> None:
    fr = NmeaFramer()
    assert fr.feed(b"$$GNGSA,A,3*00\r\n") == [b"$GNGSA,A,3*00"]
    # a line cut short by the next '$' is dropped, the new one kept
    assert fr.feed(b"$GPRMC,12$GPGGA,x\r\n") == [b"$GPGGA,x"]


def test_framer_skips_binary_frames() -> None:
    good = sentence("GPGGA,120000.00,,,,,0,00,,,M,,M,,")
    fr = NmeaFramer()
    out = fr.feed(good + UBX + SIRF + good + b"$GPRMC" + UBX + good)
    assert out == [good.strip()] * 3


def test_framer_drops_overlong_lines_and_stays_bounded() -> None:
    fr = NmeaFramer()
    long_line = b"$GPTXT," + b"A" * (MAX_LINE * 3) + b"\r\n"
    assert fr.feed(long_line + b"$GPGGA,1\r\n") == [b"$GPGGA,1"]
    assert fr.overlong == 1
    fr.feed(b"$" + b"B" * (MAX_LINE * 5))
    assert fr.buffered <= MAX_LINE


def test_framer_accepts_long_real_lines() -> None:
    line = sentence("PSTMX," + "9" * 120, crlf=False)  # 134-byte proprietary lines exist
    assert NmeaFramer().feed(line + b"\r\n") == [line]


@given(st.lists(st.binary(max_size=300), max_size=40))
@settings(max_examples=300, deadline=None)
def test_framer_random_bytes_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    fr = NmeaFramer()
    for c in chunks:
        for line in fr.feed(c):
            assert line.startswith(b"$")
            assert len(line) <= MAX_LINE
            assert all(0x20 <= b <= 0x7E for b in line)
        assert fr.buffered <= MAX_LINE


@given(st.lists(st.binary(max_size=200) | st.sampled_from(
    [sentence("GPRMC,120000,A,4807.038,N,01131.000,E,022.4,084.4,230394,,"), b"$$", b"*",
     b"\r\n", UBX, b"$GPGGA,,,,"]), max_size=60))
@settings(max_examples=300, deadline=None)
def test_decoder_random_input_never_raises(chunks: list[bytes]) -> None:
    dec = NmeaDecoder()
    for c in chunks:
        for fix in dec.feed(c):
            assert fix.fix in (0, 2, 3)
            assert (fix.lat, fix.lon) != (0.0, 0.0)
        assert dec.framer.buffered <= MAX_LINE
    dec.flush()


@given(st.data())
@settings(max_examples=100, deadline=None)
def test_decoder_chunking_does_not_change_result(data: st.DataObject) -> None:
    stream = b"".join(epoch(f"1200{s:02d}", 48.1, 11.5 + s / 1000, speed_kn=s) for s in range(6))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    whole = NmeaDecoder()
    expected = whole.feed(stream) + whole.flush()
    split = NmeaDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += split.feed(stream[a:b])
    got += split.flush()
    assert got == expected
    assert len(got) == 6

# ----------------------------------------------------------------------------- parser


def test_checksum_is_required() -> None:
    with pytest.raises(ChecksumError):
        parse_sentence(b"$GPGGA,120000,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    good = sentence("GPGGA,120000,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", crlf=False)
    bad = good[:-2] + (b"00" if good[-2:] != b"00" else b"01")
    with pytest.raises(ChecksumError) as info:
        parse_sentence(bad)
    assert isinstance(info.value, DecodeError)
    s = parse_sentence(good)
    assert isinstance(s, Gga)
    assert s.lat == pytest.approx(48 + 7.038 / 60)
    assert s.lon == pytest.approx(11 + 31 / 60)
    assert (s.quality, s.sats, s.hdop, s.alt_m, s.tod_ms) == (1, 8, 0.9, 545.4, 43_200_000)


def test_malformed_fields_raise_parse_error() -> None:
    for body in ("GPRMC,1x0000,A,,,,,,,,,",
                 "GPGGA,120000,4807.038,Q,01131.000,E,1,08,,,M,,M,,",
                 "GPRMC,120000,A,4899.000,N,01131.000,E,,,320194,,",
                 "GPGGA,120000,,,,,one,,,,,,,,"):
        with pytest.raises(NmeaParseError):
            parse_sentence(sentence(body, crlf=False))


def test_other_kinds_are_passed_over_and_any_talker_decoded() -> None:
    assert type(parse_sentence(sentence("PSTMVER,X", crlf=False))) is Sentence
    assert isinstance(parse_sentence(sentence("IIRMC,120000,A,,,,,,,,,", crlf=False)), Rmc)
    assert type(parse_sentence(sentence("GPGSV,1,1,00", crlf=False))) is Sentence
    for talker in ("GP", "GN", "GL", "GA", "GB", "BD", "GQ", "GI"):
        assert isinstance(parse_sentence(sentence(f"{talker}RMC,,V,,,,,,,,,,N", crlf=False)), Rmc)


def test_ublox_rmc_with_nav_status_v_is_valid() -> None:
    s = parse_sentence(sentence(
        "GNRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A,V", crlf=False))
    assert isinstance(s, Rmc)
    assert s.valid
    assert s.date == dt.date(2002, 12, 9)

# ----------------------------------------------------------------------------- merge


def run(*lines: bytes) -> list:  # type: ignore[type-arg]
    dec = NmeaDecoder()
    return dec.feed(b"".join(lines)) + dec.flush()


def test_epoch_merge_combines_sentences() -> None:
    [fix] = run(epoch("120000.00", 48.5, -11.25, speed_kn=10, course=271.5, date="150626",
                      alt=512.3, sats=11, hdop=0.8),
                sentence("GPVTG,271.5,T,,M,10.0,N,18.5,K,A"))
    assert fix.fix == 3
    assert fix.lat == pytest.approx(48.5)
    assert fix.lon == pytest.approx(-11.25)
    assert fix.speed_kmh == pytest.approx(18.52)
    assert (fix.heading_deg, fix.alt_m, fix.sats, fix.hdop) == (271.5, 512.3, 11, 0.8)
    assert fix.utc_ms == int(dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC).timestamp() * 1000)
    assert fix.time_trusted
    assert fix.fields() == {"fix": 3, "lat": fix.lat, "lon": fix.lon, "alt_m": 512.3,
                            "speed_kmh": fix.speed_kmh, "heading_deg": 271.5, "sats": 11,
                            "hdop": 0.8}


def test_status_v_means_no_fix_even_with_a_position() -> None:
    [fix] = run(sentence("GPRMC,012519.563,V,4131.7353,N,09336.8150,W,0.00,,050426,,"))
    assert fix.fix == 0
    assert fix.lat is None
    assert fix.fields() == {"fix": 0}
    [fix] = run(sentence("GPGGA,012519.563,4131.7353,N,09336.8150,W,0,00,50.0,280.2,M,,M,,"))
    assert fix.fix == 0


def test_zeros_instead_of_empty_fields_never_give_null_island() -> None:
    [fix] = run(sentence("GPRMC,120000.00,A,0000.0000,N,00000.0000,E,0.0,0.0,010126,,,A"),
                sentence("GPGGA,120000.00,0000.0000,N,00000.0000,E,1,00,0.0,0.0,M,0.0,M,,"))
    assert fix.fix == 0
    assert "lat" not in fix.fields()


def test_gga_without_altitude_is_2d_and_gsa_mode_wins() -> None:
    [fix] = run(sentence("GPGGA,120000,4807.038,N,01131.000,E,1,04,2.0,,M,,M,,"))
    assert (fix.fix, fix.alt_m, fix.utc_ms, fix.time_trusted) == (2, None, None, False)
    [fix] = run(sentence("GPGGA,120000,4807.038,N,01131.000,E,1,04,2.0,500,M,,M,,"),
                sentence("GPGSA,A,2,01,02,03,,,,,,,,,,2.5,2.0,1.5"))
    assert (fix.fix, fix.alt_m) == (2, None)


def test_implausible_dates_are_untrusted() -> None:
    for date, trusted in (("180315", False), ("010119", False), ("010120", True),
                          ("311269", True), ("010170", False), ("150699", False)):
        [fix] = run(epoch("120000", 48.1, 11.5, date=date))
        assert fix.time_trusted is trusted, date


def test_date_is_carried_to_rmc_less_epochs_across_midnight() -> None:
    m = EpochMerger()
    d = NmeaDecoder()
    d.merger = m
    fixes = d.feed(epoch("235959", 48.1, 11.5, date="311226")
                   + sentence("GPGGA,000000,4806.000,N,01130.000,E,1,08,0.9,545.4,M,46.9,M,,")
                   + sentence("GPGGA,000001,4806.000,N,01130.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    fixes += d.flush()
    days = [dt.datetime.fromtimestamp((f.utc_ms or 0) / 1000, dt.UTC) for f in fixes]
    assert days == [dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
                    dt.datetime(2027, 1, 1, 0, 0, 0, tzinfo=dt.UTC),
                    dt.datetime(2027, 1, 1, 0, 0, 1, tzinfo=dt.UTC)]


def test_timeless_no_fix_epochs_split_on_repeated_sentence() -> None:
    burst = sentence("GPRMC,,V,,,,,,,,,,N") + sentence("GPVTG,,,,,,,,,N") + sentence(
        "GPGGA,,,,,,0,00,99.99,,,,,,") + sentence("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99")
    fixes = run(burst, burst, burst)
    assert [f.fix for f in fixes] == [0, 0, 0]
    assert all(f.tod_ms is None and f.utc_ms is None for f in fixes)


def test_stragglers_of_a_flushed_epoch_are_dropped() -> None:
    dec = NmeaDecoder()
    first = dec.feed(epoch("120000", 48.1, 11.5)) + dec.flush()
    late = dec.feed(sentence("GPGGA,120000,4806.000,N,01130.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    late += dec.flush()
    assert len(first) == 1
    assert late == []
    assert dec.merger.late == 1


def test_received_stamp_is_that_of_the_epochs_first_chunk() -> None:
    dec = NmeaDecoder()
    a, b = epoch("120000", 48.1, 11.5), epoch("120001", 48.1, 11.5)
    assert dec.feed(a[:30], 10.0) == []
    assert dec.feed(a[30:], 10.2) == []
    [fix] = dec.feed(b, 11.0)
    assert fix.received == 10.0
    assert dec.flush()[0].received == 11.0


FIELD = st.one_of(
    st.just(""), st.sampled_from(["nan", "inf", "-inf", "1e5", "1_0", "+3", "-0", "A", "V",
                                  "N", "S", "E", "W", "M", "99.99", "0", "1", "8",
                                  "4807.038", "01131.000", "9000.000", "18000.000",
                                  "120000.00", "235960", "150626", "310299", "320126"]),
    st.text(alphabet="0123456789.-+eNSEWAV", max_size=12),
)


TEMPLATES = [
    "GPRMC,120000.00,A,4807.038,N,01131.000,E,22.4,84.4,150626,3.1,W,A",
    "GNGGA,120000.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
    "GLGLL,4807.038,N,01131.000,E,120000.00,A,A",
    "GAVTG,84.4,T,,M,22.4,N,41.5,K,A",
    "BDGSA,A,3,01,02,03,,,,,,,,,,1.5,0.9,1.2",
]


@given(st.lists(st.tuples(st.integers(0, len(TEMPLATES) - 1),
                          st.lists(st.tuples(st.integers(0, 15), FIELD), max_size=3)),
                min_size=1, max_size=6))
@settings(max_examples=800, deadline=None)
def test_hostile_fields_decode_or_raise_a_decode_error(
    mutations: list[tuple[int, list[tuple[int, str]]]],
) -> None:
    """Real sentences with hostile fields and good checksums: a typed error, or a sane fix."""
    stream = b""
    for which, changes in mutations:
        fields = TEMPLATES[which].split(",")
        for idx, value in changes:
            if 0 < idx < len(fields):
                fields[idx] = value
        line = sentence(",".join(fields), crlf=False)
        with contextlib.suppress(DecodeError):
            parse_sentence(line)
        stream += line + b"\r\n"
    dec = NmeaDecoder()
    for fix in dec.feed(stream) + dec.flush():
        assert fix.fix in (0, 2, 3)
        body = encode_body(Event("gps", fix.utc_ms or 0, fix.fields()))  # finite numbers only
        assert body.startswith(b'{"ts":')
        if fix.fix:
            assert fix.lat is not None
            assert fix.lon is not None
            assert -90 <= fix.lat <= 90
            assert -180 <= fix.lon <= 180


def test_non_finite_and_exotic_numbers_are_rejected() -> None:
    for body in ("GPRMC,120000,A,4807.038,N,01131.000,E,nan,,150626,,",
                 "GPGGA,120000,4807.038,N,01131.000,E,1,08,inf,500,M,,M,,",
                 "GPGGA,120000,48nan,N,01131.000,E,1,08,0.9,500,M,,M,,",
                 "GPGGA,120000,4807.038,N,01131.000,E,1,1_0,0.9,500,M,,M,,",
                 "GPRMC,120000,A,4807.038,N,01131.000,E,1e3,,150626,,",
                 "GPRMC,120000,A,9000.001,N,01131.000,E,,,150626,,"):
        with pytest.raises(NmeaParseError):
            parse_sentence(sentence(body, crlf=False))
    raw = b"GP\xff\xfeRMC"
    with pytest.raises(DecodeError):
        parse_sentence(b"$" + raw + b"*%02X" % checksum(raw))
