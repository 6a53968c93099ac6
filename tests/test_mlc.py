"""MLC / WebLLM target: packages WebLLM loads, checked in Node (wasm32 CPU) and in Chromium (WebGPU).

Prerequisites come from scripts/setup-mlc.sh; locally a missing one skips with the reason, in CI
(CI=true) it fails. TVM's web runtime is built once and kept in the persistent modelport cache
(MODELPORT_WEB_RUNTIME_CACHE), not the per-session test cache, so a second run reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from modelport import manifest
from modelport.fsutil import read_json
from modelport.reference import Golden

from .conftest import convert

JS = Path(__file__).parents[1] / "src" / "modelport" / "targets" / "mlc_js"


def _missing() -> list[str]:
    missing = [f"{tool} is not installed" for tool in ("emcc", "node") if not shutil.which(tool)]
    try:
        import tvm  # noqa: F401
    except ImportError:
        missing.append("apache-tvm is not installed")
    if not (JS / "node_modules" / "@mlc-ai" / "web-runtime").is_dir():
        missing.append(f"npm packages are not installed in {JS}")
    return missing


@pytest.fixture(scope="module", autouse=True)
def mlc_prerequisites() -> None:
    missing = _missing()
    if missing:
        why = "; ".join(missing) + " (run scripts/setup-mlc.sh)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true but the MLC prerequisites are missing: {why}", pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module", autouse=True)
def persistent_runtime_cache(mlc_prerequisites: None) -> None:
    """The runtime build takes minutes: keep it in the real cache, shared across test sessions."""
    if not os.environ.get("MODELPORT_WEB_RUNTIME_CACHE"):
        home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        os.environ["MODELPORT_WEB_RUNTIME_CACHE"] = str(home / "modelport" / "mlc-runtime")


@pytest.fixture(scope="module")
def minilm_mlc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM f32, validated in Node only (the Chromium check has its own slow test)."""
    out = tmp_path_factory.mktemp("mlc") / "minilm"
    os.environ["MODELPORT_MLC_BROWSER"] = "off"
    try:
        assert convert("all-minilm-l6-v2", "--target", "mlc", "--variants", "f32", "--out", str(out)) == 0
    finally:
        del os.environ["MODELPORT_MLC_BROWSER"]
    return out


@pytest.fixture(scope="module")
def arctic_mlc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlc") / "arctic"
    assert convert("tiny-bert-arctic", "--target", "mlc", "--variants", "f32", "--out", str(out),
                   "--skip-validation") == 0
    return out


