"""`modelport` ends with os._exit after main() (cli.run): exit codes and piped output must survive it."""

from __future__ import annotations

import os
import subprocess
import sys

from modelport import __version__


def modelport(*args: str) -> subprocess.CompletedProcess:
    """Run the command as users do, with block-buffered pipes (PYTHONUNBUFFERED would hide a lost flush)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-m", "modelport", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_exit_codes_and_usage_errors_survive_the_fast_exit() -> None:
    version = modelport("--version")
    assert version.returncode == 0 and __version__ in version.stdout
    usage = modelport("no-such-command")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr and "Traceback" not in usage.stderr
    missing = modelport("convert", "no-such-model", "--target", "onnx")
    assert missing.returncode == 2 and missing.stderr.startswith("error: model not found")


def test_piped_output_is_flushed_whole() -> None:
    """Output to a pipe is block-buffered: os._exit without the flush would lose what is still buffered."""
    proc = modelport("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"modelport {__version__}"
    proc = modelport("recipes")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0
    assert "decoder LLM thresholds" in text and text.rstrip().endswith("┘")
