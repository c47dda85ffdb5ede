"""Run a private NATS JetStream cluster on loopback (tests, bench): 3 real ``nats-server``
processes, each with an MQTT 3.1.1 listener, its own JetStream store folder and a
``server_name``, routed to each other on loopback ports.

A missing ``nats-server`` binary raises :class:`NatsUnavailableError` with the command that
installs it: a run without it fails loudly, never skips. Nodes keep their ports and store
folders across :meth:`NatsNode.kill` / :meth:`NatsNode.start`, so a killed node rejoins the
cluster with its JetStream state (what a real node restart does).

:class:`Fleet` puts real agent uplinks (:class:`gateway.uplink.Uplink`, one SQLite buffer
each, in this process) on the cluster with failover lists; :class:`JetStreamSinkProcess` runs
``truckgw sink run --source jetstream`` as a child.

The MQTT streams (``$MQTT_sess``, ``$MQTT_msgs``, ``$MQTT_rmsgs``) are created by the servers
on the first MQTT connection of the account, with ``mqtt.stream_replicas`` (3 here) replicas:
docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from buffer.store import SqliteStore
from config import BufferConfig, MqttConfig, TruckConfig
from config.errors import GatewayError, SimError
from config.events import Event
from gateway.uplink import Uplink, UplinkState
from sim.broker import free_port, terminate

log = logging.getLogger(__name__)

#: The feeder's bound: at most this many ticks (10 minutes at 0.1 s), stopped or not.
FEED_MAX_TICKS = 6000

INSTALL_HINT = "install it with: sudo apt-get install -y nats-server"
START_TIMEOUT_S = 20.0
CLUSTER_NAME = "truckgw"


class NatsUnavailableError(GatewayError):
    """nats-server is not installed, did not start, or the cluster did not form."""


def find_nats_server() -> str:
    """Path of the nats-server binary (PATH, then /usr/sbin), or raise with an install hint."""
    found = shutil.which("nats-server") or shutil.which("nats-server",
                                                        path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise NatsUnavailableError(f"nats-server not found on PATH or in /usr/sbin; {INSTALL_HINT}")
    return found


@dataclass(frozen=True, slots=True)
class NatsUser:
    """A user of the cluster: MQTT clients log in with ``name``/``password``; ``publish``
    and ``subscribe`` are NATS subject permissions (None: everything)."""

    name: str
    password: str
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None


def truck_user(truck_id: str, password: str, prefix: str = "fleet") -> NatsUser:
    """A truck that may publish only under its own id (``{prefix}/{truck_id}/...``, the NATS
    subject ``{prefix}.{truck_id}.>``) and subscribe to nothing of the fleet."""
    subject = prefix.replace("/", ".")
    return NatsUser(truck_id, password, publish=(f"{subject}.{truck_id}.>",),
                    subscribe=("_INBOX.>",))


def authorization_block(users: Iterable[NatsUser]) -> str:
    """The ``authorization { users = [...] }`` block of a nats-server config (the same shape
    deploy/nats/auth.conf ships)."""
    lines = ["authorization {", "  users = ["]
    for u in users:
        perms = []
        if u.publish is not None:
            perms.append(f"publish = {json.dumps(list(u.publish))}")
        if u.subscribe is not None:
            perms.append(f"subscribe = {json.dumps(list(u.subscribe))}")
        perm = f", permissions = {{ {', '.join(perms)} }}" if perms else ""
        lines.append(f"    {{ user = {json.dumps(u.name)}, password = {json.dumps(u.password)}"
                     f"{perm} }}")
    lines += ["  ]", "}"]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class NodePorts:
    """The loopback ports of one node; they stay the same across restarts."""

    client: int
    cluster: int
    mqtt: int
    http: int


class NatsNode:
    """One nats-server process of a :class:`NatsCluster`."""

    def __init__(self, name: str, ports: NodePorts, routes: list[int], workdir: Path, *,
                 host: str, mqtt_conf: Mapping[str, Any], extra_conf: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.binary = find_nats_server()
        self.name = name
        self.ports = ports
        self.host = host
        self.routes = routes
        self.workdir = workdir
        self.mqtt_conf = dict(mqtt_conf)
        self.extra_conf = extra_conf
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "nats.log"
        self.store_dir = workdir / "jetstream"
        self.conf_path = workdir / "nats.conf"
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def mqtt_address(self) -> tuple[str, int]:
        return self.host, self.ports.mqtt

    @property
    def url(self) -> str:
        """The NATS client URL."""
        return f"nats://{self.host}:{self.ports.client}"

    def write_conf(self) -> None:
        mqtt = "\n".join(f"  {k}: {json.dumps(v) if isinstance(v, str) else v}"
                         for k, v in self.mqtt_conf.items())
        routes = ", ".join(f'"nats-route://{self.host}:{p}"' for p in self.routes)
        self.conf_path.write_text(f"""\
