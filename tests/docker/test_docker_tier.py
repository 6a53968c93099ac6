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
from pathlib import Path

import pytest

from .conftest import BASE, DOCKER, MODEL, ROOT, VERSION, drop_image, make, sh

pytestmark = pytest.mark.skipif(os.environ.get("MODELPORT_DOCKER_TESTS") != "1",
                                reason="Docker tier: set MODELPORT_DOCKER_TESTS=1 (make test-docker)")


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


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`, Docker Desktop's) where the client has it, else Debian
    bookworm's `docker-compose` v1 (what scripts/docker-engine.sh installs): both read the file alike."""
    if sh(DOCKER, "compose", "version", check=False).returncode == 0:
        return [DOCKER, "compose"]
    return ["docker-compose"]


def test_compose_converts_and_validates_after_make_prepare(images: dict[str, str]) -> None:
    """`make prepare` is the one preparation: then compose converts (no network, as the user named in
    .env or overridden per run) and the validator service validates, recording the normalized IDs."""
    compose = compose_command()
    # Without .env (or the variables), compose stops with one line saying what to run, not a guess.
    empty = ROOT / "build" / "empty.env"
    empty.parent.mkdir(exist_ok=True)
    empty.write_text("")
    bare = sh(*compose, "--env-file", str(empty), "config", check=False,
              env={k: "" for k in ("MODELPORT_VERSION", "MODELPORT_UID", "MODELPORT_GID")})
    assert bare.returncode != 0 and "run make prepare" in bare.stderr, bare.stderr
    make("prepare", "SERVICES=onnx validator")
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if not line.startswith("#"))
    assert env["MODELPORT_VERSION"] == VERSION and env["MODELPORT_UID"] == str(os.getuid())
    assert env["MODELPORT_ID_ONNX"] == images["onnx"] and env["MODELPORT_ID_VALIDATOR"] == images["validator"]
    # A user other than the one in .env, given per run (bash's read-only UID made compose fall back to 1000).
    uid = {"MODELPORT_UID": "4321", "MODELPORT_GID": "4321"}
    model = "tiny-xlm-roberta"
    host_dir = ROOT / "artifacts" / f"compose-{model}"
    shutil.rmtree(host_dir, ignore_errors=True)
    host_dir.mkdir(parents=True)
    os.chown(host_dir, 4321, 4321)
    out = f"/artifacts/compose-{model}/onnx"
    sh(*compose, "run", "--rm", "onnx", "convert", model, "--target", "onnx", "--variants", "fp32,q8",
       "--out", out, "--skip-validation", env=uid)
    sh(*compose, "run", "--rm", "validator", "validate", out, env=uid)
    art = host_dir / "onnx"
    man = json.loads((art / "manifest.json").read_text())
    assert man["validation"]["status"] == "pass", man["validation"]
    assert man["images"]["convert"] == f"modelport/onnx:{VERSION}@{images['onnx']}"
    assert man["images"]["validate"] == f"modelport/validator:{VERSION}@{images['validator']}"
    assert os.stat(art / "manifest.json").st_uid == 4321
    shutil.rmtree(host_dir)


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
