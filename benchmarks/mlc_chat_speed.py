"""Chat package speed: prefill and decode tokens per second, MLC beside PyTorch, same prompts, one run.

    python benchmarks/mlc_chat_speed.py [--model tiny-llama] [--variants f32,q4f32_1] [--tokens 32]
                                        [--repeat 3] [--out artifacts/<model>/mlc]

Rows (round robin: one pass of each per round, medians over the rounds), on the golden prompts:
  webllm-webgpu  WebLLM 0.2.86 in headless Chromium running the package's WebGPU library, by its
                 chat/completions API (`usage.extra` prefill/decode tokens per second). SwiftShader
                 runs WebGPU on the CPU here: the figures rank builds, they say nothing about a GPU.
  node-wasm32    the wasm32 CPU library in Node through TVM's web runtime and paged KV cache
                 (js/lm_runner.mjs): single-threaded. Its prefill is `prefill_logits` (logits at every
                 position, the validation function), so it does more lm_head work than WebLLM's prefill.
  pytorch        transformers fp32 with its KV cache, 1 thread (the peer): prefill = one forward over
                 the prompt, decode = greedy steps with the cache.
Decode runs --tokens steps (EOS masked). The artifact is converted (validation skipped) when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def ensure(model: str, variants: str, out: Path) -> Path:
    have = set(json.loads((out / "manifest.json").read_text())["target"]["variants"]) \
        if (out / "manifest.json").is_file() else set()
    if not set(variants.split(",")) <= have:
        env = dict(os.environ, MODELPORT_MLC_BROWSER="off")
        subprocess.run([sys.executable, "-m", "modelport", "convert", model, "--target", "mlc", "--variants", variants,
                        "--out", str(out), "--skip-validation", "--force"], check=True, env=env)
    return out


def webllm_pass(artifact: Path, variant: str, golden, tokens: int) -> tuple[float, float]:
    from modelport.targets.mlc import browser

    req = browser.chat_request(artifact, variant, golden)
    for case in req["cases"]:
        case["steps"] = tokens
    result = browser.run_chromium(req)
    if "fatal" in result or "unsupported" in result:
        raise SystemExit(f"WebLLM did not run {variant}: {result.get('fatal') or result.get('unsupported')}")
    cases = result["cases"]
    return (statistics.median(c["prefill_tokens_per_s"] for c in cases),
            statistics.median(c["decode_tokens_per_s"] for c in cases))


def greedy(logits: np.ndarray, eos: list[int]) -> int:
    row = np.array(logits, dtype=np.float32)
    row[eos] = -np.inf
    return int(np.argmax(row))


def node_pass(runner, golden, tokens: int) -> tuple[float, float]:
    prefill, decode = [], []
    for name in golden.prompt_names:
        ids = golden.input_ids(name)
        t = time.perf_counter()
        logits, state = runner.prefill(ids)
        prefill.append(ids.shape[1] / (time.perf_counter() - t))
        token = greedy(logits[-1], golden.eos_ids)
        t = time.perf_counter()
        for _ in range(tokens):
            row, state = runner.decode(state, token)
            token = greedy(row, golden.eos_ids)
        decode.append(tokens / (time.perf_counter() - t))
    return statistics.median(prefill), statistics.median(decode)


def torch_pass(model, golden, tokens: int) -> tuple[float, float]:
    import torch

    prefill, decode = [], []
    with torch.no_grad():
        for name in golden.prompt_names:
            ids = torch.from_numpy(golden.input_ids(name))
            t = time.perf_counter()
            out = model(ids, use_cache=True)
            prefill.append(ids.shape[1] / (time.perf_counter() - t))
            cache, row = out.past_key_values, out.logits[0, -1].numpy()
            t = time.perf_counter()
            for _ in range(tokens):
                token = greedy(row, golden.eos_ids)
                out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
                cache, row = out.past_key_values, out.logits[0, -1].numpy()
            decode.append(tokens / (time.perf_counter() - t))
    return statistics.median(prefill), statistics.median(decode)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--variants", default="f32,q4f32_1")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from modelport import lm
    from modelport.source import resolve
    from modelport.targets.mlc.decoder import NodeLMRunner
    from modelport.targets.mlc.layout import lib_path, model_name, package_dir
    from modelport.torch_model import load_causal_lm

    torch.set_num_threads(1)
    artifact = ensure(args.model, args.variants, args.out or ROOT / "artifacts" / args.model / "mlc")
    golden = lm.LMGolden.load(artifact)
    model = load_causal_lm(resolve(args.model).path).eval()
    name = model_name(artifact)
    variants = args.variants.split(",")
    runners = {v: NodeLMRunner(lib_path(artifact, name, v, "wasm32-cpu"), package_dir(artifact, v)) for v in variants}
    rows: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.repeat):
        for v in variants:
            rows.setdefault(f"webllm-webgpu {v}", []).append(webllm_pass(artifact, v, golden, args.tokens))
            rows.setdefault(f"node-wasm32 {v}", []).append(node_pass(runners[v], golden, args.tokens))
        rows.setdefault("pytorch fp32 (1 thread)", []).append(torch_pass(model, golden, args.tokens))
        print(f"round {r + 1}/{args.repeat} done", file=sys.stderr)
    peer = rows["pytorch fp32 (1 thread)"]
    peer_pre, peer_dec = statistics.median(p for p, _ in peer), statistics.median(d for _, d in peer)
    print(f"{args.model}: {len(golden.prompt_names)} prompts, {args.tokens} decode steps, medians of {args.repeat} "
          f"rounds (tokens/s; ratio vs PyTorch 1 thread)")
    print(f"{'row':34} {'prefill':>10} {'x':>6} {'decode':>10} {'x':>6}")
    for row, values in rows.items():
        pre, dec = statistics.median(p for p, _ in values), statistics.median(d for _, d in values)
        print(f"{row:34} {pre:10.1f} {pre / peer_pre:6.2f} {dec:10.1f} {dec / peer_dec:6.2f}")
    for runner in runners.values():
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
