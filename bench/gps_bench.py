"""GPS / NMEA benchmarks.

1. Codec + recording throughput on one core: the eight real captures in
   ``tests/data/nmea`` (held in memory) through :class:`drivers.nmea_epoch.NmeaDecoder`
   in 4 KiB chunks, every fix offered to :class:`gateway.recording.gps.GpsRecorder` with
   every threshold at 0 and encoded with ``encode_body``.
2. CPU of the running :class:`drivers.gps.GpsDriver` on a pseudo-terminal fed at 10 Hz
   (RMC + GGA + GSA + VTG per epoch, ~300 bytes, a busy 115200-baud receiver); the
   writer runs on the same event loop and is included in the figure.

Usage: .venv/bin/python bench/gps_bench.py [--passes 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import tty
from pathlib import Path

from config import GpsConfig, GpsSampling
from config.events import Event, encode_body
from drivers.gps import GpsDriver
from drivers.nmea_epoch import NmeaDecoder
from gateway.clock import Clock
from gateway.ingest import Ingest
from gateway.recording.gps import GpsRecorder


def sentence(body: str) -> bytes:
    """``$body*HH\r\n`` with the right checksum."""
    cs = 0
    for b in body.encode():
        cs ^= b
    return f"${body}*{cs:02X}\r\n".encode()


def burst(tod: str, lat_min: float) -> bytes:
    """One 10 Hz epoch: RMC + GGA + GSA + VTG, ~300 bytes."""
    pos = f"48{lat_min:09.6f},N,01130.000000,E"
    return (sentence(f"GPRMC,{tod},A,{pos},30.000,90.00,150626,,,A")
            + sentence(f"GPGGA,{tod},{pos},1,09,0.9,100.0,M,47.0,M,,")
            + sentence("GPGSA,A,3,01,02,03,04,,,,,,,,,1.5,0.9,1.2")
            + sentence("GPVTG,90.0,T,,M,30.0,N,55.6,K,A"))


DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "nmea"
ALL_ZERO = GpsSampling(0, 0, 0, 0, 0, 0, 5, mode="thresholds")


def codec(passes: int) -> None:
    blob = b"".join(p.read_bytes() for p in sorted(DATA.glob("*.log")))
    fixes = events = sentences = 0
    t0 = time.process_time()
    for _ in range(passes):
        dec = NmeaDecoder()
        rec = GpsRecorder(ALL_ZERO)
        out = []
        for i in range(0, len(blob), 4096):
            out += dec.feed(blob[i : i + 4096], 0.0)
        out += dec.flush()
        for f in out:
            if rec.offer(f, 0.0) is not None:
                encode_body(Event("gps", f.utc_ms or 0, f.fields()))
                events += 1
        fixes += len(out)
        sentences += dec.sentences_ok + dec.checksum_errors + dec.parse_errors
    cpu = time.process_time() - t0
    mb = len(blob) * passes / 1e6
    print(f"codec: {passes} passes of {len(blob):,} bytes in {cpu:.2f} s CPU")
    print(f"  {mb / cpu:.2f} MB/s, {sentences / cpu:,.0f} sentences/s, "
          f"{fixes / cpu:,.0f} fixes/s ({events:,} events encoded)")
    print(f"  115200 baud is 0.0115 MB/s: {mb / cpu / 0.0115:,.0f}x headroom")


async def driver_cpu(seconds: float) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    got: list[Event] = []
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "gps0"
        link.symlink_to(os.ttyname(slave))
        cfg = GpsConfig(port=str(link), baudrate=115200, sampling=ALL_ZERO)
        drv = GpsDriver(cfg, Ingest(got.append, Clock(), gps=cfg.sampling).on_fix)
        task = asyncio.create_task(drv.run(), name="gps")
        await asyncio.sleep(0.5)
        t0, c0 = time.monotonic(), time.process_time()
        i = 0
        while time.monotonic() - t0 < seconds:
            hh, rest = divmod(i, 36000)
            mm, ss10 = divmod(rest, 600)
            tod = f"{10 + hh:02d}{mm:02d}{ss10 // 10:02d}.{ss10 % 10}0"
            with contextlib.suppress(BlockingIOError):
                os.write(master, burst(tod, 6.0 + i * 1e-5))
            i += 1
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    os.close(slave)
    os.close(master)
    print(f"driver: {i} epochs at 10 Hz over {wall:.1f} s, {len(got)} events, "
          f"CPU {100 * cpu / wall:.1f} % of one core (writer included)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    print("command: .venv/bin/python bench/gps_bench.py "
          f"--passes {args.passes} --seconds {args.seconds:g}")
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    codec(args.passes)
    asyncio.run(driver_cpu(args.seconds))


if __name__ == "__main__":
    main()
