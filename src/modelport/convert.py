"""convert: model -> golden reference -> target files -> manifest -> validation, atomically.

Read top to bottom, this is the whole pipeline. Every check that can reject the input runs
before any expensive work; all writes go to a staging dir renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import families, lint, manifest, weight_stats
from .errors import ModelportError, ToolchainError
from .fsutil import check_output_dir, staging_dir, write_error_log
from .embedding import head_tensors
from .recipes import EMBEDDING_FAMILIES, recipe_for
from .source import resolve
from .targets import REGISTRY
from .targets.registry import ConvertContext, parse_options, parse_variants, require_packages
from .torch_model import Models
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
    # Target options by name (coreml: shape, context); each converter's Options dataclass says which it takes.
    options: dict[str, str] = field(default_factory=dict)
    truncate_dim: int | None = None  # embedders: Matryoshka truncation of the sentence embedding


def default_out(model_name: str, target: str) -> Path:
    return Path("artifacts") / model_name / target


def check_target_request(target: str, variants: str | None, options: dict[str, Any]) -> None:
    """Refuse what no family of the target accepts before any model is loaded (a typo costs nothing)."""
    REGISTRY.target(target)
    known = REGISTRY.all_variants(target)
    names = [v.strip() for v in (variants or "").split(",") if v.strip()]
    if variants is not None and not names:  # `--variants ''` (an unset shell variable) never means "the defaults"
        raise ModelportError(f"--variants is empty; omit it for the defaults (this target writes: {', '.join(known)})")
    unknown = [v for v in names if v not in known]
    if unknown:
        raise ModelportError(f"unknown variant(s) {', '.join(unknown)}; this target writes: {', '.join(known)}")
    searched = [v for v in names if known[v].searched]
    if searched and not options.get("quant_plan"):
        raise ModelportError(f"variant {searched[0]} needs --quant-plan PLAN (write one with: modelport "
                             f"quantize-search <model> --target {target})")
    if options.get("quant_plan") and not searched:
        which = ", ".join(v for v in known if known[v].searched) or "none"
        raise ModelportError(f"--quant-plan writes searched variants ({which}): name them in --variants")
    accepted = REGISTRY.all_options(target)
    for key in options:
        if key not in accepted:
            takes = f"it takes {', '.join('--' + k.replace('_', '-') for k in accepted)}" if accepted else "it takes no options"
            raise ModelportError(f"--{key.replace('_', '-')} does not apply to the {target} target ({takes})")
    # Each family's Options checks its own values (e.g. --context >= 8): a bad value costs nothing either.
    for family in REGISTRY.families_of(target):
        options_cls = REGISTRY.converter_class(target, family).Options
        fields = {f.name for f in dataclasses.fields(options_cls)}
        given = {k: v for k, v in options.items() if k in fields}
        if given:
            options_cls(**given)


@contextlib.contextmanager
def toolchain_step(what: str) -> Iterator[None]:
    """A crash inside a toolchain (torch, an exporter, a quantizer) becomes exit 3: one line naming the
    step and the exception, the traceback in a log file. Our own errors pass through unchanged."""
    try:
        yield
    except (ModelportError, KeyboardInterrupt):
        raise
    except MemoryError as e:
        raise ToolchainError(f"{what} ran out of memory", str(write_error_log("convert", e))) from e
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:300]
        raise ToolchainError(f"{what} failed: {type(e).__name__}: {first}", str(write_error_log("convert", e))) from e


def run(req: ConvertRequest, steps: Steps) -> tuple[Path, Report | None]:
    check_target_request(req.target, req.variants, req.options)
    if req.out is not None:
        check_output_dir(req.out, req.force)

    steps("inspect model")
    source = resolve(req.model, allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code)
    recipe = recipe_for(source.path, source.config, truncate_dim=req.truncate_dim)
    family = families.get(recipe.family)
    cls = REGISTRY.converter_class(req.target, family.name)
    if req.target not in recipe.targets:
        raise ModelportError(f"target {req.target!r} does not support {recipe.architecture.model_type} "
                             f"({family.name}) yet (supported: {', '.join(recipe.targets)})")
    variants = parse_variants(cls, req.variants)
    options = parse_options(cls, req.options)
    spec = REGISTRY.target(req.target)
    require_packages(cls.requires, req.target, spec.extra, spec.image, "converting")
    converter = cls()
    recipe = converter.adapt_recipe(recipe, options)  # e.g. a Core ML fixed input shape caps the length
    steps("config lint")
    findings = lint.run(source.path, source.config, recipe, req.target)
    lint.enforce(findings, req.ignore_lint)
    for finding in findings:
        steps.note(f"lint {finding.severity} [{finding.rule}]: {finding.message}")
    out = req.out or default_out(source.name, req.target)

    report = None
    models = Models()
    with staging_dir(out, req.force, source=source.path, note=steps.note) as work:  # checks again, with the model
        with toolchain_step(f"the PyTorch reference of {source.name}"):
            family.compute_golden(source, recipe, work, steps, models)
        with toolchain_step(f"the {req.target} converter"):
            target_info = converter.convert(ConvertContext(source, recipe, variants, work, steps, options, models))
        models.clear()
        carry_search(req.options.get("quant_plan"), work)
        steps("write manifest (sha256 of every file)")
        # per-tensor statistics of the checkpoint: what validation checks the stored weights against
        extra = head_tensors(source.path, recipe.head, recipe.heads) if recipe.family in EMBEDDING_FAMILIES else {}
        quirks = [q for q in recipe.quirks if q.stored_forms]
        forms = (lambda name, values: {k: v for q in quirks for k, v in q.forms(name, values).items()}) if quirks else None
        source_json = {**source.to_json(),
                       "tensor_stats": weight_stats.source_stats(source.weight_files, extra, forms)}
        man = manifest.build(work, command=list(req.command), source=source_json,
                             recipe=recipe.to_json(), target=target_info,
                             lint=[f.to_json() for f in findings])
        manifest.save(work, man)
        if req.validate:
            report = validate(work, progress=steps)
            record(work, report)
        steps.close()
    return out, report


SEARCH_FILES = ("search.json", "pareto.png")


def carry_search(quant_plan: str | None, work: Path) -> None:
    """A variant written from a quantize-search folder keeps the search beside it (`quant-search/`):
    the report shows the Pareto front it was chosen from, and the manifest hashes it like every file."""
    if not quant_plan or not Path(quant_plan).is_dir() or not (Path(quant_plan) / "search.json").is_file():
        return
    (work / "quant-search").mkdir()
    for name in SEARCH_FILES:
        if (Path(quant_plan) / name).is_file():
            shutil.copyfile(Path(quant_plan) / name, work / "quant-search" / name)
