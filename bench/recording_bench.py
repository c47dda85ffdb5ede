"""Position recording policies compared: today's thresholds against the curve policy.

Traces (1 Hz fixes, time = the receiver's UTC, which is what an event's ``ts`` carries):

- every shared gpsd capture in ``tests/data/nmea`` whose fixes move (speed above the
  moving threshold at some fix): real receivers, but short;
- the simulator's routes (``sim/routes``), driven by :class:`sim.truck.Truck` with
  realistic receiver noise: per axis a first-order Gauss-Markov error (sigma 2 m,
  correlation 30 s on the motorways; 3.5 m, 20 s in the port) plus 0.5 m white noise;
  Doppler speed with 0.3 km/h white noise (and |noise| when stopped); course with 1
  degree noise above 6 km/h, random below;
- ``winding-highway``: a synthetic motorway of continuous curves (radius 600..3000 m,
  the sim's routes are straight between waypoints, which flatters any simplifier),
  80..90 km/h, same noise as the motorways; and 20 minutes of it at 10 Hz.

For every trace and policy: position events (provisional ones apart), points per km and
per hour, the SED of every original fix against the path rebuilt linearly in time
between recorded points (max and p95; "mov" = fixes while moving, the curve policy's
guarantee), and the speed profile's error at every fix (max and p95). Then the curve
policy's throughput on one core and its memory against window length.

Usage: .venv/bin/python bench/recording_bench.py [--bound 10] [--speed-bound 5]
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import functools
import itertools
import math
import random
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config import CanSampling, GpsSampling
from config.events import Event
from drivers.nmea_epoch import Fix, NmeaDecoder
from gateway.recording.can import DEFAULT_DEADBANDS, CanRecorder
from gateway.recording.can_curve import DEFAULT_CURVE_ERRORS, CurveCanRecorder
from gateway.recording.curve import EARTH_RADIUS_M, path_simplifier
from gateway.recording.gps import GpsRecorder, distance_m
from gateway.recording.gps_curve import CurveGpsRecorder
from sim.route import list_routes, load_route
from sim.truck import Truck

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "nmea"
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180
T0_MS = 1_760_000_000_000
DEFAULTS = GpsSampling(mode="thresholds")  # the threshold policy at its default thresholds

Sample = tuple[float, Fix]  # (time s, fix)


@dataclass
class Trace:
    name: str
    kind: str  # real / highway / city
    samples: list[Sample]
    km: float


# --------------------------------------------------------------------------- traces


def capture_traces() -> list[Trace]:
    """Moving stretches of the captures, split where the receiver's time jumps."""
    out: list[Trace] = []
    for path in sorted(DATA.glob("*.log")):
        dec = NmeaDecoder()
        fixes = [f for f in dec.feed(path.read_bytes(), 0.0) + dec.flush()
                 if f.utc_ms is not None]
        parts: list[list[Sample]] = [[]]
        for f in fixes:
            assert f.utc_ms is not None
            t = f.utc_ms / 1000
            if parts[-1] and not 0 < t - parts[-1][-1][0] <= 10:
                parts.append([])  # a capture spliced from several sessions
            parts[-1].append((t, f))
        for i, samples in enumerate(parts):
            if any((f.speed_kmh or 0.0) > DEFAULTS.moving_speed_kmh for _, f in samples):
                out.append(Trace(f"{path.stem}#{i}", "real", samples, _km(samples)))
    return out


class Noise:
    """Receiver error: Gauss-Markov bias per axis plus white noise (metres, km/h)."""

    def __init__(self, rng: random.Random, sigma_m: float, tau_s: float) -> None:
        self.rng, self.sigma, self.tau = rng, sigma_m, tau_s
        self.bx = rng.gauss(0, sigma_m)
        self.by = rng.gauss(0, sigma_m)

    def fix(self, t: float, lat: float, lon: float, v_kmh: float, hd: float,
            dt: float = 1.0) -> Fix:
        rng = self.rng
        a = math.exp(-dt / self.tau)
        q = self.sigma * math.sqrt(1 - a * a)
        self.bx = a * self.bx + rng.gauss(0, q)
        self.by = a * self.by + rng.gauss(0, q)
        east, north = self.bx + rng.gauss(0, 0.5), self.by + rng.gauss(0, 0.5)
        lat2 = lat + north / M_PER_DEG
        lon2 = lon + east / (M_PER_DEG * math.cos(math.radians(lat)))
        v = v_kmh + rng.gauss(0, 0.3) if v_kmh > 1 else abs(rng.gauss(0, 0.3))
        course = (hd + rng.gauss(0, 1.0)) % 360 if v_kmh > 6 else rng.uniform(0, 360)
        utc = T0_MS + round(t * 1000)
        return Fix(utc % 86_400_000, utc, True, 3, lat2, lon2, 100.0, max(v, 0.0), course, 10,
                   0.9)


