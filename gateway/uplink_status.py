"""The retained status message of the uplink: topic, properties and payloads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from buffer.api import EventStore
from config import TruckConfig
from gateway import __version__, wire
from gateway.delivery_actions import UplinkStats

log = logging.getLogger(__name__)

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
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._stats = stats
        self._extra = extra
        self._wire_context = wire_context
        self._broker = broker

    def payload(self, state: str, fields: Mapping[str, Any]) -> bytes:
        """A status message body with the extra fields of the embedding app."""
        out: dict[str, Any] = dict(fields)
        if self._wire_context is not None:  # every status, the last will too
            out.setdefault("stream", self._wire_context().stream)
        if self._extra is not None:
            try:
                for k, v in self._extra().items():
                    out.setdefault(k, v)
            except Exception:  # a health callback must never break the uplink
                log.exception("uplink: status_extra callback failed")
        return wire.encode_status(self._cfg.truck_id, state, _now_ms(), out)

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
        return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
