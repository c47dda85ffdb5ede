"""State file, Prometheus textfile, liveness rules and snapshot assembly."""

from __future__ import annotations

import asyncio
import enum
import json
import re
from pathlib import Path
from typing import Any

from buffer.api import StoreStats
from gateway import __version__
from gateway.health import HealthWriter, encode_state, read_state, render_prometheus, write_atomic
from gateway.liveness import CommitTracker, HealthProbe
from gateway.snapshot import build_snapshot, normalise_can, normalise_uplink, plain

SAMPLE_RE = re.compile(r'^[a-z_]+\{(?:[a-z_]+="[^"]*",?)*\} -?[0-9.e+]+$')


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _stats(**kw: Any) -> StoreStats:
    base: dict[str, Any] = {
        "pending": 12, "pending_bytes": 3400,
        "pending_by_class": {"critical": 1, "position": 5, "telemetry": 6},
        "pending_bytes_by_class": {}, "leased": 2, "oldest_pending_ts_ms": 1_700_000_000_000,
        "last_seq": 99, "evicted_by_class": {"telemetry": 7, "position": 1},
        "expired_by_class": {"telemetry": 2}, "quarantined_files": 0, "file_bytes": 65536,
    }
    base.update(kw)
    return StoreStats(**base)


class Driver:
    """Stands in for a driver object: ``state`` plus ``stats()`` (duck-typed, as the app sees)."""

    def __init__(self, state: str, stats: dict[str, Any]) -> None:
        self.state = state
        self._stats = stats

    def stats(self) -> dict[str, Any]:
        return self._stats


def _snapshot(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "truck_id": "TRK-1", "phase": "running", "started_at": 1_700_000_000.0,
        "uptime_s": 12.5, "store_stats": _stats(), "committed_seq": 98, "previous": {},
        "gps": Driver("fix", {"state": "fix", "last_fix_age_s": 0.4}),
        "can": Driver("active", {"frames_total": 1000, "frames_per_s": 700.0,
                                 "error_frames": 2, "decode_errors": 1, "tp_errors": 0,
                                 "dropped": 0}),
        "uplink": Driver("CONNECTED", {"state": "CONNECTED", "last_ack_ts_ms": 1_700_000_010_000}),
        "tasks": {"gps": {"alive": True, "restarts": 3, "last_error": "x"}},
        "problem": None, "now": 1_700_000_012.5,
    }
    args.update(kw)
    return build_snapshot(**args)


def test_snapshot_sections() -> None:
    snap = _snapshot()
    assert snap["phase"] == "running" and snap["healthy"] is True
    assert snap["uplink"]["state"] == "connected"
    assert snap["uplink"]["last_publish_at"] == 1_700_000_010.0
    assert snap["buffer"]["pending"] == 12
    assert snap["buffer"]["evicted"] == 8
    assert snap["buffer"]["expired"] == 2
    assert snap["buffer"]["committed_seq"] == 98
    assert snap["gps"]["fix"] is True and snap["gps"]["last_fix_age_s"] == 0.4
    assert snap["can"]["frames_per_s"] == 700.0 and snap["can"]["errors"] == 3
    json.loads(encode_state(snap))  # serialisable


def test_snapshot_without_drivers_and_without_store_answer() -> None:
    first = _snapshot()
    snap = _snapshot(gps=None, can=None, uplink=None, store_stats=None, committed_seq=120,
                     previous=first, problem="buffer not answering for 31 s")
    assert snap["gps"] is None and snap["can"] is None
    assert snap["uplink"] == {"state": "not started", "last_publish_at": None}
    assert snap["buffer"]["pending"] == 12  # carried over from the last answer
    assert snap["buffer"]["committed_seq"] == 120
    assert snap["healthy"] is False


def test_can_rate_from_counters_when_driver_gives_none() -> None:
    prev = normalise_can({"frames_total": 1000, "frames_per_s": None}, None, 10.0)
    cur = normalise_can({"frames_total": 3000, "frames_per_s": None}, prev, 12.0)
    assert cur is not None and cur["frames_per_s"] == 1000.0
    assert cur["errors"] is None  # unknown, not 0


def test_uplink_falls_back_to_last_sent_publish() -> None:
    assert normalise_uplink({"state": "BACKOFF", "last_publish_ts_ms": 5000})[
        "last_publish_at"] == 5.0


def test_plain_handles_enums_dataclasses_and_nan() -> None:
    class S(enum.Enum):
        FIX = "fix"

    assert plain({"s": S.FIX, "x": float("nan"), "st": _stats()})["s"] == "fix"
    assert plain({"x": float("inf")}) == {"x": None}
    assert plain(_stats())["evicted_by_class"] == {"telemetry": 7, "position": 1}


def test_prometheus_textfile_is_well_formed() -> None:
    text = render_prometheus(_snapshot())
    names_seen: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            name = line.split()[2]
            names_seen[name] = names_seen.get(name, 0) + 1
            continue
        assert SAMPLE_RE.match(line), line
    assert all(n == 2 for n in names_seen.values())  # one HELP + one TYPE per family
    assert 'truckgw_up{truck="TRK-1"} 1' in text
    assert 'truckgw_buffer_evicted_events_total{truck="TRK-1",class="telemetry"} 7' in text
    assert 'truckgw_gps_fix{truck="TRK-1"} 1' in text
    assert 'truckgw_can_errors_total{truck="TRK-1"} 3' in text
    assert 'truckgw_task_restarts_total{truck="TRK-1",task="gps"} 3' in text
    assert 'truckgw_buffer_oldest_pending_timestamp_seconds{truck="TRK-1"} 1700000000' in text
    # counters, not rates: a scraper computes rates itself
    assert 'truckgw_can_frames_total{truck="TRK-1"} 1000' in text
    assert 'truckgw_can_decode_errors_total{truck="TRK-1"} 1' in text


