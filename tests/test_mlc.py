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

JS = Path(__file__).parents[1] / "src" / "modelport" / "targets" / "mlc" / "js"


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
def arctic_mlc(shared_artifact) -> Path:
    """tiny-bert-arctic f32 + f16, the f16 variant validated in Node against the fp16 gate (the
    Chromium check is run by its own test: SwiftShader cannot run f16, f32 is covered on MiniLM).
    Shared with the registry contract test (same key: one link per session)."""
    return shared_artifact("tiny-bert-arctic", "mlc", "f32,f16", env={"MODELPORT_MLC_BROWSER": "off"})


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
    from modelport.targets.mlc.encoder import NodeRunner

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
    from modelport.targets.mlc.encoder import NodeRunner

    monkeypatch.chdir(arctic_mlc.parent)  # relative paths (as from --out) must work too
    rel = Path(arctic_mlc.name)
    runner = NodeRunner(rel / "libs" / "tiny-bert-arctic-f32-wasm32-cpu.wasm", rel / "f32" / "resolve" / "main")
    ids = np.array([[101, 7592, 2088, 102]])
    hidden, pooled, webllm = runner(ids, np.ones_like(ids))
    runner.close()
    assert np.allclose(np.linalg.norm(webllm[0, 0]), 1.0, atol=1e-5)
    assert np.allclose(webllm[0, 0], hidden[0, 0] / np.linalg.norm(hidden[0, 0]), atol=1e-6)


def test_runtime_is_cached_by_content_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.targets.mlc import build as mlc_build

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
    err = capsys.readouterr().err
    assert "q4f16_1" in err and "f32, f16" in err


# --- f16 (q0f16) ------------------------------------------------------------------------------------------

def _shard_tensors(pkg: Path) -> dict[str, np.ndarray]:
    """Every tensor of a package, decoded from params_shard_*.bin with the dtype tensor-cache.json
    declares (what WebLLM and the Node runner upload)."""
    cache = read_json(pkg / "tensor-cache.json")
    out = {}
    for shard in cache["records"]:
        data = (pkg / shard["dataPath"]).read_bytes()
        for r in shard["records"]:
            raw = data[r["byteOffset"]:r["byteOffset"] + r["nbytes"]]
            out[r["name"]] = np.frombuffer(raw, dtype=np.dtype(r["dtype"]).newbyteorder("<")).reshape(r["shape"])
    return out


def test_arctic_f16_is_float16_and_meets_the_fp16_gate(arctic_mlc: Path) -> None:
    from modelport.thresholds import THRESHOLDS

    validation = manifest.load(arctic_mlc)["validation"]
    assert validation["status"] == "pass", validation
    f16 = validation["variants"]["f16"]
    assert f16["precision"] == "fp16" and f16["thresholds"] == THRESHOLDS["fp16"].to_json()
    m = f16["metrics"]
    gate = THRESHOLDS["fp16"]
    assert m["cos_min"] >= gate.cos_min and m["cos_mean"] >= gate.cos_mean and m["top5_mean"] >= gate.top5_mean
    # ... and it really is float16: not bit-equal to f32 (an f32 package relabelled would be), and
    # measurably further from PyTorch than f32 (measured on arctic: 4e-4 pooled vs ~1e-7)
    f32 = validation["variants"]["f32"]["metrics"]
    assert m["pooled_max_abs"] > 1e-5 > f32["pooled_max_abs"]
    assert f16["extra"]["prefill_vs_encode_max_abs"] == 0.0
    assert "not run (MODELPORT_MLC_BROWSER=off)" in f16["extra"]["webllm_chromium"]["status"]

    pkgs = {v: arctic_mlc / v / "resolve" / "main" for v in ("f32", "f16")}
    w16, w32 = _shard_tensors(pkgs["f16"]), _shard_tensors(pkgs["f32"])
    assert w16.keys() == w32.keys()
    assert {a.dtype for a in w16.values()} == {np.dtype("<f2")}
    for name, a in w16.items():  # the f32 weights rounded to nearest float16, nothing else
        assert np.array_equal(a, w32[name].astype(np.float16)), name
    size16 = sum(p.stat().st_size for p in pkgs["f16"].glob("params_shard_*.bin"))
    size32 = sum(p.stat().st_size for p in pkgs["f32"].glob("params_shard_*.bin"))
    assert size16 * 2 == size32
    cfg = read_json(pkgs["f16"] / "mlc-chat-config.json")
    assert cfg["quantization"] == "q0f16"
    info = node_json("lib_info.mjs", str(arctic_mlc / "libs" / "tiny-bert-arctic-f16-wasm32-cpu.wasm"))
    assert info["metadata"]["quantization"] == "q0f16"
    assert {p["dtype"] for p in info["metadata"]["params"]} == {"float16"}


