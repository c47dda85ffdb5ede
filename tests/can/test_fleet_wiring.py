"""The derived fleet events wired into the agent: Ingest, the buffer's state, [events].

In process, with real parts: the simulated truck's frames and NMEA go through the
gateway's own decoders into :class:`gateway.ingest.Ingest`; the state blob goes into a
real SQLite buffer file; configs are parsed by the real loader. Through a real agent
process: tests/sim/test_e2e_fleet.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from buffer.api import Lane
from buffer.schema import STATE_MAX_BYTES
from buffer.store import SqliteStore
from config import EX_CONFIG, BufferConfig, MetricsConfig, MqttConfig, TruckConfig, load_config
from config.errors import ConfigError, StoreError
from config.events import Event, Priority, decode_body
from config.loader import check_config
from config.schema import EventsConfig
from drivers.j1939 import J1939Decoder, SignalUpdate, make_id
from gateway.app import FLEET_STATE_KEY, Agent, Phase
from gateway.cli import main
from gateway.sdnotify import Notifier
from sim.faults import FaultPlan, parse_fault
from sim.j1939_out import SA_TACHO, Schedule
from sim.truck import FAST_CORNER_MS2, SOLO_LAUNCH_MS2, Truck, TruckParams
from tests.can.fleet_drive import (
    CARD_OUT_AT_S,
    CARD_OUT_FOR_S,
    CURVE_AT_M,
    CURVE_R_M,
    EVENTS,
    HARSH_BRAKE_AT,
    LAT,
    LON0,
    START_PARKED_S,
    T0,
    WARMUP_S,
    drive_in_process,
    short_route,
    short_truck,
)

DERIVED = {"trip", "idle", "harsh", "driver"}


def of(events: list[Event], etype: str) -> list[Event]:
    return [e for e in events if e.type == etype]


def test_ingest_derives_trip_idle_harsh_and_driver_from_a_simulated_drive() -> None:
    d = drive_in_process()
    (trip,) = of(d.events, "trip")
    f = trip.fields
    assert f["distance_source"] == "odometer"
    # the model's odometer over the leg; VDHR carries 5 m steps
    assert f["distance_km"] == pytest.approx(d.odo_off_km - d.odo_on_km, abs=0.011)
    assert f["idle_s"] >= 30 and f["driving_s"] >= 60
    assert 45 <= f["max_speed_kmh"] <= 55
    assert f["fuel_used_l"] > 0
    assert f["start_ts"] < trip.ts_ms
    (idle,) = of(d.events, "idle")  # the 40 s warm-up (idle_min_s = 20)
    assert idle.fields["duration_s"] == pytest.approx(40, abs=1.5)
    assert idle.fields["start_ts"] == f["start_ts"]
    brakes = [h for h in of(d.events, "harsh") if h.fields["kind"] == "braking"]
    assert d.truck.harsh_brakes == 1
    assert len(brakes) == 1
    assert brakes[0].fields["peak_ms2"] == pytest.approx(4.5, abs=0.3)
    drivers = of(d.events, "driver")
    assert {(e.fields["driver"], e.fields.get("card_present"), e.fields.get("working_state"))
            for e in drivers} >= {(1, True, 2), (1, True, 3)}  # work, then drive
    assert all(e.fields["src"] == 0xEE for e in drivers)  # the tachograph
    # the derived events are critical: evicted last
    assert {e.priority for e in d.events if e.type in DERIVED} == {Priority.CRITICAL}


T0_MS = round(T0.timestamp() * 1000)
DEPART_S = START_PARKED_S + WARMUP_S  # model time the truck pulls away
M_PER_DEG_LON = 111_320.0 * 0.5948  # at 53.54 deg north, as fleet_drive.short_route


def driver1(events: list[Event]) -> list[tuple[float, bool, int]]:
    """(seconds into the drive, card present, working state) of driver 1's events."""
    return [((e.ts_ms - T0_MS) / 1000, e.fields["card_present"], e.fields["working_state"])
            for e in of(events, "driver") if e.fields["driver"] == 1]


