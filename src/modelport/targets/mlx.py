"""MLX target: the checkpoint's weights as MLX safetensors, one loadable folder per variant.

    <out>/f32/  model.safetensors (float32)  config.json  tokenizer.json ...  modules.json 1_Pooling/
    <out>/f16/  model.safetensors (float16 weights; MLX computes in float16)
    <out>/q8/   8-bit group-wise affine weights + config.json "quantization": {"group_size", "bits": 8}
    <out>/q4/   4-bit, same layout
    <out>/reference/dequant_q8.npz, dequant_q4.npz   PyTorch run with the dequantized weights

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

Decoder LLMs (Llama, Qwen2, Qwen3, SmolLM3: `convert_lm` / `load_lm_runner`) get mlx-lm folders:

    <out>/f32|f16|q8|q4/  config.json (+ top-level rope_theta/rope_scaling, + "quantization")
                          model.safetensors (mlx-lm names, tied tables stored once)
                          tokenizer.json tokenizer_config.json (chat template inline too)
                          chat_template.jinja generation_config.json
    <out>/reference/lm_golden_q8|q4.npz   PyTorch on the variant's dequantized weights (lm.py)

Quantization follows mlx-lm's own rule (every layer with `to_quantized` whose input width is a
multiple of the group size: all Linear layers, the embedding table and an untied lm_head), so the
folder is what `mlx_lm.convert -q` would write, except that scales stay float32 as above.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ModelportError
from ..fsutil import read_json, write_json
from ..layout import copy_model_files
from ..metrics import case_diff
from ..recipes import ARCHITECTURES, read_pooling
from ..thresholds import DEQUANT_RUNTIME_MAX_ABS
from . import Runner, Variant

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("f32", "f32/model.safetensors", "fp32", "float32 weights and compute"),
        Variant("f16", "f16/model.safetensors", "fp16", "float16 weights and compute"),
        Variant("q8", "q8/model.safetensors", "w8", "8-bit group-wise affine weights (Linear + word embeddings)"),
        Variant("q4", "q4/model.safetensors", "w4", "4-bit group-wise affine weights (Linear + word embeddings)"),
    )
}
DEFAULT_VARIANTS = tuple(VARIANTS)
# Decoder LLMs: the same four folders; precisions are keys of thresholds.LM_THRESHOLDS (w8/w4 are
# gated against PyTorch running the variant's own dequantized weights).
LM_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("f32", "f32/model.safetensors", "fp32", "float32 weights and compute"),
        Variant("f16", "f16/model.safetensors", "fp16", "float16 weights, activations and KV cache"),
        Variant("q8", "q8/model.safetensors", "w8", "8-bit group-wise affine weights (Linear, embedding, lm_head)"),
        Variant("q4", "q4/model.safetensors", "w4", "4-bit group-wise affine weights (Linear, embedding, lm_head)"),
    )
}
LM_DEFAULT_VARIANTS = tuple(LM_VARIANTS)
BITS = {"q8": 8, "q4": 4}
WEIGHTS = "model.safetensors"

Step = Callable[[str], Any]


def _dequant_path(variant: str) -> str:
    return f"reference/dequant_{variant}.npz"


def _quantizable(path: str, module: Any) -> bool:
    """Linear layers and the word-embedding table: where the bytes are."""
    import mlx.nn as nn

    return isinstance(module, nn.Linear) or path.endswith("word_embeddings")


def _build_model(config: dict[str, Any]):
    from ..mlx_models import family

    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ModelportError(f"unsupported architecture for MLX: model_type={model_type!r}")
    return family(model_type).Model(config, position_offset=arch.position_offset)


def _checkpoint_arrays(source) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by name, as float32 NumPy arrays.

    Read through transformers (not the raw files) so prefixes, tied weights and the pickle path
    (--allow-pickle) resolve exactly as in the PyTorch reference.
    """
    from ..torch_model import load_hf_model

    state = load_hf_model(source).state_dict()
    return {k: v.detach().float().numpy() for k, v in state.items()}


