"""Fixtures of the sink tests: a real PostgreSQL 15 per xdist worker (a fresh database per
test) and both backends by URL. A missing PostgreSQL is a failure, never a skip."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sim.sink_postgres import PostgresServer, PostgresUnavailableError

_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster (initdb takes seconds) for the worker's tests."""
    try:
        server = PostgresServer(fast=True)
        server.start()
    except PostgresUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the shared cluster (restarted if a test stopped it)."""
    postgres_server.start()
    name = f"sink_{next(_db_numbers)}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sink.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url