def test_the_drive_has_a_harsh_acceleration_a_harsh_cornering_and_a_card_removal() -> None:
    """The optional scenarios of sim/truck.py that tests/can/fleet_drive.py switches on."""
    d = drive_in_process()
    assert (d.truck.hard_launches, d.truck.fast_corners, d.truck.card_removals) == (1, 1, 1)
    harsh = of(d.events, "harsh")
    assert [h.fields["kind"] for h in harsh] == ["acceleration", "cornering", "braking"]
    accel, corner, _brake = harsh
    # the solo tractor pulls away hard at the end of the warm-up
    assert (accel.ts_ms - T0_MS) / 1000 == pytest.approx(DEPART_S + 1, abs=1.0)
    assert accel.fields["peak_ms2"] == pytest.approx(SOLO_LAUNCH_MS2, abs=0.05)
    assert 3.0 <= accel.fields["duration_s"] <= 7.0  # until 3 m/s short of 50 km/h
    assert accel.fields["speed_kmh"] < 10
    assert accel.fields["lon"] - LON0 < 20 / M_PER_DEG_LON  # at the start
    # the 45 m curve taken at 43 km/h: v^2 / r = 3.2 m/s^2, at the curve, about 6 s long
    v_kmh = math.sqrt(FAST_CORNER_MS2 * CURVE_R_M) * 3.6
    assert corner.fields["peak_ms2"] == pytest.approx(FAST_CORNER_MS2, abs=0.1)
    assert corner.fields["speed_kmh"] == pytest.approx(v_kmh, abs=1.0)
    assert 4.0 <= corner.fields["duration_s"] <= 7.0  # the 71 m arc at 12 m/s
    east_m = (corner.fields["lon"] - LON0) * M_PER_DEG_LON
    assert CURVE_AT_M - 50 <= east_m <= CURVE_AT_M and corner.fields["lat"] == pytest.approx(
        LAT, abs=1e-4)
    # the card out in the warm-up (rest), back in (work), then driving
    got = driver1(d.events)
    assert [(c, w) for _t, c, w in got] == [(True, 2), (False, 0), (True, 2), (True, 3)]
    assert got[1][0] == pytest.approx(CARD_OUT_AT_S, abs=0.1)
    assert got[2][0] == pytest.approx(CARD_OUT_AT_S + CARD_OUT_FOR_S, abs=0.1)
    assert got[3][0] == pytest.approx(DEPART_S, abs=0.5)


def test_the_scenarios_on_demand_through_the_fault_plan_on_a_laden_truck() -> None:
    """``--fault corner@50 --fault card-out@20+6``: the same events, at the asked times;
    a laden 30 t truck pulls away at 0.9 m/s^2 at most: no harsh acceleration."""
    assert (parse_fault("corner@5").duration_s, parse_fault("card-out@5").duration_s) == (0, 30)
    truck = Truck(short_route(), seed=11, params=TruckParams(
        start_parked_s=START_PARKED_S, warmup_s=WARMUP_S, fault_every_s=0,
        harsh_brake_at=HARSH_BRAKE_AT))
    d = drive_in_process(truck=truck, faults=FaultPlan.parse(["card-out@20+6", "corner@50"]))
    assert (truck.hard_launches, truck.fast_corners, truck.card_removals) == (0, 1, 1)
    harsh = of(d.events, "harsh")
    assert [h.fields["kind"] for h in harsh] == ["cornering", "braking"]
    assert harsh[0].fields["peak_ms2"] == pytest.approx(FAST_CORNER_MS2, abs=0.1)
    got = driver1(d.events)
    assert [(c, w) for _t, c, w in got] == [(True, 2), (False, 0), (True, 2), (True, 3)]
    assert [t for t, _c, _w in got[1:3]] == pytest.approx([20.0, 26.0], abs=0.1)


def test_a_card_pulled_with_the_ignition_on_leaves_tco1_and_di() -> None:
    """TCO1 says no card (rest) at once; DI goes on with an empty driver 1 field, sent
    on the change: the status file's driver is gone."""
    truck = short_truck()
    sched = Schedule(request_every_s=0)
    dec = J1939Decoder()
    t, card, before = 0.0, [], None
    while t < CARD_OUT_AT_S + 2.0:  # bounded: 28 model seconds
        t += 0.01
        state = truck.step(0.01)
        for f in sched.due(t, state):
            d = dec.feed(round(t * 1000), f.arbitration_id, f.data)
            if isinstance(d, SignalUpdate) and d.sa == SA_TACHO and \
                    "driver1_card_present" in d.values:
                card.append((t, d.values["driver1_card_present"]))
        if before is None and t >= CARD_OUT_AT_S - 0.5:
            before = dec.identity.drivers_dict()
    assert before == {"EE": {"driver1": truck.tacho.driver_id}}
    assert truck.card_removals == 1
    assert card[-1][1] is False
    assert min(ts for ts, present in card if not present) == pytest.approx(CARD_OUT_AT_S, abs=0.1)
    assert dec.identity.drivers_dict() == {"EE": {}}


