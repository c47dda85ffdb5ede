"""The agent's health snapshot: a JSON state file and a Prometheus textfile.

The agent writes a snapshot every ``[metrics].interval_s`` and once more when it stops;
``truckgw status`` reads it without talking to the agent or the broker, so it works for
a stopped agent too. Both files are replaced atomically (temporary file in the same
folder + ``rename``) so a reader never sees half a file. They are not fsynced: losing
the last snapshot in a power cut is harmless, while an fsync every few seconds wears
the SD card.

The snapshot is a JSON object (schema version :data:`STATE_VERSION`)::

    version, truck_id, pid, phase ("starting"|"running"|"stopping"|"stopped"|"failed"),
    started_at, updated_at (UNIX seconds), uptime_s,
    healthy (bool), unhealthy_reason (str|null),
    uplink: {state, last_publish_at (UNIX s|null), ...},
    buffer: {pending, pending_bytes, oldest_pending_ts_ms, evicted, expired, leased,
             last_seq, committed_seq, file_bytes, disk_full, quarantined_files,
             lost_quarantine},
    gps:    null | {state, fix (bool), last_fix_age_s (s|null), ...},
    can:    null | {state, frames_per_s, errors, ...},
    tasks:  {name: {alive, restarts, last_error}}
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway import __version__

log = logging.getLogger(__name__)

STATE_VERSION = 1


#: The state file: the service user writes, the group (administrators added to group
#: ``truckgw``) reads ``truckgw status``, others nothing.
STATE_FILE_MODE = 0o640
#: The Prometheus textfile: node_exporter runs as its own user and must read it.
TEXTFILE_MODE = 0o644


def write_atomic(path: Path, data: bytes, mode: int = STATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + rename in the same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise


class _suppress_oserror:  # noqa: N801  # reads like contextlib.suppress
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, *_: object) -> bool:
        return et is not None and issubclass(et, OSError)


def encode_state(state: Mapping[str, Any]) -> bytes:
    """The state file's bytes: indented JSON, so ``cat`` is readable too."""
    text = json.dumps(state, indent=1, sort_keys=True, allow_nan=False, default=str)
    return (text + "\n").encode()


