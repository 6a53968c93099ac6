"""The target × family registry: one `Converter` class per (target, family) pair, registered once.

This is the project's plug-in point, the way llama.cpp's `@ModelBase.register` or optimum's one
`OnnxConfig` per model type are theirs: a target package (`targets/<name>/`) defines one Converter
subclass per model family it converts and decorates it with `@register`. Everything else asks the
registry — `convert` looks the pair up, `validate` opens the artifact through it, the CLI lists
variants from it, and a refusal ("target X does not convert causal-lm models") comes from it. Nothing
probes a module for attributes.

A Converter declares, as class attributes:
  target, family         the pair (family: a `families` name, e.g. "sentence-encoder", "causal-lm")
  variants, defaults     every variant it can write (registry order: the first is the one others
                         derive from), and the ones written when the user names none
  Options                a frozen dataclass; its fields are the CLI flags the pair takes
  requires               Python packages needed to convert (checked up front: exit 3, not a crash)
  runtime_requires       Python packages needed to run the artifact (the validator image has them)
and implements:
  adapt_recipe(recipe, options) -> recipe       optional (e.g. a Core ML fixed shape caps the length)
  convert(ctx) -> TargetInfo                    write the variants into ctx.out
  open(artifact) -> ArtifactSession             runners for the validator, with per-artifact state
  runtime_versions() -> dict[str, str]          recorded in the validation report
  weight_tensors(artifact, variant)             optional: the variant's stored weights as floats, checked
                                                against the source checkpoint's statistics (weight_stats.py)
  quantize_search(ctx) -> SearchResult          optional: `modelport quantize-search` for this pair (the
                                                searched variants, e.g. q4mix, then convert from its plan)

Target modules import no toolchain (torch, onnx, coremltools, mlx, tvm) at module level: the
registry imports every target, and each image installs only its own toolchain.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

from ..errors import ModelportError, ToolchainError

if TYPE_CHECKING:
    from ..manifest import TargetInfo
    from ..quant.search import SearchContext, SearchResult
    from ..source import ModelSource


@dataclass(frozen=True)
class Variant:
    """One file (or folder) a converter can write: `precision` keys the family's threshold table."""

    name: str
    path: str  # relative to the artifact root
    precision: str
    description: str
    # written only from a quantize-search plan (`convert --quant-plan`), never by default: a searched
    # variant without a plan, or a plan without a searched variant, is refused before any model work
    searched: bool = False


@dataclass(frozen=True)
class NoOptions:
    """The options of a pair that takes none."""


@dataclass
class ConvertContext:
    """Everything a converter gets: explicit data, no globals."""

    source: "ModelSource"
    recipe: Any  # recipes.Recipe or recipes.LMRecipe (the family decides)
    variants: list[str]
    out: Path  # the staging directory (renamed into place when everything succeeded)
    step: Callable[[str], None]
    options: Any  # an instance of the converter's Options
    models: Any = None  # torch_model.Models: the modules the golden already loaded (None: load your own)


class ArtifactSession(ABC):
    """One opened artifact, for the validator: makes a runner per variant and keeps per-artifact state
    (e.g. notes a browser check produced) that module globals or function attributes used to carry."""

    # How many variants the validator may run at once. 1 unless runners are independent, thread-safe
    # and run outside the GIL (onnxruntime); the validator then gives each runner `threads` threads
    # so that together they use the machine's cores once.
    parallel_variants: int = 1

    def __init__(self, root: Path, threads: int | None = None) -> None:
        self.root = root
        self.threads = threads  # intra-op threads per runner; None: the runtime's default

    @abstractmethod
    def runner(self, variant: str) -> Any:
        """What the family's judge drives (encoders: feeds -> (hidden, pooled); decoders: an LMRunner)."""

    def extra_metrics(self, variant: str, runner: Any, golden: Any) -> dict[str, Any]:
        """Figures beyond the family's metrics; a "failures" list in the result fails the variant."""
        return {}

    def notes(self) -> list[str]:
        """Artifact-level notes for the report (e.g. "Core ML runtime not available on Linux")."""
        return []


