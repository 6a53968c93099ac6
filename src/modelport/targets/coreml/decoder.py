"""Core ML decoder LLMs (`CoreMLDecoder`): one ML Program per variant with a stateful KV cache
(iOS18 / macOS15).

    <out>/fp32/model.mlpackage   float32 compute, float32-exact KV cache (see "Why three fp16 parts")
    <out>/w8/model.mlpackage     float32 compute, int8 weights, one scale per block of 32 inputs
    <out>/w4/model.mlpackage     float32 compute, int4 weights, one scale per block of 32 inputs
    <out>/reference/lm_golden_<w8|w4>.npz/.json   PyTorch fp32 on the weights read back from the package
    <out>/config.json generation_config.json tokenizer.json tokenizer_config.json ...

The package contract (every variant; Apple's pattern for stateful LLMs, so existing Swift code fits):
  inputs  input_ids    int32   [1, Q]        Q in 1..C: the new tokens (the prompt, then 1 per step)
          causal_mask  float32 [1, 1, Q, E]  E = past + Q tokens in the cache after this call;
                                             0 where query i may see key j (j <= past + i), else -1e4
  output  logits       float32 [1, Q, V]
  states  key_cache, key_cache_residual, key_cache_residual2 (and value_cache*)   float16 [L, 1, KV, C, D]
The cache position is E - Q, read from the mask's shape: a decode step is a [1, 1] call with a
[1, 1, 1, past + 1] mask, and the state carries the keys and values between calls. C (the
context, `--context`, default min(2048, max_position_embeddings)) is fixed by the state shape.

Why three fp16 parts: Core ML states are float16 only (coremltools' backend refuses others: "State
only support fp16 dtype"), so a float32 model with a float16 cache rounds every key and value to
11 bits and misses the 1e-5 gate by two orders of magnitude (tiny Llama: 1.5e-3). Every variant
stores each cached value x as hi = fp16(x), r1 = fp16(x - hi), r2 = fp16(x - hi - r1) and reads
back hi + r1 + r2: 33 significant bits, so float32 keys and values come back exactly (barring
fp16 underflow of the last part for |x| < ~1e-3, which loses bits below 2^-38). Two parts carry
only 22 to 23 bits (x - hi has up to 13 significant bits, fp16 keeps 11): two to four times the
rounding of a float32 store, on every cached key and value. The cost is 1.5x the memory of a
float32 cache.

Why no fp16-compute variant yet: measured with the interpreter (fp16 storage after every op, as
Core ML's fp16 programs do; a single fp16 cache), the tiny models' logits land 1.0e-2 to 2.65e-2
from PyTorch fp32 (80/80 greedy tokens), i.e. up to ~2.2e-3 x max |logit|, inside the relative
decoder fp16 gate (4e-3 x max |logit|). Keeping RMSNorm statistics, softmax and lm_head in
float32 moved SmolLM3 only from 2.65e-2 to 2.61e-2: the error is fp16 storage throughout, not one
sensitive op. It needs its own conversion worker (a second ct.convert in one process is not
byte-stable, see WORKER_HASH_SEED) and is left for a follow-up. A device's GPU / Neural Engine
computes in fp16 whatever the package says; on macOS the validator measures that too
(`CoreMLDecoderSession.extra_metrics`, ALL compute units, fp16 gate).

Weight compression (w8, w4): linear symmetric quantization with one scale per block of 32 input
weights (`ct.optimize.coreml.OpLinearQuantizerConfig(granularity="per_block", block_size=32)`,
iOS18 `constexpr_blockwise_shift_scale`), on Linear layers (lm_head included) and the embedding
table; norms stay float. Block-wise linear rather than palettization: it is the format the other
targets' 4-bit variants use (ONNX MatMulNBits, MLX q4: block 32 / group 64), deterministic (no
k-means), and a per-block scale follows each row's range, which one 16-entry table per tensor
cannot. Compute stays float32 so the runtime can be held to 1e-5 against PyTorch running the very
weights the package stores (`reference/lm_golden_<variant>`); a device running them on the GPU or
Neural Engine computes in fp16 anyway.

Validation runs the shipped package with `modelport.milinterp` (states included); on macOS the
same runner drives `MLModel.predict(..., state=model.make_state())` (`predict_with_coreml`).

config.json, the tokenizer and the chat template come from `layout.write_client_files` (every quirk's
config rewrite applied, e.g. a top-level rope_theta; tokenizer_config's model_max_length = the context).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from ...errors import ModelportError, ToolchainError
from ...families import DECODER
from ...manifest import TargetInfo
from ...source import ModelCard, read_model_card
from ..registry import ArtifactSession, ConvertContext, Converter, Variant, register
from . import package as pkg
from .package import MACOS, _package_bytes, _quiet, normalize_package

# float32 compute with a float32-exact stateful KV cache; w8 / w4 are block-wise (32) int8 / int4
# weights. No fp16-compute variant yet: see "Why no fp16-compute variant yet" above.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "fp32/model.mlpackage", "fp32", "float32 compute, float32-exact KV cache (three fp16 parts)"),
        Variant("w8", "w8/model.mlpackage", "w8",
                "float32 compute, int8 weights, symmetric, one scale per 32 inputs; float32-exact KV cache"),
        Variant("w4", "w4/model.mlpackage", "w4",
                "float32 compute, int4 weights, symmetric, one scale per 32 inputs; float32-exact KV cache"),
    )
}
DEFAULT_VARIANTS = tuple(VARIANTS)

DEPLOYMENT_TARGET = "iOS18"  # states (ct.StateType) and block-wise int4/int8 weights need iOS18 / macOS15
LM_FEATURES = (
    "iOS18: stateful model (KV cache in ct.StateType, read_state / write_state)",
    "iOS18: slice_update (cache writes at a runtime position)",
)
QUANT_FEATURE = "iOS18: block-wise weights (constexpr_blockwise_shift_scale, int8 / int4 data)"
QUANT_BITS = {"w8": "int8", "w4": "int4"}
QUANT_BLOCK = 32
COMPRESSED_OP_TYPES = ("linear", "gather")  # Linear layers (lm_head included) and the embedding table
COMPRESSION_MIN_ELEMENTS = 2048  # norm weights and biases stay float
DEFAULT_CONTEXT = 2048
MIN_CONTEXT = 8
MASK_FILL = -1.0e4  # finite in float16 (an fp16 program adds it to fp16 scores) and exp() of it is 0 in fp32
EXPORT_PAST, EXPORT_QUERY = 2, 3  # example shapes for torch.export: not 0 or 1, which it would specialize
STATE_NAMES = ("key_cache", "value_cache")
# Each cached float32 value x is split into float16 parts: hi = fp16(x), then the residuals
# fp16(x - hi) and fp16(x - hi - residual). Three parts carry 33 significant bits, enough for every
# bit of float32 (two carry 22: see "Why three fp16 parts").
PART_SUFFIXES = ("", "_residual", "_residual2")
Step = Callable[[str], Any]


def causal_mask(query: int, past: int) -> np.ndarray:
    """The `causal_mask` input for `query` new tokens after `past` cached ones: [1, 1, Q, past + Q]."""
    i = np.arange(query)[:, None] + past
    j = np.arange(past + query)[None, :]
    return np.where(j <= i, 0.0, MASK_FILL).astype(np.float32)[None, None]


# ---------------------------------------------------------------------------------------------
# Export


def check_supported(config: Any) -> None:
    """Refuse what the single-mask cache contract cannot express."""
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ModelportError(
            f"Core ML decoder export supports full attention only; this config has layer_types "
            f"{sorted(set(layer_types))} (sliding-window layers need a second mask input)")
    if getattr(config, "use_sliding_window", False):
        raise ModelportError("Core ML decoder export: use_sliding_window=True is not supported")


def _kv_shape(config: Any, context: int) -> tuple[int, int, int, int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return (config.num_hidden_layers, 1, kv_heads, context, head_dim)


def _build_wrapper(model: Any, context: int) -> Any:
    """The module torch.export sees: (input_ids [1, Q] int32, causal_mask [1, 1, Q, E]) -> logits,
    with the KV cache in registered fp16 buffers that become Core ML states.

    The Hugging Face model runs unchanged (its attention, RoPE, q/k norms, NoPE layers) through a
    duck-typed cache object whose `update` writes the new keys and values at [past, E) with slice
    assignment (-> MIL slice_update), as three fp16 parts (PART_SUFFIXES), and returns their float32
    sum up to E. lm_head is applied here rather
    than through the CausalLM forward: its logits_to_keep slice exports as `aten.alias`, which
    coremltools cannot convert.
    """
    import torch

    shape = _kv_shape(model.config, context)

    class StateCache:
        def __init__(self, owner: "Wrapper", past: Any, end: Any) -> None:
            self.owner, self.past, self.end = owner, past, end

        def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any):
            out = []
            for name, x in zip(STATE_NAMES, (key_states, value_states)):
                rest, cached = x, None
                for suffix in PART_SUFFIXES:
                    part = rest.to(torch.float16)
                    rest = rest - part.to(torch.float32)  # exact: the part is x's leading bits
                    buf = getattr(self.owner, name + suffix)
                    buf[layer_idx, :, :, self.past:self.end, :] = part
                    # narrow, not [:end]: slicing to a symbolic end makes torch.export guard end != C
                    read = buf[layer_idx].narrow(2, 0, self.end).to(torch.float32)
                    cached = read if cached is None else cached + read
                out.append(cached)
            return out[0], out[1]

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model
            for name in STATE_NAMES:
                for suffix in PART_SUFFIXES:
                    self.register_buffer(name + suffix, torch.zeros(shape, dtype=torch.float16))

        def forward(self, input_ids: Any, causal_mask: Any) -> Any:
            query = input_ids.shape[1]
            end = causal_mask.shape[-1]
            past = end - query
            positions = (torch.arange(query, dtype=torch.int32) + past)[None].to(torch.int64)
            hidden = self.m.model(input_ids=input_ids.to(torch.int64), attention_mask=causal_mask,
                                  position_ids=positions, past_key_values=StateCache(self, past, end),
                                  use_cache=True).last_hidden_state
            return self.m.lm_head(hidden)

    return Wrapper().eval()


def checked_model(model: Any) -> Any:
    """A causal LM loaded by `torch_model.load_causal_lm` (float32, eager attention: the golden's
    attention; SDPA decomposes to the same matmul/softmax in the export, with more shape ops),
    refused if the cache contract cannot express it."""
    check_supported(model.config)
    if not hasattr(model, "model") or not hasattr(model, "lm_head"):
        raise ModelportError(f"{type(model).__name__} has no .model/.lm_head: not a standard causal LM")
    return model


def export_program(model: Any, context: int) -> Any:
    """torch.export with dynamic Q and E. Their export ranges stop at C - 1: at Q = C or E = C the
    slices cover the whole buffer and torch.export adds a contiguity guard (16*E != 16*C); the
    graph is the same for every length, and ct.convert widens the ranges to C (`convert_program`)."""
    import torch

    wrapper = _build_wrapper(model, context)
    q = torch.export.Dim("query", min=1, max=context - 1)
    e = torch.export.Dim("end", min=1, max=context - 1)
    example = (torch.zeros((1, EXPORT_QUERY), dtype=torch.int32),
               torch.from_numpy(causal_mask(EXPORT_QUERY, EXPORT_PAST)))
    with torch.no_grad():
        program = torch.export.export(wrapper, example, dynamic_shapes={"input_ids": {1: q}, "causal_mask": {2: q, 3: e}},
                                      strict=False)
        return program.run_decompositions({})


def convert_program(program: Any, context: int) -> Any:
    """ct.convert to an iOS18 ML Program; the states come from the exported program's mutated buffers."""
    import coremltools as ct

    query = ct.RangeDim(lower_bound=1, upper_bound=context, default=1, symbol="query")
    end = ct.RangeDim(lower_bound=1, upper_bound=context, default=1, symbol="end")
    return ct.convert(
        program,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        inputs=[ct.TensorType(name="input_ids", shape=(1, query), dtype=np.int32),
                ct.TensorType(name="causal_mask", shape=(1, 1, query, end), dtype=np.float32)],
        outputs=[ct.TensorType(name="logits", dtype=np.float32)],
        skip_model_load=True,  # loading compiles on macOS and fails on Linux; validation loads the saved file
    )


