"""Train the zstd dictionary of the ``compact-dict`` wire encoding (docs/wire-format.md).

The shipped dictionary (``gateway/dicts/events-1.zdict``) is a versioned artefact of the
wire contract: its id is in every frame it compressed, and a consumer needs exactly that
file to decode them. Training again gives a dictionary *of the same kind* (the corpus is
recorded in real time, so not byte for byte the same); a new one ships under a new id,
and the old file stays in the package for as long as trucks may send with it.

Corpus: the events a real ``truckgw run`` records with its shipped sampling while the
simulator drives each of its routes (sim speed 4: the drive goes four times faster, the
events are the same kinds), with the fault generator on so DM1 faults, trips, idling and
harsh events are in it too; grouped into wire batches of 1, 3, 10 and 30 events (what a
live linger produces) with the batch envelope. No real-world capture is used, so the
evaluation on real data (``bench/dict_bench.py``) is on data the dictionary never saw.

Usage::

    .venv/bin/python bench/train_dict.py record --seconds 120 --out /tmp/corpus.jsonl
    .venv/bin/python bench/train_dict.py train /tmp/corpus.jsonl --out gateway/dicts/events-1.zdict
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zstandard  # noqa: E402

from sim.broker import free_port  # noqa: E402
from sim.gateway_proc import GatewayProcess  # noqa: E402
from sim.ports import PtyPort  # noqa: E402
from sim.route import load_route  # noqa: E402
from sim.runner import TruckSim  # noqa: E402
from sim.slcan_adapter import SlcanPtyAdapter  # noqa: E402
from sim.truck import Truck, TruckParams  # noqa: E402

ROUTES = ("hamburg-port-loop", "a9-munich-nuremberg", "i80-reno-truckee")
BATCH_SIZES = (1, 3, 10, 30)
DICT_BYTES = 8192


def _config(d: Path, gps: str, can: str) -> str:
    q = json.dumps
    return "\n".join([
        'truck_id = "TRAIN-0001"', "",
        "[gps]", f"port = {q(gps)}", "",
        "[can]", 'interface = "slcan"', f"channel = {q(can)}", "",
        "[buffer]", f"path = {q(str(d / 'buffer.db'))}", "",
        # a closed port: nothing is delivered, every event stays in the buffer
        "[mqtt]", 'host = "127.0.0.1"', f"port = {free_port()}", "",
        "[metrics]", f"state_file = {q(str(d / 'state.json'))}", "interval_s = 1.0", "",
    ]) + "\n"


def record(route: str, seed: int, seconds: float, work: Path) -> list[dict[str, object]]:
    """The wire events (seq, ts, type, fields) one agent records on one simulated drive."""
    d = work / f"{route}-{seed}"
    d.mkdir(parents=True)
    gps, can = PtyPort(d / "gps0"), SlcanPtyAdapter(d / "can0")
    agent = GatewayProcess(d / "agent", _config(d / "agent", str(gps.link), can.channel))
    truck = Truck(load_route(route), seed=seed,
                  params=TruckParams(start_parked_s=20, warmup_s=5, fault_every_s=60))
    sim = TruckSim(truck, gps=gps, can=can, speed=4.0, seed=seed)
    can.device.on_transmit = sim.on_frame_from_host
    try:
        agent.start()
        deadline = time.monotonic() + 60
        while (agent.state().get("can") or {}).get("state") not in ("active", "silent"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the agent's CAN bus did not come up: {agent.log_tail()}")
            time.sleep(0.2)
        asyncio.run(sim.run(seconds))
        time.sleep(2)
    finally:
        agent.stop()
        gps.close()
        can.close()
    events: list[dict[str, object]] = []
    with contextlib.closing(sqlite3.connect(d / "agent" / "buffer.db")) as db:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'ev\\_%' ESCAPE '\\'")]
        for t in tables:
            for seq, body in db.execute(f"SELECT seq, body FROM {t}"):  # noqa: S608  # schema names
                ev = json.loads(body)
                ev.pop("_boot", None)  # the internal stamp never reaches the wire
                events.append({"seq": seq, **ev})
    events.sort(key=lambda e: int(str(e["seq"])))
    return events


def batches(events: list[dict[str, object]], size: int) -> list[bytes]:
    """Wire JSON batches of ``size`` events, with the envelope the agent writes."""
    out = []
    for i in range(0, len(events), size):
        body = ",".join(json.dumps(e, separators=(",", ":"), ensure_ascii=False)
                        for e in events[i:i + size])
        out.append(('{"schema":"truckgw.batch/3","truck_id":"TRAIN-0001",'
                    '"stream":"5f0c3a9e7d214b68","events":[' + body + "]}").encode())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--seconds", type=float, default=120.0, help="wall seconds per route")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--seed", type=int, default=100,
                     help="seed of the first route (the shipped dictionary: 100)")
    tr = sub.add_parser("train")
    tr.add_argument("corpus", type=Path)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--dict-id", type=int, default=0x74670001)
    args = ap.parse_args()
    if args.cmd == "record":
        with tempfile.TemporaryDirectory() as tmp, args.out.open("w") as f:
            for i, route in enumerate(ROUTES):
                evs = record(route, seed=args.seed + i, seconds=args.seconds, work=Path(tmp))
                f.write(json.dumps({"route": route, "events": evs}) + "\n")
                print(f"{route}: {len(evs)} events", flush=True)
        return 0
    drives = [json.loads(line)["events"] for line in args.corpus.read_text().splitlines()]
    samples: list[bytes | bytearray | memoryview] = [
        b for evs in drives for n in BATCH_SIZES for b in batches(evs, n)]
    d = zstandard.train_dictionary(DICT_BYTES, samples, dict_id=args.dict_id, level=3,
                                   k=0, d=0, steps=40, threads=1)
    data = d.as_bytes()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data)} bytes, dict id {d.dict_id()}, "
          f"sha256 {hashlib.sha256(data).hexdigest()}, from {len(samples)} samples "
          f"({sum(len(evs) for evs in drives)} events)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
