"""``truckgw status`` for running, crashed and stopped agents, from the state file and DB."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from buffer.store import SqliteStore
from config import parse_config
from config.events import Event
from gateway.health import encode_state, write_atomic
from gateway.status import (
    EXIT_NOT_RUNNING,
    EXIT_RUNNING,
    EXIT_UNHEALTHY,
    EXIT_UNKNOWN,
    build_report,
    main,
    render_text,
)


def _cfg(tmp_path: Path) -> Any:
    return parse_config(
        {"truck_id": "TRK-9", "mqtt": {"host": "127.0.0.1"},
         "buffer": {"path": str(tmp_path / "buffer.db")},
         "can": {"interface": "virtual", "channel": "x"}},
        source=tmp_path / "t.toml",
    )


def _state(**kw: Any) -> dict[str, Any]:
    now = time.time()
    st: dict[str, Any] = {
        "version": 1, "truck_id": "TRK-9", "pid": os.getpid(), "phase": "running",
        "started_at": now - 100, "updated_at": now - 1, "uptime_s": 100.0, "healthy": True,
        "unhealthy_reason": None,
        "uplink": {"state": "connected", "last_publish_at": now - 3},
        "buffer": {"pending": 5, "pending_bytes": 500, "oldest_pending_ts_ms": int(now * 1000)
                   - 60_000, "evicted": 0, "expired": 0, "committed_seq": 42},
        "gps": {"state": "fix", "fix": True, "last_fix_age_s": 0.3},
        "can": {"state": "active", "frames_per_s": 665.0, "errors": 0},
        "tasks": {"gps": {"alive": True, "restarts": 2, "last_error": "x"}},
    }
    st.update(kw)
    return st


def test_running_agent(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    write_atomic(cfg.state_file, encode_state(_state()))
    out = io.StringIO()
    assert main(cfg, as_json=False, out=out) == EXIT_RUNNING
    text = out.getvalue()
    assert text.startswith("truck TRK-9: running (pid")
    assert "uplink:   connected, last publish 3" in text
    assert "buffer:   5 pending (500 bytes), oldest 1 min" in text
    assert "committed seq 42" in text
    # the fix was 0.3 s old when the snapshot was taken, 1 s ago
    assert re.search(r"gps:      fix, last fix 1\.\d s ago", text), text
    assert "can:      active, 665.0 frames/s, 0 errors" in text
    assert "restarts: gps 2" in text


def test_unhealthy_and_stale(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    write_atomic(cfg.state_file, encode_state(
        _state(healthy=False, unhealthy_reason="3 appends waiting 40 s for a commit")))
    out = io.StringIO()
    assert main(cfg, as_json=False, out=out) == EXIT_UNHEALTHY
    assert "problem:  3 appends waiting 40 s" in out.getvalue()
    write_atomic(cfg.state_file, encode_state(_state(updated_at=time.time() - 3600)))
    report, code = build_report(cfg)
    assert (report["status"], code) == ("stale", EXIT_UNHEALTHY)


def test_crashed_agent_is_not_running(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(proc.stdout)
    write_atomic(cfg.state_file, encode_state(_state(pid=dead_pid)))
    report, code = build_report(cfg)
    assert (report["status"], code) == ("crashed", EXIT_NOT_RUNNING)


def test_nothing_known(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    out = io.StringIO()
    assert main(cfg, as_json=True, out=out) == EXIT_UNKNOWN
    assert json.loads(out.getvalue())["status"] == "unknown"


async def test_stopped_agent_figures_come_from_the_database(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    store = await SqliteStore.open(cfg.buffer)
    try:
        for i in range(25):
            await store.append(Event("gps", 1_700_000_000_000 + i, {"lat": 1.0, "lon": 2.0}))
    finally:
        await store.close()
    # a stopped agent's last snapshot is older than the database
    write_atomic(cfg.state_file, encode_state(_state(
        phase="stopped", buffer={"pending": 3, "committed_seq": 3})))
    out = io.StringIO()
    assert main(cfg, as_json=True, out=out) == EXIT_NOT_RUNNING
    report = json.loads(out.getvalue())
    assert report["status"] == "stopped"
    assert report["buffer"]["pending"] == 25
    assert report["buffer"]["committed_seq"] == 25
    assert report["buffer"]["oldest_pending_ts_ms"] == 1_700_000_000_000
    assert report["buffer"]["source"] == "database"
    # and without any state file (a power cut before the first snapshot)
    cfg.state_file.unlink()
    report, code = build_report(cfg)
    assert (report["status"], code) == ("not running", EXIT_NOT_RUNNING)
    assert report["buffer"]["pending"] == 25


async def test_database_of_a_running_agent_is_not_touched(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    store = await SqliteStore.open(cfg.buffer)
    try:
        await store.append(Event("gps", 1, {"lat": 1.0}))
        write_atomic(cfg.state_file, encode_state(_state()))
        report, code = build_report(cfg)
        assert code == EXIT_RUNNING
        assert report["buffer"]["pending"] == 5  # from the state file, not the locked DB
        await store.append(Event("gps", 2, {"lat": 1.0}))  # the store is unaffected
    finally:
        await store.close()


def test_stopped_agent_shows_its_last_figures_with_their_age(tmp_path: Path) -> None:
    """A stopped agent's rates are history: shown "as of N s ago", never as current."""
    cfg = _cfg(tmp_path)
    now = time.time()
    write_atomic(cfg.state_file, encode_state(_state(
        phase="stopped", updated_at=now - 28, uptime_s=3600.0,
        gps={"state": "fix", "fix": True, "last_fix_age_s": 2.0})))
    text = render_text(build_report(cfg, now=now)[0], now)
    assert text.startswith("truck TRK-9: stopped (was pid")
    assert "last figures as of 28 s ago" in text
    assert "can:      active, 665.0 frames/s, 0 errors as of 28 s ago" in text
    assert "uplink:   connected as of 28 s ago" in text
    assert "gps:      fix as of 28 s ago, last fix 30 s ago" in text  # 2 s + 28 s
    report, code = build_report(cfg, now=now)
    assert code == EXIT_NOT_RUNNING and report["current"] is False
    assert report["state_age_s"] == 28.0
    # a running agent's figures are current: no "as of"
    write_atomic(cfg.state_file, encode_state(_state(updated_at=now - 1)))
    report, code = build_report(cfg, now=now)
    assert code == EXIT_RUNNING and report["current"] is True
    assert "as of" not in render_text(report, now)
