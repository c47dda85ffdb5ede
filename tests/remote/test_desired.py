"""The desired-configuration document and the live / restart split, and the table of
docs/remote.md checked against the config schema (so neither can drift)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from config.loader import check_parsed
from config.schema import TruckConfig
from gateway.remote import desired
from gateway.remote.wire import Code, RefusedError

ROOT = Path(__file__).resolve().parents[2]
BASE = {"truck_id": "T1", "mqtt": {"host": "127.0.0.1", "port": 1883},
        "gps": {"port": "/dev/null"}, "can": {"interface": "virtual"}}


def cfg(**tables: dict[str, object]) -> TruckConfig:
    data: dict[str, object] = {k: dict(v) for k, v in BASE.items() if isinstance(v, dict)}
    data["truck_id"] = "T1"
    for name, table in tables.items():
        merged = dict(data.get(name, {}))  # type: ignore[call-overload]
        merged.update(table)
        data[name] = merged
    c, _ = check_parsed(data)
    return c


def test_decode() -> None:
    d = desired.decode_desired({"version": 3, "toml": "truck_id = 'T1'"}, "T1")
    assert d == desired.Desired(3, "truck_id = 'T1'")
    for bad in ({"toml": "x"}, {"version": 0, "toml": "x"}, {"version": True, "toml": "x"},
                {"version": 1}, {"version": 1, "toml": "  "},
                {"version": 1, "toml": "x" * (desired.MAX_TOML_BYTES + 1)}):
        with pytest.raises(RefusedError) as info:
            desired.decode_desired(bad, "T1")
        assert info.value.code is Code.BAD_REQUEST
    with pytest.raises(RefusedError) as other:
        desired.decode_desired({"version": 1, "toml": "x", "truck_id": "T2"}, "T1")
    assert other.value.code is Code.FORBIDDEN


def test_live_changes() -> None:
    old = cfg()
    new = cfg(mqtt={"host": "127.0.0.1", "port": 1883, "live_share": 0.8,
                    "bandwidth_bytes_per_s": 5000, "status_interval_s": 5.0},
              log={"level": "debug"}, buffer={"ttl_s": {"telemetry": 60.0}})
    assert new.can is not None
    new = dataclasses.replace(new, can=dataclasses.replace(
        new.can, sampling=dataclasses.replace(new.can.sampling,
                                              deadbands={"engine_speed_rpm": 5.0})))
    d = desired.diff(old, new)
    assert set(d.live) == {"mqtt.live_share", "mqtt.bandwidth_bytes_per_s",
                           "mqtt.status_interval_s", "log.level", "buffer.ttl_s",
                           "can.sampling.deadbands"}
    assert not d.needs_restart
    assert desired.diff(old, cfg()).empty


def test_restart_changes() -> None:
    old = cfg()
    d = desired.diff(old, cfg(mqtt={"host": "broker.invalid", "port": 1883}))
    assert d.restart == ("mqtt.host",)
    assert desired.diff(old, cfg(can={"interface": "virtual", "channel": "vcan9"})).restart \
        == ("can.channel",)
    no_gps = dataclasses.replace(old, gps=None)
    assert desired.diff(old, no_gps).restart == ("gps",)


def doc_table() -> dict[str, str]:
    text = (ROOT / "docs" / "remote.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| (live|restart) \|", text, flags=re.M)
    assert rows, "docs/remote.md has no key table"
    return dict(rows)


def test_docs_table_matches_the_schema() -> None:
    """Every schema key is in docs/remote.md's table, classified as the code does."""
    table = doc_table()
    keys = desired.leaf_keys()
    assert set(table) == set(keys), {"missing": set(keys) - set(table),
                                     "unknown": set(table) - set(keys)}
    for key in keys:
        assert table[key] == ("live" if desired.is_live(key) else "restart"), key


def test_live_keys_exist_in_the_schema() -> None:
    keys = desired.leaf_keys()
    for k in desired.LIVE_KEYS:
        assert any(x == k or x.startswith(k + ".") for x in keys), k
