"""The agent: config -> drivers -> buffer -> uplink in one asyncio TaskGroup.

Lifecycle (``truckgw run``):

1. Open the buffer. If it cannot be opened at all the agent exits with
   :data:`EX_FAILURE` (systemd's ``Restart=on-failure`` tries again later).
2. Tell systemd ``READY=1`` and start the named tasks ``gps``, ``can``, ``uplink``
   (each under a supervisor that restarts it with capped random backoff, so a GPS
   fault never takes down CAN or the uplink), ``monitor`` (health snapshot, state
   file, metrics), ``watchdog`` (``WATCHDOG=1`` only while healthy) and ``fleet``
   (:data:`FLEET_TICK_S` ticks of the derived fleet events; the open trip is saved to
   the buffer's ``state`` table at most every ``[events] state_interval_s``, at once
   when a trip starts or ends; it was restored from there before the drivers started).
3. SIGTERM / SIGINT: stop the drivers, publish the retained offline status, save the
   open trip, flush pending appends and close the database, write a last snapshot,
   exit 0, all within :data:`SHUTDOWN_BUDGET_S`.

A task that raises :class:`~config.errors.ConfigError` stops the agent with
:data:`~config.EX_CONFIG` (78; the unit's ``RestartPreventExitStatus``), since
retrying cannot help. A pipeline that stays unhealthy for
:data:`FATAL_UNHEALTHY_S` stops the agent with :data:`EX_FAILURE` even without a
systemd watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from buffer.store import SqliteStore, StoreState
from config import EX_CONFIG, TruckConfig
from config.errors import ConfigError, StoreError
from config.events import Event
from gateway import __version__, wire
from gateway.clock import Clock
from gateway.health import HealthWriter
from gateway.ingest import Ingest
from gateway.liveness import CommitTracker, HealthProbe
from gateway.logsetup import RateLimitFilter, set_journal_identity, setup_logging
from gateway.remote.startup import EX_RESTART, reexec
from gateway.sdnotify import Notifier, watchdog_interval_s
from gateway.snapshot import build_snapshot
from gateway.supervisor import TaskInfo, supervise
from gateway.wire import WireContext

log = logging.getLogger(__name__)

EX_OK = 0
EX_FAILURE = 1  # unrecoverable fault: systemd restarts the unit
SHUTDOWN_BUDGET_S = 4.5  # the issue asks for exit within 5 s of SIGTERM
FATAL_UNHEALTHY_S = 300.0
DEFAULT_STALL_S = 10.0
FLEET_TICK_S = 1.0  # how often the derived fleet events see time pass
#: The key of the open trip (FleetEvents.snapshot) in the buffer's ``state`` table.
FLEET_STATE_KEY = "fleet_events"


class Phase(Enum):
    """Where the agent is in its life; written to the state file."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    def __repr__(self) -> str:
        return f"Phase.{self.name}"


def usable_encoding(cfg: TruckConfig) -> TruckConfig:
    """``cfg``, with ``compact`` instead of ``compact-dict`` if this install's dictionary
    cannot be loaded (logged as an error; the status then says ``compact``)."""
    problem = wire.encoding_problem(cfg.mqtt.encoding)
    if problem is None:
        return cfg
    log.error("wire: encoding compact-dict unavailable (%s); sending compact instead, "
              "which every consumer decodes: reinstall truckgw", problem)
    return dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, encoding="compact"))


