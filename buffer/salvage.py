"""Salvage of a quarantined buffer file: every readable row goes into the new file.

A corrupt file (a bad page in the middle, a garbage header, a damaged last page, a WAL
with a damaged frame) still holds undelivered events in its readable pages. Before the
new file is used, :func:`salvage_into` copies every row it can read into it *with its
seq*, and works out which seqs may have held an undelivered event that could not be
read: those are announced (``seq_gap``, reason ``quarantine``) and counted
(``lost_quarantine``). See docs/buffer.md, Corruption.

How rows are read, per class table, in seq order: a scan returns rows until SQLite
reports the first damaged page; the next readable seq is then found by galloping and
bisecting over ``seq > q`` probes, so a bad page costs only the rows it held (a few
dozen queries per bad region). Each row is checked (its JSON body names its own ``ts``
and ``type``) before it is kept, so garbage that SQLite happens to parse is not sent.

The quarantined file itself is never written: the scan runs on a temporary copy
(``<db>.salvage``, with its WAL, so committed frames are applied) which is deleted at
the end. If page 1 (the header and the schema) is unreadable, the copy gets page 1 of
a freshly made empty buffer: the schema is fixed and created in a fixed order, so the
tables' root pages are known. Pure Python on the standard ``sqlite3`` module: the
``sqlite3`` CLI's ``.recover`` is not part of the truck image, and it also brings
back rows from free pages (acked or evicted events) and loses their table.

Blocking: call from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from buffer import schema
from config.events import TYPE_PRIORITY, Priority, encode_body, seq_gap_event

log = logging.getLogger(__name__)

#: Highest seq a probe looks at: above every seq ever issued.
SEQ_CEILING = 2**62
#: Rows per insert transaction into the new file.
INSERT_CHUNK = 500
#: Bytes a stored row takes beyond its body (estimate), and the room kept for the notices.
ROW_BYTES = 64
ANNOUNCE_ROOM_BYTES = 128 * 1024
META_FLOOR = schema.META_FLOOR
META_LOST = schema.META_LOST_QUARANTINE
#: The read copy of a corrupt file is ``<db>.salvage``, the new file while it is being
#: filled ``<db>.salvage-new``: both are removed at the end (and, stale, at open).
WORK_SUFFIX = ".salvage"
NEW_SUFFIX = ".salvage-new"
TEMPLATE_SUFFIX = "-template"  # <db>.salvage-template: a fresh page 1 is taken from it
QUARANTINE_REASON = "quarantine"
#: Free space left on the filesystem after the work copy, at least.
COPY_MARGIN_BYTES = 4 * 1024 * 1024
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_WAL_HEADER = 32
_FRAME_HEADER = 24


@dataclass(frozen=True, slots=True)
class Salvage:
    """What :func:`salvage_into` did."""

    rows: int  # rows copied into the new file, with their seq
    top: int  # the highest seq the old file may have held
    lost: tuple[tuple[int, int], ...]  # seq ranges announced: maybe undelivered, unread
    meta: dict[str, int] = field(default_factory=dict)  # the old file's counters, if read

    @property
    def lost_count(self) -> int:
        """Seqs in :attr:`lost`."""
        return sum(b - a + 1 for a, b in self.lost)


# ---------------------------------------------------------------------- the WAL


def _checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


@dataclass(frozen=True, slots=True)
class WalScan:
    """What :func:`scan_wal` found."""

    damaged: bool  # intact frames after a damaged one: commits were lost
    top_seq: int  # the highest event seq (or ``meta.last_seq``) in an intact frame


def wal_damaged(wal: Path) -> bool:
    """Whether ``wal`` lost committed frames to damage (see :func:`scan_wal`)."""
    return scan_wal(wal).damaged


def scan_wal(wal: Path) -> WalScan:
    """Check ``wal`` frame by frame, and find the highest seq its intact frames hold.

    SQLite replays a WAL up to the first frame whose checksum or salt is wrong and
    silently ignores the rest. A torn last write, or frames of an older WAL generation
    (other salts) behind it, are normal. A *current-generation* frame that is intact
    (its own checksum, chained from the stored checksum of the frame before, is right)
    *after* a bad one means a frame in the middle was damaged: commits were lost. The
    pages of intact frames (before and after the damage) are parsed for event rowids and
    ``meta.last_seq``: the highest seq the lost commits reached, unless the damage hit
    both the event page and the meta page of the last commit.
    """
    try:
        data = wal.read_bytes()
    except OSError:
        return WalScan(damaged=False, top_seq=0)
    if len(data) < _WAL_HEADER:
        return WalScan(damaged=False, top_seq=0)
    magic, _v, page, _ck, salt1, salt2, c0, c1 = (
        int(x) for x in struct.unpack(">8I", data[:_WAL_HEADER]))
    if magic not in _WAL_MAGIC or page < 512 or (page & (page - 1)) != 0:
        big_enough = len(data) >= _WAL_HEADER + _FRAME_HEADER + schema.PAGE_SIZE
        return WalScan(damaged=big_enough, top_seq=0)
    big = bool(magic & 1)
    if _checksum(data[:24], 0, 0, big) != (c0, c1):
        return WalScan(damaged=len(data) >= _WAL_HEADER + _FRAME_HEADER + page, top_seq=0)
    size = _FRAME_HEADER + page
    seed, broken, damaged, top = (c0, c1), False, False, 0
    for off in range(_WAL_HEADER, len(data) - size + 1, size):
        head = data[off: off + _FRAME_HEADER]
        pgno, _commit, f1, f2, k0, k1 = struct.unpack(">6I", head)
        body = head[:8] + data[off + _FRAME_HEADER: off + size]
        ok = (f1, f2) == (salt1, salt2) and _checksum(body, *seed, big) == (k0, k1)
        if ok:
            damaged = damaged or broken
            top = max(top, _page_top(body[8:], int(pgno)))
        else:
            broken = True
        seed = (k0, k1)  # the next frame chains from what the writer stored here
    return WalScan(damaged=damaged, top_seq=top)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    v = 0
    for k in range(8):
        b = buf[i + k]
        v = (v << 7) | (b & 0x7F)
        if b < 0x80:
            return v, i + k + 1
    return (v << 8) | buf[i + 8], i + 9


def _record(buf: bytes, i: int) -> tuple[list[int], int]:
    """Serial types of the record at ``i`` and where its values start."""
    size, j = _varint(buf, i)
    end, types = i + size, []
    while j < end:
        t, j = _varint(buf, j)
        types.append(t)
    return types, end


_INT_BYTES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}
_LAST_SEQ = schema.META_LAST_SEQ.encode()
_TABLE_LEAF, _INDEX_LEAF = 0x0D, 0x0A


def _page_top(page: bytes, pgno: int) -> int:
    """The highest event rowid (4 columns, rowid alias) or ``last_seq`` on a leaf page."""
    top = 0
    off = 100 if pgno == 1 else 0
    try:
        kind, ncells = page[off], int.from_bytes(page[off + 3: off + 5], "big")
        for c in range(ncells):
            p = int.from_bytes(page[off + 8 + 2 * c: off + 10 + 2 * c], "big")
            if kind == _TABLE_LEAF:
                _n, p = _varint(page, p)
                rowid, p = _varint(page, p)
                types, _ = _record(page, p)
                if len(types) == 4 and types[0] == 0:
                    top = max(top, rowid)
            elif kind == _INDEX_LEAF:  # meta is WITHOUT ROWID: (key, value) records
                _n, p = _varint(page, p)
                types, at = _record(page, p)
                if (len(types) == 2 and types[0] == 13 + 2 * len(_LAST_SEQ)
                        and types[1] in _INT_BYTES
                        and page[at: at + len(_LAST_SEQ)] == _LAST_SEQ):
                    at += len(_LAST_SEQ)
                    top = max(top, int.from_bytes(
                        page[at: at + _INT_BYTES[types[1]]], "big", signed=True))
    except IndexError:
        return top
    return top


# ---------------------------------------------------------------------- reading


def _valid(row: tuple[object, ...]) -> tuple[int, int, str, bytes] | None:
    seq, ts, kind, body = row
    if not (isinstance(seq, int) and isinstance(ts, int) and isinstance(kind, str)
            and isinstance(body, bytes) and seq >= 1):
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("ts") != ts or obj.get("type") != kind:
        return None
    return seq, ts, kind, body


def _probe(src: sqlite3.Connection, table: str, q: int) -> bool:
    try:
        src.execute(f"SELECT seq FROM {table} WHERE seq > ? ORDER BY seq LIMIT 1",  # noqa: S608
                    (q,)).fetchall()
    except sqlite3.DatabaseError:
        return False
    return True


def _resume(src: sqlite3.Connection, table: str, pos: int) -> int:
    """The smallest q > pos (about) from which ``seq > q`` reads again; the ceiling if none."""
    step, failed = 1, pos
    while pos + step < SEQ_CEILING and not _probe(src, table, pos + step):
        failed = pos + step
        step *= 2
    ok = min(pos + step, SEQ_CEILING)
    if ok >= SEQ_CEILING:
        return SEQ_CEILING
    while ok - failed > 1:
        mid = (ok + failed) // 2
        if _probe(src, table, mid):
            ok = mid
        else:
            failed = mid
    return ok


def scan_table(src: sqlite3.Connection, table: str
               ) -> Iterator[tuple[int, int, str, bytes] | tuple[int, int]]:
    """Rows of ``table`` in seq order (4-tuples), and unreadable seq ranges (pairs)."""
    pos = 0
    for _ in range(1_000_000):  # bounded: each round moves pos up
        try:
            cur = src.execute(
                f"SELECT seq, ts_ms, type, body FROM {table} WHERE seq > ? ORDER BY seq",  # noqa: S608
                (pos,))
            for raw in cur:
                row = _valid(tuple(raw))
                seq = raw[0]
                if not isinstance(seq, int) or seq <= pos:  # out of order: a bad page
                    raise sqlite3.DatabaseError(f"bad row after seq {pos}")  # noqa: TRY301
                if row is None:  # parsed, but garbage: not kept, its seq not vouched for
                    log.warning("buffer salvage: %s: a damaged row at seq %d", table, seq)
                    yield (pos + 1, seq)
                else:
                    yield row
                pos = seq
        except sqlite3.DatabaseError as exc:
            nxt = _resume(src, table, pos)
            log.warning("buffer salvage: %s: seqs %d..%d unreadable (%s)", table, pos + 1,
                        nxt, exc)
            yield (pos + 1, nxt)
            if nxt >= SEQ_CEILING:
                return
            pos = nxt
        else:
            return
    yield (pos + 1, SEQ_CEILING)


def _read_meta(src: sqlite3.Connection) -> dict[str, int] | None:
    try:
        return {str(k): int(v) for k, v in src.execute("SELECT key, value FROM meta")}
    except (sqlite3.DatabaseError, ValueError, TypeError):
        return None


# ---------------------------------------------------------------------- the copy


def _copy(old: Path, work: Path) -> bool:
    """Copy the corrupt file and its WAL to the work file; False if it cannot or must not.

    Only when the filesystem has room for the copy and a margin: a salvage never fills
    the disk (without the copy it reads the file in place, without its WAL).
    """
    wal = old.with_name(old.name + "-wal")
    try:
        need = sum(p.stat().st_size for p in (old, wal) if p.exists()) + COPY_MARGIN_BYTES
        st = os.statvfs(old.parent)
        if st.f_bavail * st.f_frsize < need:
            log.warning("buffer salvage: no room to copy %s; reading it in place", old)
            return False
        shutil.copyfile(old, work)
        if wal.exists():
            shutil.copyfile(wal, work.with_name(work.name + "-wal"))
    except OSError as exc:
        log.warning("buffer salvage: cannot copy %s (%s); reading it in place", old, exc)
        remove_work(work)
        return False
    return True


def remove_work(work: Path) -> None:
    """Delete a salvage work copy and its side files (also a stale one at open)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            work.with_name(work.name + suffix).unlink()


