"""One Node process running a model library through TVM's web runtime (the npm harnesses in js/).

Shared by the embedding runner (encoder.NodeRunner, js/node_runner.mjs) and the chat runner
(decoder.NodeLMRunner, js/lm_runner.mjs): both start a script on (library, package), wait for its
`{"ready": ...}` line, then exchange one JSON line per request and a JSON header + float32 bytes
per reply, so the module and its weights load once.
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ToolchainError
from .layout import JS


def node() -> str:
    path = shutil.which("node")
    if path is None:
        raise ToolchainError("node is not installed: run scripts/setup-mlc.sh")
    if not (JS / "node_modules" / "@mlc-ai" / "web-runtime").is_dir():
        raise ToolchainError(f"npm packages missing in {JS}: run scripts/setup-mlc.sh")
    return path


class NodeProcess:
    """`node <script> <wasm> <pkg>` (absolute paths: Node runs in the npm folder to resolve its packages)."""

    def __init__(self, script: str, wasm: Path, pkg: Path, what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen([node(), str(JS / script), str(wasm.resolve()), str(pkg.resolve())], cwd=JS,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        atexit.register(self.close)
        ready = self.proc.stdout.readline()
        if not ready.startswith(b'{"ready"'):
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            raise ToolchainError(f"the Node {what} did not start: {(ready.decode(errors='replace') + err)[-1500:]}")
        self.ready: dict[str, Any] = json.loads(ready)
        self.seconds = 0.0

    def request(self, payload: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Send one request; returns (header, float32 arrays of the header's `shapes`)."""
        self.proc.stdin.write((json.dumps(payload) + "\n").encode())
        self.proc.stdin.flush()
        header = json.loads(self.proc.stdout.readline() or b'{"error": "Node exited"}')
        if "error" in header:
            raise ToolchainError(f"wasm32 CPU library failed in Node ({self.what}): {header['error']}")
        self.seconds += header["seconds"]
        arrays = []
        for shape in header["shapes"]:
            n = int(np.prod(shape)) * 4
            arrays.append(np.frombuffer(self.proc.stdout.read(n), dtype="<f4").reshape(shape).copy())
        return header, arrays

    def finish(self, result: dict[str, Any]) -> None:
        """Record the seconds spent inside the library's calls into `result`, and stop the process."""
        result["node_seconds"] = round(self.seconds, 2)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
