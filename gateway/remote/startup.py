"""Before the agent loads its config: finish or roll back a remote change; re-exec.

``truckgw run`` calls :func:`before_run` with the config path first. When the rollback
state (:mod:`gateway.remote.files`) says a pushed file is waiting for its confirmation,
this start is counted, and the previous file comes back when the new one does not
load, when the agent started ``max_starts`` times on it without reaching a broker, or
when the grace period was used up. The outcome is reported on ``config/reported`` once
the agent is connected.

A restart the remote side asks for (a change that needs one, a rollback, the
``restart`` command) is a clean shutdown followed by :func:`reexec`: the same process
(same pid, so systemd's main PID and a supervising test harness see one process) runs
``truckgw run`` again. If the exec itself fails the agent exits :data:`EX_RESTART`,
which ``Restart=on-failure`` restarts too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from config.errors import ConfigError
from config.loader import check_config
from gateway.remote import files, rollback

log = logging.getLogger(__name__)

#: Exit status asking for a restart (sysexits EX_TEMPFAIL): not 0 and not 78, so
#: systemd's ``Restart=on-failure`` restarts the unit if the re-exec did not happen.
EX_RESTART = 75
#: Starts on a pushed file before a rollback when its own ``[remote] max_starts`` is unknown.
DEFAULT_MAX_STARTS = 3


def before_run(config: Path) -> rollback.State | None:
    """Count this start against a pending change; roll back if it must. Returns the
    state when there is one. Never raises: the agent starts whatever happens here."""
    try:
        return _before_run(config)
    except Exception:
        log.exception("remote: the start check failed; starting on %s as it is", config)
        return None


def _before_run(config: Path) -> rollback.State | None:
    if not files.state_path(config).exists():
        return None
    state = files.read_state(config)
    if state.phase not in (rollback.Phase.APPLYING, rollback.Phase.PENDING_CONFIRM):
        return state
    load_error: str | None = None
    max_starts = DEFAULT_MAX_STARTS
    try:
        cfg, _warnings = check_config(config)
        max_starts = cfg.remote.max_starts
    except ConfigError as exc:
        load_error = "; ".join(exc.lines())
    decision = rollback.at_start(state, files.sha256_of(config), load_error, max_starts)
    state = decision.state
    if decision.roll_back is not None:
        log.error("remote: rolling back config version %s: %s", state.target_version,
                  decision.roll_back)
        now_ms = time.time_ns() // 1_000_000
        problem = files.restore_prev(config)
        state = (rollback.rolled_back(state, decision.roll_back, now_ms) if problem is None
                 else rollback.rollback_failed(state, decision.roll_back, problem, now_ms))
    files.write_state(config, state)
    return state


def reexec() -> int:
    """Run this command again in this process; returns :data:`EX_RESTART` if it cannot."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    log.info("remote: restarting (exec %s)", " ".join(argv))
    for h in logging.getLogger().handlers:
        h.flush()
    try:
        os.execv(sys.executable, argv)  # noqa: S606  # the agent's own command line
    except OSError as exc:
        log.error("remote: cannot re-exec (%s); exiting %d for the service manager",  # noqa: TRY400
                  exc, EX_RESTART)
    return EX_RESTART
