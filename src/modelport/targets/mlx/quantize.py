"""MLX sentence encoders: the searched variant `q4mix` and the search that chooses its plan.

MLX's affine format stores, per group of `group_size` consecutive weights along a layer's last axis,
a scale and a bias, and the weight is `scale * q + bias` with q an unsigned `bits`-bit code packed
into uint32 words, low bits first (mx.quantize's layout; `pack` reproduces it bit for bit, checked in
tests/test_quant_mlx.py). `mx.quantize` itself only rounds to nearest from the group's min/max. Here
the codes and the group parameters come from `quant.numerics.quantize_matrix` (GPTQ with calibration
Hessians, least-squares scales), and the bias is `-zero * scale`, so the folder is an ordinary MLX
folder: config.json `quantization` = {"group_size", "bits", "<layer path>": {"group_size", "bits"}} in
mlx-lm's per-layer form, and `encoder.load_model` / mlx-lm read it as they read any quantized folder.

Scales and biases: the q8/q4 folders store them float32 (common.py: the format's error is then the
quantization alone). A plan says which (`options.scale_dtype`); the search writes float16 plans,
because float32 parameters cost 64 bits per group = 1.0 bit per weight at group 64, which alone
takes a 4-bit layer to 5.0 bits per weight (the issue's MLX goal is 4.5); rounding scale and bias to
float16 moves a weight by at most about (2^bits - 1) * 2^-11 of a quantization step (0.7 % of a step at
4 bits, 12 % at 8), and the dev-set figures include it. The runtime multiplies in float32 for Linear
layers (quantized_matmul upcasts the float16 parameters), but QuantizedEmbedding dequantizes the
looked-up rows in the parameters' dtype: `runtime_dequantized` mirrors both, so the
dequantized-weights reference is what MLX really computes (the runtime gate, DEQUANT_RUNTIME_MAX_ABS,
stays at float32 precision).

Statistics: input Hessians (sum of x x^T over the layer's inputs) per Linear layer, from PyTorch
(forward hooks on the checkpoint, one text at a time, one thread: the same bytes on every rebuild)
over quant.texts' calibration texts. The search ranks on the dev texts (quant.search.dev_quality:
cosine of the sentence embedding vs fp32 PyTorch, and top-5 retrieval, as every target's search); the validator
judges the written variant on the validation set, which neither saw.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ...dequantized import reference_path
from ...errors import ModelportError
from ...fsutil import read_json, write_json
from ...quant.numerics import GroupQuant, quantize_matrix
from ...quant.plan import LayerQuant, Plan
from ...quant.search import Candidate, Quality, SearchResult, choose, dev_quality, pareto, sensitivity
from ...quant.texts import load as load_texts
from .common import WEIGHTS

SEARCHED = "q4mix"
EMBEDDING = "embeddings.word_embeddings"
SCALE_DTYPES = {"float16": np.float16, "float32": np.float32}
PACKABLE_BITS = (2, 3, 4, 5, 6, 8)  # mx.quantize's affine widths
# The encoder module's model builder and folder loader, passed in (encoder.py imports this module).
Build = Callable[[dict[str, Any]], Any]
Load = Callable[[Path], Any]


# --- the stored format ----------------------------------------------------------------------------


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [rows, cols] (unsigned, < 2^bits) -> uint32 [rows, cols * bits / 32]: one little-endian bit
    stream per row, each code's low bit first, as mx.quantize packs every width (2/4/8 bits fill whole
    words; 3/5/6-bit codes straddle them)."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"{bits}-bit codes: MLX's affine widths are {PACKABLE_BITS}")
    rows, cols = codes.shape
    if (cols * bits) % 32:
        raise ValueError(f"{cols} columns of {bits}-bit codes do not fill whole uint32 words")
    c = codes.astype(np.uint32)
    stream = ((c[..., None] >> np.arange(bits, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8).reshape(rows, -1)
    return np.packbits(stream, axis=-1, bitorder="little").view("<u4").astype(np.uint32)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """pack's inverse: uint32 [..., words] -> codes [..., words * 32 / bits] (uint32)."""
    lead = packed.shape[:-1]
    stream = np.unpackbits(np.ascontiguousarray(packed, dtype="<u4").view(np.uint8), axis=-1, bitorder="little")
    stream = stream.reshape(*lead, -1, bits).astype(np.uint32)
    return (stream << np.arange(bits, dtype=np.uint32)).sum(-1, dtype=np.uint32)


