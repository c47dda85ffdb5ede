"""Per-truck configuration: one TOML file parsed once into frozen dataclasses.

Precedence of sources, lowest first: the defaults written on the dataclass fields
below (and documented in ``config/example.toml``), then the truck's TOML file. There
are no environment overrides: one file is the whole truth about one truck, which is
what a fleet engineer diffs and versions.

Rules:
- Unknown keys are errors (a typo must not be silently ignored).
- Every error names the file, the dotted key path and the reason; all errors of a
  file are collected and raised together as one :class:`~config.errors.ConfigError`.
- Relative paths resolve against the folder of the config file.
- A secret file (``mqtt.password_file``, ``mqtt.tls.key_file``, ``remote.key_file``)
  belongs to the service user alone: owned by ``truckgw``, mode 0600 (the one rule,
  docs/raspberry-pi.md). It must be readable by whoever runs the agent (a file that
  cannot be read is an error); one readable by its group or by others is a warning,
  because the group ``truckgw`` is also how administrators read the status.
  ``truckgw status`` loads the config with ``read_secrets=False``: it needs no secret,
  so it only checks that they exist.
- A password without ``[mqtt.tls]`` is an error unless ``mqtt.allow_insecure_password``;
  MQTT 3.1.1 and a port that contradicts the TLS setting (8883 without TLS, TLS on
  1883) are warnings.
- Warnings are never Python ``warnings``: :func:`load_config` logs each one on this
  module's logger (a journald priority under systemd); :func:`check_config` returns them.

The schema is the dataclasses themselves: each field's type drives parsing and its
``metadata`` (built with :func:`_f`) carries ranges, choices and documentation hints.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import ssl
import stat
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from config.dbc_check import dbc_problem
from config.errors import ConfigError
from config.schema import (
    MAX_DEADBAND,
    MAX_FAILOVER,
    MAX_TTL_S,
    MQTT_PLAIN_PORT,
    MQTT_TLS_PORT,
    REMOTE_COMMANDS,
    TruckConfig,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> TruckConfig:
    """Read and validate one truck's TOML file; log its warnings.

    Raises :class:`ConfigError` listing every problem found (file, key, reason).
    """
    cfg, found = check_config(path)
    for msg in found:
        log.warning("%s", msg)
    return cfg


def check_config(path: str | os.PathLike[str], *, read_secrets: bool = True
                 ) -> tuple[TruckConfig, tuple[str, ...]]:
    """Like :func:`load_config` but returns the warnings (``file: key: reason``) instead
    of logging them (``truckgw check-config`` prints them). ``read_secrets=False``: the
    secret files must exist, not be readable (for a reader of the status)."""
    p = Path(path)
    name = str(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([(name, "", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([(name, "", f"not UTF-8 text: {exc.reason}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries "(at line N, column M)"
        raise ConfigError([(name, "", f"TOML syntax error: {exc}")]) from exc
    return check_parsed(data, source=p, name=name, read_secrets=read_secrets)


def parse_config(
    data: Mapping[str, Any], *, source: Path | None = None, name: str = "<config>"
) -> TruckConfig:
    """Validate an already-parsed TOML document and log its warnings (see
    :func:`load_config`)."""
    cfg, found = check_parsed(data, source=source, name=name)
    for msg in found:
        log.warning("%s", msg)
    return cfg


def check_parsed(
    data: Mapping[str, Any], *, source: Path | None = None, name: str = "<config>",
    read_secrets: bool = True,
) -> tuple[TruckConfig, tuple[str, ...]]:
    """Validate an already-parsed TOML document; return it with its warnings."""
    ctx = _Ctx(name=name, base=source.parent if source else Path.cwd(),
               read_secrets=read_secrets)
    cfg: TruckConfig | None = ctx.build(TruckConfig, data, "")
    if ctx.problems or cfg is None:
        _cross_check_the_rest(data, ctx)
        raise ConfigError(ctx.problems, ctx.warnings)
    cfg = dataclasses.replace(cfg, source=source)
    _cross_checks(cfg, ctx)
    _unused_by_mode(data, cfg, ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems, ctx.warnings)
    return cfg, tuple(ctx.warnings)


#: Stand-ins for required values whose own problem is already reported, so the rules
#: across keys can still look at the rest of the file in the same pass.
_PLACEHOLDERS: Mapping[str, Any] = {"truck_id": "placeholder", "mqtt.host": "placeholder",
                                    "gps.port": "/dev/null"}


def _cross_check_the_rest(data: Mapping[str, Any], ctx: _Ctx) -> None:
    """One pass finds everything: with the keys already reported left out (defaults or
    stand-ins in their place), run the rules across keys on the rest, adding only
    problems about other keys."""
    reported = {key for _name, key, _reason in ctx.problems}
    trimmed = _without(data, reported)
    if trimmed is None:
        return
    again = _Ctx(name=ctx.name, base=ctx.base, read_secrets=ctx.read_secrets)
    cfg = again.build(TruckConfig, trimmed, "")
    if cfg is None or again.problems:
        return  # still unbuildable: what was reported stands alone
    _cross_checks(cfg, again)
    ctx.problems.extend(pr for pr in again.problems
                        if not any(pr[1] == k or pr[1].startswith(k + ".") for k in reported))
    ctx.warnings.extend(w for w in again.warnings if w not in ctx.warnings)


def _without(data: Mapping[str, Any], keys: set[str]) -> dict[str, Any] | None:
    """A deep copy of ``data`` without ``keys`` (dotted), stand-ins for required ones."""
    out: dict[str, Any] = _copy_tables(data)
    for key in sorted(keys):
        if not key:
            return None  # the whole document is wrong
        *parents, leaf = key.split(".")
        table: Any = out
        for part in parents:
            table = table.get(part) if isinstance(table, dict) else None
        if isinstance(table, dict):
            table.pop(leaf, None)
            if key in _PLACEHOLDERS:
                table[leaf] = _PLACEHOLDERS[key]
        elif parents:
            return None
    return out


def _copy_tables(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, Mapping) else v for k, v in data.items()}


#: ``[gps.sampling]`` keys that only the threshold policy reads.
THRESHOLD_ONLY_KEYS = ("min_interval_s", "min_distance_m", "min_heading_change_deg",
                       "min_speed_change_kmh")


def _unused_by_mode(data: Mapping[str, Any], cfg: TruckConfig, ctx: _Ctx) -> None:
    """Warn about keys the file sets that the selected recording mode does not read."""
    gps = data.get("gps")
    table = gps.get("sampling") if isinstance(gps, Mapping) else None
    if cfg.gps is None or not isinstance(table, Mapping) or cfg.gps.sampling.mode != "curve":
        return
    unused = [k for k in THRESHOLD_ONLY_KEYS if k in table]
    if unused:
        ctx.warnings.append(
            f"{ctx.name}: gps.sampling: {', '.join(unused)} only apply with "
            f'mode = "thresholds"; mode "curve" records by max_error_m (docs/recording.md)')


def _tls_files_load(cfg: TruckConfig, ctx: _Ctx) -> None:
    """The TLS files load as the uplink will load them (a file that is not PEM, or a key
    that does not belong to its certificate, would otherwise be retried for ever at
    every connect: no restart fixes it). The key is read only with ``read_secrets``."""
    tls = cfg.mqtt.tls
    if tls is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as exc:
            ctx.err("mqtt.tls.ca_file", f"{tls.ca_file} is not a PEM CA certificate: {exc}")
    if tls.cert_file is None or tls.key_file is None or not ctx.read_secrets:
        return

    def no_password() -> str:
        raise ValueError("the key is encrypted; truckgw takes an unencrypted key file")

    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=no_password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        ctx.err("mqtt.tls.cert_file", f"{tls.cert_file} with {tls.key_file} does not load "
                                      f"as a certificate and its key: {exc}")


def _cross_checks(cfg: TruckConfig, ctx: _Ctx) -> None:
    """Rules that span several keys."""
    _tls_files_load(cfg, ctx)
    if cfg.gps and cfg.gps.sampling.max_interval_s and (
        cfg.gps.sampling.max_interval_s < cfg.gps.sampling.min_interval_s
    ):
        ctx.err("gps.sampling.max_interval_s", "must be >= gps.sampling.min_interval_s")
    if cfg.can and cfg.can.sampling.max_interval_s and (
        cfg.can.sampling.max_interval_s < cfg.can.sampling.min_interval_s
    ):
        ctx.err("can.sampling.max_interval_s", "must be >= can.sampling.min_interval_s")
    if cfg.mqtt.reconnect_max_s < cfg.mqtt.reconnect_min_s:
        ctx.err("mqtt.reconnect_max_s", "must be >= mqtt.reconnect_min_s")
    if cfg.mqtt.password_file is not None and cfg.mqtt.username is None:
        ctx.err("mqtt.password_file", "needs mqtt.username")
    tls = cfg.mqtt.tls
    if tls is not None and (tls.cert_file is None) != (tls.key_file is None):
        ctx.err("mqtt.tls", "cert_file and key_file go together (mutual TLS)")
    _mqtt_security(cfg, ctx)
    _remote_checks(cfg, ctx)
    _mqtt_failover(cfg, ctx)
    if cfg.can is not None and cfg.can.interface not in can_interfaces():
        ctx.err("can.interface",
                f"unknown python-can interface {cfg.can.interface!r}"
                f"{_did_you_mean(cfg.can.interface, can_interfaces())}"
                f" (known: {', '.join(sorted(can_interfaces()))})")
    if cfg.can is not None and cfg.can.dbc_file is not None:
        problem = dbc_problem(cfg.can.dbc_file)  # names the DBC file and the line
        if problem is not None:
            ctx.err("can.dbc_file", problem)
    for key, target in (("metrics.textfile", cfg.metrics.textfile),
                        ("metrics.state_file", cfg.metrics.state_file)):
        if target is not None and not target.parent.is_dir() and not _runtime_dir(target):
            ctx.warn(key, f"folder {target.parent} does not exist (the agent cannot write "
                          "there; the unit can write under /var/lib/truckgw and /run/truckgw)")
    _events_checks(cfg, ctx)
    if cfg.gps is None and cfg.can is None:
        ctx.warnings.append(f"{ctx.name}: neither [gps] nor [can] is configured")
    for key, value in cfg.buffer.ttl_s.items():
        if key not in ("critical", "position", "telemetry"):
            ctx.err(f"buffer.ttl_s.{key}", "expected one of critical, position, telemetry")
        elif not 0 < value <= MAX_TTL_S:
            ctx.err(f"buffer.ttl_s.{key}",
                    f"expected a number 0 < x <= {MAX_TTL_S}, got {value!r}")
    for key, value in (cfg.can.sampling.deadbands.items() if cfg.can else ()):
        if not 0 <= value <= MAX_DEADBAND:
            ctx.err(f"can.sampling.deadbands.{key}",
                    f"expected a number 0..{MAX_DEADBAND:g}, got {value!r}")
    for key, value in (cfg.can.sampling.curve_errors.items() if cfg.can else ()):
        if not 0 < value <= MAX_DEADBAND:
            ctx.err(f"can.sampling.curve_errors.{key}",
                    f"expected a number 0 < x <= {MAX_DEADBAND:g}, got {value!r}")


def _events_checks(cfg: TruckConfig, ctx: _Ctx) -> None:
    """``[events]``: the bounds are the fields'; these span keys."""
    ev = cfg.events
    if ev.enabled and ev.trip_end_timeout_s <= ev.state_interval_s:
        ctx.warn("events.state_interval_s",
                 f"{ev.state_interval_s:g} s is not below events.trip_end_timeout_s "
                 f"({ev.trip_end_timeout_s:g} s): after a crash the saved trip may look "
                 "ended and a new one start (docs/fleet-data.md)")


