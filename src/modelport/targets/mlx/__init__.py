"""MLX target: MLX safetensors folders (Apple silicon), one loadable folder per variant.

  encoder.py   sentence encoders (MLXEncoder): f32, f16, q8, q4 + dequantized-weights references
  embedder.py  decoder embedders and multi-vector encoders (MLXDecoderEmbedder, MLXMultiVector): the
               trunk's weights + the sentence-transformers head files; head.py computes that head
  decoder.py   decoder LLMs (MLXDecoder): mlx-lm folders, f32, f16, q8, q4
  common.py    what both share: the variant table, quantization rules, saving, runtime versions/notes
  models/      the MLX forward passes the validator runs (bert.py, llama.py, gemma3.py)

No toolchain (mlx, torch) is imported at module level, and `models/` (which imports mlx) only
inside functions: the validator and the other targets' images import this package too.
"""

from __future__ import annotations

from ..registry import REGISTRY, TargetSpec

SPEC = REGISTRY.add_target(TargetSpec(name="mlx", description="MLX safetensors folders (Apple silicon)",
                                      extra="mlx", image="mlx"))

from . import encoder, decoder, embedder  # noqa: E402,F401,I001  (register MLXEncoder, MLXDecoder, then the embedders)