def _schema_ok(src: sqlite3.Connection) -> bool:
    try:
        names = {str(r[0]) for r in src.execute("SELECT name FROM sqlite_schema")}
    except sqlite3.DatabaseError:
        return False
    return set(schema.TABLES.values()) <= names


def _template_page1(work: Path, pragmas: str) -> bytes:
    """Page 1 of a freshly created buffer: header and the fixed schema."""
    tpl = work.with_name(work.name + TEMPLATE_SUFFIX)
    remove_work(tpl)
    try:
        conn = sqlite3.connect(tpl, isolation_level=None)
        try:
            conn.executescript(pragmas)
            conn.executescript(schema.create_script())
        finally:
            conn.close()
        with tpl.open("rb") as f:
            return f.read(schema.PAGE_SIZE)
    finally:
        remove_work(tpl)


def _repair_header(work: Path, pragmas: str) -> None:
    """Give the work copy a fresh page 1 (header + schema), sized to the file."""
    page1 = bytearray(_template_page1(work, pragmas))
    npages = max(1, work.stat().st_size // schema.PAGE_SIZE)
    page1[28:32] = npages.to_bytes(4, "big")  # valid: template's 24..28 == 92..96
    with work.open("r+b") as f:
        f.write(page1)


def _open_source(old: Path, work: Path, pragmas: str) -> tuple[sqlite3.Connection, bool]:
    """A connection to read from, and whether the WAL's commits are in it."""
    wal_applied = not old.with_name(old.name + "-wal").exists()
    if _copy(old, work):
        for attempt in range(2):
            src = sqlite3.connect(work, isolation_level=None)
            try:
                src.execute("PRAGMA locking_mode=EXCLUSIVE")
                if _schema_ok(src):
                    return src, True
            except sqlite3.DatabaseError as exc:
                log.warning("buffer salvage: %s unreadable as is (%s)", work, exc)
            src.close()
            if attempt == 0:
                log.warning("buffer salvage: rebuilding the header page of the copy")
                _repair_header(work, pragmas)
    uri = f"file:{old}?mode=ro&immutable=1"  # no WAL this way
    return sqlite3.connect(uri, uri=True, isolation_level=None), wal_applied


# ---------------------------------------------------------------------- the whole


def salvage_into(old: Path, new: sqlite3.Connection, pragmas: str, *, now_ms: int,
                 mark_reserved: int | None, mark_clean: bool, wal_lost: bool,
                 wal_top: int = 0, folder: Path | None = None) -> Salvage:
    """Copy every readable row of corrupt ``old`` into ``new``; announce what is lost.

    ``new`` is the fresh buffer (schema created, empty); ``old`` is only read. The
    notices (``seq_gap``, reason ``quarantine``) for the lost ranges and for the rest of
    the reservation are written into ``new`` too, with the seqs right above the
    reservation, in the same file as the salvaged rows: a crash before the agent runs
    cannot lose them. ``mark_*`` is the seq mark read at start; ``wal_lost`` says that
    commits in the old WAL were lost (a damaged frame), ``wal_top`` is the highest seq
    found in its intact frames (:func:`scan_wal`); ``folder`` is where ``new`` lives (its
    free space bounds how much is copied).
    """
    work = old.with_name(old.name + WORK_SUFFIX)
    remove_work(work)
    bad: list[tuple[int, int]] = []
    rows, top_read = 0, 0
    meta: dict[str, int] | None = None
    wal_ok = False
    try:
        src, wal_ok = _open_source(old, work, pragmas)
        try:
            meta = _read_meta(src)
            for table in schema.TABLES.values():
                n, top, full = _copy_table(src, table, new, bad, folder)
                rows += n
                top_read = max(top_read, top)
                if full:
                    break
        finally:
            src.close()
    except sqlite3.Error as exc:  # cannot even open it: everything is unread
        log.warning("buffer salvage: %s unreadable: %s", old, exc)
        bad.append((1, SEQ_CEILING))
    finally:
        remove_work(work)
    unsure = wal_lost or not wal_ok  # commits of the WAL may be missing from what was read
    top = _top(meta, max(top_read, wal_top), mark_reserved, mark_clean=mark_clean,
               wal_lost=unsure and not wal_top)
    floor = max(1, (meta or {}).get(META_FLOOR, 1))
    # above what the file holds, up to what it may have held: not read (when the whole
    # WAL was applied, seqs up to meta.last_seq that no table holds were deleted)
    tail = top_read if unsure else max(top_read, (meta or {}).get(schema.META_LAST_SEQ, 0))
    bad.append((tail + 1, top))
    lost = _unsalvaged(new, _merge(bad), floor, top)
    result = Salvage(rows=rows, top=top, lost=lost, meta=dict(meta or {}))
    _announce(new, result, now_ms=now_ms, reserved=max(top, mark_reserved or 0), floor=floor)
    log.warning("buffer salvage: %d rows kept from %s; %d seqs in %d ranges lost (%d..%d)",
                rows, old, result.lost_count, len(lost), floor, top)
    return result


def _announce(new: sqlite3.Connection, got: Salvage, *, now_ms: int, reserved: int,
              floor: int) -> None:
    """Write the quarantine notices and the counters into the new file."""
    ranges = list(got.lost)
    if reserved > got.top:
        ranges.append((got.top + 1, reserved))  # the rest of the reservation: never used
    notices = [
        (reserved + i + 1, now_ms, "seq_gap",
         encode_body(seq_gap_event(now_ms, a, b, QUARANTINE_REASON)))
        for i, (a, b) in enumerate(ranges)
    ]
    keep = {k: v for k, v in got.meta.items()
            if k not in (schema.META_VERSION, schema.META_LAST_SEQ, META_LOST)}
    keep[META_LOST] = got.meta.get(META_LOST, 0) + got.lost_count
    keep[schema.META_LAST_SEQ] = reserved + len(notices)
    keep[META_FLOOR] = floor
    new.execute("BEGIN IMMEDIATE")
    try:
        new.executemany(schema.insert_sql(Priority.CRITICAL), notices)
        new.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        sorted(keep.items()))
        new.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            new.execute("ROLLBACK")
        raise