@dataclass(frozen=True)
class Stored:
    """One quantized layer as the folder stores it: `<layer>.weight` (packed), `.scales`, `.biases`."""

    weight: np.ndarray  # uint32
    scales: np.ndarray  # float16 | float32
    biases: np.ndarray
    bits: int
    group: int

    def nbits(self) -> int:
        return 8 * (self.weight.nbytes + self.scales.nbytes + self.biases.nbytes)

    def dequantize(self, embedding: bool) -> np.ndarray:
        """float32, as MLX computes with it: Linear layers in float32 whatever the parameters' dtype;
        an embedding's rows in the parameters' dtype (QuantizedEmbedding calls mx.dequantize on them)."""
        q = unpack(self.weight, self.bits).astype(np.float32)
        s = np.repeat(self.scales.astype(np.float32), self.group, axis=-1)
        b = np.repeat(self.biases.astype(np.float32), self.group, axis=-1)
        w = q * s + b
        return w.astype(self.scales.dtype).astype(np.float32) if embedding else w


def to_stored(gq: GroupQuant, scale_dtype: str) -> Stored:
    """numerics' (code - zero) * scale as MLX's scale * code + bias, bias = -zero * scale."""
    dt = SCALE_DTYPES[scale_dtype]
    scales = gq.scales.astype(dt)
    biases = (-gq.zeros.astype(np.float32) * scales.astype(np.float32)).astype(dt)
    return Stored(pack(gq.codes, gq.bits), scales, biases, gq.bits, gq.group)


def mlx_rtn(w: np.ndarray, bits: int, group: int, scale_dtype: str = "float32") -> Stored:
    """mx.quantize's own round-to-nearest (today's q8/q4 folders): the naive baseline rows."""
    import mlx.core as mx

    q, s, b = mx.quantize(mx.array(w), group_size=group, bits=bits)
    dt = SCALE_DTYPES[scale_dtype]
    return Stored(np.array(q), np.array(s).astype(dt), np.array(b).astype(dt), bits, group)


# --- plans ------------------------------------------------------------------------------------------


def load_plan(quant_plan: str | None, variant: str = SEARCHED) -> Plan:
    """The plan for `variant`: a plan file, or the folder quantize-search wrote (plan-<variant>.json)."""
    from ...quant.plan import plan_for

    return plan_for(quant_plan, variant, "mlx")


def check_plan(plan: Plan, shapes: dict[str, tuple[int, int]]) -> None:
    """One line for a plan this model or MLX's format cannot take (before any work)."""
    dtype = plan.options.get("scale_dtype", "float32")
    if dtype not in SCALE_DTYPES:
        raise ModelportError(f"quantization plan: scale_dtype {dtype!r} is not one of {', '.join(SCALE_DTYPES)}")
    unknown = sorted(set(plan.layers) - set(shapes))
    if unknown:
        raise ModelportError(f"quantization plan names layers this model lacks: {', '.join(unknown[:3])}")
    if EMBEDDING in plan.layers:
        raise ModelportError(f"quantization plan: {EMBEDDING} is set by the plan's `embedding`, not in `layers`")
    specs = {name: plan.layer(name) for name in shapes if name != EMBEDDING}
    if plan.embedding is not None and EMBEDDING in shapes:
        specs[EMBEDDING] = plan.embedding
    for name, spec in specs.items():
        if spec.kind == "float":
            if spec.bits != 32:
                raise ModelportError(f"quantization plan: {name} as float{spec.bits}; MLX q4mix keeps float layers float32")
            continue
        if spec.kind != "affine" or spec.bits not in PACKABLE_BITS:
            raise ModelportError(f"quantization plan: {name} is {spec.label()}; MLX q4mix writes affine "
                                 f"{'/'.join(map(str, PACKABLE_BITS))}-bit layers")
        if shapes[name][1] % spec.group:
            raise ModelportError(f"quantization plan: group {spec.group} does not divide {name}'s width {shapes[name][1]}")


