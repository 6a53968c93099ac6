"""The ONNX quantization search on all-MiniLM-L6-v2, then the chosen variants converted and validated.

    python benchmarks/quant_onnx.py [--out DIR] [--quick] [--ship] [--olive-python /path/to/venv/bin/python]

1. `modelport quantize-search all-minilm-l6-v2 --target onnx` (targets/onnx/quantize.py): sensitivity
   of the 36 MatMuls on the dev texts, candidates from naive RTN to GPTQ + mixed 4/8-bit + quantized
   embedding tables, onnxruntime's own q4 as the baseline row; the table printed here gives each
   candidate's size as a share of the fp32 file, cos min / mean and top-5 on the dev texts.
2. `modelport convert all-minilm-l6-v2 --target onnx --variants fp32,q4mix,q4mix-wasm --quant-plan <search>`:
   the chosen plans written and validated on the validation set (which the search never saw), gated
   at precision q4mix (cos min 0.98, mean 0.99, top-5 0.95).
--olive-python: Olive's (olive-ai 0.13) quantization passes as baseline rows (benchmarks/olive_quant.py
run in that venv; olive-ai pins its own torch, so it lives in its own venv). Without it the Olive row
says "not run".
--ship copies the chosen plans to src/modelport/quant/plans/all-minilm-l6-v2-onnx/ (what the tests
and users convert from without searching). The issue's goal: q4mix <= 18 % of fp32, q4mix-wasm <= 22 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

MODEL = "all-minilm-l6-v2"
SHIP = Path(__file__).resolve().parents[1] / "src/modelport/quant/plans" / f"{MODEL}-onnx"
GOAL_SHARE = {"q4mix": 0.18, "q4mix-wasm": 0.22}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="the search's small grid")
    ap.add_argument("--ship", action="store_true", help=f"copy the chosen plans to {SHIP}")
    ap.add_argument("--olive-python", help="python of a venv with olive-ai (sets MODELPORT_OLIVE_PYTHON)")
    ap.add_argument("--search-only", action="store_true", help="stop after the search table")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.olive_python:
        os.environ["MODELPORT_OLIVE_PYTHON"] = args.olive_python

    import logging

    from modelport.cli import main as cli

    for noisy in ("onnxscript", "onnx_ir"):  # onnxruntime's quantizer turns the root logger to INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)

    out = args.out or Path(tempfile.mkdtemp(prefix="quant-onnx-"))
    search_dir, artifact = out / "search", out / "artifact"
    t0 = time.perf_counter()
    rc = cli(["quantize-search", MODEL, "--target", "onnx", "--out", str(search_dir), "--force",
              *(["--quick"] if args.quick else [])])
    t_search = time.perf_counter() - t0
    result = json.loads((search_dir / "search.json").read_text())
    print_table(result)
    print(f"search: {t_search:.0f} s (exit {rc})")
    if args.search_only:
        return 0 if rc == 0 else 1
    if not result["chosen"]:
        print("no candidate met the goal: nothing to convert")
        return 1
    variants = ",".join(["fp32", *result["chosen"]])
    t1 = time.perf_counter()
    rc = cli(["convert", MODEL, "--target", "onnx", "--variants", variants, "--quant-plan", str(search_dir),
              "--out", str(artifact), "--force"])
    t_convert = time.perf_counter() - t1
    man = json.loads((artifact / "manifest.json").read_text())
    fp32_bytes = (artifact / "onnx/model.onnx").stat().st_size
    print(f"\nconvert + validate ({variants}): {t_convert:.0f} s (exit {rc}); validation set, gate q4mix:")
    ok = rc == 0
    for name in result["chosen"]:
        v = man["validation"]["variants"][name]
        m = v["metrics"]
        size = (artifact / man["target"]["variants"][name]["file"]).stat().st_size
        share = size / fp32_bytes
        goal = share <= GOAL_SHARE[name]
        ok = ok and v["verdict"] == "pass" and goal
        print(f"  {name:<11} {v['verdict']:<5} {size / 1e6:6.2f} MB {share:6.1%} (goal <= {GOAL_SHARE[name]:.0%}: "
              f"{'met' if goal else 'MISSED'})  cos min {m['cos_min']:.4f} mean {m['cos_mean']:.4f} "
              f"top-5 {m['top5_mean']:.3f}  plan {man['target']['variants'][name]['plan_sha256'][:12]}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if args.ship:
        SHIP.mkdir(parents=True, exist_ok=True)
        for name in result["chosen"]:
            shutil.copyfile(search_dir / f"plan-{name}.json", SHIP / f"plan-{name}.json")
        print(f"shipped plans -> {SHIP}")
    return 0 if ok else 1


def print_table(result: dict) -> None:
    ref = result["reference_bytes"]
    chosen = {v: k for k, v in result["chosen"].items()}
    print(f"\n{result['model']} onnx search, goal {result['goal']} on dev texts; fp32 = {ref / 1e6:.1f} MB")
    print(f"{'candidate':<44} {'MB':>6} {'% fp32':>7} {'bpw':>5} {'cos min':>8} {'cos mean':>8} {'top-5':>6}")
    for c in sorted(result["candidates"], key=lambda c: (c["failed"] != "", c["size_bytes"])):
        if c["failed"]:
            print(f"{c['name']:<44} failed: {c['failed']}")
            continue
        q = c["quality"]
        mark = f" <- {chosen[c['name']]}" if c["name"] in chosen else (" *" if c["pareto"] else "")
        print(f"{c['name']:<44} {c['size_bytes'] / 1e6:6.2f} {c['size_bytes'] / ref:7.1%} {c['bits_per_weight']:5.2f} "
              f"{q['cos_min']:8.4f} {q['cos_mean']:8.4f} {q['top5']:6.3f}{' (baseline)' if c['baseline'] else ''}{mark}")
    worst = ", ".join(f"{s['layer']} {s['loss']:.4f}" for s in result["sensitivity"][:8])
    print(f"most sensitive layers (1 - mean cos, alone at 4-bit RTN): {worst}")


if __name__ == "__main__":
    sys.exit(main())