def compress(mlmodel: Any, variant: str) -> Any:
    """Block-wise symmetric linear quantization of Linear and embedding weights (w8: int8, w4: int4)."""
    import coremltools.optimize.coreml as cto

    op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=QUANT_BITS[variant], granularity="per_block",
                                            block_size=QUANT_BLOCK, weight_threshold=COMPRESSION_MIN_ELEMENTS)
    config = cto.OptimizationConfig(op_type_configs={t: op_config for t in COMPRESSED_OP_TYPES})
    return cto.linear_quantize_weights(mlmodel, config)


# ---------------------------------------------------------------------------------------------
# Dequantized weights, read back from the package


def _mil_name(param: str) -> str:
    """The const name coremltools gives a parameter of the wrapper (`m.` + the model's name)."""
    return "p_m_" + re.sub(r"[^0-9A-Za-z_]", "_", param)


def dequantized_weights(package: Path, model: Any) -> dict[str, np.ndarray]:
    """The compressed weights as the package decodes them, by PyTorch parameter name.

    Read from the file by the interpreter (the constexpr ops evaluated as the MIL spec defines
    them), so the golden that PyTorch computes from them uses exactly what a device would; a
    parameter tied to another (lm_head <- embed_tokens) gets the value of the constant the
    program uses for it. Every compressed constant must map to a parameter.
    """
    from ... import milinterp

    decoded = milinterp.constexpr_values(package)
    groups: dict[int, list[tuple[str, Any]]] = {}  # tied parameters share one tensor
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append((name, param))
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for members in groups.values():
        # coremltools names the decompressing op after the constant it replaced, + "_quantized";
        # torch.export keeps one constant per tied group, named after one of its members.
        hits = {}
        for name, _ in members:
            mil = next((n for n in (_mil_name(name) + "_quantized", _mil_name(name)) if n in decoded), None)
            if mil is not None:
                hits[name] = mil
        if len(hits) == 1:  # one constant serves every tied member (embedding gather and lm_head)
            hits = {name: next(iter(hits.values())) for name, _ in members}
        for name, param in members:
            if name not in hits:
                continue
            value = np.asarray(decoded[hits[name]], dtype=np.float32)
            if tuple(value.shape) != tuple(param.shape):
                raise ModelportError(f"{package}: {hits[name]} decodes to {list(value.shape)}, "
                                     f"{name} is {list(param.shape)}")
            out[name] = value
            used.add(hits[name])
    unmapped = sorted(set(decoded) - used)
    if unmapped:
        raise ModelportError(f"{package}: compressed constants with no PyTorch parameter: {unmapped[:5]}")
    if not out:
        raise ModelportError(f"{package}: no compressed weights found")
    return out


