"""The filesystem under the buffer: size budget, free space, ballast, WAL fsync.

Blocking calls (fsync, writing the ballast) are made from the store's worker thread;
``space_cap`` is one ``statvfs`` and runs on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from buffer import policy
from config import BufferConfig

log = logging.getLogger(__name__)

#: Share of the filesystem's size the buffer plans for at most (if max_bytes is larger).
FS_SHARE = 0.9
#: Free space kept on the filesystem beyond the WAL bound.
FS_RESERVE_BYTES = 256 * 1024
#: Ballast file kept beside the buffer (``budget.ballast_bytes``, inside ``max_bytes``):
#: deleted on ENOSPC so that the seq mark, a checkpoint and an eviction can still be
#: written on a filesystem that someone else filled up (also at start); recreated when
#: the filesystem has room again (4 times its size free).
BALLAST_SUFFIX = ".ballast"


def ballast_path(db: Path) -> Path:
    """Where the ballast of buffer file ``db`` lives."""
    return db.with_name(db.name + BALLAST_SUFFIX)


def release_ballast(db: Path) -> bool:
    """Delete the ballast of ``db`` (blocking); whether there was one."""
    try:
        ballast_path(db).unlink()
    except FileNotFoundError:
        return False
    log.warning("buffer: released the ballast of %s to make room", db)
    return True


def budget_for(cfg: BufferConfig) -> policy.Budget:
    """The size budget: ``max_bytes``, or less on a filesystem smaller than that."""
    limit = cfg.max_bytes
    with contextlib.suppress(OSError):
        st = os.statvfs(Path(cfg.path).parent)
        limit = min(limit, max(policy.MIN_MAX_BYTES, int(st.f_blocks * st.f_frsize * FS_SHARE)))
    return policy.make_budget(limit)


class DiskGuard:
    """Watches the filesystem of one buffer file."""

    def __init__(self, db: Path, budget: policy.Budget) -> None:
        self._db = db
        self._wal = db.with_name(db.name + "-wal")
        self._ballast = ballast_path(db)
        self._budget = budget
        self._wal_fd: int | None = None

    def __repr__(self) -> str:
        return f"DiskGuard({str(self._db)!r})"

    def space_cap(self, file_bytes: int) -> int:
        """Bytes the used pages may reach: the data budget, or less if the disk is full."""
        try:
            st = os.statvfs(self._db.parent)
        except OSError:
            return self._budget.data_bytes
        reserve = self._budget.wal_bytes + 2 * self._budget.commit_bytes + FS_RESERVE_BYTES
        growth = st.f_bavail * st.f_frsize - reserve
        return min(self._budget.data_bytes, file_bytes + max(0, growth))

    def file_bytes(self) -> int:
        """Size of the database file plus its WAL."""
        total = 0
        for path in (self._db, self._wal):
            with contextlib.suppress(OSError):
                total += os.stat(path).st_size
        return total

    @property
    def has_ballast(self) -> bool:
        """Whether the ballast is in place (False after a full disk, until room is back)."""
        return self._ballast.exists()

    def drop_ballast(self) -> None:
        """Give the ballast's space back to the filesystem (blocking)."""
        release_ballast(self._db)

    def make_ballast(self) -> None:
        """(Re)create the ballast if the filesystem has comfortable room (blocking)."""
        size = self._budget.ballast_bytes
        try:
            if self._ballast.exists():
                return
            st = os.statvfs(self._db.parent)
            if st.f_bavail * st.f_frsize < 4 * size:
                return
            fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, bytes(size))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("buffer: no ballast: %s", exc)
            with contextlib.suppress(OSError):
                self._ballast.unlink()

    def sync_wal(self) -> None:
        """fsync the WAL (normal durability): bounds what a power cut can take (blocking)."""
        try:
            if self._wal_fd is not None and os.fstat(self._wal_fd).st_nlink == 0:
                self.close()
            if self._wal_fd is None:
                self._wal_fd = os.open(self._wal, os.O_RDONLY)
            os.fsync(self._wal_fd)
        except OSError as exc:
            log.debug("buffer: WAL fsync skipped: %s", exc)

    def close(self) -> None:
        """Close the WAL descriptor."""
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
