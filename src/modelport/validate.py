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
from .thresholds import LM_THRESHOLDS, THRESHOLDS, check, check_lm


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
    family: str = "sentence-encoder"

    def to_json(self) -> dict[str, Any]:
        table = LM_THRESHOLDS if self.family == "causal-lm" else THRESHOLDS
        return {
            "variant": self.variant,
            "precision": self.precision,
            "verdict": "pass" if self.passed else "fail",
            "thresholds": table[self.precision].to_json() if self.precision in table else None,
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
    family: str = "sentence-encoder"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "pass" if self.passed else "fail",
            "family": self.family,
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
    """Validate an artifact with its family's validator (the manifest's recipe says which)."""
    man = manifest_mod.load(root)
    family = man.get("recipe", {}).get("family", "sentence-encoder")
    return VALIDATORS[family](root, man, variants, progress)


def _selected(target_info: dict[str, Any], variants: list[str] | None) -> list[str]:
    names = variants or list(target_info["variants"])
    for name in names:
        if name not in target_info["variants"]:
            raise ModelportError(f"variant {name!r} is not in this artifact ({', '.join(target_info['variants'])})")
    return names


def _error_line(e: Exception) -> str:
    return f"could not run: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


def validate_lm(root: Path, man: dict[str, Any], variants: list[str] | None,
                progress: Callable[[str], Any] | None) -> Report:
    """Decoder LLMs: each variant's runner through lm.evaluate_lm, judged by thresholds.LM_THRESHOLDS.

    Quantized precisions are gated against PyTorch on their own dequantized weights
    (reference/lm_golden_<variant>); their distance to the fp32 golden (top-1 agreement, KL,
    greedy tokens, max abs) is reported under extra.vs_fp32, not gated.
    """
    import time

    from .lm import LMGolden, evaluate_lm, golden_name

    target_info = man["target"]
    module = targets.get(target_info["name"])
    fp32_golden = LMGolden.load(root)
    results = []
    for name in _selected(target_info, variants):
        precision = target_info["variants"][name]["precision"]
        if precision not in LM_THRESHOLDS:
            results.append(VariantResult(name, precision, False, None, [
                f"no decoder gate for precision {precision!r} (thresholds.LM_THRESHOLDS has "
                f"{', '.join(LM_THRESHOLDS)})"], family="causal-lm"))
            continue
        gate = LM_THRESHOLDS[precision]
        if progress:
            progress(f"validate {name} ({fp32_golden.steps} greedy steps x {len(fp32_golden.prompts)} prompts)")
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        try:
            runner = module.load_lm_runner(root, name)
            if gate.reference == "dequantized":
                if not LMGolden.exists(root, golden_name(name)):
                    raise FileNotFoundError(f"reference/{golden_name(name)}.npz (the dequantized-weights golden) "
                                            "is missing from the artifact")
                golden = LMGolden.load(root, golden_name(name))
            else:
                golden = fp32_golden
            metrics = evaluate_lm(golden, runner)
            if golden is not fp32_golden:
                vs = evaluate_lm(fp32_golden, runner)
                extra["vs_fp32"] = {k: v for k, v in vs.to_json().items() if k != "prompts"}
        except Exception as e:  # a variant that cannot load or run is a failed variant, not a crash
            results.append(VariantResult(name, precision, False, None, [_error_line(e)], family="causal-lm"))
            continue
        failures = check_lm(precision, metrics)
        if hasattr(module, "lm_extra_metrics"):  # e.g. Core ML itself on macOS, next to the interpreter
            more = module.lm_extra_metrics(root, name, golden)
            failures += more.pop("failures", [])
            extra.update(more)
        notes = [f"gated against the {gate.reference} golden"]
        if "vs_fp32" in extra:
            v = extra["vs_fp32"]
            notes.append(f"vs fp32 PyTorch (not gated): top-1 {v['top1_agreement']:.3f}, KL {v['kl_mean']:.2e}, "
                         f"greedy {v['greedy_equal']}/{v['greedy_total']}, max abs {v['step_max_abs']:.3g}")
        results.append(VariantResult(name, precision, not failures, metrics, failures, notes,
                                     time.perf_counter() - t0, extra, family="causal-lm"))
    runtime = ", ".join(f"{k} {v}" for k, v in module.runtime_versions().items())
    runtime_notes = module.runtime_notes(root) if hasattr(module, "runtime_notes") else []
    return Report(target=target_info["name"], runtime=runtime, results=results, notes=runtime_notes,
                  family="causal-lm")


def validate_encoder(root: Path, man: dict[str, Any], variants: list[str] | None,
                     progress: Callable[[str], Any] | None) -> Report:
    import time

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


VALIDATORS: dict[str, Callable[..., Report]] = {
    "sentence-encoder": validate_encoder,
    "causal-lm": validate_lm,
}


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