def test_events_disabled_records_none_of_them() -> None:
    d = drive_in_process(EventsConfig(enabled=False))
    assert not {e.type for e in d.events} & DERIVED
    assert {"gps", "engine"} <= {e.type for e in d.events}


# --------------------------------------------------------------------------- buffer state


async def test_state_blob_survives_a_reopen_and_can_be_deleted(tmp_path: Path) -> None:
    cfg = BufferConfig(path=tmp_path / "b.db", commit_interval_ms=10)
    blob = json.dumps({"start_ms": 1, "odo0": 2.5}).encode()
    async with await SqliteStore.open(cfg) as store:
        assert await store.get_state("fleet_events") is None
        await store.put_state("fleet_events", blob)
        await store.put_state("other", b"\x00\x01")
        await store.append(Event("gps", 1, {"fix": 0}))
    async with await SqliteStore.open(cfg) as store:
        assert await store.get_state("fleet_events") == blob
        assert await store.get_state("other") == b"\x00\x01"
        await store.put_state("fleet_events", None)
        assert await store.get_state("fleet_events") is None
        with pytest.raises(StoreError, match="at most"):
            await store.put_state("big", b"x" * (STATE_MAX_BYTES + 1))
        assert (await store.stats()).pending == 1  # state rows are not events


async def test_state_table_is_added_to_a_file_that_lacks_it(tmp_path: Path) -> None:
    cfg = BufferConfig(path=tmp_path / "old.db", commit_interval_ms=10)
    async with await SqliteStore.open(cfg) as store:
        await store.append(Event("gps", 1, {"fix": 0}))
    conn = sqlite3.connect(cfg.path)  # a buffer written before the state table
    try:
        conn.execute("DROP TABLE state")
        conn.commit()
    finally:
        conn.close()
    async with await SqliteStore.open(cfg) as store:
        assert await store.get_state("fleet_events") is None
        await store.put_state("fleet_events", b"{}")
        assert await store.get_state("fleet_events") == b"{}"
        assert (await store.stats()).pending == 1


# --------------------------------------------------------------------------- [events]

BASE = 'truck_id = "T-1"\n[mqtt]\nhost = "127.0.0.1"\nport = 1883\n[can]\n'