# ---------------------------------------------------------------------------------------------
# Conversion


def describe(mlmodel: Any, source: Any, card: Any, variant: str, context: int, vocab: int, eos: list[int]) -> None:
    """Metadata Xcode shows and apps read."""
    from ... import __version__

    mlmodel.author = card.author or "not stated in the model card"
    mlmodel.license = card.license or "not stated in the model card"
    mlmodel.version = source.revision or ""
    mlmodel.short_description = (
        (card.summary + " " if card.summary else f"{source.name}: causal language model. ")
        + f"Converted by modelport {__version__}: next-token logits with a stateful KV cache "
          f"({VARIANTS[variant].description}).")
    mlmodel.input_description["input_ids"] = (
        f"new token ids from tokenizer.json, int32 [1, Q], Q in 1..{context}: the prompt, then one token per step")
    mlmodel.input_description["causal_mask"] = (
        f"float32 [1, 1, Q, E], E = cached + new tokens (<= {context}): 0 where query i may attend key j "
        f"(j <= E - Q + i), {MASK_FILL:g} elsewhere; its shape tells the model where to write the cache")
    mlmodel.output_description["logits"] = f"next-token logits, float32 [1, Q, {vocab}]"
    mlmodel.user_defined_metadata.update({
        "modelport.version": __version__,
        "modelport.source": source.name,
        "modelport.kind": "causal-lm",
        "modelport.context_length": str(context),
        "modelport.kv_cache": "float32-exact: three fp16 parts (key_cache, _residual, _residual2), read as their sum",
        "modelport.mask_fill": f"{MASK_FILL:g}",
        "modelport.eos_token_id": ",".join(map(str, eos)),
    })


