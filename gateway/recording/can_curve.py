"""Error-bounded recording of selected J1939 signals, the alternative to deadbands (pure).

:class:`CurveCanRecorder` is :class:`~gateway.recording.can.CanRecorder` with the
signals named in ``errors`` (signal -> bound in the signal's unit) taken out of the
deadband test and recorded instead by the 1-D opening window of
:mod:`gateway.recording.curve`: per source, one window holds a slope cone per selected
signal, and a message is recorded when the next one carrying a selected signal would
take some earlier value off the line by more than its bound. Rebuilt linearly in time
between a source's ``engine`` events, every received value of a selected signal is
then within its bound (while the signal stays available), and peaks and troughs
survive; a constant or steadily ramping signal costs no events beyond the heartbeat.

Everything else is the wrapped :class:`CanRecorder`'s: the heartbeat
(``max_interval_s``), deadbands of the other signals, signals appearing or
disappearing, stale signals, ``min_interval_s`` for *those* events, and ``dtc``
events. Each event it records also anchors the window, so the selected signals' path
runs through it.

An event kept by the window is one message late (it is known to be needed only when
the next message breaks the bound) and carries the source's signals *as they were at
that message* (``ts`` is that message's). ``min_interval_s`` does not apply to them:
the bound decides. State per source: the window (two numbers per selected signal) and
one snapshot of the source's signals.

A message with the same ``ts`` as the source's previous one is not a sample of the
window (its values join the snapshot and go out with the next event); a ``ts`` that
goes back starts a new window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from config import CanSampling
from config.events import Event
from gateway.recording.can import (
    DEFAULT_STALE_MS,
    DEFAULT_STALE_OVERRIDES,
    CanRecorder,
    Value,
)
from gateway.recording.curve import OpeningWindow, ValueCone

#: Bounds for the signals recorded by error bound when none are given (signal units).
#: Fuel rate is not among them: at 10 Hz it moves by several L/h per message (noise of
#: the injection and of the driver's foot), and a bound below that records nearly every
#: message (docs/recording.md); select it with a bound above its noise.
DEFAULT_CURVE_ERRORS: Mapping[str, float] = MappingProxyType({
    "engine_speed_rpm": 50.0,
    "vehicle_speed_kmh": 2.0,
})


@dataclass(frozen=True, slots=True)
class _Snapshot:
    ts_ms: int
    values: Mapping[str, Value]


class CurveCanRecorder:
    """Per-source engine sampling with error-bounded signals; same calls as CanRecorder,
    but :meth:`on_signals` returns a list (the window may add an earlier message)."""

    def __init__(
        self,
        sampling: CanSampling,
        errors: Mapping[str, float] = DEFAULT_CURVE_ERRORS,
        *,
        stale_ms: Mapping[str, int] = DEFAULT_STALE_OVERRIDES,
        default_stale_ms: int = DEFAULT_STALE_MS,
    ) -> None:
        bad = [n for n, e in errors.items() if not e > 0 or math.isinf(e)]
        if bad:
            raise ValueError(f"curve error bounds must be finite and > 0: {sorted(bad)}")
        self.errors = dict(errors)
        # an infinite deadband never fires: the window decides for these signals
        deadbands = {**sampling.deadbands, **dict.fromkeys(errors, math.inf)}
        inner = dataclasses.replace(sampling, deadbands=MappingProxyType(deadbands))
        self.inner = CanRecorder(inner, stale_ms=stale_ms, default_stale_ms=default_stale_ms)
        self._windows: dict[int, OpeningWindow[_Snapshot]] = {}
        self._last_ms: dict[int, int] = {}
        self.curve_events = 0

    def on_signals(
        self,
        ts_ms: int,
        sa: int,
        values: Mapping[str, Value],
        *,
        pgn: int = 0,
        missing: Sequence[str] = (),
    ) -> list[Event]:
        """Take the signals of one message from ``sa``; return the events due, oldest first."""
        event = self.inner.on_signals(ts_ms, sa, values, pgn=pgn, missing=missing)
        if event is None and not any(n in self.errors for n in values):
            return []  # no selected signal in this message: nothing new for the window
        win = self._windows.get(sa)
        if win is None:
            win = self._windows[sa] = OpeningWindow(
                [ValueCone(bound, _Signal(name)) for name, bound in self.errors.items()])
        last = self._last_ms.get(sa)
        if last is not None and ts_ms < last:
            win.reset()  # the clock went back: a new stream from here
        self._last_ms[sa] = ts_ms
        snap = _Snapshot(ts_ms, MappingProxyType(self.inner.latest(sa)))
        out: list[Event] = []
        for kept in win.add(ts_ms / 1000.0, snap, force=event is not None):
            if kept.item is snap and event is not None:
                continue  # the wrapped recorder's own event
            self.curve_events += 1
            fields: dict[str, object] = {"src": sa}
            fields.update(kept.item.values)
            out.append(Event("engine", kept.item.ts_ms, fields))
        if event is not None:
            out.append(event)
        return out

    def flush(self) -> list[Event]:
        """The newest message of each source if its signals' path still needs it."""
        out: list[Event] = []
        for sa, win in self._windows.items():
            for kept in win.flush():
                self.curve_events += 1
                out.append(Event("engine", kept.item.ts_ms, {"src": sa, **kept.item.values}))
        return out

    def on_dtc(
        self,
        ts_ms: int,
        sa: int,
        lamps: Mapping[str, str],
        active: Sequence[Mapping[str, int]],
    ) -> Event | None:
        """As :meth:`CanRecorder.on_dtc`."""
        return self.inner.on_dtc(ts_ms, sa, lamps, active)

    @property
    def engine_events(self) -> int:
        """All ``engine`` events: the wrapped recorder's and the window's."""
        return self.inner.engine_events + self.curve_events

    @property
    def dtc_events(self) -> int:
        """``dtc`` events recorded (the wrapped recorder's)."""
        return self.inner.dtc_events

    def latest(self, sa: int) -> dict[str, Value]:
        """The current signals of source ``sa`` (a copy)."""
        return self.inner.latest(sa)

    @property
    def sources(self) -> list[int]:
        """Source addresses seen so far."""
        return self.inner.sources


class _Signal:
    """``snapshot -> float value of one signal`` (None when absent or not a number)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, snap: _Snapshot) -> float | None:
        v = snap.values.get(self.name)
        if v is None or isinstance(v, bool):
            return None
        return float(v)