def _save(model, path: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(path), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})


def convert(source, recipe, variants: list[str], out: Path, step: Step) -> dict[str, Any]:
    """Write each requested variant folder, and the dequantized-weights reference per quantized one."""
    import mlx.core as mx
    import mlx.nn as nn

    from ..mlx_models import family
    from ..reference import Golden, outputs_with_weights

    if any(v in BITS for v in variants) and not recipe.quant_group_size:
        raise ModelportError(f"{source.name}: no group size divides the layer widths; write f32/f16 only")
    step("load checkpoint weights")
    config = read_json(source.path / "config.json")
    mod = family(config["model_type"])
    weights = mod.checkpoint_weights({k: mx.array(v) for k, v in _checkpoint_arrays(source).items()})
    golden = Golden.load(out) if any(v in BITS for v in variants) else None
    info: dict[str, Any] = {}
    for name in variants:
        step(f"write {name} ({VARIANTS[name].description})")
        model = _build_model(config)
        try:
            model.load_weights(list(weights.items()), strict=True)
        except ValueError as e:
            raise ModelportError(f"checkpoint tensors do not fit the MLX {config['model_type']} model: {e}") from e
        cfg = dict(config)
        if name == "f16":
            model.set_dtype(mx.float16)
            cfg["torch_dtype"] = cfg["dtype"] = "float16"
        elif name in BITS:
            nn.quantize(model, group_size=recipe.quant_group_size, bits=BITS[name], class_predicate=_quantizable)
            cfg["quantization"] = {"group_size": recipe.quant_group_size, "bits": BITS[name]}
        mx.eval(model.parameters())
        folder = out / name
        copy_model_files(source, recipe, folder)
        write_json(folder / "config.json", cfg)
        _save(model, folder / WEIGHTS)
        info[name] = {"file": VARIANTS[name].path, "precision": VARIANTS[name].precision,
                      "description": VARIANTS[name].description}
        if name in BITS:
            step(f"reference: PyTorch with {name}'s dequantized weights")
            arrays = outputs_with_weights(source, recipe, golden, dequantized_weights(model))
            with open(out / _dequant_path(name), "wb") as f:
                np.savez_compressed(f, **arrays)
            info[name]["dequantized_reference"] = _dequant_path(name)
            info[name]["quantization"] = cfg["quantization"]
    return {"name": "mlx", "layout": "mlx (config.json + model.safetensors per variant)", "variants": info}


def dequantized_weights(model) -> dict[str, np.ndarray]:
    """Every quantized layer's weight as the float32 matrix the format really stores."""
    import mlx.core as mx
    import mlx.nn as nn

    out = {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            w = mx.dequantize(module.weight, module.scales, module.biases, group_size=module.group_size,
                              bits=module.bits)
            out[f"{path}.weight"] = np.array(w.astype(mx.float32))
    if not out:
        raise ModelportError("no quantized layers found after quantization")
    return out


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
                    class_predicate=lambda p, m: f"{p}.scales" in weights)
    model.load_weights(list(weights.items()), strict=True)
    if any(v.dtype == mx.float16 for k, v in weights.items() if not k.endswith((".scales", ".biases"))):
        model.set_dtype(mx.float16)
    mx.eval(model.parameters())
    return model