def _eos(model: Any) -> list[int]:
    from ...recipes import eos_list

    gen = getattr(model, "generation_config", None)
    eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else model.config.eos_token_id
    return eos_list(eos)


def resolve_context(config: Any, context: int | str | None) -> int:
    limit = int(getattr(config, "max_position_embeddings", DEFAULT_CONTEXT) or DEFAULT_CONTEXT)
    if context in (None, ""):
        return min(DEFAULT_CONTEXT, limit)
    try:
        value = int(context)
    except (TypeError, ValueError):
        raise ModelportError(f"bad --context {context!r}: expected a number of tokens") from None
    if not MIN_CONTEXT <= value <= limit:
        raise ModelportError(f"--context {value} must be between {MIN_CONTEXT} and the model's {limit} positions")
    return value


# coremltools' graph passes iterate over sets of symbolic-shape expressions: with this graph
# (flexible Q and E, states) their order decides which duplicate ops remove_redundant_ops merges,
# so the same conversion gives 683 to 698 ops depending on the process's string-hash seed and on
# how many conversions the process has already made (symbol names come from a global counter).
# The packages are therefore built in a fresh interpreter with a fixed PYTHONHASHSEED: measured
# byte-identical across processes that way, and different without it.
WORKER_HASH_SEED = "0"


