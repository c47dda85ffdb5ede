"""The apply / confirm / roll-back state machine of remote configuration.

Pure: no I/O, no clock reads. Every transition takes the state and returns the next
one (frozen); :mod:`gateway.remote.files` persists it (fsync + rename) after each.

::

    IDLE | CONFIRMED | ROLLED_BACK  --begin(version, sha)-->  APPLYING
    APPLYING  --written-->  PENDING_CONFIRM(grace_s, waited_s=0, starts=0)
    APPLYING  at start, file is the old one  -->  IDLE (the push was never in force)
    APPLYING  at start, file is the new one  -->  PENDING_CONFIRM (the rename happened)
    PENDING_CONFIRM  --connected-->  CONFIRMED (running_version = version)
    PENDING_CONFIRM  --waited_s >= grace_s, starts > max_starts, or the file does not
                       load at start-->  ROLLED_BACK (the previous file restored)
    any idle phase  --applied_live / rejected-->  CONFIRMED / unchanged (outcome noted)

``waited_s`` is the time spent running *without* a broker connection since the new
file took effect, added up over restarts (monotonic deltas, never wall-clock
differences), so the grace period survives restarts and clock jumps. The outcome of the
latest handled version (applied, rejected, rolled back) is what the truck reports on
``config/reported`` once connected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """Where a remote configuration change is."""

    IDLE = "idle"
    APPLYING = "applying"
    PENDING_CONFIRM = "pending_confirm"
    CONFIRMED = "confirmed"
    ROLLED_BACK = "rolled_back"


#: Phases in which a new desired version may be handled.
SETTLED = frozenset({Phase.IDLE, Phase.CONFIRMED, Phase.ROLLED_BACK})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one desired version."""

    version: int
    status: str  # "applied" | "rejected" | "rolled_back" | "pending" | "rollback_failed"
    errors: tuple[str, ...] = ()
    at_ms: int = 0
    live: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class State:
    """The persisted state (``<config>.remote.json``)."""

    phase: Phase = Phase.IDLE
    running_version: int = 0  # the pushed version in force; 0: the file installed locally
    handled_version: int = 0  # the highest desired version handled
    target_version: int | None = None  # APPLYING / PENDING_CONFIRM: the version going in
    prev_version: int = 0  # the version to return to
    new_sha256: str | None = None  # APPLYING / PENDING_CONFIRM: the new file's hash
    grace_s: float = 600.0
    waited_s: float = 0.0
    starts: int = 0
    outcome: Outcome | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = dataclasses.asdict(self)
        d["phase"] = self.phase.value
        return d

    @classmethod
    def from_json(cls, d: Any) -> State:
        """Back from :meth:`to_json`; anything malformed gives the default state."""
        if not isinstance(d, dict):
            return cls()
        try:
            out = d.get("outcome")
            outcome = None if out is None else Outcome(
                int(out["version"]), str(out["status"]), tuple(map(str, out.get("errors", ()))),
                int(out.get("at_ms", 0)), tuple(map(str, out.get("live", ()))),
                tuple(map(str, out.get("restart", ()))))
            tv = d.get("target_version")
            return cls(Phase(d.get("phase", "idle")), int(d.get("running_version", 0)),
                       int(d.get("handled_version", 0)), None if tv is None else int(tv),
                       int(d.get("prev_version", 0)), d.get("new_sha256"),
                       float(d.get("grace_s", 600.0)), float(d.get("waited_s", 0.0)),
                       int(d.get("starts", 0)), outcome)
        except (KeyError, TypeError, ValueError):
            return cls()


def should_handle(s: State, version: int) -> bool:
    """A desired version is handled once, above every one before, when settled."""
    return s.phase in SETTLED and version > s.handled_version


def rejected(s: State, version: int, errors: tuple[str, ...], at_ms: int) -> State:
    """The desired ``version`` was refused whole; the running config stays."""
    return dataclasses.replace(s, handled_version=max(s.handled_version, version),
                               outcome=Outcome(version, "rejected", errors, at_ms))


def applied_live(s: State, version: int, live: tuple[str, ...], at_ms: int) -> State:
    """Every change of ``version`` took effect without a restart."""
    return dataclasses.replace(
        s, phase=Phase.CONFIRMED, running_version=version,
        handled_version=max(s.handled_version, version), target_version=None,
        new_sha256=None, waited_s=0.0, starts=0,
        outcome=Outcome(version, "applied", (), at_ms, live, ()))


