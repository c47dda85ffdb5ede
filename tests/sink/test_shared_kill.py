"""Two ``truckgw sink run`` processes on one shared subscription, a small fleet publishing,
one sink killed with SIGKILL mid-stream and restarted (and PostgreSQL restarted once):
every seq of every truck is in the table exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.sink.gaps import account
from gateway.sink.store import open_store
from sim.broker import Mosquitto
from sim.sink_fleet import FleetPublisher, fleet_events, truck_messages
from sim.sink_postgres import PostgresServer
from tests.sink.helpers import BROKER_CONF, count, query, wait_until_sync

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TRUCKS, EVENTS, BATCH = 20, 300, 20  # a fleet of 20 trucks, as the issue asks
PUBLISH_PAUSE_S = 0.05  # 15 rounds: the kill falls well inside the stream


class SinkProcess:
    """One ``truckgw sink run`` child, its output in a file."""

    def __init__(self, broker: Mosquitto, url: str, client_id: str, out: Path) -> None:
        self.argv = [sys.executable, "-m", "gateway.cli", "sink", "run", "--db", url,
                     "--host", broker.host, "--port", str(broker.port), "--group", "fleet",
                     "--client-id", client_id]
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.out.write_bytes(b"")
        with self.out.open("ab") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_until_sync(lambda: "sink: subscribed" in self.text() or not self.alive(), 20)
        assert self.alive(), self.text()

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> dict[str, int]:
        """SIGTERM, wait; the counters it printed."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        lines = [ln for ln in self.text().splitlines() if ln.startswith("sink: stopped ")]
        assert lines, self.text()
        counters: dict[str, int] = json.loads(lines[-1][len("sink: stopped "):])
        return counters


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_sinks_one_killed_every_seq_once(
        backend: str, mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    broker = mosquitto_factory(BROKER_CONF)
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    pg: PostgresServer | None = None
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
        pg = request.getfixturevalue("postgres_server")
    trucks = [f"truck-{i:02d}" for i in range(TRUCKS)]
    plan = {t: truck_messages("fleet", t, fleet_events(1, EVENTS, 1_760_000_000_000),
                              batch=BATCH, encoding="compact" if i % 2 else "json")
            for i, t in enumerate(trucks)}
    total = TRUCKS * EVENTS
    a = SinkProcess(broker, url, "sink-a", tmp_path / "a.out")
    b = SinkProcess(broker, url, "sink-b", tmp_path / "b.out")
    a.start()
    b.start()
    published = threading.Event()

    def publish() -> None:
        with FleetPublisher(broker.host, broker.port) as pub:
            for k in range(EVENTS // BATCH):
                for t in trucks:
                    pub.publish(plan[t][k])
                time.sleep(PUBLISH_PAUSE_S)
            pub.wait_all()
        published.set()

    publisher = threading.Thread(target=publish, name="fleet-publisher")
    publisher.start()
    try:
        wait_until_sync(lambda: count(url) >= total // 4)
        a.kill()
        assert count(url) < total, "the kill came after the stream: it tests nothing"
        a.start()  # same client id: its session, and what it never acked, are still there
        if pg is not None:
            pg.stop()
            pg.start()
        publisher.join(timeout=60)
        assert published.is_set()
        wait_until_sync(lambda: count(url) >= total, 60)
    finally:
        publisher.join(timeout=60)
        counters_b = b.stop()
        a.stop()
    assert counters_b["messages"] > 0
    rows = query(url, "SELECT truck_id, count(*), count(DISTINCT seq), min(seq), max(seq) "
                 "FROM events GROUP BY truck_id ORDER BY truck_id")
    assert rows == [(t, EVENTS, EVENTS, 1, EVENTS) for t in trucks]
    store = open_store(url)
    try:
        reports = [account(i) for i in store.gap_inputs()]
    finally:
        store.close()
    assert [(r.truck_id, r.missing) for r in reports] == [(t, 0) for t in trucks]
