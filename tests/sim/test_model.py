"""The truck model and the shipped routes: deterministic, physically consistent."""

from __future__ import annotations

import itertools

import pytest

from sim.route import RouteError, haversine_m, list_routes, load_route
from sim.tacho import Tacho, WorkingState
from sim.truck import TANK_L, Phase, Truck, TruckParams, TruckState


def drive(truck: Truck, seconds: int, dt: float = 1.0) -> list[TruckState]:
    return [truck.step(dt) for _ in range(int(seconds / dt))]


def test_shipped_routes_load_and_look_like_roads() -> None:
    names = list_routes()
    assert len(names) >= 3
    for name in names:
        r = load_route(name)
        assert r.length_m > 5_000
        # road-like: no hop between consecutive waypoints longer than 20 km
        for a, b in zip(r.points, r.points[1:], strict=False):
            assert haversine_m(a.lat, a.lon, b.lat, b.lon) < 20_000
        assert r.stops, name


def test_reversed_route_is_the_same_road_backwards() -> None:
    r = load_route("a9-munich-nuremberg")
    back = r.reversed()
    assert back.points[0].lat == r.points[-1].lat
    assert back.length_m == pytest.approx(r.length_m)
    assert {s.at for s in back.stops} == {len(r.points) - 1 - s.at for s in r.stops}


def test_unknown_route_names_the_shipped_ones() -> None:
    with pytest.raises(RouteError, match="hamburg-port-loop"):
        load_route("no-such-route")


def test_same_seed_same_drive_other_seed_other_drive() -> None:
    route = load_route("hamburg-port-loop")
    a = drive(Truck(route, seed=3), 900)
    b = drive(Truck(route, seed=3), 900)
    c = drive(Truck(route, seed=4), 900)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", list_routes())
def test_two_hours_of_driving_are_consistent(name: str) -> None:
    route = load_route(name)
    truck = Truck(route, seed=11, params=TruckParams(fault_every_s=300))
    states = drive(truck, 2 * 3600)
    max_limit = max(p.limit_kmh for p in route.points)
    assert max(s.speed_kmh for s in states) > 0.6 * max_limit  # it really drives
    assert all(s.speed_kmh <= max_limit + 5 for s in states)
    phases = {s.phase for s in states}
    assert {Phase.PARKED, Phase.WARMUP, Phase.DRIVING} <= phases
    for prev, cur in itertools.pairwise(states):
        assert cur.odometer_km >= prev.odometer_km
        assert cur.total_fuel_l >= prev.total_fuel_l
        assert cur.engine_hours_h >= prev.engine_hours_h
        if not cur.ignition:
            assert cur.engine_rpm == 0 and cur.speed_kmh == 0 and cur.fuel_rate_lph == 0
            if not prev.ignition:
                assert cur.engine_hours_h == prev.engine_hours_h
        else:
            assert 550 <= cur.engine_rpm <= 2100
        # fuel level falls exactly with fuel used, except at a fuel stop (refill to 95 %)
        if cur.fuel_level_pct != 95.0:
            drop_l = (prev.fuel_level_pct - cur.fuel_level_pct) / 100 * TANK_L
            assert drop_l == pytest.approx(cur.total_fuel_l - prev.total_fuel_l, abs=1e-6)
    km = states[-1].odometer_km - states[0].odometer_km
    litres = states[-1].total_fuel_l - states[0].total_fuel_l
    assert 15 < litres / km * 100 < 80  # L/100 km of a loaded truck, idling included
    assert max(s.coolant_c for s in states) > 80
    assert states[0].coolant_c < 20
    episodes = [s.dtcs for s in states if s.dtcs]
    assert episodes, "no DTC episode in two hours with fault_every_s=300"
    assert any(len(d) >= 2 for d in episodes)  # several codes: they travel by BAM


def test_stops_halt_the_truck_with_the_engine_idling() -> None:
    truck = Truck(load_route("hamburg-port-loop"), seed=2)
    states = drive(truck, 1800)
    dwell = [s for s in states if s.phase is Phase.DWELL]
    assert dwell
    assert all(s.speed_kmh == 0 and s.engine_rpm > 500 for s in dwell)


def test_inject_fault_activates_codes_with_lamps() -> None:
    truck = Truck(load_route("hamburg-port-loop"), seed=5, params=TruckParams(fault_every_s=0))
    drive(truck, 60)
    assert truck.state.dtcs == ()
    truck.inject_fault(3, duration_s=30)
    s = truck.step(1.0)
    assert len(s.dtcs) == 3
    assert any(s.lamps.values())
    assert all(d.oc >= 1 for d in s.dtcs)
    drive(truck, 40)
    assert truck.state.dtcs == ()


# --------------------------------------------------------------------------- fleet data


def test_tacho_follows_the_drive_card_states_and_warnings() -> None:
    t = Tacho("DF000000000000101", card_out_after_s=60)
    assert t.step(1, False, 0).card1 is False  # parked before the shift: no card, rest
    assert t.state.driver1 is WorkingState.REST
    s = t.step(1, True, 0)  # ignition on: card in, standing with the engine on = work
    assert (s.card1, s.driver1, s.driver1_id) == (True, WorkingState.WORK, "DF000000000000101")
    assert t.step(1, True, 50).driver1 is WorkingState.DRIVE
    assert t.state.motion
    s = t.step(30, False, 0)
    assert (s.card1, s.driver1) == (True, WorkingState.AVAILABLE)
    s = t.step(30, False, 0)  # parked 60 s: the card comes out
    assert (s.card1, s.driver1, s.driver1_id) == (False, WorkingState.REST, None)


def test_tacho_driving_time_and_overspeed() -> None:
    t = Tacho("X")
    t.step(4 * 3600 + 14 * 60, True, 80)
    assert t.state.time_state1 == 0
    assert t.step(60, True, 80).time_state1 == 1  # 15 min before 4.5 h
    assert t.step(15 * 60, True, 80).time_state1 == 2  # 4.5 h reached
    t.step(44 * 60, True, 0)
    assert t.state.time_state1 == 2  # a 44 min break is not a break
    assert t.step(60, True, 0).time_state1 == 0  # 45 min: the count starts over
    assert not t.step(59, True, 95).overspeed
    assert t.step(1, True, 95).overspeed  # a minute above 90 km/h
    assert not t.step(1, True, 85).overspeed


def test_truck_fleet_signals_follow_the_drive() -> None:
    truck = Truck(load_route("hamburg-port-loop"), seed=2, params=TruckParams(fault_every_s=0))
    states = drive(truck, 1800)
    first = states[0]
    assert not first.tacho.card1  # parked at the start
    driving = [s for s in states if s.speed_kmh > 20]
    assert driving
    assert all(s.tacho.driver1 is WorkingState.DRIVE and s.tacho.card1 for s in driving)
    assert all(s.gear >= 1 for s in driving)
    # AdBlue falls slowly with the diesel burnt: ~5 % of it, from an 80 L tank
    burnt = states[-1].total_fuel_l - first.total_fuel_l
    assert first.def_level_pct - states[-1].def_level_pct == pytest.approx(
        burnt * 0.05 / 80 * 100, rel=1e-6)
    assert 0 < first.def_level_pct - states[-1].def_level_pct < 5
    assert all(s.battery_v > 27 for s in states if s.ignition)
    moved = states[-1].odometer_km - first.odometer_km
    assert first.service_km - states[-1].service_km == pytest.approx(moved)
    assert states[-1].trip_km <= moved + 1e-9