def build_packages(request: dict[str, Any]) -> None:
    """Export, convert, compress, describe and save every requested variant (in the worker)."""
    from ...torch_model import load_causal_lm

    model = checked_model(load_causal_lm(Path(request["model_dir"]),
                                         trust_remote_code=bool(request.get("trust_remote_code", False)),
                                         use_safetensors=request.get("use_safetensors")))
    ctx, out = int(request["context"]), Path(request["out"])
    source = SimpleNamespace(name=request["source_name"], revision=request["revision"])
    card = ModelCard(**request["card"])
    with _quiet():
        program = export_program(model, ctx)
        converted = convert_program(program, ctx)  # one float32 program; compression returns new models
        for name in request["variants"]:
            mlmodel = compress(converted, name) if name in QUANT_BITS else converted
            describe(mlmodel, source, card, name, ctx, int(model.lm_head.out_features), _eos(model))
            package = out / VARIANTS[name].path
            package.parent.mkdir(parents=True, exist_ok=True)
            mlmodel.save(str(package))


# `python -c` rather than `-m modelport.targets.coreml.decoder`: run as __main__, this module would
# register CoreMLDecoder a second time (the package import registers it first).
WORKER = ("import json, sys; from modelport.targets.coreml.decoder import build_packages; "
          "build_packages(json.loads(sys.argv[1]))")


def run_worker(request: dict[str, Any]) -> None:
    """`build_packages` in a fresh Python with PYTHONHASHSEED fixed (see WORKER_HASH_SEED)."""
    env = {**os.environ, "PYTHONHASHSEED": WORKER_HASH_SEED}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(request)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "no output")
        raise ToolchainError(f"Core ML decoder conversion failed: {last[:400]}", log=_worker_log(proc))


def _worker_log(proc: subprocess.CompletedProcess) -> str | None:
    """The worker's whole output in a log file under the modelport cache (its path, or None)."""
    import time

    from ...fsutil import cache_root

    try:
        logs = cache_root() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-coreml-worker.log"
        path.write_text(f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
                        encoding="utf-8")
    except OSError:
        return None
    return str(path)


def convert_lm(source: Any, recipe: Any, variants: list[str], out: Path, step: Step,
               context: int | str | None = None) -> TargetInfo:
    """Write the requested variants under `out` (+ the dequantized goldens of w8/w4); returns the
    target section of the manifest. The packages come from the checkpoint; the recipe's quirks
    rewrite the shipped config.json (layout.write_client_files)."""
    from ... import milinterp
    from ...layout import write_client_files
    from ...lm import compute_golden, golden_name
    from ...torch_model import load_causal_lm_source

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ModelportError(f"unknown variant(s) {', '.join(unknown)}; Core ML decoders: {', '.join(VARIANTS)}")
    model = checked_model(load_causal_lm_source(source))
    ctx = resolve_context(model.config, context)
    card = read_model_card(Path(source.path))
    eos = _eos(model)
    vocab = int(model.lm_head.out_features)
    kv = _kv_shape(model.config, ctx)
    step(f"export + convert {', '.join(variants)} (torch.export, stateful KV cache, context {ctx}; {DEPLOYMENT_TARGET})")
    run_worker({"model_dir": str(source.path), "out": str(out), "variants": list(variants), "context": ctx,
                "source_name": source.name, "revision": source.revision, "card": dataclasses.asdict(card),
                "trust_remote_code": source.trust_remote_code,
                "use_safetensors": not any(p.suffix != ".safetensors" for p in source.weight_files)})
    per_variant: dict[str, dict[str, Any]] = {}
    for name in variants:
        package = out / VARIANTS[name].path
        normalize_package(package)
        entry: dict[str, Any] = {
            "minimum_deployment_target": f"{DEPLOYMENT_TARGET} / {MACOS[DEPLOYMENT_TARGET]}",
            "deployment_target_features": list(LM_FEATURES) + ([QUANT_FEATURE] if name in QUANT_BITS else []),
            "kv_cache": "float32-exact (three fp16 parts)",
            "bytes": _package_bytes(package),
            "ops": milinterp.op_counts(package),
        }
        if name in QUANT_BITS:
            step(f"reference: PyTorch (float64) on the {name} weights read back from the package")
            weights = dequantized_weights(package, model)
            entry["dequantized_parameters"] = len(weights)
            golden = compute_golden(Path(source.path), state_dict=weights,  # consumes weights
                                    trust_remote_code=source.trust_remote_code)
            golden.save(out, golden_name(name))
            entry["reference"] = f"reference/{golden_name(name)}.npz"
        per_variant[name] = entry
    files = write_client_files(source, recipe, out, max_length=ctx)
    return TargetInfo.of(
        "coreml", DECODER.name, variants, VARIANTS, per_variant,
        format="mlprogram",
        context_length=ctx,
        inputs={"input_ids": f"int32 [1, Q], Q in 1..{ctx}",
                "causal_mask": f"float32 [1, 1, Q, E], E = past + Q <= {ctx}; 0 = attend, {MASK_FILL:g} = masked"},
        outputs={"logits": f"float32 [1, Q, {vocab}]"},
        states={n + suffix: f"float16 {list(kv)}" for n in STATE_NAMES for suffix in PART_SUFFIXES},
        eos_token_id=eos,
        model_card=dataclasses.asdict(card),
        files=sorted(files),
    )