def test_f16_webgpu_kernels_are_float16(arctic_mlc: Path) -> None:
    """WGSL must declare `enable f16;` wherever it touches f16 (else the shader does not compile)
    and the matmuls read f16 storage; f32 kernels never enable it."""
    lib16 = (arctic_mlc / "libs" / "tiny-bert-arctic-f16-webgpu.wasm").read_bytes()
    lib32 = (arctic_mlc / "libs" / "tiny-bert-arctic-f32-webgpu.wasm").read_bytes()
    assert lib16.count(b"enable f16;") > 10 and b"array<f16>" in lib16 and b"inff" not in lib16
    assert b"enable f16;" not in lib32


def test_f16_app_config_requires_shader_f16(arctic_mlc: Path) -> None:
    script = ("const m = await import(process.argv[1]); "
              "console.log(JSON.stringify(m.appConfig('http://127.0.0.1:8000/pkg/')))")
    proc = subprocess.run(["node", "--input-type=module", "-e", script,
                           (arctic_mlc / "webllm-app-config.js").as_uri()], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    entries = {e["model_id"]: e for e in json.loads(proc.stdout)["model_list"]}
    # WebLLM 0.2.86's ModelRecord.required_features: checked against the device before loading
    assert entries["tiny-bert-arctic-f16"]["required_features"] == ["shader-f16"]
    assert "required_features" not in entries["tiny-bert-arctic-f32"]
    assert entries["tiny-bert-arctic-f16"]["model_lib"].endswith("libs/tiny-bert-arctic-f16-webgpu.wasm")
    assert "shader-f16" in (arctic_mlc / "README.md").read_text()


def test_f16_cpu_library_widening_is_exact(arctic_mlc: Path) -> None:
    """The wasm32 CPU library casts float16 matmul operands to float32 before the matmul
    (targets/mlc/build.py widen_matmul_operands, for speed). That must be bit-identical to the kernel that
    converts inside the loop: same products, same order. Built here without the widening."""
    from modelport.recipes import recipe_for
    from modelport.source import resolve
    from modelport.targets.mlc import build as mlc_build
    from modelport.targets.mlc.encoder import NodeRunner

    src = resolve("tiny-bert-arctic")
    recipe = recipe_for(src.path, src.config)
    mod, params = mlc_build.import_relax(src, recipe, "float16")
    mod, _ = mlc_build.add_metadata(mod, params, recipe.max_length, "q0f16")
    # WebLLM reads prefill's output with web-runtime's toArray(), which throws on float16
    assert str(mod["prefill"].body.body.ty.dtype) == "float32"
    widened = mlc_build.widen_matmul_operands(mod)
    n_casts = lambda m: str(m["encode"].script()).count('R.astype')  # noqa: E731
    assert n_casts(widened) > n_casts(mod)  # the pass did something
    import tvm
    from tvm import relax

    fused = arctic_mlc.parent / "fused-f16-wasm32-cpu.wasm"
    exe = relax.build(mod, target=tvm.target.Target(mlc_build.WASM32), system_lib=True)

    def fcompile(out: str, objects: list[str], options: object = None, **_: object) -> None:
        mlc_build.link(list(objects), Path(out), mlc_build.build_runtime())

    fcompile.object_format = "o"  # type: ignore[attr-defined]
    exe.export_library(str(fused), fcompile=fcompile)
    pkg = arctic_mlc / "f16" / "resolve" / "main"
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(2, 12))
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    outs = []
    for lib in (fused, arctic_mlc / "libs" / "tiny-bert-arctic-f16-wasm32-cpu.wasm"):
        runner = NodeRunner(lib, pkg)
        outs.append(runner(ids, mask))
        runner.close()
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_f16_in_chromium_is_reported_not_run_without_shader_f16(arctic_mlc: Path) -> None:
    """SwiftShader's adapter has no shader-f16: the check must say so (and that WebLLM refused the
    variant with its own ShaderF16SupportError), neither pass nor fail. On an adapter with
    shader-f16 the same call runs WebLLM and gates on the fp16 thresholds instead."""
    from modelport.targets.mlc import browser as mlc_browser

    missing = mlc_browser.missing_prerequisites()
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("; ".join(missing))
        pytest.skip("; ".join(missing))
    result = mlc_browser.validate_in_chromium(arctic_mlc, "f16", Golden.load(arctic_mlc))
    check = result["webllm_chromium"]
    if "shader-f16" in check.get("adapter", {}).get("features", []) or "by_ids" in check:
        assert result["browser_failures"] == [], check
        assert check["by_ids"]["cos_min"] >= 0.9999
        return
    assert result["browser_failures"] == [], check
    assert check["status"].startswith("not run") and check["missing_features"] == ["shader-f16"]
    assert check["webllm_error"].startswith("ShaderF16SupportError")


@pytest.mark.slow
def test_webllm_in_chromium_matches_pytorch(minilm_mlc: Path) -> None:
    """WebLLM 0.2.86 in headless Chromium (SwiftShader WebGPU), everything from 127.0.0.1."""
    from modelport.targets.mlc import browser as mlc_browser

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
