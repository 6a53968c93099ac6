"""MLC / WebLLM target: packages WebLLM loads, checked in Node (wasm32 CPU) and in Chromium (WebGPU).

Prerequisites come from scripts/setup-mlc.sh; locally a missing one skips with the reason, in CI
(CI=true) it fails. TVM's web runtime is built once and kept in the persistent modelport cache
(MODELPORT_WEB_RUNTIME_CACHE), not the per-session test cache, so a second run reuses it.
"""

from __future__ import annotations

import json
import os
import re
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
    """tiny-bert-arctic in all four variants (f32, f16, q4f32_1, q4f16_1), validated in Node (the
    Chromium checks are run by their own tests: SwiftShader cannot run f16, f32 is covered on MiniLM).
    Shared with the registry contract test (same key: one link per session)."""
    return shared_artifact("tiny-bert-arctic", "mlc", "f32,f16,q4f32_1,q4f16_1", env={"MODELPORT_MLC_BROWSER": "off"})


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
    pkg = minilm_mlc / "f32"  # one hub-repo-shaped package per variant (targets/mlc/layout.py)
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
    lib = (minilm_mlc / "f32" / "all-minilm-l6-v2-f32-webgpu.wasm").read_bytes()
    assert lib[:4] == b"\0asm"
    assert lib.count(b"@compute") > 10
    assert b"inff" not in lib


def app_config(artifact: Path, call: str) -> subprocess.CompletedProcess:
    """Run `call` (an expression over the module `m`) on the artifact's webllm-app-config.js in Node."""
    script = f"const m = await import(process.argv[1]); console.log(JSON.stringify({call}))"
    return subprocess.run(["node", "--input-type=module", "-e", script, (artifact / "webllm-app-config.js").as_uri()],
                          capture_output=True, text=True)


def test_app_config_snippet(minilm_mlc: Path) -> None:
    """From a hub id: the URLs WebLLM 0.2.86 fetches as they are (the model URL already has
    /resolve/main/, so cleanModelUrl appends nothing; model_lib is fetched as given)."""
    proc = app_config(minilm_mlc, "m.fromHub('someone/minilm')")
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["model_list"][0]
    files = "https://huggingface.co/someone/minilm/resolve/main/"
    assert entry == {"model": files + "f32/", "model_id": "all-minilm-l6-v2-f32",
                     "model_lib": files + "f32/all-minilm-l6-v2-f32-webgpu.wasm", "model_type": 1}
    assert (minilm_mlc / "f32" / "all-minilm-l6-v2-f32-webgpu.wasm").is_file()
    # A base WebLLM would append resolve/main/ to is refused, not turned into 404s.
    proc = app_config(minilm_mlc, "m.appConfig('http://127.0.0.1:8000/pkg/')")
    assert proc.returncode != 0 and "does not end in /resolve/<revision>/" in proc.stderr
    readme = (minilm_mlc / "README.md").read_text()
    assert "adds none" in readme and "[CLS] <text> [SEP]" in readme


