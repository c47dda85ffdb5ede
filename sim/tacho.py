"""A tachograph that follows the drive: working states, driver card, driving-time warnings.

Pure: :meth:`Tacho.step` takes the elapsed model time, whether the ignition is on and
the speed; no clock reads, no randomness. Rules (a simplification of EU 165/2014
digital tachographs, enough for a fleet demo and for tests):

- the driver's card goes in when the ignition is first switched on and comes out when
  the truck has been parked for :attr:`Tacho.card_out_after_s`; without a card the
  driver's state is ``REST``;
- with a card: ``DRIVE`` while the vehicle moves, ``WORK`` while it stands with the
  engine running, ``AVAILABLE`` with the ignition off, ``REST`` once parked long enough
  for the card to come out;
- continuous driving time counts up while driving and restarts after a break of
  :data:`BREAK_S` (45 min); the time-related state becomes 1 fifteen minutes before
  the 4.5 h limit and 2 when it is reached (J1939 SPN 1617 codes);
- overspeed is set after :data:`OVERSPEED_S` above ``overspeed_kmh`` (the 90 km/h of
  the EU speed limiter), cleared when the speed is back under it.

The co-driver (driver 2) has no card: state ``REST``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

BREAK_S = 45 * 60.0
DRIVING_LIMIT_S = 4.5 * 3600.0
WARN_BEFORE_S = 15 * 60.0
OVERSPEED_S = 60.0
MOVING_KMH = 0.5


class WorkingState(enum.IntEnum):
    """Driver working state as TCO1 encodes it (SPN 1612/1613)."""

    REST = 0
    AVAILABLE = 1
    WORK = 2
    DRIVE = 3

    def __repr__(self) -> str:
        return f"<WorkingState.{self.name}>"


@dataclass(frozen=True, slots=True)
class TachoState:
    """What TCO1 and DI report at one moment."""

    driver1: WorkingState = WorkingState.REST
    driver2: WorkingState = WorkingState.REST
    card1: bool = False
    card2: bool = False
    time_state1: int = 0  # 0 normal, 1 fifteen minutes before 4.5 h, 2 4.5 h reached
    overspeed: bool = False
    motion: bool = False
    driver1_id: str | None = None


class Tacho:
    """The tachograph of one truck with one driver (``driver_id``, a card number)."""

    def __init__(self, driver_id: str, *, card_out_after_s: float = 60.0,
                 overspeed_kmh: float = 90.0) -> None:
        self.driver_id = driver_id
        self.card_out_after_s = card_out_after_s
        self.overspeed_kmh = overspeed_kmh
        self._card = False
        self._parked_s = 0.0
        self._driving_s = 0.0  # continuous driving time
        self._pause_s = 0.0  # current break (not driving)
        self._fast_s = 0.0  # time above the overspeed threshold
        self.state = TachoState()

    def step(self, dt_s: float, ignition: bool, speed_kmh: float) -> TachoState:
        """Advance by ``dt_s`` seconds with the ignition and speed of that interval."""
        moving = ignition and speed_kmh > MOVING_KMH
        if ignition:
            self._card = True
            self._parked_s = 0.0
        else:
            self._parked_s += dt_s
            if self._parked_s >= self.card_out_after_s:
                self._card = False
        if moving:
            self._driving_s += dt_s
            self._pause_s = 0.0
        else:
            self._pause_s += dt_s
            if self._pause_s >= BREAK_S:
                self._driving_s = 0.0
        self._fast_s = self._fast_s + dt_s if moving and speed_kmh > self.overspeed_kmh else 0.0
        self.state = TachoState(
            driver1=self._working_state(ignition, moving),
            card1=self._card,
            time_state1=self._time_state(),
            overspeed=self._fast_s >= OVERSPEED_S,
            motion=moving,
            driver1_id=self.driver_id if self._card else None,
        )
        return self.state

    def _working_state(self, ignition: bool, moving: bool) -> WorkingState:
        if not self._card:
            return WorkingState.REST
        if moving:
            return WorkingState.DRIVE
        return WorkingState.WORK if ignition else WorkingState.AVAILABLE

    def _time_state(self) -> int:
        if self._driving_s >= DRIVING_LIMIT_S:
            return 2
        if self._driving_s >= DRIVING_LIMIT_S - WARN_BEFORE_S:
            return 1
        return 0