def load_runner(artifact: Path, variant: str) -> Runner:
    import mlx.core as mx

    folder = artifact / variant
    model = load_model(folder)
    # Pool the way the shipped folder says (this also proves the pooling config was carried over).
    pooled_cfg = read_pooling(folder)
    if pooled_cfg is None:
        raise ModelportError(f"{folder} has no sentence-transformers pooling config")
    pooling, normalize = pooled_cfg
    # MLX's CPU backend uses reference BLAS (~1 GFLOP/s): results are memoized per input so the
    # dequantized-weights comparison (extra_metrics) reuses the validation run instead of redoing it.
    memo: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        key = b"".join(feeds[k].astype(np.int64).tobytes() + str(feeds[k].shape).encode() for k in sorted(feeds))
        if key not in memo:
            memo[key] = forward(feeds)
        return memo[key]

    def forward(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        ids = mx.array(feeds["input_ids"].astype(np.int32))
        mask = mx.array(feeds["attention_mask"].astype(np.int32))
        tt = mx.array(feeds["token_type_ids"].astype(np.int32)) if "token_type_ids" in feeds else None
        hidden = model(ids, mask, tt).astype(mx.float32)
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.astype(mx.float32)[..., None]
            pooled = (hidden * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)
        if normalize:
            pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        mx.eval(hidden, pooled)
        return np.array(hidden), np.array(pooled)

    return run


def extra_metrics(artifact: Path, variant: str, run: Runner, golden) -> dict[str, Any]:
    """For quantized variants: format error and runtime error, measured apart.

    format:  PyTorch with the dequantized weights vs PyTorch fp32 (what 8/4-bit costs by itself)
    runtime: MLX vs PyTorch with the same dequantized weights (must agree to fp32 precision;
             gated at DEQUANT_RUNTIME_MAX_ABS)
    """
    if variant not in BITS:
        return {}
    with np.load(artifact / _dequant_path(variant)) as z:
        deq = {k: z[k] for k in z.files}
    runtime, fmt = [], []
    for case in golden.cases:
        name = case["name"]
        feeds = golden.inputs(name)
        hidden, pooled = run(feeds)
        ref_h, ref_p = deq[f"{name}/last_hidden_state"], deq[f"{name}/sentence_embedding"]
        runtime.append(case_diff(name, feeds["attention_mask"], ref_h, hidden, ref_p, pooled))
        fmt.append(case_diff(name, feeds["attention_mask"], golden.output(name, "last_hidden_state"), ref_h,
                             golden.output(name, "sentence_embedding"), ref_p))
    rt_tok = max(d.tokens_max_abs for d in runtime)
    rt_pool = max(d.pooled_max_abs for d in runtime)
    cos = [c for d in fmt for c in d.cosines]
    result: dict[str, Any] = {
        "dequantized_reference": {
            "runtime_vs_dequantized_pytorch": {"tokens_max_abs": rt_tok, "pooled_max_abs": rt_pool,
                                               "gate_max_abs": DEQUANT_RUNTIME_MAX_ABS},
            "format_vs_fp32_pytorch": {"cos_min": float(np.min(cos)), "cos_mean": float(np.mean(cos)),
                                       "tokens_max_abs": max(d.tokens_max_abs for d in fmt)},
        },
        "failures": [],
    }
    worst = max(rt_tok, rt_pool)
    if worst > DEQUANT_RUNTIME_MAX_ABS:
        result["failures"].append(
            f"MLX differs from PyTorch running the same dequantized weights by {worst:.3g} > "
            f"{DEQUANT_RUNTIME_MAX_ABS:g}: a runtime error, not quantization error")
    return result


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import version

    import mlx.core as mx

    return {"mlx": version("mlx"), "device": str(mx.default_device())}


def runtime_notes(artifact: Path) -> list[str]:
    if platform.system() == "Darwin":
        return []
    return ["MLX CPU backend (mlx[cpu]) on Linux: numerics validated; Apple GPU (Metal) kernels not exercised"]


# --- decoder LLMs --------------------------------------------------------------------------------

# Files a decoder folder carries next to its weights (those the checkpoint has). mlx-lm reads the
# tokenizer through transformers, which takes the chat template from chat_template.jinja; it is
# also written into tokenizer_config.json for loaders that only read that file (swift-transformers,
# transformers.js).
LM_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
            "chat_template.jinja", "chat_template.json", "generation_config.json")


def _lm_quantizable(group_size: int) -> Callable[[str, Any], bool]:
    """mlx-lm's rule (utils.quantize_model): every layer that can be quantized and whose input width
    is a multiple of the group size: Linear layers, the embedding table, an untied lm_head."""

    def predicate(path: str, module: Any) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0

    return predicate


