"""``truckgw sink run`` (consume a fleet into a database), ``truckgw sink gaps`` and
``truckgw sink report`` (a truck's trip report from the database)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import socket
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from gateway.sink.base import SinkError
from gateway.sink.consumer import SESSION_EXPIRY_S, FleetSink, SinkOptions
from gateway.sink.gaps import GapState, account
from gateway.sink.report import build
from gateway.sink.rows import DEFAULT_MAX_PAYLOAD_BYTES
from gateway.sink.store import open_store

if TYPE_CHECKING:
    from gateway.sink.jetstream import JetStreamSink

EX_OK, EX_GAPS, EX_USAGE = 0, 1, 2
EX_NO_EVENTS = 1
DEFAULT_DB = "sqlite:///truckgw-sink.db"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``truckgw sink`` and its sub-commands."""
    p = sub.add_parser("sink", help="the fleet side: store every event once in a database",
                       description="Consume a fleet's events into SQLite or PostgreSQL "
                       "(docs/sink.md).")
    sinksub = p.add_subparsers(dest="sink_command", required=True, metavar="SUBCOMMAND")

    r = sinksub.add_parser("run", help="subscribe and store until Ctrl-C/SIGTERM",
                           description="Subscribe to {prefix}/+/events/# and {prefix}/+/status; "
                           "one transaction per message, PUBACK after the commit.")
    r.add_argument("--db", default=DEFAULT_DB,
                   help=f"sqlite:///PATH or postgresql://... (default {DEFAULT_DB})")
    r.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    r.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    r.add_argument("--topic-prefix", default="fleet", help="topic prefix (default fleet)")
    r.add_argument("--group", default=None,
                   help="MQTT 5 shared subscription group: sinks of one group split the fleet")
    r.add_argument("--client-id", default=None,
                   help="MQTT client id, stable across restarts and unique per process "
                   "(default truckgw-sink[-GROUP]-HOSTNAME)")
    r.add_argument("--max-payload-bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES,
                   help="quarantine batches larger than this after decompression")
    r.add_argument("--session-expiry", type=int, default=SESSION_EXPIRY_S, metavar="S",
                   help="seconds the broker keeps this sink's session (and what is queued for "
                   f"it) after it left (default {SESSION_EXPIRY_S}; 0 to leave a group for good)")
    r.add_argument("--source", choices=("mqtt", "jetstream"), default="mqtt",
                   help="mqtt: subscribe to the broker (default); jetstream: a durable consumer "
                   "on a NATS cluster's MQTT stream, shared by every sink of --durable "
                   "(docs/cluster.md; needs the nats extra)")
    r.add_argument("--nats", default="nats://127.0.0.1:4222", metavar="URLS",
                   help="with --source jetstream: comma-separated NATS URLs of the cluster")
    r.add_argument("--durable", default="truckgw-sink",
                   help="with --source jetstream: the durable consumer the sinks share")
    r.add_argument("--stream-replicas", type=int, default=3, metavar="N",
                   help="with --source jetstream: replicas of $MQTT_msgs if the sink creates "
                   "it (match the servers' mqtt.stream_replicas; default 3)")
    r.add_argument("--ack-wait", type=float, default=30.0, metavar="S",
                   help="with --source jetstream: seconds before an unacked message goes to a "
                   "sink again (default 30)")
    r.add_argument("--nats-user", default=None, help="with --source jetstream: NATS user")
    r.add_argument("--nats-password-file", default=None, metavar="PATH",
                   help="with --source jetstream: file whose first line is the password")
    r.add_argument("--duration", type=float, default=None, metavar="S",
                   help="exit after S seconds (default: until Ctrl-C/SIGTERM)")
    r.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    r.set_defaults(func=cmd_run)

    g = sinksub.add_parser("gaps", help="print the gap accounting per truck and stream",
                           description="Missing seqs per truck and stream: announced by "
                           "seq_gap, explained by the status counters, still unexplained.")
    g.add_argument("truck", nargs="?", default=None, help="one truck id (default: all)")
    g.add_argument("--db", default=DEFAULT_DB, help=f"database URL (default {DEFAULT_DB})")
    g.add_argument("--json", action="store_true", help="print JSON")
    g.add_argument("--expect-no-gaps", action="store_true",
                   help="exit 1 if any truck has missing seqs that nothing explains")
    g.set_defaults(func=cmd_gaps)

    t = sinksub.add_parser("report", help="print a truck's trip report over a time range",
                           description="Route, speed, engine speed, fuel level and faults on "
                           "one time axis, and the trip's distance, duration, fuel used and "
                           "idle time, from the stored events (docs/sink.md).")
    t.add_argument("truck", help="truck id")
    t.add_argument("--db", default=DEFAULT_DB, help=f"database URL (default {DEFAULT_DB})")
    t.add_argument("--from", dest="from_ts", type=parse_time, default=None, metavar="ISO",
                   help="start, ISO 8601 (2026-12-02T08:00:00Z; no zone = UTC; default: "
                   "the first event)")
    t.add_argument("--to", dest="to_ts", type=parse_time, default=None, metavar="ISO",
                   help="end, inclusive (default: the last event)")
    t.add_argument("--step", type=int, default=None, metavar="S",
                   help="seconds between the rows of the series (default: at most 120 rows)")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=cmd_report)