def begin(s: State, version: int, *, new_sha256: str, grace_s: float,
          live: tuple[str, ...], restart: tuple[str, ...], at_ms: int) -> State:
    """About to write the new file (the previous one is kept as ``.prev``)."""
    return dataclasses.replace(
        s, phase=Phase.APPLYING, target_version=version, prev_version=s.running_version,
        new_sha256=new_sha256, grace_s=grace_s, waited_s=0.0, starts=0,
        outcome=Outcome(version, "pending", (), at_ms, live, restart))


def written(s: State) -> State:
    """The new file is in place (renamed); the agent restarts onto it."""
    if s.phase is not Phase.APPLYING:
        return s
    return dataclasses.replace(s, phase=Phase.PENDING_CONFIRM, waited_s=0.0, starts=0)


@dataclass(frozen=True, slots=True)
class StartDecision:
    """What :func:`at_start` decided: run, or restore the previous file first."""

    state: State
    roll_back: str | None = None  # the reason, when the previous file must come back


def at_start(s: State, file_sha256: str | None, load_error: str | None,
             max_starts: int) -> StartDecision:
    """The agent starts: ``file_sha256`` of the config file on disk, ``load_error`` its
    check-config problems (None: it loads)."""
    if s.phase is Phase.APPLYING:
        if file_sha256 is None or file_sha256 != s.new_sha256:
            # killed before the rename: the old file is in force, the push never was
            return StartDecision(dataclasses.replace(
                s, phase=Phase.IDLE, target_version=None, new_sha256=None,
                outcome=s.outcome if s.outcome is None or s.outcome.status != "pending"
                else None))
        s = dataclasses.replace(s, phase=Phase.PENDING_CONFIRM)
    if s.phase is not Phase.PENDING_CONFIRM:
        return StartDecision(s)
    s = dataclasses.replace(s, starts=s.starts + 1)
    if load_error is not None:
        return StartDecision(s, f"the new config does not load: {load_error}")
    if s.starts > max_starts:
        return StartDecision(s, f"{s.starts - 1} starts on the new config without "
                                "reaching a broker")
    if s.waited_s >= s.grace_s:
        return StartDecision(s, _grace_reason(s))
    return StartDecision(s)


def waited(s: State, dt_s: float) -> StartDecision:
    """``dt_s`` more seconds without a broker; roll back once the grace is used up."""
    if s.phase is not Phase.PENDING_CONFIRM or dt_s <= 0:
        return StartDecision(s)
    s = dataclasses.replace(s, waited_s=s.waited_s + dt_s)
    return StartDecision(s, _grace_reason(s) if s.waited_s >= s.grace_s else None)


def _grace_reason(s: State) -> str:
    return (f"no broker connection within the grace period of {s.grace_s:g} s "
            f"({s.waited_s:.1f} s without one)")


def connected(s: State, at_ms: int) -> State:
    """A broker accepted the connection: a pending change is confirmed."""
    if s.phase is not Phase.PENDING_CONFIRM or s.target_version is None:
        return s
    o = s.outcome
    return dataclasses.replace(
        s, phase=Phase.CONFIRMED, running_version=s.target_version,
        handled_version=max(s.handled_version, s.target_version), target_version=None,
        new_sha256=None, waited_s=0.0, starts=0,
        outcome=Outcome(s.target_version, "applied", (), at_ms,
                        o.live if o else (), o.restart if o else ()))


def rolled_back(s: State, reason: str, at_ms: int) -> State:
    """The previous file is back in place."""
    version = s.target_version if s.target_version is not None else s.handled_version
    o = s.outcome
    return dataclasses.replace(
        s, phase=Phase.ROLLED_BACK, running_version=s.prev_version,
        handled_version=max(s.handled_version, version), target_version=None,
        new_sha256=None, waited_s=0.0, starts=0,
        outcome=Outcome(version, "rolled_back", (reason,), at_ms,
                        o.live if o else (), o.restart if o else ()))


def rollback_failed(s: State, reason: str, problem: str, at_ms: int) -> State:
    """The previous file could not be restored: the agent stays on the new one (a restart
    loop would help nobody) and says so."""
    version = s.target_version if s.target_version is not None else s.handled_version
    o = s.outcome
    return dataclasses.replace(
        s, phase=Phase.IDLE, running_version=version,
        handled_version=max(s.handled_version, version), target_version=None,
        new_sha256=None, waited_s=0.0, starts=0,
        outcome=Outcome(version, "rollback_failed", (reason, problem), at_ms,
                        o.live if o else (), o.restart if o else ()))
