"""The truck configuration schema: frozen, slotted dataclasses, one per TOML table.

The schema is the dataclasses themselves: each field's type drives parsing and its
``metadata`` (built with :func:`_f`) carries ranges, choices and documentation hints.
:mod:`config.loader` reads a file into these; ``config/example.toml`` documents every key.
Mapping fields (``deadbands``, ``curve_errors``, ``ttl_s``) are read-only
``MappingProxyType`` views.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TRUCK_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Upper bound of every interval and time-to-live that is not otherwise bounded: a day
#: for intervals; :data:`MAX_TTL_S` for ``buffer.ttl_s``. A number beyond these is a typo
#: (``1e308`` overflowed the millisecond arithmetic at start), never an intent.
DAY_S = 86_400
MAX_TTL_S = 10 * 365 * DAY_S
#: Largest ``[can.sampling.deadbands]`` value accepted.
MAX_DEADBAND = 1e9
#: Most MQTT messages in flight at once: well inside the 16-bit packet-id space, so an id
#: is never reused while its message is in flight (the broker's Receive Maximum may lower it).
MAX_INFLIGHT = 4096
#: The IANA ports for MQTT over plain TCP and over TLS.
MQTT_PLAIN_PORT = 1883
MQTT_TLS_PORT = 8883
#: One ``[mqtt].failover`` entry: ``host``, ``host:port``, ``[v6addr]`` or ``[v6addr]:port``.
BROKER_ADDRESS_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[^\s/#+:\[\]]{1,253})(?::[0-9]{1,5})?")
#: Most failover addresses (a cluster has a handful of nodes; more is a typo or a list of
#: the whole fleet's brokers, and every one costs a connect attempt per round).
MAX_FAILOVER = 16
EX_CONFIG = 78  # sysexits.h: configuration error; systemd's RestartPreventExitStatus uses it


class ConfigWarning(UserWarning):
    """A configuration that works but is risky (e.g. a secret file readable by others).

    Kept for compatibility: the loader no longer raises Python warnings; it logs each
    config warning on the ``config.loader`` logger (a journald priority under systemd)
    and returns them from :func:`config.loader.check_config`.
    """


def _f(
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    pattern: re.Pattern[str] | None = None,
    path: bool = False,
    must_exist: bool = False,
    secret: bool = False,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with validation metadata."""
    meta = {
        "lo": lo,
        "hi": hi,
        "pattern": pattern,
        "path": path,
        "must_exist": must_exist,
        "secret": secret,
    }
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _empty_mapping() -> Mapping[str, float]:
    """A read-only empty mapping: config objects stay immutable all the way down."""
    return types.MappingProxyType({})


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class GpsSampling:
    """Point recording: ``mode`` picks the policy (``thresholds``: all zero => every fix
    is recorded; ``curve``: error-bounded simplification, docs/recording.md)."""

    min_interval_s: float = _f(1.0, lo=0, hi=DAY_S)
    max_interval_s: float = _f(30.0, lo=0, hi=DAY_S)
    min_distance_m: float = _f(50.0, lo=0, hi=1_000_000)
    min_heading_change_deg: float = _f(10.0, lo=0, hi=180)
    min_speed_change_kmh: float = _f(10.0, lo=0, hi=500)
    stopped_interval_s: float = _f(300.0, lo=0, hi=DAY_S)
    moving_speed_kmh: float = _f(5.0, lo=0, hi=200)
    mode: Literal["thresholds", "curve"] = _f("curve")
    max_error_m: float = _f(10.0, lo=0.5, hi=1000)
    max_speed_error_kmh: float = _f(5.0, lo=0, hi=100)
    provisional_interval_s: float = _f(10.0, lo=0, hi=3600)


@dataclass(frozen=True, slots=True)
class GpsConfig:
    """``[gps]``: an NMEA 0183 receiver on a serial port."""

    port: str = _f()
    baudrate: int | Literal["auto"] = _f(9600, lo=300, hi=4_000_000)
    sampling: GpsSampling = _f(factory=GpsSampling)


