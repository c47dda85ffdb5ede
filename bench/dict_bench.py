"""Payload bytes per event of the three wire encodings, by batch size, on real data.

Reproduce: .venv/bin/python bench/dict_bench.py [--corpus FILE]

The events are made by the agent's own codecs and recording policies (shipped defaults)
from real captures the dictionary was not trained on (bench/train_dict.py trains on the
simulator only):

- ``real-can``: the CSS Electronics J1939 log of a real truck (tests/data/j1939),
  through :class:`drivers.j1939.J1939Decoder` and the default CAN recording policy;
  ``real-can-every`` the same with every decoded message recorded (the log is short);
- ``real-gps``: every gpsd capture in tests/data/nmea, through
  :class:`drivers.nmea_epoch.NmeaDecoder` and the default position policy;
  ``real-gps-every`` with every fix recorded;
- ``sim``: a simulator drive recorded by a real agent (``--corpus``, a file written by
  ``bench/train_dict.py record``; every drive in it), for comparison.

Per source and batch size (1, 3, 10, 30, 100 events: a live linger of a few seconds
makes messages of about 10 at a truck's rate), the payload of one MQTT message divided
by its events, averaged over the source: ``json``, ``compact`` (zstd level 3) and
``compact-dict`` (zstd level 3 with the shipped dictionary). Payload only: the MQTT,
TLS and TCP/IP costs per message are in bench/cellular_bench.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import can  # noqa: E402

from buffer.api import StoredEvent  # noqa: E402
from config import CanSampling, GpsSampling  # noqa: E402
from config.events import Event, Priority, encode_body  # noqa: E402
from drivers.j1939 import J1939Decoder  # noqa: E402
from drivers.nmea_epoch import NmeaDecoder  # noqa: E402
from gateway import wire  # noqa: E402
from gateway.recording.can import CanRecorder, record_decoded  # noqa: E402
from gateway.recording.gps_curve import point_recorder  # noqa: E402

DATA = ROOT / "tests" / "data"
SIZES = (1, 3, 10, 30, 100)


#: every decoded message recorded: more events from the short real captures, each shaped
#: as the shipped policies shape them (only more often)
EVERY_CAN = CanSampling(min_interval_s=0, max_interval_s=0)
EVERY_GPS = GpsSampling(mode="thresholds", min_interval_s=0, max_interval_s=0,
                        min_distance_m=0, min_heading_change_deg=0)


def real_can(sampling: CanSampling) -> list[bytes]:
    dec, rec = J1939Decoder(), CanRecorder(sampling)
    out = []
    for m in can.CanutilsLogReader(DATA / "j1939" / "css_j1939_truck.log"):
        ts = round(m.timestamp * 1000)
        decoded = dec.feed(ts, m.arbitration_id, m.data, extended=m.is_extended_id)
        if decoded is not None:
            ev = record_decoded(rec, ts, decoded)
            if ev is not None:
                out.append(encode_body(ev))
    return out


def real_gps(sampling: GpsSampling) -> list[bytes]:
    out = []
    for path in sorted((DATA / "nmea").glob("*.log")):
        dec, rec = NmeaDecoder(), point_recorder(sampling)
        for fix in dec.feed(path.read_bytes(), 0.0) + dec.flush():
            if fix.utc_ms is None:
                continue
            for point in rec.offer(fix, fix.utc_ms / 1000):
                ts = point.fix.utc_ms if point.fix.utc_ms is not None else fix.utc_ms
                out.append(encode_body(Event(type="gps", ts_ms=ts, fields=point.fields())))
    return out


def sim_bodies(corpus: Path) -> list[bytes]:
    out = []
    for line in corpus.read_text().splitlines():
        for ev in json.loads(line)["events"]:
            ev.pop("seq")
            out.append(json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode())
    return out


def per_event(bodies: list[bytes], size: int, encoding: str) -> float:
    events = [StoredEvent(seq=i + 1, ts_ms=0, type="x", priority=Priority.TELEMETRY, body=b)
              for i, b in enumerate(bodies)]
    total = 0
    ctx = wire.WireContext(stream="5f0c3a9e7d214b68")
    for i in range(0, len(events), size):
        for payload, _ in wire.encode_batches("CELL-0001", events[i:i + size], encoding,
                                              1 << 20, ctx):
            total += len(payload)
    return total / len(events)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, help="a bench/train_dict.py record file")
    args = ap.parse_args()
    sources = {"real-can": real_can(CanSampling()), "real-can-every": real_can(EVERY_CAN),
               "real-gps": real_gps(GpsSampling()), "real-gps-every": real_gps(EVERY_GPS)}
    if args.corpus:
        sources["sim"] = sim_bodies(args.corpus)
    print("| source | events | batch | json B/event | compact | compact-dict | dict vs compact |")
    print("|---|---|---|---|---|---|---|")
    for name, bodies in sources.items():
        for size in SIZES:
            js, zc, zd = (per_event(bodies, size, e) for e in wire.ENCODINGS)
            print(f"| {name} | {len(bodies)} | {size} | {js:.1f} | {zc:.1f} | {zd:.1f} | "
                  f"1/{zc / zd:.2f} |", flush=True)
    speed(sources["real-can-every"])
    return 0


def speed(bodies: list[bytes], rounds: int = 5) -> None:
    """Encoding speed of a backlog (payloads up to the default 128 KiB), the three
    encodings interleaved in one process; the best round of each."""
    events = [StoredEvent(seq=i + 1, ts_ms=0, type="x", priority=Priority.TELEMETRY, body=b)
              for i, b in enumerate(bodies)]
    best = dict.fromkeys(wire.ENCODINGS, 0.0)
    for _ in range(rounds):
        for enc in wire.ENCODINGS:
            t0 = time.perf_counter()
            wire.encode_batches("CELL-0001", events, enc, 131072)
            best[enc] = max(best[enc], len(events) / (time.perf_counter() - t0))
    print("\nbacklog encoding speed (events/s, one core, best of "
          f"{rounds}, {len(events)} real-can-every events):")
    for enc, rate in best.items():
        print(f"  {enc}: {rate:,.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
