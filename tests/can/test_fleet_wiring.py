"""The derived fleet events wired into the agent: Ingest, the buffer's state, [events].

In process, with real parts: the simulated truck's frames and NMEA go through the
gateway's own decoders into :class:`gateway.ingest.Ingest`; the state blob goes into a
real SQLite buffer file; configs are parsed by the real loader. Through a real agent
process: tests/sim/test_e2e_fleet.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from buffer.schema import STATE_MAX_BYTES
from buffer.store import SqliteStore
from config import EX_CONFIG, BufferConfig, load_config
from config.errors import ConfigError, StoreError
from config.events import Event, Priority
from config.loader import check_config
from config.schema import EventsConfig
from gateway.cli import main
from tests.can.fleet_drive import EVENTS, drive_in_process

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
