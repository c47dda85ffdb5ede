"""The uplink bench (``bench/uplink_bench.py``) twice in one process: the live linger off
(``max_latency_s = 0``, the delivery before issue #14) and at its default; the backlog
drain speed and the live-first latency side by side (issue #14: unchanged within 10 %).

Run: ``.venv/bin/python -m bench.linger_ab [--quick]`` (the arguments of uplink_bench).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench import uplink_bench
from config import MqttConfig

_original = uplink_bench.truck_cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--live-backlog", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="20k events, 20k live backlog")
    ap.add_argument("--latencies", default=None,
                    help="comma-separated max_latency_s values in run order (default: 0, the"
                         " default)")
    a = ap.parse_args()
    if a.quick:
        a.events, a.live_backlog = 20_000, 20_000
    default = MqttConfig(host="x").max_latency_s
    order = ([float(x) for x in a.latencies.split(",")] if a.latencies
             else [0.0, default])
    for latency in order:
        print(f"\n======== max_latency_s = {latency} ========", flush=True)

        def cfg(*args: Any, _latency: float = latency, **kw: Any) -> Any:
            kw.setdefault("max_latency_s", _latency)
            return _original(*args, **kw)

        uplink_bench.truck_cfg = cfg
        asyncio.run(uplink_bench.main(a.events, a.live_backlog, skip_drain=False))


if __name__ == "__main__":
    main()
