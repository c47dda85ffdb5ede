"""Every real receiver capture against gpsd's own decode of it (``tests/data/nmea``).

For each gpsd ``TPV`` with a ``time`` our fix for that epoch must match time, mode,
lat/lon (1e-6 degree), speed (0.01 m/s), track (0.01 degree) and altitude (1 mm);
where gpsd only reports mode 1 we must report no fix. The whole file, comment lines
included, goes through the codec in random-sized chunks, so no line may crash it.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from drivers.nmea_epoch import Fix, NmeaDecoder
from tests.gps.gpsd_chk import Expected, captures, load_expected, tpv_time

GPS_WEEK_ROLLOVER = dt.timedelta(weeks=1024)
CAPTURES = captures()


def decode(capture: Path, seed: int) -> list[Fix]:
    data = capture.read_bytes()
    rng = random.Random(seed)
    dec = NmeaDecoder()
    fixes: list[Fix] = []
    i = 0
    while i < len(data):
        n = rng.randint(1, 64)
        fixes += dec.feed(data[i : i + n])
        i += n
    return fixes + dec.flush()


def test_all_captures_present() -> None:
    assert len(CAPTURES) == 8
    assert (CAPTURES[0].parent / "COPYING.gpsd").exists()


def compare(fix: Fix, exp: Expected) -> list[str]:
    """Differences between our fix and gpsd's last TPV of that epoch."""
    tpv = exp.tpv
    assert tpv is not None
    probs: list[str] = []
    mode = int(tpv["mode"])
    if mode <= 1:
        return [] if fix.fix == 0 else [f"fix {fix.fix}, gpsd mode {mode}"]
    if fix.fix != mode:
        probs.append(f"fix {fix.fix} != mode {mode}")
    checks = (("lat", fix.lat, 1e-6), ("lon", fix.lon, 1e-6), ("track", fix.heading_deg, 0.01),
              ("altMSL", fix.alt_m, 1e-3))
    for key, ours, tol in checks:
        if key in tpv and (ours is None or abs(ours - tpv[key]) > tol):
            probs.append(f"{key} {ours} != {tpv[key]}")
    if key_absent := [k for k, v in (("lat", fix.lat), ("track", fix.heading_deg)) if
                      k not in tpv and v is not None]:
        probs.append(f"we report {key_absent}, gpsd does not")
    if "speed" in tpv and (fix.speed_kmh is None or abs(fix.speed_kmh / 3.6 - tpv["speed"]) > 0.01):
        probs.append(f"speed {fix.speed_kmh} km/h != {tpv['speed']} m/s")
    if fix.utc_ms is None:
        probs.append("no UTC time")
    else:
        ours_t = dt.datetime.fromtimestamp(fix.utc_ms / 1000, dt.UTC)
        theirs = tpv_time(tpv)
        # gpsd moves dates it finds too old forward by 1024 weeks; we flag them instead
        if ours_t != theirs and not (ours_t + GPS_WEEK_ROLLOVER == theirs and not fix.time_trusted):
            probs.append(f"time {ours_t.isoformat()} != {tpv['time']}")
    return probs


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("seed", [1, 2])
def test_capture_matches_gpsd(capture: Path, seed: int) -> None:
    fixes = decode(capture, seed)
    ours: dict[int | None, list[Fix]] = {}
    for f in fixes:
        ours.setdefault(f.tod_ms, []).append(f)
    expected = load_expected(capture)
    problems: list[str] = []
    compared = no_fix_checked = 0
    for tod, exp in expected.items():
        mine = ours.get(tod, [])
        if len(mine) > 1:
            problems.append(f"{tod}: {len(mine)} fixes for one epoch")
        if exp.tpv is None:
            if exp.fix_reports == 0:  # gpsd only said mode 1 for this epoch
                no_fix_checked += len(mine)
                problems += [f"{tod}: fix {f.fix} where gpsd has none" for f in mine if f.fix]
            continue
        if not mine:
            problems.append(f"{tod}: no fix decoded")
            continue
        compared += 1
        problems += [f"{tod}: {p}" for p in compare(mine[-1], exp)]
    assert not problems, "\n".join(problems[:20])
    assert compared + no_fix_checked > 0
    # no fix may ever carry a 0,0 or half position
    for f in fixes:
        assert (f.lat is None) == (f.lon is None) == (f.fix == 0)
        assert (f.lat, f.lon) != (0.0, 0.0)


def test_rollover_capture_is_untrusted() -> None:
    """neo-m8n reports 2015 dates; gpsd pivots them to 2034, we flag them untrusted."""
    fixes = decode(CAPTURES[0].parent / "neo-m8n.log", 0)
    dated = [f for f in fixes if f.utc_ms is not None]
    assert dated
    assert not any(f.time_trusted for f in dated)
    st = [f for f in decode(CAPTURES[0].parent / "st-teseo-liv4f.log", 0) if f.utc_ms]
    assert st
    assert all(f.time_trusted for f in st)


def test_capture_counters() -> None:
    """The checksum-less lines planted in the captures are counted, not decoded."""
    dec = NmeaDecoder()
    dec.feed((CAPTURES[0].parent / "st-teseo-liv4f.log").read_bytes())
    # two prose lines starting with '$' and one GPGSV with a wrong checksum
    assert dec.checksum_errors == 3
    assert dec.parse_errors == 0
    assert dec.sentences_ok > 300
