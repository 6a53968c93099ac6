"""Targets: one package per on-device format, each registering one Converter per model family.

`registry.py` holds the contract (Converter, ArtifactSession, Variant, TargetSpec) and the one
`REGISTRY`; each `targets/<name>/__init__.py` declares its TargetSpec and imports its converter
modules, which register themselves with `@register`. Importing this package imports every target:
their modules import no toolchain at module level (torch, onnx, coremltools, mlx and tvm are
imported inside the functions that use them), so the registry is complete in every image.
"""

from __future__ import annotations

# Registration order is the order users see (CLI choices, `modelport recipes`, refusals): keep it, not sorted.
from . import onnx, coreml, mlx, mlc  # noqa: F401, I001  (each registers its TargetSpec and converters)
from .registry import REGISTRY, ArtifactSession, ConvertContext, Converter, TargetSpec, Variant, register

__all__ = ["REGISTRY", "TARGETS", "ArtifactSession", "ConvertContext", "Converter", "TargetSpec", "Variant",
           "register"]

# name -> TargetSpec, in registration order
TARGETS = REGISTRY.targets
