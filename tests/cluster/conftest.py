"""Fixtures of the cluster tests: a real 3-node NATS JetStream cluster on loopback ports
(sim/nats.py). A missing nats-server is a failure with the command that installs it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from sim.nats import NatsCluster, NatsUnavailableError


@contextmanager
def running_cluster(workdir: Path, *, include: Path | None = None,
                    env: Mapping[str, str] | None = None) -> Iterator[NatsCluster]:
    """Three nats-server nodes started in ``workdir`` (a failure, never a skip, when
    nats-server is missing), stopped at the end."""
    try:
        cluster = NatsCluster(3, workdir=workdir, include=include, env=env)
        cluster.start()
    except NatsUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server nodes (n1..n3), MQTT listeners, JetStream R3; stopped at teardown."""
    with running_cluster(tmp_path / "nats") as cluster:
        yield cluster
