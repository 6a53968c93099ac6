"""convert: model -> golden reference -> target files -> manifest -> validation, atomically.

Read top to bottom, this is the whole pipeline. Every check that can reject the input runs
before any expensive work; all writes go to a staging dir renamed into place at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import lint, manifest, reference, targets
from .errors import ModelportError
from .fsutil import check_output_dir, staging_dir
from .recipes import CAUSAL_LM, SENTENCE_ENCODER, recipe_for
from .source import resolve
from .ui import Steps
from .validate import Report, record, validate


@dataclass(frozen=True)
class ConvertRequest:
    model: str
    target: str
    variants: str | None
    out: Path | None
    force: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    validate: bool = True
    ignore_lint: bool = False
    command: tuple[str, ...] = ()
    # Target options by name (coreml: shape); a target lists the ones it takes in OPTIONS.
    options: dict[str, str] = field(default_factory=dict)


def default_out(model_name: str, target: str) -> Path:
    return Path("artifacts") / model_name / target


def check_options(module, target: str, options: dict[str, str]) -> None:
    accepted = getattr(module, "OPTIONS", ())
    for key in options:
        if key not in accepted:
            takes = f"it takes {', '.join('--' + k for k in accepted)}" if accepted else "it takes no options"
            raise ModelportError(f"--{key} does not apply to the {target} target ({takes})")


def _encoder_golden(source, recipe, work: Path, steps: Steps) -> None:
    steps(f"reference: PyTorch fp32 on validation set ({source.name})")
    reference.compute(source, recipe).save(work)


def _lm_golden(source, recipe, work: Path, steps: Steps) -> None:
    from .lm import PROMPTS, STEPS, compute_golden

    steps(f"reference: PyTorch fp32, {len(PROMPTS)} prompts x {STEPS} greedy steps with KV cache ({source.name})")
    compute_golden(source.path).save(work)


@dataclass(frozen=True)
class FamilyPipeline:
    """What differs between model families in the pipeline: the golden and the target entry point."""

    golden: Callable[[Any, Any, Path, Steps], None]
    converter: str  # the target module's function: convert(...) or convert_lm(...)
    what: str  # for messages


FAMILIES: dict[str, FamilyPipeline] = {
    SENTENCE_ENCODER: FamilyPipeline(_encoder_golden, "convert", "sentence encoders"),
    CAUSAL_LM: FamilyPipeline(_lm_golden, "convert_lm", "decoder LLMs"),
}


def check_target_supports(module, target: str, recipe) -> None:
    """A clear refusal when the target cannot convert this family or architecture."""
    arch = recipe.architecture
    family = FAMILIES[arch.family]
    if target in arch.targets and hasattr(module, family.converter):
        return
    if arch.is_decoder and target not in arch.targets:
        converts = [FAMILIES[f].what for f in FAMILIES if hasattr(module, FAMILIES[f].converter)]
        raise ModelportError(
            f"target {target!r} converts {', '.join(converts) or 'nothing'} only; {arch.model_type} is a causal-lm "
            f"(decoder LLM): use {' or '.join(arch.targets)}")
    if target in arch.targets:  # the registry lists it, the target module has no entry point for the family yet
        raise ModelportError(f"target {target!r} does not convert {family.what} yet (no {family.converter}() in "
                             f"{module.__name__}); {arch.model_type} is a {arch.family} model")
    raise ModelportError(
        f"target {target!r} does not support {arch.model_type} ({arch.family}) yet "
        f"(supported: {', '.join(arch.targets)})"
    )


def run(req: ConvertRequest, steps: Steps) -> tuple[Path, Report | None]:
    module = targets.get(req.target)
    targets.parse_variants(module, req.variants, family=None)  # names no family of the target knows: fail now
    check_options(module, req.target, req.options)
    if req.out is not None:
        check_output_dir(req.out, req.force)

    steps("inspect model")
    source = resolve(req.model, allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code)
    recipe = recipe_for(source.path, source.config)
    check_target_supports(module, req.target, recipe)
    if hasattr(module, "adapt_recipe"):  # e.g. a Core ML fixed input shape caps the length
        recipe = module.adapt_recipe(recipe, req.options)
    family = FAMILIES[recipe.architecture.family]
    variants = targets.parse_variants(module, req.variants, family=recipe.architecture.family)
    steps("config lint")
    findings = lint.run(source.path, source.config, recipe, req.target)
    lint.enforce(findings, req.ignore_lint)
    for finding in findings:
        steps.note(f"lint {finding.severity} [{finding.rule}]: {finding.message}")
    out = req.out or default_out(source.name, req.target)

    report = None
    with staging_dir(out, req.force) as work:
        family.golden(source, recipe, work, steps)
        target_info = getattr(module, family.converter)(source, recipe, variants, work, steps, **req.options)
        steps("write manifest (sha256 of every file)")
        man = manifest.build(work, command=list(req.command), source=source.to_json(),
                             recipe=recipe.to_json(), target=target_info,
                             lint=[f.to_json() for f in findings])
        manifest.save(work, man)
        if req.validate:
            report = validate(work, progress=steps)
            record(work, report)
        steps.close()
    return out, report