def _top(meta: dict[str, int] | None, top_read: int, mark: int | None, *, mark_clean: bool,
         wal_lost: bool) -> int:
    """The highest seq the old file may have held (an upper bound)."""
    if mark is not None and mark_clean:
        return max(mark, top_read)  # a clean mark is exactly the last seq issued
    if meta is not None and schema.META_LAST_SEQ in meta and not wal_lost:
        # written by every commit (and the WAL's intact frames were looked at: top_read)
        return max(meta[schema.META_LAST_SEQ], top_read)
    return max(mark or 0, top_read, (meta or {}).get(schema.META_LAST_SEQ, 0))


def _fits(folder: Path | None, chunk: dict[Priority, list[tuple[int, int, str, bytes]]]
          ) -> bool:
    """Whether the filesystem takes ``chunk`` (file and WAL) and still the notices."""
    if folder is None:
        return True
    try:
        st = os.statvfs(folder)
    except OSError:
        return True
    est = sum(len(r[3]) + ROW_BYTES for rows in chunk.values() for r in rows)
    return st.f_bavail * st.f_frsize >= 2 * est + ANNOUNCE_ROOM_BYTES


def _copy_table(src: sqlite3.Connection, table: str, new: sqlite3.Connection,
                bad: list[tuple[int, int]], folder: Path | None) -> tuple[int, int, bool]:
    """Copy one table's readable rows; (rows, highest seq, the new file is full).

    Stops (as if full) while the filesystem still has room for the notices: a salvage
    on a nearly full disk keeps what fits and announces the rest.
    """
    n, top = 0, 0
    chunk: dict[Priority, list[tuple[int, int, str, bytes]]] = {}
    pos = 0
    try:
        for item in scan_table(src, table):
            if len(item) == 2:
                bad.append((item[0], item[1]))
                continue
            seq, ts, kind, body = item
            chunk.setdefault(TYPE_PRIORITY.get(kind, Priority.CRITICAL), []).append(
                (seq, ts, kind, body))
            top = max(top, seq)
            if sum(map(len, chunk.values())) >= INSERT_CHUNK:
                n += _insert(new, chunk, folder)
                pos = seq
                chunk = {}
        n += _insert(new, chunk, folder)
    except sqlite3.OperationalError as exc:  # the new file cannot take more (disk full)
        log.warning("buffer salvage: new file refused rows after seq %d: %s", pos, exc)
        bad.append((pos + 1, SEQ_CEILING))
        return n, top, True
    return n, top, False


