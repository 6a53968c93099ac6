"""MLX target, decoder LLMs (MLXDecoder): Llama, Qwen2, Qwen3 and SmolLM3 as mlx-lm folders.

    <out>/f32|f16|q8|q4/  config.json (+ top-level rope_theta/rope_scaling, + "quantization")
                          model.safetensors (mlx-lm names, tied tables stored once)
                          tokenizer.json tokenizer_config.json (chat template inline too)
                          chat_template.jinja generation_config.json
    <out>/reference/lm_golden_q8|q4.npz   PyTorch on the variant's dequantized weights (lm.py)

Quantization follows mlx-lm's own rule (every layer with `to_quantized` whose input width is a
multiple of the group size: all Linear layers, the embedding table and an untied lm_head), so the
folder is what `mlx_lm.convert -q` would write, except that scales stay float32 (see common.py).

The config, tokenizer and chat template are written by `layout.write_client_files`, as for every
decoder target; MLX adds the rotary settings transformers really computes with (`lm_config`) and the
variant's dtype / quantization keys through its `config_updates`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelportError
from ...families import DECODER
from ...fsutil import read_json
from ...layout import write_client_files
from ...manifest import TargetInfo
from ..registry import ConvertContext, NoOptions, register
from .common import (BITS, WEIGHTS, MLXConverter, MLXSession, Step, check_group_size, dequantized_weights,
                     lm_quantizable, save, stored_quantized, variant_table)

__all__ = ["LM_DEFAULT_VARIANTS", "LM_VARIANTS", "MLXDecoder", "MLXLMRunner", "convert_lm", "lm_config",
           "lm_dequantized_weights", "load_lm_model", "load_lm_runner"]

# Precisions are keys of thresholds.LM_THRESHOLDS (w8/w4 are gated against PyTorch running the
# variant's own dequantized weights).
LM_VARIANTS = variant_table(f16="float16 weights, activations and KV cache",
                            quantized="Linear, embedding, lm_head")
LM_DEFAULT_VARIANTS = tuple(LM_VARIANTS)


def lm_config(source_config: dict[str, Any], resolved_rope: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config.json every variant folder gets, and notes on what changed and why.

    `resolved_rope` is transformers' standardized `rope_parameters` (what the PyTorch reference
    computes with). It is written in both spellings: `rope_parameters` for transformers 5, and
    top-level `rope_theta` (+ `rope_scaling` for scaled types) for mlx-lm, which reads only those
    and otherwise falls back to its own default (10000 for llama/smollm3, 1e6 for qwen2) silently.
    """
    cfg = dict(source_config)
    notes = []
    rope = {k: v for k, v in resolved_rope.items() if v is not None}
    theta = rope.get("rope_theta")
    top = cfg.get("rope_theta")
    if top is None:
        notes.append(f"rope_theta={theta} was only in rope_parameters (transformers 5): written at the top "
                     "level too, where mlx-lm reads it")
    elif float(top) != float(theta):
        notes.append(f"config.json had rope_theta={top} at the top level but transformers uses {theta} "
                     f"(rope_parameters): the folder says {theta} in both places")
    cfg["rope_parameters"] = rope
    cfg["rope_theta"] = theta
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    else:
        cfg.pop("rope_scaling", None)
    return cfg, notes


