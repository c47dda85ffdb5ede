"""The retained status message of the uplink: topic, properties and payloads.

On change plus a slow heartbeat (issue #14): the core asks for a status every
``[mqtt].status_interval_s``; :class:`StatusGate` (pure, time passed in) lets it go only
when what a fleet acts on changed (:func:`signature`) or ``status_heartbeat_s`` passed
since the last one. Every connect publishes one. ``status_detail = "slim"`` (the
default) leaves the health sections (``gps``, ``can``, ``buffer``, ``uptime_s``) out: they
stay in the local state file (``truckgw status``) and answer the remote ``status``
command. What identifies the vehicle (its ECUs' NAMEs per source address, the FMS
interface, the drivers' cards: :func:`vehicle_identity`) goes in every status as
``vehicle``, and a change of it is worth a status of its own.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from buffer.api import EventStore
from config import TruckConfig
from gateway import __version__, wire
from gateway.delivery_actions import UplinkStats

log = logging.getLogger(__name__)

#: The health sections a slim status keeps from the embedding app's extra fields.
SLIM_EXTRA = ("healthy",)
#: A backlog whose oldest event is at most this old is "caught up" (live traffic in
#: flight or lingering), not a backlog worth a status of its own.
CAUGHT_UP_S = 120.0

#: The uplink counters repeated in the online status.
STATUS_COUNTERS = ("reconnects", "published_events", "acked_events", "refusals",
                   "ack_failures", "size_refusals")


class StatusReport:
    """Builds ``online`` / ``offline`` status payloads for one truck."""

    def __init__(
        self,
        cfg: TruckConfig,
        store: EventStore,
        stats: Callable[[], UplinkStats],
        extra: Callable[[], Mapping[str, Any]] | None = None,
        wire_context: Callable[[], wire.WireContext] | None = None,
        *,
        broker: Callable[[], Mapping[str, Any]] | None = None,
        usage: Callable[[], Mapping[str, Any]] | None = None,
        budget: Callable[[], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._stats = stats
        self._extra = extra
        self._wire_context = wire_context
        self._broker = broker
        self._usage = usage
        self._budget = budget
        #: on change plus the heartbeat (shared by every connection of the uplink)
        self.gate = StatusGate(cfg.mqtt.status_heartbeat_s)

    def payload(self, state: str, fields: Mapping[str, Any]) -> bytes:
        """A status message body with the extra fields of the embedding app (only
        :data:`SLIM_EXTRA` of them when ``status_detail`` is slim)."""
        out: dict[str, Any] = dict(fields)
        if self._wire_context is not None:  # every status, the last will too
            out.setdefault("stream", self._wire_context().stream)
        slim = self._cfg.mqtt.status_detail == "slim"
        if self._extra is not None:
            try:
                extra = dict(self._extra())
                for k, v in extra.items():
                    if not slim or k in SLIM_EXTRA:
                        out.setdefault(k, v)
                vehicle = vehicle_identity(extra.get("can"))
                if vehicle:
                    out.setdefault("vehicle", vehicle)
            except Exception:  # a health callback must never break the uplink
                log.exception("uplink: status_extra callback failed")
        return wire.encode_status(self._cfg.truck_id, state, _now_ms(), out)

    def gate_view(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``fields`` with what the gate also watches from the health: ``healthy`` and,
        with ``status_detail = "full"``, the ``state`` of each health section."""
        out = dict(fields)
        if self._extra is None:
            return out
        try:
            extra = dict(self._extra())
        except Exception:  # a health callback must never break the uplink
            log.exception("uplink: status_extra callback failed")
            return out
        out["healthy"] = extra.get("healthy")
        out["vehicle"] = vehicle_identity(extra.get("can"))
        if self._cfg.mqtt.status_detail == "full":
            out["sections"] = tuple(sorted(
                (k, v.get("state")) for k, v in extra.items() if isinstance(v, Mapping)))
        return out

    async def online_fields(self) -> dict[str, Any]:
        """Fields of the online status: version, buffer backlog, drop counters, uplink."""
        st = await self._store.stats()
        now = _now_ms()
        oldest = st.oldest_pending_ts_ms
        stats = self._stats()
        out: dict[str, Any] = {
            "version": __version__,
            "pending": st.pending,
            "pending_bytes": st.pending_bytes,
            "oldest_pending_ts": oldest,
            "oldest_pending_age_s": None if oldest is None else max(0, now - oldest) / 1000,
            "evicted": dict(st.evicted_by_class),
            "expired": dict(st.expired_by_class),
            "disk_full": st.disk_full,
            "refused": st.refused,
            "lost_quarantine": st.lost_quarantine,
            "encoding": self._cfg.mqtt.encoding,
            "uplink": {k: getattr(stats, k) for k in STATUS_COUNTERS},
        }
        if self._broker is not None:  # the failover list's address, index and moves
            out["broker"] = dict(self._broker())
        if self._usage is not None:  # the SIM's bytes today and this month (heartbeat)
            out["usage"] = dict(self._usage())
        budget = self._budget() if self._budget is not None else None
        if budget is not None:  # [mqtt].data_budget_mb_month set: its step
            out["budget"] = dict(budget)
        return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def vehicle_identity(can: Any) -> dict[str, Any]:
    """The ``vehicle`` of a status, from the CAN health section (drivers/can.py stats):
    ``names`` (source address, two hex digits -> the ECU's 64-bit NAME from Address
    Claimed, 16 hex digits), ``address_moves`` (NAMEs seen at another address since the
    start), ``fms`` (the FMS-Standard interface per address: version and flags) and
    ``drivers`` (the tachograph's driver 1 / driver 2 card identification). Parts not
    seen on the bus are absent; no CAN section: empty."""
    if not isinstance(can, Mapping):
        return {}
    out: dict[str, Any] = {}
    names = can.get("names")
    if isinstance(names, Mapping) and names:
        out["names"] = {str(sa): (n.get("name") if isinstance(n, Mapping) else n)
                        for sa, n in names.items()}
    moves = can.get("address_moves")
    if isinstance(moves, int) and not isinstance(moves, bool) and moves > 0:
        out["address_moves"] = moves
    for key in ("fms", "drivers"):
        part = can.get(key)
        if isinstance(part, Mapping) and part:
            out[key] = {str(sa): dict(v) if isinstance(v, Mapping) else v
                        for sa, v in part.items()}
    return out


