"""Load-time check of ``[can].dbc_file``: a DBC that does not parse is a config error.

cantools is an optional extra (``truckgw[dbc]``); without it a configured DBC file is
an error too, rather than a silently ignored file. The reason names the DBC file and,
when the parser says where, the line and column, so ``truckgw check-config`` exits 78
with something a fleet engineer can act on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from config.errors import ConfigError

_LINE = re.compile(r"line (\d+)(?:, column (\d+))?")


def load_database(path: Path) -> Any:
    """Parse ``path`` with cantools; raise :class:`ConfigError` naming the file and line."""
    problem, db = _parse(path)
    if problem is not None:
        raise ConfigError([(str(path), "", problem)])
    return db


def dbc_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable DBC file (``"<file>: line N: ..."``), or None if it is."""
    problem, _db = _parse(path)
    return None if problem is None else f"{path}: {problem}"


def _parse(path: Path) -> tuple[str | None, Any]:
    try:
        import cantools  # noqa: PLC0415  # optional extra: imported only when a DBC is configured
    except ImportError:
        return "a DBC file needs cantools: install truckgw[dbc]", None
    try:
        db: Any = cantools.database.load_file(str(path), database_format="dbc", strict=True)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", None
    except UnicodeDecodeError as exc:
        return f"not text in the DBC encoding: {exc.reason}", None
    except Exception as exc:  # noqa: BLE001  # cantools/textparser raise several error types
        return _describe(exc), None
    if not any(m.is_extended_frame for m in db.messages):
        return "no 29-bit (J1939) message in the DBC file", None
    return None, db


def _describe(exc: BaseException) -> str:
    """``line N, column M: message`` from a cantools/textparser error, when it says where."""
    cause = exc.__cause__ or exc.__context__
    line = getattr(cause, "line", None)
    column = getattr(cause, "column", None)
    text = str(cause) if cause is not None else str(exc)
    if line is None:
        m = _LINE.search(str(exc))
        if m:
            line, column = int(m.group(1)), m.group(2) and int(m.group(2))
    text = text.strip().strip('"')
    if line is not None and f"line {line}" not in text:
        where = f"line {line}" + (f", column {column}" if column else "")
        return f"{where}: DBC error: {text}"
    return f"DBC error: {text}"
