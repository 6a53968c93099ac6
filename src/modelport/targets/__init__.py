"""Targets: one module per on-device format, each exposing the same few plain functions.

A target module provides:
  VARIANTS: dict[name, Variant]           every variant it can write, the default first
  DEFAULT_VARIANTS: tuple[str, ...]
  convert(source, recipe, variants, out, step) -> dict    write the files, return target info
  load_runner(artifact_dir, variant) -> Runner             run one variant for the validator
  runtime_versions() -> dict[str, str]                     recorded in the validation report
Optional:
  runtime_notes(artifact_dir) -> list[str]                 e.g. "Core ML runtime not available: ..."
  extra_metrics(artifact_dir, variant, run, golden) -> dict  extra figures per variant (stored in the
                                                           report under "extra"; e.g. distance to
                                                           PyTorch running the dequantized weights)
Decoder LLMs (recipe family "causal-lm"; lm.py has the contract):
  convert_lm(source, recipe, variants, out, step) -> dict      write the files (and, for quantized
                                                           variants, reference/lm_golden_<variant>
                                                           from lm.compute_golden(state_dict=...))
  load_lm_runner(artifact_dir, variant) -> lm.LMRunner       prefill + one cached decode step
  LM_VARIANTS / LM_DEFAULT_VARIANTS (optional)             when the decoder variants differ from VARIANTS;
                                                           each precision must be a key of
                                                           thresholds.LM_THRESHOLDS
Modules are imported lazily: the validator image has no torch and no exporter toolchains.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np

from ..errors import ModelportError

TARGETS = {
    "onnx": "modelport.targets.onnx",
    "coreml": "modelport.targets.coreml",
    "mlx": "modelport.targets.mlx",
    "mlc": "modelport.targets.mlc",
}


@dataclass(frozen=True)
class Variant:
    name: str
    path: str  # relative to the artifact root
    precision: str  # key into thresholds.THRESHOLDS
    description: str


# A runner maps input arrays (by name) to (last_hidden_state, sentence_embedding).
Runner = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def get(name: str) -> ModuleType:
    if name not in TARGETS:
        raise ModelportError(f"unknown target {name!r}; available: {', '.join(TARGETS)}")
    try:
        return importlib.import_module(TARGETS[name])
    except ModuleNotFoundError as e:
        if e.name == TARGETS[name]:
            raise ModelportError(f"target {name!r} is not implemented yet in modelport {_version()}") from e
        raise ModelportError(
            f"target {name!r} needs the package {e.name!r}, which is not installed in this environment "
            f"(use the {name} image, or pip install 'modelport[{name}]')"
        ) from e


def _version() -> str:
    from .. import __version__

    return __version__


def variants_of(module: ModuleType, family: str | None) -> tuple[dict[str, Variant], tuple[str, ...]]:
    """(variants, defaults) the target writes for a model family (None: every family's, merged)."""
    encoder = (module.VARIANTS, tuple(module.DEFAULT_VARIANTS))
    decoder = (getattr(module, "LM_VARIANTS", module.VARIANTS),
               tuple(getattr(module, "LM_DEFAULT_VARIANTS", module.DEFAULT_VARIANTS)))
    if family == "causal-lm":
        return decoder
    if family is None:
        merged = {**encoder[0], **{k: v for k, v in decoder[0].items() if k not in encoder[0]}}
        return merged, encoder[1]
    return encoder


def parse_variants(module: ModuleType, spec: str | None, family: str | None = "sentence-encoder") -> list[str]:
    known, defaults = variants_of(module, family)
    if not spec:
        return list(defaults)
    names = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        what = "" if family is None else f" for {family} models"
        raise ModelportError(
            f"unknown variant(s) {', '.join(unknown) or '(none given)'}; "
            f"this target writes{what}: {', '.join(known)}"
        )
    # Keep the registry's order (fp32 first: other variants derive from it), drop duplicates.
    return [v for v in known if v in names]
