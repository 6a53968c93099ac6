"""MLX target: MLX safetensors folders (Apple silicon), one loadable folder per variant.

  encoder.py   sentence encoders (MLXEncoder): f32, f16, q8, q4 + dequantized-weights references
  decoder.py   decoder LLMs (MLXDecoder): mlx-lm folders, f32, f16, q8, q4
  common.py    what both share: the variant table, quantization rules, saving, runtime versions/notes
  models/      the MLX forward passes the validator runs (bert.py, llama.py)

No toolchain (mlx, torch) is imported at module level, and `models/` (which imports mlx) only
inside functions: the validator and the other targets' images import this package too.
"""

from __future__ import annotations

from ..registry import REGISTRY, TargetSpec

SPEC = REGISTRY.add_target(TargetSpec(name="mlx", description="MLX safetensors folders (Apple silicon)",
                                      extra="mlx", image="mlx"))

from . import encoder, decoder  # noqa: E402,F401,I001  (register MLXEncoder, MLXDecoder: encoder first)