def test_prometheus_exports_the_operators_counters() -> None:
    snap = _snapshot(
        uplink=Driver("CONNECTED", {"state": "CONNECTED", "published_bytes": 123456,
                                    "reconnects": 4, "publish_timeouts": 2}),
        gps=Driver("fix", {"state": "fix", "checksum_errors": 5, "parse_errors": 1}),
        clock={"synced": True, "verified": True, "steps": 1},
    )
    text = render_prometheus(snap)
    for line in ('truckgw_uplink_published_bytes_total{truck="TRK-1"} 123456',
                 'truckgw_uplink_reconnects_total{truck="TRK-1"} 4',
                 'truckgw_uplink_publish_timeouts_total{truck="TRK-1"} 2',
                 'truckgw_gps_checksum_errors_total{truck="TRK-1"} 5',
                 'truckgw_gps_parse_errors_total{truck="TRK-1"} 1',
                 'truckgw_clock_verified{truck="TRK-1"} 1',
                 'truckgw_clock_steps_total{truck="TRK-1"} 1'):
        assert line in text, line
    assert "truckgw_uplink_acked_events_total{" not in text  # unknown: left out, not 0


def test_prometheus_leaves_out_unknown_values_and_escapes_labels() -> None:
    snap = _snapshot(truck_id='a"b', gps=Driver("unavailable", {"last_fix_age_s": None}))
    text = render_prometheus(snap)
    assert "truckgw_gps_last_fix_timestamp_seconds{" not in text  # unknown: left out, not 0
    assert 'truckgw_gps_fix{truck="a\\"b"} 0' in text
    assert 'truck="a\\"b"' in text
    stopped = render_prometheus({**snap, "phase": "stopped"})
    assert 'truckgw_up{truck="a\\"b"} 0' in stopped


def test_atomic_write_and_read_back(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    writer = HealthWriter(target, tmp_path / "m.prom")
    assert writer.write(_snapshot())
    assert read_state(target)["truck_id"] == "TRK-1"  # type: ignore[index]
    assert (tmp_path / "m.prom").read_text().startswith("# HELP")
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]  # no temp left over
    write_atomic(target, b"{not json")
    assert read_state(target) is None
    assert read_state(tmp_path / "missing.json") is None


def test_writer_failure_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    writer = HealthWriter(blocker / "state.json")  # parent is a file
    assert writer.write(_snapshot()) is False


async def test_commit_tracker_flags_a_stall_and_recovers() -> None:
    clock = FakeTime()
    tracker = CommitTracker(stall_s=5, clock=clock)
    loop = asyncio.get_running_loop()
    assert tracker.problem() is None
    fut: asyncio.Future[int] = loop.create_future()
    tracker.submitted(fut)
    clock.t += 4
    assert tracker.problem() is None
    clock.t += 2
    assert tracker.problem() == "1 appends waiting 6 s for a commit"
    fut.set_result(1)
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert tracker.problem() is None
    assert (tracker.committed_total, tracker.outstanding) == (1, 0)


async def test_commit_tracker_flags_persistent_failures() -> None:
    clock = FakeTime()
    tracker = CommitTracker(stall_s=5, clock=clock)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        fut: asyncio.Future[int] = loop.create_future()
        tracker.submitted(fut)
        fut.set_exception(OSError("disk I/O error"))
    await asyncio.sleep(0)
    assert tracker.problem() is None
    clock.t += 6
    assert tracker.problem() == "appends failing for 6 s"
    ok: asyncio.Future[int] = loop.create_future()
    tracker.submitted(ok)
    ok.set_result(7)
    await asyncio.sleep(0)
    assert tracker.problem() is None


async def test_probe_combines_checks() -> None:
    clock = FakeTime()
    tracker = CommitTracker(stall_s=5, clock=clock)
    probe = HealthProbe(stall_s=30, clock=clock)
    assert probe.problem(tracker, None) is None
    assert probe.problem(tracker, "gps") == "task gps ended"
    clock.t += 10
    assert probe.unhealthy_for() == 10
    clock.t += 25
    assert probe.problem(tracker, None) == "buffer not answering for 35 s"
    probe.store_ok()
    assert probe.problem(tracker, None) is None
    assert probe.unhealthy_for() == 0


def test_prometheus_build_info_and_timestamps_instead_of_ages() -> None:
    snap = {**_snapshot(), "started_at": 1_700_000_000.0, "updated_at": 1_700_000_100.0,
            "gps": {"state": "fix", "fix": True, "last_fix_age_s": 2.5}}
    text = render_prometheus(snap)
    assert f'truckgw_build_info{{truck="TRK-1",version="{__version__}"}} 1' in text
    assert 'truckgw_start_time_seconds{truck="TRK-1"} 1700000000' in text
    assert 'truckgw_gps_last_fix_timestamp_seconds{truck="TRK-1"} 1700000097.5' in text
    # no precomputed rate or age: a textfile read late would show them as current
    snap = {**snap, "uptime_s": 100.0,
            "can": {"state": "active", "frames_per_s": 250.0, "frames_total": 9000}}
    text = render_prometheus(snap)
    assert 'truckgw_can_frames_total{truck="TRK-1"} 9000' in text
    for name in ("per_second", "_age_", "uptime"):
        assert name not in text, name