# ---------------------------------------------------------------------------------------------
# Running a package for the validator

Predict = Callable[[dict[str, np.ndarray], Any], dict[str, np.ndarray]]


@dataclass
class LMState:
    """A sequence in progress: the runtime's state object (interpreter: dict of arrays; Core ML:
    MLState) and how many tokens it holds. `decode` updates it in place and returns it."""

    state: Any
    length: int


class CoreMLLMRunner:
    """lm.LMRunner over a stateful package: prefill = one [1, T] call on fresh state, decode = one
    [1, 1] call with the mask that places the token at position `length`."""

    def __init__(self, predict: Predict, make_state: Callable[[], Any], context: int) -> None:
        self.predict = predict
        self.make_state = make_state
        self.context = context

    def _call(self, ids: np.ndarray, past: int, state: Any) -> np.ndarray:
        query = ids.shape[1]
        if past + query > self.context:
            raise ModelportError(f"{past + query} tokens exceed the package's context of {self.context}")
        out = self.predict({"input_ids": ids.astype(np.int32), "causal_mask": causal_mask(query, past)}, state)
        return np.asarray(out["logits"], dtype=np.float32)[0]

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, LMState]:
        ids = np.asarray(input_ids).reshape(1, -1)
        state = LMState(self.make_state(), 0)
        logits = self._call(ids, 0, state.state)
        state.length = ids.shape[1]
        return logits, state

    def decode(self, state: LMState, token: int) -> tuple[np.ndarray, LMState]:
        logits = self._call(np.array([[token]], dtype=np.int64), state.length, state.state)
        state.length += 1
        return logits[-1], state


def package_context(package: Path) -> int:
    """The context the shipped file was built for: the states' sequence dimension."""
    from ... import milinterp

    spec, _ = milinterp.read_spec(package)
    states = milinterp.state_specs(spec)
    if not states:
        raise ModelportError(f"{package} has no states: not a modelport Core ML decoder")
    return states[0].shape[3]


def load_lm_runner(artifact: Path, variant: str) -> CoreMLLMRunner:
    """The shipped package, run by the reference interpreter (every platform)."""
    from ... import milinterp

    package = Path(artifact) / VARIANTS[variant].path
    interpreter = milinterp.Interpreter(package)
    return CoreMLLMRunner(interpreter.run, interpreter.make_state, package_context(package))


def predict_with_coreml(package: Path, compute_units: str) -> CoreMLLMRunner:
    """MLModel.predict with an MLState (macOS 15+), on the given compute units."""
    model = pkg.load_mlmodel(package, compute_units)
    return CoreMLLMRunner(lambda feeds, state: model.predict(feeds, state=state), model.make_state,
                          package_context(package))


