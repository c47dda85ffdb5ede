"""The storage seam of the sink: what a backend does, and the errors it raises.

A backend writes one :data:`~gateway.sink.rows.Outcome` per call, in one transaction,
and is idempotent on the unique key ``(truck_id, stream, seq)`` (events) and
``(truck_id, ts, state)`` (status history): writing the same message twice leaves the
tables as after the first write. That is what makes at-least-once delivery exactly-once
in the table.
"""

from __future__ import annotations

from typing import Protocol

from config.errors import GatewayError
from gateway.sink.gaps import GapInput
from gateway.sink.report import ReportInput
from gateway.sink.rows import Outcome


class SinkError(GatewayError):
    """Root of the sink's errors."""


class SinkStoreUnavailableError(SinkError):
    """The database cannot be reached or refused a write; retry later (nothing was acked)."""


class SinkStoreRejectedError(SinkError):
    """The database refused the rows of one message (a data error, not an outage): the
    consumer quarantines that message instead, so it cannot block the subscription."""


class SinkStoreConfigError(SinkError):
    """The database URL is invalid or names an unknown backend."""


class SinkStore(Protocol):
    """A sink database backend."""

    def write(self, outcome: Outcome) -> int:
        """Store one message's rows in one transaction, committed when this returns; the
        number of event rows that were new (the rest were duplicates).

        Raises :class:`SinkStoreUnavailableError` when the database is unreachable; the
        next call reconnects.
        """

    def gap_inputs(self, truck_id: str | None = None) -> list[GapInput]:
        """What gap accounting needs, per truck (all trucks when ``truck_id`` is None)."""

    def report_input(self, truck_id: str, from_ms: int | None = None,
                     to_ms: int | None = None) -> ReportInput:
        """What a trip report needs: the ``gps``, ``engine`` and ``dtc`` events of one truck
        with ``from_ms <= ts <= to_ms`` (None: open), ordered by ``ts``, and the newest
        ``dtc`` per source before ``from_ms``; one consistent read."""

    def count_events(self, truck_id: str | None = None) -> int:
        """Rows in ``events`` (of one truck)."""

    def close(self) -> None:
        """Close the connection (idempotent)."""
