"""Footprint of a running agent: RSS and CPU of a ``truckgw run`` subprocess.

Real inputs, as on a truck: a GPS on a pseudo-terminal sending NMEA epochs at 10 Hz
(RMC+VTG+GGA+GSA) and an slcan USB-CAN adapter on a pseudo-terminal forwarding J1939
frames at 2,000 frames/s (EEC1/CCVS1/ET1/... cycling, values drifting), a real
Mosquitto broker as the uplink. The agent uses the shipped defaults for sampling.

Phases: warm-up, then a *loaded* window (inputs streaming) and an *idle* window (ptys
open, nothing sent, broker connected). RSS from ``/proc/PID/status`` (VmRSS, VmHWM),
CPU from ``/proc/PID/stat`` (utime+stime over wall time, % of one core).

    .venv/bin/python bench/agent_footprint.py [--warmup 10] [--window 30] [--frames 2000]

Targets (issue 8): RSS <= 60 MB loaded; CPU <= 2 % of a core idle.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.health import read_state
from sim.broker import Mosquitto
from sim.j1939_out import Frame, can_id
from sim.nmea_out import GpsFix, epoch
from sim.ports import PtyPort
from sim.slcan_adapter import SlcanPtyAdapter

TICKS_PER_S = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: (PGN, SA) cycled through; a real bus is mostly a few fast PGNs
PGNS = ((61444, 0x00), (61443, 0x00), (65265, 0x00), (65262, 0x00), (65266, 0x00),
        (65276, 0x31), (65263, 0x00), (65248, 0x00))


def _frame(i: int) -> Frame:
    pgn, sa = PGNS[i % len(PGNS)]
    drift = (i // len(PGNS)) % 200
    data = bytes([0xF0, 0x7D, 0x7D + drift % 50, (drift * 7) & 0xFF, 0x1A, 0xFF, 0xFF, 0xFF])
    return Frame(can_id(3 if pgn == 61444 else 6, pgn, sa), data)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _proc_mem_kib(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


class Feeder:
    """GPS at 10 Hz and CAN at ``fps`` frames/s, paced in 10 ms ticks."""

    def __init__(self, gps: PtyPort, can: SlcanPtyAdapter, fps: int) -> None:
        self.gps, self.can, self.fps = gps, can, fps
        self.t = dt.datetime(2026, 5, 1, 8, 0, 0, tzinfo=dt.UTC)
        self.frames = self.epochs = self.n = 0

    def run(self, seconds: float, *, send: bool = True) -> None:
        start = time.monotonic()
        per_tick = self.fps / TICKS_PER_S
        owed = 0.0
        for tick in range(int(seconds * TICKS_PER_S)):
            if send:
                owed += per_tick
                k = int(owed)
                owed -= k
                self.can.send([_frame(self.n + j) for j in range(k)])
                self.n += k
                self.frames += k if self.can.device.is_open else 0
                if tick % (TICKS_PER_S // 10) == 0:
                    self.t += dt.timedelta(milliseconds=100)
                    lat = 48.1 + self.epochs * 2e-5
                    self.gps.write(epoch(self.t, GpsFix(lat, 11.5, 520.0, 60.0, 0.0)))
                    self.epochs += 1
            else:
                self.can.poll()
            delay = start + (tick + 1) / TICKS_PER_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def _measure(pid: int, feeder: Feeder, seconds: float, *, send: bool) -> dict[str, float]:
    cpu0, t0, f0 = _proc_cpu_s(pid), time.monotonic(), feeder.frames
    feeder.run(seconds, send=send)
    cpu1, t1 = _proc_cpu_s(pid), time.monotonic()
    rss, hwm = _proc_mem_kib(pid)
    return {"cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "rss_mib": rss / 1024,
            "hwm_mib": hwm / 1024, "frames_per_s": (feeder.frames - f0) / (t1 - t0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=2000, help="CAN frames per second")
    ap.add_argument("--record-all", action="store_true",
                    help="sampling thresholds 0: every fix and every changed value is an event")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="truckgw-footprint-") as tmp:
        work = Path(tmp)
        (work / "mosq").mkdir()
        broker = Mosquitto(workdir=work / "mosq")
        broker.start()
        gps = PtyPort(work / "gps")
        can = SlcanPtyAdapter(work / "can")
        conf = work / "truck.toml"
        conf.write_text("\n".join([
            'truck_id = "BENCH"',
            "[gps]", f'port = "{gps.link}"', "baudrate = 9600",
            *(["[gps.sampling]", 'mode = "thresholds"', "min_interval_s = 0", "max_interval_s = 0",
               "min_distance_m = 0", "min_heading_change_deg = 0",
               "min_speed_change_kmh = 0", "stopped_interval_s = 0"] if args.record_all else []),
            "[can]", 'interface = "slcan"', f'channel = "{can.channel}"',
            *(["[can.sampling]", "min_interval_s = 0", "max_interval_s = 0"]
              if args.record_all else []),
            "[buffer]", f'path = "{work / "buffer.db"}"',
            "[mqtt]", 'host = "127.0.0.1"', f"port = {broker.port}",
            "[metrics]", f'textfile = "{work / "truckgw.prom"}"', "interval_s = 10",
            "",
        ]))
        log = (work / "agent.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(conf)],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        feeder = Feeder(gps, can, args.frames)
        try:
            feeder.run(args.warmup)
            loaded = _measure(proc.pid, feeder, args.window, send=True)
            state = read_state(work / "buffer.db.state.json") or {}
            feeder.run(5.0, send=False)  # let queues drain before the idle window
            idle = _measure(proc.pid, feeder, args.window, send=False)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            log.close()
            gps.close()
            can.close()
            broker.close()
        tail = (work / "agent.log").read_text().splitlines()[-3:]
    print(f"agent footprint (python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    print(f"  loaded: GPS 10 Hz + CAN {loaded['frames_per_s']:.0f} frames/s delivered to the"
          f" agent: CPU {loaded['cpu_pct']:.1f} % of a core, RSS {loaded['rss_mib']:.1f} MiB"
          f" (peak {loaded['hwm_mib']:.1f} MiB)")
    can_seen = (state.get("can") or {}).get("frames_per_s")
    buf = state.get("buffer") or {}
    print(f"  agent's own view: CAN {can_seen} frames/s decoded, committed seq"
          f" {buf.get('committed_seq')} ({'record-all' if args.record_all else 'default'}"
          " sampling)")
    print(f"  idle:   inputs silent, broker connected: CPU {idle['cpu_pct']:.2f} % of a core,"
          f" RSS {idle['rss_mib']:.1f} MiB")
    print(f"  agent exit code after SIGTERM: {code}; last log lines:")
    for line in tail:
        print(f"    {line}")
    print(f"reproduce: .venv/bin/python bench/agent_footprint.py --warmup {args.warmup:g}"
          f" --window {args.window:g} --frames {args.frames}"
          + (" --record-all" if args.record_all else ""))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
