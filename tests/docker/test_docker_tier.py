"""Docker tier: the workbench as users run it — engine, base image, hermetic images, `make webgpu`.

Runs only with MODELPORT_DOCKER_TESTS=1 (`make test-docker`, CI). It installs and starts a Docker
engine if none runs (scripts/docker-engine.sh) and stops the one it started. Expensive things are
built once per run and reused by the next run on the same machine (base image, BuildKit cache);
a clean machine builds everything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest

from .conftest import SUMMARY

ROOT = Path(__file__).resolve().parents[2]
# Images are tagged modelport/<name>:<pyproject's version> (the Makefile's VERSION).
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Debian's docker.io client (BuildKit built in), which the engine fixture installs when missing.
# Resolved here as a fixed path, not by looking at PATH at import time: before the fixture runs, the
# only client may be one without buildx (/usr/local/bin/docker on this machine), which cannot build.
DOCKER = "/usr/bin/docker"
BASE = "modelport/base:bookworm"
MODEL = "all-minilm-l6-v2"

pytestmark = pytest.mark.skipif(os.environ.get("MODELPORT_DOCKER_TESTS") != "1",
                                reason="Docker tier: set MODELPORT_DOCKER_TESTS=1 (make test-docker)")


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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


def test_make_webgpu_produces_a_validated_artifact(images: dict[str, str]) -> None:
    make("webgpu", f"MODEL={MODEL}")
    art = ROOT / "artifacts" / MODEL / "onnx"
    man = json.loads((art / "manifest.json").read_text())
    assert man["validation"]["status"] == "pass", man["validation"]
    assert set(man["validation"]["variants"]) == {"fp32", "fp16", "q8", "uint8", "q4", "q4f16"}
    assert man["validation"]["variants"]["fp32"]["metrics"]["tokens_max_abs"] <= 1e-5
    # Converted in the onnx image, validated in the validator image: both recorded by content ID.
    assert man["images"]["convert"].endswith(images["onnx"])
    assert man["images"]["validate"].endswith(images["validator"])
    # The validator needs only the artifact and onnxruntime: no torch in its image.
    probe = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)"
    assert sh(DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "python", f"modelport/validator:{VERSION}",
              "-c", probe).stdout.split() == ["True", "True"]
    from modelport.manifest import verify_files

    assert verify_files(art, man) == []


@pytest.mark.parametrize("target", ["mlx", "coreml"])
def test_make_other_targets_on_a_tiny_model(images: dict[str, str], target: str) -> None:
    """Each toolchain image converts (as the invoking user, no network); the validator validates.

    A tiny model keeps this tier's time down: the native tier proves MiniLM parity per target;
    this proves the images, mounts and Makefile plumbing.
    """
    model = "tiny-xlm-roberta"
    make(f"image-{target}")
    make(target, f"MODEL={model}")
    art = ROOT / "artifacts" / model / target
    man = json.loads((art / "manifest.json").read_text())
    assert man["validation"]["status"] == "pass", man["validation"]
    image_id = (ROOT / "build/stamps" / f"image-{target}").read_text().split()[0]
    assert man["images"]["convert"].endswith(image_id)
    assert man["images"]["validate"].endswith(images["validator"])
    assert os.stat(art / "manifest.json").st_uid == os.getuid()  # written as the invoking user
    from modelport.manifest import verify_files

    assert verify_files(art, man) == []
    drop_image(target)


def test_make_mlc_validates_in_node_and_chromium(images: dict[str, str]) -> None:
    """The mlc image (TVM + Debian emscripten) builds the WebLLM package as the invoking user with no
    network; the validator image runs the wasm32 library in Node and WebLLM in headless Chromium.

    TVM's web runtime objects are keyed by content hash (wheel RECORDs, emcc version, flags): the
    same key natively and in the image, so the native tier's build is mounted and reused."""
    model = "tiny-bert-arctic"
    make("image-mlc")
    make("mlc", f"MODEL={model}", "VARIANTS=f32", f"MLC_RUNTIME_CACHE={_runtime_cache()}")
    art = ROOT / "artifacts" / model / "mlc"
    man = json.loads((art / "manifest.json").read_text())
    assert man["validation"]["status"] == "pass", man["validation"]
    f32 = man["validation"]["variants"]["f32"]
    assert f32["metrics"]["tokens_max_abs"] <= 1e-5
    browser = f32["extra"]["webllm_chromium"]
    assert browser["status"] == "pass" and browser["by_ids"]["max_abs"] <= 1e-5, browser
    image_id = (ROOT / "build/stamps" / "image-mlc").read_text().split()[0]
    assert man["images"]["convert"].endswith(image_id)
    assert man["images"]["validate"].endswith(images["validator"])
    from modelport.manifest import verify_files

    assert verify_files(art, man) == []
    drop_image("mlc")


