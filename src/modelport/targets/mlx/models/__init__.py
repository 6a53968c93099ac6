"""Forward passes in MLX, one model family per file (the mlx-lm way).

Encoders (bert.py), decoder LLMs (llama.py: Llama, Qwen2, Qwen3, SmolLM3, with a KV cache; its
`Trunk` is the cache-free Qwen3-Embedding trunk) and the bidirectional Gemma 3 trunk (gemma3.py).
The validator runs the converted MLX weights with these modules and compares them with the
PyTorch golden outputs. Parameter names mirror the Hugging Face checkpoint's, so converted
safetensors load with `model.load_weights` and stay readable by other MLX loaders.

`FAMILIES` maps a Hugging Face `model_type` to the module that implements it; the per-architecture
facts (position offsets, inputs) still come from the recipe registry, not from this table.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ....errors import ModelportError

FAMILIES = {
    "bert": "modelport.targets.mlx.models.bert",
    "xlm-roberta": "modelport.targets.mlx.models.bert",
    # decoder LLMs: one module, per-family differences in its FAMILIES table
    "llama": "modelport.targets.mlx.models.llama",
    "qwen2": "modelport.targets.mlx.models.llama",
    "qwen3": "modelport.targets.mlx.models.llama",
    "smollm3": "modelport.targets.mlx.models.llama",
    # bidirectional decoder trunk (EmbeddingGemma); qwen3 embedders use llama.Trunk
    "gemma3_text": "modelport.targets.mlx.models.gemma3",
}


def family(model_type: str) -> ModuleType:
    if model_type not in FAMILIES:
        raise ModelportError(
            f"no MLX forward pass for model_type={model_type!r}; MLX supports: {', '.join(sorted(FAMILIES))}"
        )
    return importlib.import_module(FAMILIES[model_type])
