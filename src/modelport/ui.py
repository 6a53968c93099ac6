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
    """The validation summary as a table: one row per variant."""
    if report.get("family") == "causal-lm":
        return lm_report_table(report)
    table = Table(title=f"validation: {report['target']} ({report['runtime']})")
    for col in ("variant", "verdict", "tok max abs", "pooled max abs", "cos min", "cos mean", "top-5", "time"):
        table.add_column(col, justify="right" if col not in ("variant", "verdict") else "left")
    for name, r in report["variants"].items():
        m = r["metrics"] or {}
        verdict = "[green]pass[/]" if r["verdict"] == "pass" else "[red]FAIL[/]"
        fmt = lambda k, f: (f.format(m[k]) if k in m else "-")  # noqa: E731
        table.add_row(name, verdict, fmt("tokens_max_abs", "{:.2e}"), fmt("pooled_max_abs", "{:.2e}"),
                      fmt("cos_min", "{:.6f}"), fmt("cos_mean", "{:.6f}"), fmt("top5_mean", "{:.2f}"),
                      f"{r['seconds']:.1f}s")
    return table


def lm_report_table(report: dict[str, Any]) -> Table:
    """Decoder LLMs: logits distances and token agreement against the gated golden, plus (for
    quantized variants) top-1 / KL against fp32 PyTorch."""
    table = Table(title=f"validation: {report['target']} ({report['runtime']}), decoder: max abs logits")
    # "gate": the golden the row is judged against (fp32, or PyTorch on the dequantized weights)
    cols = ("variant", "verdict", "gate", "prefill", "step", "kv/full", "greedy", "top1 fp32", "KL fp32", "time")
    for col in cols:
        table.add_column(col, justify="left" if col in ("variant", "verdict", "gate") else "right", no_wrap=True)
    for name, r in report["variants"].items():
        m = r["metrics"] or {}
        vs = (r.get("extra") or {}).get("vs_fp32") or m
        verdict = "[green]pass[/]" if r["verdict"] == "pass" else "[red]FAIL[/]"
        fmt = lambda d, k, f: (f.format(d[k]) if k in d else "-")  # noqa: E731
        greedy = f"{m['greedy_equal']}/{m['greedy_total']}" if m else "-"
        reference = (r.get("thresholds") or {}).get("reference", "-")
        gate = {"dequantized": "dequant"}.get(reference, reference)
        table.add_row(name, verdict, gate,
                      fmt(m, "prefill_max_abs", "{:.2e}"), fmt(m, "step_max_abs", "{:.2e}"),
                      fmt(m, "kv_vs_full_max_abs", "{:.2e}"), greedy, fmt(vs, "top1_agreement", "{:.3f}"),
                      fmt(vs, "kl_mean", "{:.1e}"), f"{r['seconds']:.1f}s")
    return table
