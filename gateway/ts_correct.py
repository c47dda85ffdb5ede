"""Correcting the ``ts`` of events stamped before the clock was verified (pure).

An event stamped while neither GPS nor NTP had confirmed the time carries
``"ts_unverified": true`` and a ``ts`` from a system clock that may be off by however
long the truck was switched off. Ingest also stores, with such an event only, where it
happened on this boot's ``CLOCK_BOOTTIME``: the internal key :data:`BOOT_KEY` holding
``[boot_id, boottime_ms]``. It never travels: :func:`wire_body` removes it.

Once the clock is verified, :class:`gateway.clock.Clock` knows ``UTC - CLOCK_BOOTTIME``
(:attr:`Correction.offset_ms`). An event of the *same boot* (same kernel boot id: the
boottime counter is only meaningful within one boot) is then published with
``ts = boottime_ms + offset_ms``, without ``ts_unverified`` and with
``"ts_corrected": true``. Events of an earlier boot keep ``ts_unverified``: nothing
relates their boottime to the present one. See docs/time.md.

CLOCK_BOOTTIME rather than CLOCK_MONOTONIC: both run at the same rate and never step,
but BOOTTIME keeps counting while the machine is suspended, so an event stamped before
a suspend and corrected after it lands at its real time; MONOTONIC would place it too
late by the length of the suspend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from config.events import TS_UNVERIFIED

#: Internal key of a stored body: ``[boot_id, boottime_ms]`` of an unverified stamp.
BOOT_KEY: Final = "_boot"
#: Wire key: ``true`` when ``ts`` was corrected after the clock got verified.
TS_CORRECTED: Final = "ts_corrected"
#: The bytes of a stored body that holds a boot stamp (callers may test for it first).
BOOT_MARK: Final = b'"' + BOOT_KEY.encode() + b'":'
_ENC = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Correction:
    """What a verified clock says about this boot: its kernel boot id and
    ``UTC ms - CLOCK_BOOTTIME ms``."""

    boot_id: str
    offset_ms: int


def boot_stamp(boot_id: str, boottime_ms: int) -> list[Any]:
    """The value stored under :data:`BOOT_KEY` for an unverified stamp."""
    return [boot_id, boottime_ms]


def corrected(fields: dict[str, Any], correction: Correction | None) -> dict[str, Any]:
    """The wire fields of a decoded stored body (``ts``, ``type``, ... ) after the rules
    of the module docstring; ``fields`` is not changed."""
    out = dict(fields)
    stamp = out.pop(BOOT_KEY, None)
    if (correction is None or not out.get(TS_UNVERIFIED) or not isinstance(stamp, list)
            or len(stamp) != 2 or stamp[0] != correction.boot_id or not correction.boot_id
            or not isinstance(stamp[1], int) or isinstance(stamp[1], bool)):
        return out
    out["ts"] = stamp[1] + correction.offset_ms
    del out[TS_UNVERIFIED]
    out[TS_CORRECTED] = True
    return out


def wire_body(body: bytes, correction: Correction | None) -> bytes:
    """A stored body as it goes on the wire: unchanged unless it carries a boot stamp
    (the rare unverified event), then corrected or just stripped of the stamp.

    A body that is not a JSON object is returned as is (the encoder refuses it).
    """
    if BOOT_MARK not in body:
        return body
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    if not isinstance(obj, dict) or BOOT_KEY not in obj:
        return body
    return _ENC.encode(corrected(obj, correction)).encode()