def cmd_run(args: argparse.Namespace) -> int:
    """Run one sink process."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.source == "jetstream":
        return _run_jetstream(args)
    group_part = f"-{args.group}" if args.group else ""
    client_id = args.client_id or f"truckgw-sink{group_part}-{socket.gethostname()}"
    try:
        options = SinkOptions(host=args.host, port=args.port, prefix=args.topic_prefix,
                              group=args.group, client_id=client_id,
                              max_payload_bytes=args.max_payload_bytes,
                              session_expiry_s=args.session_expiry)
        store = open_store(args.db)
    except (ValueError, SinkError) as exc:
        print(f"truckgw sink: {exc}", file=sys.stderr)
        return EX_USAGE
    sink = FleetSink(options, store, on_subscribed=lambda: print("sink: subscribed",
                                                                  flush=True))
    print(f"sink: {args.host}:{args.port} as {client_id} topics {options.topics()} "
          f"into {args.db.split('@')[-1]}", flush=True)
    asyncio.run(_run(sink, args.duration))
    print("sink: stopped " + json.dumps(asdict(sink.counters())), flush=True)
    return EX_OK


def _run_jetstream(args: argparse.Namespace) -> int:
    """``--source jetstream``: one process of a shared durable consumer."""
    try:
        from gateway.sink.jetstream import JetStreamOptions, JetStreamSink  # noqa: PLC0415
    except ImportError as exc:
        print(f"truckgw sink: --source jetstream needs nats-py ({exc}); "
              "install it with: pip install 'truckgw[nats]'", file=sys.stderr)
        return EX_USAGE
    try:
        password = None
        if args.nats_password_file:
            with open(args.nats_password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        options = JetStreamOptions(
            servers=tuple(u.strip() for u in args.nats.split(",") if u.strip()),
            prefix=args.topic_prefix, durable=args.durable, replicas=args.stream_replicas,
            user=args.nats_user, password=password, max_payload_bytes=args.max_payload_bytes,
            ack_wait_s=args.ack_wait)
        store = open_store(args.db)
    except (ValueError, OSError, SinkError) as exc:
        print(f"truckgw sink: {exc}", file=sys.stderr)
        return EX_USAGE
    sink = JetStreamSink(options, store, on_subscribed=lambda: print("sink: subscribed",
                                                                      flush=True))
    print(f"sink: jetstream {','.join(options.servers)} durable {options.durable} "
          f"({options.filter_subject}) into {args.db.split('@')[-1]}", flush=True)
    asyncio.run(_run(sink, args.duration))
    print("sink: stopped " + json.dumps(asdict(sink.counters())), flush=True)
    return EX_OK


async def _run(sink: FleetSink | JetStreamSink, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    try:
        await sink.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(sig)


def cmd_gaps(args: argparse.Namespace) -> int:
    """Print the gap accounting; with --expect-no-gaps exit 1 on an unexplained seq."""
    try:
        store = open_store(args.db)
        try:
            reports = [account(i) for i in store.gap_inputs(args.truck)]
        finally:
            store.close()
    except SinkError as exc:
        print(f"truckgw sink gaps: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.json:
        print(json.dumps([{**asdict(r), "state": r.state.value} for r in reports], indent=1))
    else:
        for r in reports:
            print(r.line())
        if not reports:
            print("no trucks in the database")
    unexplained = sum(r.unexplained for r in reports)
    if args.expect_no_gaps and unexplained:
        draining = sum(1 for r in reports if r.state is GapState.DRAINING and r.unexplained)
        print(f"FAIL: {unexplained} seqs missing that no seq_gap notice or status counter "
              f"explains ({draining} trucks still draining)", file=sys.stderr)
        return EX_GAPS
    return EX_OK


def parse_time(text: str) -> int:
    """ISO 8601 to milliseconds since the epoch; a time without zone is UTC."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-12-02T08:00:00Z)") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return round(t.timestamp() * 1000)


def cmd_report(args: argparse.Namespace) -> int:
    """Print one truck's trip report; exit 1 when the range holds no events."""
    if args.step is not None and args.step < 1:
        print("truckgw sink report: --step must be at least 1 s", file=sys.stderr)
        return EX_USAGE
    if args.from_ts is not None and args.to_ts is not None and args.from_ts > args.to_ts:
        print("truckgw sink report: --from is after --to", file=sys.stderr)
        return EX_USAGE
    try:
        store = open_store(args.db)
        try:
            inp = store.report_input(args.truck, args.from_ts, args.to_ts)
        finally:
            store.close()
    except SinkError as exc:
        print(f"truckgw sink report: {exc}", file=sys.stderr)
        return EX_USAGE
    report = build(inp, args.step)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.text())
    if not report.samples:
        print(f"truckgw sink report: no events of {args.truck} in the range", file=sys.stderr)
        return EX_NO_EVENTS
    return EX_OK
