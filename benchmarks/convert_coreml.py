"""Time the Core ML target: conversion per variant and validation with the NumPy interpreter.

    python benchmarks/convert_coreml.py [--model all-minilm-l6-v2] [--shape fixed] [--variants fp32,fp16,...]

Runs the real pipeline in one process (the PyTorch reference, torch.export, then `coreml.convert`
with a step callback that timestamps each variant, then `validate`), and prints per variant:
conversion seconds (ct.convert + compression + save + normalization; the shared export is listed
once), package size, interpreter validation seconds over the whole golden set, seconds per
forward pass, and the verdict with its figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class StepClock:
    """A `step` callback that records how long each step took."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.current: str | None = None
        self.started = 0.0

    def __call__(self, message: str) -> None:
        self.stop()
        self.current, self.started = message, time.perf_counter()

    def stop(self) -> None:
        if self.current is not None:
            self.times[self.current] = time.perf_counter() - self.started
            self.current = None


def per_forward_seconds(package: Path, repeat: int = 5) -> float:
    """Median seconds of one interpreter run at the package's default input shape."""
    from modelport.milinterp import Interpreter

    interp = Interpreter(package)
    feeds = {s.name: np.ones(s.shape, dtype=np.int32) for s in interp.inputs}
    interp.run(feeds)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        interp.run(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--shape", help="as `modelport convert --shape` (default fixed:128)")
    ap.add_argument("--variants", help="comma-separated (default: all)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from importlib.metadata import version

    from modelport import reference
    from modelport.recipes import recipe_for
    from modelport.source import resolve
    from modelport.targets.coreml import encoder as coreml
    from modelport.targets.registry import parse_variants
    from modelport.validate import validate

    variants = parse_variants(coreml.CoreMLEncoder, args.variants)
    source = resolve(args.model)
    recipe = coreml.adapt_recipe(recipe_for(source.path, source.config), args.shape)
    work = Path(tempfile.mkdtemp(prefix="mp-coreml-bench-"))
    clock = StepClock()
    clock("reference (PyTorch fp32, golden set)")
    reference.compute(source, recipe).save(work)
    target = coreml.convert(source, recipe, variants, work, clock, shape=args.shape)
    info = target.to_json()
    clock.stop()

    from modelport import manifest

    manifest.save(work, manifest.build(work, command=sys.argv, source=source.to_json(), recipe=recipe.to_json(),
                                       target=target))
    report = validate(work)
    print(f"model {args.model}, shape {info['shape']['text']}, {os.cpu_count()} cpus, python "
          f"{sys.version.split()[0]}, coremltools {version('coremltools')}, torch {version('torch')}")
    for step, seconds in clock.times.items():
        if not step.startswith("write "):
            print(f"  {step:58s} {seconds:6.1f}s")
    print()
    header = ("variant", "target", "convert", "size", "validate", "per forward", "verdict", "tok max abs",
              "pooled max abs", "cos min", "cos mean", "top-5")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in report.results:
        v = info["variants"][r.variant]
        convert_s = next(s for step, s in clock.times.items() if step.startswith(f"write {r.variant} "))
        m = r.metrics
        print(f"| {r.variant} | {v['minimum_deployment_target']} | {convert_s:.1f} s | {v['bytes'] / 1e6:.1f} MB | "
              f"{r.seconds:.1f} s | {per_forward_seconds(work / v['file']):.2f} s | "
              f"{'pass' if r.passed else 'FAIL'} | {m.tokens_max_abs:.1e} | {m.pooled_max_abs:.1e} | "
              f"{m.cos_min:.6f} | {m.cos_mean:.6f} | {m.top5_mean:.2f} |")
    print(f"\nartifact: {work}")


if __name__ == "__main__":
    main()
