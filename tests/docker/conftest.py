"""Docker tier: what its modules share — the engine and the base + onnx + validator images (built once
per session), the shell/make helpers, and lines the tier reports at the end of the run (its free-disk
low-water mark).

Written from a fixture's teardown, output there is captured; pytest_terminal_summary prints it."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest

SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for line in SUMMARY:
        terminalreporter.write_line(line)


ROOT = Path(__file__).resolve().parents[2]
# Images are tagged modelport/<name>:<pyproject's version> (the Makefile's VERSION).
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Debian's docker.io client (BuildKit built in), which the engine fixture installs when missing.
# Resolved here as a fixed path, not by looking at PATH at import time: before the fixture runs, the
# only client may be one without buildx (/usr/local/bin/docker on this machine), which cannot build.
DOCKER = "/usr/bin/docker"
BASE = "modelport/base:bookworm"
MODEL = "all-minilm-l6-v2"

def sh(*cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, env={**os.environ, **(env or {})})
    print(f"$ {' '.join(cmd)}  ({time.perf_counter() - t0:.0f}s, rc={p.returncode})")
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def make(*targets: str, check: bool = True) -> subprocess.CompletedProcess:
    # PRUNE_BUILD_CACHE=1: this tier builds each image once; BuildKit's cache would hold a second
    # copy of every raw layer (several GB for the mlc image) that nothing here reuses.
    return sh("make", f"DOCKER={DOCKER}", f"BASE={BASE}", f"PYTHON={ROOT}/.venv/bin/python",
              "PRUNE_BUILD_CACHE=1", *targets, check=check)


def drop_image(name: str) -> None:
    """Remove a toolchain image after its last test, with its stamp (so `make` would rebuild it).

    The tier's disk peak is then base + onnx + validator + the one toolchain image being built,
    not every image at once: CI machines share a disk whose free space varies (it once ran out)."""
    sh(DOCKER, "rmi", f"modelport/{name}:{VERSION}", check=False)
    (ROOT / "build/stamps" / f"image-{name}").unlink(missing_ok=True)


class DiskWatch:
    """Samples free space on Docker's data root every second: the tier reports its own peak."""

    def __init__(self, path: str = "/var/lib/docker") -> None:
        self.path = path if os.path.exists(path) else "/"
        self.start = self.low = shutil.disk_usage(self.path).free
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.low = min(self.low, shutil.disk_usage(self.path).free)

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        end = shutil.disk_usage(self.path).free
        return (f"docker tier disk ({self.path}): free {self.start / 1e9:.1f} GB at start, "
                f"{self.low / 1e9:.1f} GB at the lowest (peak use {(self.start - self.low) / 1e9:.1f} GB), "
                f"{end / 1e9:.1f} GB at the end")


@pytest.fixture(scope="session")
def engine():
    sh("scripts/docker-engine.sh", "start")
    watch = DiskWatch()
    yield
    # Runs on the same machine reuse what is left, but each new commit (SOURCE_DATE_EPOCH) leaves the
    # previous normalized images dangling: bound both images and BuildKit's cache.
    sh(DOCKER, "image", "prune", "-f", check=False)
    sh(DOCKER, "builder", "prune", "-f", "--keep-storage", "5GB", check=False)
    SUMMARY.append(watch.stop())
    sh("scripts/docker-engine.sh", "stop", check=False)


@pytest.fixture(scope="session")
def images(engine) -> dict[str, str]:
    """Base (debootstrap) + the onnx and validator images, built hermetically and normalized."""
    have_base = sh(DOCKER, "image", "inspect", BASE, check=False).returncode == 0
    if not have_base:
        make("base")
    make("image-onnx", "image-validator")
    ids = {}
    for name in ("onnx", "validator"):
        ids[name] = (ROOT / "build/stamps" / f"image-{name}").read_text().split()[0]
    return ids
