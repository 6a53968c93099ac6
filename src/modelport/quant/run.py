"""quantize-search: model -> validated fp32 artifact -> the target's search -> search folder.

Read top to bottom, this is the whole command. The target's converter does the searching
(`Converter.quantize_search`); this module gives it what it needs (a validated fp32 artifact of
the model in the target's own format, with the golden inside, and scratch space) and writes the
result atomically, like `convert` writes artifacts:

    <out>/search.json           every candidate: plan, size, bits per weight, dev-set quality, Pareto flag
    <out>/plan-<variant>.json   the plan of each chosen variant (e.g. q4mix, q4mix-wasm)
    <out>/pareto.png            size against quality, naive variants and peers marked

The chosen variants are then written by `convert --quant-plan <out>` and validated on the
validation set, which the search never saw (it ranks on quant/texts.py's dev texts).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import families
from ..convert import ConvertRequest, check_target_request, run as convert_run
from ..errors import ModelportError, ValidationFailed
from ..fsutil import check_output_dir, staging_dir
from ..recipes import CAUSAL_LM, recipe_for
from ..source import resolve
from ..targets import REGISTRY
from ..targets.registry import Converter, require_packages
from ..ui import Steps
from .search import DEFAULT_DECODER_GOAL, DEFAULT_ENCODER_GOAL, Goal, SearchContext, SearchResult


@dataclass(frozen=True)
class SearchRequest:
    model: str
    target: str
    goal: str | None = None
    out: Path | None = None
    force: bool = False
    quick: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False


def default_out(model_name: str, target: str) -> Path:
    return Path("artifacts") / model_name / f"{target}-quant-search"


def run(req: SearchRequest, steps: Steps) -> tuple[Path, SearchResult]:
    check_target_request(req.target, None, {})
    goal = Goal.parse(req.goal) if req.goal else None
    if req.out is not None:
        check_output_dir(req.out, req.force)
    steps("inspect model")
    source = resolve(req.model, allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code)
    recipe = recipe_for(source.path, source.config)
    family = families.get(recipe.family)
    cls = REGISTRY.converter_class(req.target, family.name)
    if cls.quantize_search is Converter.quantize_search:  # refused before any conversion work
        pairs = [f"{t} ({f})" for t, f in REGISTRY.pairs()
                 if REGISTRY.converter_class(t, f).quantize_search is not Converter.quantize_search]
        raise ModelportError(f"quantize-search is not available for the {req.target} target with {family.name} "
                             f"models yet (it searches: {', '.join(pairs) or 'nothing'})")
    spec = REGISTRY.target(req.target)
    require_packages(cls.requires, req.target, spec.extra, spec.image, "searching")
    converter = cls()
    goal = goal or Goal.parse(DEFAULT_DECODER_GOAL if family.name == CAUSAL_LM else DEFAULT_ENCODER_GOAL)
    out = req.out or default_out(source.name, req.target)
    float_variant = next(iter(cls.variants))  # the registry's first variant: the one the others derive from
    with staging_dir(out, req.force, source=source.path, note=steps.note) as work:
        scratch = work / ".work"
        scratch.mkdir()
        fp32_dir = scratch / "fp32"
        steps(f"convert + validate {float_variant} for {req.target} (the search quantizes its weights)")
        _, report = convert_run(ConvertRequest(model=req.model, target=req.target, variants=float_variant,
                                               out=fp32_dir, allow_pickle=req.allow_pickle,
                                               trust_remote_code=req.trust_remote_code,
                                               command=("modelport", "quantize-search", req.model)), steps)
        if report is not None and not report.passed:
            raise ValidationFailed(f"the {float_variant} conversion the search starts from failed validation; "
                                   f"run `modelport convert {req.model} --target {req.target} --variants "
                                   f"{float_variant}` to see why")
        ctx = SearchContext(source=source, recipe=recipe, goal=goal, fp32_dir=fp32_dir, work=scratch, step=steps,
                            quick=req.quick)
        result = converter.quantize_search(ctx)
        result.family = family.name
        shutil.rmtree(scratch)
        steps("write search.json, plans, pareto.png")
        result.save(work)
        steps.close()
    return out, result


def next_command(model: str, target: str, out: Path, result: SearchResult, float_variant: str) -> str | None:
    """The convert command that writes the chosen variants (None when the search chose nothing)."""
    if not result.chosen:
        return None
    variants = ",".join([float_variant, *result.chosen])
    return f"modelport convert {model} --target {target} --variants {variants} --quant-plan {out}"


def float_variant_of(target: str, model_family: str) -> str:
    return next(iter(REGISTRY.converter_class(target, model_family).variants))
