"""The ``truckgw`` command.

Sub-commands are registered by the modules that implement them so this file stays a
thin router: ``run`` and ``status`` (the agent, :mod:`gateway.app` and
:mod:`gateway.status`), ``check-config`` (here), ``sim`` and ``demo`` (:mod:`sim.cli`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from config import EX_CONFIG, ConfigWarning, TruckConfig, load_config
from config.errors import ConfigError
from gateway import __version__
from gateway.sink.cli import add_parser as add_sink_parser

EX_OK = 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    """Validate each file; print every problem; exit 78 (EX_CONFIG) if any file is bad."""
    status = EX_OK
    for path in args.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigWarning)
            try:
                cfg = load_config(path)
            except ConfigError as exc:
                for line in exc.lines():
                    print(line, file=sys.stderr)
                status = EX_CONFIG
                continue
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        if not args.quiet:
            print(f"{path}: ok (truck {cfg.truck_id})")
    return status


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args.config)
    app = importlib.import_module("gateway.app")
    return int(app.run_agent(cfg))


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args.config)
    status = importlib.import_module("gateway.status")
    return int(status.main(cfg, as_json=args.json))


def _load_or_exit(path: Path) -> TruckConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        raise SystemExit(EX_CONFIG) from exc


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
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser(
        "status",
        help="show the health of a running or stopped agent",
        description="Show connection, buffer, GPS and CAN health from the agent's state file.",
    )
    p.add_argument("-c", "--config", type=Path, required=True, help="the truck's TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_status)

    add_sink_parser(sub)
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