class Agent:
    """One truck's pipeline; :meth:`run` returns the process exit code."""

    def __init__(
        self,
        cfg: TruckConfig,
        notifier: Notifier | None = None,
        limiter: RateLimitFilter | None = None,
    ) -> None:
        self.cfg = usable_encoding(cfg)
        self.limiter = limiter
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.clock = Clock()
        self.phase = Phase.STARTING
        self.tasks: dict[str, TaskInfo] = {}
        self.exit_code = EX_OK
        self._stop = asyncio.Event()
        self._stop_requested_at: float | None = None
        self._started_mono = time.monotonic()
        self._started_at = time.time()
        self._wd_s = watchdog_interval_s()
        stall_s = max(self._wd_s, 2.0) if self._wd_s else DEFAULT_STALL_S
        self.commits = CommitTracker(stall_s=stall_s)
        self.probe = HealthProbe(stall_s=max(stall_s, 3 * cfg.metrics.interval_s))
        self.writer = HealthWriter(cfg.state_file, cfg.metrics.textfile)
        self.store: SqliteStore | None = None
        self.ingest = Ingest(
            self.submit, self.clock,
            gps=cfg.gps.sampling if cfg.gps is not None else None,
            can=cfg.can.sampling if cfg.can is not None else None,
            events=cfg.events,
        )
        self.gps: Any = None
        self.can: Any = None
        self.uplink: Any = None
        self.remote: Any = None  # gateway.remote.shell.RemoteShell when [remote] needs it
        self._snapshot: dict[str, Any] = {}
        self._last_hwm: int | None = None
        self._fleet_saved: bytes | None = None  # the blob the buffer holds now
        self._fleet_saved_at = -math.inf  # monotonic s of that write
        self._fleet_failed_at = -math.inf  # monotonic s of the last failed write

    # ------------------------------------------------------------------ control

    def request_stop(self, code: int = EX_OK, reason: str = "stop requested") -> None:
        """Begin an orderly shutdown; the first non-zero code wins."""
        if not self._stop.is_set():
            log.info("stopping: %s", reason)
            self._stop_requested_at = time.monotonic()
        if code and not self.exit_code:
            self.exit_code = code
        self._stop.set()

    def submit(self, event: Event) -> asyncio.Future[int]:
        """Where :class:`Ingest` hands events: the store's submit, counted for the watchdog."""
        assert self.store is not None  # noqa: S101  # drivers start after the store opens
        fut: asyncio.Future[int] = self.store.submit(event)
        self.commits.submitted(fut)
        return fut

    def status_extra(self) -> dict[str, Any]:
        """GPS / CAN / buffer health for the uplink's status topic (last snapshot)."""
        snap = self._snapshot
        return {k: snap.get(k) for k in ("buffer", "gps", "can", "uptime_s", "healthy")}

    def wire_context(self) -> WireContext:
        """The buffer's stream id and the clock's ts correction, for the encoder."""
        stream = self.store.stream if self.store is not None else ""
        return WireContext(stream, self.clock.correction)

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        """Run until stopped; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, EX_OK, signal.Signals(sig).name)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.notifier.close()

    async def _run(self) -> int:
        log.info("truckgw %s starting for truck %s (pid %d)",
                 __version__, self.cfg.truck_id, os.getpid())
        self._write_snapshot()
        try:
            self.store = await SqliteStore.open(self.cfg.buffer, now_ms=self.clock.now_ms)
        except Exception as exc:  # any failure to open is fatal: report and let systemd retry
            log.critical("cannot open the buffer %s: %s", self.cfg.buffer.path, exc,
                         exc_info=log.isEnabledFor(logging.DEBUG))
            self.phase = Phase.FAILED
            self._write_snapshot(error=f"cannot open the buffer: {exc}")
            return EX_CONFIG if isinstance(exc, ConfigError) else EX_FAILURE
        await self._restore_fleet()
        self.phase = Phase.RUNNING
        self.notifier.ready(status=f"buffer open at seq {self.store.last_committed_seq}")
        log.info("buffer open at %s; committed seq high-water mark %d",
                 self.cfg.buffer.path, self.store.last_committed_seq)
        try:
            async with asyncio.TaskGroup() as tg:
                drivers: list[asyncio.Task[None]] = []
                if self.cfg.gps is not None:
                    drivers.append(self._spawn(tg, "gps", self._run_gps))
                if self.cfg.can is not None:
                    drivers.append(self._spawn(tg, "can", self._run_can))
                self.remote = self._remote_shell()
                uplink = self._spawn(tg, "uplink", self._run_uplink)
                aux = [tg.create_task(self._monitor(), name="monitor"),
                       tg.create_task(self._watchdog(), name="watchdog"),
                       tg.create_task(self._fleet(), name="fleet")]
                if self.remote is not None:
                    aux.append(tg.create_task(self.remote.run(), name="remote"))
                await self._stop.wait()
                await self._shutdown(drivers, uplink, aux)
        finally:
            await self._close_store()
        self.phase = Phase.STOPPED if self.exit_code == EX_OK else Phase.FAILED
        await self._refresh()
        took = time.monotonic() - (self._stop_requested_at or time.monotonic())
        log.info("stopped with exit code %d; committed seq high-water mark %s; shutdown %.2f s",
                 self.exit_code, self._snapshot.get("buffer", {}).get("committed_seq"), took)
        return self.exit_code

    def _spawn(
        self, tg: asyncio.TaskGroup, name: str, body: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        self.tasks[name] = TaskInfo(name)
        return tg.create_task(self._supervise(self.tasks[name], body), name=name)

    async def _supervise(self, info: TaskInfo, body: Callable[[], Awaitable[None]]) -> None:
        await supervise(info, body, self._stop, self.request_stop)

    # ------------------------------------------------------------------ tasks

    async def _run_gps(self) -> None:
        from drivers.gps import GpsDriver  # noqa: PLC0415  # only when [gps] is configured

        assert self.cfg.gps is not None  # noqa: S101  # spawned only with [gps]
        self.gps = GpsDriver(self.cfg.gps, sink=self.ingest.on_fix)
        await self.gps.run()

    async def _run_can(self) -> None:
        from drivers.can import CanDriver  # noqa: PLC0415  # only when [can] is configured

        assert self.cfg.can is not None  # noqa: S101  # spawned only with [can]
        self.can = CanDriver(self.cfg.can, sink=self.ingest.on_can)
        await self.can.run()

    async def _run_uplink(self) -> None:
        from gateway.uplink import Uplink  # noqa: PLC0415  # keeps paho out of `status`

        assert self.store is not None  # noqa: S101  # spawned after the store opened
        self.uplink = Uplink(self.cfg, self.store, status_extra=self.status_extra,
                             wire_context=self.wire_context,
                             hooks=self.remote, on_budget_step=self.budget_step)
        try:
            await self.uplink.run()
        except asyncio.CancelledError:
            raise
        except BaseException:
            # a crashed uplink must not leave paho's thread or socket behind
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.uplink.close(), 2.0)
            raise

    # ------------------------------------------------------------------ remote (docs/remote.md)

    def _remote_shell(self) -> Any:
        """The remote-management shell when ``[remote]`` is on or a push awaits its
        confirmation; None otherwise."""
        if self.cfg.source is None:
            return None
        from gateway.remote.shell import RemoteShell  # noqa: PLC0415  # only with [remote]

        try:
            shell = RemoteShell(self)
        except OSError as exc:  # the key file went away since the config was checked
            log.error("remote management off: %s", exc)  # noqa: TRY400  # the reason says it
            return None
        return shell if shell.needed else None

    def wall_ms(self) -> int:
        """The truck's best wall clock (GPS-corrected), UNIX ms."""
        return self.clock.now_ms()

    def snapshot(self) -> dict[str, Any]:
        """The latest health snapshot (what ``truckgw status`` shows)."""
        return dict(self._snapshot)

    def position(self) -> dict[str, Any] | None:
        """The latest GPS fix with a position."""
        fix = self.ingest.last_fix
        if fix is None:
            return None
        out: dict[str, Any] = {k: getattr(fix, k) for k in fix.__dataclass_fields__
                               if k != "received"}
        if fix.received is not None:  # how old "now" is: seconds since it arrived
            out["age_s"] = round(time.monotonic() - fix.received, 3)
        return out

    def dtcs(self) -> list[dict[str, Any]]:
        """The active faults of each source, from its latest DM1."""
        return [{"src": sa, "lamps": u.dm1.lamps_dict(),
                 "active": [d.as_dict() for d in u.dm1.active]}
                for sa, u in sorted(self.ingest.active_dtcs.items())]

    async def flush(self) -> int:
        """Make every pending append durable; the committed seq high-water mark."""
        assert self.store is not None  # noqa: S101  # the shell runs after the store opened
        await self.store.flush()
        return self.store.last_committed_seq

    async def retry_refused(self) -> int:
        """Move the events the broker refused (dead letters) back to pending; how many."""
        assert self.store is not None  # noqa: S101  # the shell runs after the store opened
        return await self.store.retry_dead_letters()

    def apply_live(self, cfg: TruckConfig) -> None:
        """Make the live keys of ``cfg`` take effect (gateway.remote.desired.LIVE_KEYS)."""
        from gateway.logsetup import LEVELS  # noqa: PLC0415

        self.ingest.reconfigure(cfg.gps.sampling if cfg.gps else None,
                                cfg.can.sampling if cfg.can else None)
        if self.store is not None:
            self.store.set_ttl_s(cfg.buffer.ttl_s)
        cfg = usable_encoding(cfg)
        if self.uplink is not None:
            self.uplink.reconfigure(cfg.mqtt)
        logging.getLogger().setLevel(LEVELS[cfg.log.level])
        self.cfg = cfg
        if self.uplink is not None and self.uplink.budget.step:
            self.budget_step(self.uplink.budget.step)  # the budget's step still holds

    def budget_step(self, step: int) -> None:
        """The data budget's recording steps (gateway.budget): fewer positions from step
        2, engine telemetry as a heartbeat at step 3; critical events as before."""
        from gateway.budget import degraded_can, degraded_gps  # noqa: PLC0415

        cfg = self.cfg
        self.ingest.reconfigure(degraded_gps(cfg.gps.sampling, step) if cfg.gps else None,
                                degraded_can(cfg.can.sampling, step) if cfg.can else None)

    def request_pgn(self, pgn: int) -> bool:
        """Queue a J1939 request for ``pgn`` on the CAN bus."""
        return self.can is not None and bool(self.can.request(pgn))

    async def _monitor(self) -> None:
        """Refresh the health snapshot, state file and metrics every interval."""
        while not self._store_failed():
            await self._refresh()
            hwm = self._snapshot.get("buffer", {}).get("committed_seq")
            if hwm != self._last_hwm:
                self._last_hwm = hwm
                log.debug("committed seq high-water mark %s", hwm)
            if self.limiter is not None:
                self.limiter.flush()
            problem = self.probe.problem(self.commits, self._group_tasks_alive())
            if problem and self.probe.unhealthy_for() > FATAL_UNHEALTHY_S:
                self.request_stop(EX_FAILURE, f"unhealthy for too long: {problem}")
                return
            await asyncio.sleep(self.cfg.metrics.interval_s)

    async def _watchdog(self) -> None:
        """``WATCHDOG=1`` at half ``WatchdogSec`` while the pipeline is healthy."""
        if self._wd_s is None or not self.notifier.enabled:
            await self._stop.wait()
            return
        period = self._wd_s / 2
        reported: str | None = None
        while not self._store_failed():
            problem = self.probe.problem(self.commits, self._group_tasks_alive())
            if problem is None:
                self.notifier.watchdog()
                if reported is not None:
                    log.info("pipeline healthy again; watchdog pings resumed")
                    self.notifier.status("running")
            elif problem != reported:
                log.error("pipeline unhealthy, withholding watchdog pings: %s", problem)
                self.notifier.status(f"unhealthy: {problem}")
            reported = problem
            await asyncio.sleep(period)

    async def _fleet(self) -> None:
        """Tick the derived fleet events; keep the open trip in the buffer (bounded rate)."""
        if self.ingest.fleet is None:
            await self._stop.wait()
            return
        while not self._stop.is_set():
            await asyncio.sleep(FLEET_TICK_S)
            try:
                self.ingest.tick()
            except Exception:  # a policy bug must not end the agent: logged, next tick
                log.exception("fleet events tick failed")
            await self._save_fleet(force=False)

    async def _restore_fleet(self) -> None:
        """The open trip the previous run saved (a trip survives an agent restart)."""
        if self.store is None or self.ingest.fleet is None:
            return
        try:
            blob = await self.store.get_state(FLEET_STATE_KEY)
        except StoreError as exc:
            log.warning("cannot read the saved trip: %s", exc)
            return
        self._fleet_saved = blob
        if blob is None:
            return
        try:
            state = json.loads(blob)
        except ValueError as exc:
            log.warning("saved trip is not JSON, starting afresh: %s", exc)
            return
        if isinstance(state, dict):
            self.ingest.restore_fleet(state)
            log.info("trip continued from the saved state (started at %s)",
                     state.get("start_ms"))

    async def _save_fleet(self, *, force: bool) -> None:
        """Write the open trip if it changed: at once when a trip starts or ends (or
        ``force``, at a clean stop), otherwise at most every ``state_interval_s``."""
        if self.store is None or self.ingest.fleet is None:
            return
        state = self.ingest.fleet_state()
        blob = None if state is None else json.dumps(state, separators=(",", ":")).encode()
        if blob == self._fleet_saved:
            return
        boundary = (blob is None) != (self._fleet_saved is None)
        now = time.monotonic()
        interval = self.cfg.events.state_interval_s
        due = now - self._fleet_saved_at >= interval
        retry_ok = now - self._fleet_failed_at >= interval  # a failing disk: bounded retries
        if not (force or ((boundary or due) and retry_ok)):
            return
        try:
            await self.store.put_state(FLEET_STATE_KEY, blob)
        except Exception as exc:  # noqa: BLE001  # the trip may be cut by a restart; the agent goes on
            self._fleet_failed_at = now
            log.warning("cannot save the open trip: %s", exc)
            return
        self._fleet_saved, self._fleet_saved_at = blob, now

    def _store_failed(self) -> bool:
        """The store's writer died: only a restart (which reopens and recovers) helps."""
        if self.store is not None and self.store.state is StoreState.FAILED:
            self.request_stop(EX_FAILURE, "the buffer failed and must be reopened")
            return True
        return False

    def _group_tasks_alive(self) -> str | None:
        """The name of a supervised task whose supervisor has ended, if any."""
        for t in asyncio.all_tasks():
            if t.get_name() in self.tasks and t.done():  # pragma: no cover - defensive
                return t.get_name()
        return None

    # ------------------------------------------------------------------ snapshot

    async def _refresh(self) -> None:
        store_stats = None
        if self.store is not None and self.phase is not Phase.STOPPED:
            try:
                async with asyncio.timeout(self.probe.stall_s):
                    store_stats = await self.store.stats()
                self.probe.store_ok()
            except Exception as exc:  # noqa: BLE001  # reported as unhealthy; the watchdog acts on it
                log.warning("cannot read buffer stats: %s", exc)
        self._write_snapshot(store_stats=store_stats)

    def _write_snapshot(self, *, store_stats: Any = None, error: str | None = None) -> None:
        problem = None
        if self.phase is Phase.RUNNING:
            problem = self.probe.problem(self.commits, self._group_tasks_alive())
        self._snapshot = build_snapshot(
            truck_id=self.cfg.truck_id,
            phase=self.phase.value,
            started_at=self._started_at,
            uptime_s=time.monotonic() - self._started_mono,
            store_stats=store_stats,
            committed_seq=self.store.last_committed_seq if self.store else None,
            previous=self._snapshot,
            gps=self.gps,
            can=self.can,
            ingest=self.ingest,
            uplink=self.uplink,
            tasks={name: info.as_dict() for name, info in self.tasks.items()},
            problem=problem if self.phase is Phase.RUNNING else error,
            clock=self.clock.stats(),
        )
        if self.remote is not None:  # remote-management counters (docs/remote.md)
            self._snapshot["remote"] = self.remote.stats()
        self.writer.write(self._snapshot)

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(
        self,
        drivers: list[asyncio.Task[None]],
        uplink: asyncio.Task[None],
        aux: list[asyncio.Task[None]],
    ) -> None:
        """Drivers first (no new events), then the uplink (offline status), then the rest."""
        self.phase = Phase.STOPPING
        if self.exit_code == EX_RESTART:  # re-exec follows: STOPPING=1 would end the unit
            self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                                 "STATUS=restarting (remote management)")
        else:
            self.notifier.stopping(status="stopping")
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        for t in drivers:
            t.cancel()
        if drivers:
            await asyncio.wait(drivers, timeout=1.0)
        if self.store is not None:
            self.ingest.flush()  # points the recording policies still owe
            try:  # the open trip goes on after the restart
                async with asyncio.timeout(max(0.1, deadline - time.monotonic() - 3.5)):
                    await self._save_fleet(force=True)
            except TimeoutError:
                log.warning("open trip not saved in time")
            try:  # every append the drivers got a future for becomes durable now
                async with asyncio.timeout(max(0.1, deadline - time.monotonic() - 3.0)):
                    await self.store.flush()
            except TimeoutError:
                log.warning("pending appends not flushed in time; close() will retry")
        if self.uplink is not None:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic() - 1.5)):
                    await self.uplink.close()
            except Exception as exc:  # noqa: BLE001  # shutdown goes on: the database must still be closed
                log.warning("uplink did not close cleanly: %s", exc)
        uplink.cancel()
        for t in aux:
            t.cancel()
        await asyncio.wait([uplink, *aux], timeout=max(0.1, deadline - time.monotonic() - 1.0))

    async def _close_store(self) -> None:
        """Flush pending appends and close the database (bounded)."""
        if self.store is None:
            return
        try:
            async with asyncio.timeout(2.0):
                await self.store.close()
        except Exception as exc:  # noqa: BLE001  # logged: nothing else can be done at exit
            log.error("buffer did not close cleanly: %s", exc)  # noqa: TRY400
            if not self.exit_code:
                self.exit_code = EX_FAILURE


def run_agent(cfg: TruckConfig) -> int:
    """Entry point of ``truckgw run``: set up logging, run the agent, return the exit code."""
    set_journal_identity(truck_id=cfg.truck_id)
    limiter = setup_logging(cfg.log.level)
    code = asyncio.run(Agent(cfg, limiter=limiter).run())
    if code == EX_RESTART:  # a remote change or command asked for it (docs/remote.md)
        return reexec()
    return code