def plan_specs(plan: Plan, shapes: dict[str, tuple[int, int]]) -> dict[str, LayerQuant]:
    """Every layer the plan quantizes (float ones and an absent embedding left out), in name order."""
    specs = {name: plan.layer(name) for name in shapes if name != EMBEDDING}
    if plan.embedding is not None and EMBEDDING in shapes:
        specs[EMBEDDING] = plan.embedding
    return {k: specs[k] for k in sorted(specs) if specs[k].kind == "affine"}


def quantization_config(specs: dict[str, LayerQuant], default: LayerQuant) -> dict[str, Any]:
    """config.json `quantization` in mlx-lm's per-layer form: top-level defaults + each layer that differs."""
    q: dict[str, Any] = {"group_size": default.group, "bits": default.bits}
    for name, spec in specs.items():
        if (spec.group, spec.bits) != (default.group, default.bits):
            q[name] = {"group_size": spec.group, "bits": spec.bits}
    return q


# --- the model's layers, in MLX names and in PyTorch's -----------------------------------------------


def model_layers(config: dict[str, Any], build: Build) -> dict[str, tuple[int, int]]:
    """Quantizable layers (Linear + the word-embedding table, common.encoder_quantizable) of the MLX model
    `build(config)` makes -> weight shape."""
    import mlx.nn as nn

    from .common import encoder_quantizable

    model = build(config)
    return {path: tuple(m.weight.shape) for path, m in model.named_modules()
            if encoder_quantizable(path, m) and isinstance(m, (nn.Linear, nn.Embedding))}


def mlx_name(config: dict[str, Any]) -> Callable[[str], str]:
    """A PyTorch parameter name -> its MLX name (the family's checkpoint renaming, e.g. `bert.` dropped)."""
    from .models import family

    rename = family(config["model_type"]).checkpoint_weights
    return lambda name: next(iter(rename({name: None})), name)


