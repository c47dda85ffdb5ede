"""Sink benchmark (issue 16): events/s into SQLite and PostgreSQL, end-to-end lag.

Against a private Mosquitto and a private PostgreSQL 15 (durable defaults: fsync and
synchronous commit on) or a SQLite file (WAL, synchronous=NORMAL), with real
``truckgw sink run`` processes and a publisher in its own process:

1. throughput: a backlog of ``--events`` events over ``--trucks`` trucks, ``--batch``
   events per message, published flat out; events/s = events / (time from the first
   publish to the last row counted in the table), for one sink and for two on a shared
   subscription. The lag printed here is queueing under saturation.
2. lag: ``--lag-trucks`` trucks each publishing one batch of ``--lag-events`` events per
   second (event ``ts`` = publish time) for ``--lag-seconds``; p50/p99 of the sink's own
   figure: event ``ts`` to the commit that stored it.

Run: ``.venv/bin/python -m bench.sink_bench [--quick]``
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from sim.broker import Mosquitto
from sim.sink_fleet import FleetPublisher, fleet_events, truck_messages
from sim.sink_postgres import PostgresServer

BROKER_CONF = ["max_queued_messages 0", "max_inflight_messages 0"]
READY_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    sinks: int
    mode: str
    events: int
    seconds: float
    lag_p50_ms: int | None
    lag_p99_ms: int | None

    def line(self) -> str:
        rate = self.events / self.seconds if self.seconds else 0.0
        return (f"{self.backend:<10} sinks={self.sinks} {self.mode:<10} events={self.events:>7} "
                f"in {self.seconds:6.2f} s = {rate:9,.0f} events/s  "
                f"lag p50={self.lag_p50_ms} ms p99={self.lag_p99_ms} ms")


# ------------------------------------------------------------------ publisher process


def publish_flat(host: str, port: int, trucks: int, events: int, batch: int) -> None:
    """Build every message first, then publish them as fast as the broker acks."""
    per_truck = events // trucks
    now_ms = int(time.time() * 1000)
    plan = [truck_messages("fleet", f"truck-{i:04d}",
                           fleet_events(1, per_truck, now_ms, spacing_ms=0),
                           batch=batch, encoding="compact") for i in range(trucks)]
    with FleetPublisher(host, port) as pub:
        print(f"start {time.time():.6f}", flush=True)
        for k in range(max(len(p) for p in plan)):
            for msgs in plan:
                if k < len(msgs):
                    pub.publish(msgs[k])
        pub.wait_all(600)
    print(f"done {time.time():.6f}", flush=True)


def publish_paced(host: str, port: int, trucks: int, per_s: int, seconds: float) -> None:
    """Every truck one batch of ``per_s`` events per second, ``ts`` = now, spread evenly."""
    ids = [f"truck-{i:04d}" for i in range(trucks)]
    seq = dict.fromkeys(ids, 1)
    with FleetPublisher(host, port) as pub:
        print(f"start {time.time():.6f}", flush=True)
        t0 = time.monotonic()
        slot = 1.0 / trucks
        n = 0
        while time.monotonic() - t0 < seconds:
            for i, tid in enumerate(ids):
                due = t0 + n + i * slot
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now_ms = int(time.time() * 1000)
                # the truck recorded them over the last second; ts = now keeps the figure
                # to the fleet side (broker + sink + database), not the truck's batching
                evs = fleet_events(seq[tid], per_s, now_ms, spacing_ms=0)
                seq[tid] += per_s
                for m in truck_messages("fleet", tid, evs, batch=per_s, encoding="compact"):
                    pub.publish(m)
            n += 1
            pub.wait_all(60)
    print(f"done {time.time():.6f} events {sum(seq.values()) - trucks}", flush=True)


# ------------------------------------------------------------------ bench driver


def count(url: str) -> int:
    if url.startswith("sqlite:///"):
        try:
            with sqlite3.connect(url[len("sqlite:///"):], timeout=10) as db:
                return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def start_sinks(broker: Mosquitto, url: str, n: int, workdir: Path, run: int) -> list[tuple[
        subprocess.Popen[bytes], Path]]:
    out = []
    for i in range(n):
        log = workdir / f"sink{i}.out"
        argv = [sys.executable, "-m", "gateway.cli", "sink", "run", "-v", "--db", url, "--host",
                broker.host, "--port", str(broker.port), "--client-id", f"bench{run}-sink-{i}",
                # a fresh session per run: an earlier run's subscriptions must not linger
                "--session-expiry", "0"]
        if n > 1:
            argv += ["--group", "bench"]
        with log.open("wb") as f:
            out.append((subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + READY_TIMEOUT_S
    for proc, log in out:
        while "sink: subscribed" not in log.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"sink did not subscribe: {log.read_text()}")
            time.sleep(0.05)
    return out


def stop_sinks(sinks: list[tuple[subprocess.Popen[bytes], Path]]) -> list[dict[str, int]]:
    counters = []
    for proc, _log in sinks:
        proc.send_signal(signal.SIGTERM)
    for proc, log in sinks:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise SystemExit(f"sink did not stop on SIGTERM: {log.read_text()[-3000:]}") from None
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("sink: stopped ")]
        counters.append(json.loads(lines[-1][len("sink: stopped "):]))
    return counters


def run_one(broker: Mosquitto, url: str, backend: str, sinks: int, mode: str,
            args: argparse.Namespace, workdir: Path, run: int) -> Result:
    procs = start_sinks(broker, url, sinks, workdir, run)
    try:
        if mode == "throughput":
            argv = ["flat", str(args.trucks), str(args.events), str(args.batch)]
            expected = args.events // args.trucks * args.trucks
        else:
            argv = ["paced", str(args.lag_trucks), str(args.lag_events), str(args.lag_seconds)]
            expected = -1
        pub = subprocess.Popen([sys.executable, "-m", "bench.sink_bench", "_publish",
                                broker.host, str(broker.port), *argv],
                               stdout=subprocess.PIPE, text=True)
        out, _ = pub.communicate(timeout=900)
        lines = dict(ln.split(" ", 1) for ln in out.splitlines() if " " in ln)
        start = float(lines["start"])
        if expected < 0:
            expected = int(lines["done"].split("events ")[1])
        deadline = time.monotonic() + 600
        while (n := count(url)) < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {n} of {expected} events stored")
            time.sleep(0.05)
        end = time.time()
    finally:
        counters = stop_sinks(procs)
    p50 = max((c["lag_p50_ms"] or 0) for c in counters)
    p99 = max((c["lag_p99_ms"] or 0) for c in counters)
    return Result(backend, sinks, mode, expected, end - start, p50, p99)


def fresh_db(backend: str, pg: PostgresServer, workdir: Path, k: int) -> str:
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'bench{k}.db'}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE bench{k}")
    return pg.url.rsplit("/", 1)[0] + f"/bench{k}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--trucks", type=int, default=20)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--lag-trucks", type=int, default=1000)
    ap.add_argument("--lag-events", type=int, default=5)
    ap.add_argument("--lag-seconds", type=float, default=20.0)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--sinks", default="1,2")
    ap.add_argument("--quick", action="store_true", help="small figures, for a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.lag_trucks, args.lag_seconds = 20_000, 100, 5.0
    results = []
    with tempfile.TemporaryDirectory(prefix="sink-bench-") as tmp, \
            Mosquitto(extra_conf=BROKER_CONF) as broker, PostgresServer() as pg:
        workdir = Path(tmp)
        k = 0
        for backend in args.backends.split(","):
            for sinks in (int(s) for s in args.sinks.split(",")):
                for mode in ("throughput", "lag"):
                    k += 1
                    url = fresh_db(backend, pg, workdir, k)
                    r = run_one(broker, url, backend, sinks, mode, args, workdir, k)
                    print(r.line(), flush=True)
                    results.append(r)
    print("\nsummary")
    for r in results:
        print(r.line())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_publish":
        host, port, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        if mode == "flat":
            publish_flat(host, port, int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
        else:
            publish_paced(host, port, int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]))
        sys.exit(0)
    sys.exit(main())
