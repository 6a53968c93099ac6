"""MLC's wasm32 CPU model library vs onnxruntime-web (wasm), same model, same token ids, one run.

    python benchmarks/mlc_vs_ort_web.py [--model all-minilm-l6-v2] [--repeat 3] [--threads 1]
                                        [--mlc-variants f32,q4f32_1] [--webgpu] [--rebuild-runtime]

Both run in Node on the CPU, batch 1, on the golden token ids of the validation corpus (24
sentences), each timed around the model call only, after one untimed warm-up, round robin (one
pass of each per round, so load on the machine hits every row alike; medians over the rounds):
  mlc       each variant's <model>-<variant>-wasm32-cpu.wasm through TVM's web runtime
            (node_runner.mjs), single-threaded (TVM's wasm runtime has no threads)
  ort-web   onnxruntime-web's wasm backend on the ONNX target's fp32 model (bench_ort_web.mjs),
            --threads (default 1: like for like)
  webgpu    with --webgpu: WebLLM 0.2.86 in headless Chromium running each variant's WebGPU library,
            one embeddings.create call over the same ids (WebLLM batches them itself); SwiftShader
            runs WebGPU on the CPU here, so this row ranks builds and says nothing about a GPU
Also reported: a fresh emcc link of the MLC CPU library (Relax build + link), and the TVM web runtime
build (from its cache record; --rebuild-runtime builds it again into a temporary cache to time it).
Artifacts are converted into artifacts/<model>/{mlc,onnx} when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "src" / "modelport" / "targets" / "mlc" / "js"


def ensure(model: str, target: str, variants: str) -> Path:
    """artifacts/<model>/<target> with at least `variants` (converted again, --force, if one is missing)."""
    out = ROOT / "artifacts" / model / target
    have = set(json.loads((out / "manifest.json").read_text())["target"]["variants"]) \
        if (out / "manifest.json").is_file() else set()
    if not set(variants.split(",")) <= have:
        env = dict(os.environ, MODELPORT_MLC_BROWSER="off")
        subprocess.run([sys.executable, "-m", "modelport", "convert", model, "--target", target, "--variants",
                        variants, "--out", str(out), "--skip-validation", "--force"], check=True, env=env)
    return out


def corpus_ids(artifact: Path) -> list[np.ndarray]:
    from modelport.reference import Golden

    golden = Golden.load(artifact)
    singles = {c["text_ids"][0]: c["name"] for c in golden.cases if not c["batched"]}
    return [golden.inputs(singles[i])["input_ids"] for i in golden.meta["corpus_ids"]]


def mlc_runner(artifact: Path, model: str, variant: str):
    """A warmed-up Node process serving the variant's CPU library."""
    from modelport.targets.mlc.encoder import NodeRunner
    from modelport.targets.mlc.layout import lib_path, package_dir

    runner = NodeRunner(lib_path(artifact, model, variant, "wasm32-cpu"), package_dir(artifact, variant))
    runner(np.array([[101, 102]]), np.ones((1, 2), dtype=np.int64))  # warm-up
    return runner


def mlc_pass(runner, inputs: list[np.ndarray]) -> float:
    """Seconds inside the library's calls for one pass over the inputs."""
    runner.seconds = 0.0
    for ids in inputs:
        runner(ids, np.ones_like(ids))
    return runner.seconds


