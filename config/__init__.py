"""The shared vocabulary at the bottom of truckgw's layers.

Everything above imports from here; this package imports nothing of truckgw's own:

- :mod:`config.schema` and :mod:`config.loader`: the truck configuration (one TOML file
  parsed once into frozen dataclasses) beside ``config/example.toml``, which documents it;
- :mod:`config.events`: the event record every layer passes on;
- :mod:`config.errors`: the one error root, ``GatewayError``, and its families;
- :mod:`config.retry`: the one retry/backoff policy (tenacity), used by every reconnect loop.

The layers, enforced by import-linter (``pyproject.toml``): ``sim`` -> ``gateway`` ->
``drivers``, ``buffer`` -> ``config``.
"""

from config.loader import load_config, parse_config
from config.schema import (
    EX_CONFIG,
    TRUCK_ID_RE,
    BufferConfig,
    CanConfig,
    CanSampling,
    ConfigWarning,
    GpsConfig,
    GpsSampling,
    LogConfig,
    MetricsConfig,
    MqttConfig,
    RemoteConfig,
    TlsConfig,
    TruckConfig,
)

__all__ = [
    "EX_CONFIG",
    "TRUCK_ID_RE",
    "BufferConfig",
    "CanConfig",
    "CanSampling",
    "ConfigWarning",
    "GpsConfig",
    "GpsSampling",
    "LogConfig",
    "MetricsConfig",
    "MqttConfig",
    "RemoteConfig",
    "TlsConfig",
    "TruckConfig",
    "load_config",
    "parse_config",
]