def _runtime_dir(target: Path) -> bool:
    """A file in a folder under /run: the service manager makes it at start
    (``RuntimeDirectory=`` of the unit), so it need not exist when the file is checked."""
    return len(target.parts) >= 3 and target.parts[:2] == ("/", "run")


def _remote_checks(cfg: TruckConfig, ctx: _Ctx) -> None:
    """``[remote]``: known command names; signing needs a key (docs/remote.md)."""
    r = cfg.remote
    for name in r.commands:
        if name not in REMOTE_COMMANDS:
            ctx.err("remote.commands",
                    f"unknown command {name!r}{_did_you_mean(name, REMOTE_COMMANDS)} "
                    f"(known: {', '.join(REMOTE_COMMANDS)})")
    if r.require_signed and r.key_file is None:
        ctx.err("remote.require_signed", "needs remote.key_file (the per-truck HMAC key)")
    if r.enabled and r.commands and cfg.mqtt.protocol == "3.1.1" and r.key_file is None:
        ctx.warn("remote.commands",
                 "MQTT 3.1.1 has no response topic or message expiry: commands are "
                 "refused unless signed, and remote.key_file is not set")


def _mqtt_security(cfg: TruckConfig, ctx: _Ctx) -> None:
    """Secure by default: clear-text passwords refused, risky transports warned about."""
    m = cfg.mqtt
    if m.password_file is not None and m.tls is None and not m.allow_insecure_password:
        ctx.err("mqtt.password_file",
                "a password without [mqtt.tls] crosses the network in clear text; "
                "configure [mqtt.tls] or set mqtt.allow_insecure_password = true")
    if m.protocol == "3.1.1":
        ctx.warn("mqtt.protocol",
                 "MQTT 3.1.1 cannot report refusals: a publish the broker drops (ACL, "
                 "size limit) is acknowledged like a delivered one; use \"5\"")
    if m.tls is None and m.port == MQTT_TLS_PORT:
        ctx.warn("mqtt.port",
                 f"port {MQTT_TLS_PORT} is MQTT over TLS but [mqtt.tls] is not configured "
                 "(add [mqtt.tls], or use the broker's plain port)")
    if m.tls is not None and m.port == MQTT_PLAIN_PORT:
        ctx.warn("mqtt.port",
                 f"[mqtt.tls] is configured but port {MQTT_PLAIN_PORT} is MQTT's plain "
                 f"port (the broker's TLS listener is usually {MQTT_TLS_PORT})")


