"""Run every variant of an artifact on the golden inputs and judge it against the threshold table.

Only the artifact directory is needed: the golden inputs/outputs travel inside it, and the
target's runtime (onnxruntime, ...) is imported lazily, so this runs in the small validator image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import manifest as manifest_mod
from . import targets
from .errors import ModelportError
from .metrics import Metrics, case_diff, summarize, topk_agreement
from .reference import Golden
from .thresholds import THRESHOLDS, check


@dataclass
class VariantResult:
    variant: str
    precision: str
    passed: bool
    metrics: Metrics | None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "precision": self.precision,
            "verdict": "pass" if self.passed else "fail",
            "thresholds": THRESHOLDS[self.precision].to_json(),
            "metrics": self.metrics.to_json() if self.metrics else None,
            "failures": self.failures,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
            "extra": self.extra,
        }


@dataclass
class Report:
    target: str
    runtime: str
    results: list[VariantResult]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "pass" if self.passed else "fail",
            "target": self.target,
            "runtime": self.runtime,
            "notes": self.notes,
            "variants": {r.variant: r.to_json() for r in self.results},
        }


def evaluate(golden: Golden, run: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]],
             batch_invariant: bool) -> tuple[Metrics, list[str]]:
    """Run one variant over the golden cases and compute its metrics."""
    diffs = []
    notes = []
    singles: dict[int, np.ndarray] = {}
    for case in golden.cases:
        feeds = golden.inputs(case["name"])
        hidden, pooled = run(feeds)
        diff = case_diff(case["name"], feeds["attention_mask"], golden.output(case["name"], "last_hidden_state"),
                         hidden, golden.output(case["name"], "sentence_embedding"), pooled)
        if case["batched"] and not batch_invariant:
            notes.append(f"{case['name']}: batch result depends on padding for this format; "
                         f"reported, not gated (cos min {min(diff.cosines):.4f})")
            continue
        diffs.append(diff)
        if not case["batched"]:
            singles[case["text_ids"][0]] = pooled[0]
    ref = np.stack([golden.output(c["name"], "sentence_embedding")[0] for c in golden.cases if not c["batched"]])
    got = np.stack([singles[i] for i in range(len(golden.meta["texts"]))])
    top5 = topk_agreement(ref, got, golden.meta["query_ids"], golden.meta["corpus_ids"])
    return summarize(diffs, top5), notes


def validate(root: Path, variants: list[str] | None = None, progress: Callable[[str], Any] | None = None) -> Report:
    import time

    man = manifest_mod.load(root)
    target_info = man["target"]
    module = targets.get(target_info["name"])
    golden = Golden.load(root)
    names = variants or list(target_info["variants"])
    results = []
    for name in names:
        if name not in target_info["variants"]:
            raise ModelportError(f"variant {name!r} is not in this artifact ({', '.join(target_info['variants'])})")
        precision = target_info["variants"][name]["precision"]
        if progress:
            progress(f"validate {name}")
        t0 = time.perf_counter()
        try:
            run = module.load_runner(root, name)
            metrics, notes = evaluate(golden, run, THRESHOLDS[precision].batch_invariant)
        except Exception as e:  # a variant that cannot load or run is a failed variant, not a crash
            results.append(VariantResult(name, precision, False, None,
                                         [f"could not run: {type(e).__name__}: {str(e).splitlines()[0][:300]}"]))
            continue
        failures = check(precision, metrics)
        extra: dict[str, Any] = {}
        if hasattr(module, "extra_metrics"):
            extra = module.extra_metrics(root, name, run, golden)
            failures += extra.pop("failures", [])
        results.append(VariantResult(name, precision, not failures, metrics, failures, notes,
                                     time.perf_counter() - t0, extra))
    runtime = ", ".join(f"{k} {v}" for k, v in module.runtime_versions().items())
    runtime_notes = module.runtime_notes(root) if hasattr(module, "runtime_notes") else []
    return Report(target=target_info["name"], runtime=runtime, results=results, notes=runtime_notes)


def record(root: Path, report: Report) -> None:
    """Store the report in the manifest (the manifest is not itself hashed).

    Real-client results (validation.clients, from `modelport clients`) are kept: re-validating does
    not re-run them, and each records the sha256 of the file it ran, so a later change shows as stale.
    """
    import os

    man = manifest_mod.load(root)
    clients = man.get("validation", {}).get("clients")
    man["validation"] = report.to_json()
    if clients:
        man["validation"]["clients"] = clients
    if os.environ.get("MODELPORT_IMAGE"):
        man.setdefault("images", {})["validate"] = os.environ["MODELPORT_IMAGE"]
    manifest_mod.save(root, man)
