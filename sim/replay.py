"""Replay captured logs to the simulator's outputs at real or accelerated speed.

- NMEA: gpsd-style logs (raw receiver output; ``#`` comment lines are skipped). The
  bytes are replayed verbatim, malformations included, one receiver epoch (the
  sentences sharing one UTC time) per second of log time.
- CAN: ``candump -L`` logs, ``(epoch) iface ID#DATA``, with their original spacing.

Parsing is pure (:func:`nmea_epochs`, :func:`parse_candump`); :func:`replay` is the
asyncio shell. ``speed`` divides every delay: 10 plays a 127 s capture in 12.7 s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from config.errors import SimError
from sim.j1939_out import Frame
from sim.runner import CanOutput, GpsOutput

log = logging.getLogger(__name__)

_CANDUMP = re.compile(rb"\((?P<ts>\d+\.\d+)\)\s+\S+\s+(?P<id>[0-9A-Fa-f]+)#(?P<data>[0-9A-Fa-f]*)")
_TIMED = (b"RMC", b"GGA", b"GLL", b"ZDA", b"GNS")
TICK_S = 0.005


def nmea_epochs(data: bytes) -> list[bytes]:
    """Split a raw NMEA log into epochs: a new epoch starts when the UTC time changes."""
    epochs: list[bytes] = []
    cur: list[bytes] = []
    cur_time: bytes | None = None
    for line in data.splitlines(keepends=True):
        if line.startswith(b"#"):
            continue
        t = _sentence_time(line)
        if t is not None and cur_time is not None and t != cur_time and cur:
            epochs.append(b"".join(cur))
            cur = []
        if t is not None:
            cur_time = t
        cur.append(line if line.endswith(b"\r\n") else line.rstrip(b"\r\n") + b"\r\n")
    if cur:
        epochs.append(b"".join(cur))
    return epochs


def _sentence_time(line: bytes) -> bytes | None:
    start = line.find(b"$")
    if start < 0 or len(line) < start + 7:
        return None
    if line[start + 3 : start + 6] not in _TIMED:
        return None
    fields = line[start:].split(b",")
    if line[start + 3 : start + 6] == b"GLL":
        return fields[5] if len(fields) > 5 and fields[5] else None
    return fields[1] if len(fields) > 1 and fields[1] else None


@dataclass(frozen=True, slots=True)
class CandumpLog:
    """Frames of a candump ``-L`` log with their capture times (seconds)."""

    frames: tuple[tuple[float, Frame], ...]
    skipped: int

    @property
    def duration_s(self) -> float:
        """Capture time covered."""
        return self.frames[-1][0] - self.frames[0][0] if self.frames else 0.0


def parse_candump(data: bytes) -> CandumpLog:
    """Parse ``(ts) iface ID#DATA`` lines; standard-id, remote and FD frames are skipped."""
    out: list[tuple[float, Frame]] = []
    skipped = 0
    for line in data.splitlines():
        m = _CANDUMP.match(line.strip())
        if not m or len(m["id"]) != 8 or len(m["data"]) % 2 or len(m["data"]) > 16:
            skipped += 1 if line.strip() else 0
            continue
        out.append((float(m["ts"]), Frame(int(m["id"], 16), bytes.fromhex(m["data"].decode()))))
    return CandumpLog(tuple(out), skipped)


async def replay(*, epochs: list[bytes] | None = None, candump: CandumpLog | None = None,
                 gps: GpsOutput | None = None, can: CanOutput | None = None,
                 speed: float = 1.0, repeat: int = 1,
                 stop: asyncio.Event | None = None) -> dict[str, int]:
    """Play the logs to the outputs; returns how many epochs and frames were written."""
    if speed <= 0:
        raise SimError("speed must be > 0")
    sent = {"epochs": 0, "frames": 0}
    for _ in range(max(1, repeat)):
        await _once(epochs or [], candump=candump, gps=gps, can=can, speed=speed, stop=stop,
                    sent=sent)
        if stop is not None and stop.is_set():
            break
    return sent


async def _once(epochs: list[bytes], *, candump: CandumpLog | None, gps: GpsOutput | None,
                can: CanOutput | None, speed: float, stop: asyncio.Event | None,
                sent: dict[str, int]) -> None:
    frames = candump.frames if candump else ()
    t0_log = frames[0][0] if frames else 0.0
    start = time.monotonic()
    fi = ei = 0
    while fi < len(frames) or ei < len(epochs):
        if stop is not None and stop.is_set():
            return
        elapsed = (time.monotonic() - start) * speed
        batch: list[Frame] = []
        while fi < len(frames) and frames[fi][0] - t0_log <= elapsed:
            batch.append(frames[fi][1])
            fi += 1
        if can is not None:
            can.send(batch)
            sent["frames"] += len(batch)
        while ei < len(epochs) and ei <= elapsed:
            if gps is not None:
                gps.write(epochs[ei])
            sent["epochs"] += 1
            ei += 1
        await asyncio.sleep(TICK_S)