def test_make_clients_runs_transformers_js_in_the_validator_image(images: dict[str, str]) -> None:
    """transformers.js in Node (onnxruntime-node) and headless Chromium (wasm) inside the image, on the
    MiniLM artifact `make webgpu` made. (SwiftShader WebGPU runs on the CPU at ~1 min per variant
    here; the native tier covers it, and `make mlc`'s WebLLM check runs WebGPU in this image.)

    fp32, fed the golden token ids, must pass in both clients, and so must the clients: the validation
    texts stay within what every client tokenizes alike (validation set 2026.12-1). A golden made
    before it holds a text longer than MiniLM's 256 tokens, which transformers.js 4.3.1 truncates after
    adding special tokens (text 46 loses its [SEP]): a known client difference, reported, not failed.
    """
    make("webgpu", f"MODEL={MODEL}")
    p = make("clients", f"MODEL={MODEL}", "CLIENTS=node,chromium-wasm", "VARIANTS=fp32", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    man = json.loads((ROOT / "artifacts" / MODEL / "onnx" / "manifest.json").read_text())
    clients = man["validation"]["clients"]
    assert set(clients) == {"node", "chromium-wasm"}
    for name, entry in clients.items():
        assert {v: r["verdict"] for v, r in entry["variants"].items()} == {"fp32": "pass"}, name
        assert entry["status"] == "pass", (name, entry["tokenizer"])
        assert entry["tokenizer"]["status"] in ("pass", "known-difference"), (name, entry["tokenizer"])
        assert all(m["known"] for m in entry["tokenizer"]["mismatches"]), (name, entry["tokenizer"])
    assert clients["chromium-wasm"]["versions"]["chromium"].startswith("Chrome/")


def test_second_run_does_nothing(images: dict[str, str]) -> None:
    make("webgpu", f"MODEL={MODEL}")  # idempotent whatever the order tests run in
    q = make("--question", "webgpu", f"MODEL={MODEL}", check=False)
    assert q.returncode == 0, "make webgpu is not up to date after a successful run"
    again = make("webgpu", f"MODEL={MODEL}")
    assert "docker" not in again.stdout.replace("make", ""), again.stdout


def test_validator_image_rebuilds_to_the_same_id(images: dict[str, str]) -> None:
    """A clean (--no-cache) rebuild of the validator image gives the ID of the fixture's build.

    The validator has every kind of layer the images use: Debian packages (Chromium, from the
    debhouse), Node + `npm ci` (npmhouse), pip (wheelhouse) and modelport's wheel. On a fresh machine
    (CI) the fixture's build is itself a clean build: two clean builds compared, at the cost of one.
    If this fails, `scripts/diff_images.py` names the layer and files that differ.
    """
    tag = "modelport/validator:repro"
    sh(DOCKER, "build", "--no-cache", "--network", "none", "--build-arg", f"BASE={BASE}",
       "--build-arg", f"SOURCE_DATE_EPOCH={_epoch()}", "--build-arg", f"VERSION={VERSION}",
       "-f", "images/validator/Dockerfile", "-t", f"{tag}-raw", ".", env={"DOCKER_BUILDKIT": "1"})
    out = sh(f"{ROOT}/.venv/bin/python", "scripts/normalize_image.py", "--remove-source", f"{tag}-raw", tag,
             env={"SOURCE_DATE_EPOCH": _epoch(), "DOCKER": DOCKER})
    rebuilt = out.stdout.split()[0]
    diff = "" if rebuilt == images["validator"] else sh(
        f"{ROOT}/.venv/bin/python", "scripts/diff_images.py", f"modelport/validator:{VERSION}", tag, check=False,
        env={"DOCKER": DOCKER}).stdout
    sh(DOCKER, "rmi", tag, check=False)
    sh(DOCKER, "builder", "prune", "-af", check=False)
    assert rebuilt == images["validator"], diff


def test_image_digests_lists_built_images(images: dict[str, str]) -> None:
    out = make("image-digests").stdout
    assert images["onnx"] in out and images["validator"] in out


def _runtime_cache() -> Path:
    """Where the native tier (tests/test_mlc.py) keeps TVM's web runtime build."""
    path = Path(os.environ.get("MODELPORT_WEB_RUNTIME_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelport" / "mlc-runtime")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _epoch() -> str:
    return sh("git", "log", "-1", "--format=%ct").stdout.strip()
