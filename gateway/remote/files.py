"""The files of remote management, each replaced atomically (write, fsync, rename, fsync
the folder): a kill -9 or a power cut leaves the old file or the new one, never a torn
one.

Beside the truck's config file ``truckgw.toml``:

- ``truckgw.toml.prev``: the file before the latest push (what a rollback restores);
- ``truckgw.toml.remote.json``: the rollback state (:class:`gateway.remote.rollback.State`).
  It lives with the config file, not the buffer, because a push may move the buffer and
  the start check must find it even when the new file does not load.

Beside the buffer: ``buffer.db.remote-requests.json``, the request-id window.

``TRUCKGW_TEST_APPLY_HOLD_S`` (tests only) holds the config file's rename that many
seconds, with the new text fsynced in ``truckgw.toml.tmp``, so a test can kill -9 the
agent in the middle of an apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from buffer.recovery import fsync_dir
from gateway.remote.rollback import State

log = logging.getLogger(__name__)

HOLD_ENV = "TRUCKGW_TEST_APPLY_HOLD_S"


def prev_path(config: Path) -> Path:
    """Where the previous config file is kept."""
    return config.with_name(config.name + ".prev")


def state_path(config: Path) -> Path:
    """Where the rollback state is kept."""
    return config.with_name(config.name + ".remote.json")


def requests_path(buffer_db: Path) -> Path:
    """Where the request-id window is kept."""
    return buffer_db.with_name(buffer_db.name + ".remote-requests.json")


def atomic_write(path: Path, data: bytes, *, mode: int | None = None,
                 hold_s: float = 0.0) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
    try:
        os.write(fd, data)
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    if hold_s > 0:
        log.warning("remote: holding the rename of %s for %.1f s (%s)", path, hold_s, HOLD_ENV)
        time.sleep(hold_s)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_of(path: Path) -> str | None:
    """The file's SHA-256, or None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_json(path: Path) -> Any:
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("remote: cannot read %s: %s", path, exc)
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    atomic_write(path, json.dumps(obj, indent=1).encode(), mode=0o640)


def read_state(config: Path) -> State:
    """The rollback state of the config file (the default when there is none)."""
    return State.from_json(read_json(state_path(config)))


def write_state(config: Path, state: State) -> None:
    """Persist the rollback state."""
    write_json(state_path(config), state.to_json())


def install_config(config: Path, text: bytes) -> None:
    """Keep the current file as ``.prev``, then put ``text`` in its place."""
    old = config.read_bytes()
    mode = _mode(config)
    atomic_write(prev_path(config), old, mode=mode)
    hold = 0.0
    with contextlib.suppress(ValueError):
        hold = float(os.environ.get(HOLD_ENV, "0") or 0)
    atomic_write(config, text, mode=mode, hold_s=hold)


def restore_prev(config: Path) -> str | None:
    """Put ``.prev`` back in place of the config file; None, or why it cannot."""
    try:
        atomic_write(config, prev_path(config).read_bytes(), mode=_mode(config))
    except OSError as exc:
        log.error("remote: cannot roll back %s: %s", config, exc)  # noqa: TRY400
        return f"cannot restore {prev_path(config).name}: {exc.strerror or exc}"
    return None


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o640
