"""Fixtures of the buffer tests: configs on real files in tmp_path, event factories."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from buffer.store import SqliteStore
from config import BufferConfig
from config.events import Event

_ts = itertools.count(1_700_000_000_000, 100)


def make_event(kind: str = "gps", *, ts_ms: int | None = None, pad: int = 0) -> Event:
    """An event of ``kind`` (gps / engine / dtc ...) with an optional padding field."""
    fields: dict[str, Any] = {"lat": 52.5, "lon": 13.4, "speed": 80.0}
    if pad:
        fields["pad"] = "x" * pad
    return Event(kind, next(_ts) if ts_ms is None else ts_ms, fields)


@pytest.fixture
def cfg(tmp_path: Path) -> BufferConfig:
    """A buffer config on a fresh file with a short commit window."""
    return BufferConfig(path=tmp_path / "buf.db", commit_interval_ms=5, max_bytes=64 * 2**20)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., BufferConfig]:
    """Build a config on the test's file with overrides."""

    def build(**kw: Any) -> BufferConfig:
        base = BufferConfig(path=tmp_path / "buf.db", commit_interval_ms=5)
        return dataclasses.replace(base, **kw)

    return build


@pytest.fixture
async def store(cfg: BufferConfig) -> AsyncIterator[SqliteStore]:
    """An open store, closed after the test."""
    s = await SqliteStore.open(cfg)
    try:
        yield s
    finally:
        await s.close()
