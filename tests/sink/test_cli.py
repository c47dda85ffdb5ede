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
