"""Fixtures of the uplink tests: a real SQLite store in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from buffer.store import SqliteStore
from config import BufferConfig


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(BufferConfig(path=tmp_path / "buffer.db", commit_interval_ms=10))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def open_store(tmp_path: Path) -> Callable[[str], Awaitable[SqliteStore]]:
    async def make(name: str = "buffer.db") -> SqliteStore:
        return await SqliteStore.open(BufferConfig(path=tmp_path / name, commit_interval_ms=10))
    return make
