"""Docker tier: lines the tier reports at the end of the run (its free-disk low-water mark).

Written from a fixture's teardown, output there is captured; pytest_terminal_summary prints it."""

from __future__ import annotations

SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for line in SUMMARY:
        terminalreporter.write_line(line)
