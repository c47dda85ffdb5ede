"""The ``truckgw`` command.

Sub-commands are registered by the modules that implement them so this file stays a
thin router: ``run`` and ``status`` (the agent, :mod:`gateway.app` and
:mod:`gateway.status`), ``check-config`` and ``diagnose`` (here, the probe in
:mod:`gateway.diagnose`), ``sim`` and ``demo`` (:mod:`sim.cli`).

Config warnings are never Python warnings: ``check-config`` prints them as
``warning: file: key: reason``; ``run`` logs them (journald priority 4) once logging is
set up; ``status`` does not repeat them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from config import EX_CONFIG, TruckConfig
from config.errors import ConfigError
from config.loader import check_config
from gateway import __version__
from gateway.diagnose import DEFAULT_TIMEOUT_S, Diagnosis, diagnose
from gateway.logsetup import set_journal_identity, setup_logging
from gateway.sink.cli import add_parser as add_sink_parser

EX_OK = 0
#: ``diagnose``: the port answers but contradicts the configuration, or speaks nothing known
EX_MISMATCH = 1


def _cmd_check_config(args: argparse.Namespace) -> int:
    """Validate each file; print every problem; exit 78 (EX_CONFIG) if any file is bad.

    With ``--probe`` also ask each broker's port whether it speaks TLS or plain MQTT; a
    port that contradicts ``[mqtt.tls]`` is a config problem too (exit 78). An
    unreachable broker is only reported: a truck is often offline.
    """
    status = EX_OK
    for path in args.files:
        try:
            cfg, found = check_config(path)
        except ConfigError as exc:
            for line in exc.lines():
                print(line, file=sys.stderr)
            for msg in exc.warnings:  # found in the same pass: all of it at once
                print(f"warning: {msg}", file=sys.stderr)
            status = EX_CONFIG
            continue
        for msg in found:
            print(f"warning: {msg}", file=sys.stderr)
        if args.probe:
            found_d = _probe(cfg, args.timeout)
            if found_d.mismatch:
                print(f"{path}: mqtt: {found_d.message}", file=sys.stderr)
                status = EX_CONFIG
                continue
            if not args.quiet:
                print(f"{path}: probe: {found_d.message}")
        if not args.quiet:
            print(f"{path}: ok (truck {cfg.truck_id})")
    return status


def _probe(cfg: TruckConfig, timeout_s: float) -> Diagnosis:
    return diagnose(cfg.mqtt.host, cfg.mqtt.port, tls_configured=cfg.mqtt.tls is not None,
                    timeout_s=timeout_s)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    """What listens on the configured broker port, and whether it matches the config."""
    cfg = _load_or_exit(args.config)
    found = diagnose(cfg.mqtt.host, cfg.mqtt.port, tls_configured=cfg.mqtt.tls is not None,
                     timeout_s=args.timeout)
    print(found.message)
    return EX_MISMATCH if found.mismatch else EX_OK


def _cmd_run(args: argparse.Namespace) -> int:
    # logging first, so the config's warnings reach the journal with a priority
    setup_logging("info")
    # a remote config push that failed is rolled back before the file is read
    importlib.import_module("gateway.remote.startup").before_run(args.config)
    cfg = _load_or_exit(args.config, log_warnings=True)
    # TRUCK_ID= stays on every journal entry: app.run_agent's setup_logging keeps it
    app = importlib.import_module("gateway.app")
    return int(app.run_agent(cfg))


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args.config, read_secrets=False)  # an administrator reads no key
    status = importlib.import_module("gateway.status")
    return int(status.main(cfg, as_json=args.json))


def _load_or_exit(path: Path, *, log_warnings: bool = False, read_secrets: bool = True
                  ) -> TruckConfig:
    try:
        cfg, found = check_config(path, read_secrets=read_secrets)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        raise SystemExit(EX_CONFIG) from exc
    if log_warnings:
        set_journal_identity(truck_id=cfg.truck_id)
        for msg in found:
            logging.getLogger("config.loader").warning("%s", msg)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``truckgw`` command."""
    parser = argparse.ArgumentParser(
        prog="truckgw",
        description="On-vehicle IoT edge gateway for trucks: GPS + J1939 -> buffer -> MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"truckgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent for one truck", description="Run the agent.")
    p.add_argument("-c", "--config", type=Path, required=True, help="the truck's TOML file")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "check-config",
        help="validate truck config files",
        description="Validate config files; exit 0 when all are valid, else 78 (EX_CONFIG).",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    p.add_argument("--probe", action="store_true",
                   help="also ask the broker's port whether it speaks TLS or plain MQTT")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds per probe step (default {DEFAULT_TIMEOUT_S:g})")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser(
        "diagnose",
        help="probe the broker port: TLS or plain MQTT, and does it match the config",
        description="Probe the configured broker port (a TLS handshake, then a plain MQTT "
                    "CONNECT) and say whether it matches [mqtt.tls]; exit 1 on a mismatch.",
    )
    p.add_argument("-c", "--config", type=Path, required=True, help="the truck's TOML file")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds per probe step (default {DEFAULT_TIMEOUT_S:g})")
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser(
        "status",
        help="show the health of a running or stopped agent",
        description="Show connection, buffer, GPS and CAN health from the agent's state file.",
    )
    p.add_argument("-c", "--config", type=Path, required=True, help="the truck's TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_status)

    add_sink_parser(sub)
    importlib.import_module("gateway.fleet_cli").add_parser(sub)
    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Let other packages add commands (``sim``, ``demo``) without this module knowing them."""
    for modname in ("sim.cli",):
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        mod.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``truckgw`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
