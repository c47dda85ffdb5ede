"""Assembles the agent's health snapshot from the store, drivers and uplink.

The schema is described in :mod:`gateway.health`. Driver and uplink figures come from
their ``state`` and ``stats()``; missing figures are ``null``, never invented.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

from gateway.health import STATE_VERSION

log = logging.getLogger(__name__)


def plain(obj: Any) -> Any:
    """A JSON-able copy of driver/uplink stats (dataclasses, enums, mappings)."""
    if isinstance(obj, Enum):
        return obj.name.lower()
    if is_dataclass(obj) and not isinstance(obj, type):
        # field by field, not asdict(): that deep-copies, and read-only mappings
        # (StoreStats' MappingProxyType) cannot be copied
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def _component(obj: Any) -> dict[str, Any] | None:
    """``{"state": ..., **stats()}`` of a driver or the uplink, or None if absent."""
    if obj is None:
        return None
    out: dict[str, Any] = {}
    try:
        stats = plain(obj.stats())
    except Exception as exc:  # noqa: BLE001  # a broken stats() must not break the health report
        log.debug("stats() of %s failed: %s", type(obj).__name__, exc)
        stats = {}
    if isinstance(stats, dict):
        out.update(stats)
    out["state"] = plain(getattr(obj, "state", None))
    return out


def _joined(sec: dict[str, Any] | None, ingest: Any, part: str) -> dict[str, Any] | None:
    """A driver's section with the figures ``ingest`` adds to it."""
    if sec is None or ingest is None:
        return sec
    return {**sec, **getattr(ingest, part)()}


def _buffer_section(stats: Any, committed_seq: int | None) -> dict[str, Any]:
    if stats is None:
        return {"committed_seq": committed_seq}
    evicted = dict(stats.evicted_by_class)
    expired = dict(stats.expired_by_class)
    return {
        "pending": stats.pending,
        "pending_bytes": stats.pending_bytes,
        "pending_by_class": dict(stats.pending_by_class),
        "leased": stats.leased,
        "oldest_pending_ts_ms": stats.oldest_pending_ts_ms,
        "evicted": sum(evicted.values()),
        "evicted_by_class": evicted,
        "expired": sum(expired.values()),
        "expired_by_class": expired,
        "last_seq": stats.last_seq,
        "committed_seq": committed_seq,
        "file_bytes": stats.file_bytes,
        "disk_full": stats.disk_full,
        "quarantined_files": stats.quarantined_files,
        "lost_quarantine": getattr(stats, "lost_quarantine", 0),
    }


def build_snapshot(
    *,
    truck_id: str,
    phase: str,
    started_at: float,
    uptime_s: float,
    store_stats: Any,
    committed_seq: int | None,
    previous: Mapping[str, Any],
    gps: Any,
    can: Any,
    uplink: Any,
    tasks: Mapping[str, Any],
    problem: str | None,
    clock: Any = None,
    now: float | None = None,
    ingest: Any = None,
) -> dict[str, Any]:
    """Assemble one state-file snapshot (see the module docstring for the schema).

    ``ingest`` (:class:`gateway.ingest.Ingest`) adds the recording policies' counters
    to the ``gps`` and ``can`` sections.

    Sections whose source is unavailable this time (the store did not answer) are
    carried over from ``previous`` so a reader always sees the last known figures.
    """
    now = time.time() if now is None else now
    buffer = _buffer_section(store_stats, committed_seq)
    if store_stats is None and isinstance(previous.get("buffer"), Mapping):
        buffer = {**previous["buffer"], "committed_seq": committed_seq}
    snap: dict[str, Any] = {
        "version": STATE_VERSION,
        "truck_id": truck_id,
        "pid": os.getpid(),
        "phase": phase,
        "started_at": started_at,
        "updated_at": now,
        "uptime_s": round(uptime_s, 3),
        "healthy": problem is None,
        "unhealthy_reason": problem,
        "uplink": normalise_uplink(_component(uplink)),
        "buffer": buffer,
        "gps": normalise_gps(_joined(_component(gps), ingest, "gps_section")),
        "can": normalise_can(_joined(_component(can), ingest, "can_section"),
                             previous.get("can"), now),
        "tasks": plain(tasks),
        "clock": plain(clock or {}),
    }
    return snap


def normalise_uplink(sec: dict[str, Any] | None) -> dict[str, Any]:
    """Guarantee ``state`` (lower case) and ``last_publish_at`` in the uplink section.

    ``last_publish_at`` (UNIX seconds) is the last publish the broker acknowledged
    (``last_ack_ts_ms``), falling back to the last one sent.
    """
    out = dict(sec or {"state": "not started"})
    if isinstance(out.get("state"), str):
        out["state"] = out["state"].lower()
    if out.get("last_publish_at") is None:
        ms = out.get("last_ack_ts_ms") or out.get("last_publish_ts_ms")
        out["last_publish_at"] = ms / 1000 if isinstance(ms, int | float) else None
    return out


def normalise_gps(sec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Guarantee ``fix`` and ``last_fix_age_s`` in the GPS section.

    ``fix`` is true while the driver's state is ``fix`` (drivers.gps.GpsState.FIX).
    """
    if sec is None:
        return None
    sec.setdefault("fix", sec.get("state") == "fix")
    sec.setdefault("last_fix_age_s", None)
    return sec


#: CAN counters summed into the section's ``errors`` figure
CAN_ERROR_KEYS = ("error_frames", "decode_errors", "tp_errors", "dropped")


def normalise_can(
    sec: dict[str, Any] | None, previous: Any, now: float
) -> dict[str, Any] | None:
    """Guarantee ``frames_per_s`` and ``errors`` in the CAN section.

    ``errors`` sums :data:`CAN_ERROR_KEYS` (bus error frames, undecodable frames,
    transport-protocol failures, frames dropped by a full reader queue) when the driver
    does not report it itself. When the driver reports only a frame counter
    (``frames_total``), the rate is the change since the previous snapshot.
    """
    if sec is None:
        return None
    frames = sec.get("frames_total")
    if sec.get("frames_per_s") is None:
        rate = None
        if isinstance(previous, Mapping) and isinstance(frames, int):
            pf, pt = previous.get("frames_total"), previous.get("_at")
            if isinstance(pf, int) and isinstance(pt, int | float) and now > pt and frames >= pf:
                rate = round((frames - pf) / (now - pt), 1)
        sec["frames_per_s"] = rate
    if sec.get("errors") is None:
        found = [v for k in CAN_ERROR_KEYS if isinstance(v := sec.get(k), int)]
        sec["errors"] = sum(found) if found else None
    sec["_at"] = now
    return sec