def backlog_level(fields: Mapping[str, Any]) -> int:
    """0 when caught up (nothing pending, or the oldest pending event at most
    :data:`CAUGHT_UP_S` old), else 2 + the decade of ``pending`` (1..9: 2, 10..99: 3, ...)."""
    pending = fields.get("pending")
    age = fields.get("oldest_pending_age_s")
    if not isinstance(pending, int) or pending <= 0 or age is None or age <= CAUGHT_UP_S:
        return 0
    return 2 + int(math.log10(pending))


def signature(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a fleet acts on in an online status: a change of it is worth a message.

    The identity (stream, version, encoding, broker address, the ``vehicle``: an ECU
    that moved to another address, a driver's card in or out), every drop counter a
    consumer's gap accounting uses (``evicted``, ``expired``, ``refused``,
    ``lost_quarantine``), the disk, the refusal counters, the data budget's step, the
    backlog by decade (:func:`backlog_level`), ``healthy`` and (``status_detail =
    "full"``) the state of each health section (:meth:`StatusReport.gate_view`). Not
    the counters that move with every event (``published_events``, ``acked_events``,
    ``pending`` itself): those go with the heartbeat."""
    up = fields.get("uplink") or {}
    broker = fields.get("broker") or {}
    budget = fields.get("budget") or {}
    vehicle = json.dumps(fields.get("vehicle") or {}, sort_keys=True, default=str)
    return (
        fields.get("stream"), fields.get("version"), fields.get("encoding"),
        broker.get("address"), fields.get("disk_full"), fields.get("refused"),
        fields.get("lost_quarantine"),
        tuple(sorted((fields.get("evicted") or {}).items())),
        tuple(sorted((fields.get("expired") or {}).items())),
        up.get("refusals"), up.get("ack_failures"), up.get("size_refusals"),
        budget.get("step"), backlog_level(fields), fields.get("healthy"),
        fields.get("sections"), vehicle,
    )


class StatusGate:
    """Pure: whether an online status is due (on change, or the heartbeat); time passed in."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self._sig: tuple[Any, ...] | None = None
        self._at: float | None = None
        #: statuses the gate held back (nothing changed, heartbeat not due)
        self.skipped = 0

    def due(self, fields: Mapping[str, Any], now: float) -> bool:
        """True if a status with ``fields`` should go at ``now``."""
        if self._at is None or now - self._at >= self.heartbeat_s:
            return True
        if signature(fields) != self._sig:
            return True
        self.skipped += 1
        return False

    def sent(self, fields: Mapping[str, Any], now: float) -> None:
        """A status with ``fields`` went at ``now``."""
        self._sig = signature(fields)
        self._at = now