def sim_trace(route: str, seconds: int, seed: int) -> Trace:
    r = load_route(route)
    city = "port" in route
    truck = Truck(r, seed=seed)
    noise = Noise(random.Random(seed), 3.5 if city else 2.0, 20.0 if city else 30.0)
    samples: list[Sample] = []
    km, prev = 0.0, None
    for t in range(seconds):
        st = truck.step(1.0)
        samples.append((float(t), noise.fix(t, st.lat, st.lon, st.speed_kmh, st.heading_deg)))
        if prev is not None:
            km += distance_m(prev[0], prev[1], st.lat, st.lon) / 1000
        prev = (st.lat, st.lon)
    return Trace(route, "city" if city else "highway", samples, km)


def winding_trace(seconds: int, seed: int, hz: int = 1) -> Trace:
    rng = random.Random(seed)
    noise = Noise(random.Random(seed + 1), 2.0, 30.0)
    lat, lon, hd, v = 49.0, 8.0, 30.0, 85.0
    curvature, left = 0.0, 0.0  # 1/m, s left in this piece
    samples: list[Sample] = []
    km, dt = 0.0, 1.0 / hz
    for i in range(seconds * hz):
        t = i * dt
        if left <= 0:
            left = rng.uniform(20, 90)
            curvature = rng.choice((0.0, 1.0, -1.0)) / rng.uniform(600, 3000)
            v = rng.uniform(80, 90)
        left -= dt
        samples.append((t, noise.fix(t, lat, lon, v, hd, dt)))
        d = v / 3.6 * dt
        hd = (hd + math.degrees(d * curvature)) % 360
        lat += d * math.cos(math.radians(hd)) / M_PER_DEG
        lon += d * math.sin(math.radians(hd)) / (M_PER_DEG * math.cos(math.radians(lat)))
        km += d / 1000
    name = "winding-highway" + (f"-{hz}Hz" if hz != 1 else "")
    return Trace(name, "highway", samples, km)


def _km(samples: list[Sample]) -> float:
    pos = [(f.lat, f.lon) for _, f in samples if f.lat is not None and f.lon is not None]
    return sum(distance_m(*a, *b) for a, b in itertools.pairwise(pos)) / 1000


# --------------------------------------------------------------------------- policies

Policy = Callable[[list[Sample]], tuple[list[Sample], int]]


def thresholds(cfg: GpsSampling) -> Policy:
    def run(samples: list[Sample]) -> tuple[list[Sample], int]:
        rec = GpsRecorder(cfg)
        return [(t, f) for t, f in samples if rec.offer(f, t) is not None], 0
    return run


def curve(cfg: GpsSampling) -> Policy:
    def run(samples: list[Sample]) -> tuple[list[Sample], int]:
        rec = CurveGpsRecorder(cfg)
        path: list[Sample] = []
        for t, f in samples:
            path += [(p.t_s, p.fix) for p in rec.offer(f, t) if not p.provisional]
        path += [(p.t_s, p.fix) for p in rec.flush()]
        return sorted(path, key=lambda s: s[0]), rec.provisional
    return run


# --------------------------------------------------------------------------- measures


@dataclass
class Row:
    trace: Trace
    policy: str
    points: int
    provisional: int
    sed: list[float]
    sed_moving: list[float]
    dv: list[float]
    dv_moving: list[float]