def bench_ort(artifact: Path, inputs: list[np.ndarray], repeat: int, threads: int) -> tuple[list[float], str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"inputs": [{"input_ids": ids[0].tolist()} for ids in inputs], "repeat": repeat,
                   "threads": threads}, f)
    try:
        proc = subprocess.run(["node", str(JS / "bench_ort_web.mjs"), str(artifact / "onnx" / "model.onnx"), f.name],
                              cwd=JS, capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    out = json.loads(proc.stdout.splitlines()[-1])
    version = json.loads((JS / "node_modules" / "onnxruntime-web" / "package.json").read_text())["version"]
    return out["seconds"], version


def webgpu_pass(artifact: Path, variant: str) -> float:
    """Seconds WebLLM (Chromium, WebGPU) takes to embed the corpus ids in one embeddings.create call."""
    from modelport.reference import Golden
    from modelport.targets.mlc import browser

    golden = Golden.load(artifact)
    result = browser.run_chromium(browser.request(artifact, variant, golden, list(golden.meta["corpus_ids"])))
    if "ids_s" not in result:
        raise SystemExit(f"WebLLM did not run {variant}: {result.get('fatal') or result.get('unsupported')}")
    return result["ids_s"]


def time_link(model: str) -> dict[str, float]:
    """Relax build + emcc link of the CPU library, fresh (what a conversion pays per library)."""
    from modelport.targets.mlc import build as mlc_build
    from modelport.recipes import recipe_for
    from modelport.source import resolve

    source = resolve(model)
    recipe = recipe_for(source.path, source.config)
    t0 = time.perf_counter()
    mod, params = mlc_build.import_relax(source, recipe, "float32")
    mod, _ = mlc_build.add_metadata(mod, params, recipe.max_length, "q0f32")
    import_s = time.perf_counter() - t0
    runtime = mlc_build.build_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        timing = mlc_build.build_library(mod, "wasm32-cpu", Path(tmp) / "lib.wasm", runtime)
    return {"import_s": round(import_s, 1), **timing}


def runtime_build(rebuild: bool) -> tuple[float | None, str]:
    from modelport.targets.mlc import build as mlc_build

    if not rebuild:
        runtime = mlc_build.build_runtime()
        return mlc_build.runtime_build_seconds(runtime), f"cache record {runtime}"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MODELPORT_WEB_RUNTIME_CACHE"] = tmp
        t0 = time.perf_counter()
        mlc_build.build_runtime()
        return time.perf_counter() - t0, "rebuilt now"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mlc-variants", default="f32,q4f32_1", help="MLC variants to time (comma-separated)")
    ap.add_argument("--webgpu", action="store_true", help="add WebLLM's WebGPU rows (Chromium, SwiftShader)")
    ap.add_argument("--rebuild-runtime", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    variants = args.mlc_variants.split(",")
    mlc = ensure(args.model, "mlc", args.mlc_variants)
    onnx = ensure(args.model, "onnx", "fp32")
    inputs = corpus_ids(mlc)
    n_tokens = sum(i.shape[1] for i in inputs)
    runners = {v: mlc_runner(mlc, args.model, v) for v in variants}
    runs: dict[str, list[float]] = {v: [] for v in variants} | {"ort": []}
    for _ in range(args.repeat):
        for v, runner in runners.items():
            runs[v].append(mlc_pass(runner, inputs))
            if args.webgpu:
                runs.setdefault(f"webgpu {v}", []).append(webgpu_pass(mlc, v))
        ort_seconds, ort_version = bench_ort(onnx, inputs, 1, args.threads)
        runs["ort"] += ort_seconds
    for runner in runners.values():
        runner.close()
    link = time_link(args.model)
    rt_s, rt_how = runtime_build(args.rebuild_runtime)

    print(f"{args.model}: {len(inputs)} texts ({n_tokens} tokens) per run, batch 1, --repeat {args.repeat} "
          f"round robin, medians; load average {os.getloadavg()[0]:.2f}")
    labels = {v: f"MLC {v} wasm32 CPU (TVM web runtime)" for v in variants}
    labels["ort"] = f"onnxruntime-web {ort_version} wasm fp32 ({args.threads} thread)"
    labels.update({f"webgpu {v}": f"MLC {v} WebGPU in WebLLM (SwiftShader)" for v in variants if args.webgpu})
    for key, label in labels.items():
        med = statistics.median(runs[key])
        print(f"  {label:52s} {len(inputs) / med:8.1f} embeddings/s  {n_tokens / med:9.0f} tokens/s  "
              f"runs {' '.join(f'{r:.2f}s' for r in runs[key])}")
    for v in variants:
        ratio = statistics.median(runs["ort"]) / statistics.median(runs[v])
        print(f"  MLC {v} / onnxruntime-web throughput: {ratio:.2f}x")
        if args.webgpu:
            ratio = statistics.median(runs["ort"]) / statistics.median(runs[f"webgpu {v}"])
            print(f"  MLC {v} WebGPU (SwiftShader) / onnxruntime-web wasm throughput: {ratio:.2f}x")
    print(f"  MLC CPU library: torch.export -> Relax {link['import_s']}s, Relax build {link['build_s']}s, "
          f"emcc link {link['link_s']}s")
    print(f"  TVM web runtime build: {rt_s:.0f}s ({rt_how})" if rt_s else "  TVM web runtime build: unknown")
    print(f"  machine: {os.cpu_count()} cpus; node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