def test_a_changed_weight_is_caught(minilm_mlc: Path, tmp_path: Path) -> None:
    """0.1 % on the last LayerNorm weight in the tensor cache moves the output past 1e-5."""
    from modelport.targets.mlc.encoder import NodeRunner

    src = minilm_mlc / "f32"
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
    cfg = read_json(arctic_mlc / "f32" / "mlc-chat-config.json")
    assert cfg["context_window_size"] == 512 and cfg["modelport"]["pooling"] == "cls"
    for lib in ("f32/tiny-bert-arctic-f32-webgpu.wasm", "libs/tiny-bert-arctic-f32-wasm32-cpu.wasm"):
        assert (arctic_mlc / lib).stat().st_size > 1_000_000
    # The CLS row and L2 normalization are inside the library: row 0 of prefill is unit length.
    from modelport.targets.mlc.encoder import NodeRunner

    monkeypatch.chdir(arctic_mlc.parent)  # relative paths (as from --out) must work too
    rel = Path(arctic_mlc.name)
    runner = NodeRunner(rel / "libs" / "tiny-bert-arctic-f32-wasm32-cpu.wasm", rel / "f32")
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
    assert convert("tiny-bert-arctic", "-t", "mlc", "--variants", "q3f16_1", "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "q3f16_1" in err and "f32, f16, q4f32_1, q4f16_1" in err


# --- f16 (q0f16) ------------------------------------------------------------------------------------------

def build_unscheduled(mod, output: Path) -> Path:
    """`mod` with TVM's default wasm32 pipeline (none of build.py's passes or schedules), linked."""
    import tvm
    from tvm import relax

    from modelport.targets.mlc import build as mlc_build

    exe = relax.build(mod, target=tvm.target.Target(mlc_build.WASM32), system_lib=True)

    def fcompile(out: str, objects: list[str], options: object = None, **_: object) -> None:
        mlc_build.link(list(objects), Path(out), mlc_build.build_runtime())

    fcompile.object_format = "o"  # type: ignore[attr-defined]
    exe.export_library(str(output), fcompile=fcompile)
    return output


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

    pkgs = {v: arctic_mlc / v for v in ("f32", "f16")}
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
    lib16 = (arctic_mlc / "f16" / "tiny-bert-arctic-f16-webgpu.wasm").read_bytes()
    lib32 = (arctic_mlc / "f32" / "tiny-bert-arctic-f32-webgpu.wasm").read_bytes()
    assert lib16.count(b"enable f16;") > 10 and b"array<f16>" in lib16 and b"inff" not in lib16
    assert b"enable f16;" not in lib32


def test_f16_app_config_requires_shader_f16(arctic_mlc: Path) -> None:
    proc = app_config(arctic_mlc, "m.fromHub('someone/arctic')")
    assert proc.returncode == 0, proc.stderr
    entries = {e["model_id"]: e for e in json.loads(proc.stdout)["model_list"]}
    # WebLLM 0.2.86's ModelRecord.required_features: checked against the device before loading
    assert entries["tiny-bert-arctic-f16"]["required_features"] == ["shader-f16"]
    assert "required_features" not in entries["tiny-bert-arctic-f32"]
    assert entries["tiny-bert-arctic-f16"]["model_lib"] == \
        "https://huggingface.co/someone/arctic/resolve/main/f16/tiny-bert-arctic-f16-webgpu.wasm"
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

    fused = build_unscheduled(mod, arctic_mlc.parent / "fused-f16-wasm32-cpu.wasm")
    pkg = arctic_mlc / "f16"
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

    require_browser()
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


HUB_REPO = "someone/tiny-bert-arctic-mlc"


def require_browser() -> None:
    """Skip (locally) or fail (CI=true) when Chromium or the npm packages are missing."""
    from modelport.targets.mlc import browser as mlc_browser

    missing = mlc_browser.missing_prerequisites()
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("; ".join(missing))
        pytest.skip("; ".join(missing))


def card_snippet(card: str) -> str:
    """The JavaScript of a model card's usage section."""
    blocks = re.findall(r"^```js\n(.*?)^```", card, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, card
    return blocks[0]


def test_published_package_loads_by_hub_id_with_the_card_snippet(arctic_mlc: Path, tmp_path: Path) -> None:
    """What `modelport publish` uploads, served like the hub (/<org>/<name>/resolve/main/<file>), is
    loaded by WebLLM in Chromium by running the model card's snippet as written (only its hub host
    pointed at the local server): the appConfig built from the hub id, the model library it names,
    and its special-token wrapping must give PyTorch's embeddings. Raw texts without that wrapping
    would give other embeddings: the by-text gate below is what catches a card that drops it."""
    from modelport import modelcard, publish
    from modelport.targets.mlc import browser as mlc_browser

    require_browser()
    upload = tmp_path / "upload"
    published = publish.publish(arctic_mlc, HUB_REPO, dry_run=upload)
    assert {"f32/mlc-chat-config.json", "f32/tensor-cache.json", "f32/tokenizer.json",
            "f32/tiny-bert-arctic-f32-webgpu.wasm", "README.md", "manifest.json"} <= set(published.files)
    card = (upload / "README.md").read_text()
    snippet = card_snippet(card)
    assert "<model library" not in snippet and f"{modelcard.HUB_URL}/{HUB_REPO}/resolve/main/" in snippet
    golden = Golden.load(arctic_mlc)
    chosen = mlc_browser.chosen_texts(golden, mlc_browser.max_tokens())
    result = mlc_browser.run_chromium(mlc_browser.snippet_request(upload, HUB_REPO, snippet, modelcard.HUB_URL,
                                                                  golden, chosen))
    assert "fatal" not in result, result
    metrics, failures = mlc_browser.compare(result, golden, "fp32", chosen)
    assert failures == [], metrics
    assert metrics["by_ids"]["texts"] == len(chosen) >= 30 and metrics["by_text"]["texts"] == len(chosen)
    assert metrics["by_text"]["max_abs"] <= 1e-5 and metrics["token_counts_match"]
    assert result["off_origin_requests"] == []


def test_model_card_validation_table_is_filled(arctic_mlc: Path) -> None:
    """The card of a real mlc manifest: one row per variant with its figures, none a dash."""
    from modelport import modelcard

    man = manifest.load(arctic_mlc)
    card = modelcard.render(man, HUB_REPO)
    section = card[card.index("## Validation"):card.index("## Files")]
    head, _, *rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()
                      if line.startswith("|")]
    assert [r[0] for r in rows] == list(man["target"]["variants"]) and len(rows) >= 2
    for row in rows:
        cells = dict(zip(head, row, strict=True))
        assert cells["verdict"] == "pass" and cells["gate"] not in ("", "–")
        for col in ("tok max abs", "pooled max abs", "cos min", "cos mean", "top-5"):
            float(cells[col])  # a figure, not a dash


# --- q4f32_1 / q4f16_1 (MLC's 4-bit group quantization) ---------------------------------------------------

def test_arctic_q4_packages_are_mlc_group_quantized(arctic_mlc: Path) -> None:
    """The stored tensors are mlc-llm's layout (q_weight uint32 [n, k/8] + q_scale [n, k/32] for every
    Linear and Embedding), they decode to the f32 weights within half a level, and each variant
    reproduces PyTorch running its own dequantized weights (the runtime gate), not only fp32 by cosine."""
    from modelport.targets.mlc import quantize as q4
    from modelport.thresholds import DEQUANT_RUNTIME_MAX_ABS, THRESHOLDS

    validation = manifest.load(arctic_mlc)["validation"]
    w32 = _shard_tensors(arctic_mlc / "f32")
    for variant, dtype, precision in (("q4f32_1", "float32", "q4"), ("q4f16_1", "float16", "q4f16")):
        v = validation["variants"][variant]
        assert v["verdict"] == "pass" and v["precision"] == precision, v["failures"]
        assert v["thresholds"] == THRESHOLDS[precision].to_json()
        runtime = v["extra"]["dequantized_reference"]["runtime_vs_dequantized_pytorch"]
        if dtype == "float32":
            assert max(runtime["tokens_max_abs"], runtime["pooled_max_abs"]) <= DEQUANT_RUNTIME_MAX_ABS
        else:
            assert runtime["cos_min"] >= THRESHOLDS["fp16"].cos_min
        # the format's own error is real (a q4 package that stored float weights would show none)
        assert v["extra"]["dequantized_reference"]["format_vs_fp32_pytorch"]["tokens_max_abs"] > 1e-3

        stored = _shard_tensors(arctic_mlc / variant)
        quantized = {n.removesuffix(".q_weight") for n in stored if n.endswith(".q_weight")}
        expected = {n.removesuffix(".weight") for n, a in w32.items()
                    if n.endswith(".weight") and q4.quantizable(a.shape)}
        assert quantized == expected and "embeddings.word_embeddings" in quantized
        for base in quantized:
            q, scale, ref = stored[f"{base}.q_weight"], stored[f"{base}.q_scale"], w32[f"{base}.weight"]
            assert q.dtype == np.dtype("<u4") and scale.dtype == np.dtype(dtype).newbyteorder("<")
            assert q.shape == (ref.shape[0], ref.shape[1] // 8) and scale.shape == (ref.shape[0], ref.shape[1] // 32)
            err = np.abs(q4.dequantize(q, scale).astype(np.float64) - ref)
            level = np.abs(np.repeat(scale.astype(np.float64), 32, axis=1))
            bound = np.where(np.abs(ref) > 7.5 * level, level, level / 2)  # beyond the grid's 7 levels: clipped
            assert np.all(err <= bound * (1 + 16 * np.finfo(dtype).eps) + 1e-7), base
        for name, a in stored.items():  # the rest (LayerNorm, biases, ragged tensors) in the compute dtype
            if not name.endswith((".q_weight", ".q_scale")):
                assert a.dtype == np.dtype(dtype).newbyteorder("<"), name
        cfg = read_json(arctic_mlc / variant / "mlc-chat-config.json")
        assert cfg["quantization"] == variant
        info = node_json("lib_info.mjs", str(arctic_mlc / "libs" / f"tiny-bert-arctic-{variant}-wasm32-cpu.wasm"))
        assert info["metadata"]["quantization"] == variant
        assert {p["name"] for p in info["metadata"]["params"]} == set(stored)
    size = {v: sum(p.stat().st_size for p in (arctic_mlc / v).glob("params_shard_*.bin"))
            for v in ("f32", "q4f32_1", "q4f16_1")}
    assert size["q4f16_1"] < size["q4f32_1"] < size["f32"] / 4


def test_q4f32_1_in_webllm_chromium(arctic_mlc: Path) -> None:
    """WebLLM loads the uint32 4-bit package and its WebGPU kernels (SwiftShader) dequantize like PyTorch."""
    from modelport.targets.mlc import browser as mlc_browser

    require_browser()
    golden = Golden.load(arctic_mlc)
    result = mlc_browser.validate_in_chromium(arctic_mlc, "q4f32_1", golden)
    check = result["webllm_chromium"]
    assert result["browser_failures"] == [] and check["status"] == "pass", check
    assert check["by_ids"]["texts"] >= 30 and check["token_counts_match"]
    vs_dequantized = check["by_ids_vs_dequantized"]  # the WebGPU kernels unpack like PyTorch, to fp32 precision
    assert vs_dequantized["compute"] == "float32" and vs_dequantized["max_abs"] <= 1e-5


def test_wasm32_cpu_schedules_keep_results_bit_for_bit(arctic_mlc: Path) -> None:
    """The wasm32 CPU library's schedules (build.py wasm32_cpu_pipeline: tiled, packed, wasm SIMD
    matmuls; 8.8x faster on MiniLM in Node) only reorder loops: the package's library must equal
    TVM's default CPU pipeline bit for bit, and its dense matmuls must be the scheduled ones."""
    import tvm
    from tvm import relax

    from modelport.recipes import recipe_for
    from modelport.source import resolve
    from modelport.targets.mlc import build as mlc_build
    from modelport.targets.mlc.encoder import NodeRunner

    src = resolve("tiny-bert-arctic")
    recipe = recipe_for(src.path, src.config)
    mod, params = mlc_build.import_relax(src, recipe, "float32")
    mod, _ = mlc_build.add_metadata(mod, params, recipe.max_length, "q0f32")
    target = tvm.target.Target(mlc_build.WASM32_CPU)
    lowered = mlc_build.wasm32_cpu_pipeline(target)(mod)
    dense = {gv.name_hint: f.attrs is not None and "tirx.is_scheduled" in f.attrs
             for gv, f in lowered.functions_items() if "NT_matmul" in gv.name_hint}
    assert dense and all(dense.values()), dense

    default = build_unscheduled(mod, arctic_mlc.parent / "default-f32-wasm32-cpu.wasm")
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(2, 21))
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    outs = []
    for lib in (default, arctic_mlc / "libs" / "tiny-bert-arctic-f32-wasm32-cpu.wasm"):
        runner = NodeRunner(lib, arctic_mlc / "f32")
        outs.append(runner(ids, mask))
        runner.close()
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


# --- chat packages (decoder LLMs) ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_chat(shared_artifact) -> Path:
    """tiny-llama as WebLLM chat packages (f32, f16, q4f32_1, q4f16_1), validated in Node and in WebLLM
    (Chromium; the float16 ones are refused there: no shader-f16). Shared with the registry contract test."""
    return shared_artifact("tiny-llama", "mlc", None)


def test_chat_package_passes_in_node_and_in_webllm(llama_chat: Path) -> None:
    man = manifest.load(llama_chat)
    results = man["validation"]["variants"]
    assert list(results) == ["f32", "f16", "q4f32_1", "q4f16_1"]
    assert all(r["verdict"] == "pass" for r in results.values())
    assert results["f32"]["metrics"]["prefill_max_abs"] <= 1e-5  # the wasm32 library through the paged KV cache
    assert results["q4f32_1"]["thresholds"]["reference"] == results["q4f16_1"]["thresholds"]["reference"] == "dequantized"
    for variant in ("f16", "q4f16_1"):  # SwiftShader has no shader-f16: WebLLM's own refusal is recorded
        web = results[variant]["extra"]["webllm_chromium"]
        assert web["status"].startswith("not run") and web["webllm_error"].startswith("ShaderF16SupportError"), web
    for variant, gated in (("f32", "fp32"), ("q4f32_1", "dequantized")):
        web = results[variant]["extra"]["webllm_chromium"]
        assert web["status"] == "pass" and web["gated_against"] == gated, web
        # every golden prompt, the chat one through WebLLM's conversation template: same prompt ids, and
        # WebLLM's own greedy tokens (on-GPU softmax, bitonic argsort, top-p sampler) equal PyTorch's
        assert web["greedy_equal"] == web["prompts"] == 5
        assert all(c["prompt_ids_equal"] and c["compared"] == 16 for c in web["cases"].values()), web["cases"]
        assert web["decode_tokens_per_s_median"] > 0
        # argsort_probs (on WebGPU our bitonic kernel), element by element on a row with ties
        assert web["argsort"] == {"n": 512, "equal": True, "first_difference": -1}, web["argsort"]


def test_chat_package_is_what_webllm_loads(llama_chat: Path) -> None:
    pkg = llama_chat / "q4f32_1"
    cfg = read_json(pkg / "mlc-chat-config.json")
    conv = cfg["conv_template"]
    assert conv["roles"] == {"user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}
    assert conv["seps"] == ["<|im_end|>\n", "<|im_end|>\n"] and conv["stop_token_ids"] == [2]
    assert cfg["temperature"] == 0.0  # the checkpoint's generation_config says greedy
    assert (pkg / "tiny-llama-q4f32_1-webgpu.wasm").is_file()
    assert (llama_chat / "libs" / "tiny-llama-q4f32_1-wasm32-cpu.wasm").is_file()
    records = {r["name"]: r for s in read_json(pkg / "tensor-cache.json")["records"] for r in s["records"]}
    q = records["model.layers.0.self_attn.q_proj.q_weight"]
    assert q["dtype"] == "uint32" and q["shape"] == [128, 128 // 8]
    assert records["model.layers.0.self_attn.q_proj.q_scale"]["shape"] == [128, 128 // 32]
    assert "model_type: 0 /* ModelType.LLM */" in (llama_chat / "webllm-app-config.js").read_text()


def test_a_changed_4bit_scale_is_caught_by_the_dequantized_gate(llama_chat: Path, tmp_path: Path) -> None:
    """The q4f32_1 gate judges the conversion: one group's scale off by 2% in the package, and the Node
    run no longer matches PyTorch on the stored dequantized weights (the unchanged package does)."""
    from modelport import lm
    from modelport.targets.mlc.decoder import NodeLMRunner
    from modelport.thresholds import check_lm

    src = llama_chat / "q4f32_1"
    pkg = tmp_path / "pkg"
    shutil.copytree(src, pkg)
    cache = read_json(pkg / "tensor-cache.json")
    shard, rec = next((s, r) for s in cache["records"] for r in s["records"]
                      if r["name"] == "model.layers.1.mlp.down_proj.q_scale")
    with open(pkg / shard["dataPath"], "r+b") as f:
        f.seek(rec["byteOffset"])
        value = np.frombuffer(f.read(4), dtype="<f4") * np.float32(1.02)
        f.seek(rec["byteOffset"])
        f.write(value.astype("<f4").tobytes())
    golden = lm.LMGolden.load(llama_chat, lm.golden_name("q4f32_1"))
    lib = llama_chat / "libs" / "tiny-llama-q4f32_1-wasm32-cpu.wasm"
    for folder, ok in ((src, True), (pkg, False)):
        runner = NodeLMRunner(lib, folder)
        failures = check_lm("w4", lm.evaluate_lm(golden, runner))
        runner.close()
        assert (not failures) is ok, failures


def test_published_chat_package_runs_the_card_snippet_by_hub_id(llama_chat: Path, tmp_path: Path) -> None:
    """The published chat package, served like the hub, is loaded by the model card's own snippet
    (appConfig from the hub id, chat API); the engine it creates then generates PyTorch's greedy tokens."""
    from modelport import lm, modelcard, publish
    from modelport.targets.mlc import browser as mlc_browser

    require_browser()
    upload = tmp_path / "upload"
    publish.publish(llama_chat, HUB_REPO, dry_run=upload)
    snippet = card_snippet((upload / "README.md").read_text())
    assert "engine.chat.completions.create(" in snippet and "tiny-llama-f32-webgpu.wasm" in snippet
    golden = lm.LMGolden.load(llama_chat)
    result = mlc_browser.run_chromium(mlc_browser.chat_snippet_request(upload, HUB_REPO, snippet, modelcard.HUB_URL,
                                                                       golden))
    assert "fatal" not in result, result
    metrics, failures = mlc_browser.compare_chat(result, golden)
    assert failures == [] and metrics["greedy_equal"] == 5, metrics
    assert result["off_origin_requests"] == []
