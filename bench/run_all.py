"""Run every truckgw benchmark in one go and print one table of figures.

Each bench script runs as a subprocess, one after the other (never two at once, so
they do not compete for the cores), on this machine, in this run. Their printed
figures are parsed and laid out as one table: figure | ours | baseline | target |
result. The machine (CPU, cores, Python, SQLite, Mosquitto, load average) is printed
above it.

    .venv/bin/python bench/run_all.py [--quick] [--markdown FILE] [--logs DIR]

``--quick`` uses smaller sizes (a few minutes in all); the default runs the sizes the
issues ask for. ``--logs DIR`` keeps each bench's full output. A missing bench script,
a bench that fails or output that no longer parses yields a "not measured" row with the
reason; the exit status is then 1. Missed targets are reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUM = r"([\d,]+(?:\.\d+)?)"
Figures = dict[str, float]


@dataclass(frozen=True, slots=True)
class Bench:
    """One bench script: how to call it (full and quick) and how to read its output."""

    name: str
    script: str  # path relative to the repo root
    full: tuple[str, ...]
    quick: tuple[str, ...]
    timeout_s: float
    parse: Callable[[str], Figures]
    module: bool = False  # run as ``python -m bench.x`` rather than by path

    def argv(self, quick: bool) -> list[str]:
        head = ["-m", self.script.removesuffix(".py").replace("/", ".")] if self.module \
            else [self.script]
        return [sys.executable, *head, *(self.quick if quick else self.full)]


@dataclass(slots=True)
class Outcome:
    """What one bench run gave: figures, or why there are none."""

    bench: Bench
    command: str
    figures: Figures = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    load_before: float = 0.0
    output: str = ""


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def _grab(out: str, figs: Figures, pattern: str, *keys: str) -> None:
    """Put the groups of the first match of ``pattern`` into ``figs`` under ``keys``."""
    m = re.search(pattern, out, re.MULTILINE)
    if m:
        for key, val in zip(keys, m.groups(), strict=True):
            figs[key] = _num(val)


# ------------------------------------------------------------------ output parsers


def parse_can(out: str) -> Figures:
    f: Figures = {}
    _grab(out, f, rf"decode\+record \(default sampling\): {NUM} frames/s", "decode_default")
    _grab(out, f, rf"decode\+record \(every frame\): {NUM} frames/s", "decode_every")
    for transport, label, key in (("virtual", "default sampling", "virtual_default"),
                                  ("virtual", "every frame", "virtual_every"),
                                  ("slcan", "default sampling", "slcan_default")):
        _grab(out, f, rf"running driver \({transport}, {label}\): {NUM} frames/s sent, "
              rf"{NUM}/{NUM} received, driver CPU {NUM} %",
              f"{key}_rate", f"{key}_recv", f"{key}_sent", f"{key}_cpu")
    return f


def parse_buffer(out: str) -> Figures:
    f: Figures = {}
    _grab(out, f, rf"encoded event size {NUM} bytes", "size")
    for dur in ("normal", "full"):
        _grab(out, f, rf"append durability={dur}: {NUM} events/s \({NUM} events"
              rf"[^\n]*\n\s+disk bytes written per event: {NUM} \(write_bytes\)",
              f"append_{dur}", "append_n", f"disk_{dur}")
    _grab(out, f, rf"drain \([^)]*\): {NUM} events/s \({NUM} of", "drain", "drain_n")
    _grab(out, f, rf"disk bytes written per acked event: {NUM}", "disk_acked")
    _grab(out, f, rf"commit_interval_ms=1000: {NUM} disk bytes", "trickle_1000")
    return f


def parse_uplink(out: str) -> Figures:
    f: Figures = {}
    for enc in ("json", "compact"):
        _grab(out, f, rf"- ours {enc} \([^)]*\): {NUM} B/event", f"bytes_{enc}")
        _grab(out, f, rf"- ours {enc}, loopback: {NUM} events/s", f"drain_{enc}_lo")
        _grab(out, f, rf"- ours {enc}, 100 ms RTT proxy: {NUM} events/s", f"drain_{enc}_px")
    _grab(out, f, rf"- naive baseline \([^)]*\): {NUM} B/event", "bytes_base")
    _grab(out, f, rf"- naive baseline, loopback: {NUM} events/s", "drain_base_lo")
    _grab(out, f, rf"- naive baseline, 100 ms RTT proxy: {NUM} events/s \(measured on {NUM}",
          "drain_base_px", "base_px_n")
    _grab(out, f, rf"drain of a {NUM}-event backlog", "events")
    _grab(out, f, rf"live-first latency, {NUM}-event backlog", "live_backlog")
    _grab(out, f, rf"^- 100 ms RTT proxy \+ {NUM} MB/s cap: ", "cap_mbps")
    for name, key in (("loopback", "lo"), ("100 ms RTT proxy", "px"),
                      (r"100 ms RTT proxy \+ [\d.]+ MB/s cap", "cap")):
        _grab(out, f, rf"^- {name}: p50 {NUM} ms, p99 {NUM} ms, max {NUM} ms \({NUM}/{NUM} live",
              f"p50_{key}", f"p99_{key}", f"max_{key}", f"live_{key}", f"sent_{key}")
    return f


def parse_agent(out: str) -> Figures:
    f: Figures = {}
    _grab(out, f, rf"loaded: GPS 10 Hz \+ CAN {NUM} frames/s[^\n]*CPU {NUM} % of a core, "
          rf"RSS {NUM} MiB \(peak {NUM} MiB\)", "frames", "cpu_loaded", "rss", "rss_peak")
    _grab(out, f, rf"idle: +inputs silent[^\n]*CPU {NUM} % of a core, RSS {NUM} MiB",
          "cpu_idle", "rss_idle")
    _grab(out, f, rf"exit code after SIGTERM: {NUM}", "exit")
    return f


def parse_gps(out: str) -> Figures:
    f: Figures = {}
    _grab(out, f, rf"{NUM} MB/s, {NUM} sentences/s, {NUM} fixes/s", "mbps", "sent", "fixes")
    _grab(out, f, rf"driver: {NUM} epochs[^\n]*CPU {NUM} % of one core", "epochs", "cpu")
    return f


BENCHES = (
    Bench("can", "bench/can_bench.py",
          ("--seconds", "10", "--rate", "1900", "--passes", "5", "--slcan"),
          ("--seconds", "3", "--rate", "1900", "--passes", "1", "--slcan"), 600, parse_can),
    Bench("buffer", "bench/buffer_bench.py", ("--events", "300000", "--backlog", "1000000"),
          ("--events", "50000", "--backlog", "100000"), 1200, parse_buffer),
    Bench("uplink", "bench/uplink_bench.py", ("--events", "200000", "--live-backlog", "100000"),
          ("--quick",), 1800, parse_uplink, module=True),
    Bench("agent", "bench/agent_footprint.py", ("--warmup", "10", "--window", "30"),
          ("--warmup", "3", "--window", "10"), 600, parse_agent),
    Bench("gps", "bench/gps_bench.py", ("--passes", "20", "--seconds", "10"),
          ("--passes", "5", "--seconds", "3"), 300, parse_gps),
)


# ------------------------------------------------------------------ running


def run_bench(bench: Bench, quick: bool) -> Outcome:
    """Run one bench to completion (bounded by its timeout) and parse its output."""
    argv = bench.argv(quick)
    shown = " ".join([".venv/bin/python", *argv[1:]])
    res = Outcome(bench, shown, load_before=os.getloadavg()[0])
    if not (ROOT / bench.script).is_file():
        res.error = f"not measured ({bench.script} missing)"
        return res
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    # own session: on timeout the whole group (the bench and its brokers) is ended
    with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          start_new_session=True, text=True) as proc:
        try:
            res.output, _ = proc.communicate(timeout=bench.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                res.output, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                res.output, _ = proc.communicate()
            res.error = f"not measured (timed out after {bench.timeout_s:.0f} s)"
    res.seconds = time.monotonic() - t0
    if res.error is None and proc.returncode != 0:
        res.error = f"not measured ({bench.script} exited {proc.returncode})"
    res.figures = bench.parse(res.output)
    return res


# ------------------------------------------------------------------ the table


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    ours: str
    baseline: str
    target: str
    result: str


class Table:
    """Rows built from the outcomes; a missing figure becomes a "not measured" row."""

    def __init__(self, outcomes: dict[str, Outcome]) -> None:
        self.outcomes = outcomes
        self.rows: list[Row] = []
        self.unparsed: list[str] = []

    def fig(self, bench: str, key: str) -> float | None:
        return self.outcomes[bench].figures.get(key)

    def add(self, bench: str, figure: str, keys: tuple[str, ...],
            ours: Callable[..., str], baseline: str = "—", target: str = "—",
            ok: Callable[..., bool] | None = None) -> None:
        """Add a row from ``keys`` of ``bench``; ``ours``/``ok`` get those values."""
        vals = [self.fig(bench, k) for k in keys]
        if any(v is None for v in vals):
            out = self.outcomes[bench]
            why = out.error or "not measured (output not parsed, see --logs)"
            if out.error is None:
                self.unparsed.append(f"{bench}: {figure}")
            self.rows.append(Row(figure, why, baseline, target, "n/a"))
            return
        result = "—" if ok is None else ("pass" if ok(*vals) else "FAIL")
        self.rows.append(Row(figure, ours(*vals), baseline, target, result))


def _i(v: float) -> str:
    return f"{v:,.0f}"


def build_table(outcomes: dict[str, Outcome]) -> Table:
    t = Table(outcomes)
    t.add("can", "CAN ingest, decode+record, default sampling (frames/s, one core)",
          ("decode_default",), _i, target=">= 20,000", ok=lambda v: v >= 20_000)
    t.add("can", "CAN ingest, decode+record, every decoded frame an event (frames/s)",
          ("decode_every",), _i, target=">= 20,000", ok=lambda v: v >= 20_000)
    for key, label in (("virtual_default", "virtual bus, default sampling"),
                       ("virtual_every", "virtual bus, every frame an event"),
                       ("slcan_default", "slcan over a pty, default sampling")):
        t.add("can", f"CAN driver CPU at full 250 kbit/s load, {label} (% of one core)",
              (f"{key}_cpu", f"{key}_rate", f"{key}_recv", f"{key}_sent"),
              lambda c, r, n, m: f"{c:.1f} % at {r:,.0f} frames/s ({n:,.0f} of {m:,.0f} "
              "received)",
              target="<= 25 %, no frame lost", ok=lambda c, _r, n, m: c <= 25 and n == m)
    n = t.fig("buffer", "append_n")
    sz = t.fig("buffer", "size") or 0.0
    for dur, goal in (("normal", 50_000), ("full", 20_000)):
        t.add("buffer", f"buffer append, durability={dur} (events/s"
              + (f", {n:,.0f} events)" if n else ")"), (f"append_{dur}",), _i,
              target=f">= {goal:,}", ok=lambda v, g=goal: v >= g)
    t.add("buffer", "buffer lease+ack drain (events/s, from a backlog of N)",
          ("drain", "drain_n"), lambda v, k: f"{v:,.0f} (N = {k:,.0f})",
          target=">= 50,000", ok=lambda v, *_: v >= 50_000)
    for dur in ("normal", "full"):
        t.add("buffer", f"disk bytes written per stored event, {dur} (/proc/self/io)",
              (f"disk_{dur}", "size"), lambda b, s: f"{b:,.0f} B = {b / s:.2f}x of {s:.0f} B",
              target=f"<= 4x encoded ({4 * sz:,.0f} B)", ok=lambda b, s: b <= 4 * s)
    t.add("buffer", "disk bytes written per acked event (delete side)", ("disk_acked", "size"),
          lambda b, s: f"{b:,.0f} B = {b / s:.2f}x")
    t.add("buffer", "disk bytes per event at 50 ev/s, commit_interval_ms=1000",
          ("trickle_1000", "size"), lambda b, s: f"{b:,.0f} B = {b / s:.1f}x")
    _uplink_rows(t)
    t.add("agent", "agent RSS, GPS 10 Hz + CAN 2,000 frames/s (truckgw run)",
          ("rss", "rss_peak"), lambda r, p: f"{r:.1f} MiB (peak {p:.1f} MiB)",
          target="<= 60 MB", ok=lambda _r, p: p * 1.048576 <= 60)
    t.add("agent", "agent CPU, loaded as above (% of one core)", ("cpu_loaded", "frames"),
          lambda c, f: f"{c:.1f} % ({f:,.0f} frames/s fed)")
    t.add("agent", "agent CPU idle, broker connected (% of one core)", ("cpu_idle", "rss_idle"),
          lambda c, r: f"{c:.2f} % (RSS {r:.1f} MiB)", target="<= 2 %", ok=lambda c, *_: c <= 2)
    t.add("gps", "GPS codec+record throughput, one core (MB/s of NMEA)",
          ("mbps", "sent", "fixes"),
          lambda m, s, f: f"{m:.2f} MB/s ({s:,.0f} sentences/s, {f:,.0f} fixes/s)",
          baseline="115200 baud = 0.0115 MB/s", target="> line rate",
          ok=lambda m, *_: m > 0.0115)
    t.add("gps", "GPS driver CPU at 10 Hz on a pty (% of one core, writer incl.)", ("cpu",),
          lambda c: f"{c:.1f} %")
    return t


def _uplink_rows(t: Table) -> None:
    def base(key: str, unit: str) -> str:
        v = t.fig("uplink", key)
        return "not measured" if v is None else f"{v:,.1f} {unit}" if v < 100 else \
            f"{v:,.0f} {unit}"

    n = t.fig("uplink", "events")
    size = f", {n:,.0f}-event backlog" if n else ""
    for enc in ("json", "compact"):
        t.add("uplink", f"uplink drain, loopback, {enc}{size} (events/s, QoS 1, acked)",
              (f"drain_{enc}_lo", "drain_base_lo"),
              lambda v, b: f"{v:,.0f} ({v / b:.1f}x baseline)",
              baseline=base("drain_base_lo", "ev/s (1 publish/event)"),
              target=">= 50,000", ok=lambda v, *_: v >= 50_000)
    for enc in ("json", "compact"):
        t.add("uplink", f"uplink drain, 100 ms RTT proxy, {enc}{size} (events/s)",
              (f"drain_{enc}_px", "drain_base_px"),
              lambda v, b: f"{v:,.0f} ({v / b:,.0f}x baseline)",
              baseline=base("drain_base_px", "ev/s (1 publish/event") + (
                  f", {t.fig('uplink', 'base_px_n'):,.0f} events measured)"
                  if t.fig("uplink", "base_px_n") else ")"),
              target=">= 100x baseline", ok=lambda v, b: v >= 100 * b)
    t.add("uplink", "bytes on the wire per event, json (PUBLISH incl. header)",
          ("bytes_json", "bytes_base"), lambda v, b: f"{v:.1f} B (1/{b / v:.1f} of baseline)",
          baseline=base("bytes_base", "B"))
    t.add("uplink", "bytes on the wire per event, compact (JSON+zstd)",
          ("bytes_compact", "bytes_base"), lambda v, b: f"{v:.1f} B (1/{b / v:.1f} of baseline)",
          baseline=base("bytes_base", "B"), target="<= 1/5 of baseline",
          ok=lambda v, b: v * 5 <= b)
    lb = t.fig("uplink", "live_backlog")
    during = f"during a {lb:,.0f}-event drain" if lb else "during a backlog drain"
    cap = t.fig("uplink", "cap_mbps")
    cap_s = f"{cap:g}" if cap else "?"
    for key, where in (("lo", "loopback"), ("px", "100 ms RTT proxy"),
                       ("cap", f"100 ms RTT proxy + {cap_s} MB/s bandwidth cap")):
        t.add("uplink", f"live-first latency p50 / p99, {where}, {during}",
              (f"p50_{key}", f"p99_{key}", f"live_{key}", f"sent_{key}"),
              lambda a, b, k, m: f"{a:,.0f} ms / {b:,.0f} ms ({k:,.0f} of {m:,.0f} live "
              "events arrived)",
              target="p99 <= 1 s", ok=lambda _a, b, k, m: b <= 1000 and k == m)


def machine() -> list[tuple[str, str]]:
    """Facts about this machine, for the header of the table."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mosq = "not found"
    for exe in ("mosquitto", "/usr/sbin/mosquitto"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            p = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5,
                               check=False)
            mosq = (p.stdout or p.stderr).splitlines()[0].removeprefix("mosquitto version ")
            break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kib / 2**20:.1f} GiB"
    libs = []
    for dist in ("paho-mqtt", "python-can", "aiosqlite", "pyserial"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libs.append(f"{dist} {importlib.metadata.version(dist)}")
    return [("CPU", cpu), ("cores", str(os.cpu_count())), ("memory", mem),
            ("kernel", platform.release()), ("Python", sys.version.split()[0]),
            ("SQLite", sqlite3.sqlite_version), ("Mosquitto", mosq), ("libraries", ", ".join(libs))]


def render_text(t: Table) -> str:
    head = ("figure", "ours", "baseline", "target", "result")
    cells = [head, *[(r.figure, r.ours, r.baseline, r.target, r.result) for r in t.rows]]
    width = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = [" | ".join(c[i].ljust(width[i]) for i in range(5)).rstrip() for c in cells]
    lines.insert(1, "-+-".join("-" * w for w in width))
    return "\n".join(lines)


def render_markdown(t: Table, header: list[tuple[str, str]], runs: list[str]) -> str:
    out = [f"- {k}: {v}" for k, v in header]
    out += ["", "| figure | ours | baseline | target | result |", "|---|---|---|---|---|"]
    out += [f"| {r.figure} | {r.ours} | {r.baseline} | {r.target} | {r.result} |"
            for r in t.rows]
    out += ["", "Bench runs (in this order, one at a time):", ""]
    out += [f"- {line}" for line in runs]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    ap.add_argument("--logs", type=Path, help="keep each bench's full output in this folder")
    ap.add_argument("--only", action="append", choices=[b.name for b in BENCHES],
                    help="run only these benches (repeatable); the others read not measured")
    args = ap.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    load0 = os.getloadavg()
    header = [*machine(), ("started", started.strftime("%Y-%m-%d %H:%M UTC")),
              ("load average before start", " / ".join(f"{x:.2f}" for x in load0)
               + " (1 / 5 / 15 min)"),
              ("mode", "quick (--quick)" if args.quick else "full sizes")]
    for k, v in header:
        print(f"{k}: {v}", flush=True)
    outcomes: dict[str, Outcome] = {}
    runs: list[str] = []
    for bench in BENCHES:
        if args.only and bench.name not in args.only:
            outcomes[bench.name] = Outcome(bench, "", error="not measured (not selected)")
            continue
        print(f"running {bench.name}: {' '.join(bench.argv(args.quick)[1:])} ...", flush=True)
        res = run_bench(bench, args.quick)
        outcomes[bench.name] = res
        line = (f"{bench.name}: `{res.command}` ({res.seconds:.0f} s, load average "
                f"{res.load_before:.2f} at start){' -- ' + res.error if res.error else ''}")
        runs.append(line)
        print(f"  {line}", flush=True)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            (args.logs / f"{bench.name}.log").write_text(f"$ {res.command}\n{res.output}")
    load1 = os.getloadavg()
    header.append(("load average at the end", " / ".join(f"{x:.2f}" for x in load1)))
    table = build_table(outcomes)
    print(f"\nload average at the end: {header[-1][1]}\n")
    print(render_text(table))
    for miss in table.unparsed:
        print(f"warning: figure not found in the output of {miss}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(render_markdown(table, header, runs))
        print(f"\nMarkdown written to {args.markdown}")
    failed = [o for o in outcomes.values() if o.error and "not selected" not in o.error]
    return 1 if failed or table.unparsed else 0


if __name__ == "__main__":
    sys.exit(main())
