"""Reader for gpsd regression decodes (``X.log.chk``): the expected fix per epoch.

A ``.chk`` file interleaves each input sentence with the JSON reports gpsd made after
it. For every ``TPV`` with a ``time`` the *last* such report of that time is the most
complete one and is what we compare against. ``TPV`` reports with mode 1 and no time
are attached to the time of day of the sentence that preceded them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data" / "nmea"

#: Sentence kinds whose field 1 (or 5 for GLL) is the UTC time of day.
_TIME_FIELD = {"RMC": 1, "GGA": 1, "GNS": 1, "GST": 1, "GBS": 1, "ZDA": 1, "GLL": 5}


@dataclass
class Expected:
    """gpsd's view of one epoch, keyed by UTC time of day in ms."""

    tod_ms: int
    tpv: dict[str, Any] | None = None  # last TPV with this time
    no_fix_reports: int = 0  # mode-1 TPVs seen during this epoch
    fix_reports: int = 0  # mode 2/3 TPVs seen during this epoch
    modes: list[int] = field(default_factory=list)


def captures() -> list[Path]:
    """Every capture with a gpsd decode next to it."""
    return sorted(p for p in DATA.glob("*.log") if p.with_name(p.name + ".chk").exists())


def _sentence_tod(line: str) -> int | None:
    body = line.lstrip("$").split("*")[0].split(",")
    idx = _TIME_FIELD.get(body[0][2:])
    if idx is None or len(body) <= idx or len(body[idx]) < 6:
        return None
    s = body[idx]
    try:
        return (int(s[0:2]) * 3600 + int(s[2:4]) * 60) * 1000 + round(float(s[4:]) * 1000)
    except ValueError:
        return None


def tpv_time(tpv: dict[str, Any]) -> dt.datetime:
    """The ``time`` of a TPV as an aware datetime."""
    return dt.datetime.fromisoformat(str(tpv["time"]).replace("Z", "+00:00"))


def load_expected(capture: Path) -> dict[int, Expected]:
    """Parse ``capture``.chk into expectations keyed by time of day (ms)."""
    out: dict[int, Expected] = {}
    current: int | None = None
    text = capture.with_name(capture.name + ".chk").read_text(encoding="ascii", errors="replace")
    for line in text.splitlines():
        if line.startswith("$"):
            tod = _sentence_tod(line)
            if tod is not None:
                current = tod
            continue
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if obj.get("class") != "TPV":
            continue
        if "time" in obj:
            t = tpv_time(obj)
            tod = ((t.hour * 3600 + t.minute * 60 + t.second) * 1000) + t.microsecond // 1000
        else:
            tod = current
        if tod is None:
            continue
        exp = out.setdefault(tod, Expected(tod))
        mode = int(obj.get("mode", 0))
        exp.modes.append(mode)
        if mode <= 1:
            exp.no_fix_reports += 1
        else:
            exp.fix_reports += 1
        if "time" in obj:
            exp.tpv = obj
    return out
