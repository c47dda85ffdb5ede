"""A fleet on the cluster for the cluster tests and bench: real agent uplinks (gateway.uplink,
one SQLite buffer each, in this process) spread over the nodes with a failover list, fed
events while they run, and ``truckgw sink run --source jetstream`` processes into one
database."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from buffer.store import SqliteStore
from config import BufferConfig, MqttConfig, TruckConfig
from config.events import Event
from gateway.uplink import Uplink
from sim.nats import NatsCluster, NatsNode

T = TypeVar("T")

#: the uplinks' reconnect backoff cap: a node's death must cost at most 2x this
RECONNECT_MAX_S = 1.0


def truck_config(workdir: Path, truck_id: str, addresses: list[tuple[str, int]],
                 encoding: Literal["json", "compact"]) -> TruckConfig:
    """MQTT 3.1.1 (all NATS speaks), the first address first, the others as failover."""
    (host, port), rest = addresses[0], addresses[1:]
    return TruckConfig(
        truck_id=truck_id,
        mqtt=MqttConfig(host=host, port=port, failover=tuple(f"{h}:{p}" for h, p in rest),
                        protocol="3.1.1", encoding=encoding, keepalive_s=5,
                        reconnect_min_s=0.2, reconnect_max_s=RECONNECT_MAX_S,
                        publish_timeout_s=10.0, status_interval_s=5.0, inflight_window=32),
        buffer=BufferConfig(path=workdir / f"{truck_id}.db", commit_interval_ms=20),
    )


@dataclass
class FleetTruck:
    cfg: TruckConfig
    store: SqliteStore
    uplink: Uplink
    task: asyncio.Task[None]
    first_node: int
    appended: list[int] = field(default_factory=list)

    @property
    def truck_id(self) -> str:
        return self.cfg.truck_id

    def acked(self) -> int:
        return self.uplink.stats().acked_events


class Fleet:
    """``n`` trucks, truck i first on node i % 3 with the other nodes in order after it."""

    def __init__(self, cluster: NatsCluster, workdir: Path, n: int) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.n = n
        self.trucks: list[FleetTruck] = []
        self._feeding: asyncio.Task[None] | None = None
        # blocking work (node restarts, sink processes, SQL) off the loop the uplinks run on;
        # our own pool, shut down in close(), so no thread outlives the test
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="fleet-io")

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the fleet's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self) -> None:
        addrs = self.cluster.mqtt_addresses
        for i in range(self.n):
            k = i % len(addrs)
            order = addrs[k:] + addrs[:k]
            cfg = truck_config(self.workdir, f"truck-{i:02d}", order,
                               "compact" if i % 2 else "json")
            store = await SqliteStore.open(cfg.buffer)
            up = Uplink(cfg, store)
            task = asyncio.create_task(up.run(), name=f"uplink-{cfg.truck_id}")
            self.trucks.append(FleetTruck(cfg, store, up, task, k))

    def feed(self, events_per_tick: int, tick_s: float) -> None:
        """Append ``events_per_tick`` events per truck every ``tick_s`` until :meth:`stop_feed`."""
        self._feeding = asyncio.create_task(self._feed(events_per_tick, tick_s), name="feeder")

    async def _feed(self, per_tick: int, tick_s: float) -> None:
        i = 0
        while True:
            now = time.time_ns() // 1_000_000
            futs = []
            for t in self.trucks:
                for _ in range(per_tick):
                    i += 1
                    ev = (Event("gps", now, {"lat": 48.1 + i * 1e-6, "lon": 11.5, "fix": 3,
                                             "speed_kmh": 70.0})
                          if i % 3 == 0 else
                          Event("engine", now, {"src": 0, "engine_speed_rpm": 1400 + i % 50}))
                    futs.append((t, t.store.submit(ev)))
            for t, fut in futs:
                t.appended.append(await fut)
            await asyncio.sleep(tick_s)

    async def stop_feed(self) -> None:
        if self._feeding is not None:
            self._feeding.cancel()
            await asyncio.gather(self._feeding, return_exceptions=True)
            self._feeding = None

    def on_node(self, node: NatsNode) -> list[FleetTruck]:
        """Trucks whose current broker is ``node``'s MQTT listener."""
        addr = f"{node.host}:{node.ports.mqtt}"
        return [t for t in self.trucks if t.uplink.broker.address == addr]

    async def wait_all_publishing(self, since: dict[str, int], limit_s: float) -> float:
        """Until every truck acked more than ``since[truck]``; seconds it took (bounded)."""
        t0 = time.monotonic()
        for _ in range(int(limit_s / 0.05)):
            if all(t.acked() > since[t.truck_id] for t in self.trucks):
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        late = [(t.truck_id, t.uplink.broker.address, str(t.uplink.state))
                for t in self.trucks if t.acked() <= since[t.truck_id]]
        raise AssertionError(f"trucks not publishing again after {limit_s} s: {late}")

    def acked(self) -> dict[str, int]:
        return {t.truck_id: t.acked() for t in self.trucks}

    async def wait_drained(self, limit_s: float) -> None:
        for _ in range(int(limit_s / 0.1)):
            pending = [(await t.store.stats()).pending for t in self.trucks]
            if not any(pending):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"buffers not drained after {limit_s} s: {pending}")

    async def close(self) -> None:
        await self.stop_feed()
        for t in self.trucks:
            with contextlib.suppress(Exception):
                await t.uplink.close()
            t.task.cancel()
        await asyncio.gather(*(t.task for t in self.trucks), return_exceptions=True)
        for t in self.trucks:
            await t.store.close()
        self._pool.shutdown(wait=True)


class JetStreamSinkProcess:
    """One ``truckgw sink run --source jetstream`` child, its output in a file."""

    def __init__(self, urls: list[str], db_url: str, out: Path, *, durable: str = "fleet",
                 ack_wait_s: float = 5.0) -> None:
        self.argv = [sys.executable, "-m", "gateway.cli", "sink", "run", "--source", "jetstream",
                     "--nats", ",".join(urls), "--db", db_url, "--durable", durable,
                     "--ack-wait", str(ack_wait_s), "-v"]
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, limit_s: float = 30.0) -> None:
        with self.out.open("ab") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + limit_s
        while "sink: subscribed" not in self.text():
            if not self.alive() or time.monotonic() > deadline:
                raise AssertionError(f"sink did not subscribe:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def text(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait; the counters it printed."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        lines = [ln for ln in self.text().splitlines() if ln.startswith("sink: stopped ")]
        assert lines, self.text()[-3000:]
        counters: dict[str, Any] = json.loads(lines[-1][len("sink: stopped "):])
        return counters
