"""CAN / J1939 benchmarks.

1. Decode + record throughput on one core: the real truck log (45,571 frames, held in
   memory) through :class:`drivers.j1939.J1939Decoder` and
   :class:`gateway.recording.can.CanRecorder`, with default sampling and with every
   threshold at 0 (every decoded frame becomes an event, encoded with ``encode_body``).
   The derived fleet events (:class:`gateway.recording.fleet_events.FleetEvents`: trip,
   idle, harsh, driver) see every decoded signal message and a tick every second of
   log time, as in the agent; their events are encoded too. Target: >= 20,000 frames/s
   (issue #19: >= 100,000 with the fleet table and the derived events).
2. CPU of the running :class:`drivers.can.CanDriver` while the log is replayed over
   python-can's ``virtual`` bus at a full-load 250 kbit/s rate (~1,900 frames/s).
   The sender runs in a thread of this process; its own CPU time (``time.thread_time``)
   is subtracted from the process CPU time. Target: <= 25 % of one core.

With ``--slcan`` the driver is also measured on python-can's ``slcan`` interface over a
pseudo-terminal (the sender thread writes slcan lines to the master side).

Usage: .venv/bin/python bench/can_bench.py [--seconds 10] [--rate 1900] [--slcan]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
import time
import tty
import uuid
from collections.abc import Callable
from pathlib import Path

import can

from config import CanConfig, CanSampling
from config.events import Event, encode_body
from config.schema import EventsConfig
from drivers.can import CanDriver
from drivers.j1939 import J1939Decoder, SignalUpdate
from gateway.clock import Clock
from gateway.ingest import Ingest
from gateway.recording.can import CanRecorder, record_decoded
from gateway.recording.fleet_events import FleetEvents

LOG = Path(__file__).resolve().parent.parent / "tests" / "data" / "j1939" / "css_j1939_truck.log"
EVERY = CanSampling(min_interval_s=0, max_interval_s=0, dtc_refresh_s=0)


def load() -> list[can.Message]:
    with can.CanutilsLogReader(LOG) as reader:
        return list(reader)


def throughput(msgs: list[can.Message], sampling: CanSampling, passes: int,
               *, fleet: bool = True) -> tuple[float, int]:
    """Frames/s of decode + record (+ encode of each event) over ``passes`` of the log,
    with the derived fleet events unless ``fleet`` is False."""
    frames = [(round(m.timestamp * 1000), m.arbitration_id, bytes(m.data)) for m in msgs]
    dec = J1939Decoder()
    rec = CanRecorder(sampling)
    fe = FleetEvents(EventsConfig()) if fleet else None
    events = 0
    next_tick = 0
    t0 = time.process_time()
    for p in range(passes):
        shift = p * 200_000  # keep time moving forward across passes
        for ts, can_id, data in frames:
            t = ts + shift
            out = dec.feed(t, can_id, data)
            if out is None:
                continue
            if fe is not None:
                derived = fe.on_signals(t, out.sa, out.values) \
                    if type(out) is SignalUpdate else []
                if t >= next_tick:
                    derived += fe.tick(t)
                    next_tick = t + 1000
                for d in derived:
                    encode_body(d)
                    events += 1
            ev = record_decoded(rec, t, out)
            if ev is not None:
                encode_body(ev)
                events += 1
    dt = time.process_time() - t0
    return passes * len(frames) / dt, events


def sender(send: Callable[[can.Message], None], msgs: list[can.Message], rate: float,
           seconds: float, out: dict[str, float]) -> None:
    """Send ``msgs`` round-robin at ``rate`` frames/s in 10 ms bursts; record own CPU."""
    c0 = time.thread_time()
    start = time.monotonic()
    sent = 0
    i = 0
    per_tick = rate / 100
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            send(msgs[i])
            i = (i + 1) % len(msgs)
            sent += 1
        time.sleep(max(0.0, (sent + per_tick) / rate - (time.monotonic() - start)))
    out["sent"] = sent
    out["cpu"] = time.thread_time() - c0
    out["wall"] = time.monotonic() - start


async def driver_cpu(msgs: list[can.Message], sampling: CanSampling, rate: float,
                     seconds: float, transport: str) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        if transport == "slcan":
            master, slave = os.openpty()
            tty.setraw(slave)
            stack.callback(os.close, master)
            stack.callback(os.close, slave)
            cfg = CanConfig(interface="slcan", channel=os.ttyname(slave), sampling=sampling)

            def send(m: can.Message) -> None:
                os.write(master, f"T{m.arbitration_id:08X}{len(m.data)}{m.data.hex()}\r".encode())
        else:
            channel = f"bench-{uuid.uuid4()}"
            tx = stack.enter_context(can.Bus(interface="virtual", channel=channel))
            cfg = CanConfig(interface="virtual", channel=channel, sampling=sampling)

            def send(m: can.Message) -> None:
                tx.send(can.Message(arbitration_id=m.arbitration_id, data=m.data,
                                    is_extended_id=True))
        return await _driver_cpu(cfg, send, msgs, rate, seconds)
    raise AssertionError("unreachable")


async def _driver_cpu(cfg: CanConfig, send: Callable[[can.Message], None],
                      msgs: list[can.Message], rate: float, seconds: float) -> dict[str, float]:
    nbytes = 0

    def sink(ev: Event) -> None:
        nonlocal nbytes
        nbytes += len(encode_body(ev))

    ingest = Ingest(sink, Clock(), can=cfg.sampling)
    driver = CanDriver(cfg, ingest.on_can)
    task = asyncio.create_task(driver.run(), name="can-driver")
    for _ in range(1000):
        if driver.state.value == "active":
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    out: dict[str, float] = {}
    th = threading.Thread(target=sender, args=(send, msgs, rate, seconds, out), name="sender")
    p0, w0 = time.process_time(), time.monotonic()
    th.start()
    while th.is_alive():  # noqa: ASYNC110 - a thread has no awaitable to wait on
        await asyncio.sleep(0.1)
    th.join()
    await asyncio.sleep(0.3)  # let the driver drain
    p1, w1 = time.process_time(), time.monotonic()
    stats = driver.stats()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    driver_cpu_s = (p1 - p0) - out["cpu"]
    return {
        "sent": out["sent"],
        "received": float(stats.frames_total or 0),
        "rate": out["sent"] / out["wall"],
        "cpu_pct": 100 * driver_cpu_s / (w1 - w0),
        "sender_cpu_pct": 100 * out["cpu"] / out["wall"],
        "engine_events": float(ingest.stats().engine_events),
        "bus_load_pct": float(stats.bus_load_pct or 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1900.0)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--slcan", action="store_true",
                    help="also measure the driver on slcan over a pseudo-terminal")
    args = ap.parse_args()
    msgs = load()
    print(f"command: .venv/bin/python bench/can_bench.py --seconds {args.seconds:g} "
          f"--rate {args.rate:g} --passes {args.passes}{' --slcan' if args.slcan else ''}")
    print(f"log: {LOG.name}, {len(msgs)} frames")
    for label, sampling in (("default sampling", CanSampling()), ("every frame", EVERY)):
        fps, events = throughput(msgs, sampling, args.passes)
        print(f"decode+record ({label}): {fps:,.0f} frames/s on one core "
              f"({events} events encoded; the derived fleet events included) "
              "target >= 100,000")
    fps, events = throughput(msgs, CanSampling(), args.passes, fleet=False)
    print(f"decode+record without the fleet events (default sampling): {fps:,.0f} frames/s "
          f"({events} events encoded)")
    decoded = [m for m in msgs if J1939Decoder().feed(0, m.arbitration_id, m.data) is not None]
    fps, events = throughput(decoded, EVERY, args.passes)
    print(f"decode+record (every frame, only frames that decode: {len(decoded)}): "
          f"{fps:,.0f} frames/s ({events} events)")
    runs = [("virtual", "default sampling", CanSampling()), ("virtual", "every frame", EVERY)]
    if args.slcan:
        runs.append(("slcan", "default sampling", CanSampling()))
    for transport, label, sampling in runs:
        r = asyncio.run(driver_cpu(msgs, sampling, args.rate, args.seconds, transport))
        print(f"running driver ({transport}, {label}): {r['rate']:,.0f} frames/s sent, "
              f"{r['received']:,.0f}/{r['sent']:,.0f} received, driver CPU {r['cpu_pct']:.1f} % "
              f"of one core (sender thread {r['sender_cpu_pct']:.1f} % excluded), "
              f"bus load est. {r['bus_load_pct']:.0f} %, {r['engine_events']:.0f} engine events; "
              f"target <= 25 %")


if __name__ == "__main__":
    main()
