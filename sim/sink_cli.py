"""``truckgw sim sink``: a live summary while running, a report at exit."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from sim.report import write_report
from sim.sink import Sink, format_summary

EX_OK, EX_GAPS = 0, 1


def add_parser(simsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sink`` under ``truckgw sim``."""
    p = simsub.add_parser(
        "sink", help="subscribe to a fleet and check what arrives (gaps, duplicates, lag)",
        description="A fleet consumer: subscribes to {prefix}/+/events and /status, decodes "
        "JSON and compact batches, tracks per truck events, duplicates, seq gaps and lag.")
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--topic-prefix", default="fleet", help="topic prefix (default fleet)")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")
    p.add_argument("--share", metavar="GROUP", default=None,
                   help="MQTT 5 shared subscription group: several sinks split the traffic")
    p.add_argument("--client-id", default=None,
                   help="fixed client id (persistent session across sink restarts)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="exit after S seconds (default: until Ctrl-C)")
    p.add_argument("--expect-no-gaps", action="store_true",
                   help="exit 1 if any truck has a gap in its seq numbers that no "
                   "seq_gap notice announced")
    p.add_argument("--jsonl", type=Path, help="append every received event to this JSON-lines file")
    p.add_argument("--sqlite", type=Path,
                   help="store every event once in this SQLite file, in the schema of "
                   "`truckgw sink` (docs/sink.md)")
    p.add_argument("--report", type=Path, help="write a trip report (HTML with SVG plots)")
    p.add_argument("--summary-json", type=Path, help="write the final figures as JSON")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between live lines")
    p.add_argument("-q", "--quiet", action="store_true", help="no live summary")
    p.set_defaults(func=cmd_sink)


def cmd_sink(args: argparse.Namespace) -> int:
    """Run the sink until Ctrl-C/SIGTERM or ``--duration``."""
    done = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    sink = Sink(args.host, args.port, args.topic_prefix, share=args.share,
                protocol=args.protocol, client_id=args.client_id, jsonl=args.jsonl,
                sqlite=args.sqlite)
    sink.start()
    print(f"sink: {args.host}:{args.port} topics {sink.topics()}", flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    subscribed = False
    next_live = time.monotonic() + args.interval
    try:
        while not done.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            # poll quickly until every SUBACK is in, so callers can wait for this line
            wait = next_live - now if subscribed else min(0.05, max(0.0, next_live - now))
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if done.wait(max(0.0, wait)):
                break
            if not subscribed and sink.connected.is_set():
                subscribed = True
                print("sink: subscribed", flush=True)
            if time.monotonic() >= next_live:
                next_live += args.interval
                if not args.quiet:
                    print(live_line(sink.summary()), flush=True)
    finally:
        sink.stop()
        for s, h in old.items():
            signal.signal(s, h)
    summary = sink.summary()
    print(format_summary(summary))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, default=str, indent=1))
    if args.report:
        tracks = {tid: sink.track(tid) for tid in summary["trucks"]}
        write_report(args.report, tracks, summary["trucks"])
        print(f"trip report: {args.report}")
    if args.expect_no_gaps and summary["totals"]["lost"]:
        print(f"FAIL: {summary['totals']['lost']} seq numbers missing "
              "(not announced by a seq_gap notice)", file=sys.stderr)
        return EX_GAPS
    return EX_OK


def live_line(summary: dict[str, Any]) -> str:
    """One line for the live view."""
    tot = summary["totals"]
    conn = "connected" if summary["connected"] else "DISCONNECTED"
    return (f"[{time.strftime('%H:%M:%S')}] {conn} trucks={len(summary['trucks'])} "
            f"events={tot['events']} unique={tot['unique']} dup={tot['duplicates']} "
            f"missing={tot['missing']} bad={tot['bad_payloads']}")
