"""What the MLX encoder and decoder converters share: the variant table, the quantization rules,
how a folder's weights are saved, and the runtime's versions and notes.

Every variant is one folder, `<variant>/model.safetensors` + config.json: f32, f16, and q8/q4 with
group-wise affine weights (`mlx.nn.quantize`; `quantization` in config.json, quantized layers carry
`.scales`/`.biases`). Scales and biases stay float32 (mlx-lm stores them in float16 by default:
float32 keeps the format's error to the quantization itself).

No toolchain at module level: mlx (and the forward passes in `models/`, which import it) is
imported inside the functions that use it.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...dequantized import reference_path
from ...errors import ModelportError
from ...fsutil import read_json, write_json
from ..registry import ArtifactSession, Converter, Variant

BITS = {"q8": 8, "q4": 4}
WEIGHTS = "model.safetensors"
# Packages needed to convert (torch: the checkpoint and the dequantized-weights references) and
# to run a folder (the validator needs mlx only).
REQUIRES = ("torch", "transformers", "mlx")
RUNTIME_REQUIRES = ("mlx",)

Step = Callable[[str], Any]


def variant_table(f16: str, quantized: str) -> dict[str, Variant]:
    """The four MLX folders (f32 first: the others derive from it). `f16` describes the float16
    variant, `quantized` what q8/q4 quantize; precisions are keys of the family's threshold table."""
    return {
        v.name: v
        for v in (
            Variant("f32", f"f32/{WEIGHTS}", "fp32", "float32 weights and compute"),
            Variant("f16", f"f16/{WEIGHTS}", "fp16", f16),
            Variant("q8", f"q8/{WEIGHTS}", "w8", f"8-bit group-wise affine weights ({quantized})"),
            Variant("q4", f"q4/{WEIGHTS}", "w4", f"4-bit group-wise affine weights ({quantized})"),
        )
    }


def check_group_size(source, recipe, variants: list[str]) -> None:
    """q8/q4 need a group size that divides the layer widths (the recipe found one, or none)."""
    if any(v in BITS for v in variants) and not recipe.quant_group_size:
        raise ModelportError(f"{source.name}: no group size divides the layer widths; write f32/f16 only")


# --- quantization predicates (nn.quantize's class_predicate) --------------------------------------


def encoder_quantizable(path: str, module: Any) -> bool:
    """Encoders: Linear layers and the word-embedding table: where the bytes are."""
    import mlx.nn as nn

    return isinstance(module, nn.Linear) or path.endswith("word_embeddings")


def lm_quantizable(group_size: int) -> Callable[[str, Any], bool]:
    """Decoders, mlx-lm's rule (utils.quantize_model): every layer that can be quantized and whose input
    width is a multiple of the group size: Linear layers, the embedding table, an untied lm_head."""

    def predicate(path: str, layer: Any) -> bool:
        return hasattr(layer, "to_quantized") and layer.weight.shape[-1] % group_size == 0

    return predicate


def stored_quantized(weights: dict[str, Any], quantization: dict[str, Any] | None = None) -> Callable[[str, Any], Any]:
    """Loading a folder: quantize exactly the layers whose `.scales` the file holds (as mlx-lm does), each
    with its own {"group_size", "bits"} where config.json's `quantization` names the layer (mlx-lm's
    per-layer form, which the searched q4mix folders use), else with the top-level ones."""
    per_layer = {k: v for k, v in (quantization or {}).items() if isinstance(v, dict)}

    def predicate(path: str, module: Any) -> Any:
        if f"{path}.scales" not in weights:
            return False
        return dict(per_layer[path]) if path in per_layer else True

    return predicate


# --- weights --------------------------------------------------------------------------------------


def save(model, path: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(path), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})


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


# --- runtime --------------------------------------------------------------------------------------


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import version

    import mlx.core as mx

    return {"mlx": version("mlx"), "device": str(mx.default_device())}


def runtime_notes(artifact: Path) -> list[str]:
    if platform.system() == "Darwin":
        return []
    return ["MLX CPU backend (mlx[cpu]) on Linux: numerics validated; Apple GPU (Metal) kernels not exercised"]


class MLXSession(ArtifactSession):
    """An MLX artifact opened for the validator; the family modules add the runner."""

    def notes(self) -> list[str]:
        return runtime_notes(self.root)


class MLXConverter(Converter):
    """What both MLX converters declare alike (not registered itself)."""

    target = "mlx"
    requires = REQUIRES
    runtime_requires = RUNTIME_REQUIRES

    def runtime_versions(self) -> dict[str, str]:
        return runtime_versions()

    def weight_tensors(self, artifact: Path, variant: str):
        from .weights import weight_tensors

        return weight_tensors(artifact, self.variants[variant].path)


# --- the sentence-transformers head files every embedder folder carries ----------------------------
HEAD_FILES = {"sparse": "sparse_linear.safetensors", "colbert": "colbert_linear.safetensors"}


