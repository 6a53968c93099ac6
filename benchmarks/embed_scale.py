"""Scale run for the embedding families (issue #15): full-shape random builds through ONNX and MLX.

    .venv/bin/python benchmarks/embed_scale.py [--models qwen3-embedding-0.6b-shape,embeddinggemma-300m-shape,bge-m3-shape]
        [--targets onnx,mlx] [--skip-validation] [--keep] [--out DIR]

Each model is a tiny.py builder with the real model's shape (untrained weights, fixed seed), built
and cached before any timing. Per model x target, `python -m modelport convert <dir> --target T
--variants V --out DIR --force` runs in a fresh process (ONNX: fp32,q8; MLX: f32,q4 — the 4-bit
folder MLX users ask for), with validation (the PyTorch golden on the 50-text validation set, then
every variant) unless --skip-validation. Measured as lm_scale.py measures decoders: wall seconds,
peak RSS of the largest process (wait4) and of the process tree (sampled /proc), artifact size.
The budget the issue sets: every row within this machine's 24 GB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_scale import disk_bytes, measure, param_count  # noqa: E402  (one measuring run for both benchmarks)

MODELS = ("qwen3-embedding-0.6b-shape", "embeddinggemma-300m-shape", "bge-m3-shape")
VARIANTS = {"onnx": "fp32,q8", "mlx": "f32,q4", "coreml": "fp32,w8"}


def run(model_dir: Path, name: str, target: str, out: Path, skip_validation: bool) -> dict:
    cmd = [sys.executable, "-m", "modelport", "convert", str(model_dir), "--target", target,
           "--variants", VARIANTS[target], "--out", str(out), "--force"] + (["--skip-validation"] if skip_validation else [])
    log = out.parent / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n== {name} -> {target}: {' '.join(cmd[1:])}  (log: {log})", flush=True)
    rc, wall, rss1, rss_tree = measure(cmd, log)
    verdict = "-"
    if (out / "manifest.json").is_file():
        man = json.loads((out / "manifest.json").read_text())
        verdict = str(man.get("validation", {}).get("status", "not validated"))
    row = {"model": name, "target": target, "variants": VARIANTS[target], "rc": rc, "verdict": verdict,
           "wall_s": wall, "rss1_gb": rss1 / 1e9, "rss_tree_gb": max(rss_tree, rss1) / 1e9,
           "artifact_mb": disk_bytes(out) / 1e6}
    tail = log.read_text(errors="replace").strip().splitlines()[-2:]
    print("   " + "\n   ".join(tail), flush=True)
    print(f"   -> exit {rc}, {verdict}, {wall:.0f} s, peak RSS {row['rss1_gb']:.2f} GB (largest) / "
          f"{row['rss_tree_gb']:.2f} GB (tree), artifact {row['artifact_mb']:.0f} MB", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default="onnx,mlx")
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from modelport import tiny

    out_root = args.out or Path(tempfile.mkdtemp(prefix="embed-scale-"))
    rows = []
    for name in args.models.split(","):
        model_dir = tiny.materialize(name)  # built (and cached) before any timing
        params = param_count(model_dir)
        for target in args.targets.split(","):
            out = out_root / f"{name}-{target}"
            row = run(model_dir, name, target, out, args.skip_validation)
            row["params_m"] = params / 1e6
            rows.append(row)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    print("\n| model | params | target | variants | exit | verdict | wall s | peak RSS GB (largest process) "
          "| peak RSS GB (process tree) | artifact MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.0f}M | {r['target']} | {r['variants']} | {r['rc']} | {r['verdict']} "
              f"| {r['wall_s']:.0f} | {r['rss1_gb']:.2f} | {r['rss_tree_gb']:.2f} | {r['artifact_mb']:.0f} |")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
