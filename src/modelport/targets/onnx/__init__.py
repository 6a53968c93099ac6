"""ONNX target: transformers.js's folder layout (WebGPU / wasm in the browser, Node), run by onnxruntime.

    encoder.py  sentence encoders: one fp32 export, then fp16 / int8 / 4-bit variants (OnnxEncoder)
    export.py   the encoder export: a trace checked on probe shapes, or torch.export (quirk torch-export-only)
    int8.py     dynamic int8 (q8 / uint8): onnxruntime's quantize_dynamic graph and numbers, vectorized
    fuse.py     fused variants (opt-in): MultiHeadAttention / SkipLayerNorm / BiasGelu contrib operators
    decoder.py  decoder LLMs: a KV-cache graph in the text-generation layout (OnnxDecoder)
    ort.py      what both share: opset, 4-bit quantizer, session options, saving, runtime versions
    weights.py  every variant's stored weights as floats, for the check against the source (weight_stats.py)

No toolchain is imported at module level (the registry imports every target; the validator image
has onnxruntime but no torch).
"""

from __future__ import annotations

from ..registry import REGISTRY, TargetSpec

SPEC = REGISTRY.add_target(TargetSpec(name="onnx", description="ONNX for transformers.js (WebGPU / wasm / Node)",
                                      extra="onnx", image="onnx"))

# encoder first: registration order is the order `--variants` errors list a target's variants in
from . import encoder, decoder  # noqa: E402,F401,I001  (each registers its Converter)
