"""``truckgw sink gaps`` on a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.sink.rows import classify
from gateway.sink.store import open_store


def fill(url: str, seqs: list[int], *, pending: int, notice: tuple[int, int] | None) -> None:
    events: list[dict[str, object]] = [{"seq": s, "ts": s, "type": "gps"} for s in seqs]
    if notice:
        events.append({"seq": max(seqs) + 1, "ts": 0, "type": "seq_gap", "first": notice[0],
                       "last": notice[1], "reason": "unclean_start"})
    store = open_store(url)
    try:
        store.write(classify("fleet/T1/events", json.dumps(
            {"truck_id": "T1", "events": events}).encode(), None, 1))
        store.write(classify("fleet/T1/status", json.dumps(
            {"state": "online", "ts": 5, "pending": pending}).encode(), None, 1))
    finally:
        store.close()


def test_gaps_prints_and_expect_no_gaps_fails_on_unexplained(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    fill(url, [1, 2, 5, 6], pending=0, notice=(3, 3))
    assert main(["sink", "gaps", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "T1: final seq 1..7 stored=5 missing=2 announced=1" in out and "unexplained=1" in out
    assert main(["sink", "gaps", "T1", "--db", url, "--expect-no-gaps"]) == 1
    assert "FAIL: 1 seqs missing" in capsys.readouterr().err
    assert main(["sink", "gaps", "--db", url, "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert (report["state"], report["gaps"]) == ("final", [[3, 4]])


def test_gaps_announced_only_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    fill(url, [1, 2, 5], pending=3, notice=(3, 4))
    assert main(["sink", "gaps", "--db", url, "--expect-no-gaps"]) == 0
    assert "draining" in capsys.readouterr().out
    assert main(["sink", "gaps", "--db", "mysql://x"]) == 2


def trip_messages(truck: str, t0: int) -> list[bytes]:
    """Two batches, as a truck sends them: 2 min idling, 3 min at 60 km/h, one fault."""
    events: list[dict[str, object]] = []
    seq = 0
    for t in range(0, 301, 10):
        moving = t >= 120
        km = max(t - 120, 0) / 60
        seq += 1
        events.append({"seq": seq, "ts": t0 + t * 1000, "type": "engine", "src": 0,
                       "engine_speed_rpm": 1300.0 if moving else 650.0,
                       "vehicle_speed_kmh": 60.0 if moving else 0.0,
                       "fuel_level_pct": 40.0, "total_distance_km": 5000.0 + km,
                       "total_fuel_used_l": 800.0 + km * 0.3})
        if t % 30 == 0:
            seq += 1
            events.append({"seq": seq, "ts": t0 + t * 1000, "type": "gps", "fix": 3,
                           "lat": 48.0 + km / 111.2, "lon": 11.0, "speed_kmh": events[-1][
                               "vehicle_speed_kmh"]})
    events.append({"seq": seq + 1, "ts": t0 + 200_000, "type": "dtc", "src": 0,
                   "active": [{"spn": 110, "fmi": 0, "oc": 1}]})
    half = len(events) // 2
    return [json.dumps({"truck_id": truck, "events": part}).encode()
            for part in (events[:half], events[half:])]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_report_from_the_database(backend: str, request: pytest.FixtureRequest,
                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = (f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite"
           else str(request.getfixturevalue("pg_url")))
    t0 = 1_764_669_600_000  # 2025-12-02T10:00:00Z
    store = open_store(url)
    try:
        for payload in trip_messages("T1", t0):
            store.write(classify("fleet/T1/events", payload, None, 1))
            store.write(classify("fleet/T1/events", payload, None, 2))  # redelivered
        store.write(classify("fleet/T2/events", json.dumps({"truck_id": "T2", "events": [
            {"seq": 1, "ts": t0, "type": "gps", "lat": 1.0, "lon": 1.0}]}).encode(), None, 1))
    finally:
        store.close()
    rng = ["--from", "2025-12-02T10:00:00Z", "--to", "2025-12-02T10:05:00Z"]
    assert main(["sink", "report", "T1", "--db", url, *rng, "--step", "60"]) == 0
    out = capsys.readouterr().out
    for line in ("distance       3.00 km (odometer)", "duration       0:05:00",
                 "fuel used      0.90 L", "idle time      0:02:00",
                 "2025-12-02T10:04:00Z    48.01799     11.00000    60.0    1300   40.0  110/0",
                 "2025-12-02T10:03:20Z  src 0: SPN 110 FMI 0 x1"):
        assert line in out, out
    assert "None" not in out
    # the fault raised before a later range is active at its start
    assert main(["sink", "report", "T1", "--db", url, "--from", "2025-12-02T10:04:00",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["events"] == {"engine": 7, "gps": 3}
    assert data["faults_at_start"][0]["active"] == [{"spn": 110, "fmi": 0, "oc": 1}]
    assert data["series"]["faults"][0] == ["110/0"]
    assert data["summary"]["distance_km"] == 1.0
    assert main(["sink", "report", "T1", "--db", url, "--from", "2025-12-03T00:00:00Z"]) == 1
    assert "no events of T1" in capsys.readouterr().err
    assert main(["sink", "report", "T1", "--db", url, "--from", "2025-12-03",
                 "--to", "2025-12-02"]) == 2
