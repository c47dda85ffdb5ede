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

    ``sqlite:///relative.db`` and ``sqlite:////abs/path.db`` name a file, committed with
    ``synchronous=FULL`` (an acknowledged message survives a power cut of the sink's
    host); ``?synchronous=normal`` after the path trades that for speed (docs/sink.md).
    ``postgresql://user@host:port/db`` names a PostgreSQL database (needs the
    ``postgres`` extra, imported only then).
    """
    if url.startswith(SQLITE_PREFIX):
        path, _, query = url[len(SQLITE_PREFIX):].partition("?")
        if not path:
            raise SinkStoreConfigError(f"{url!r}: no file name after {SQLITE_PREFIX}")
        if query not in ("", "synchronous=full", "synchronous=normal"):
            raise SinkStoreConfigError(
                f"{url!r}: unknown option {query!r} (expected synchronous=full or normal)")
        return SqliteSinkStore(Path(path), durable=query != "synchronous=normal")
    if url.startswith(POSTGRES_PREFIXES):
        pg = importlib.import_module("gateway.sink.pg_store")
        store: SinkStore = pg.PostgresSinkStore(url)
        return store
    raise SinkStoreConfigError(
        f"{url!r}: unknown database URL (expected sqlite:///PATH or postgresql://...)")
