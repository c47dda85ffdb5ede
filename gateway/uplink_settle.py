"""Applying the delivery core's :class:`Ack` and :class:`Release` actions to the store.

PUBACKs arrive in bursts (paho parses every packet of one socket read in one go); the
:class:`Settler` collects their seqs and applies them in rounds, one ``store.ack`` and
one ``store.release`` per round, so a drain costs one store call per burst, not per
message. A round in progress is never cancelled half-way (an SQLite transaction must
not be left open): it runs as its own task, owned by the settler and always awaited by
:meth:`Settler.flush`, which the shell calls whenever a connection ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from buffer.api import EventStore

log = logging.getLogger(__name__)


class Settler:
    """Queued acks and releases of one uplink, applied in order in rounds."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._acks: list[int] = []
        self._rels: list[int] = []
        self._work = asyncio.Event()
        self._round: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing queued and no round in progress."""
        return not self._acks and not self._rels and (
            self._round is None or self._round.done())

    def ack(self, seqs: Sequence[int]) -> None:
        """Queue ``seqs`` for deletion (their PUBACK came)."""
        self._acks.extend(seqs)
        self._work.set()

    def release(self, seqs: Sequence[int]) -> None:
        """Queue ``seqs`` to go back to pending."""
        self._rels.extend(seqs)
        self._work.set()

    async def run(self) -> None:
        """Apply work as it is queued, until cancelled (a task of a connection)."""
        while True:
            await self._work.wait()
            await self.flush()

    async def flush(self) -> None:
        """Apply everything queued so far (and wait for a round in progress)."""
        while True:
            if self._round is None or self._round.done():
                self._work.clear()
                if not self._acks and not self._rels:
                    return
                acks, self._acks = self._acks, []
                rels, self._rels = self._rels, []
                self._round = asyncio.get_running_loop().create_task(
                    self._apply(acks, rels), name="uplink-settle-round")
            await asyncio.shield(self._round)

    async def _apply(self, acks: list[int], rels: list[int]) -> None:
        if acks:
            try:
                await self._store.ack(acks)
            except Exception as exc:  # noqa: BLE001  # whatever the store raises, acks go on
                log.error(  # noqa: TRY400  # a store error is reported, not a crash
                    "uplink: store ack of %d events failed (%s); they will be resent",
                    len(acks), exc,
                )
                rels.extend(acks)
        if rels:
            try:
                await self._store.release(rels)
            except Exception as exc:  # noqa: BLE001  # as above
                log.error(  # noqa: TRY400  # as above
                    "uplink: store release of %d events failed: %s", len(rels), exc
                )
