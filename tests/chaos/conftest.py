"""Print each chaos run's one-line summary at the end of the session (also under xdist)."""

from __future__ import annotations

import pytest

SUMMARY_KEY = "chaos_summary"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = []
    for key in ("passed", "failed"):
        for report in terminalreporter.stats.get(key, []):
            for name, value in getattr(report, "user_properties", []):
                if name == SUMMARY_KEY:
                    lines.append(f"{report.nodeid}: {value}")
    if lines:
        terminalreporter.section("chaos summary")
        for line in lines:
            terminalreporter.write_line(line)