def measure(trace: Trace, name: str, policy: Policy) -> Row:
    path, provisional = policy(trace.samples)
    pos = [(t, f) for t, f in path if f.lat is not None and f.lon is not None]
    times = [t for t, _ in pos]
    sed: list[float] = []
    moving: list[float] = []
    dv: list[float] = []
    dv_moving: list[float] = []
    for t, f in trace.samples:
        if f.lat is None or f.lon is None or not times or t < times[0] or t > times[-1]:
            continue
        j = bisect.bisect_right(times, t) - 1
        a = pos[j][1]
        b = pos[j + 1][1] if j + 1 < len(pos) else a
        tb = times[j + 1] if j + 1 < len(pos) else times[j]
        k = (t - times[j]) / (tb - times[j]) if tb > times[j] else 0.0
        assert a.lat is not None
        assert a.lon is not None
        assert b.lat is not None
        assert b.lon is not None
        lat, lon = a.lat + k * (b.lat - a.lat), a.lon + k * (b.lon - a.lon)
        kx = M_PER_DEG * math.cos(math.radians(a.lat))
        e = math.hypot((f.lat - lat) * M_PER_DEG, (f.lon - lon) * kx)
        sed.append(e)
        is_moving = (f.speed_kmh or 0.0) > DEFAULTS.moving_speed_kmh
        if is_moving:
            moving.append(e)
        if f.speed_kmh is not None and a.speed_kmh is not None and b.speed_kmh is not None:
            dv.append(abs(a.speed_kmh + k * (b.speed_kmh - a.speed_kmh) - f.speed_kmh))
            if is_moving:
                dv_moving.append(dv[-1])
    return Row(trace, name, len(path), provisional, sed, moving, dv, dv_moving)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def print_rows(rows: list[Row]) -> None:
    head = (f"{'trace':<22}{'kind':<8}{'policy':<17}{'fixes':>6}{'km':>7}{'h':>6}{'pts':>6}"
            f"{'pts/km':>7}{'pts/h':>7}{'SEDmax':>7}{'p95':>6}{'mov':>6}{'dVmax':>7}{'p95':>6}"
            f"{'mov':>6}"
            f"{'prov':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        hours = (r.trace.samples[-1][0] - r.trace.samples[0][0]) / 3600
        km = r.trace.km
        print(f"{r.trace.name[:21]:<22}{r.trace.kind:<8}{r.policy:<17}{len(r.trace.samples):>6}"
              f"{km:>7.1f}{hours:>6.2f}{r.points:>6}"
              f"{r.points / km if km >= 1 else math.nan:>7.1f}"
              f"{r.points / hours if hours >= 0.1 else math.nan:>7.0f}"
              f"{max(r.sed, default=0):>7.1f}{pct(r.sed, 0.95):>6.1f}"
              f"{max(r.sed_moving, default=0):>6.1f}"
              f"{max(r.dv, default=0):>7.1f}{pct(r.dv, 0.95):>6.1f}"
              f"{max(r.dv_moving, default=0):>6.1f}{r.provisional:>6}")


def throughput(traces: list[Trace], cfg: GpsSampling, min_fixes: int = 300_000) -> None:
    for name, make in (("curve", lambda: CurveGpsRecorder(cfg)),
                       ("thresholds", lambda: GpsRecorder(DEFAULTS))):
        n, cpu = 0, 0.0
        while n < min_fixes:
            for tr in traces:
                rec = make()
                offer = rec.offer
                t0 = time.process_time()
                for t, f in tr.samples:
                    offer(f, t)
                cpu += time.process_time() - t0
                n += len(tr.samples)
        print(f"throughput {name:<10}: {n / cpu:>9,.0f} fixes/s on one core ({n} fixes)")


def memory(bound: float) -> None:
    """State held by one open window after n samples on a straight line (no time-out)."""
    for n in (1_000, 100_000):
        tracemalloc.start()
        win = path_simplifier(bound)
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            win.add(float(i), (48.0 + i * 2e-4, 11.0))
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        print(f"memory: one window open over {n:>7} samples: +{held} bytes since it was created")


def can_section(route: str, seconds: int, seed: int) -> None:
    """Engine signals of the sim truck: EEC1 (rpm) at 50 Hz, CCVS1 (speed) and LFE (fuel
    rate) at 10 Hz, with sensor noise; deadbands (today's defaults) against the window."""
    truck = Truck(load_route(route), seed=seed)
    rng = random.Random(seed)
    msgs: list[tuple[int, dict[str, float]]] = []
    for i in range(seconds * 50):
        st = truck.step(0.02)
        ts = i * 20
        if not st.ignition:
            continue
        msgs.append((ts, {"engine_speed_rpm": round((st.engine_rpm + rng.gauss(0, 3)) * 8) / 8}))
        if i % 5 == 0:
            msgs.append((ts + 1, {
                "vehicle_speed_kmh": round(max(0.0, st.speed_kmh + rng.gauss(0, 0.2)) * 256) / 256,
                "fuel_rate_lph": round(max(0.0, st.fuel_rate_lph + rng.gauss(0, 0.2)) * 20) / 20}))
    hours = seconds / 3600
    print(f"CAN, {route}, {hours:g} h, {len(msgs)} messages (EEC1 50 Hz, CCVS1 + LFE 10 Hz):")
    print("  (rpm / km/h / L/h: error bounds; db: that signal keeps its deadband)")
    print(f"{'policy':<30}{'events':>7}{'ev/h':>7}" + "".join(
        f"{n[:18]:>20}" for n in ("engine_speed_rpm", "vehicle_speed_kmh", "fuel_rate_lph")))
    signals = ("engine_speed_rpm", "vehicle_speed_kmh", "fuel_rate_lph")
    variants: list[dict[str, float]] = [dict(DEFAULT_CURVE_ERRORS),
                                        {**DEFAULT_CURVE_ERRORS, "fuel_rate_lph": 5.0},
                                        {**DEFAULT_CURVE_ERRORS, "fuel_rate_lph": 20.0}]
    runs: list[tuple[str, Callable[[], CanRecorder | CurveCanRecorder]]] = [
        ("deadbands " + "/".join(f"{DEFAULT_DEADBANDS[n]:g}" for n in signals),
         lambda: CanRecorder(CanSampling()))]
    for bounds in variants:
        label = "/".join(f"{bounds[n]:g}" if n in bounds else "db" for n in signals)
        runs.append((f"curve {label}", functools.partial(CurveCanRecorder, CanSampling(),
                                                         bounds)))
    for name, make in runs:
        rec = make()
        events: list[Event] = []
        for ts, values in msgs:
            got = rec.on_signals(ts, 0, values)
            if isinstance(got, list):
                events += got
            elif got is not None:
                events.append(got)
        if isinstance(rec, CurveCanRecorder):
            events += rec.flush()
        errs = [_signal_error(events, msgs, n) for n in signals]
        print(f"{name:<30}{len(events):>7}{len(events) / hours:>7.0f}"
              + "".join(f"{f'max {e[0]:.1f} p95 {e[1]:.1f}':>20}" for e in errs))


def _signal_error(events: list[Event], msgs: list[tuple[int, dict[str, float]]],
                  name: str) -> tuple[float, float]:
    pts = sorted((e.ts_ms, float(e.fields[name])) for e in events if name in e.fields)
    times = [t for t, _ in pts]
    errs: list[float] = []
    for ts, values in msgs:
        if name not in values or not times or ts < times[0] or ts > times[-1]:
            continue
        j = bisect.bisect_right(times, ts) - 1
        (ta, va) = pts[j]
        tb, vb = pts[j + 1] if j + 1 < len(pts) else pts[j]
        est = va + (vb - va) * (ts - ta) / (tb - ta) if tb > ta else va
        errs.append(abs(est - values[name]))
    return max(errs, default=0.0), pct(errs, 0.95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bound", type=float, default=10.0, help="max_error_m (m)")
    ap.add_argument("--speed-bound", type=float, default=5.0, help="max_speed_error_kmh")
    ap.add_argument("--tight-bound", type=float, default=4.0,
                    help="a second curve row at about the SED today's thresholds reach")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--can-seconds", type=int, default=1800, help="CAN section's drive")
    args = ap.parse_args()
    curve_cfg = dataclasses.replace(DEFAULTS, mode="curve", max_error_m=args.bound,
                                    max_speed_error_kmh=args.speed_bound)
    durations = {"a9-munich-nuremberg": 7200, "i80-reno-truckee": 5400,
                 "hamburg-port-loop": 3600}
    traces = capture_traces()
    traces += [sim_trace(r, durations.get(r, 3600), args.seed) for r in list_routes()]
    traces.append(winding_trace(3600, args.seed))
    traces.append(winding_trace(1200, args.seed, hz=10))
    policies: list[tuple[str, Policy]] = [
        ("thresholds", thresholds(DEFAULTS)),
        (f"curve {args.bound:g}m/{args.speed_bound:g}", curve(curve_cfg)),
        (f"curve {args.bound:g}m/off", curve(dataclasses.replace(curve_cfg,
                                                                 max_speed_error_kmh=0))),
        (f"curve {args.tight_bound:g}m/{args.speed_bound:g}",
         curve(dataclasses.replace(curve_cfg, max_error_m=args.tight_bound))),
    ]
    rows = [measure(tr, name, p) for tr in traces for name, p in policies]
    print_rows(rows)
    print()
    for kind in ("highway", "city"):
        sel = [r for r in rows if r.trace.kind == kind]
        old = sum(r.points for r in sel if r.policy == "thresholds")
        for name, _ in policies[1:]:
            new = sum(r.points for r in sel if r.policy == name)
            prov = sum(r.provisional for r in sel if r.policy == name)
            print(f"{kind:<8}: thresholds {old:>5} points, {name:<14} {new:>4} points: "
                  f"{old / max(new, 1):5.2f}x fewer ({prov} provisional besides)")
    print()
    sims = [t for t in traces if t.kind != "real"]
    throughput(sims, curve_cfg)
    memory(args.bound)
    print()
    for route in ("a9-munich-nuremberg", "hamburg-port-loop"):
        can_section(route, args.can_seconds, args.seed)


if __name__ == "__main__":
    main()
