"""Scale benchmark for decoder LLMs (issue #9): three model sizes through each target's 4-bit path.

    .venv/bin/python benchmarks/lm_scale.py [--sizes tiny-llama,llama-100m-shape,llama-3.2-1b-shape]
        [--targets onnx,coreml,mlx] [--variant onnx=q4f16] [--skip-validation] [--keep] [--out DIR]

    # issue 18's 3B row (12.3 GB of fp32 weights built once under $MODELPORT_CACHE; most of 24 GB of RAM):
    MODELPORT_CACHE=/big/disk .venv/bin/python benchmarks/lm_scale.py --sizes smollm3-3b-shape \
        --targets onnx --variant onnx=q4f16 --skip-validation

Sizes are tiny.py builders (`tiny-llama`: 2 layers, hidden 128; `llama-100m-shape`: untrained, ~100M;
`llama-3.2-1b-shape`: untrained, 1.24B, 5 GB fp32; `smollm3-3b-shape`: untrained SmolLM3-3B, 3.08B, 12.3 GB
fp32, not in the default list), built once and cached before any timing. For every size x target,
`python -m modelport convert <model dir> --target T --variants <4-bit> --out DIR --force` runs in a fresh
process; the 4-bit variant is the one the target's decoder table (`LM_VARIANTS`) marks with precision
q4 / w4 (onnx q4, coreml w4, mlx q4), or the one `--variant TARGET=NAME` names (onnx=q4f16: the file
browsers load, which must stay under their 2 GB). Measured per conversion:

  wall       seconds, process start to exit (imports, model load, export, quantization, the variant's
             dequantized golden, validation unless --skip-validation)
  rss1       peak RSS of the single largest process (wait4's ru_maxrss: the converter or one of its workers)
  rss_tree   peak of the summed RSS of the converter and all its descendants, sampled every 0.1 s from
             /proc (Core ML builds its packages in a worker process while the parent stays alive); at
             least rss1 (a sample can miss a short peak that ru_maxrss records exactly)
  variant    bytes of the 4-bit file(s) (ONNX: .onnx + _data; Core ML: the .mlpackage folder)
  <= 2 GB    whether the variant fits a browser tab's 2 GB (2^31 bytes) ArrayBuffer limit
  artifact   bytes of the whole artifact folder (goldens, tokenizer, manifest)

then per target, from one size to the next: seconds and GB of RSS per billion parameters, and the
growth exponent log(cost_b / cost_a) / log(params_b / params_a) (1 = linear; the issue asks <= 1).
The fixed cost of a process (Python, torch, the exporter: ~1 GB and several seconds) dominates the
tiny model, so its per-parameter cost is large and the exponents from it are far below 1; the
100M -> 1B step is the meaningful one. Untrained weights: the verdict measures the conversion, not text.

Validation of the 1B model (PyTorch goldens on 5 prompts x 16 steps, then the runtime, on 2 CPU cores;
the Core ML interpreter accumulates in float64) can take much longer than its conversion: use
--skip-validation for the 1B row and validate separately if needed. Outputs are deleted after being
measured unless --keep (the 1B fp32 intermediates take several GB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SIZES = ("tiny-llama", "llama-100m-shape", "llama-3.2-1b-shape")  # smollm3-3b-shape: on request
BROWSER_LIMIT = 2 ** 31  # bytes one ArrayBuffer may hold in a browser tab
TARGETS = ("onnx", "coreml", "mlx")
PAGE = os.sysconf("SC_PAGE_SIZE")


def four_bit_variant(target: str) -> str:
    """The target's decoder variant with 4-bit weights and float32 compute (precision q4 or w4)."""
    from modelport.targets import REGISTRY

    known = REGISTRY.converter_class(target, "causal-lm").variants
    names = [n for n, v in known.items() if v.precision in ("q4", "w4")]
    if len(names) != 1:
        raise SystemExit(f"{target}: expected one 4-bit decoder variant, found {names} in {sorted(known)}")
    return names[0]


def variant_names(target: str) -> list[str]:
    from modelport.targets import REGISTRY

    return list(REGISTRY.converter_class(target, "causal-lm").variants)


def variant_path(target: str, variant: str) -> str:
    from modelport.targets import REGISTRY

    return REGISTRY.converter_class(target, "causal-lm").variants[variant].path


