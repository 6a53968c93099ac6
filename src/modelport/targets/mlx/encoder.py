"""MLX target, sentence encoders (MLXEncoder): the checkpoint's weights as MLX safetensors, one
loadable folder per variant.

    <out>/f32/  model.safetensors (float32)  config.json  tokenizer.json ...  modules.json 1_Pooling/
    <out>/f16/  model.safetensors (float16 weights; MLX computes in float16)
    <out>/q8/   8-bit group-wise affine weights + config.json "quantization": {"group_size", "bits": 8}
    <out>/q4/   4-bit, same layout
    <out>/q4mix/  searched (`--variants q4mix --quant-plan PLAN`, never by default): 4-bit GPTQ weights with
                the most sensitive layers at 5/6/8 bits, float16 scales and biases; per-layer widths in
                config.json's `quantization` (mlx-lm's form); the plan and its sha256 in the manifest (quantize.py)
    <out>/reference/dequant_q8.npz, dequant_q4.npz (, dequant_q4mix.npz)   PyTorch run with the dequantized weights

Each variant folder is what MLX loaders read (mlx-lm / mlx-embeddings conventions: config.json +
model.safetensors with the checkpoint's own tensor names, `quantization` in config.json, layers with
`.scales`/`.biases` are quantized). The sentence-transformers pooling config is carried into every
folder; upstream converters drop it and leave the client to guess.

Quantization: `mlx.nn.quantize` (affine, group size from the recipe) on every Linear layer and the
word-embedding table; LayerNorms, biases, position and token-type embeddings stay float32, and so
do the scales and biases (mlx-lm stores them in float16 by default: float32 keeps the format's
error to the quantization itself).

Validation splits the two sources of error of a quantized variant: PyTorch is run with the
dequantized weights at conversion time (stored in reference/), so the validator reports the
format's error (dequantized PyTorch vs fp32 PyTorch) apart from the runtime's (MLX vs dequantized
PyTorch, which must agree to fp32 precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...dequantized import reference_path, runtime_check
from ...errors import ModelportError
from ...families import ENCODER
from ...families.encoder import EncoderRunner
from ...fsutil import read_json
from ...manifest import TargetInfo
from ...recipes import ARCHITECTURES
from ..registry import ConvertContext, Variant, register
from .common import (BITS, WEIGHTS, MLXConverter, MLXSession, Step, dequantized_weights,
                     encoder_quantizable, stored_quantized, variant_table, write_variant_folders)
from .quantize import SEARCHED

__all__ = ["DEFAULT_VARIANTS", "VARIANTS", "MLXEncoder", "convert", "dequantized_weights", "extra_metrics",
           "load_model", "load_runner"]

VARIANTS = {
    **variant_table(f16="float16 weights and compute", quantized="Linear + word embeddings"),
    # Searched (quantize.py): written only from a plan (--quant-plan), never by default; gated at the goal
    # it was searched for (thresholds "q4mix"), not at the round-to-nearest q4 gate.
    SEARCHED: Variant(SEARCHED, f"{SEARCHED}/{WEIGHTS}", "q4mix",
                      "searched 4-bit group-wise affine weights (GPTQ / least-squares scales, the most sensitive "
                      "layers at 8 bits; float16 scales and biases), from a quantize-search plan", searched=True),
}
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != SEARCHED)


def _build_model(config: dict[str, Any]):
    from .models import family

    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ModelportError(f"unsupported architecture for MLX: model_type={model_type!r}")
    return family(model_type).Model(config, position_offset=arch.position_offset)


def convert(source, recipe, variants: list[str], out: Path, step: Step, quant_plan: str | None = None) -> TargetInfo:
    """Write each requested variant folder, and the dequantized-weights reference per quantized one
    (q4mix: from the plan, quantize.write_searched)."""
    from ...reference import Golden
    from . import quantize
    from .models import family

    plan = quantize.load_plan(quant_plan) if SEARCHED in variants else None  # refused before any work
    to_mlx = family(read_json(source.path / "config.json")["model_type"]).checkpoint_weights
    plain = [v for v in variants if v != SEARCHED]
    extras: dict[str, dict[str, Any]] = {}
    if plain:
        extras, _ = write_variant_folders(source, recipe, plain, out, step,
                                          {n: v.description for n, v in VARIANTS.items()}, _build_model, to_mlx,
                                          encoder_quantizable)
    if plan is not None:
        extras[SEARCHED] = quantize.write_searched(source, recipe, plan, out, step, Golden.load(out), _build_model,
                                                   load_model)
    return TargetInfo.of("mlx", ENCODER.name, variants, VARIANTS, per_variant=extras,
                         layout="mlx (config.json + model.safetensors per variant)")


def load_model(folder: Path):
    """An MLX model from a variant folder, as an MLX user would load it."""
    import mlx.core as mx
    import mlx.nn as nn

    config = read_json(folder / "config.json")
    model = _build_model(config)
    weights = mx.load(str(folder / WEIGHTS))
    if "quantization" in config:
        q = config["quantization"]
        nn.quantize(model, group_size=q["group_size"], bits=q["bits"],
                    class_predicate=stored_quantized(weights, q))
    model.load_weights(list(weights.items()), strict=True)
    if any(v.dtype == mx.float16 for k, v in weights.items() if not k.endswith((".scales", ".biases"))):
        model.set_dtype(mx.float16)
    mx.eval(model.parameters())
    return model


def load_runner(artifact: Path, variant: str) -> EncoderRunner:
    # MLX's CPU backend uses reference BLAS (~1 GFLOP/s): results are memoized per input so the
    # dequantized-weights comparison (extra_metrics) reuses the validation run instead of redoing it.
    forward = load_forward(artifact, variant)
    memo: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        key = b"".join(feeds[k].astype(np.int64).tobytes() + str(feeds[k].shape).encode() for k in sorted(feeds))
        if key not in memo:
            memo[key] = forward(feeds)
        return memo[key]

    return run


def load_forward(artifact: Path, variant: str) -> EncoderRunner:
    """The variant's forward pass, computed on every call (modelport.runtime, `modelport bench`)."""
    import mlx.core as mx

    from .head import Head

    folder = artifact / variant
    model = load_model(folder)
    # The head the shipped folder describes (pooling, Dense layers, normalize, truncation): this also
    # proves the sentence-transformers files were carried over.
    head = Head.from_folder(folder, int(read_json(folder / "config.json")["hidden_size"]))

    def forward(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        ids = mx.array(feeds["input_ids"].astype(np.int32))
        mask = mx.array(feeds["attention_mask"].astype(np.int32))
        tt = mx.array(feeds["token_type_ids"].astype(np.int32)) if "token_type_ids" in feeds else None
        hidden = model(ids, mask, tt).astype(mx.float32)
        pooled = head(hidden, ids, mask)[0]
        mx.eval(hidden, pooled)
        return np.array(hidden), np.array(pooled)

    return forward


def extra_metrics(artifact: Path, variant: str, run: EncoderRunner, golden) -> dict[str, Any]:
    """For quantized variants: format error and runtime error, measured apart (dequantized.runtime_check:
    MLX vs PyTorch with the same dequantized weights, gated at DEQUANT_RUNTIME_MAX_ABS)."""
    if variant not in BITS and variant != SEARCHED:
        return {}
    return runtime_check(artifact, variant, run, golden, "MLX", "float32")


class MLXEncoderSession(MLXSession):
    def runner(self, variant: str) -> EncoderRunner:
        return load_runner(self.root, variant)

    def extra_metrics(self, variant: str, runner: EncoderRunner, golden) -> dict[str, Any]:
        return extra_metrics(self.root, variant, runner, golden)


@register
class MLXEncoder(MLXConverter):
    """Sentence encoders (BERT, XLM-R) -> one MLX safetensors folder per variant."""

    family = ENCODER.name
    variants = VARIANTS
    defaults = DEFAULT_VARIANTS

    @dataclass(frozen=True)
    class Options:
        quant_plan: str | None = None  # q4mix: a quantize-search folder or plan-q4mix.json

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step, quant_plan=ctx.options.quant_plan)

    def quantize_search(self, ctx):
        from .quantize import quantize_search

        return quantize_search(ctx, _build_model)

    def open(self, artifact: Path) -> MLXEncoderSession:
        return MLXEncoderSession(artifact)