def _load_causal_lm(source):
    """The checkpoint as transformers loads it (fp32): the weights to convert, and the rotary
    frequencies PyTorch really uses (checked against what the MLX config will say)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=torch.float32, trust_remote_code=source.trust_remote_code,
            use_safetensors=not any(p.suffix != ".safetensors" for p in source.weight_files))
    except (OSError, ValueError) as e:
        raise ModelportError(f"transformers could not load {source.path}: {str(e).splitlines()[0]}") from e
    return model.eval()


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


def _copy_lm_files(source_dir: Path, folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if not (source_dir / "tokenizer.json").is_file():
        raise ModelportError(f"no tokenizer.json in {source_dir}: on-device clients need the fast tokenizer file")
    for name in LM_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, folder / name)
    template = folder / "chat_template.jinja"
    tok_cfg = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if template.is_file() and not tok_cfg.get("chat_template"):
        tok_cfg["chat_template"] = template.read_text(encoding="utf-8")
        write_json(folder / "tokenizer_config.json", tok_cfg)


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


def convert_lm(source, recipe, variants: list[str], out: Path, step: Step) -> dict[str, Any]:
    """Write each decoder variant as an mlx-lm folder; for q8/q4 also the dequantized-weights golden."""
    import mlx.core as mx
    import mlx.nn as nn

    from .. import lm
    from ..mlx_models import llama

    group = recipe.quant_group_size
    if any(v in BITS for v in variants) and not group:
        raise ModelportError(f"{source.name}: no group size divides the layer widths; write f32/f16 only")
    step("load checkpoint weights (causal LM)")
    torch_model = _load_causal_lm(source)
    config, notes = lm_config(read_json(source.path / "config.json"), dict(torch_model.config.rope_parameters))
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
    info: dict[str, Any] = {}
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
        cfg = dict(config)
        if name == "f16":
            model.set_dtype(mx.float16)
            cfg["torch_dtype"] = cfg["dtype"] = "float16"
        elif name in BITS:
            nn.quantize(model, group_size=group, bits=BITS[name], class_predicate=_lm_quantizable(group))
            # mlx-lm writes both keys (`quantization_config` for Hugging Face tooling).
            cfg["quantization"] = cfg["quantization_config"] = {"group_size": group, "bits": BITS[name],
                                                                "mode": "affine"}
        mx.eval(model.parameters())
        folder = out / name
        _copy_lm_files(source.path, folder)
        write_json(folder / "config.json", cfg)
        _save(model, folder / WEIGHTS)
        info[name] = {"file": LM_VARIANTS[name].path, "precision": LM_VARIANTS[name].precision,
                      "description": LM_VARIANTS[name].description}
        if name in BITS:
            step(f"reference: PyTorch with {name}'s dequantized weights")
            golden = lm.compute_golden(source.path, state_dict=lm_dequantized_weights(model))
            golden.save(out, lm.golden_name(name))
            info[name]["dequantized_reference"] = f"{lm.REFERENCE_DIR}/{lm.golden_name(name)}.npz"
            info[name]["quantization"] = cfg["quantization"]
    return {"name": "mlx", "layout": "mlx-lm (config.json + model.safetensors + tokenizer per variant)",
            "variants": info, "notes": notes,
            "rope": {"rope_theta": args.rope.theta, "rope_type": args.rope.rope_type,
                     "nope_layers": [i for i, r in enumerate(args.rope_layers) if not r]}}


def load_lm_model(folder: Path):
    """A decoder from a variant folder, the way mlx-lm loads one: build from config.json, quantize
    the layers whose `.scales` the file holds, load every tensor strictly."""
    import mlx.core as mx
    import mlx.nn as nn

    from ..mlx_models import llama

    config = read_json(folder / "config.json")
    model = llama.Model(config)
    weights = mx.load(str(folder / WEIGHTS))
    if "quantization" in config:
        q = config["quantization"]
        nn.quantize(model, group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"),
                    class_predicate=lambda p, m: f"{p}.scales" in weights)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


class MLXLMRunner:
    """lm.LMRunner over the MLX decoder: prefill, then one cached token per step."""

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
