"""Applying the delivery core's :class:`Ack`, :class:`Release` and :class:`DeadLetter`
actions to the store.

PUBACKs arrive in bursts (paho parses every packet of one socket read in one go); the
:class:`Settler` collects their seqs and applies them in rounds, one ``store.ack`` and
one ``store.release`` per round, so a drain costs one store call per burst, not per
message. A round in progress is never cancelled half-way (an SQLite transaction must
not be left open): it runs as its own task, owned by the settler and always awaited by
:meth:`Settler.flush`, which the shell calls whenever a connection ends.

A delete that fails (disk full, I/O error) is reported to ``on_ack`` with the error;
the store keeps those events leased and the core decides when they go again (it holds
them for a backoff). A dead-letter move that fails is reported the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from buffer.api import EventStore

log = logging.getLogger(__name__)

#: ``on_ack(seqs, error)``: a round's delete worked (error None) or failed.
AckReport = Callable[[tuple[int, ...], str | None], None]


class Settler:
    """Queued acks and releases of one uplink, applied in order in rounds."""

    def __init__(self, store: EventStore, on_ack: AckReport | None = None) -> None:
        self._store = store
        self._on_ack = on_ack
        self._acks: list[int] = []
        self._rels: list[int] = []
        self._dead: list[int] = []
        self._work = asyncio.Event()
        self._round: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing queued and no round in progress."""
        return not self._acks and not self._rels and not self._dead and (
            self._round is None or self._round.done())

    def ack(self, seqs: Sequence[int]) -> None:
        """Queue ``seqs`` for deletion (their PUBACK came)."""
        self._acks.extend(seqs)
        self._work.set()

    def release(self, seqs: Sequence[int]) -> None:
        """Queue ``seqs`` to go back to pending."""
        self._rels.extend(seqs)
        self._work.set()

    def dead_letter(self, seqs: Sequence[int]) -> None:
        """Queue ``seqs`` to be set aside (the broker refused them even alone)."""
        self._dead.extend(seqs)
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
                if not self._acks and not self._rels and not self._dead:
                    return
                acks, self._acks = self._acks, []
                rels, self._rels = self._rels, []
                dead, self._dead = self._dead, []
                self._round = asyncio.get_running_loop().create_task(
                    self._apply(acks, rels, dead), name="uplink-settle-round")
            await asyncio.shield(self._round)

    async def _apply(self, acks: list[int], rels: list[int], dead: list[int]) -> None:
        if dead:
            try:
                await self._store.dead_letter(dead)
            except Exception as exc:  # noqa: BLE001  # whatever the store raises, acks go on
                log.error(  # noqa: TRY400  # a store error is reported, not a crash
                    "uplink: setting %d refused events aside failed: %s", len(dead), exc)
                self._report(tuple(dead), str(exc) or type(exc).__name__)
        if acks:
            # a failure is logged once per episode by the core, not once per round here
            try:
                await self._store.ack(acks)
            except Exception as exc:  # noqa: BLE001  # as above
                self._report(tuple(acks), str(exc) or type(exc).__name__)
            else:
                self._report((), None)
        if rels:
            try:
                await self._store.release(rels)
            except Exception as exc:  # noqa: BLE001  # as above
                log.error(  # noqa: TRY400  # as above
                    "uplink: store release of %d events failed: %s", len(rels), exc
                )

    def _report(self, seqs: tuple[int, ...], error: str | None) -> None:
        if self._on_ack is None:
            if error is not None:
                log.error("uplink: store ack of %d events failed: %s", len(seqs), error)
            return
        try:
            self._on_ack(seqs, error)
        except Exception:  # a bug in the report must not stop the settling
            log.exception("uplink: ack report failed")
