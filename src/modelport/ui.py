"""Terminal output: step lines with timings and a spinner while a step runs (stderr, via rich).

Long conversions print what they are doing and how long each step took; on a non-terminal
(CI logs, docker logs) rich drops the spinner and the step lines remain.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table


def console() -> Console:
    return Console(stderr=True, highlight=False)


class Steps:
    """Call with a message to start a step; the previous one is printed with its duration."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.current: str | None = None
        self.started = 0.0
        self.status = out.status("", spinner="dots")
        self.status.start()

    def __call__(self, message: str) -> None:
        self._finish()
        self.current = message
        self.started = time.perf_counter()
        self.status.update(f"{message} ...")

    def note(self, message: str) -> None:
        """A line that stays on screen (a lint warning, a skipped check), between step lines."""
        from rich.markup import escape

        self.out.print(f"[yellow]![/] {escape(message)}", soft_wrap=True)

    def _finish(self) -> None:
        if self.current is not None:
            self.out.print(f"[green]✓[/] {self.current} [dim]({time.perf_counter() - self.started:.1f}s)[/]")
            self.current = None

    def close(self, ok: bool = True) -> None:
        if ok:
            self._finish()
        self.status.stop()

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(ok=exc_type is None)


def report_table(report: dict[str, Any]) -> Table:
    """The validation summary as a table, drawn by the report's family (one row per variant)."""
    from . import families

    return families.get(report.get("family", "sentence-encoder")).report_table(report)