def _insert(new: sqlite3.Connection, chunk: dict[Priority, list[tuple[int, int, str, bytes]]],
            folder: Path | None) -> int:
    if not chunk:
        return 0
    if not _fits(folder, chunk):
        raise sqlite3.OperationalError("no room left on the filesystem for the salvage")
    new.execute("BEGIN IMMEDIATE")
    try:
        for p, rows in chunk.items():
            new.executemany(schema.insert_sql(p).replace("INSERT", "INSERT OR IGNORE"), rows)
        new.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            new.execute("ROLLBACK")
        raise
    return sum(map(len, chunk.values()))


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _unsalvaged(new: sqlite3.Connection, bad: list[tuple[int, int]], floor: int, top: int
                ) -> tuple[tuple[int, int], ...]:
    """The seqs of ``bad`` within ``floor..top`` that are not in the new file, as ranges."""
    out: list[tuple[int, int]] = []
    for a0, b0 in bad:
        a, b = max(a0, floor), min(b0, top)
        if a > b:
            continue
        nxt = a
        got = new.execute(
            " UNION ALL ".join(f"SELECT seq FROM {t} WHERE seq BETWEEN ?1 AND ?2"  # noqa: S608
                               for t in schema.TABLES.values()) + " ORDER BY 1", (a, b))
        for (seq,) in got:
            if seq > nxt:
                out.append((nxt, seq - 1))
            nxt = seq + 1
        if nxt <= b:
            out.append((nxt, b))
    return tuple(out)