def _config_updates(source_config: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What `lm_config` changed, as `write_client_files` config_updates (applied after the quirks'
    own rewrites, so MLX's resolved values win). A key it dropped (a default-type `rope_scaling`)
    is written as null, which mlx-lm reads as absent."""
    updates = {k: v for k, v in config.items() if k not in source_config or source_config[k] != v}
    updates.update({k: None for k in source_config if k not in config})
    return updates


def lm_dequantized_weights(model) -> dict[str, np.ndarray]:
    """The dequantized weights under PyTorch's parameter names (which are the MLX names).

    With tied embeddings the one quantized table is both the embedding and the output projection
    in MLX, so PyTorch's `lm_head.weight` gets the same dequantized matrix.
    """
    weights = dequantized_weights(model)
    table = "model.embed_tokens.weight"
    if model.args.tie_word_embeddings and table in weights:
        weights["lm_head.weight"] = weights[table]
    return weights


def convert_lm(source, recipe, variants: list[str], out: Path, step: Step) -> TargetInfo:
    """Write each decoder variant as an mlx-lm folder; for q8/q4 also the dequantized-weights golden."""
    import mlx.core as mx
    import mlx.nn as nn

    from ... import lm
    from ...torch_model import load_causal_lm_source
    from .models import llama

    group = recipe.quant_group_size
    check_group_size(source, recipe, variants)
    step("load checkpoint weights (causal LM)")
    # The checkpoint as transformers loads it (fp32): the weights to convert, and the rotary
    # frequencies PyTorch really uses (checked against what the MLX config will say).
    torch_model = load_causal_lm_source(source)
    source_config = read_json(source.path / "config.json")
    config, notes = lm_config(source_config, dict(torch_model.config.rope_parameters))
    rope_updates = _config_updates(source_config, config)
    args = llama.Args.from_config(config)
    # The rotary frequencies the MLX folder implies must be PyTorch's own, to float32 rounding (a
    # misread rope base gives plausible text and wrong logits: 5-6 logits units on tiny models).
    torch_inv = torch_model.model.rotary_emb.inv_freq.detach().float().numpy()
    mlx_inv = args.rope.inv_freq(args.head_dim)
    if torch_inv.shape != mlx_inv.shape or np.abs(torch_inv - mlx_inv).max() > 1e-7 * np.abs(torch_inv).max():
        raise ModelportError(f"rotary frequencies differ from PyTorch's (rope settings {args.rope}): not converting")
    state = {k: mx.array(v.detach().float().numpy()) for k, v in torch_model.state_dict().items()}
    del torch_model
    weights = llama.checkpoint_weights(state, config)
    del state
    extras: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(variants):
        step(f"write {name} ({LM_VARIANTS[name].description})")
        model = llama.Model(config)
        try:
            model.load_weights(list(weights.items()), strict=True)
        except ValueError as e:
            raise ModelportError(f"checkpoint tensors do not fit the MLX {config['model_type']} model: {e}") from e
        if i == len(variants) - 1:
            # No later variant needs the float32 checkpoint: free it before the float64 golden
            # (1B: 5 GB of the 20.5 GB peak measured with it kept).
            weights.clear()
        updates = dict(rope_updates)
        if name == "f16":
            model.set_dtype(mx.float16)
            updates["torch_dtype"] = updates["dtype"] = "float16"
        elif name in BITS:
            nn.quantize(model, group_size=group, bits=BITS[name], class_predicate=lm_quantizable(group))
            # mlx-lm writes both keys (`quantization_config` for Hugging Face tooling).
            updates["quantization"] = updates["quantization_config"] = {"group_size": group, "bits": BITS[name],
                                                                        "mode": "affine"}
        mx.eval(model.parameters())
        folder = out / name
        write_client_files(source, recipe, folder, config_updates=updates)
        save(model, folder / WEIGHTS)
        if name in BITS:
            step(f"reference: PyTorch with {name}'s dequantized weights")
            golden = lm.compute_golden(source.path, state_dict=lm_dequantized_weights(model),
                                       trust_remote_code=source.trust_remote_code)
            golden.save(out, lm.golden_name(name))
            extras[name] = {"dequantized_reference": f"{lm.REFERENCE_DIR}/{lm.golden_name(name)}.npz",
                            "quantization": updates["quantization"]}
    return TargetInfo.of("mlx", DECODER.name, variants, LM_VARIANTS, per_variant=extras,
                         layout="mlx-lm (config.json + model.safetensors + tokenizer per variant)", notes=notes,
                         rope={"rope_theta": args.rope.theta, "rope_type": args.rope.rope_type,
                               "nope_layers": [i for i, r in enumerate(args.rope_layers) if not r]})


def load_lm_model(folder: Path):
    """A decoder from a variant folder, the way mlx-lm loads one: build from config.json, quantize
    the layers whose `.scales` the file holds, load every tensor strictly."""
    import mlx.core as mx
    import mlx.nn as nn

    from .models import llama

    config = read_json(folder / "config.json")
    model = llama.Model(config)
    weights = mx.load(str(folder / WEIGHTS))
    if "quantization" in config:
        q = config["quantization"]
        nn.quantize(model, group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"),
                    class_predicate=stored_quantized(weights))
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


class MLXLMRunner:
    """lm.LMRunner over the MLX decoder: prefill, then one cached token per step."""

    context: int | None = None  # the KV cache grows as needed

    def __init__(self, model) -> None:
        self.model = model

    def _run(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        import mlx.core as mx

        logits, cache = self.model(mx.array(np.asarray(ids, dtype=np.int32)), state)
        logits = logits[0].astype(mx.float32)
        mx.eval(logits, *cache.keys, *cache.values)  # materialize the cache: no graph grows across steps
        return np.array(logits), cache

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        return self._run(np.asarray(input_ids).reshape(1, -1), None)

    def decode(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        logits, cache = self._run(np.array([[token]]), state)
        return logits[-1], cache


def load_lm_runner(artifact: Path, variant: str) -> MLXLMRunner:
    """The validator's entry point (lm.LMRunner): needs mlx only, not torch."""
    return MLXLMRunner(load_lm_model(artifact / variant))


class MLXDecoderSession(MLXSession):
    def runner(self, variant: str) -> MLXLMRunner:
        return load_lm_runner(self.root, variant)


@register
class MLXDecoder(MLXConverter):
    """Decoder LLMs (Llama, Qwen2, Qwen3, SmolLM3) -> one mlx-lm folder per variant."""

    family = DECODER.name
    variants = LM_VARIANTS
    defaults = LM_DEFAULT_VARIANTS
    Options = NoOptions

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert_lm(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step)

    def open(self, artifact: Path) -> MLXDecoderSession:
        return MLXDecoderSession(artifact)