server_name: {json.dumps(self.name)}
listen: "{self.host}:{self.ports.client}"
http: "{self.host}:{self.ports.http}"
max_payload: 1MB
jetstream {{
  store_dir: {json.dumps(str(self.store_dir))}
  max_memory_store: 64MB
  max_file_store: 2GB
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: "{self.host}:{self.ports.cluster}"
  routes: [{routes}]
  connect_retries: 120
}}
mqtt {{
  listen: "{self.host}:{self.ports.mqtt}"
{mqtt}
}}
{self.extra_conf}
""")

    def start(self) -> None:
        """Start the process and wait until its MQTT and client ports accept TCP."""
        if self.running:
            return
        self.write_conf()
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf_path)],
                                         stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env})
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsUnavailableError(f"nats-server {self.name} exited with "
                                           f"{self.proc.returncode} at start: {self.log_tail()}")
            if all(_accepts(self.host, p) for p in (self.ports.client, self.ports.mqtt)):
                return
            time.sleep(0.05)
        self.stop()
        raise NatsUnavailableError(f"nats-server {self.name} did not listen: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to routes or clients (a node's power cut)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (lame duck not waited for), then SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        terminate(proc, 10.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict[str, Any] | None:
        """A JSON monitoring endpoint (``/jsz``, ``/healthz``...), None when unreachable."""
        url = f"http://{self.host}:{self.ports.http}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # loopback http
                data = json.loads(r.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def healthy(self) -> bool:
        """``/healthz?js-server-only=true`` says ok: JetStream is up and current with the
        cluster's meta leader. (The full check also waits for every consumer, and a node
        restarted after SIGKILL keeps one of the MQTT retained-message consumers "not
        current" for good.)"""
        data = self.monitor("/healthz?js-server-only=true")
        return data is not None and data.get("status") == "ok"

    def streams_current(self) -> bool | None:
        """Of the streams this node hosts: False when one has no leader or, where this node
        leads, a replica is behind (only a leader knows its followers); None when the node
        cannot be asked."""
        jsz = self.monitor("/jsz?accounts=true&streams=true")
        if jsz is None:
            return None
        for acc in jsz.get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                cl = st.get("cluster") or {}
                if not cl.get("leader"):
                    return False
                if cl.get("leader") == self.name and not all(
                        r.get("current") for r in cl.get("replicas") or []):
                    return False
        return True

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<NatsNode {self.name} mqtt={self.ports.mqtt} {state}>"


