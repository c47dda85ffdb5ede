"""``truckgw status -c FILE``: the health of a running or stopped agent.

Reads the state file the agent rewrites every ``[metrics].interval_s`` (see
:mod:`gateway.health`); it never talks to the agent or the broker. When the agent is
not running, the buffer database is also read (read-only, briefly) so the pending
figures are current even after a crash or power cut that left no final snapshot.

Exit codes follow the LSB ``status`` convention:
0 running and healthy; 1 running but unhealthy or not updating its state file;
3 not running; 4 no state file and no buffer (status unknown).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from config import TruckConfig
from gateway.health import read_state

EXIT_RUNNING = 0
EXIT_UNHEALTHY = 1
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4
#: A snapshot older than this many intervals (+ a grace) means the agent stopped updating.
STALE_INTERVALS = 3
STALE_GRACE_S = 5.0


def pid_alive(pid: Any) -> bool:
    """True if a process with this pid exists (ours or not: EPERM counts as alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_buffer_db(path: Path) -> dict[str, Any] | None:
    """Pending figures straight from a buffer file not held by a running agent.

    Opens read-only with no busy wait; returns ``None`` when the file is absent, locked
    (a running agent holds it exclusively) or unreadable.
    """
    from buffer import schema  # noqa: PLC0415  # only needed for a stopped agent

    if not path.exists():
        return None
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=0.2)
    except sqlite3.Error:
        return None
    try:
        pending = pending_bytes = 0
        for p in schema.TABLES:
            n, nbytes = con.execute(schema.class_totals_sql(p)).fetchone()
            pending += int(n)
            pending_bytes += int(nbytes)
        oldest = [r[0] for r in con.execute(schema.OLDEST_TS_SQL) if r[0] is not None]
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        max_seq = [r[0] for r in con.execute(schema.MAX_SEQ_SQL) if r[0] is not None]
    except sqlite3.Error:
        return None
    finally:
        con.close()
    evicted = sum(int(v) for k, v in meta.items() if str(k).startswith("evicted_"))
    expired = sum(int(v) for k, v in meta.items() if str(k).startswith("expired_"))
    last_seq = max([int(meta.get(schema.META_LAST_SEQ, 0)), *max_seq])
    return {
        "pending": pending,
        "pending_bytes": pending_bytes,
        "oldest_pending_ts_ms": min(oldest) if oldest else None,
        "evicted": evicted,
        "expired": expired,
        "lost_quarantine": int(meta.get(schema.META_LOST_QUARANTINE, 0)),
        "committed_seq": last_seq,
        "stream": f"{int(meta[schema.META_STREAM]):016x}" if meta.get(schema.META_STREAM) else "",
        "source": "database",
    }


def assess(state: dict[str, Any] | None, interval_s: float, now: float) -> tuple[str, int]:
    """The agent's run state (``running``/``unhealthy``/``stale``/``stopped``/
    ``crashed``/``unknown``) and the exit code for it."""
    if state is None:
        return "unknown", EXIT_UNKNOWN
    phase = state.get("phase")
    alive = pid_alive(state.get("pid"))
    if phase in ("stopped", "failed") or (phase is None and not alive):
        return str(phase or "stopped"), EXIT_NOT_RUNNING
    if not alive:
        return "crashed", EXIT_NOT_RUNNING  # a running phase but the process is gone
    age = now - float(state.get("updated_at") or 0)
    if age > STALE_INTERVALS * interval_s + STALE_GRACE_S:
        return "stale", EXIT_UNHEALTHY
    if state.get("healthy") is False:
        return "unhealthy", EXIT_UNHEALTHY
    return "running", EXIT_RUNNING


def _ago(ts: Any, now: float) -> str:
    if not isinstance(ts, int | float):
        return "never"
    return f"{_dur(now - ts)} ago"