@dataclass(frozen=True, slots=True)
class CanSampling:
    """Engine event recording; all zero => every decoded frame is recorded.

    ``deadbands`` maps a signal name (``engine_speed_rpm``, ...) to the change that
    counts as significant; signals not listed use the driver's defaults.
    ``curve_errors`` maps a signal name to its error bound in ``mode = "curve"``.
    """

    min_interval_s: float = _f(1.0, lo=0, hi=DAY_S)
    max_interval_s: float = _f(60.0, lo=0, hi=DAY_S)
    deadbands: Mapping[str, float] = _f(factory=_empty_mapping)
    dtc_refresh_s: float = _f(600.0, lo=0, hi=DAY_S)
    #: "deadbands" (above) or "curve": the signals in ``curve_errors`` (default rpm 50,
    #: wheel speed 2 km/h) are recorded by error bound instead, docs/recording.md
    mode: Literal["deadbands", "curve"] = _f("deadbands")
    curve_errors: Mapping[str, float] = _f(factory=_empty_mapping)


@dataclass(frozen=True, slots=True)
class CanConfig:
    """``[can]``: a J1939 bus reached through any python-can interface."""

    interface: str = _f("socketcan")
    channel: str = _f("can0")
    bitrate: int = _f(250000, lo=10000, hi=1000000)
    listen_only: bool = _f(True)
    request_interval_s: float = _f(60.0, lo=0, hi=DAY_S)
    dbc_file: Path | None = _f(None, path=True, must_exist=True)
    sampling: CanSampling = _f(factory=CanSampling)


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """``[events]``: trips, idling, harsh driving and driver changes derived from the
    decoded signals and GPS (:mod:`gateway.recording.fleet_events`, docs/fleet-data.md).

    ``enabled = false`` records none of them. ``state_interval_s`` bounds how often the
    open trip is written to the buffer's ``state`` table (SD card wear); it is also
    written when a trip starts or ends and at a clean stop."""

    enabled: bool = _f(True)
    state_interval_s: float = _f(10.0, lo=1, hi=3600)
    trip_end_timeout_s: float = _f(120.0, lo=1, hi=DAY_S)
    idle_min_s: float = _f(300.0, lo=0, hi=DAY_S)
    standstill_kmh: float = _f(1.0, lo=0, hi=20)
    harsh_accel_ms2: float = _f(1.5, lo=0.1, hi=20)
    harsh_brake_ms2: float = _f(2.5, lo=0.1, hi=20)
    harsh_corner_ms2: float = _f(2.5, lo=0.1, hi=20)


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """``[buffer]``: the store-and-forward SQLite log.

    ``ttl_s`` optionally maps an event class (``critical``, ``position``,
    ``telemetry``) to a maximum age in seconds; expired events are dropped and counted.
    """

    path: Path = _f(Path("/var/lib/truckgw/buffer.db"), path=True)
    max_bytes: int = _f(268435456, lo=1048576, hi=1 << 40)
    durability: Literal["normal", "full"] = _f("normal")
    commit_interval_ms: int = _f(50, lo=1, hi=10000)
    commit_max_events: int = _f(2000, lo=1, hi=1000000)
    ttl_s: Mapping[str, float] = _f(factory=_empty_mapping)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[mqtt.tls]``: when present, the server certificate is always verified."""

    ca_file: Path | None = _f(None, path=True, must_exist=True)
    cert_file: Path | None = _f(None, path=True, must_exist=True)
    key_file: Path | None = _f(None, path=True, must_exist=True, secret=True)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """``[mqtt]``: the uplink to the fleet broker."""

    host: str = _f(pattern=re.compile(r"[^\s/#+]{1,253}"))
    port: int = _f(8883, lo=1, hi=65535)
    #: more nodes of the same broker cluster, tried in order after ``host:port``
    failover: tuple[str, ...] = _f((), pattern=BROKER_ADDRESS_RE)
    topic_prefix: str = _f("fleet", pattern=re.compile(r"[^#+\x00]{1,128}"))
    #: 240 s: below the shortest cellular NAT idle timeouts seen in the field (about
    #: 270 s on one European operator; 10 to 15 min is common), see docs/operations.md
    keepalive_s: int = _f(240, lo=5, hi=65535)
    protocol: Literal["5", "3.1.1"] = _f("5")
    client_id: str | None = _f(None, pattern=re.compile(r"[^\x00]{1,128}"))
    username: str | None = _f(None)
    password_file: Path | None = _f(None, path=True, must_exist=True, secret=True)
    #: a password over plain TCP travels in clear text: refused unless this says so
    allow_insecure_password: bool = _f(False)
    tls: TlsConfig | None = _f(None)
    encoding: Literal["json", "compact", "compact-dict"] = _f("compact-dict")
    max_payload_bytes: int = _f(131072, lo=1024, hi=268435455)
    inflight_window: int = _f(16, lo=1, hi=MAX_INFLIGHT)
    live_share: float = _f(0.5, lo=0, hi=1)
    bandwidth_bytes_per_s: int = _f(0, lo=0, hi=1_000_000_000)
    status_interval_s: float = _f(60.0, lo=1, hi=DAY_S)
    #: live events wait up to this long to share one message (0 = each lease goes at once)
    max_latency_s: float = _f(5.0, lo=0, hi=600)
    #: the online status goes on a change (checked every status_interval_s) and at least
    #: this often (the heartbeat)
    status_heartbeat_s: float = _f(3600.0, lo=1, hi=DAY_S)
    #: "slim": the status has what a fleet needs (the full health is local and on
    #: request); "full": the health sections (gps, can, buffer, ...) too
    status_detail: Literal["slim", "full"] = _f("slim")
    #: optional monthly data budget (MB, IP-level estimate); 0 = none. When the month's
    #: projection exceeds it the agent degrades in steps (docs/operations.md)
    data_budget_mb_month: float = _f(0.0, lo=0, hi=1_000_000)
    publish_timeout_s: float = _f(30.0, lo=1, hi=3600)
    reconnect_min_s: float = _f(1.0, lo=0.01, hi=3600)
    reconnect_max_s: float = _f(120.0, lo=0.01, hi=DAY_S)

    @property
    def brokers(self) -> tuple[tuple[str, int], ...]:
        """Every broker address in order: ``host:port`` first, then ``failover``."""
        return ((self.host, self.port),
                *(split_address(a, self.port) for a in self.failover))


def split_address(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as ``(host, port)`` (an IPv6
    host without its brackets). The text matches :data:`BROKER_ADDRESS_RE`."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = text.partition(":")
    return host, int(port) if sep else default_port


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: local health outputs, read by ``truckgw status`` and node_exporter."""

    state_file: Path | None = _f(None, path=True)
    textfile: Path | None = _f(None, path=True)
    interval_s: float = _f(10.0, lo=1, hi=3600)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``."""

    level: Literal["debug", "info", "warning", "error"] = _f("info")


#: The commands ``[remote] commands`` may allow (docs/remote.md).
REMOTE_COMMANDS = ("ping", "status", "position", "dtc", "flush", "config_get",
                   "set_log_level", "restart", "retry_refused", "request_pgn")


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """``[remote]``: configuration pushes and commands from the fleet over the uplink's
    MQTT connection (docs/remote.md). Off unless ``enabled``."""

    enabled: bool = _f(False)
    #: desired configurations on ``{prefix}/{truck_id}/config/desired`` are applied
    config_push: bool = _f(True)
    #: the allow-list of commands on ``{prefix}/{truck_id}/cmd``
    commands: tuple[str, ...] = _f(REMOTE_COMMANDS)
    #: per-truck HMAC-SHA256 key (the file's bytes, surrounding whitespace stripped)
    key_file: Path | None = _f(None, path=True, must_exist=True, secret=True)
    #: refuse every request and desired configuration that is not signed with key_file
    require_signed: bool = _f(False)
    #: a signed request whose ts_ms is further than this from the truck's clock is refused
    signature_window_s: float = _f(300.0, lo=1, hi=DAY_S)
    #: after a change that needs a restart: no broker within this long => roll back
    grace_s: float = _f(600.0, lo=1, hi=DAY_S)
    #: after a change that needs a restart: this many starts without a broker => roll back
    max_starts: int = _f(3, lo=1, hi=100)


@dataclass(frozen=True, slots=True)
class TruckConfig:
    """The whole configuration of one truck."""

    truck_id: str = _f(pattern=TRUCK_ID_RE)
    mqtt: MqttConfig = _f()
    gps: GpsConfig | None = _f(None)
    can: CanConfig | None = _f(None)
    events: EventsConfig = _f(factory=EventsConfig)
    buffer: BufferConfig = _f(factory=BufferConfig)
    metrics: MetricsConfig = _f(factory=MetricsConfig)
    log: LogConfig = _f(factory=LogConfig)
    remote: RemoteConfig = _f(factory=RemoteConfig)
    source: Path | None = field(default=None, compare=False, metadata={"internal": True})

    @property
    def client_id(self) -> str:
        """The MQTT client id: ``mqtt.client_id`` or, by default, the truck id."""
        return self.mqtt.client_id or self.truck_id

    @property
    def state_file(self) -> Path:
        """Where the agent writes its health snapshot for ``truckgw status``."""
        if self.metrics.state_file is not None:
            return self.metrics.state_file
        return self.buffer.path.with_name(self.buffer.path.name + ".state.json")
