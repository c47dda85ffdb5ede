"""Backends by name: ``sqlite:///path`` (the default) or ``postgresql://...``."""

from __future__ import annotations

import importlib
from pathlib import Path

from gateway.sink.base import SinkStore, SinkStoreConfigError
from gateway.sink.sqlite_store import SqliteSinkStore

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def open_store(url: str) -> SinkStore:
    """The backend for ``url``; nothing is connected until the first call.

    ``sqlite:///relative.db`` and ``sqlite:////abs/path.db`` name a file;
    ``postgresql://user@host:port/db`` a PostgreSQL database (needs the ``postgres``
    extra, imported only then).
    """
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        if not path:
            raise SinkStoreConfigError(f"{url!r}: no file name after {SQLITE_PREFIX}")
        return SqliteSinkStore(Path(path))
    if url.startswith(POSTGRES_PREFIXES):
        pg = importlib.import_module("gateway.sink.pg_store")
        store: SinkStore = pg.PostgresSinkStore(url)
        return store
    raise SinkStoreConfigError(
        f"{url!r}: unknown database URL (expected sqlite:///PATH or postgresql://...)")
