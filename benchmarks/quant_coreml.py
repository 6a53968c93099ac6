"""The Core ML quantization search on a real model, then the chosen `palmix` written and validated.

    python benchmarks/quant_coreml.py [--model all-minilm-l6-v2] [--goal cos=0.99,min=0.98,top5=0.95]
                                      [--out DIR] [--quick]

Two commands, as a user runs them (in this process, through the CLI entry point):

  1. modelport quantize-search MODEL --target coreml --out DIR/search
     converts and validates fp32 (default shape, fixed [1, 128] for MiniLM), ranks every weight's
     sensitivity at pal4 on the first 40 dev texts, scores the candidate grid
     (targets/coreml/quantize.py), prints the table (size share of fp32, bits per weight, cos
     min/mean and top-5 against the fp32 package on the dev texts) and writes search.json,
     plan-palmix.json, pareto.png
  2. modelport convert MODEL --target coreml --variants palmix --quant-plan DIR/search --out DIR/palmix
     writes palmix from the plan and validates it on the validation set (the search never saw it)
     with the interpreter, gated at q4mix (thresholds.py)

Then prints the written package's size against the search's estimate, its validation figures,
and the wall time of each command. Heavy: ~10 s of interpreter time per candidate on MiniLM with
one BLAS thread (2 shared cores here); run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--goal", default="cos=0.99,min=0.98,top5=0.95")
    p.add_argument("--out", type=Path, help="keep the search and the artifact here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="the small candidate grid")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from modelport import manifest
    from modelport.cli import main as cli

    out = args.out or Path(tempfile.mkdtemp(prefix="quant-coreml-"))
    search_dir, artifact = out / "search", out / "palmix"
    t0 = time.perf_counter()
    code = cli(["quantize-search", args.model, "--target", "coreml", "--goal", args.goal, "--out", str(search_dir),
                "--force", *(["--quick"] if args.quick else [])])
    t_search = time.perf_counter() - t0
    print(f"\nquantize-search: exit {code}, {t_search:.0f} s wall")
    result = json.loads((search_dir / "search.json").read_text())
    if "palmix" not in result["chosen"]:
        print("no candidate met the goal: the best reachable front is in", search_dir / "search.json")
        return 1
    chosen = next(c for c in result["candidates"] if c["name"] == result["chosen"]["palmix"])

    t0 = time.perf_counter()
    code = cli(["convert", args.model, "--target", "coreml", "--variants", "palmix", "--quant-plan", str(search_dir),
                "--out", str(artifact), "--force"])
    t_convert = time.perf_counter() - t0
    man = manifest.load(artifact)
    entry = man["target"]["variants"]["palmix"]
    verdict = man["validation"]["variants"]["palmix"]
    m = verdict["metrics"]
    print(f"\nconvert palmix + validate: exit {code}, {t_convert:.0f} s wall")
    print(f"palmix = {chosen['name']}: package {entry['bytes'] / 1e6:.3f} MB written, "
          f"{chosen['size_bytes'] / 1e6:.3f} MB estimated by the search "
          f"({entry['bytes'] / result['reference_bytes']:.1%} of fp32 {result['reference_bytes'] / 1e6:.2f} MB); "
          f"{entry['minimum_deployment_target']}; plan sha256 {entry['plan_sha256'][:12]}")
    print(f"dev texts (search): {chosen['quality']}")
    print(f"validation set ({verdict['verdict']}, gate {verdict['precision']}): cos min {m['cos_min']:.4f}, "
          f"mean {m['cos_mean']:.4f}, top-5 {m['top5_mean']:.2f}")
    print(f"kept in {out}")
    return 0 if code == 0 else code


if __name__ == "__main__":
    sys.exit(main())
