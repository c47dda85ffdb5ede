"""Simulator and sink throughput.

Reproduce: .venv/bin/python bench/sim_bench.py

1. truck model: model steps (0.1 s each) per wall second
2. J1939 schedule + encoders: frames generated per wall second
3. slcan over a pty into python-can's slcan Bus: frames/s actually received
4. sink bookkeeping: events/s decoded (JSON and compact batches of 100) and folded in
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import can

from buffer.api import StoredEvent
from config.events import Event, encode_body
from gateway import wire
from sim.j1939_out import Schedule
from sim.route import load_route
from sim.sink_stats import FleetStats
from sim.slcan_adapter import SlcanPtyAdapter
from sim.truck import Truck, TruckParams


def bench_model() -> float:
    truck = Truck(load_route("a9-munich-nuremberg"), seed=1)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        truck.step(0.1)
        n += 1
    return n / (time.perf_counter() - t0)


def bench_schedule() -> float:
    truck = Truck(load_route("a9-munich-nuremberg"), seed=1,
                  params=TruckParams(start_parked_s=0, warmup_s=0))
    truck.step(1)
    sched = Schedule()
    t, frames, t0 = 0.0, 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        frames += len(sched.due(t, truck.state))
        t += 0.005
    return frames / (time.perf_counter() - t0)


def bench_slcan(rate_scale: float = 8.0, seconds: float = 4.0) -> tuple[float, float]:
    """Offer ~rate_scale x a truck's bus load; return (offered, received) frames/s."""
    with tempfile.TemporaryDirectory() as d:
        adapter = SlcanPtyAdapter(Path(d) / "can0")
        bus = can.Bus(interface="slcan", channel=adapter.channel, bitrate=250000,
                      sleep_after_open=0)
        got = [0]
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                if bus.recv(0.1) is not None:
                    got[0] += 1

        th = threading.Thread(target=drain, name="bench-drain")
        th.start()
        truck = Truck(load_route("a9-munich-nuremberg"), seed=1,
                      params=TruckParams(start_parked_s=0, warmup_s=0))
        truck.step(1)
        sched = Schedule(rate_scale=rate_scale)
        sent, t0 = 0, time.monotonic()
        while (now := time.monotonic() - t0) < seconds:
            frames = sched.due(now, truck.state)
            adapter.send(frames)
            sent += len(frames)
            time.sleep(0.002)
        time.sleep(0.5)
        stop.set()
        th.join()
        bus.shutdown()
        adapter.close()
        return sent / seconds, got[0] / seconds


def bench_sink(encoding: str) -> float:
    now = int(time.time() * 1000)
    payloads = []
    for b in range(50):
        evs = []
        for i in range(100):
            seq = b * 100 + i + 1
            ev = Event("engine", now, {"engine_speed_rpm": 1200.0 + i, "vehicle_speed_kmh": 80.5,
                                       "fuel_level_pct": 55.2, "src": 0})
            evs.append(StoredEvent(seq, now, "engine", ev.priority, encode_body(ev)))
        payloads += [p for p, _ in wire.encode_batches("T1", evs, encoding, 1 << 20)]
    stats, n, t0 = FleetStats(), 0, time.perf_counter()
    for p in payloads:
        batch = wire.decode_payload(p, compact=encoding != "json")
        stats.add_batch(batch, now)
        n += len(batch["events"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    print("command: .venv/bin/python bench/sim_bench.py")
    print(f"truck model:        {bench_model():>10,.0f} steps/s (0.1 s each)")
    print(f"J1939 schedule:     {bench_schedule():>10,.0f} frames/s generated")
    for scale in (8.0, 30.0):
        offered, received = bench_slcan(scale)
        print(f"slcan pty->python-can (x{scale:.0f} bus load): offered {offered:,.0f} frames/s, "
              f"received {received:,.0f}/s")
    print(f"sink (json):        {bench_sink('json'):>10,.0f} events/s")
    print(f"sink (compact):     {bench_sink('compact'):>10,.0f} events/s")


if __name__ == "__main__":
    main()
