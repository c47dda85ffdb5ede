"""Which broker of ``[mqtt]``'s failover list the uplink connects to, and when.

Pure: no I/O, no clock. The uplink shell (:mod:`gateway.uplink`) asks :attr:`Failover.current`
before each connection and tells :meth:`Failover.ended` how the connection ended; the answer
is the delay before the next attempt, on the (possibly new) current address.

The policy (docs/cluster.md):

- Start on the first address (``host:port``), then ``failover`` in order.
- Stay on an address while it works. When a connect fails or an established link drops,
  move to the next address (round-robin) and try it at once: the nodes of one cluster are
  equivalent, and a node's death must not cost a backoff.
- Only when a whole round failed (every address, in a row, without a connection that stayed
  up for ``healthy_after_s``) wait: the usual jittered exponential backoff, counted per
  round (the :class:`~config.retry.Backoff` of ``reconnect_min_s``/``reconnect_max_s``).
- A connection that stayed up ``healthy_after_s`` starts a fresh round and backoff.
- With one address nothing changes: the delivery core's own backoff decides, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from config import MqttConfig
from config.retry import Backoff, RetryPolicy


def format_address(host: str, port: int) -> str:
    """``host:port`` (``[v6]:port`` for an IPv6 address), as logs and the status show it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class BrokerView:
    """The failover state the status reports."""

    address: str
    index: int
    switches: int
    rounds_failed: int


class Failover:
    """The failover list of one uplink; see the module docstring."""

    def __init__(self, addresses: tuple[tuple[str, int], ...], policy: RetryPolicy,
                 *, healthy_after_s: float) -> None:
        if not addresses:
            raise ValueError("a failover list needs at least one address")
        self.addresses = addresses
        self.healthy_after_s = healthy_after_s
        self.index = 0
        #: moves to another address since start
        self.switches = 0
        #: whole rounds that failed since start
        self.rounds_failed = 0
        self._failed_in_round = 0
        self._backoff = Backoff(policy)

    @classmethod
    def from_config(cls, m: MqttConfig, healthy_after_s: float) -> Failover:
        """The list ``host:port`` + ``failover`` with the uplink's reconnect policy."""
        policy = RetryPolicy(m.reconnect_min_s, max(m.reconnect_min_s, m.reconnect_max_s),
                             healthy_after_s)
        return cls(m.brokers, policy, healthy_after_s=healthy_after_s)

    @property
    def current(self) -> tuple[str, int]:
        """The address of the next (or current) connection."""
        return self.addresses[self.index]

    def view(self) -> BrokerView:
        """What the status shows."""
        return BrokerView(format_address(*self.current), self.index, self.switches,
                          self.rounds_failed)

    def ended(self, *, up_s: float | None, core_after_s: float) -> float:
        """A connection ended: ``up_s`` is how long it was established (None: the connect
        failed); ``core_after_s`` the delivery core's backoff. Returns the delay before the
        next attempt and moves :attr:`current` when the list has more than one address."""
        n = len(self.addresses)
        if n == 1:
            return core_after_s
        if up_s is not None and up_s >= self.healthy_after_s:
            self._failed_in_round = 0
            self._backoff.reset()
        self._failed_in_round += 1
        self.index = (self.index + 1) % n
        self.switches += 1
        if self._failed_in_round < n:
            return 0.0
        self._failed_in_round = 0
        self.rounds_failed += 1
        return self._backoff.next_delay()
