"""Run every variant of an artifact on the golden inputs and judge it against its family's gates.

Only the artifact directory is needed: the golden inputs/outputs travel inside it, and the
target's runtime (onnxruntime, ...) is imported lazily, so this runs in the small validator image.
One loop for every (target, family) pair: the registry gives the converter that wrote the artifact,
its `ArtifactSession` gives a runner per variant, the family judges the runner against its golden.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import families
from . import manifest as manifest_mod
from . import weight_stats
from .errors import ModelportError
from .manifest import TargetInfo
from .targets import REGISTRY
from .targets.registry import require_packages


@dataclass
class VariantResult:
    variant: str
    precision: str
    passed: bool
    metrics: Any | None  # the family's metrics object (to_json())
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "precision": self.precision,
            "verdict": "pass" if self.passed else "fail",
            "thresholds": self.gate,
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


def _selected(info: TargetInfo, variants: list[str] | None) -> list[str]:
    names = variants or list(info.variants)
    for name in names:
        if name not in info.variants:
            raise ModelportError(f"variant {name!r} is not in this artifact ({', '.join(info.variants)})")
    return names


def _error_line(e: Exception) -> str:
    return f"could not run: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


def _validate_variant(root: Path, man: dict[str, Any], info: TargetInfo, family: Any, converter: Any, session: Any,
                      golden: Any, name: str, progress: Callable[[str], Any] | None) -> VariantResult:
    """One variant through its runtime, judged by the family (and its stored weights checked)."""
    precision = info.variants[name].precision
    gate = family.gate_json(precision)
    if gate is None:
        return VariantResult(name, precision, False, None, [
            f"no {family.name} gate for precision {precision!r} (the family's threshold table has "
            f"{', '.join(family.thresholds)})"])
    if progress:
        progress(family.describe_run(name, golden))
    t0 = time.perf_counter()
    # What no golden input touches (an unused embedding row): the stored weights against the source
    # checkpoint's per-tensor statistics recorded at conversion (weight_stats.py).
    weights = weight_stats.check_variant(converter, root, name, man)
    try:
        runner = session.runner(name)
        judged = family.judge(root, golden, name, precision, runner)
    except Exception as e:  # a variant that cannot load or run is a failed variant, not a crash
        return VariantResult(name, precision, False, None, [_error_line(e)] + weights.failures,
                             extra={"weights": weights.extra}, gate=gate)
    more = session.extra_metrics(name, runner, judged.against if judged.against is not None else golden)
    failures = judged.failures + more.pop("failures", []) + weights.failures
    return VariantResult(name, precision, not failures, judged.metrics, failures, judged.notes,
                         time.perf_counter() - t0, {**judged.extra, **more, "weights": weights.extra}, gate)


def validate(root: Path, variants: list[str] | None = None, progress: Callable[[str], Any] | None = None) -> Report:
    """Validate an artifact: every selected variant through its runtime, judged by its family."""
    man = manifest_mod.load(root)
    info = TargetInfo.from_json(man["target"])
    family = families.get(info.family)
    converter = REGISTRY.converter(info.name, info.family)
    names = _selected(info, variants)
    spec = REGISTRY.target(info.name)
    # a missing runtime is the environment's fault (exit 3 naming the image), not a failed variant
    require_packages(type(converter).runtime_requires, info.name, spec.extra, spec.image, "validating")
    session = converter.open(root)
    golden = family.load_golden(root)
    workers = min(session.parallel_variants, os.cpu_count() or 1, len(names))
    if workers > 1:
        session.threads = max(1, (os.cpu_count() or 1) // workers)
        if progress:
            progress(f"validate {', '.join(names)} ({workers} at a time)")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda name: _validate_variant(root, man, info, family, converter, session,
                                                                   golden, name, None), names))
    else:
        results = [_validate_variant(root, man, info, family, converter, session, golden, name, progress)
                   for name in names]
    runtime = ", ".join(f"{k} {v}" for k, v in converter.runtime_versions().items())
    unchecked = sorted({r.extra["weights"]["note"] for r in results if "note" in r.extra.get("weights", {})})
    return Report(target=info.name, runtime=runtime, results=results,
                  notes=family.golden_notes(golden) + session.notes() + unchecked, family=family.name)


def record(root: Path, report: Report) -> None:
    """Store the report in the manifest (the manifest is not itself hashed).

    Real-client results (validation.clients, from `modelport clients`) are kept: re-validating does
    not re-run them, and each records the sha256 of the file it ran, so a later change shows as stale.
    """
    man = manifest_mod.load(root)
    clients = man.get("validation", {}).get("clients")
    man["validation"] = report.to_json()
    if clients:
        man["validation"]["clients"] = clients
    if os.environ.get("MODELPORT_IMAGE"):
        man.setdefault("images", {})["validate"] = os.environ["MODELPORT_IMAGE"]
    manifest_mod.save(root, man)