class Converter(ABC):
    target: ClassVar[str]
    family: ClassVar[str]
    variants: ClassVar[Mapping[str, Variant]]
    defaults: ClassVar[tuple[str, ...]]
    Options: ClassVar[type] = NoOptions
    requires: ClassVar[tuple[str, ...]] = ()
    runtime_requires: ClassVar[tuple[str, ...]] = ()

    def adapt_recipe(self, recipe: Any, options: Any) -> Any:
        return recipe

    @abstractmethod
    def convert(self, ctx: ConvertContext) -> "TargetInfo":
        """Write ctx.variants into ctx.out; return the manifest's target section."""

    @abstractmethod
    def open(self, artifact: Path) -> ArtifactSession:
        """The validator's view of an artifact this converter wrote."""

    @abstractmethod
    def runtime_versions(self) -> dict[str, str]:
        """Versions of the runtime that ran the variants (recorded in the report)."""

    def weight_tensors(self, artifact: Path, variant: str) -> Iterable[tuple[str, Any, int | None]]:
        """Every weight the variant stores, read with numpy (no torch, no runtime), one at a time:
        (name, float numpy array, bits) with bits None for a float tensor as stored (its dtype sets the
        tolerance) or the bit width of a dequantized one. weight_stats.py compares them with the source
        checkpoint's per-tensor statistics. Default: none (the target's weights are not checked)."""
        return ()

    def quantize_search(self, ctx: "SearchContext") -> "SearchResult":
        """Search this format's quantization settings for the smallest variant meeting ctx.goal
        (quant/search.py has the shared bookkeeping). Default: the pair has no searched variants."""
        raise ModelportError(f"quantize-search is not available for the {self.target} target with {self.family} "
                             f"models yet")


@dataclass(frozen=True)
class TargetSpec:
    """What a target is, for people and images: its name, the pip extra and image that carry its
    toolchain, and one line on what it writes."""

    name: str
    description: str
    extra: str  # pip install 'modelport[<extra>]'
    image: str  # the workbench image that converts for it (images/, Makefile TOOLCHAINS)
    # family -> why this target does not convert it (said in the refusal, instead of only "it does not")
    refuses: dict[str, str] = dataclasses.field(default_factory=dict)


class Registry:
    """(target, family) -> Converter class. Refuses duplicates and incomplete declarations."""

    def __init__(self) -> None:
        self._targets: dict[str, TargetSpec] = {}
        self._converters: dict[tuple[str, str], type[Converter]] = {}

    # --- registration ------------------------------------------------------------------------------
    def add_target(self, spec: TargetSpec) -> TargetSpec:
        if spec.name in self._targets:
            raise ValueError(f"target {spec.name!r} is already registered; a target is declared once, in "
                             f"targets/{spec.name}/__init__.py")
        self._targets[spec.name] = spec
        return spec

    def register(self, cls: type[Converter]) -> type[Converter]:
        key = (cls.target, cls.family)
        if cls.target not in self._targets:
            raise ValueError(f"{cls.__name__}: target {cls.target!r} is not declared; add a TargetSpec in "
                             f"targets/{cls.target}/__init__.py first")
        if key in self._converters:
            raise ValueError(f"{cls.__name__}: ({cls.target}, {cls.family}) is already converted by "
                             f"{self._converters[key].__qualname__}; extend that class instead of adding a second one")
        if not cls.variants or not cls.defaults or set(cls.defaults) - set(cls.variants):
            raise ValueError(f"{cls.__name__}: defaults {cls.defaults} must be a non-empty subset of variants "
                             f"{tuple(cls.variants)}")
        if any(cls.variants[v].searched for v in cls.defaults):
            raise ValueError(f"{cls.__name__}: a searched variant needs a plan, so it cannot be a default")
        if not dataclasses.is_dataclass(cls.Options):
            raise ValueError(f"{cls.__name__}.Options must be a dataclass (its fields are the CLI flags)")
        self._converters[key] = cls
        return cls

    # --- lookups -------------------------------------------------------------------------------------
    @property
    def targets(self) -> dict[str, TargetSpec]:
        return dict(self._targets)

    def pairs(self) -> list[tuple[str, str]]:
        return list(self._converters)

    def target(self, name: str) -> TargetSpec:
        if name not in self._targets:
            raise ModelportError(f"unknown target {name!r}; available: {', '.join(self._targets)}")
        return self._targets[name]

    def families_of(self, target: str) -> list[str]:
        return [f for t, f in self._converters if t == target]

    def targets_for(self, family: str) -> list[str]:
        return [t for t, f in self._converters if f == family]

    def converter_class(self, target: str, family: str) -> type[Converter]:
        self.target(target)
        if (target, family) not in self._converters:
            others = self.targets_for(family)
            converts = self.families_of(target)
            why = self._targets[target].refuses.get(family)
            raise ModelportError(
                f"target {target!r} does not convert {family} models (it converts: {', '.join(converts) or 'nothing'})"
                + (f": {why}" if why else "") + f"; targets that do: {', '.join(others) or 'none yet'}")
        return self._converters[(target, family)]

    def converter(self, target: str, family: str) -> Converter:
        return self.converter_class(target, family)()

    def all_variants(self, target: str) -> dict[str, Variant]:
        """Every variant name any family of the target knows (to refuse a typo before loading a model)."""
        merged: dict[str, Variant] = {}
        for family in self.families_of(target):
            for name, v in self._converters[(target, family)].variants.items():
                merged.setdefault(name, v)
        return merged

    def all_options(self, target: str) -> tuple[str, ...]:
        names: list[str] = []
        for family in self.families_of(target):
            names += [f.name for f in dataclasses.fields(self._converters[(target, family)].Options)
                      if f.name not in names]
        return tuple(names)


