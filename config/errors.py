"""The one error root of truckgw and its families.

Every exception the gateway raises on purpose derives from :class:`GatewayError`.
Library exceptions (pyserial, python-can, sqlite3, paho-mqtt) are translated at the
I/O boundary with ``raise ... from exc`` so callers only ever handle these types.

``StoreError`` is the family of the store-and-forward buffer; it is not called
``BufferError`` because that name is a Python built-in.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error raised by truckgw on purpose."""


class ConfigError(GatewayError):
    """A truck configuration is invalid.

    ``problems`` holds every finding as ``(file, key_path, reason)``; ``str()`` gives
    one line per finding in the form ``file: key.path: reason``. ``warnings`` are the
    warnings found in the same pass (``file: key: reason``), so that one run of
    ``check-config`` shows all of them.
    """

    def __init__(self, problems: list[tuple[str, str, str]],
                 warnings: list[str] | None = None) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One human-readable line per problem."""
        out = []
        for file, key, reason in self.problems:
            out.append(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")
        return out


class DriverError(GatewayError):
    """A device driver (GPS serial port, CAN bus) failed."""


class DecodeError(DriverError):
    """Bytes from a device could not be decoded (bad checksum, malformed field, ...)."""


class DeviceUnavailableError(DriverError):
    """A device is absent, unplugged or refuses to open."""


class StoreError(GatewayError):
    """The store-and-forward buffer failed."""


class StoreCorruptError(StoreError):
    """The buffer file failed its integrity check."""


class StoreFullError(StoreError):
    """The disk under the buffer is full and eviction could not make room."""


class UplinkError(GatewayError):
    """The MQTT uplink failed."""


class BrokerRefusedError(UplinkError):
    """The broker refused the connection or a publish (credentials, ACL, size)."""


class EventError(GatewayError, ValueError):
    """An event cannot be recorded as given (a reserved field name, NaN or infinity)."""


class SimError(GatewayError):
    """The simulator or one of its test tools (proxy, replay, sink) was misused or failed."""


class WireError(GatewayError):
    """A payload does not follow the wire contract (docs/wire-format.md)."""