def test_events_section_defaults_and_values(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(BASE)
    assert load_config(path).events == EventsConfig()
    path.write_text(BASE + "[events]\nenabled = false\nidle_min_s = 60\nstate_interval_s = 5\n")
    ev = load_config(path).events
    assert (ev.enabled, ev.idle_min_s, ev.state_interval_s) == (False, 60.0, 5.0)


@pytest.mark.parametrize(("line", "key"), [
    ("state_interval_s = 0", "events.state_interval_s"),
    ("trip_end_timeout_s = 0", "events.trip_end_timeout_s"),
    ("harsh_brake_ms2 = 0", "events.harsh_brake_ms2"),
    ("harsh_accel_ms2 = 25", "events.harsh_accel_ms2"),
    ("standstill_kmh = -1", "events.standstill_kmh"),
    ("idle_min_s = 100000", "events.idle_min_s"),
    ("enabled = 1", "events.enabled"),
    ("idle_min = 300", "events.idle_min"),
])
def test_events_out_of_bounds_name_file_and_key(tmp_path: Path, line: str, key: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.toml"
    path.write_text(BASE + f"[events]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(ln.startswith(f"{path}: {key}: ") for ln in info.value.lines()), \
        info.value.lines()
    assert main(["check-config", str(path)]) == EX_CONFIG
    assert key in capsys.readouterr().err


def test_state_interval_not_below_the_trip_timeout_warns(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(BASE + "[events]\nstate_interval_s = 120\ntrip_end_timeout_s = 60\n")
    _cfg, found = check_config(path)
    assert any("events.state_interval_s" in w for w in found), found
    path.write_text(BASE + "[events]\nstate_interval_s = 10\n")
    assert not any("events." in w for w in check_config(path)[1])


def test_the_example_config_documents_every_events_key() -> None:
    text = (Path(__file__).resolve().parents[2] / "config" / "example.toml").read_text()
    section = text.split("[events]", 1)[1].split("\n[", 1)[0]
    for name in EventsConfig.__dataclass_fields__:
        assert f"\n{name} = " in section, name
    assert EVENTS.trip_end_timeout_s < EventsConfig().trip_end_timeout_s


# --------------------------------------------------------------------------- the agent

EEC1_650RPM = (make_id(61444, 0), bytes.fromhex("FFFFFF5014FFFFFF"))  # 5200 * 0.125 rpm


def vdhr(km: float) -> tuple[int, bytes]:
    """VDHR from the cab (SA 0x17): total distance in 5 m steps, trip distance n/a."""
    return make_id(65217, 0x17), round(km / 0.005).to_bytes(4, "little") + b"\xff" * 4


def agent_cfg(tmp_path: Path) -> TruckConfig:
    with socket.socket() as s:  # a loopback port nobody listens on: the uplink retries
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return TruckConfig(
        truck_id="T-1", mqtt=MqttConfig(host="127.0.0.1", port=port),
        buffer=BufferConfig(path=tmp_path / "buffer.db", commit_interval_ms=10),
        events=EventsConfig(trip_end_timeout_s=2.0, state_interval_s=1.0),
        metrics=MetricsConfig(state_file=tmp_path / "state.json", interval_s=1.0))


async def until(cond: Callable[[], bool], what: str, limit_s: float = 15.0) -> None:
    for _ in range(round(limit_s / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} not within {limit_s} s")


def feed_frames(agent: Agent, *frames: tuple[int, bytes]) -> None:
    dec = J1939Decoder()
    agent.ingest.on_can([d for can_id, data in frames
                         if (d := dec.feed(0, can_id, data)) is not None])


async def started(cfg: TruckConfig) -> tuple[Agent, asyncio.Task[int]]:
    agent = Agent(cfg, notifier=Notifier(None))
    task = asyncio.create_task(agent.run(), name="agent")
    await until(lambda: agent.phase is Phase.RUNNING or task.done(), "the agent running")
    assert not task.done(), task
    return agent, task


async def stopped(agent: Agent, task: asyncio.Task[int]) -> None:
    agent.request_stop()
    assert await asyncio.wait_for(task, 15.0) == 0


async def test_agent_keeps_the_open_trip_across_a_clean_restart(tmp_path: Path) -> None:
    cfg = agent_cfg(tmp_path)
    agent, task = await started(cfg)
    feed_frames(agent, EEC1_650RPM, vdhr(1000.0))  # ignition on, odometer 1000 km
    first = agent.ingest.fleet_state()
    assert first is not None
    await stopped(agent, task)  # SIGTERM's path: the open trip is saved before the close
    async with await SqliteStore.open(cfg.buffer) as store:
        blob = await store.get_state(FLEET_STATE_KEY)
    assert blob is not None
    saved = json.loads(blob)
    assert (saved["start_ms"], saved["odo0"]) == (first["start_ms"], 1000.0)

    agent, task = await started(cfg)  # the next run continues it
    state = agent.ingest.fleet_state()
    assert state is not None and state["start_ms"] == first["start_ms"]
    feed_frames(agent, EEC1_650RPM, vdhr(1002.5))  # 2.5 km later; then the bus falls silent
    await until(lambda: agent.ingest.fleet_state() is None, "the trip's end (2 s timeout)")
    await until(lambda: agent._fleet_saved is None, "the end written to the state table")
    await stopped(agent, task)
    async with await SqliteStore.open(cfg.buffer) as store:
        assert await store.get_state(FLEET_STATE_KEY) is None  # ended: nothing to continue
        events = []
        while (b := await store.lease(Lane.BACKFILL, 500, 1 << 20)) is not None:
            events += [decode_body(e.body) for e in b.events]
    (trip,) = [e for e in events if e["type"] == "trip"]
    assert trip["start_ts"] == first["start_ms"]
    assert trip["distance_km"] == pytest.approx(2.5)
    assert trip["distance_source"] == "odometer"


async def test_agent_starts_afresh_from_a_broken_saved_trip(tmp_path: Path) -> None:
    cfg = agent_cfg(tmp_path)
    async with await SqliteStore.open(cfg.buffer) as store:
        await store.put_state(FLEET_STATE_KEY, b"{not json")
    agent, task = await started(cfg)
    assert agent.ingest.fleet_state() is None
    feed_frames(agent, EEC1_650RPM)  # a new trip starts as usual
    assert agent.ingest.fleet_state() is not None
    await stopped(agent, task)
    async with await SqliteStore.open(cfg.buffer) as store:
        blob = await store.get_state(FLEET_STATE_KEY)
    assert blob is not None and json.loads(blob)["odo0"] is None
