"""MLX target, embedders with a whole sentence-transformers head: decoder embedders (Qwen3-Embedding,
EmbeddingGemma) and multi-vector encoders (BGE-M3). One loadable folder per variant:

    <out>/f32/  config.json  model.safetensors (the trunk, the checkpoint's tensor names)
                tokenizer files  modules.json  1_Pooling/  <i>_Dense/ (config.json + model.safetensors)
                <i>_Normalize/  config_sentence_transformers.json (prompts; truncate_dim if truncated)
                sparse_linear.safetensors  colbert_linear.safetensors     (BGE-M3; from the .pt files)
    <out>/f16/  float16 trunk
    <out>/q8/, <out>/q4/   group-wise affine trunk (`quantization` in config.json)
    <out>/reference/dequant_q8.npz, dequant_q4.npz   PyTorch run with the dequantized trunk weights

`load_model(folder)` returns an `Embedder` whose call gives the final outputs (the sentence embedding
after pooling, Dense layers, normalization and truncation; BGE-M3's sparse weights and ColBERT
vectors), in the golden's order, not a hidden state the client must finish.

Trunks (`models/`): gemma3.py (bidirectional, sliding windows), llama.py's `Trunk` (Qwen3: causal +
padding mask, positions 0..L-1 including left padding, as AutoModel computes them), bert.py (XLM-R).
The head (head.py) runs in float32 and is never quantized: the Dense layers and BGE-M3's heads stay
float32 files in every folder, as in the PyTorch references (`reference.outputs_with_weights` replaces
trunk weights only), so a quantized variant's error is the trunk's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...dequantized import reference_path
from ...embedding import real_tokens
from ...errors import ModelportError
from ...families import DECODER_EMBEDDER_FAMILY, MULTI_VECTOR_FAMILY
from ...fsutil import read_json
from ...manifest import TargetInfo
from ...metrics import cosine_rows
from ...recipes import ARCHITECTURES
from ...thresholds import DEQUANT_RUNTIME_MAX_ABS
from ..registry import ConvertContext, NoOptions, register
from .common import (BITS, WEIGHTS, MLXConverter, MLXSession, Step, encoder_quantizable,
                     lm_quantizable, stored_quantized, variant_table, write_variant_folders)

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "MLXDecoderEmbedder", "MLXMultiVector", "Embedder", "convert",
           "load_model", "load_runner"]

VARIANTS = variant_table(
    f16="float16 trunk weights and compute (head float32)",
    quantized="trunk Linear layers + embedding table; Dense layers and heads float32")
DEFAULT_VARIANTS = tuple(VARIANTS)

Runner = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, ...]]


# --- trunks -------------------------------------------------------------------------------------------


def _trunk_module(model_type: str):
    """(module, build(config) -> nn.Module, weights(dict) -> dict, quantization predicate(group_size))."""
    if model_type == "gemma3_text":
        from .models import gemma3

        return (lambda cfg: gemma3.Model(cfg)), gemma3.checkpoint_weights, lm_quantizable
    if model_type == "qwen3":
        from .models import llama

        return (lambda cfg: llama.Trunk(cfg)), llama.trunk_weights, lm_quantizable
    if model_type in ("bert", "xlm-roberta"):
        from .models import bert

        offset = ARCHITECTURES[model_type].position_offset
        return (lambda cfg: bert.Model(cfg, position_offset=offset)), bert.checkpoint_weights, \
            (lambda gs: encoder_quantizable)
    raise ModelportError(f"no MLX embedder trunk for model_type={model_type!r} (gemma3_text, qwen3, bert, xlm-roberta)")


def build_trunk(config: dict[str, Any]):
    build, _, _ = _trunk_module(config.get("model_type"))
    return build(config)


# --- convert ---------------------------------------------------------------------------------------------


def convert(source, recipe, variants: list[str], out: Path, step: Step) -> TargetInfo:
    build, trunk_weights, predicate = _trunk_module(read_json(source.path / "config.json").get("model_type"))
    extras, shipped = write_variant_folders(source, recipe, variants, out, step,
                                            {n: v.description for n, v in VARIANTS.items()}, build, trunk_weights,
                                            predicate(recipe.quant_group_size))
    return TargetInfo.of("mlx", recipe.family, variants, VARIANTS, per_variant=extras,
                         layout="mlx (config.json + model.safetensors + sentence-transformers modules per variant)",
                         outputs=list(recipe.outputs), head_files=shipped,
                         head_precision="float32 in every variant (Dense layers, BGE-M3 heads)")


# --- load / run ------------------------------------------------------------------------------------------


class Embedder:
    """An MLX embedder folder, loaded: trunk + the folder's sentence-transformers head.

    `model(input_ids, attention_mask)` -> (last_hidden_state, sentence_embedding[, sparse_weights,
    colbert_vectors]) as MLX arrays, names in `model.outputs`; `model.encode(texts, prompt_name=...)`
    tokenizes with the folder's tokenizer (its padding side), prepends the named prompt from
    config_sentence_transformers.json, and returns the sentence embeddings."""

    def __init__(self, folder: Path, trunk, head, config: dict[str, Any]) -> None:
        self.folder, self.trunk, self.head, self.config = folder, trunk, head, config
        self.outputs = ("last_hidden_state",) + head.outputs
        self.prompts = dict(head.contract.prompts)

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> tuple:
        import mlx.core as mx

        ids = mx.array(input_ids).astype(mx.int32)
        mask = mx.array(attention_mask).astype(mx.int32)
        if self.config.get("model_type") in ("bert", "xlm-roberta"):
            tt = None if token_type_ids is None else mx.array(token_type_ids).astype(mx.int32)
            hidden = self.trunk(ids, mask, tt)
        else:
            hidden = self.trunk(ids, mask)
        outs = (hidden.astype(mx.float32), *self.head(hidden, ids, mask))
        mx.eval(*outs)
        return outs

    def encode(self, texts: list[str], prompt_name: str | None = None, max_length: int | None = None):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.folder)
        tok.padding_side = self.head.contract.padding_side
        # as sentence-transformers: an unknown name is an error, no name means default_prompt_name
        name = prompt_name if prompt_name is not None else self.head.contract.default_prompt_name
        if name is not None and name not in self.prompts:
            raise ValueError(f"prompt {name!r} is not one of this model's prompts: {', '.join(self.prompts) or 'none'}")
        prompt = self.prompts[name] if name is not None else ""
        enc = tok([prompt + t for t in texts], padding=True, truncation=True, max_length=max_length,
                  return_tensors="np")
        return self(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))[1]


def load_model(folder: Path) -> Embedder:
    """An embedder from one variant folder, as an MLX user loads it (nothing read outside the folder)."""
    import mlx.core as mx
    import mlx.nn as nn

    from .head import Head

    folder = Path(folder)
    config = read_json(folder / "config.json")
    trunk = build_trunk(config)
    weights = mx.load(str(folder / WEIGHTS))
    if "quantization" in config:
        q = config["quantization"]
        nn.quantize(trunk, group_size=q["group_size"], bits=q["bits"], class_predicate=stored_quantized(weights))
    trunk.load_weights(list(weights.items()), strict=True)
    if any(v.dtype == mx.float16 for k, v in weights.items() if not k.endswith((".scales", ".biases"))):
        trunk.set_dtype(mx.float16)
    mx.eval(trunk.parameters())
    return Embedder(folder, trunk, Head.from_folder(folder, int(config["hidden_size"])), config)


def load_runner(artifact: Path, variant: str) -> Runner:
    model = load_model(artifact / variant)
    # MLX's CPU backend is slow: memoize per input so extra_metrics reuses the validation run.
    memo: dict[bytes, tuple[np.ndarray, ...]] = {}

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        key = b"".join(feeds[k].astype(np.int64).tobytes() + str(feeds[k].shape).encode() for k in sorted(feeds))
        if key not in memo:
            outs = model(feeds["input_ids"].astype(np.int32), feeds["attention_mask"].astype(np.int32),
                         feeds["token_type_ids"].astype(np.int32) if "token_type_ids" in feeds else None)
            memo[key] = tuple(np.array(o) for o in outs)
        return memo[key]

    return run


# --- quantized variants: format error and runtime error apart ---------------------------------------------


def _max_abs(name: str, mask: np.ndarray, ref: np.ndarray, got: np.ndarray) -> float:
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    sel = real_tokens(name, mask)
    return float((diff[sel] if sel is not None else diff).max(initial=0.0))


def extra_metrics(artifact: Path, variant: str, run: Runner, golden) -> dict[str, Any]:
    """Quantized variants: the runtime's error (MLX vs PyTorch running the same dequantized weights, every
    output on real tokens, gated at DEQUANT_RUNTIME_MAX_ABS) apart from the format's (dequantized PyTorch
    vs fp32 PyTorch)."""
    if variant not in BITS:
        return {}
    names = golden.meta["outputs"]
    with np.load(artifact / reference_path(variant)) as z:
        deq = {k: z[k] for k in z.files}
    runtime = {n: 0.0 for n in names}
    fmt = {n: 0.0 for n in names}
    cos: list[float] = []
    for case in golden.cases:
        cname = case["name"]
        feeds = golden.inputs(cname)
        outs = run(feeds)
        for n, got in zip(names, outs):
            ref = deq[f"{cname}/{n}"]
            runtime[n] = max(runtime[n], _max_abs(n, feeds["attention_mask"], ref, got))
            fmt[n] = max(fmt[n], _max_abs(n, feeds["attention_mask"], golden.output(cname, n), ref))
        cos += cosine_rows(golden.output(cname, "sentence_embedding"), deq[f"{cname}/sentence_embedding"]).tolist()
    result: dict[str, Any] = {
        "dequantized_reference": {
            "runtime_vs_dequantized_pytorch": {**{f"{n}_max_abs": v for n, v in runtime.items()},
                                               "tokens_max_abs": runtime["last_hidden_state"],
                                               "pooled_max_abs": runtime["sentence_embedding"],
                                               "gate_max_abs": DEQUANT_RUNTIME_MAX_ABS},
            "format_vs_fp32_pytorch": {"cos_min": float(np.min(cos)), "cos_mean": float(np.mean(cos)),
                                       **{f"{n}_max_abs": v for n, v in fmt.items()},
                                       "tokens_max_abs": fmt["last_hidden_state"]},
        },
        "failures": [],
    }
    worst_name = max(runtime, key=runtime.get)
    if runtime[worst_name] > DEQUANT_RUNTIME_MAX_ABS:
        result["failures"].append(
            f"MLX differs from PyTorch running the same dequantized weights by {runtime[worst_name]:.3g} on "
            f"{worst_name} > {DEQUANT_RUNTIME_MAX_ABS:g}: a runtime error, not quantization error")
    return result


class MLXEmbedderSession(MLXSession):
    def runner(self, variant: str) -> Runner:
        return load_runner(self.root, variant)

    def extra_metrics(self, variant: str, runner: Runner, golden) -> dict[str, Any]:
        return extra_metrics(self.root, variant, runner, golden)


@register
class MLXDecoderEmbedder(MLXConverter):
    """Qwen3-Embedding, EmbeddingGemma -> one MLX folder per variant: the trunk's safetensors plus the
    sentence-transformers modules (Pooling, Dense, Normalize, prompts) the head is computed from."""

    family = DECODER_EMBEDDER_FAMILY.name
    variants = VARIANTS
    defaults = DEFAULT_VARIANTS
    Options = NoOptions

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step)

    def open(self, artifact: Path) -> MLXEmbedderSession:
        return MLXEmbedderSession(artifact)


@register
class MLXMultiVector(MLXDecoderEmbedder):
    """BGE-M3 -> the same folders, with sparse_linear/colbert_linear as safetensors next to the weights;
    the runner returns dense, sparse and ColBERT outputs."""

    family = MULTI_VECTOR_FAMILY.name