def _dur(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def _mb(n: Any) -> str:
    return f"{n / 1e6:.2f} MB" if isinstance(n, int | float) else "?"


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else None


#: Run states whose snapshot is the agent's present; for the others (stopped, crashed,
#: stale, ...) every figure from the snapshot is shown with its age, never as current.
LIVE_STATES = ("running", "unhealthy")


def render_text(report: dict[str, Any], now: float) -> str:
    """The human-readable report."""
    st = report.get("state") or {}
    live = report.get("status") in LIVE_STATES
    updated = st.get("updated_at")
    as_of = "" if live or not isinstance(updated, int | float) else (
        f" as of {_dur(now - updated)} ago")
    lines = [f"truck {report['truck_id']}: {report['status']}"]
    if st:
        up_s = _dur(float(st.get("uptime_s") or 0))
        if live:
            lines[0] += f" (pid {st.get('pid')}, up {up_s})"
        else:
            lines[0] += f" (was pid {st.get('pid')}, up {up_s}; last figures{as_of})"
        if st.get("unhealthy_reason"):
            lines.append(f"  problem:  {st['unhealthy_reason']}{as_of}")
        up = st.get("uplink") or {}
        lines.append(f"  uplink:   {up.get('state')}{as_of}, last publish "
                     f"{_ago(up.get('last_publish_at'), now)}")
        if up.get("usage_up_bytes_month") is not None:  # the SIM's bytes (issue #14)
            lines.append(
                f"  data:     today {_mb(up.get('usage_up_bytes_today'))} up, "
                f"{_mb(up.get('usage_down_bytes_today'))} down; this month "
                f"{_mb(up.get('usage_up_bytes_month'))} up, "
                f"{_mb(up.get('usage_down_bytes_month'))} down")
    buf = report.get("buffer") or {}
    if buf:
        oldest = buf.get("oldest_pending_ts_ms")
        oldest_s = _ago(oldest / 1000, now) if isinstance(oldest, int | float) else "none"
        from_db = buf.get("source") == "database"
        lines.append(
            f"  buffer:   {buf.get('pending')} pending ({buf.get('pending_bytes')} bytes), "
            f"oldest {oldest_s}, evicted {buf.get('evicted')}, expired {buf.get('expired')}, "
            f"committed seq {buf.get('committed_seq')}"
            + (" [from the database, now]" if from_db else as_of)
        )
        if buf.get("lost_quarantine"):
            lines.append(f"  buffer:   {buf['lost_quarantine']} seqs lost with corrupt files "
                         "(not salvaged, announced as seq_gap quarantine)")
    gps = _get(st, "gps")
    if isinstance(gps, dict):
        age = gps.get("last_fix_age_s")
        if isinstance(age, int | float) and isinstance(updated, int | float):
            age = float(age) + max(0.0, now - updated)  # the age was the snapshot's
        lines.append(f"  gps:      {gps.get('state')}{as_of}, "
                     f"last fix {'never' if age is None else _dur(float(age)) + ' ago'}")
    can = _get(st, "can")
    if isinstance(can, dict):
        lines.append(f"  can:      {can.get('state')}, {can.get('frames_per_s')} frames/s, "
                     f"{can.get('errors')} errors{as_of}")
    tasks = _get(st, "tasks") or {}
    restarted = {n: t.get("restarts") for n, t in tasks.items()
                 if isinstance(t, dict) and t.get("restarts")}
    if restarted:
        lines.append("  restarts: " + ", ".join(f"{n} {c}" for n, c in sorted(restarted.items())))
    if st:
        lines.append(f"  snapshot: {_ago(st.get('updated_at'), now)} ({report['state_file']})")
    else:
        lines.append(f"  no state file at {report['state_file']}")
    return "\n".join(lines) + "\n"


def build_report(cfg: TruckConfig, now: float | None = None) -> tuple[dict[str, Any], int]:
    """The status report (as printed with ``--json``) and the exit code."""
    now = time.time() if now is None else now
    state = read_state(cfg.state_file)
    status, code = assess(state, cfg.metrics.interval_s, now)
    buffer = _get(state, "buffer")
    if code == EXIT_NOT_RUNNING or state is None:
        db = read_buffer_db(cfg.buffer.path)
        if db is not None:
            buffer = db
        elif state is None:
            status, code = "unknown", EXIT_UNKNOWN
    if state is None and buffer is not None:
        status, code = "not running", EXIT_NOT_RUNNING
    updated = _get(state, "updated_at")
    report = {
        "truck_id": cfg.truck_id,
        "status": status,
        "state_file": str(cfg.state_file),
        "state": state,
        "buffer": buffer,
        # the snapshot's age; "current": false when its figures are history (a stopped,
        # crashed or hung agent), so a consumer never takes stale rates as current
        "state_age_s": round(now - updated, 3) if isinstance(updated, int | float) else None,
        "current": status in LIVE_STATES,
    }
    return report, code


def main(cfg: TruckConfig, *, as_json: bool, out: TextIO | None = None) -> int:
    """``truckgw status``: print the report; return the LSB-style exit code."""
    out = sys.stdout if out is None else out
    report, code = build_report(cfg)
    with contextlib.suppress(BrokenPipeError):
        if as_json:
            out.write(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
        else:
            out.write(render_text(report, time.time()))
    return code