def mlx_weights(source, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The checkpoint's float32 tensors under MLX names (what every variant folder starts from)."""
    from .common import checkpoint_arrays
    from .models import family

    return family(config["model_type"]).checkpoint_weights(checkpoint_arrays(source))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one thread: reductions in a fixed order (the same Hessian bytes on every rebuild),
    and no more than its share of a shared machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _tokenized(source, recipe, texts: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    from ...reference import input_feeds
    from ...torch_model import load_tokenizer

    tokenizer = load_tokenizer(source)
    prompt = recipe.head.document_prompt or ""
    return [input_feeds(tokenizer, recipe, [prompt + t]) for t in texts]


def calibration_hessians(source, recipe, config: dict[str, Any], texts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """MLX layer name -> sum of x x^T (float64 [in, in]) over every token of every text, x = the Linear
    layer's input in the fp32 PyTorch model (one text at a time: no padding rows)."""
    import torch

    from ...torch_model import load_hf_model, make_encoder

    rename = mlx_name(config)
    model = load_hf_model(source)
    encoder = make_encoder(model, recipe, source.path)
    hessians: dict[str, np.ndarray] = {}
    hooks = []

    def hook(name: str):
        def accumulate(module, inputs, output) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double().numpy()
            hessians[name] = hessians.get(name, 0) + x.T @ x
        return accumulate

    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(hook(rename(f"{path}.weight").removesuffix(".weight"))))
    try:
        with one_thread(), torch.no_grad():
            for feeds in _tokenized(source, recipe, texts):
                encoder(*[torch.from_numpy(feeds[n]) for n in recipe.inputs])
    finally:
        for h in hooks:
            h.remove()
    return hessians


# --- quantizing a model by a plan ---------------------------------------------------------------------


def quantize_layer(w: np.ndarray, spec: LayerQuant, hessian: np.ndarray | None, scale_dtype: str) -> Stored:
    gq = quantize_matrix(w, spec.bits, spec.group, spec.scales, hessian=hessian, use_gptq=spec.gptq)
    return to_stored(gq, scale_dtype)


def quantize_by_plan(weights: dict[str, np.ndarray], plan: Plan, specs: dict[str, LayerQuant],
                     hessians: dict[str, np.ndarray] | None) -> dict[str, Stored]:
    dtype = plan.options.get("scale_dtype", "float32")
    out = {}
    for name, spec in specs.items():
        needs = spec.gptq or spec.scales.startswith("mse")
        h = hessians.get(name) if (hessians is not None and needs and name != EMBEDDING) else None
        out[name] = quantize_layer(weights[f"{name}.weight"], spec, h, dtype)
    return out


def folder_tensors(weights: dict[str, np.ndarray], stored: dict[str, Stored]) -> dict[str, np.ndarray]:
    """What model.safetensors holds: the float tensors as they are, quantized layers as weight/scales/biases."""
    out = {k: v for k, v in weights.items() if k.removesuffix(".weight") not in stored}
    for name, s in stored.items():
        out[f"{name}.weight"], out[f"{name}.scales"], out[f"{name}.biases"] = s.weight, s.scales, s.biases
    return {k: out[k] for k in sorted(out)}


def save_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """model.safetensors as common.save writes it (mlx's writer, metadata format=mlx), from NumPy arrays."""
    import mlx.core as mx

    mx.save_safetensors(str(path), {k: mx.array(v) for k, v in tensors.items()}, metadata={"format": "mlx"})


def runtime_dequantized(model) -> dict[str, np.ndarray]:
    """Each quantized layer's weight as the loaded MLX model computes with it (float32): Linear layers
    dequantized with float32 parameters (quantized_matmul's arithmetic), the embedding table in its
    parameters' dtype (QuantizedEmbedding's). For float32 parameters this is common.dequantized_weights."""
    import mlx.core as mx
    import mlx.nn as nn

    out = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            w = mx.dequantize(m.weight, m.scales.astype(mx.float32), m.biases.astype(mx.float32),
                              group_size=m.group_size, bits=m.bits)
        elif isinstance(m, nn.QuantizedEmbedding):
            w = mx.dequantize(m.weight, m.scales, m.biases, group_size=m.group_size, bits=m.bits)
        else:
            continue
        out[f"{path}.weight"] = np.array(w.astype(mx.float32))
    if not out:
        raise ModelportError("no quantized layers found in the q4mix folder")
    return out


def write_searched(source, recipe, plan: Plan, out: Path, step: Callable[[str], Any], golden, build: Build,
                   load_model: Load) -> dict[str, Any]:
    """Write `<out>/q4mix/` from the plan (+ its dequantized-weights reference, computed from the folder as
    `load_model` reads it); return its manifest extras.

    Same checkpoint + same plan + same calibration texts -> the same bytes (tests rebuild and compare)."""
    from ...layout import copy_model_files
    from ...reference import outputs_with_weights
    from .common import ship_head_files

    config = read_json(source.path / "config.json")
    shapes = model_layers(config, build)
    check_plan(plan, shapes)
    specs = plan_specs(plan, shapes)
    step(f"load checkpoint weights ({SEARCHED})")
    weights = mlx_weights(source, config)
    hessians = None
    if plan.needs_calibration():
        step(f"calibration statistics ({plan.calibration}: input Hessians of {len(shapes) - 1} Linear layers)")
        try:
            texts = load_texts(plan.calibration)
        except ValueError as e:
            raise ModelportError(f"quantization plan: {e}") from None
        hessians = calibration_hessians(source, recipe, config, texts)
    step(f"write {SEARCHED} ({len(specs)} layers by the plan, sha256 {plan.digest()[:12]})")
    stored = quantize_by_plan(weights, plan, specs, hessians)
    folder = out / SEARCHED
    copy_model_files(source, recipe, folder)
    ship_head_files(source, recipe, folder)
    cfg = dict(config)
    cfg["quantization"] = quantization_config(specs, plan.default)
    write_json(folder / "config.json", cfg)
    save_tensors(folder_tensors(weights, stored), folder / WEIGHTS)
    step(f"reference: PyTorch with {SEARCHED}'s dequantized weights")
    arrays = outputs_with_weights(source, recipe, golden, runtime_dequantized(load_model(folder)))
    with open(out / reference_path(SEARCHED), "wb") as f:
        np.savez_compressed(f, **arrays)
    quantized = sum(int(np.prod(shapes[n])) for n in stored)
    return {"dequantized_reference": reference_path(SEARCHED), "quantization": cfg["quantization"],
            "plan": plan.to_json(), "plan_sha256": plan.digest(),
            "bits_per_weight": round(sum(s.nbits() for s in stored.values()) / quantized, 4)}


# --- the search ------------------------------------------------------------------------------------------


class DevSet:
    """The fp32 PyTorch encoder on the dev texts, with any weights swapped in: candidates are ranked here.

    PyTorch computes exactly what an MLX folder's dequantized weights compute (the validator's runtime
    gate holds MLX to it at 1e-5), at a fraction of MLX's CPU-backend time."""

    def __init__(self, source, recipe, config: dict[str, Any], texts: tuple[str, ...]) -> None:
        import torch

        from ...torch_model import load_hf_model, make_encoder

        rename = mlx_name(config)
        self.model = load_hf_model(source)
        self.encoder = make_encoder(self.model, recipe, source.path)
        self.inputs = recipe.inputs
        self.params = {rename(n): p for n, p in self.model.named_parameters()}
        self.original = {k: p.detach().clone() for k, p in self.params.items()}
        self.feeds = [{k: torch.from_numpy(v) for k, v in f.items()} for f in _tokenized(source, recipe, texts)]
        self.reference = self.embed({})

    def embed(self, replace: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        try:
            with torch.no_grad():
                for name, w in replace.items():
                    self.params[name].copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
                with one_thread():
                    rows = [self.encoder(*[f[n] for n in self.inputs])[1][0].numpy() for f in self.feeds]
        finally:
            with torch.no_grad():
                for name in replace:
                    self.params[name].copy_(self.original[name])
        return np.stack(rows).astype(np.float64)

    def quality(self, replace: dict[str, np.ndarray]) -> Quality:
        return dev_quality(self.reference, self.embed(replace))


class Quantizer:
    """Layer quantizations, each computed once per (layer, settings, scale dtype) and reused by every
    candidate that contains it."""

    def __init__(self, weights: dict[str, np.ndarray], hessians: dict[str, np.ndarray]) -> None:
        self.weights, self.hessians = weights, hessians
        self.cache: dict[tuple, tuple[Stored, np.ndarray]] = {}

    def get(self, name: str, spec: LayerQuant, scale_dtype: str) -> tuple[Stored, np.ndarray]:
        key = (name, spec, scale_dtype)
        if key not in self.cache:
            needs = spec.gptq or spec.scales.startswith("mse")
            h = self.hessians.get(name) if needs and name != EMBEDDING else None
            s = quantize_layer(self.weights[f"{name}.weight"], spec, h, scale_dtype)
            self.cache[key] = (s, s.dequantize(name == EMBEDDING))
        return self.cache[key]

    def rtn(self, name: str, bits: int, group: int, scale_dtype: str) -> tuple[Stored, np.ndarray]:
        key = (name, "mx.quantize", bits, group, scale_dtype)
        if key not in self.cache:
            s = mlx_rtn(self.weights[f"{name}.weight"], bits, group, scale_dtype)
            self.cache[key] = (s, s.dequantize(name == EMBEDDING))
        return self.cache[key]


@dataclass
class Sizes:
    float_bits: int  # the tensors every variant keeps float32 (LayerNorms, biases, positions)
    quantized_weights: int  # weights in the quantized layers
    reference_bytes: int  # the f32 folder's tensors

    def candidate(self, name: str, stored: dict[str, Stored], quality: Quality, plan: Plan | None,
                  baseline: bool = False, note: str = "") -> Candidate:
        qbits = sum(s.nbits() for s in stored.values())
        return Candidate(name, (self.float_bits + qbits) // 8, qbits / self.quantized_weights, quality, plan,
                         baseline=baseline, note=note)


WIDER = (5, 6, 8)  # what a sensitive layer is raised to (MLX's affine widths above 4 that pay off)
# Sizes the mixed candidates are cut at (bits per weight over all quantized weights): the MLX
# goal is 4.5; the larger ones show where the front goes when the goal needs more.
BUDGETS = (4.3, 4.35, 4.4, 4.45, 4.5, 4.6, 4.75, 4.8, 4.85, 4.9, 4.95, 5.0)


@dataclass(frozen=True)
class LayerLoss:
    """What quantizing one layer alone costs on the dev texts: 1 - mean cosine and 1 - min cosine."""

    mean: float
    worst: float


def goal_weights(goal) -> tuple[float, float]:
    """(mean, worst) loss weights: each loss in units of what the goal allows (1 - cos goal, 1 - min goal),
    so a layer that hurts the binding constraint ranks first; mean loss alone when the goal names neither."""
    wm = 1.0 / (1.0 - goal.limits["cos_mean"]) if goal.limits.get("cos_mean", 1.0) < 1.0 else 0.0
    ww = 1.0 / (1.0 - goal.limits["cos_min"]) if goal.limits.get("cos_min", 1.0) < 1.0 else 0.0
    return (wm, ww) if wm or ww else (1.0, 0.0)


def layer_losses(dev: DevSet, quant: Quantizer, specs: dict[str, LayerQuant], scale_dtype: str) -> dict[str, LayerLoss]:
    """One dev-set run per layer, only that layer quantized (as specs[layer])."""
    out = {}
    for name in sorted(specs):
        q = dev.quality({f"{name}.weight": quant.get(name, specs[name], scale_dtype)[1]})
        out[name] = LayerLoss(1.0 - q.cos_mean, 1.0 - q.cos_min)
    return out


def layer_sensitivity(losses: dict[str, LayerLoss], goal) -> list[tuple[str, float]]:
    """Layers by goal-weighted loss, largest first (search.sensitivity: equal scores in name order).
    Deterministic: fixed texts, fixed quantizer, PyTorch on one thread."""
    wm, ww = goal_weights(goal)
    return sensitivity(sorted(losses), lambda n: wm * losses[n].mean + ww * losses[n].worst)


def promotion_path(scores: dict[str, float], weights: dict[str, int]) -> list[dict[str, int]]:
    """Greedy knapsack from 4 bits everywhere: each step widens the layer whose next width (WIDER) buys the
    most estimated loss per extra stored bit. A layer's loss at b bits is estimated as its 4-bit loss *
    4^-(b-4): each bit halves the rounding error and the cosine loses its square (the MiniLM probe found
    per-layer losses roughly additive). Returns the bit assignment after every step."""
    bits = {n: 4 for n in scores}
    path = []
    while True:
        best: tuple[float, str, int] | None = None
        for name in sorted(scores):
            wider = [b for b in WIDER if b > bits[name]]
            if not wider:
                continue
            nb = wider[0]
            gain = scores[name] * (4.0 ** -(bits[name] - 4) - 4.0 ** -(nb - 4))
            rate = gain / ((nb - bits[name]) * weights[name])
            if best is None or rate > best[0]:
                best = (rate, name, nb)
        if best is None or best[0] <= 0:
            return path
        bits[best[1]] = best[2]
        path.append(dict(bits))


def groups_for(shapes: dict[str, tuple[int, int]], options: tuple[int, ...]) -> list[int]:
    return [g for g in options if all(cols % g == 0 for _, cols in shapes.values())]


def quantize_search(ctx, build: Build) -> SearchResult:
    """Sensitivity, candidates and the choice of q4mix for an MLX sentence encoder (see the module doc).

    Candidates (scales/biases float16 unless named f32; the embedding table 4-bit rtn_asym at the
    largest group unless the mix widens it):
      baselines  mx.quantize q4 group 64 on every layer with float32 parameters (today's q4 folder)
                 and with float16 ones (mlx-lm's storage)
      uniform    4-bit Linear layers by rtn_asym / mse_asym / GPTQ+mse_asym at groups 32/64/128
      mixed      GPTQ 4-bit at the largest group, the layers (embedding included) widened to 5/6/8 bits
                 along `promotion_path` by their dev-text sensitivity, cut at BUDGETS bits per weight.
                 Widened layers use GPTQ with rtn_asym ranges, not mse_asym: the MSE search clips outliers,
                 which at 6 bits moved MiniLM layer 4's up-projection max |w| by 3.3 %, past the 3.3 %
                 (2 steps) the validator's weight check allows a 6-bit tensor; rtn_asym keeps each group's
                 range (worst: 0.73 of the allowance, at 8 bits) and scores alike (MiniLM dev texts, mix at
                 <= 4.5 bpw: min/mean 0.9590/0.9900 against 0.9576/0.9901 with mse_asym; <= 5.0:
                 0.9869/0.9958 against 0.9843/0.9961)
    MiniLM (benchmarks/quant_mlx.py): naive q4 g64 0.879/0.961 (dev min/mean) at 5.0 bpw (4.5 with float16
    parameters); the mix at <= 4.5 bpw 0.959/0.990 (top-5 0.93); the default goal is first met at 4.80 bpw
    (0.983/0.995, top-5 0.958), which the validation set confirms (0.990/0.994, top-5 0.97).
    Measured on MiniLM (dev texts, embedding kept float32): GPTQ 4-bit g64 on every Linear layer loses
    mean 0.013 / worst 0.070 ("no way!!!"), g32 0.010 / 0.052: no uniform 4-bit recipe meets the goal's
    worst-text limit, hence the mix. Embedding alone at 4 bits g128: 0.0020 / 0.0061 (rtn_asym; mse_asym
    0.0018 / 0.0047 but 93 s of CPU, so rtn_asym); at 3 bits g64 0.0064 / 0.019, too much for its size.
    """
    source, recipe, step, goal = ctx.source, ctx.recipe, ctx.step, ctx.goal
    config = read_json(source.path / "config.json")
    shapes = model_layers(config, build)
    linears = sorted(n for n in shapes if n != EMBEDDING)
    has_emb = EMBEDDING in shapes
    step("load checkpoint weights")
    weights = mlx_weights(source, config)
    step(f"calibration statistics ({ctx.calibration}: input Hessians of {len(linears)} Linear layers)")
    hessians = calibration_hessians(source, recipe, config, load_texts(ctx.calibration))
    step(f"dev set ({ctx.dev}): fp32 PyTorch reference")
    dev = DevSet(source, recipe, config, load_texts(ctx.dev))
    quant = Quantizer(weights, hessians)
    counts = {n: int(np.prod(s)) for n, s in shapes.items()}
    float_bits = 32 * sum(v.size for k, v in weights.items() if k.removesuffix(".weight") not in shapes)
    sizes = Sizes(float_bits, sum(counts.values()), 4 * sum(v.size for v in weights.values()))

    groups = groups_for({n: shapes[n] for n in linears}, (32, 64, 128))
    if not groups:
        raise ModelportError(f"{source.name}: no group size of 32/64/128 divides every Linear layer's width")
    emb_group = max(groups_for({EMBEDDING: shapes[EMBEDDING]}, (32, 64, 128)) or [0]) if has_emb else 0
    if has_emb and not emb_group:
        raise ModelportError(f"{source.name}: no group size of 32/64/128 divides the embedding width")
    dtype = "float16"
    candidates: list[Candidate] = []

    def evaluate(name: str, stored: dict[str, tuple[Stored, np.ndarray]], plan: Plan | None,
                 baseline: bool = False, note: str = "") -> Candidate:
        q = dev.quality({f"{n}.weight": d for n, (_, d) in stored.items()})
        c = sizes.candidate(name, {n: s for n, (s, _) in stored.items()}, q, plan, baseline, note)
        candidates.append(c)
        step(f"{name}: bpw {c.bits_per_weight:.3f}, cos min {q.cos_min:.4f} mean {q.cos_mean:.4f}, top-5 {q.top5:.3f}")
        return c

    if 64 in groups and (not has_emb or shapes[EMBEDDING][1] % 64 == 0):
        for sd, label in (("float32", "today's q4 folder"), ("float16", "mlx-lm's float16 scales")):
            evaluate(f"naive mx.quantize q4 g64 {'f32' if sd == 'float32' else 'f16'}",
                     {n: quant.rtn(n, 4, 64, sd) for n in shapes}, None, baseline=True, note=label)

    emb4 = LayerQuant(4, emb_group, "rtn_asym") if has_emb else None

    def plan_of(default: LayerQuant, layers: dict[str, LayerQuant], emb: LayerQuant | None) -> Plan:
        needs = Plan("mlx", default, layers, emb).needs_calibration()
        return Plan("mlx", default, layers, emb, ctx.calibration if needs else "", {"scale_dtype": dtype})

    def run(name: str, plan: Plan, note: str = "") -> Candidate:
        return evaluate(name, {n: quant.get(n, s, dtype) for n, s in plan_specs(plan, shapes).items()}, plan, note=note)

    recipes = [("rtn_asym", False), ("mse_asym", False), ("mse_asym", True)]
    base_group = max(groups)
    uniform_groups = groups
    if ctx.quick:
        uniform_groups, recipes = [base_group], [("mse_asym", True)]
    emb_label = f"emb {emb4.label()}" if emb4 else "no embedding"
    for g in uniform_groups:
        for scales, use_gptq in recipes:
            default = LayerQuant(4, g, scales, gptq=use_gptq)
            run(f"{default.label()}, {emb_label}", plan_of(default, {}, emb4))

    base = LayerQuant(4, base_group, "mse_asym", gptq=True)
    specs = {n: base for n in linears} | ({EMBEDDING: emb4} if emb4 else {})
    step(f"sensitivity: one layer at a time ({len(specs)} layers; Linear as {base.label()}"
         + (f", embedding as {emb4.label()})" if emb4 else ")"))
    losses = layer_losses(dev, quant, specs, dtype)
    ranking = layer_sensitivity(losses, goal)
    path = promotion_path(dict(ranking), counts)

    def bpw(bits: dict[str, int]) -> float:
        return sum(counts[n] * (b + 32 / specs[n].group) for n, b in bits.items()) / sizes.quantized_weights

    budgets = (BUDGETS[4], BUDGETS[-1]) if ctx.quick else BUDGETS
    seen: set[tuple] = set()
    for budget in budgets:
        fits = [bits for bits in path if bpw(bits) <= budget]
        if not fits:
            continue
        bits = fits[-1]
        key = tuple(sorted(bits.items()))
        if key in seen:
            continue
        seen.add(key)
        wide = {n: b for n, b in bits.items() if b > 4}
        layers = {n: LayerQuant(b, base_group, "rtn_asym", gptq=True) for n, b in wide.items() if n != EMBEDDING}
        emb = LayerQuant(wide[EMBEDDING], emb_group, "rtn_asym") if EMBEDDING in wide else emb4
        widths = ", ".join(f"{sum(1 for b in wide.values() if b == w)}x{w}b" for w in WIDER if w in wide.values())
        run(f"{base.label()} mix <= {budget:g} bpw ({widths or 'none wider'})", plan_of(base, layers, emb),
            note="wider: " + ", ".join(f"{n} {b}b" for n, b in sorted(wide.items())))

    result = SearchResult(target="mlx", model=source.name, goal=goal, reference_bytes=sizes.reference_bytes,
                          candidates=candidates, sensitivity=ranking,
                          texts={"calibration": ctx.calibration, "dev": ctx.dev})
    wm, ww = goal_weights(goal)
    result.notes.append(f"sensitivity = {wm:g} x (1 - mean cos) + {ww:g} x (1 - min cos) on the dev texts with one "
                        f"layer quantized (each loss over what the goal allows)")
    chosen = choose(candidates, goal)
    if chosen is not None:
        result.chosen[SEARCHED] = chosen
        result.notes.append(f"{SEARCHED}: {chosen.name}, {chosen.bits_per_weight:.2f} bits per weight")
    else:
        best = max(pareto(candidates), key=lambda c: c.quality.key(), default=None)
        result.notes.append(f"no candidate met {goal.text()} on the dev texts"
                            + (f"; the best was {best.name}: {', '.join(goal.misses(best.quality))}" if best else ""))
    result.notes.append("bits per weight = stored bits of the quantized layers (packed codes + float16 scales and "
                        "biases; float32 for the f32 baseline) / their weights; sizes add the float32 LayerNorms, "
                        "biases and position tables")
    return result