def lm_extra_metrics(artifact: Path, variant: str, golden: Any) -> dict[str, Any]:
    """On macOS: the same golden comparison with MLModel.predict (CPU_ONLY, then ALL); `golden` is
    the one the variant is gated against. Empty elsewhere. CPU_ONLY is gated like the interpreter;
    ALL may run on the GPU / Neural Engine in float16, so it is gated by the fp16 decoder thresholds."""
    if not pkg.coreml_runtime_available():  # looked up on use: tests fake macOS
        return {}
    from ... import kld
    from ...lm import evaluate_lm
    from ...thresholds import check_kld, check_lm

    package = Path(artifact) / VARIANTS[variant].path
    precision = VARIANTS[variant].precision
    # the KLD report through Core ML itself, against the fp32 golden (kld.py); its gate, like the
    # logits gate, is the variant's own on CPU_ONLY and fp16's (none) on ALL
    kld_golden = kld.KLDGolden.load(artifact) if kld.KLDGolden.exists(artifact) else None
    extra: dict[str, Any] = {"failures": []}
    for units in pkg.COMPUTE_UNITS:
        gate = precision if units == "CPU_ONLY" else "fp16"
        runner = predict_with_coreml(package, units)
        metrics = evaluate_lm(golden, runner)
        summary = {k: v for k, v in metrics.to_json().items() if k != "prompts"}
        extra[f"coreml_{units.lower()}"] = {"gate": gate, **summary}
        extra["failures"] += [f"Core ML {units}: {f}" for f in check_lm(gate, metrics)]
        if kld_golden is not None:
            report = extra[f"coreml_{units.lower()}"]["kld"] = kld.evaluate(kld_golden, runner).to_json()
            extra["failures"] += [f"Core ML {units}: {f}" for f in check_kld(gate, report)]
    return extra


def lm_runtime_notes(target: TargetInfo) -> list[str]:
    """How the decoder variants were run, for the validation report."""
    how = (f"each prompt: one [1, T] prefill on fresh state, then [1, 1] decode calls with a "
           f"[1, 1, 1, past + 1] causal_mask; context {target.details.get('context_length')} tokens (the state length)")
    if pkg.coreml_runtime_available():
        return ["validated with the reference interpreter and with Core ML (MLModel.predict with an MLState, "
                f"{' then '.join(pkg.COMPUTE_UNITS)}; results under extra)", how]
    return ["Core ML runtime not available: validated with the reference interpreter (modelport.milinterp, "
            "NumPy; states held as arrays like MLState)", how]



# ---------------------------------------------------------------------------------------------
# The registry's view


class CoreMLDecoderSession(ArtifactSession):
    """One Core ML decoder artifact: stateful interpreter runners, Core ML itself on macOS."""

    def runner(self, variant: str) -> CoreMLLMRunner:
        return load_lm_runner(self.root, variant)

    def extra_metrics(self, variant: str, runner: Any, golden: Any) -> dict[str, Any]:
        return lm_extra_metrics(self.root, variant, golden)

    def notes(self) -> list[str]:
        from ... import manifest

        return lm_runtime_notes(TargetInfo.from_json(manifest.load(self.root)["target"]))


@register
class CoreMLDecoder(Converter):
    target = "coreml"
    family = DECODER.name
    variants = VARIANTS
    defaults = DEFAULT_VARIANTS
    requires = ("torch", "transformers", "coremltools")
    runtime_requires = ("coremltools",)

    @dataclass(frozen=True)
    class Options:
        context: int | None = None  # KV-cache length (the state's sequence dimension)

        def __post_init__(self) -> None:
            """A context that cannot be is refused when the flags are read, before any model is loaded."""
            if self.context in (None, ""):
                return
            try:
                value = int(self.context)
            except (TypeError, ValueError):
                raise ModelportError(f"bad --context {self.context!r}: expected a number of tokens") from None
            if value < MIN_CONTEXT:
                raise ModelportError(f"--context {value} is too small: the KV cache must hold at least {MIN_CONTEXT} "
                                     "tokens (the prompt and the generated tokens)")

    def adapt_recipe(self, recipe: Any, options: Options) -> Any:
        """The model's own limit (max_position_embeddings) is checked here, before the reference run."""
        resolve_context(SimpleNamespace(max_position_embeddings=recipe.max_length), options.context)
        return recipe

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert_lm(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step, context=ctx.options.context)

    def open(self, artifact: Path) -> CoreMLDecoderSession:
        return CoreMLDecoderSession(artifact)

    def runtime_versions(self) -> dict[str, str]:
        return pkg.runtime_versions()