def _mqtt_failover(cfg: TruckConfig, ctx: _Ctx) -> None:
    """``mqtt.failover``: real ports, no address twice, a bounded list."""
    m = cfg.mqtt
    if len(m.failover) > MAX_FAILOVER:
        ctx.err("mqtt.failover", f"at most {MAX_FAILOVER} addresses, got {len(m.failover)}")
        return
    seen = {(m.host.lower(), m.port)}
    for i, (text, (host, port)) in enumerate(zip(m.failover, m.brokers[1:], strict=True)):
        key = f"mqtt.failover[{i}]"
        if not 1 <= port <= 65535:
            ctx.err(key, f"port must be 1..65535, got \"{text}\"")
        elif (host.lower(), port) in seen:
            ctx.err(key, f"\"{text}\" is already in the broker list (host:port and "
                         "failover are tried in order, each once per round)")
        seen.add((host.lower(), port))


class _Ctx:
    """Collects problems while walking the schema."""

    def __init__(self, name: str, base: Path, *, read_secrets: bool = True) -> None:
        self.name = name
        self.base = base
        self.read_secrets = read_secrets
        self.problems: list[tuple[str, str, str]] = []
        self.warnings: list[str] = []

    def err(self, key: str, reason: str) -> None:
        self.problems.append((self.name, key, reason))

    def warn(self, key: str, reason: str) -> None:
        self.warnings.append(f"{self.name}: {key}: {reason}")

    def build(self, cls: type[Any], table: Any, prefix: str) -> Any:
        """Build dataclass ``cls`` from a TOML table, recording problems."""
        where = prefix or "top level"
        if not isinstance(table, Mapping):
            self.err(prefix, f"expected a table, got {_show(table)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        for key in table:
            if key not in fields:
                known = ", ".join(sorted(fields))
                hint = _did_you_mean(str(key), fields)
                self.err(_join(prefix, key), f"unknown key in {where}{hint} (known: {known})")
        kwargs: dict[str, Any] = {}
        ok = True
        for fname, fdef in fields.items():
            key = _join(prefix, fname)
            if fname not in table:
                no_default = fdef.default is dataclasses.MISSING
                if no_default and fdef.default_factory is dataclasses.MISSING:
                    self.err(key, "required key is missing")
                    ok = False
                continue
            value = self.convert(hints[fname], table[fname], key, fdef.metadata)
            if value is _BAD:
                ok = False
            else:
                kwargs[fname] = value
        return cls(**kwargs) if ok else None

    def convert(self, tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        """Convert one TOML value to the field type ``tp``, or return ``_BAD``."""
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                return self.convert(args[0], value, key, meta)
            # int | Literal["auto"]: try the literal first, then the number
            lits = [a for a in args if get_origin(a) is Literal]
            for lit in lits:
                if value in get_args(lit):
                    return value
            nums = [a for a in args if a is int or a is float]
            if nums and not isinstance(value, str):
                return self.convert(nums[0], value, key, meta)
            alts = ", ".join(f'"{c}"' for lit in lits for c in get_args(lit))
            self.err(key, f"expected an integer or one of {alts}, got {_show(value)}")
            return _BAD
        if origin is Literal:
            if value not in get_args(tp):
                shown = ", ".join(f'"{c}"' for c in get_args(tp))
                self.err(key, f"expected one of {shown}, got {_show(value)}")
                return _BAD
            return value
        if dataclasses.is_dataclass(tp):
            built = self.build(typing.cast(type[Any], tp), value, key)
            return _BAD if built is None else built
        if tp is bool:
            if not isinstance(value, bool):
                self.err(key, f"expected true or false, got {_show(value)}")
                return _BAD
            return value
        if tp is int or tp is float:
            return self._number(tp, value, key, meta)
        if tp is str:
            if not isinstance(value, str):
                self.err(key, f"expected a string, got {_show(value)}")
                return _BAD
            pattern = meta.get("pattern")
            if pattern is not None and not pattern.fullmatch(value):
                self.err(key, f"expected a string matching {pattern.pattern}, got {_show(value)}")
                return _BAD
            return value
        if tp is Path:
            return self._path(value, key, meta)
        if origin is tuple:
            return self._str_tuple(value, key, meta)
        if origin in (Mapping, dict) or tp is Mapping:
            return self._float_map(value, key)
        raise TypeError(f"config schema: unsupported type {tp!r} for {key}")  # pragma: no cover

    def _number(self, tp: type, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        lo, hi = meta.get("lo"), meta.get("hi")
        kind = "an integer" if tp is int else "a number"
        rng = ""
        if lo is not None and hi is not None:
            rng = f" {_num(lo)}..{_num(hi)}"
        elif lo is not None:
            rng = f" >= {_num(lo)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.err(key, f"expected {kind}{rng}, got {_show(value)}")
            return _BAD
        if tp is int and not isinstance(value, int):
            self.err(key, f"expected {kind}{rng}, got {_show(value)}")
            return _BAD
        if isinstance(value, float) and not math.isfinite(value):
            self.err(key, f"expected {kind}{rng}, got {_show(value)}")
            return _BAD
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.err(key, f"expected {kind}{rng}, got {_show(value)}")
            return _BAD
        return float(value) if tp is float else value

    def _path(self, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        if not isinstance(value, str) or not value:
            self.err(key, f"expected a file path, got {_show(value)}")
            return _BAD
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = self.base / p
        if meta.get("must_exist"):
            secret = bool(meta.get("secret"))
            try:
                if secret and not self.read_secrets:
                    st = p.stat()  # a reader of the status needs no secret
                else:
                    with p.open("rb"):
                        pass
                    st = p.stat()
            except OSError as exc:
                self.err(key, f"cannot read {str(p)!r}: {exc.strerror or exc}")
                return _BAD
            # one rule: a secret belongs to the service user alone (0600): the group
            # truckgw is how administrators read the status, so it must not read secrets
            if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                who = "every user" if st.st_mode & stat.S_IRWXO else "its group"
                self.warn(key, f"{p} is readable by {who} (mode "
                               f"{stat.S_IMODE(st.st_mode):o}); only the service user "
                               "may read a secret: chown truckgw and chmod 600 it")
        return p

    def _str_tuple(self, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        """An array of strings (each checked against the field's pattern) as a tuple."""
        if not isinstance(value, list):
            self.err(key, f"expected an array of strings, got {_show(value)}")
            return _BAD
        out = [self.convert(str, v, f"{key}[{i}]", meta) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in out) else tuple(out)

    def _float_map(self, value: Any, key: str) -> Any:
        if not isinstance(value, Mapping):
            self.err(key, f"expected a table of numbers, got {_show(value)}")
            return _BAD
        out: dict[str, float] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                self.err(_join(key, k), f"expected a number, got {_show(v)}")
                return _BAD
            out[k] = float(v)
        return types.MappingProxyType(out)


_BAD: Any = object()


def can_interfaces() -> frozenset[str]:
    """The interface names python-can knows (``can.interface`` must be one of them)."""
    from can.interfaces import VALID_INTERFACES  # noqa: PLC0415  # python-can is slow to import

    return frozenset(VALID_INTERFACES)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    options = sorted(choices)
    # a truncated key ("prot") means the longer one, even when another is closer in letters
    close = [c for c in options if len(word) >= 3 and c.startswith(word)]
    close = close or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _show(value: Any) -> str:
    """Show a TOML value the way the user wrote it."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
