"""Fixtures of the cluster tests: a real 3-node NATS JetStream cluster on loopback ports
(sim/nats.py). A missing nats-server is a failure with the command that installs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.nats import NatsCluster, NatsUnavailableError


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server nodes (n1..n3), MQTT listeners, JetStream R3; stopped at teardown."""
    try:
        cluster = NatsCluster(3, workdir=tmp_path / "nats")
        cluster.start()
    except NatsUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()
