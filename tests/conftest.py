"""Shared fixtures: an isolated modelport cache and artifacts converted once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelport.cli import main


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built fresh into a per-session cache (also proves the builders work)."""
    cache = Path(os.environ.get("MODELPORT_TEST_CACHE") or tmp_path_factory.mktemp("modelport-cache"))
    os.environ["MODELPORT_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


def convert(*args: str) -> int:
    return main(["convert", *args])


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "minilm"
    assert convert("all-minilm-l6-v2", "--target", "onnx", "--out", str(out)) == 0
    return out


@pytest.fixture(scope="session")
def xlmr_onnx(shared_artifact) -> Path:
    return shared_artifact("tiny-xlm-roberta", "onnx")


# --- real clients (transformers.js in Node and headless Chromium): run once per session --------------
# Installed by scripts/setup-clients.sh. Locally a missing prerequisite skips with the reason; in CI
# (CI=true) it fails, so the checks can never silently disappear from the pipeline.
CHROMIUM_PLAN = {"chromium-webgpu": ["fp32", "q4", "fp16"], "chromium-wasm": ["fp32", "fp16"]}


def require_clients(names: list[str]) -> None:
    from modelport.clients import missing_prerequisites

    missing = missing_prerequisites(names)
    if missing:
        why = "; ".join(missing) + " (run scripts/setup-clients.sh)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true but the client prerequisites are missing: {why}", pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="session")
def node_clients(minilm_onnx: Path) -> dict:
    """Every MiniLM variant through transformers.js in Node (onnxruntime-node, CPU), all golden cases."""
    from modelport.clients import check

    require_clients(["node"])
    return check(minilm_onnx, {"node": None})


@pytest.fixture(scope="session")
def chromium_clients(minilm_onnx: Path) -> dict:
    """MiniLM in headless Chromium: WebGPU (SwiftShader; quick subset, it runs ~4 s per call) and wasm (all cases)."""
    from modelport.clients import check

    require_clients(list(CHROMIUM_PLAN))
    return check(minilm_onnx, CHROMIUM_PLAN, quick={"chromium-webgpu"})


@pytest.fixture()
def minilm_linked(minilm_onnx: Path, tmp_path: Path) -> Path:
    """A hard-linked copy of the MiniLM artifact: instant, no disk. Replace a file (unlink, then write)
    to change it; writing into a linked file in place would change the session's artifact too."""
    import shutil

    dst = tmp_path / "minilm"
    shutil.copytree(minilm_onnx, dst, copy_function=os.link)
    return dst


# --- artifacts shared across test files: one conversion per (model, target, variants) per session --------
@pytest.fixture(scope="session")
def shared_artifact(tmp_path_factory: pytest.TempPathFactory):
    """`shared_artifact(model, target, variants)` converts (and validates) on first use and returns the
    artifact directory; later calls with the same key reuse it. The contract test and the per-target
    suites ask for the same keys, so the registry contract costs no extra conversion in CI."""
    made: dict[tuple, Path] = {}

    def get(model: str, target: str, variants: str | None = None, *extra: str, env: dict[str, str] | None = None,
            accept: tuple[int, ...] = (0,)) -> Path:
        key = (model, target, variants, extra, tuple(sorted((env or {}).items())))
        if key not in made:
            out = tmp_path_factory.mktemp("shared") / f"{model}-{target}"
            args = [model, "--target", target, *(["--variants", variants] if variants else []), *extra]
            saved = {k: os.environ.get(k) for k in env or {}}
            os.environ.update(env or {})
            try:
                assert convert(*args, "--out", str(out)) in accept
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            made[key] = out
        return made[key]

    return get
