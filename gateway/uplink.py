"""The MQTT uplink: at-least-once delivery from the buffer to the broker, live first.

The decisions are the pure :class:`~gateway.delivery.Delivery` core's (in-flight
window, lanes, bandwidth cap, payload size, backoff, counters); this module is the
outer asyncio shell: one :class:`~gateway.uplink_link.Link` (fresh paho client, one
TaskGroup) per connection, and between connections the backoff the core chose.

Per connection: publish the retained ``online`` status, then keep up to
``inflight_window`` event messages in flight, leased from the store's live lane
(newest first) and backfill lane (oldest first) in the ``live_share`` split. A PUBACK
acks (deletes) exactly the seqs its message carried; anything not PUBACKed when the
connection ends is released and sent again later with the same seqs.

Broker refusals are logged, backed off and retried; :meth:`Uplink.run` never raises
for broker or network problems. The store keeps collecting meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from buffer.api import EventStore, StateStore
from config import MqttConfig, TruckConfig
from config.errors import StoreError, UplinkError
from config.retry import sleep_unless
from gateway import wire
from gateway.budget import STEPS, BudgetPolicy, linger_s
from gateway.delivery import BACKFILL_MAX_EVENTS, HEALTHY_AFTER_S, LIVE_MAX_EVENTS, Delivery
from gateway.delivery_actions import Ack, Release, UplinkState, UplinkStats
from gateway.failover import BrokerView, Failover, format_address
from gateway.uplink_link import CLOSE_GRACE_S, Link, LinkHooks, LinkSetup
from gateway.uplink_settle import Settler
from gateway.uplink_status import StatusReport
from gateway.usage import STATE_KEY, UsageMeter

__all__ = [
    "BACKFILL_MAX_EVENTS",
    "LIVE_MAX_EVENTS",
    "Uplink",
    "UplinkState",
    "UplinkStats",
]

log = logging.getLogger(__name__)


class Uplink:
    """Delivers buffered events to the broker; see the module docstring."""

    def __init__(
        self,
        cfg: TruckConfig,
        store: EventStore,
        *,
        status_extra: Callable[[], Mapping[str, Any]] | None = None,
        wire_context: Callable[[], wire.WireContext] | None = None,
        hooks: LinkHooks | None = None,
        on_budget_step: Callable[[int], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._hooks = hooks
        self._store = store
        self._core = Delivery(cfg.truck_id, cfg.mqtt, time.monotonic())
        if wire_context is not None:  # the stream id and ts correction (docs/wire-format.md)
            self._core.wire_context = wire_context
        self._settler = Settler(store, self._ack_report)
        self._failover = Failover.from_config(cfg.mqtt, HEALTHY_AFTER_S)
        self.usage = UsageMeter()
        self._usage_loaded = False
        self.budget = BudgetPolicy(cfg.mqtt.data_budget_mb_month)
        self._on_budget_step = on_budget_step
        self._status = StatusReport(cfg, store, self.stats, status_extra, wire_context,
                                    broker=self._broker_fields,
                                    usage=lambda: self.usage.view(_wall_ms()).as_status(),
                                    budget=self._budget_fields)
        self._setup = LinkSetup.from_config(cfg)
        self._setups: dict[int, LinkSetup] = {0: self._setup}
        self._link: Link | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._run_done = asyncio.Event()
        self._running = False

    @property
    def state(self) -> UplinkState:
        """Where the uplink is in its connection cycle."""
        return self._core.state

    @property
    def max_payload_bytes(self) -> int:
        """The payload limit now (shrunk below the broker's limits when it refused)."""
        return self._core.max_payload_bytes

    @property
    def broker(self) -> BrokerView:
        """The broker of the failover list the uplink is on (or tries next)."""
        return self._failover.view()

    def _broker_fields(self) -> dict[str, object]:
        v = self._failover.view()
        return {"address": v.address, "index": v.index, "switches": v.switches}

    def _link_setup(self) -> LinkSetup:
        """The setup of the current failover address (its host and port in the config)."""
        i = self._failover.index
        if i not in self._setups:
            host, port = self._failover.current
            cfg = self._cfg
            cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, host=host,
                                                                    port=port))
            self._setups[i] = dataclasses.replace(self._setup, cfg=cfg)
        return self._setups[i]

    def stats(self) -> UplinkStats:
        """Counters for the status topic, the state file and metrics."""
        wall = _wall_ms()
        u = self.usage.view(wall)
        return dataclasses.replace(
            self._core.stats(time.monotonic(), wall), usage_up_bytes_today=u.up_today,
            usage_down_bytes_today=u.down_today, usage_up_bytes_month=u.up_month,
            usage_down_bytes_month=u.down_month)

    async def _load_usage(self) -> None:
        """The usage counters of earlier runs, from the buffer's state table."""
        if self._usage_loaded:
            return
        self._usage_loaded = True
        if not _has_state(self._store):
            return  # a store without a state table: counted from zero each run
        try:
            self.usage = UsageMeter.from_bytes(await self._store.get_state(STATE_KEY))
        except StoreError as exc:
            log.warning("uplink: usage counters not read from the buffer: %s", exc)

    def _budget_fields(self) -> dict[str, object] | None:
        return self.budget.view().as_status() if self.budget.enabled else None

    async def every_minute(self) -> None:
        """Keep the usage counters; look at the data budget's projection."""
        await self.save_usage()
        self.check_budget()

    def check_budget(self) -> None:
        """Move to the data budget's next (or previous) step if the projection says so
        (gateway.budget): a longer linger here, the recording steps through
        ``on_budget_step``."""
        if not self.budget.update(self.usage.projected_month(_wall_ms()), time.monotonic()):
            return
        b, m = self.budget, self._cfg.mqtt
        log.warning("uplink: data budget %g MB a month, projected %.1f MB: step %d (%s)",
                    b.mb_month, b.projected_mb, b.step, STEPS[b.step])
        self._core.set_budget_linger(None if b.step == 0 else linger_s(m.max_latency_s,
                                                                       b.step))
        if self._on_budget_step is not None:
            self._on_budget_step(b.step)

    async def save_usage(self) -> None:
        """Keep the usage counters in the buffer's state table (every minute, at close)."""
        if not _has_state(self._store):
            return
        try:
            await self._store.put_state(STATE_KEY, self.usage.to_bytes())
        except StoreError as exc:
            log.warning("uplink: usage counters not saved: %s", exc)

    def _ack_report(self, seqs: tuple[int, ...], error: str | None) -> None:
        """The settler's word on a round of deletes: to the core (held on failure)."""
        now = time.monotonic()
        if error is None:
            self._core.ack_stored(now)
            return
        for act in self._core.ack_failed(seqs, now, error):
            if isinstance(act, Release):
                self._settler.release(act.seqs)

    def reconfigure(self, m: MqttConfig) -> None:
        """New live settings (live share, bandwidth cap, status interval); see
        :meth:`Delivery.reconfigure`."""
        self._core.reconfigure(m, time.monotonic())

    async def run(self) -> None:
        """Connect, deliver, reconnect with backoff; runs until cancelled or closed."""
        if self._running:
            raise UplinkError("Uplink.run() is already running")
        self._running = True
        self._run_done.clear()
        executor = concurrent.futures.ThreadPoolExecutor(1, "truckgw-uplink-connect")
        try:
            await self._load_usage()
            self.check_budget()
            while not self._closing:
                self._link = Link(self._link_setup(), self._core, store=self._store,
                                  settler=self._settler, status=self._status,
                                  executor=executor, hooks=self._hooks,
                                  usage=self.usage, every_minute=self.every_minute)
                connects, started = self._core.stats(0.0, 0).connects, time.monotonic()
                try:
                    again = await self._link.serve()
                finally:
                    self._link = None
                if again is None or self._closing:
                    break
                up = self._core.stats(0.0, 0).connects > connects
                after = self._failover.ended(up_s=time.monotonic() - started if up else None,
                                             core_after_s=again.after_s)
                if len(self._failover.addresses) > 1:
                    log.warning("uplink: next broker %s in %.1f s",
                                format_address(*self._failover.current), after)
                self._wake.clear()
                if await sleep_unless(self._wake, after):
                    break
        finally:
            self._core.stopped()
            executor.shutdown(wait=False, cancel_futures=True)
            self._running = False
            self._run_done.set()

    async def close(self) -> None:
        """Publish the retained offline status if connected, disconnect, stop."""
        self._closing = True
        for act in self._core.close(time.monotonic()):
            if isinstance(act, Ack):
                self._settler.ack(act.seqs)
            elif isinstance(act, Release):
                self._settler.release(act.seqs)
        self._wake.set()
        if self._link is not None:
            self._link.request_close()
        if self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE_S * 2):
                    await self._run_done.wait()
        await self._settler.flush()
        if self._usage_loaded:
            await self.save_usage()
        self._core.stopped()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _has_state(store: EventStore) -> TypeGuard[StateStore]:
    """Whether the store keeps the agent's own state blobs (SqliteStore does)."""
    return hasattr(store, "get_state") and hasattr(store, "put_state")
