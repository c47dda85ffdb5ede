"""The monthly data budget (``[mqtt].data_budget_mb_month``, issue #14): pure policy.

When this month's projection (:meth:`gateway.usage.UsageMeter.projected_month`) would
exceed the budget, the agent degrades one documented step at a time, at most one step an
hour (the projection needs time to show a step's effect), and climbs back one step an
hour once the projection is below :data:`RECOVER_SHARE` of the budget:

====  ====================  ==========================================================
step  name                  what changes (cumulative)
====  ====================  ==========================================================
0     ``normal``            nothing
1     ``linger``            live events wait up to :func:`linger_s` (at least 60 s,
                            6 x ``max_latency_s``) to share a message
2     ``fewer_positions``   positions recorded with a 5 x larger error bound and 4 x
                            longer intervals (:func:`degraded_gps`)
3     ``telemetry_heartbeat``  engine telemetry at most once per
                            :data:`TELEMETRY_HEARTBEAT_S` per source
                            (:func:`degraded_can`)
====  ====================  ==========================================================

No step drops a buffered event, and none touches critical events (``dtc``, ``trip``,
``seq_gap``, ...): they are recorded as before and go at once, whatever the step. What is
recorded is still delivered; the buffer's own eviction (disk budget) stays the only way
data is dropped. The status says the step (``budget``).

No I/O, no clock reads: time is passed in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from config import CanSampling, GpsSampling

#: The steps, in order.
STEPS = ("normal", "linger", "fewer_positions", "telemetry_heartbeat")
#: At most one step change per this long.
DWELL_S = 3600.0
#: Below this share of the budget the projection lets the agent climb back a step.
RECOVER_SHARE = 0.8
#: Engine telemetry at step 3: once per this long per source.
TELEMETRY_HEARTBEAT_S = 300.0
#: The linger at step 1 and above: at least this long.
BUDGET_LINGER_S = 60.0


@dataclass(frozen=True, slots=True)
class BudgetView:
    """The ``budget`` section of the status."""

    mb_month: float
    projected_mb: float
    step: int

    def as_status(self) -> dict[str, object]:
        return {"mb_month": self.mb_month, "projected_mb": round(self.projected_mb, 1),
                "step": self.step, "name": STEPS[self.step]}


class BudgetPolicy:
    """Which step the truck is on, given this month's projection; see the module."""

    def __init__(self, mb_month: float) -> None:
        self.mb_month = mb_month
        self.step = 0
        self.projected_mb = 0.0
        self._changed_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.mb_month > 0

    def update(self, projected_bytes: int, now: float) -> bool:
        """Take this month's projection at ``now``; True if the step changed."""
        self.projected_mb = projected_bytes / 1e6
        if not self.enabled:
            return False
        if self._changed_at is not None and now - self._changed_at < DWELL_S:
            return False
        if self.projected_mb > self.mb_month and self.step < len(STEPS) - 1:
            self.step += 1
        elif self.projected_mb < RECOVER_SHARE * self.mb_month and self.step > 0:
            self.step -= 1
        else:
            return False
        self._changed_at = now
        return True

    def view(self) -> BudgetView:
        return BudgetView(self.mb_month, self.projected_mb, self.step)


def linger_s(max_latency_s: float, step: int) -> float:
    """The live linger at ``step``."""
    return max_latency_s if step < 1 else max(BUDGET_LINGER_S, 6 * max_latency_s)


def degraded_gps(s: GpsSampling, step: int) -> GpsSampling:
    """Position recording at ``step`` (unchanged below step 2)."""
    if step < 2:
        return s
    return dataclasses.replace(
        s, max_error_m=min(1000.0, s.max_error_m * 5),
        min_interval_s=min(86400.0, s.min_interval_s * 4),
        max_interval_s=min(86400.0, s.max_interval_s * 4),
        min_distance_m=min(1_000_000.0, s.min_distance_m * 4),
        stopped_interval_s=min(86400.0, s.stopped_interval_s * 4),
        provisional_interval_s=min(3600.0, s.provisional_interval_s * 4))


def degraded_can(s: CanSampling, step: int) -> CanSampling:
    """Engine telemetry recording at ``step`` (unchanged below step 3); DTCs as before."""
    if step < 3:
        return s
    return dataclasses.replace(
        s, min_interval_s=max(s.min_interval_s, TELEMETRY_HEARTBEAT_S),
        max_interval_s=max(s.max_interval_s, TELEMETRY_HEARTBEAT_S))
