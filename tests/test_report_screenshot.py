"""report.html (issue #6): written by every validation run, opens offline, and its plots render in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.cli import main
from modelport.clients import JS_DIR, record
from modelport.clients.harness import chromium_path
from tests.conftest import require_clients


def test_report_screenshot_shows_the_plots(minilm_linked: Path, node_clients: dict, chromium_clients: dict,
                                           tmp_path: Path) -> None:
    require_clients(["chromium-wasm"])
    record(minilm_linked, {**node_clients, **chromium_clients})
    assert main(["report", str(minilm_linked)]) == 0
    page = minilm_linked / "report.html"
    text = page.read_text()
    for runtime in ("Python onnxruntime", "node (cpu)", "chromium-webgpu (webgpu)", "chromium-wasm (wasm)"):
        assert runtime in text, runtime
    assert "not supported on this device" in text and "tokenizer mismatch" in text
    assert text.count('src="data:image/svg+xml;base64,') == 2
    for attr in ('src="http', "href=", "<script", "@import", "url("):
        assert attr not in text, attr  # nothing to fetch: the file is viewable offline

    shot = tmp_path / "report.png"
    proc = subprocess.run(["node", str(JS_DIR / "screenshot.mjs"), str(page), str(shot), str(chromium_path())],
                          capture_output=True, text=True, timeout=120, cwd=JS_DIR)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout)
    assert seen["offline_violations"] == []
    assert [i["alt"] for i in seen["images"]] == ["histogram of absolute errors", "cosine per validation case"]
    for img in seen["images"]:
        assert img["complete"] and img["naturalWidth"] > 600 and img["naturalHeight"] > 300, img
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MODELPORT_KEEP_SCREENSHOT"):  # to look at it: MODELPORT_KEEP_SCREENSHOT=/tmp/report.png
        shutil.copy(shot, os.environ["MODELPORT_KEEP_SCREENSHOT"])


def test_validate_writes_the_report(minilm_linked: Path, capsys: pytest.CaptureFixture) -> None:
    (minilm_linked / "report.html").unlink(missing_ok=True)
    assert main(["validate", str(minilm_linked), "--variants", "fp32"]) == 0
    assert f"wrote {minilm_linked / 'report.html'}" in capsys.readouterr().err
    assert "<h3>Plots</h3>" in (minilm_linked / "report.html").read_text()


def test_report_needs_no_plotting_library(minilm_linked: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    """The plots are SVG written by svgplot: without matplotlib the report is still written, plots included."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    (minilm_linked / "report.html").unlink(missing_ok=True)
    assert main(["validate", str(minilm_linked), "--variants", "fp32"]) == 0
    assert f"wrote {minilm_linked / 'report.html'}" in capsys.readouterr().err
    assert (minilm_linked / "report.html").read_text().count('src="data:image/svg+xml;base64,') == 2


def test_report_for_a_folder_of_artifacts(minilm_linked: Path) -> None:
    """`modelport report artifacts/<model>/` covers every target folder in it (here: one)."""
    folder = minilm_linked.parent
    assert main(["report", str(folder)]) == 0
    text = (folder / "report.html").read_text()
    assert "<h2>onnx — minilm</h2>" in text  # the folder name is not the target name and text.count("<section>") == 1
