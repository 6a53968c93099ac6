"""convert: model -> golden reference -> target files -> manifest -> validation, atomically.

Read top to bottom, this is the whole pipeline. Every check that can reject the input runs
before any expensive work; all writes go to a staging dir renamed into place at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import lint, manifest, reference, targets
from .errors import ModelportError
from .fsutil import check_output_dir, staging_dir
from .recipes import recipe_for
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


def run(req: ConvertRequest, steps: Steps) -> tuple[Path, Report | None]:
    module = targets.get(req.target)
    variants = targets.parse_variants(module, req.variants)
    check_options(module, req.target, req.options)
    if req.out is not None:
        check_output_dir(req.out, req.force)

    steps("inspect model")
    source = resolve(req.model, allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code)
    recipe = recipe_for(source.path, source.config)
    if hasattr(module, "adapt_recipe"):  # e.g. a Core ML fixed input shape caps the length
        recipe = module.adapt_recipe(recipe, req.options)
    if req.target not in recipe.architecture.targets:
        raise ModelportError(
            f"target {req.target!r} does not support {recipe.architecture.model_type} yet "
            f"(supported: {', '.join(recipe.architecture.targets)})"
        )
    steps("config lint")
    findings = lint.run(source.path, source.config, recipe, req.target)
    lint.enforce(findings, req.ignore_lint)
    for finding in findings:
        steps.note(f"lint {finding.severity} [{finding.rule}]: {finding.message}")
    out = req.out or default_out(source.name, req.target)

    report = None
    with staging_dir(out, req.force) as work:
        steps(f"reference: PyTorch fp32 on validation set ({source.name})")
        golden = reference.compute(source, recipe)
        golden.save(work)
        target_info = module.convert(source, recipe, variants, work, steps, **req.options)
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