class NatsCluster:
    """``size`` nats-server nodes forming one JetStream cluster on loopback."""

    def __init__(self, size: int = 3, *, host: str = "127.0.0.1", workdir: Path | None = None,
                 users: Iterable[NatsUser] = (), include: Path | None = None,
                 env: Mapping[str, str] | None = None, stream_replicas: int = 3,
                 mqtt_ack_wait_s: int = 10, mqtt_max_ack_pending: int = 1024) -> None:
        """``users``: an authorization block built here; ``include``: a config file (such as
        deploy/nats/auth.conf) copied next to each node's config and included, its
        ``$VARIABLES`` taken from ``env``."""
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self._own_tmp = None if workdir else tempfile.TemporaryDirectory(prefix="truckgw-nats-")
        self.workdir = workdir or Path(self._own_tmp.name)  # type: ignore[union-attr]
        self.host = host
        taken: set[int] = set()
        ports = [NodePorts(*(_listen_port(host, taken) for _ in range(4))) for _ in range(size)]
        users = list(users)
        extra = authorization_block(users) if users else ""
        if include is not None:
            extra += f'\ninclude "{include.name}"\n'
        mqtt_conf = {"stream_replicas": min(stream_replicas, size),
                     "ack_wait": f"{mqtt_ack_wait_s}s", "max_ack_pending": mqtt_max_ack_pending}
        self.nodes = [
            NatsNode(f"n{i + 1}", p, [q.cluster for q in ports if q is not p],
                     self.workdir / f"n{i + 1}", host=host, mqtt_conf=mqtt_conf,
                     extra_conf=extra, env=env)
            for i, p in enumerate(ports)
        ]
        if include is not None:
            for n in self.nodes:
                shutil.copyfile(include, n.workdir / include.name)

    @property
    def mqtt_addresses(self) -> list[tuple[str, int]]:
        return [n.mqtt_address for n in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        """Start every node, then wait until the cluster elected a JetStream meta leader
        and every node reports healthy."""
        for n in self.nodes:
            n.start()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT_S * 2) -> None:
        """Until every running node is healthy, knows the meta leader and sees every replica
        of its streams current (a restarted node has caught up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [n for n in self.nodes if n.running]
            if running and all(n.healthy() and self.meta_leader(n) and n.streams_current()
                               for n in running):
                return
            time.sleep(0.2)
        tails = "\n".join(f"--- {n.name}\n{n.log_tail(15)}" for n in self.nodes)
        raise NatsUnavailableError(f"the NATS cluster did not become healthy:\n{tails}")

    @staticmethod
    def meta_leader(node: NatsNode) -> str | None:
        jsz = node.monitor("/jsz")
        meta = (jsz or {}).get("meta_cluster") or {}
        leader = meta.get("leader")
        return leader if isinstance(leader, str) and leader else None

    def node_of(self, port: int) -> NatsNode:
        """The node whose MQTT or client port is ``port``."""
        for n in self.nodes:
            if port in (n.ports.mqtt, n.ports.client):
                return n
        raise KeyError(port)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def close(self) -> None:
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


#: Listen ports come from below Linux's ephemeral range (32768-60999 by default): a
#: client's outgoing connection can never take a port of a node that is down for a restart.
LISTEN_PORTS = range(20000, 32000)


def _listen_port(host: str, taken: set[int]) -> int:
    """A free port of :data:`LISTEN_PORTS` not in ``taken`` (which it joins)."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port
    return free_port(host)  # a crowded range: any free port


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


# ------------------------------------------------------------------ a fleet on the cluster

T = TypeVar("T")

#: the uplinks' reconnect backoff cap: a node's death must cost at most 2x this
RECONNECT_MAX_S = 1.0


def truck_config(workdir: Path, truck_id: str, addresses: list[tuple[str, int]],
                 encoding: Literal["json", "compact", "compact-dict"], *,
                 reconnect_max_s: float = RECONNECT_MAX_S) -> TruckConfig:
    """MQTT 3.1.1 (all NATS speaks), the first address first, the others as failover."""
    (host, port), rest = addresses[0], addresses[1:]
    return TruckConfig(
        truck_id=truck_id,
        mqtt=MqttConfig(host=host, port=port, failover=tuple(f"{h}:{p}" for h, p in rest),
                        protocol="3.1.1", encoding=encoding, keepalive_s=5,
                        reconnect_min_s=min(0.2, reconnect_max_s),
                        reconnect_max_s=reconnect_max_s,
                        publish_timeout_s=10.0, status_interval_s=5.0, inflight_window=32),
        buffer=BufferConfig(path=workdir / f"{truck_id}.db", commit_interval_ms=20),
    )