def contract_problems(cls: type[Converter]) -> list[str]:
    """What a registered converter is missing, as readable lines (tests/unit/test_registry_contract.py).

    Checked without a model: the hooks are implemented (an abstract one left means the class cannot
    convert or cannot be validated), every variant's precision has a gate in its family's threshold
    table, defaults are variants, Options is a dataclass, the target is declared.
    """
    from .. import families

    problems = []
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        problems.append(f"{cls.__qualname__} does not implement {', '.join(missing)} (a converter needs convert, "
                        "open (the validator's runner) and runtime_versions)")
    try:
        family = families.get(cls.family)
    except ModelportError as e:
        return problems + [str(e)]
    for name, v in cls.variants.items():
        if v.name != name:
            problems.append(f"{cls.__qualname__}.variants[{name!r}] is named {v.name!r}")
        if v.precision not in family.thresholds:
            problems.append(f"{cls.__qualname__}: variant {name} has precision {v.precision!r}, which the "
                            f"{family.name} threshold table lacks ({', '.join(family.thresholds)})")
    if set(cls.defaults) - set(cls.variants):
        problems.append(f"{cls.__qualname__}: defaults {cls.defaults} are not all variants")
    if not dataclasses.is_dataclass(cls.Options):
        problems.append(f"{cls.__qualname__}.Options is not a dataclass")
    return problems


def parse_variants(cls: type[Converter], spec: str | None) -> list[str]:
    """The variants to write, in the registry's order (the first derives the others), no duplicates."""
    if not spec:
        return list(cls.defaults)
    names = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in names if v not in cls.variants]
    if unknown or not names:
        raise ModelportError(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; the {cls.target} target "
                             f"writes for {cls.family} models: {', '.join(cls.variants)}")
    return [v for v in cls.variants if v in names]


def parse_options(cls: type[Converter], given: Mapping[str, Any]) -> Any:
    """The converter's Options from CLI values; a flag the pair does not take is refused by name."""
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    for key in given:
        if key not in fields:
            takes = f"it takes {', '.join('--' + k.replace('_', '-') for k in sorted(fields))}" if fields else "it takes no options"
            raise ModelportError(f"--{key.replace('_', '-')} does not apply to the {cls.target} target for {cls.family} models ({takes})")
    return cls.Options(**dict(given))


def require_packages(packages: tuple[str, ...], target: str, extra: str, image: str, what: str) -> None:
    """Exit 3 with the one line that says which package is missing and where it is installed."""
    for name in packages:
        if importlib.util.find_spec(name) is None:
            raise ToolchainError(f"{what} for target {target!r} needs the Python package {name!r}, which is not "
                                 f"installed in this environment (use the {image} image, or pip install "
                                 f"'modelport[{extra}]')")


# The one registry instance: target packages add themselves to it at import (targets/__init__.py
# imports every target package), the way llama.cpp's converter classes fill ModelBase's table.
REGISTRY = Registry()
register = REGISTRY.register
