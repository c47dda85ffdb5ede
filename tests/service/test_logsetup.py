"""Journald-friendly formatting and the rate limit of repeated messages."""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logsetup import (
    RateLimitFilter,
    set_journal_identity,
    setup_logging,
    subsystem_of,
    syslog_priority,
)


class FakeTime:
    """A settable clock for the rate limiter."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_journal_stream_gets_priority_prefix_and_no_timestamp(
    tmp_path: Path, restore_root: None
) -> None:
    path = tmp_path / "journal"
    with path.open("w+") as stream:
        st = os.fstat(stream.fileno())
        setup_logging("debug", stream=stream, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                      journal_socket=tmp_path / "no-native-socket")
        log = logging.getLogger("truckgw.test")
        log.error("disk %s is full", "/var")
        log.info("hello")
        log.debug("details")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        stream.flush()
        lines = path.read_text().splitlines()
    assert lines[:3] == [
        "<3>truckgw.test: disk /var is full",
        "<6>truckgw.test: hello",
        "<7>truckgw.test: details",
    ]
    # a traceback keeps its priority on every line (journald splits on newlines)
    assert lines[3] == "<3>truckgw.test: failed"
    assert all(line.startswith("<3>") for line in lines[3:])
    assert any("ValueError: boom" in line for line in lines[3:])


def test_terminal_gets_timestamps(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging("info", stream=stream, env={})
    logging.getLogger("truckgw.test").warning("careful")
    line = stream.getvalue().strip()
    assert line.endswith("WARNING truckgw.test: careful")
    assert line[:4].isdigit() and not line.startswith("<")  # an ISO date first


def test_journal_stream_of_another_file_is_ignored(tmp_path: Path, restore_root: None) -> None:
    stream = io.StringIO()  # no fileno: cannot be the journal
    setup_logging("info", stream=stream, env={"JOURNAL_STREAM": "8:12345"})
    logging.getLogger("truckgw.test").info("x")
    assert not stream.getvalue().startswith("<")


def test_level_filters(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging("warning", stream=stream, env={})
    logging.getLogger("truckgw.test").info("quiet")
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("level", "prio"),
    [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
     (logging.DEBUG, 7), (25, 6), (5, 7)],
)
def test_syslog_priority(level: int, prio: int) -> None:
    assert syslog_priority(level) == prio


def _logger_with_limiter(clock: FakeTime) -> tuple[logging.Logger, io.StringIO, RateLimitFilter]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    limiter = RateLimitFilter(burst=3, window_s=60, clock=clock)
    handler.addFilter(limiter)
    log = logging.getLogger(f"truckgw.test.ratelimit.{id(stream)}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return log, stream, limiter


def test_babbling_source_is_rate_limited_and_summarised() -> None:
    clock = FakeTime()
    log, stream, limiter = _logger_with_limiter(clock)
    for _ in range(1000):
        log.warning("bad NMEA checksum on %s", "/dev/ttyACM0")
    log.warning("a different message")
    lines = stream.getvalue().splitlines()
    assert lines == ["bad NMEA checksum on /dev/ttyACM0"] * 3 + ["a different message"]
    assert limiter.suppressed_total == 997
    clock.t += 61
    log.warning("bad NMEA checksum on %s", "/dev/ttyACM0")
    last = stream.getvalue().splitlines()[-1]
    assert last == (
        "bad NMEA checksum on /dev/ttyACM0 [997 identical messages suppressed in the last 61 s]"
    )


def test_flush_reports_a_window_that_ended_quietly() -> None:
    clock = FakeTime()
    log, stream, limiter = _logger_with_limiter(clock)
    for _ in range(10):
        log.error("CAN bus-off")
    limiter.flush()  # window still open: nothing yet
    assert stream.getvalue().splitlines() == ["CAN bus-off"] * 3
    clock.t += 60
    limiter.flush()
    assert stream.getvalue().splitlines()[-1] == (
        "CAN bus-off [7 identical messages suppressed in the last 60 s]"
    )
    limiter.flush()  # reported once
    assert len(stream.getvalue().splitlines()) == 4


def test_distinct_messages_are_not_limited() -> None:
    log, stream, _ = _logger_with_limiter(FakeTime())
    for i in range(50):
        log.info("committed seq high-water mark %d", i)
    assert len(stream.getvalue().splitlines()) == 50


def _parse_journal(data: bytes) -> dict[str, str]:
    """Decode one native-protocol datagram (both the KEY=value and the binary form)."""
    fields: dict[str, str] = {}
    i = 0
    for _ in range(1000):  # bounded: one datagram has far fewer fields
        if i >= len(data):
            break
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            size = int.from_bytes(data[nl + 1:nl + 9], "little")
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A real AF_UNIX datagram socket standing in for journald's."""
    path = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_native_journal_entries_carry_truck_id_and_subsystem(
    tmp_path: Path, restore_root: None, journal: tuple[Path, socket.socket]
) -> None:
    path, sock = journal
    with (tmp_path / "stderr").open("w+") as stream:
        st = os.fstat(stream.fileno())
        set_journal_identity(truck_id="TRK-0007")
        try:
            setup_logging("info", stream=stream, journal_socket=path,
                          env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            logging.getLogger("drivers.gps").warning("gps %s: silent", "/dev/ttyACM0")
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("gateway.uplink_session").exception("publish failed")
            first = _parse_journal(sock.recv(65536))
            second = _parse_journal(sock.recv(65536))
        finally:
            set_journal_identity(truck_id=None)
        stream.seek(0)
        assert stream.read() == ""  # nothing on stderr: the journal took both
    assert first["MESSAGE"] == "gps /dev/ttyACM0: silent"
    assert (first["PRIORITY"], first["TRUCK_ID"], first["SUBSYSTEM"]) == ("4", "TRK-0007", "gps")
    assert first["SYSLOG_IDENTIFIER"] == "truckgw" and first["LOGGER"] == "drivers.gps"
    assert first["CODE_FILE"].endswith("test_logsetup.py") and int(first["CODE_LINE"]) > 0
    assert (second["PRIORITY"], second["SUBSYSTEM"]) == ("3", "uplink")
    assert second["MESSAGE"].startswith("publish failed\nTraceback")  # binary field form
    assert "ValueError: boom" in second["MESSAGE"]


def test_journal_refusing_a_datagram_falls_back_to_the_stream(
    tmp_path: Path, restore_root: None, journal: tuple[Path, socket.socket]
) -> None:
    path, sock = journal
    with (tmp_path / "stderr").open("w+") as stream:
        st = os.fstat(stream.fileno())
        setup_logging("info", stream=stream, journal_socket=path,
                      env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        sock.close()
        path.unlink()  # journald gone (restarting): the entry is not lost
        logging.getLogger("buffer.store").error("disk full")
        stream.seek(0)
        assert stream.read() == "<3>buffer.store: disk full\n"


@pytest.mark.parametrize(("name", "subsystem"), [
    ("drivers.gps", "gps"), ("drivers.nmea", "gps"), ("drivers.j1939_tp", "can"),
    ("drivers.can_io", "can"), ("gateway.uplink_conn", "uplink"), ("gateway.app", "app"),
    ("buffer.commit", "buffer"), ("config.loader", "config"),
    ("gateway.recording.gps", "recording"),
    ("gateway.ingest", "ingest"), ("root", "root"),
])
def test_subsystem_of(name: str, subsystem: str) -> None:
    assert subsystem_of(name) == subsystem