def node_json(script: str, *args: str) -> dict:
    proc = subprocess.run(["node", str(JS / script), *args], cwd=JS, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_minilm_f32_matches_pytorch_in_node(minilm_mlc: Path) -> None:
    validation = manifest.load(minilm_mlc)["validation"]
    assert validation["status"] == "pass", validation
    f32 = validation["variants"]["f32"]
    assert f32["metrics"]["tokens_max_abs"] <= 1e-5 and f32["metrics"]["pooled_max_abs"] <= 1e-5
    # prefill's tensor (what WebLLM reads) is encode's pooled row + token rows, bit for bit
    assert f32["extra"]["prefill_vs_encode_max_abs"] == 0.0
    assert "@mlc-ai/web-runtime 0.27.0-dev0" in validation["runtime"]


def test_package_is_what_webllm_expects(minilm_mlc: Path) -> None:
    pkg = minilm_mlc / "f32" / "resolve" / "main"  # WebLLM appends resolve/main/ to the model URL
    cfg = read_json(pkg / "mlc-chat-config.json")
    assert cfg["context_window_size"] == cfg["prefill_chunk_size"] == 256  # MiniLM's real max length
    assert cfg["sliding_window_size"] == -1 and cfg["tokenizer_files"][0] == "tokenizer.json"
    tok = read_json(pkg / "tokenizer.json")
    assert tok["padding"] is None  # MiniLM ships Fixed 128 padding: WebLLM would pool it
    assert tok["truncation"]["max_length"] == 256
    cache = read_json(pkg / "tensor-cache.json")
    shards = {r["dataPath"] for r in cache["records"]}
    assert shards == {p.name for p in pkg.glob("params_shard_*.bin")} and all(r["md5sum"] for r in cache["records"])
    names = {t["name"] for r in cache["records"] for t in r["records"]}
    info = node_json("lib_info.mjs", str(minilm_mlc / "libs" / "all-minilm-l6-v2-f32-wasm32-cpu.wasm"))
    assert info["functions"]["prefill"] and info["functions"]["_metadata"]
    meta = info["metadata"]
    assert {p["name"] for p in meta["params"]} == names
    assert meta["prefill_chunk_size"] == 256 and meta["max_batch_size"] == 32


def test_webgpu_library_has_wgsl_without_inf_literals(minilm_mlc: Path) -> None:
    """The WebGPU library embeds its WGSL; TVM prints +inf as `inff`, which WGSL rejects."""
    lib = (minilm_mlc / "libs" / "all-minilm-l6-v2-f32-webgpu.wasm").read_bytes()
    assert lib[:4] == b"\0asm"
    assert lib.count(b"@compute") > 10
    assert b"inff" not in lib


def test_app_config_snippet(minilm_mlc: Path) -> None:
    script = ("const m = await import(process.argv[1]); "
              "console.log(JSON.stringify(m.appConfig('http://127.0.0.1:8000/pkg/')))")
    proc = subprocess.run(["node", "--input-type=module", "-e", script,
                           (minilm_mlc / "webllm-app-config.js").as_uri()], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["model_list"][0]
    assert entry == {"model": "http://127.0.0.1:8000/pkg/f32/", "model_id": "all-minilm-l6-v2-f32",
                     "model_lib": "http://127.0.0.1:8000/pkg/libs/all-minilm-l6-v2-f32-webgpu.wasm",
                     "model_type": 1}
    readme = (minilm_mlc / "README.md").read_text()
    assert "adds none" in readme and "[CLS] <text> [SEP]" in readme


def test_a_changed_weight_is_caught(minilm_mlc: Path, tmp_path: Path) -> None:
    """0.1 % on the last LayerNorm weight in the tensor cache moves the output past 1e-5."""
    from modelport.targets.mlc import NodeRunner

    src = minilm_mlc / "f32" / "resolve" / "main"
    pkg = tmp_path / "pkg"
    shutil.copytree(src, pkg)
    cache = read_json(pkg / "tensor-cache.json")
    shard, rec = next((s, r) for s in cache["records"] for r in s["records"]
                      if r["name"] == "encoder.layer.5.output.LayerNorm.weight")
    with open(pkg / shard["dataPath"], "r+b") as f:
        f.seek(rec["byteOffset"])
        w = np.frombuffer(f.read(rec["nbytes"]), dtype="<f4") * np.float32(1.001)
        f.seek(rec["byteOffset"])
        f.write(w.astype("<f4").tobytes())
    golden = Golden.load(minilm_mlc)
    case = next(c["name"] for c in golden.cases if not c["batched"] and c["lengths"][0] > 8)
    feeds = golden.inputs(case)
    lib = minilm_mlc / "libs" / "all-minilm-l6-v2-f32-wasm32-cpu.wasm"
    for folder, ok in ((src, True), (pkg, False)):
        runner = NodeRunner(lib, folder)
        hidden, _, _ = runner(feeds["input_ids"], feeds["attention_mask"])
        runner.close()
        diff = np.abs(hidden - golden.output(case, "last_hidden_state")).max()
        assert bool(diff <= 1e-5) is ok, diff


def test_tiny_bert_arctic_package(arctic_mlc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    man = manifest.load(arctic_mlc)
    assert man["recipe"]["pooling"] == "cls" and man["recipe"]["max_length"] == 512
    assert man["target"]["special_tokens"]["prefix"] == ["[CLS]"]
    cfg = read_json(arctic_mlc / "f32" / "resolve" / "main" / "mlc-chat-config.json")
    assert cfg["context_window_size"] == 512 and cfg["modelport"]["pooling"] == "cls"
    for kind in ("webgpu", "wasm32-cpu"):
        assert (arctic_mlc / "libs" / f"tiny-bert-arctic-f32-{kind}.wasm").stat().st_size > 1_000_000
    # The CLS row and L2 normalization are inside the library: row 0 of prefill is unit length.
    from modelport.targets.mlc import NodeRunner

    monkeypatch.chdir(arctic_mlc.parent)  # relative paths (as from --out) must work too
    rel = Path(arctic_mlc.name)
    runner = NodeRunner(rel / "libs" / "tiny-bert-arctic-f32-wasm32-cpu.wasm", rel / "f32" / "resolve" / "main")
    ids = np.array([[101, 7592, 2088, 102]])
    hidden, pooled, webllm = runner(ids, np.ones_like(ids))
    runner.close()
    assert np.allclose(np.linalg.norm(webllm[0, 0]), 1.0, atol=1e-5)
    assert np.allclose(webllm[0, 0], hidden[0, 0] / np.linalg.norm(hidden[0, 0]), atol=1e-6)


def test_runtime_is_cached_by_content_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport import mlc_build

    runtime = mlc_build.build_runtime()  # built by the fixtures above: a cache hit
    assert all((runtime / f"{u}.o").is_file() for u in mlc_build.RUNTIME_UNITS)
    assert runtime.name == mlc_build._runtime_key()
    headers = tmp_path / "headers"
    shutil.copytree(mlc_build.HEADERS, headers)
    (headers / "src" / "support" / "utils.h").write_text("// changed\n")
    monkeypatch.setattr(mlc_build, "HEADERS", headers)
    assert mlc_build._runtime_key() != runtime.name


def test_variants_are_mlc_names(capsys, tmp_path: Path) -> None:
    assert convert("tiny-bert-arctic", "-t", "mlc", "--variants", "q4f16_1", "--out", str(tmp_path / "x")) == 2
    assert "this target writes: f32" in capsys.readouterr().err


@pytest.mark.slow
def test_webllm_in_chromium_matches_pytorch(minilm_mlc: Path) -> None:
    """WebLLM 0.2.86 in headless Chromium (SwiftShader WebGPU), everything from 127.0.0.1."""
    from modelport.targets import mlc_browser

    missing = mlc_browser.missing_prerequisites()
    if missing and os.environ.get("CI", "").lower() not in ("true", "1"):
        pytest.skip("; ".join(missing))
    result = mlc_browser.validate_in_chromium(minilm_mlc, "f32", Golden.load(minilm_mlc))
    check = result["webllm_chromium"]
    assert result["browser_failures"] == [], check
    golden = Golden.load(minilm_mlc)
    assert check["by_ids"]["texts"] == len(mlc_browser.chosen_texts(golden, mlc_browser.max_tokens())) >= 30
    assert check["by_ids"]["max_abs"] <= 1e-5 and not check.get("off_origin_requests")
    assert check["by_text"]["max_abs"] <= 1e-5 and check["token_counts_match"]