def read_state(path: Path) -> dict[str, Any] | None:
    """The last snapshot, or ``None`` if there is none or it cannot be parsed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read state file %s: %s", path, exc)
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# --------------------------------------------------------------------------- prometheus


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _fmt(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class _Metrics:
    """Collects samples grouped by metric name (one HELP/TYPE header each)."""

    def __init__(self, base_labels: Mapping[str, str]) -> None:
        self.base = dict(base_labels)
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(
        self, name: str, kind: str, help_: str, value: Any,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        v = _num(value)
        if v is None:
            return  # unknown values are left out, never exported as 0
        fam = self.families.setdefault(name, (kind, help_, []))
        lab = {**self.base, **(labels or {})}
        text = ",".join(f'{k}="{_escape(str(x))}"' for k, x in lab.items())
        fam[2].append(f"{name}{{{text}}} {_fmt(v)}")

    def render(self) -> str:
        out: list[str] = []
        for name, (kind, help_, samples) in self.families.items():
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def _items(obj: Any) -> Iterable[tuple[str, Any]]:
    return obj.items() if isinstance(obj, Mapping) else ()


#: (state-file key, metric name part, help) of the counters exported per section
UPLINK_COUNTERS = (
    ("published_bytes", "published_bytes", "Payload bytes published to the broker"),
    ("published_events", "published_events", "Events published (acknowledged or not)"),
    ("acked_events", "acked_events", "Events the broker acknowledged"),
    ("reconnects", "reconnects", "Connections lost and tried again"),
    ("connect_failures", "connect_failures", "Connection attempts that failed"),
    ("publish_timeouts", "publish_timeouts", "Publishes without PUBACK in time"),
    ("refused_publishes", "refused_publishes", "Publishes the broker refused"),
)
GPS_COUNTERS = (
    ("sentences_ok", "sentences", "Valid NMEA sentences"),
    ("checksum_errors", "checksum_errors", "NMEA sentences with a wrong checksum"),
    ("parse_errors", "parse_errors", "NMEA sentences that did not parse"),
    ("bytes_received", "received_bytes", "Bytes read from the receiver"),
)
CAN_COUNTERS = (
    ("frames_total", "frames", "CAN frames received"),
    ("decode_errors", "decode_errors", "Frames that did not decode"),
    ("tp_errors", "tp_errors", "Transport-protocol sessions that failed"),
    ("dropped", "dropped_frames", "Frames dropped by a full reader queue"),
)


def render_prometheus(state: Mapping[str, Any]) -> str:
    """A node_exporter textfile (text exposition format 0.0.4) for one snapshot."""
    m = _Metrics({"truck": str(state.get("truck_id", ""))})
    running = state.get("phase") in ("starting", "running")
    m.add("truckgw_up", "gauge", "1 while the agent runs", running)
    m.add("truckgw_healthy", "gauge", "1 while the pipeline is healthy", state.get("healthy"))
    m.add("truckgw_build_info", "gauge", "Always 1; the agent's version as a label", 1,
          {"version": __version__})
    m.add("truckgw_start_time_seconds", "gauge", "When the agent started (UNIX time)",
          state.get("started_at"))
    m.add("truckgw_state_updated_timestamp_seconds", "gauge", "When this snapshot was taken",
          state.get("updated_at"))
    up = state.get("uplink") or {}
    m.add("truckgw_uplink_connected", "gauge", "1 while connected to the broker",
          str(up.get("state", "")).lower() == "connected")
    m.add("truckgw_uplink_last_publish_timestamp_seconds", "gauge",
          "When the broker last acknowledged a publish", up.get("last_publish_at"))
    for key, name, help_ in UPLINK_COUNTERS:
        m.add(f"truckgw_uplink_{name}_total", "counter", help_, up.get(key))
    for period in ("today", "month"):
        for way in ("up", "down"):
            m.add(f"truckgw_uplink_usage_bytes_{period}", "gauge",
                  f"IP-level bytes on the SIM {'today' if period == 'today' else 'this month'}"
                  " (UTC; estimated from TCP_INFO)", up.get(f"usage_{way}_bytes_{period}"),
                  {"direction": way})
    buf = state.get("buffer") or {}
    m.add("truckgw_buffer_pending_events", "gauge", "Events waiting for upload",
          buf.get("pending"))
    m.add("truckgw_buffer_pending_bytes", "gauge", "Bytes waiting for upload",
          buf.get("pending_bytes"))
    oldest = _num(buf.get("oldest_pending_ts_ms"))
    m.add("truckgw_buffer_oldest_pending_timestamp_seconds", "gauge",
          "Event time of the oldest pending event", oldest / 1000 if oldest is not None else None)
    for cls, n in _items(buf.get("evicted_by_class")):
        m.add("truckgw_buffer_evicted_events_total", "counter",
              "Events dropped to keep the buffer under its size cap", n, {"class": cls})
    for cls, n in _items(buf.get("expired_by_class")):
        m.add("truckgw_buffer_expired_events_total", "counter",
              "Events dropped because they outlived their TTL", n, {"class": cls})
    m.add("truckgw_buffer_committed_seq", "gauge", "Highest committed event sequence number",
          buf.get("committed_seq"))
    m.add("truckgw_buffer_file_bytes", "gauge", "Size of the buffer database",
          buf.get("file_bytes"))
    m.add("truckgw_buffer_disk_full", "gauge", "1 when the disk under the buffer is full",
          buf.get("disk_full"))
    m.add("truckgw_buffer_lost_quarantine_events_total", "counter",
          "Seqs announced lost with a corrupt buffer file (not salvaged; an upper bound)",
          buf.get("lost_quarantine"))
    gps = state.get("gps")
    if isinstance(gps, Mapping):
        m.add("truckgw_gps_fix", "gauge", "1 while the GPS has a valid fix", gps.get("fix"))
        for key, name, help_ in GPS_COUNTERS:
            m.add(f"truckgw_gps_{name}_total", "counter", help_, gps.get(key))
        # a timestamp stays right however old the textfile is (an age does not)
        age, updated = _num(gps.get("last_fix_age_s")), _num(state.get("updated_at"))
        m.add("truckgw_gps_last_fix_timestamp_seconds", "gauge",
              "When the GPS last had a valid fix (UNIX time)",
              updated - age if age is not None and updated is not None else None)
    can = state.get("can")
    if isinstance(can, Mapping):
        m.add("truckgw_can_errors_total", "counter", "CAN bus and adapter errors",
              can.get("errors"))
        for key, name, help_ in CAN_COUNTERS:
            m.add(f"truckgw_can_{name}_total", "counter", help_, can.get(key))
    clock = state.get("clock")
    if isinstance(clock, Mapping):
        m.add("truckgw_clock_gps_synced", "gauge", "1 once GPS time drives the clock",
              clock.get("synced"))
        m.add("truckgw_clock_verified", "gauge",
              "1 while event times are confirmed by GPS or NTP", clock.get("verified"))
        m.add("truckgw_clock_steps_total", "counter", "Steps of the clock to follow GPS time",
              clock.get("steps"))
    for name, task in _items(state.get("tasks")):
        if isinstance(task, Mapping):
            m.add("truckgw_task_restarts_total", "counter", "Restarts of a pipeline task",
                  task.get("restarts"), {"task": name})
            m.add("truckgw_task_alive", "gauge", "1 while a pipeline task runs",
                  task.get("alive"), {"task": name})
    return m.render()


class HealthWriter:
    """Writes a snapshot to the state file and, if configured, the Prometheus textfile."""

    def __init__(self, state_file: Path, textfile: Path | None = None) -> None:
        self.state_file = state_file
        self.textfile = textfile
        self._failed = False

    def write(self, state: Mapping[str, Any]) -> bool:
        """Write both files; errors are logged (once per failure streak), not raised."""
        try:
            write_atomic(self.state_file, encode_state(state))
            if self.textfile is not None:
                write_atomic(self.textfile, render_prometheus(state).encode(),
                             mode=TEXTFILE_MODE)
        except (OSError, ValueError) as exc:
            if not self._failed:
                log.warning("cannot write health files: %s", exc)
            self._failed = True
            return False
        if self._failed:
            log.info("health files written again")
        self._failed = False
        return True
