"""Journald-friendly formatting and the rate limit of repeated messages."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logsetup import RateLimitFilter, setup_logging, syslog_priority


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
        setup_logging("debug", stream=stream, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
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