def ship_head_files(source, recipe, folder: Path) -> dict[str, Any]:
    """Every sentence-transformers module folder modules.json names (Pooling, Dense with weights,
    Normalize, empty folders included), config_sentence_transformers.json (prompts; plus `truncate_dim`
    when the conversion truncates), and BGE-M3's heads as safetensors. Runs after
    `layout.copy_model_files` (which copies the module files too). Returns what was written."""
    import shutil

    from safetensors.numpy import save_file

    from ...embedding import head_weights

    folder.mkdir(parents=True, exist_ok=True)
    shipped: dict[str, Any] = {"modules": []}
    modules = read_json(source.path / "modules.json") if (source.path / "modules.json").is_file() else []
    for module in modules:  # none: copy_model_files wrote the architecture-default pooling config
        rel = str(module.get("path", ""))
        if rel and (source.path / rel).is_dir():
            shutil.copytree(source.path / rel, folder / rel, dirs_exist_ok=True)
            shipped["modules"].append(rel)
    st_cfg_path = source.path / "config_sentence_transformers.json"
    st_cfg = read_json(st_cfg_path) if st_cfg_path.is_file() else {}
    if recipe.head.truncate_dim:
        st_cfg["truncate_dim"] = recipe.head.truncate_dim
    if st_cfg:
        write_json(folder / "config_sentence_transformers.json", st_cfg)
        shipped["config_sentence_transformers"] = True
    if recipe.heads is not None:
        weights = head_weights(source.path, recipe.heads)
        for prefix, name in HEAD_FILES.items():
            save_file({"weight": np.ascontiguousarray(weights[f"{prefix}.weight"]),
                       "bias": np.ascontiguousarray(weights[f"{prefix}.bias"])}, str(folder / name),
                      metadata={"format": "pt"})
        shipped["heads"] = {
            "sparse": HEAD_FILES["sparse"], "colbert": HEAD_FILES["colbert"],
            "read_from": [recipe.heads.sparse_file, recipe.heads.colbert_file],
            "loader": "safetensors" if recipe.heads.sparse_file.endswith(".safetensors")
            else "torch.load(weights_only=True)"}
    return shipped


# --- writing embedder folders (sentence encoders, decoder embedders, multi-vector encoders) ---------------


def checkpoint_arrays(source) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by name, as float32 NumPy arrays.

    Read through transformers (not the raw files) so prefixes, tied weights and the pickle path
    (--allow-pickle) resolve exactly as in the PyTorch reference.
    """
    from ...torch_model import load_hf_model

    state = load_hf_model(source).state_dict()
    return {k: v.detach().float().numpy() for k, v in state.items()}


def write_variant_folders(source, recipe, variants: list[str], out: Path, step: Step, descriptions: dict[str, str],
                          build: Callable[[dict[str, Any]], Any], to_mlx_weights: Callable[[dict], dict],
                          quantizable: Callable[[str, Any], bool]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One loadable folder per variant (f32, f16, q8, q4) of an embedder's trunk `build(config)`, with the
    checkpoint's files and sentence-transformers modules beside it, and per quantized variant the golden
    PyTorch computes with its dequantized weights. Returns (per-variant manifest extras, the head files
    shipped: `ship_head_files`)."""
    import mlx.core as mx
    import mlx.nn as nn

    from ...layout import copy_model_files
    from ...reference import Golden, outputs_with_weights

    check_group_size(source, recipe, variants)
    config = read_json(source.path / "config.json")
    step("load checkpoint weights")
    weights = to_mlx_weights({k: mx.array(v) for k, v in checkpoint_arrays(source).items()})
    golden = Golden.load(out) if any(v in BITS for v in variants) else None
    extras: dict[str, dict[str, Any]] = {}
    shipped: dict[str, Any] = {}
    for name in variants:
        step(f"write {name} ({descriptions[name]})")
        model = build(config)
        try:
            model.load_weights(list(weights.items()), strict=True)
        except ValueError as e:
            raise ModelportError(f"checkpoint tensors do not fit the MLX {config['model_type']} model: {e}") from e
        cfg = dict(config)
        if name == "f16":
            model.set_dtype(mx.float16)
            cfg["torch_dtype"] = cfg["dtype"] = "float16"
        elif name in BITS:
            nn.quantize(model, group_size=recipe.quant_group_size, bits=BITS[name], class_predicate=quantizable)
            cfg["quantization"] = {"group_size": recipe.quant_group_size, "bits": BITS[name]}
        mx.eval(model.parameters())
        folder = out / name
        copy_model_files(source, recipe, folder)
        shipped = ship_head_files(source, recipe, folder)  # Dense folders, prompts, truncate_dim, heads: what Head reads
        write_json(folder / "config.json", cfg)
        save(model, folder / WEIGHTS)
        if name in BITS:
            step(f"reference: PyTorch with {name}'s dequantized weights")
            arrays = outputs_with_weights(source, recipe, golden, dequantized_weights(model))
            with open(out / reference_path(name), "wb") as f:
                np.savez_compressed(f, **arrays)
            extras[name] = {"dequantized_reference": reference_path(name), "quantization": cfg["quantization"]}
    return extras, shipped

