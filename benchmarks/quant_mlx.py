"""The MLX quantization search on all-MiniLM-L6-v2, then q4mix written from the chosen plan and validated.

    python benchmarks/quant_mlx.py [--out DIR] [--goal cos=0.99,min=0.98,top5=0.95] [--quick]

Runs, in this process, what a user runs:
  modelport quantize-search all-minilm-l6-v2 --target mlx --out DIR/search
  modelport convert all-minilm-l6-v2 --target mlx --variants f32,q4,q4mix --quant-plan DIR/search --out DIR/art
and prints the search table (size, bits per weight, dev-text cosine min/mean, top-5), the validation
figures of q4 (today's naive round-to-nearest folder) beside q4mix on the validation set, and the wall
time of each step. The issue's MLX goal: mean cosine >= 0.99 at <= 4.5 bits per weight on average; the
search's default goal (cos=0.99,min=0.98,top5=0.95) may need more, so the searched candidate with the best
dev-text mean at <= --bpw (default 4.5) is also written as q4mix (its plan taken from search.json) and
validated: its validation-set figures against the q4mix gate, whichever way they fall.
Single-threaded (OMP/BLAS = 1 unless set): the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

MODEL = "all-minilm-l6-v2"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="where the search and the artifact go (default: a temp folder)")
    ap.add_argument("--goal", help="as for quantize-search (default: its encoder goal)")
    ap.add_argument("--quick", action="store_true", help="the small candidate grid")
    ap.add_argument("--bpw", type=float, default=4.5, help="also validate the best candidate at <= this size")
    args = ap.parse_args()

    from modelport import manifest
    from modelport.cli import main as cli
    from modelport.quant.plan import Plan

    out = args.out or Path(tempfile.mkdtemp(prefix="quant-mlx-"))
    search, art = out / "search", out / "art"
    t0 = time.perf_counter()
    rc = cli(["quantize-search", MODEL, "--target", "mlx", "--out", str(search), "--force",
              *(["--goal", args.goal] if args.goal else []), *(["--quick"] if args.quick else [])])
    t_search = time.perf_counter() - t0
    print(f"\nquantize-search: exit {rc}, {t_search:.0f} s wall")
    if not (search / "plan-q4mix.json").is_file():
        print("no plan-q4mix.json: the search met no candidate; the front is in", search / "search.json")
        return 1
    t1 = time.perf_counter()
    rc = cli(["convert", MODEL, "--target", "mlx", "--variants", "f32,q4,q4mix", "--quant-plan", str(search),
              "--out", str(art), "--force"])
    t_convert = time.perf_counter() - t1
    print(f"\nconvert f32,q4,q4mix + validate: exit {rc}, {t_convert:.0f} s wall")
    man = manifest.load(art)
    rows = [("q4", man, "q4"), ("q4mix", man, "q4mix")]
    small = best_at(search / "search.json", args.bpw)
    t_small = 0.0
    if small is not None:
        Plan.from_json(small["plan"]).save(out / "plan-small.json")
        t2 = time.perf_counter()
        cli(["convert", MODEL, "--target", "mlx", "--variants", "q4mix", "--quant-plan", str(out / "plan-small.json"),
             "--out", str(out / "art-small"), "--force"])
        t_small = time.perf_counter() - t2
        rows.append((f"q4mix<={args.bpw:g}", manifest.load(out / "art-small"), "q4mix"))
        print(f"\n{small['name']} (dev: {small['quality']}) as q4mix + validate: {t_small:.0f} s wall")
    print(f"\nvalidation set (gate q4: min 0.88 mean 0.955 top-5 0.80; q4mix: min 0.98 mean 0.99 top-5 0.95)")
    print(f"{'variant':<12} {'verdict':<7} {'bpw':>5} {'cos min':>8} {'cos mean':>9} {'top-5':>6}  runtime vs dequantized")
    for label, m_, name in rows:
        v = m_["validation"]["variants"][name]
        m = v["metrics"]
        rt = v["extra"]["dequantized_reference"]["runtime_vs_dequantized_pytorch"]
        info = m_["target"]["variants"][name]
        bpw = info.get("bits_per_weight", 5.0 if name == "q4" else float("nan"))  # q4: 4 bits + 2 float32 per 64
        print(f"{label:<12} {'pass' if not v['failures'] else 'FAIL':<7} {bpw:>5.2f} {m['cos_min']:>8.4f} "
              f"{m['cos_mean']:>9.4f} {m['top5_mean']:>6.2f}  {max(rt['tokens_max_abs'], rt['pooled_max_abs']):.1e}"
              + (f"  ({'; '.join(v['failures'])[:200]})" if v["failures"] else ""))
    sizes = {n: (art / n / "model.safetensors").stat().st_size for n in ("f32", "q4", "q4mix")}
    print("model.safetensors: " + ", ".join(f"{n} {b / 1e6:.2f} MB" for n, b in sizes.items()))
    print("plan:", json.dumps(man["target"]["variants"]["q4mix"]["plan"], sort_keys=True))
    print(f"\nwall: search {t_search:.0f} s, convert+validate {t_convert:.0f} s, <= {args.bpw:g} bpw variant "
          f"{t_small:.0f} s; out: {out}")
    return 0 if man["validation"]["status"] == "pass" else 1


def best_at(search_json: Path, bpw: float) -> dict | None:
    """The searched candidate (not a baseline) with the best dev-text mean cosine at <= bpw bits per weight."""
    fits = [c for c in json.loads(search_json.read_text())["candidates"]
            if c["plan"] and not c["baseline"] and not c["failed"] and c["bits_per_weight"] <= bpw]
    return max(fits, key=lambda c: (c["quality"]["cos_mean"], -c["bits_per_weight"]), default=None)


if __name__ == "__main__":
    sys.exit(main())
