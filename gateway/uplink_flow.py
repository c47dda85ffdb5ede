"""Pure pieces of the delivery core: bandwidth bucket, lane choice, poison handling.

No I/O and no clock reads: callers pass ``now`` (monotonic seconds) in. The reconnect
backoff is :class:`config.retry.Backoff`, the project's one retry policy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from buffer.api import Lane, StoredEvent
from config.errors import WireError
from gateway import wire

log = logging.getLogger(__name__)


class TokenBucket:
    """A bytes/s token bucket for metered links; ``rate == 0`` means unlimited.

    The bucket holds at most one second of tokens (``burst`` bytes, at least one
    maximum payload so a single message always fits). Spending may go into debt; the
    caller then waits :meth:`delay` before sending the next message.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, rate)
        self.tokens = self.burst
        self._t = now

    def _refill(self, now: float) -> None:
        if now > self._t:
            self.tokens = min(self.burst, self.tokens + (now - self._t) * self.rate)
        self._t = now

    def delay(self, nbytes: int, now: float) -> float:
        """Seconds to wait until ``nbytes`` may be sent (0 when unlimited or available)."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        need = min(float(nbytes), self.burst) - self.tokens
        return 0.0 if need <= 0 else need / self.rate

    def spend(self, nbytes: int, now: float) -> None:
        """Take ``nbytes`` tokens (may go negative: the debt delays later sends)."""
        if self.rate <= 0:
            return
        self._refill(now)
        self.tokens -= nbytes


@dataclass(slots=True)
class LaneChooser:
    """Splits the uplink between the live lane and the backfill lane.

    ``live_share`` is the share of *messages* that come from the live lane (newest
    first) while the rest drains the backlog oldest first; the in-flight window is
    split in the same proportion (at least one live slot when the share is above
    zero). Both lanes take from the same pending pool, so the choice only decides
    which end of the backlog the next batch comes from. The live lane goes first.
    """

    window: int
    live_share: float
    live_sent: int = 0
    backfill_sent: int = 0

    @property
    def live_slots(self) -> int:
        """How many in-flight messages may come from the live lane."""
        if self.live_share <= 0:
            return 0
        return max(1, min(self.window, math.ceil(self.window * self.live_share)))

    def choose(self, live_inflight: int, backfill_inflight: int) -> Lane:
        """The lane for the next batch given the messages in flight per lane."""
        backfill_slots = self.window - self.live_slots
        live_free = live_inflight < self.live_slots
        back_free = backfill_inflight < backfill_slots
        total = self.live_sent + self.backfill_sent
        live_due = self.live_sent <= self.live_share * total  # below its share so far
        if live_free and (live_due or not back_free):
            return Lane.LIVE
        if back_free:
            return Lane.BACKFILL
        return Lane.LIVE if backfill_slots == 0 else Lane.BACKFILL

    def sent(self, lane: Lane) -> None:
        """Count a message sent from ``lane``."""
        if lane is Lane.LIVE:
            self.live_sent += 1
        else:
            self.backfill_sent += 1

    def reset(self) -> None:
        """Start a new connection's accounting."""
        self.live_sent = self.backfill_sent = 0


def encode_or_drop(
    truck_id: str, events: Sequence[StoredEvent], encoding: str, limit: int,
    ctx: wire.WireContext = wire.NO_CONTEXT,
) -> tuple[list[tuple[bytes, tuple[int, ...]]], tuple[int, ...]]:
    """Wire payloads for ``events`` and the seqs that can never be encoded.

    A stored body that is not a JSON object can never be sent; rather than block the
    backlog behind it forever, it is logged and left out (the core acks it as
    ``dropped_unencodable``) and the rest goes.
    """
    try:
        return wire.encode_batches(truck_id, events, encoding, limit, ctx), ()
    except WireError:
        good, bad = [], []
        for ev in events:
            try:
                wire.encode_batches(truck_id, [ev], encoding, limit, ctx)
            except WireError as exc:
                log.error("uplink: dropping event seq %d: %s", ev.seq, exc)  # noqa: TRY400  # the reason is the message; no traceback needed
                bad.append(ev.seq)
            else:
                good.append(ev)
        return wire.encode_batches(truck_id, good, encoding, limit, ctx), tuple(bad)


#: MQTT 5 PUBACK reason codes (OASIS MQTT 5.0, 3.4.2.1) as paho names them.
PUBACK_REASONS = {
    0x00: "Success", 0x10: "No matching subscribers", 0x80: "Unspecified error",
    0x83: "Implementation specific error", 0x87: "Not authorized",
    0x90: "Topic Name invalid", 0x91: "Packet identifier in use", 0x95: "Packet too large",
    0x97: "Quota exceeded", 0x99: "Payload format invalid",
}


def reason_name(code: int) -> str:
    """A PUBACK reason code as 'Name (0xNN)' for logs and ``last_error``."""
    return f"{PUBACK_REASONS.get(code, 'Unknown reason')} (0x{code:02X})"
