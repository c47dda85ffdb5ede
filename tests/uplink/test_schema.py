"""The consumer's kit holds: every payload the agent makes validates against docs/schema/.

Real payloads, no fixtures of hand-written JSON: a simulated truck (sim/truck.py) drives
its route; its NMEA epochs and J1939 frames go through the gateway's own decoders and
recording policies (:class:`gateway.ingest.Ingest`) into a real buffer; the leased events
are encoded by :mod:`gateway.wire` in both encodings, and the status comes from the
uplink's status builder. The samples in docs/samples/ and the AsyncAPI document are
checked too, and a few wrong payloads must fail.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
import zstandard
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from buffer.api import Lane, StoredEvent
from buffer.store import SqliteStore
from config import BufferConfig, CanSampling, MqttConfig, TruckConfig
from config.events import Event, encode_body, seq_gap_event
from drivers.j1939 import J1939Decoder
from drivers.nmea_epoch import NmeaDecoder
from gateway import wire
from gateway.clock import Clock, read_boot_id
from gateway.delivery_actions import UplinkStats
from gateway.ingest import Ingest
from gateway.ts_correct import Correction
from gateway.uplink import UplinkState
from gateway.uplink_status import StatusReport
from gateway.usage import UsageMeter
from sim import nmea_out
from sim.j1939_out import Schedule
from sim.route import load_route
from sim.runner import fix_of
from sim.truck import Truck, TruckParams
from tests.can.fleet_drive import drive_in_process

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "docs" / "schema"
SAMPLES = ROOT / "docs" / "samples"
T0 = dt.datetime(2026, 12, 1, 8, 0, 0, tzinfo=dt.UTC)


def _registry() -> Registry[Any]:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        doc = json.loads(path.read_text())
        Draft202012Validator.check_schema(doc)
        assert doc["$id"].endswith("/" + path.name), path
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validator(name: str) -> Draft202012Validator:
    doc = json.loads((SCHEMA_DIR / name).read_text())
    return Draft202012Validator(doc, registry=REGISTRY)


BATCH = validator("batch.schema.json")
STATUS = validator("status.schema.json")
FLEET_TYPES = ("trip", "idle", "harsh", "driver")


def errors(v: Draft202012Validator, obj: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(obj)]


# --------------------------------------------------------------------------- the truck


def drive(seconds: float, *, can_mode: Literal["deadbands", "curve"] = "deadbands") -> list[Event]:
    """Events of a simulated truck over ``seconds`` of model time, as the agent records them.

    Truck model -> NMEA epochs (1 Hz, with a tunnel) and J1939 frames (with DM1 faults) ->
    the gateway's decoders -> Ingest (clock, recording policies, stamping).
    """
    now = {"s": 0.0}

    def mono() -> float:
        return now["s"]

    clock = Clock(wall=lambda: T0.timestamp() + now["s"], mono=mono,
                  system_synced=lambda: False)
    out: list[Event] = []
    ingest = Ingest(out.append, clock, can=CanSampling(mode=can_mode), mono=mono)
    truck = Truck(load_route("a9-munich-nuremberg"), seed=7,
                  params=TruckParams(fault_every_s=0, warmup_s=5.0))
    sched = Schedule(request_every_s=0)
    can = J1939Decoder()
    gps = NmeaDecoder()
    dt_s = 0.02
    next_epoch = 1.0
    injected = False
    while now["s"] < seconds:
        now["s"] += dt_s
        state = truck.step(dt_s)
        if not injected and now["s"] > seconds / 3:
            truck.inject_fault(3, duration_s=seconds / 3)
            injected = True
        ts = round(now["s"] * 1000)
        decoded = [d for f in sched.due(now["s"], state)
                   if (d := can.feed(ts, f.arbitration_id, f.data)) is not None]
        ingest.on_can(decoded)
        if now["s"] >= next_epoch:
            utc = T0 + dt.timedelta(seconds=next_epoch)
            tunnel = 0.6 * seconds < now["s"] < 0.6 * seconds + 5
            fix = None if tunnel else fix_of(state, 11, 0.9)
            for f in gps.feed(nmea_out.epoch(utc, fix), received=now["s"]):
                ingest.on_fix(f)
            next_epoch += 1.0
    ingest.flush()
    out.append(seq_gap_event(clock.now_ms(), 3, 5, "unclean_start"))
    return out


@pytest.fixture(scope="module")
def truck_events() -> list[Event]:
    return drive(240) + drive(60, can_mode="curve")


async def _stored(store: SqliteStore, events: list[Event]) -> list[StoredEvent]:
    for ev in events:
        store.submit(ev)
    await store.append(Event("gps", 1, {"fix": 0}))
    out: list[StoredEvent] = []
    while (b := await store.lease(Lane.BACKFILL, 500, 1 << 20)) is not None:
        out.extend(b.events)
    return out


def _plain(payload: bytes, encoding: str) -> bytes:
    """A batch's JSON bytes as any consumer gets them: zstandard alone, and for
    compact-dict the published dictionary file, no truckgw code."""
    if encoding == "json":
        return payload
    if encoding == "compact":
        return zstandard.ZstdDecompressor().decompress(payload)
    data = (ROOT / "gateway" / "dicts" / "events-1.zdict").read_bytes()
    return zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data)) \
        .decompress(payload)


@pytest.mark.parametrize("encoding", wire.ENCODINGS)
async def test_every_batch_of_a_simulated_truck_validates(
    store: SqliteStore, truck_events: list[Event], encoding: str
) -> None:
    stored = await _stored(store, truck_events)
    types = {e.type for e in stored}
    assert {"gps", "engine", "dtc", "seq_gap"} <= types
    payloads = wire.encode_batches("truck-0042", stored, encoding, 16384)
    assert len(payloads) > 1
    seen_fields: set[str] = set()
    provisional = 0
    for payload, _seqs in payloads:
        raw = _plain(payload, encoding)
        batch = json.loads(raw)  # what any consumer parses, without truckgw code
        assert batch == wire.decode_payload(payload, compact=encoding != "json")
        assert batch["schema"] == wire.BATCH_SCHEMA
        assert errors(BATCH, batch) == []
        for ev in batch["events"]:
            seen_fields.update(ev)
            provisional += ev.get("provisional", False)
    assert provisional > 0  # the curve policy's live points are covered
    engine_props = set(json.loads((SCHEMA_DIR / "engine.schema.json").read_text())["properties"])
    # the simulator sends (nearly) every documented signal: they all met the schema
    assert len(engine_props & seen_fields) >= 35, sorted(engine_props - seen_fields)
    assert "ts_unverified" in seen_fields  # an unsynced clock at start, then GPS time


async def test_batches_with_stream_and_corrected_ts_validate(
    store: SqliteStore, truck_events: list[Event]
) -> None:
    stored = await _stored(store, truck_events)
    ctx = wire.WireContext("0123456789abcdef",
                           Correction(read_boot_id(), 1_780_000_000_000))  # this boot's
    seen: set[str] = set()
    for encoding in wire.ENCODINGS:
        for payload, _seqs in wire.encode_batches("truck-0042", stored, encoding, 16384, ctx):
            raw = _plain(payload, encoding)
            batch = json.loads(raw)
            assert batch["stream"] == "0123456789abcdef"
            assert errors(BATCH, batch) == []
            for ev in batch["events"]:
                seen.update(ev)
    # the unsynced start of the drive, corrected; the internal boot stamp never travels
    assert "ts_corrected" in seen
    assert "ts_unverified" not in seen and "_boot" not in seen


@pytest.mark.parametrize("encoding", wire.ENCODINGS)
async def test_derived_fleet_events_of_a_simulated_drive_validate(
    store: SqliteStore, encoding: str
) -> None:
    """trip, idle, harsh and driver as the agent makes them (the short leg of
    tests/can/fleet_drive.py through Ingest), stored, leased and encoded."""
    stored = await _stored(store, drive_in_process().events)
    payloads = wire.encode_batches("truck-0042", stored, encoding, 16384)
    got: dict[str, list[dict[str, Any]]] = {t: [] for t in FLEET_TYPES}
    for payload, _seqs in payloads:
        batch = wire.decode_payload(payload, compact=encoding != "json")
        assert errors(BATCH, batch) == []
        for ev in batch["events"]:
            if ev["type"] in got:
                got[ev["type"]].append(ev)
    for etype, evs in got.items():
        assert evs, f"the drive made no {etype} event"
        own = validator(f"{etype}.schema.json")
        doc = json.loads((SCHEMA_DIR / f"{etype}.schema.json").read_text())
        seen: set[str] = set()
        for ev in evs:
            assert errors(own, ev) == [], ev
            seen.update(ev)
        # every field the schema describes occurred (fuel and positions are known here)
        assert set(doc["properties"]) <= seen, (etype, set(doc["properties"]) - seen)


async def test_status_of_the_status_builder_validates(
    tmp_path: Path, store: SqliteStore, truck_events: list[Event]
) -> None:
    for ev in truck_events[:50]:
        store.submit(ev)
    await store.append(Event("gps", 1, {"fix": 0}))
    cfg = TruckConfig(truck_id="truck-0042", mqtt=MqttConfig(host="broker.invalid"),
                      buffer=BufferConfig(path=tmp_path / "unused.db"))
    extra: Callable[[], dict[str, Any]] = lambda: {  # noqa: E731
        "gps": {"points_recorded": 3, "fix": True}, "can": {"sources": 4}, "buffer": None,
        "uptime_s": 12.5, "healthy": True}
    meter = UsageMeter()
    meter.add(12_345, 678, 1_764_633_600_000)
    report = StatusReport(cfg, store, lambda: UplinkStats(UplinkState.CONNECTED, reconnects=2),
                          extra, lambda: wire.WireContext("0123456789abcdef"),
                          usage=lambda: meter.view(1_764_637_200_000).as_status())
    online = json.loads(report.payload("online", await report.online_fields()))
    assert online["usage"]["up_today"] == 12_345
    assert online["schema"] == wire.STATUS_SCHEMA
    assert online["pending"] == 51
    assert online["lost_quarantine"] == 0
    for payload in (
        online,
        json.loads(report.payload("offline", {"reason": "connection lost"})),  # the last will
        json.loads(report.payload("offline", {"reason": "shutdown"})),
    ):
        assert errors(STATUS, payload) == [], payload
        assert payload["stream"] == "0123456789abcdef"  # every status names the stream
    # an empty buffer: no oldest event
    async with _empty_store(tmp_path) as empty:
        idle = StatusReport(cfg, empty, lambda: UplinkStats(UplinkState.CONNECTED))
        obj = json.loads(idle.payload("online", await idle.online_fields()))
        assert obj["oldest_pending_ts"] is None
        assert errors(STATUS, obj) == []


class _empty_store:  # noqa: N801  # reads as a context manager
    def __init__(self, tmp_path: Path) -> None:
        self._path = tmp_path / "empty.db"
        self._store: SqliteStore | None = None

    async def __aenter__(self) -> SqliteStore:
        self._store = await SqliteStore.open(BufferConfig(path=self._path, commit_interval_ms=10))
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        assert self._store is not None
        await self._store.close()


# --------------------------------------------------------------------------- samples


def test_samples_validate_and_match_the_encoder() -> None:
    plain = (SAMPLES / "batch.json").read_bytes()
    compact = (SAMPLES / "batch.json.zst").read_bytes()
    batch = json.loads(plain)
    assert errors(BATCH, batch) == []
    assert zstandard.ZstdDecompressor().decompress(compact) == plain
    assert base64.b64decode((SAMPLES / "batch.json.zst.b64").read_text()) == compact
    assert wire.decode_payload(compact, compact=True) == batch
    # the sample is byte for byte what the encoder makes of those events
    evs = []
    for e in batch["events"]:
        ev = Event(e["type"], e["ts"],
                   {k: v for k, v in e.items() if k not in ("seq", "ts", "type")})
        evs.append(StoredEvent(e["seq"], ev.ts_ms, ev.type, ev.priority, encode_body(ev)))
    ((again, _),) = wire.encode_batches(batch["truck_id"], evs, "json", 1 << 20,
                                        wire.WireContext(batch["stream"]))
    assert again == plain
    assert {e["type"] for e in batch["events"]} == {"gps", "engine", "dtc", "seq_gap"}
    # compact-dict (the default): the same batch through the published dictionary
    framed = (SAMPLES / "batch.json.zstd-dict").read_bytes()
    assert base64.b64decode((SAMPLES / "batch.json.zstd-dict.b64").read_text()) == framed
    assert zstandard.get_frame_parameters(framed).dict_id == wire.DICT_ID
    assert wire.decode_payload(framed, compact=True) == batch
    for name in ("status-online.json", "status-offline.json"):
        assert errors(STATUS, json.loads((SAMPLES / name).read_text())) == [], name


def test_older_batches_without_schema_and_unknown_keys_validate() -> None:
    old = {"truck_id": "t1", "events": [
        {"seq": 1, "ts": 5, "type": "gps", "fix": 3, "lat": 1.0, "lon": 2.0, "new_key": "x"},
        {"seq": 2, "ts": 6, "type": "geofence", "zone": 60},  # a type added later
        {"seq": 3, "ts": 7, "type": "engine", "src": 0, "retarder_torque_pct": -20,
         "axle14_weight_kg": 8000.5},
    ]}
    assert errors(BATCH, old) == []


def _gps(**kw: object) -> dict[str, Any]:
    ev: dict[str, Any] = {"seq": 1, "ts": 1, "type": "gps", "fix": 3, "lat": 48.1, "lon": 11.5}
    ev.update(kw)
    return {"schema": wire.BATCH_SCHEMA, "truck_id": "t1", "events": [ev]}


def _typed(etype: str, base: dict[str, Any], kw: dict[str, object]) -> dict[str, Any]:
    ev: dict[str, Any] = {"seq": 1, "ts": 1, "type": etype, **base, **kw}
    return {k: v for k, v in ev.items() if v is not None}


def _trip(**kw: object) -> dict[str, Any]:
    return _typed("trip", {"start_ts": 0, "duration_s": 60, "distance_km": 1.2,
                           "distance_source": "odometer", "driving_s": 40, "idle_s": 20,
                           "max_speed_kmh": 50}, kw)


def _harsh(**kw: object) -> dict[str, Any]:
    return _typed("harsh", {"kind": "braking", "peak_ms2": 4.5, "duration_s": 2,
                            "speed_kmh": 50}, kw)


def _driver(**kw: object) -> dict[str, Any]:
    return _typed("driver", {"src": 238, "driver": 1, "card_present": True,
                             "working_state": 3}, kw)


def test_minimal_fleet_events_validate() -> None:
    batch = {"truck_id": "t1", "events": [
        _trip(), _harsh(), _driver(card_present=None), _driver(working_state=None),
        {"seq": 5, "ts": 9, "type": "idle", "start_ts": 1, "duration_s": 300}]}
    assert errors(BATCH, batch) == []


@pytest.mark.parametrize(
    ("batch", "where"),
    [
        (_gps(lat="48.1"), "events/0/lat"),
        (_gps(lat=91.0), "events/0/lat"),
        (_gps(fix=1), "events/0/fix"),
        (_gps(provisional=False), "events/0/provisional"),
        (_gps(seq=0), "events/0/seq"),
        (_gps(ts=1.5), "events/0/ts"),
        (_gps(ts_unverified=False), "events/0/ts_unverified"),
        (_gps(ts_corrected=False), "events/0/ts_corrected"),
        (_gps(ts_corrected=True, ts_unverified=True), "events/0"),
        ({"truck_id": "t1", "stream": "ABC", "events": []}, "stream"),
        ({"truck_id": "t1", "stream": 7, "events": []}, "stream"),
        ({"truck_id": "t1", "events": [{"seq": 1, "ts": 1, "type": "engine", "src": 0,
                                        "engine_speed_rpm": None}]}, "events/0/engine_speed_rpm"),
        ({"truck_id": "t1", "events": [{"seq": 1, "ts": 1, "type": "engine", "src": 0,
                                        "engine_load_pct": 35.5}]}, "events/0/engine_load_pct"),
        ({"truck_id": "t1", "events": [{"seq": 1, "ts": 1, "type": "engine", "src": 0,
                                        "parking_brake": 1}]}, "events/0/parking_brake"),
        ({"truck_id": "t1", "events": [{"seq": 1, "ts": 1, "type": "engine"}]}, "events/0"),
        ({"truck_id": "t1", "events": [{"seq": 1, "ts": 1, "type": "dtc", "src": 0,
                                        "lamps": {"mil": "blinking", "red_stop": "off",
                                                  "amber_warning": "off", "protect": "off"},
                                        "active": []}]}, "events/0/lamps/mil"),
        ({"truck_id": "t1", "events": [{"seq": 1, "ts": 1, "type": "seq_gap", "first": 2}]},
         "events/0"),
        ({"truck_id": "t1", "events": [_trip(distance_km=None)]}, "events/0"),
        ({"truck_id": "t1", "events": [_trip(distance_source="can")]},
         "events/0/distance_source"),
        ({"truck_id": "t1", "events": [_trip(start_ts=1.5)]}, "events/0/start_ts"),
        ({"truck_id": "t1", "events": [_trip(fuel_used_l=-1)]}, "events/0/fuel_used_l"),
        ({"truck_id": "t1", "events": [{"seq": 1, "ts": 1, "type": "idle"}]}, "events/0"),
        ({"truck_id": "t1", "events": [_harsh(kind="swerve")]}, "events/0/kind"),
        ({"truck_id": "t1", "events": [_harsh(peak_ms2="3")]}, "events/0/peak_ms2"),
        ({"truck_id": "t1", "events": [_driver(driver=3)]}, "events/0/driver"),
        ({"truck_id": "t1", "events": [_driver(working_state=6)]}, "events/0/working_state"),
        ({"truck_id": "t1", "events": [_driver(card_present=1)]}, "events/0/card_present"),
        ({"truck_id": "t1", "events": [_driver(working_state=None, card_present=None)]},
         "events/0"),
        ({"truck_id": "bad id", "events": []}, "truck_id"),
        ({"schema": "truckgw.status/2", "truck_id": "t1", "events": []}, "schema"),
        ({"truck_id": "t1"}, ""),
    ],
)
def test_wrong_batches_fail(batch: dict[str, Any], where: str) -> None:
    found = errors(BATCH, batch)
    assert found, batch
    assert any(e.startswith(where + ":") for e in found), found


def test_wrong_status_fails() -> None:
    ok = json.loads((SAMPLES / "status-online.json").read_text())
    for bad in ({**ok, "pending": "18"}, {**ok, "state": "sleeping"},
                {**ok, "lost_quarantine": -1},
                {k: v for k, v in ok.items() if k != "pending"},
                {"state": "offline", "truck_id": "t1", "ts": 1}):  # no reason
        with pytest.raises(ValidationError):
            STATUS.validate(bad)


def test_engine_schema_lists_every_documented_field_with_its_type() -> None:
    doc = (ROOT / "docs" / "wire-format.md").read_text()
    table = doc.split("### Engine fields", 1)[1].split("A truck configured with a DBC", 1)[0]
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|([^|]+)\|", table, re.MULTILINE)
    assert len(rows) >= 40
    engine = json.loads((SCHEMA_DIR / "engine.schema.json").read_text())
    (axle,) = engine["patternProperties"].values()
    props = {**engine["properties"], "axle<N>_weight_kg": axle}
    kinds = {"int": "integer", "float": "number", "bool": "boolean"}
    for name, typ in rows:
        assert name in props, name
        assert props[name]["type"] == kinds[typ.split()[0]], name
    assert "..." not in table


def test_fleet_event_schemas_list_every_documented_field_with_its_type() -> None:
    doc = (ROOT / "docs" / "wire-format.md").read_text()
    section = doc.split("### Fleet event fields", 1)[1].split("\n## ", 1)[0]
    kinds = {"int": "integer", "float": "number", "bool": "boolean", "string": "string"}
    for etype in FLEET_TYPES:
        table = section.split(f"#### `{etype}`", 1)[1].split("####", 1)[0]
        rows = re.findall(r"^\|\s*`([^`]+)`\s*\|([^|]+)\|", table, re.MULTILINE)
        schema = json.loads((SCHEMA_DIR / f"{etype}.schema.json").read_text())
        props = {k: v for k, v in schema["properties"].items() if k != "type"}
        assert {name for name, _ in rows} == set(props), etype
        for name, typ in rows:
            want = kinds[typ.split()[0]]
            assert props[name].get("type") == want, (etype, name)


# --------------------------------------------------------------------------- AsyncAPI


def test_asyncapi_document_parses_and_points_at_the_schemas() -> None:
    text = (ROOT / "docs" / "asyncapi.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["asyncapi"].startswith("3.0")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {"{prefix}/{truck_id}/events", "{prefix}/{truck_id}/events/json-zstd",
                         "{prefix}/{truck_id}/events/json-zstd-dict",
                         "{prefix}/{truck_id}/status", "{prefix}/{truck_id}/config/desired",
                         "{prefix}/{truck_id}/config/reported", "{prefix}/{truck_id}/cmd",
                         "{prefix}/{truck_id}/cmd/res/{reply}"}
    refs = set(re.findall(r"\$ref: '?\"?([^'\"\s#]+\.json)", text))
    assert refs == {"./schema/batch.schema.json", "./schema/status.schema.json",
                    "./schema/remote-desired.schema.json", "./schema/remote-reported.schema.json",
                    "./schema/remote-request.schema.json", "./schema/remote-reply.schema.json"}
    for ref in refs:
        assert (ROOT / "docs" / ref).is_file(), ref
    receives = {"receiveDesiredConfig", "receiveCommand"}  # the two ways into the truck
    for name, op in doc["operations"].items():
        assert op["action"] == ("receive" if name in receives else "send"), name
        assert op["channel"]["$ref"].removeprefix("#/channels/") in doc["channels"], name
    for msg in doc["components"]["messages"].values():
        for example in msg.get("examples", []):
            target = BATCH if "batch" in msg["payload"]["schema"]["$ref"] else STATUS
            assert errors(target, example["payload"]) == []


async def test_refused_notice_and_status_counters_validate(
    tmp_path: Path, store: SqliteStore
) -> None:
    """Revision 3: the ``seq_gap`` notice of a set-aside event (reason ``refused``) and
    the status counters ``refused``, ``uplink.ack_failures``, ``uplink.size_refusals``."""
    lamps = {"mil": "on", "red_stop": "off", "amber_warning": "off", "protect": "off"}
    seq = await store.append(Event("dtc", 1_760_000_000_000, {"src": 0, "lamps": lamps,
                                                              "active": []}))
    assert await store.lease(Lane.BACKFILL, 10, 1 << 20) is not None
    assert await store.dead_letter([seq]) == [seq]
    await store.flush()
    batch = await store.lease(Lane.BACKFILL, 10, 1 << 20)
    assert batch is not None
    ((payload, _),) = wire.encode_batches("truck-0042", batch.events, "json", 1 << 20)
    obj = json.loads(payload)
    assert errors(BATCH, obj) == []
    (notice,) = obj["events"]
    assert (notice["type"], notice["first"], notice["last"], notice["reason"]) == (
        "seq_gap", seq, seq, "refused")
    cfg = TruckConfig(truck_id="truck-0042", mqtt=MqttConfig(host="broker.invalid"),
                      buffer=BufferConfig(path=tmp_path / "unused.db"))
    report = StatusReport(cfg, store, lambda: UplinkStats(
        UplinkState.CONNECTED, ack_failures=3, size_refusals=2))
    online = json.loads(report.payload("online", await report.online_fields()))
    assert online["refused"] == 1
    assert (online["uplink"]["ack_failures"], online["uplink"]["size_refusals"]) == (3, 2)
    assert errors(STATUS, online) == []
    bad = {**online, "refused": -1}
    assert errors(STATUS, bad) != []
