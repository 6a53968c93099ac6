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


def parse_variants(module: ModuleType, spec: str | None) -> list[str]:
    if not spec:
        return list(module.DEFAULT_VARIANTS)
    names = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in names if v not in module.VARIANTS]
    if unknown or not names:
        raise ModelportError(
            f"unknown variant(s) {', '.join(unknown) or '(none given)'}; "
            f"this target writes: {', '.join(module.VARIANTS)}"
        )
    # Keep the registry's order (fp32 first: other variants derive from it), drop duplicates.
    return [v for v in module.VARIANTS if v in names]
