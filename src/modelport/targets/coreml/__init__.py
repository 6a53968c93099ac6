"""Core ML target: ML Program .mlpackage files for iOS and macOS, proven on Linux by a NumPy interpreter.

    encoder.py   CoreMLEncoder (sentence encoders): fp32, fp16, w8, pal6, pal4; --shape
    decoder.py   CoreMLDecoder (decoder LLMs): fp32, w8, w4 with a stateful KV cache; --context
    package.py   what both share: deterministic packages, Core ML itself on macOS, runtime versions
The interpreter that validates the packages off macOS is `modelport.milinterp`.
"""

from __future__ import annotations

from ..registry import REGISTRY, TargetSpec

SPEC = REGISTRY.add_target(TargetSpec(name="coreml", description="Core ML .mlpackage (iOS / macOS)", extra="coreml",
                                      image="coreml"))

from . import encoder, decoder  # noqa: E402, F401, I001  (register the converters; encoder first)