@dataclass
class FleetTruck:
    cfg: TruckConfig
    store: SqliteStore
    uplink: Uplink
    task: asyncio.Task[None] | None
    first_node: int
    appended: list[int] = field(default_factory=list)

    @property
    def truck_id(self) -> str:
        return self.cfg.truck_id

    def acked(self) -> int:
        return self.uplink.stats().acked_events


def _event(i: int, now_ms: int) -> Event:
    """A position every third event, engine data otherwise, recorded at ``now_ms``."""
    if i % 3 == 0:
        return Event("gps", now_ms, {"lat": 48.1 + i * 1e-6, "lon": 11.5, "fix": 3,
                                     "speed_kmh": 70.0})
    return Event("engine", now_ms, {"src": 0, "engine_speed_rpm": 1400 + i % 50})


class Fleet:
    """``n`` trucks, truck i first on node i % 3 with the other nodes in order after it."""

    def __init__(self, cluster: NatsCluster, workdir: Path, n: int, *,
                 reconnect_max_s: float = RECONNECT_MAX_S) -> None:
        self.cluster = cluster
        self.reconnect_max_s = reconnect_max_s
        self.workdir = workdir
        self.n = n
        self.trucks: list[FleetTruck] = []
        self._feeding: asyncio.Task[None] | None = None
        self._stop_feeding = asyncio.Event()
        # blocking work (node restarts, sink processes, SQL) off the loop the uplinks run on;
        # our own pool, shut down in close(), so no thread outlives the test
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="fleet-io")

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the fleet's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self, *, prefill: int = 0,
                    encoding: Literal["json", "compact", "compact-dict"] | None = None,
                    inflight_window: int = 32) -> None:
        """Open the buffers (``prefill`` events each, before any uplink runs), then start the
        uplinks. ``encoding`` None takes json, compact and compact-dict in turn."""
        addrs = self.cluster.mqtt_addresses
        for i in range(self.n):
            k = i % len(addrs)
            order = addrs[k:] + addrs[:k]
            enc: Literal["json", "compact", "compact-dict"] = encoding or (
                "json", "compact", "compact-dict")[i % 3]
            cfg = truck_config(self.workdir, f"truck-{i:02d}", order, enc,
                               reconnect_max_s=self.reconnect_max_s)
            cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(
                cfg.mqtt, inflight_window=inflight_window))
            store = await SqliteStore.open(cfg.buffer)
            truck = FleetTruck(cfg, store, Uplink(cfg, store), None, k)
            if prefill:
                now = time.time_ns() // 1_000_000
                futs = [store.submit(_event(j, now)) for j in range(prefill)]
                truck.appended.extend(await asyncio.gather(*futs))
            self.trucks.append(truck)
        for t in self.trucks:
            t.task = asyncio.create_task(t.uplink.run(), name=f"uplink-{t.truck_id}")

    def feed(self, events_per_tick: int, tick_s: float) -> None:
        """Append ``events_per_tick`` events per truck every ``tick_s`` until :meth:`stop_feed`."""
        self._stop_feeding = asyncio.Event()
        self._feeding = asyncio.create_task(self._feed(events_per_tick, tick_s), name="feeder")

    async def _feed(self, per_tick: int, tick_s: float) -> None:
        i = 0
        for _tick in range(FEED_MAX_TICKS):  # bounded in count (and so in time) besides the stop
            if self._stop_feeding.is_set():
                return
            now = time.time_ns() // 1_000_000
            futs = []
            for t in self.trucks:
                for _ in range(per_tick):
                    i += 1
                    futs.append((t, t.store.submit(_event(i, now))))
            for t, fut in futs:  # every submitted event is counted, even when stopping
                t.appended.append(await fut)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await self._stop_feeding.wait()

    async def stop_feed(self) -> None:
        """Stop after the current tick; every event appended so far is in ``appended``."""
        if self._feeding is not None:
            self._stop_feeding.set()
            await self._feeding
            self._feeding = None

    def on_node(self, node: NatsNode) -> list[FleetTruck]:
        """Trucks whose current broker is ``node``'s MQTT listener."""
        addr = f"{node.host}:{node.ports.mqtt}"
        return [t for t in self.trucks if t.uplink.broker.address == addr]

    def publishing_again(self, t: FleetTruck, since_acked: int, since_connects: int,
                         avoid: str | None) -> bool:
        """``t`` is on a new connection (not to ``avoid``) and has new PUBACKs since."""
        st = t.uplink.stats()
        return (st.acked_events > since_acked and st.connects > since_connects
                and st.state is UplinkState.CONNECTED
                and (avoid is None or t.uplink.broker.address != avoid))

    async def wait_all_publishing(self, since: dict[str, int], limit_s: float, *,
                                  moved: Sequence[FleetTruck] = (),
                                  connects: dict[str, int] | None = None,
                                  avoid: str | None = None) -> float:
        """Until every truck acked more than ``since[truck]`` and each of ``moved`` is on a
        new connection to another node than ``avoid``; seconds it took (bounded)."""
        t0 = time.monotonic()
        conn = connects or {}

        def done(t: FleetTruck) -> bool:
            if t in moved:
                return self.publishing_again(t, since[t.truck_id], conn.get(t.truck_id, 0),
                                             avoid)
            return t.acked() > since[t.truck_id]

        for _ in range(int(limit_s / 0.02)):
            if all(done(t) for t in self.trucks):
                return time.monotonic() - t0
            await asyncio.sleep(0.02)
        late = [(t.truck_id, t.uplink.broker.address, str(t.uplink.state))
                for t in self.trucks if not done(t)]
        raise SimError(f"trucks not publishing again after {limit_s} s: {late}")

    def connects(self) -> dict[str, int]:
        return {t.truck_id: t.uplink.stats().connects for t in self.trucks}

    def acked(self) -> dict[str, int]:
        return {t.truck_id: t.acked() for t in self.trucks}

    async def wait_drained(self, limit_s: float) -> None:
        for _ in range(int(limit_s / 0.1)):
            pending = [(await t.store.stats()).pending for t in self.trucks]
            if not any(pending):
                return
            await asyncio.sleep(0.1)
        raise SimError(f"buffers not drained after {limit_s} s: {pending}")

    async def close(self) -> None:
        await self.stop_feed()
        for t in self.trucks:
            with contextlib.suppress(Exception):
                await t.uplink.close()
        tasks = [t.task for t in self.trucks if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
        self._offset = 0

    def start(self, limit_s: float = 30.0) -> None:
        self._offset = len(self.text())  # a restart appends to the same file
        with self.out.open("ab") as f:
            # faulthandler: a sink that does not stop is aborted and prints where it hung
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        deadline = time.monotonic() + limit_s
        while "sink: subscribed" not in self.text()[self._offset:]:
            if not self.alive() or time.monotonic() > deadline:
                raise SimError(f"sink did not subscribe:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def text(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait; the counters it printed."""
        if self.proc is None:
            raise SimError("sink was never started")
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)  # tracebacks into the output file
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        lines = [ln for ln in self.text().splitlines() if ln.startswith("sink: stopped ")]
        if not lines:
            raise SimError(f"sink printed no counters:\n{self.text()[-3000:]}")
        counters: dict[str, Any] = json.loads(lines[-1][len("sink: stopped "):])
        return counters
