"""MLC's wasm32 CPU model library vs onnxruntime-web (wasm), same model, same token ids, one run.

    python benchmarks/mlc_vs_ort_web.py [--model all-minilm-l6-v2] [--repeat 3] [--threads 1]
                                        [--rebuild-runtime]

Both run in Node on the CPU, batch 1, on the golden token ids of the validation corpus (24
sentences), each timed around the model call only, after one untimed warm-up:
  mlc       the package's <model>-f32-wasm32-cpu.wasm through TVM's web runtime (node_runner.mjs),
            single-threaded (TVM's wasm runtime has no threads)
  ort-web   onnxruntime-web's wasm backend on the ONNX target's fp32 model (bench_ort_web.mjs),
            --threads (default 1: like for like)
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
    out = ROOT / "artifacts" / model / target
    if not (out / "manifest.json").is_file():
        env = dict(os.environ, MODELPORT_MLC_BROWSER="off")
        subprocess.run([sys.executable, "-m", "modelport", "convert", model, "--target", target, "--variants",
                        variants, "--out", str(out), "--skip-validation"], check=True, env=env)
    return out


def corpus_ids(artifact: Path) -> list[np.ndarray]:
    from modelport.reference import Golden

    golden = Golden.load(artifact)
    singles = {c["text_ids"][0]: c["name"] for c in golden.cases if not c["batched"]}
    return [golden.inputs(singles[i])["input_ids"] for i in golden.meta["corpus_ids"]]


def bench_mlc(artifact: Path, model: str, inputs: list[np.ndarray], repeat: int) -> list[float]:
    from modelport.targets.mlc.encoder import NodeRunner
    from modelport.targets.mlc.layout import lib_path, package_dir

    runner = NodeRunner(lib_path(artifact, model, "f32", "wasm32-cpu"), package_dir(artifact, "f32"))
    runner(inputs[0], np.ones_like(inputs[0]))  # warm-up
    runs = []
    for _ in range(repeat):
        runner.seconds = 0.0
        for ids in inputs:
            runner(ids, np.ones_like(ids))
        runs.append(runner.seconds)
    runner.close()
    return runs


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
    ap.add_argument("--rebuild-runtime", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    mlc = ensure(args.model, "mlc", "f32")
    onnx = ensure(args.model, "onnx", "fp32")
    inputs = corpus_ids(mlc)
    n_tokens = sum(i.shape[1] for i in inputs)
    mlc_runs = bench_mlc(mlc, args.model, inputs, args.repeat)
    ort_runs, ort_version = bench_ort(onnx, inputs, args.repeat, args.threads)
    link = time_link(args.model)
    rt_s, rt_how = runtime_build(args.rebuild_runtime)

    print(f"{args.model}: {len(inputs)} texts ({n_tokens} tokens) per run, batch 1, --repeat {args.repeat}, medians")
    rows = [("MLC wasm32 CPU (TVM web runtime)", mlc_runs), (f"onnxruntime-web {ort_version} wasm "
                                                             f"({args.threads} thread)", ort_runs)]
    for label, runs in rows:
        med = statistics.median(runs)
        print(f"  {label:45s} {len(inputs) / med:8.1f} embeddings/s  {n_tokens / med:9.0f} tokens/s  "
              f"runs {' '.join(f'{r:.2f}s' for r in runs)}")
    ratio = statistics.median(ort_runs) / statistics.median(mlc_runs)
    print(f"  MLC / onnxruntime-web throughput: {ratio:.2f}x")
    print(f"  MLC CPU library: torch.export -> Relax {link['import_s']}s, Relax build {link['build_s']}s, "
          f"emcc link {link['link_s']}s")
    print(f"  TVM web runtime build: {rt_s:.0f}s ({rt_how})" if rt_s else "  TVM web runtime build: unknown")
    print(f"  machine: {os.cpu_count()} cpus; node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
