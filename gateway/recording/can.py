"""Pure recording policy for J1939 data: which decoded frames become events.

Per source address (SA) the policy keeps the latest value of every decoded signal.

``engine`` events carry all of a source's current signals (``{"src": sa, ...}``) and
are recorded, per source, when ``min_interval_s`` has passed since that source's last
record **and** one of these holds:

- ``max_interval_s`` has passed (a heartbeat; ``max_interval_s = 0`` turns it into a
  fixed period of ``min_interval_s``);
- a signal moved by at least its deadband against the *last recorded* value (so a
  slow drift is caught too); a deadband of 0 means any change;
- a signal appeared, or disappeared (not available, error, or stale).

With every threshold at 0 (``min_interval_s = max_interval_s = 0``), every decoded frame
is recorded. Deadbands come from ``[can.sampling].deadbands`` over
:data:`DEFAULT_DEADBANDS`.

A signal not refreshed for its stale time (:data:`DEFAULT_STALE_MS`, longer for
on-request PGNs) is dropped: an ECU that went quiet must not keep reporting its last
value for ever.

``dtc`` events (``{"src", "lamps", "active"}``) are recorded the first time a source's
DM1 is seen, whenever its lamps or set of (SPN, FMI) codes change (including back to
none), and again every ``dtc_refresh_s`` (0: every DM1).

No clock reads: every call takes ``ts_ms``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from config import CanSampling
from config.events import Event
from drivers.j1939 import Decoded, DtcUpdate, SignalUpdate

Value = float | int | bool

#: Change that counts as significant, per signal (units of the signal).
DEFAULT_DEADBANDS: Mapping[str, float] = MappingProxyType({
    "engine_speed_rpm": 100.0,
    "vehicle_speed_kmh": 5.0,
    "accelerator_pedal_pct": 10.0,
    "engine_load_pct": 10.0,
    "engine_torque_pct": 10.0,
    "fuel_level_pct": 2.0,
    "fuel_rate_lph": 5.0,
    "instant_fuel_economy_kmpl": 2.0,
    "total_fuel_used_l": 1.0,
    "trip_fuel_l": 1.0,
    "engine_hours_h": 1.0,
    "coolant_temp_c": 2.0,
    "oil_temp_c": 2.0,
    "oil_pressure_kpa": 20.0,
    "total_distance_km": 1.0,
    "brake_switch": 0.0,
    "parking_brake": 0.0,
    # FMS-Standard signals (docs/fleet-data.md); states and gears: any change (0)
    "trip_distance_km": 1.0,
    "brake_pedal_pct": 10.0,
    "tacho_speed_kmh": 5.0,
    "service_distance_km": 50.0,
    "barometric_pressure_kpa": 2.0,
    "ambient_air_temp_c": 1.0,
    "charging_potential_v": 0.5,
    "battery_potential_v": 0.5,
    "def_tank_level_pct": 2.0,
    "def_tank_temp_c": 2.0,
    "trailer_weight_kg": 250.0,
    "cargo_weight_kg": 250.0,
    **{f"axle{n}_weight_kg": 250.0 for n in range(1, 15)},  # VW: one per axle
})
#: Deadband for a signal with no default (e.g. one added from a DBC): any change.
FALLBACK_DEADBAND = 0.0

#: A signal not refreshed for this long is dropped from its source's state.
DEFAULT_STALE_MS = 10_000
#: On-request PGNs (HOURS, LFC) arrive once per request interval or less often.
ON_REQUEST_STALE_MS = 3_600_000
DEFAULT_STALE_OVERRIDES: Mapping[str, int] = MappingProxyType({
    "engine_hours_h": ON_REQUEST_STALE_MS,
    "total_fuel_used_l": ON_REQUEST_STALE_MS,
    "trip_fuel_l": ON_REQUEST_STALE_MS,
    "service_distance_km": ON_REQUEST_STALE_MS,  # SERV is often sent only on request
})


@dataclass(slots=True)
class _Source:
    values: dict[str, Value] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    origin: dict[str, int] = field(default_factory=dict)
    recorded: dict[str, Value] = field(default_factory=dict)
    last_ms: int | None = None
    swept_ms: int = 0


@dataclass(slots=True)
class _DtcState:
    key: object
    last_ms: int


class CanRecorder:
    """Per-source engine sampling and DTC change detection (pure)."""

    def __init__(
        self,
        sampling: CanSampling,
        *,
        stale_ms: Mapping[str, int] = DEFAULT_STALE_OVERRIDES,
        default_stale_ms: int = DEFAULT_STALE_MS,
    ) -> None:
        self.min_ms = int(sampling.min_interval_s * 1000)
        self.max_ms = int(sampling.max_interval_s * 1000)
        self.dtc_refresh_ms = int(sampling.dtc_refresh_s * 1000)
        self.deadbands = {**DEFAULT_DEADBANDS, **sampling.deadbands}
        self.every_frame = self.min_ms == 0 and self.max_ms == 0
        self.stale_ms = dict(stale_ms)
        self.default_stale_ms = default_stale_ms
        self._sources: dict[int, _Source] = {}
        self._dtc: dict[int, _DtcState] = {}
        self.engine_events = 0
        self.dtc_events = 0

    # ------------------------------------------------------------------ engine

    def on_signals(
        self,
        ts_ms: int,
        sa: int,
        values: Mapping[str, Value],
        *,
        pgn: int = 0,
        missing: Sequence[str] = (),
    ) -> Event | None:
        """Take the signals of one message from ``sa``; maybe return an ``engine`` event.

        ``missing`` names signals the message carries but reported as not available or
        error: they leave the state if this PGN was their last source.
        """
        src = self._sources.get(sa)
        if src is None:
            src = self._sources[sa] = _Source()
        state, updated, origin = src.values, src.updated, src.origin
        for name, v in values.items():
            state[name] = v
            updated[name] = ts_ms
            origin[name] = pgn
        for name in missing:
            if name in state and origin.get(name) == pgn:
                del state[name]
        if not state:
            return None
        last = src.last_ms
        if self.every_frame and ts_ms - src.swept_ms >= 1000:
            self._drop_stale(src, ts_ms)
        elif last is not None and not self.every_frame:
            elapsed = ts_ms - last
            if elapsed < 0:
                elapsed = self.max_ms  # the clock went back: record now, restart the gates
            if elapsed < self.min_ms:
                return None
            self._drop_stale(src, ts_ms)
            if elapsed < self.max_ms and not self._changed(state, src.recorded):
                return None
        if not state:
            return None
        src.recorded = dict(state)
        src.last_ms = ts_ms
        self.engine_events += 1
        fields: dict[str, object] = {"src": sa}
        fields.update(state)
        return Event("engine", ts_ms, fields)

    def _changed(self, state: Mapping[str, Value], recorded: Mapping[str, Value]) -> bool:
        if state.keys() != recorded.keys():
            return True
        deadbands = self.deadbands
        for name, v in state.items():
            old = recorded[name]
            if v == old:
                continue
            band = deadbands.get(name, FALLBACK_DEADBAND)
            if band <= 0 or isinstance(v, bool) or abs(v - old) >= band:
                return True
        return False

    def _drop_stale(self, src: _Source, ts_ms: int) -> None:
        src.swept_ms = ts_ms
        stale = self.stale_ms
        default = self.default_stale_ms
        gone = [n for n, t in src.updated.items() if ts_ms - t > stale.get(n, default)]
        for n in gone:
            del src.updated[n]
            src.values.pop(n, None)
            src.origin.pop(n, None)

    # ------------------------------------------------------------------ dtc

    def on_dtc(
        self,
        ts_ms: int,
        sa: int,
        lamps: Mapping[str, str],
        active: Sequence[Mapping[str, int]],
    ) -> Event | None:
        """Take one DM1 of ``sa``; return a ``dtc`` event on change or refresh."""
        key = (
            tuple(sorted(lamps.items())),
            frozenset((d["spn"], d["fmi"]) for d in active),
        )
        st = self._dtc.get(sa)
        if st is not None and st.key == key:
            elapsed = ts_ms - st.last_ms
            if 0 <= elapsed < self.dtc_refresh_ms:
                return None
        self._dtc[sa] = _DtcState(key=key, last_ms=ts_ms)
        self.dtc_events += 1
        return Event(
            "dtc",
            ts_ms,
            {"src": sa, "lamps": dict(lamps), "active": [dict(d) for d in active]},
        )

    # ------------------------------------------------------------------ introspection

    def latest(self, sa: int) -> dict[str, Value]:
        """The current signals of source ``sa`` (a copy; for status and tests)."""
        src = self._sources.get(sa)
        return dict(src.values) if src else {}

    @property
    def sources(self) -> list[int]:
        """Source addresses seen so far."""
        return sorted(self._sources)


def record_decoded(rec: CanRecorder, ts_ms: int, out: Decoded) -> Event | None:
    """Offer one decoded message to the recording policy; the event it records, if any.

    The one path from the codec to the policy, shared by :mod:`gateway.ingest` and
    bench/can_bench.py.
    """
    if type(out) is SignalUpdate:
        return rec.on_signals(ts_ms, out.sa, out.values, pgn=out.pgn, missing=out.missing)
    if isinstance(out, DtcUpdate):
        dm1 = out.dm1
        return rec.on_dtc(ts_ms, out.sa, dm1.lamps_dict(), [d.as_dict() for d in dm1.active])
    return None  # pragma: no cover - Decoded has two members