def param_count(model_dir: Path) -> int:
    """Stored parameters, from the safetensors headers (a tied table counts once)."""
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return 0


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of `root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * PAGE  # field 24 of stat (rss, pages); [0] here is field 3
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


def measure(cmd: list[str], log: Path) -> tuple[int, float, int, int]:
    """Run `cmd` with its output in `log`: (exit code, wall seconds, peak RSS bytes of its largest single
    process (wait4's ru_maxrss), peak summed RSS bytes of its process tree (/proc sampled every 0.1 s)).
    Shared with embed_scale.py."""
    peak_tree, done = 0, threading.Event()
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)

        def sample() -> None:
            nonlocal peak_tree
            while not done.is_set():
                peak_tree = max(peak_tree, _tree_rss(proc.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child alone (and its reaped workers), not earlier runs
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss * 1024, peak_tree  # ru_maxrss: KiB on Linux


@dataclass
class Run:
    size: str
    target: str
    variant: str
    params: int
    rc: int
    wall_s: float
    rss1_gb: float
    rss_tree_gb: float
    variant_mb: float
    artifact_mb: float
    verdict: str
    log: str


def convert(model_dir: Path, size: str, target: str, out: Path, skip_validation: bool, params: int,
            variant: str | None = None) -> Run:
    variant = variant or four_bit_variant(target)
    cmd = [sys.executable, "-m", "modelport", "convert", str(model_dir), "--target", target,
           "--variants", variant, "--out", str(out), "--force"] + (["--skip-validation"] if skip_validation else [])
    log = out.parent / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n== {size} -> {target} {variant}: {' '.join(cmd[1:])}  (log: {log})", flush=True)
    rc, wall, rss1, peak_tree = measure(cmd, log)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print("   " + "\n   ".join(tail), flush=True)
    verdict = "-"
    manifest = out / "manifest.json"
    if manifest.is_file():
        verdict = str(json.loads(manifest.read_text()).get("validation", {}).get("status", "?"))
    vpath = out / variant_path(target, variant)
    vbytes = disk_bytes(vpath) + disk_bytes(Path(str(vpath) + "_data"))
    run = Run(size, target, variant, params, rc, wall, rss1 / 1e9, max(peak_tree, rss1) / 1e9,
              vbytes / 1e6, disk_bytes(out) / 1e6, verdict, str(log))
    print(f"   -> exit {rc}, {run.verdict}, {wall:.1f} s, peak RSS {run.rss1_gb:.2f} GB (largest process) / "
          f"{run.rss_tree_gb:.2f} GB (tree), variant {run.variant_mb:.1f} MB", flush=True)
    return run


def print_table(runs: list[Run]) -> None:
    print("\n| model | params | target | variant | exit | verdict | wall s | peak RSS GB (largest process) "
          "| peak RSS GB (process tree) | variant MB | <= 2 GB | artifact MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        fits = "yes" if r.variant_mb * 1e6 <= BROWSER_LIMIT else "no"
        print(f"| {r.size} | {r.params / 1e6:.1f}M | {r.target} | {r.variant} | {r.rc} | {r.verdict} | {r.wall_s:.1f} "
              f"| {r.rss1_gb:.2f} | {r.rss_tree_gb:.2f} | {r.variant_mb:.1f} | {fits} | {r.artifact_mb:.1f} |")


def print_scaling(runs: list[Run]) -> None:
    print("\nCost per billion parameters, and growth exponent from the previous size "
          "(log cost ratio / log parameter ratio; <= 1: no worse than linear):\n")
    print("| target | model | s / B params | GB RSS (tree) / B params | wall exponent | RSS exponent |")
    print("|---|---|---|---|---|---|")
    for target in dict.fromkeys(r.target for r in runs):
        prev = None
        for r in sorted((r for r in runs if r.target == target and r.rc == 0), key=lambda r: r.params):
            b = r.params / 1e9
            exp_t = exp_m = ""
            if prev is not None and r.params > prev.params:
                lp = math.log(r.params / prev.params)
                exp_t = f"{math.log(r.wall_s / prev.wall_s) / lp:.2f}"
                exp_m = f"{math.log(r.rss_tree_gb / prev.rss_tree_gb) / lp:.2f}"
            print(f"| {target} | {r.size} | {r.wall_s / b:.0f} | {r.rss_tree_gb / b:.1f} | {exp_t} | {exp_m} |")
            prev = r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated tiny.py model names")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--variant", action="append", default=[], metavar="TARGET=NAME",
                    help="convert this variant for TARGET instead of its 4-bit fp32-compute one (e.g. onnx=q4f16)")
    ap.add_argument("--skip-validation", action="store_true",
                    help="convert only (recommended for the 1B size on a small machine)")
    ap.add_argument("--keep", action="store_true", help="keep each artifact (default: delete after measuring)")
    ap.add_argument("--out", type=Path, default=Path("artifacts") / "lm_scale")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                    help="print the tables from saved --json files instead of running")
    args = ap.parse_args()

    if args.report:
        runs = [Run(**r) for f in args.report for r in json.loads(f.read_text())]
        for r in runs:  # files written before rss_tree included rss1
            r.rss_tree_gb = max(r.rss_tree_gb, r.rss1_gb)
        print_table(runs)
        print_scaling(runs)
        return 0

    from modelport import tiny

    sizes = args.sizes.split(",")
    targets = args.targets.split(",")
    for t in targets:
        four_bit_variant(t)  # fail early on an unknown target
    chosen = dict(v.split("=", 1) for v in args.variant)
    for t, v in chosen.items():
        if v not in variant_names(t):
            raise SystemExit(f"{t}: no decoder variant {v!r} (known: {', '.join(variant_names(t))})")
    runs: list[Run] = []
    for size in sizes:
        t0 = time.perf_counter()
        model_dir = tiny.materialize(size)
        params = param_count(model_dir)
        print(f"model {size}: {model_dir}, {params / 1e6:.1f}M parameters, "
              f"{disk_bytes(model_dir) / 1e9:.2f} GB on disk (build/cache {time.perf_counter() - t0:.1f}s)", flush=True)
        for target in targets:
            out = args.out / size / target
            runs.append(convert(model_dir, size, target, out, args.skip_validation, params, chosen.get(target)))
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    print(f"\nvalidation: {'skipped' if args.skip_validation else 'on'}; cores: {os.cpu_count()}; "
          f"load average at end: {os.getloadavg()[0]:.1f}")
    print_table(runs)
    print_scaling(runs)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    failed = [r for r in runs if r.rc != 0]
    for r in failed:
        print(f"FAILED {r.size} {r.target}: exit {r.rc}, see {r.log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
