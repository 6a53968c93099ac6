"""Core ML embedders: ML Program packages for iOS and macOS, proven on Linux by a NumPy interpreter.
Three registered converters share this module: sentence encoders (`CoreMLEncoder`: BERT, XLM-R),
decoder embedders (`CoreMLDecoderEmbedder`: Qwen3-Embedding, EmbeddingGemma) and multi-vector
encoders (`CoreMLMultiVector`: BGE-M3).

    <out>/fp32/model.mlpackage   float32 compute
    <out>/fp16/model.mlpackage   float16 compute (what Core ML's GPU and Neural Engine run)
    <out>/w8/model.mlpackage     fp16 compute, int8 weights with one scale per block of 32
    <out>/pal6/model.mlpackage   fp16 compute, 6-bit palettized weights (k-means look-up table)
    <out>/pal4/model.mlpackage   fp16 compute, 4-bit palettized weights
    <out>/palmix/model.mlpackage palettes / 8-bit chosen per weight by `modelport quantize-search`
                                 (targets/coreml/quantize.py), written only from its plan
                                 (--quant-plan), gated at the strict q4mix goal
    <out>/config.json tokenizer.json tokenizer_config.json ...   (model_max_length = longest shape)

Every package takes `input_ids`, `attention_mask` (+ `token_type_ids` for BERT), int32 [1, S], and
returns, named for Swift and in the recipe's order (the ONNX target's names):
    last_hidden_state   float32 [1, S, H]
    sentence_embedding  float32 [1, D]: the whole sentence-transformers head (pooling: CLS, mean or
                        last token; Dense layers; normalization; Matryoshka truncation)
    sparse_weights      float32 [1, S]          BGE-M3 only: lexical weight per token
    colbert_vectors     float32 [1, S - 1, C]   BGE-M3 only: ColBERT vectors of tokens 1..S-1
Prompts are the app's part (prepended to the text before tokenizing); the packages record them in
their metadata (`modelport.query_prompt`, `modelport.document_prompt`, `modelport.prompts`).
Compression touches the weights of Linear layers (Dense and heads included) and embedding tables
only (`COMPRESSED_OP_TYPES`): norms, biases and constants folded from positions stay fp16.

Decoder trunks: `torch_model.make_additive_mask_encoder` hands them their attention masks ready
made, one per layer type (causal for Qwen3; bidirectional for EmbeddingGemma, within the sliding
window on its sliding_attention layers) and turns the KV cache off. Their RoPE cos/sin come from
float32 tables (quirk rope-tables, as in the golden): with a flexible shape the angles would
otherwise be computed in the graph, in fp16 in an fp16 package (measured on tiny Qwen3-Embedding,
--shape range: fp16 cos min 0.999913 against 0.999999 with tables; fp16 cannot even hold
positions above 2048 exactly).

Export: torch.export (not torch.jit.trace). Measured on tiny EmbeddingGemma, fixed [1, 128]: both
give the same ops (998) and the same fp32 error (5.7e-6), but torch.export carries the range and
enumerated shapes as symbolic dimensions (jit.trace records Python ints and needs them re-declared)
and converts in ~5 s against ~16 s. Its one cost: coremltools 9 drops gelu's `approximate`
keyword from torch.export graphs, fixed while converting (`gelu_keyword_fix`).

Shapes are one `--shape` option per artifact rather than part of the variant names: the input
shape is the contract an app is written against, and it is the same whichever precision a
device gets; crossing 3 shape modes with 5 variants would give 15 names for one choice.
    fixed[:N]            [1, N]; default N = 128 (capped at the model's max length)
    range[:LO-HI]        [1, LO..HI]; default 1..max length (3.. for BGE-M3: `min_flexible_length`)
    enumerated[:A,B,..]  [1, A] | [1, B] | ...; default 32, 64, 128, 256, 512 up to the max length
The longest shape caps the sequence length: the reference is computed (and the shipped tokenizer
truncates) at that length, so what is validated is what the app can run. Batch is always 1.

Minimum deployment target: the oldest OS that has every feature the package uses (`FEATURES`),
recorded per variant in the manifest with the features that set it.

Validation: Core ML cannot run off macOS, so the validator runs the shipped package with
`modelport.milinterp` (fp16 packages keep fp16 tensors between ops). On macOS it also runs
`MLModel.predict` with CPU_ONLY and then ALL compute units (`CoreMLEncoderSession.extra_metrics`). The packages take
one row of a fixed length, so each golden case runs row by row, padded (after the row, whatever
the tokenizer's padding side: `row_runner`) to the length the package accepts, and the outputs
are cropped back to the case's length.

Determinism: `package.normalize_package` (shared with the decoder) makes every package a function
of its content, so converting twice gives byte-identical packages.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ...errors import ModelportError
from ...families import DECODER_EMBEDDER_FAMILY, ENCODER, MULTI_VECTOR_FAMILY
from ...families.encoder import EncoderRunner as Runner
from ...manifest import TargetInfo
from ...source import ModelCard, read_model_card
from ..registry import ArtifactSession, ConvertContext, Converter, Variant, register
from . import package as pkg
from .package import MACOS, Predict, _package_bytes, _quiet, normalize_package

if TYPE_CHECKING:
    from ...milinterp import InputSpec

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "fp32/model.mlpackage", "fp32", "float32 compute"),
        Variant("fp16", "fp16/model.mlpackage", "fp16", "float16 compute"),
        Variant("w8", "w8/model.mlpackage", "w8", "fp16 compute, int8 weights, symmetric, one scale per 32 weights"),
        Variant("pal6", "pal6/model.mlpackage", "pal6", "fp16 compute, 6-bit palettized weights (k-means LUT)"),
        Variant("pal4", "pal4/model.mlpackage", "pal4", "fp16 compute, 4-bit palettized weights (k-means LUT)"),
        # Searched (targets/coreml/quantize.py): written only from a plan (--quant-plan), never by default.
        Variant("palmix", "palmix/model.mlpackage", "q4mix", "fp16 compute, each weight palettized (4/6/8 bits) "
                "or 8-bit as the quantize-search plan in the manifest says", searched=True),
    )
}
SEARCHED_VARIANTS = ("palmix",)
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in SEARCHED_VARIANTS)
OUTPUT_NAMES = ("last_hidden_state", "sentence_embedding")

SHAPE_MODES = ("fixed", "range", "enumerated")
DEFAULT_FIXED_LENGTH = 128
DEFAULT_ENUMERATED = (32, 64, 128, 256, 512)

# Each feature a package can use, with the oldest OS that runs it.
FEATURES: dict[str, tuple[str, str]] = {
    "ml-program": ("iOS15", "ML Program with int32 inputs and typed fp16/fp32 tensors"),
    "palettized-weights": ("iOS16", "palettized weights (constexpr_lut_to_dense, one table per tensor)"),
    "grouped-palettes": ("iOS18", "palettized weights with one table per group of output channels"),
    "blockwise-int8-weights": ("iOS18", "int8 weights with a scale per block (constexpr_blockwise_shift_scale)"),
    "enumerated-shapes": ("iOS18", "enumerated shapes on several inputs (coremltools 9 allows them from iOS18)"),
}

# Weight compression (coremltools.optimize.coreml), per variant. Measured on all-MiniLM-L6-v2:
# per-channel int8 (iOS16) costs 0.9963 min cosine, one scale per block of 32 input weights keeps
# 0.9996, so w8 is block-wise and needs iOS18 (see thresholds.py for the palettized figures).
W8_BLOCK = 32
PALETTE_BITS = {"pal6": 6, "pal4": 4}
COMPRESSED_OP_TYPES = ("linear", "gather")  # weights of Linear layers and embedding tables
COMPRESSION_MIN_ELEMENTS = 2048  # smaller tensors (biases, LayerNorm, token types) stay fp16
VARIANT_FEATURES = {
    "fp32": ("ml-program",),
    "fp16": ("ml-program",),
    "w8": ("ml-program", "blockwise-int8-weights"),
    "pal6": ("ml-program", "palettized-weights"),
    "pal4": ("ml-program", "palettized-weights"),
}

Step = Callable[[str], Any]


# ---------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class ShapePlan:
    """The input shapes of every package in one artifact (batch is always 1)."""

    mode: str  # fixed | range | enumerated
    lengths: tuple[int, ...]  # fixed: (N,); range: (LO, HI); enumerated: ascending

    @property
    def max_length(self) -> int:
        return self.lengths[-1]

    @property
    def example_length(self) -> int:
        """Sequence length of the traced example: 128 where allowed; for flexible shapes never 1
        (torch.export specializes dimensions of size 0 and 1)."""
        if self.mode == "enumerated" and DEFAULT_FIXED_LENGTH not in self.lengths:
            return self.max_length
        return min(max(DEFAULT_FIXED_LENGTH, self.lengths[0]), self.max_length)

    def describe(self) -> str:
        if self.mode == "fixed":
            return f"fixed [1, {self.lengths[0]}]"
        if self.mode == "range":
            return f"range [1, {self.lengths[0]}..{self.lengths[1]}]"
        return f"enumerated [1, {'|'.join(map(str, self.lengths))}]"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "lengths": list(self.lengths), "batch": 1, "text": self.describe()}


def min_flexible_length(recipe) -> int:
    """The shortest length a flexible (range / enumerated) package can take. BGE-M3's ColBERT head
    runs on tokens 1..S-1, and torch.export cannot keep S - 1 symbolic through the Linear's reshape
    when it may be 1 (it guards S - 1 != 1), so its flexible shapes start at 3 tokens; real texts
    have 2 at least ([CLS] text [EOS]) and a 2-token text is padded by one (masked) token."""
    return 3 if recipe.heads is not None else 1


def parse_shape(spec: str | None, max_length: int, min_length: int = 1) -> ShapePlan:
    """`--shape` -> ShapePlan, checked against the model's max length (and, for flexible shapes,
    the family's shortest length: `min_flexible_length`)."""
    text = spec or "fixed"
    mode, _, arg = text.partition(":")
    usage = "expected fixed[:N], range[:LO-HI] or enumerated[:N,N,...]"
    if mode not in SHAPE_MODES:
        raise ModelportError(f"unknown --shape {text!r}: {usage}")
    try:
        if mode == "fixed":
            lengths: tuple[int, ...] = (int(arg),) if arg else (min(DEFAULT_FIXED_LENGTH, max_length),)
        elif mode == "range":
            lo, hi = (int(x) for x in arg.split("-")) if arg else (min_length, max_length)
            lengths = (lo, hi)
        else:
            lengths = tuple(sorted({int(x) for x in arg.split(",")})) if arg else _default_enumerated(max_length)
    except ValueError:
        raise ModelportError(f"bad --shape {text!r}: {usage}") from None
    if min(lengths) < 1:
        raise ModelportError(f"bad --shape {text!r}: lengths must be >= 1")
    if mode == "range" and lengths[0] >= lengths[1]:
        raise ModelportError(f"bad --shape {text!r}: range needs LO < HI (one length is --shape fixed:N)")
    if mode == "enumerated" and len(lengths) < 2:
        raise ModelportError(f"bad --shape {text!r}: enumerated needs two lengths or more (one is --shape fixed:N)")
    if mode != "fixed" and min(lengths) < min_length:
        raise ModelportError(f"--shape {text!r}: this model's flexible shapes start at {min_length} tokens "
                             "(BGE-M3's ColBERT output drops the first token; see min_flexible_length)")
    if max(lengths) > max_length:
        raise ModelportError(f"--shape {text!r} exceeds the model's max length {max_length}")
    return ShapePlan(mode, lengths)


def _default_enumerated(max_length: int) -> tuple[int, ...]:
    return tuple(sorted({n for n in DEFAULT_ENUMERATED if n < max_length} | {max_length}))


def adapt_recipe(recipe, shape: str | None):
    """The recipe at the length the packages accept: a fixed [1, 128] model truncates at 128, so
    the reference must be computed (and the tokenizer must truncate) at 128 too."""
    plan = parse_shape(shape, recipe.max_length, min_flexible_length(recipe))
    if plan.max_length >= recipe.max_length:
        return recipe
    note = f"max_length {plan.max_length}: capped by the Core ML input shape {plan.describe()}"
    return dataclasses.replace(recipe, max_length=plan.max_length, notes=recipe.notes + (note,))


def deployment_target(variant: str, plan: ShapePlan, used: tuple[str, ...] | None = None) -> tuple[str, list[str]]:
    """The oldest iOS that has every feature of this package, and those features (`used`: a
    searched variant's, from its quantization plan)."""
    features = list(used or VARIANT_FEATURES[variant]) + (["enumerated-shapes"] if plan.mode == "enumerated" else [])
    target = max((FEATURES[f][0] for f in features), key=lambda t: int(t[3:]))
    return target, [f"{FEATURES[f][0]}: {FEATURES[f][1]}" for f in features]


# ---------------------------------------------------------------------------------------------
# Conversion


def export_program(source, recipe, plan: ShapePlan):
    """torch.export of the additive-mask encoder with int32 inputs (Core ML has no int64 arrays)."""
    import torch

    from ...torch_model import load_hf_model, make_additive_mask_encoder

    encoder = make_additive_mask_encoder(load_hf_model(source), recipe, source.path)
    n = plan.example_length
    example = {"input_ids": torch.ones((1, n), dtype=torch.int32), "attention_mask": torch.ones((1, n), dtype=torch.int32),
               "token_type_ids": torch.zeros((1, n), dtype=torch.int32)}
    dynamic = None
    if plan.mode != "fixed":
        seq = torch.export.Dim("sequence", min=plan.lengths[0], max=plan.max_length)
        dynamic = {name: {1: seq} for name in recipe.inputs}
    with torch.no_grad():
        program = torch.export.export(encoder, tuple(example[n] for n in recipe.inputs),
                                      dynamic_shapes=dynamic, strict=False)
        # coremltools converts the core ATen opset only.
        return program.run_decompositions({})


@contextlib.contextmanager
def gelu_keyword_fix() -> Iterator[None]:
    """coremltools 9's torch `gelu` converter reads `approximate` only as a positional input (how
    TorchScript records it); torch.export keeps it a keyword (`aten.gelu(x, approximate="tanh")`),
    so the tanh gelu silently converts to the exact one (apple/coremltools PR #2863, open). That
    is every `gelu_pytorch_tanh` model, Gemma's among them: tiny EmbeddingGemma's fp32 package
    was 2.2e-4 off the golden on last_hidden_state until this fix, 0 on the mode it should have.
    While converting, the gelu converter reads the keyword too (the raw literal the frontend
    recorded, not a context lookup: a node may be *named* "tanh"); restored on exit.
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY as registry

    original = registry["gelu"]
    modes = {"tanh": "TANH_APPROXIMATION", "none": "EXACT"}

    def gelu(context: Any, node: Any) -> None:
        keyword = (node.kwinputs or {}).get("approximate")
        if not keyword:
            return original(context, node)
        if keyword[0] not in modes:
            raise ModelportError(f"gelu approximate={keyword[0]!r} has no Core ML gelu mode")
        x = torch_ops._get_inputs(context, node, expected=1)[0]
        context.add(mb.gelu(x=x, mode=modes[keyword[0]], name=node.name))

    aliases = [name for name, fn in registry.name_to_func_mapping.items() if fn is original]
    for name in aliases:
        registry[name] = gelu
    try:
        yield
    finally:
        for name in aliases:
            registry[name] = original


def convert_program(program, recipe, plan: ShapePlan, fp16: bool, target: str):
    """One ct.convert: an ML Program with float32 outputs whatever the compute precision."""
    import coremltools as ct

    kwargs: dict[str, Any] = {}
    if plan.mode == "enumerated":  # the only mode the exported program cannot express itself
        default = plan.example_length
        shapes = ct.EnumeratedShapes(shapes=[[1, n] for n in plan.lengths], default=[1, default])
        kwargs["inputs"] = [ct.TensorType(name=n, shape=shapes, dtype=np.int32) for n in recipe.inputs]
    with gelu_keyword_fix():
        return ct.convert(
            program,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, target),
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in recipe.outputs],
            skip_model_load=True,  # loading compiles on macOS and fails on Linux; validation loads the saved file
            **kwargs,
        )


def compress(mlmodel, variant: str):
    """Weight compression of Linear and embedding weights; other constants keep fp16."""
    import coremltools.optimize.coreml as cto

    if variant == "w8":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_block",
                                                block_size=W8_BLOCK, weight_threshold=COMPRESSION_MIN_ELEMENTS)
        apply = cto.linear_quantize_weights
    else:
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS[variant], granularity="per_tensor",
                                           weight_threshold=COMPRESSION_MIN_ELEMENTS)
        apply = cto.palettize_weights
    config = cto.OptimizationConfig(op_type_configs={t: op_config for t in COMPRESSED_OP_TYPES})
    return apply(mlmodel, config)


def pooling_text(recipe) -> str:
    """What `sentence_embedding` is, in words (the recipe's whole sentence-transformers head)."""
    head = recipe.head
    pooled = {"mean": "mean of the token embeddings over attention_mask",
              "cls": "the first ([CLS]) token embedding",
              "last_token": "the last real token's embedding (the last position whose attention_mask is 1)"}
    parts = [pooled[recipe.pooling]]
    for layer in head.dense:
        parts.append(f"Dense {layer.in_features}->{layer.out_features}"
                     + ("" if layer.activation == "identity" else f" + {layer.activation}"))
    if head.normalize:
        parts.append("L2-normalized")
    if head.truncate_dim:
        parts.append(f"truncated to {head.truncate_dim} dims" + (" and re-normalized" if head.normalize else ""))
    return ", ".join(parts)


def output_shapes(recipe, seq: str) -> dict[str, str]:
    """Type and shape of every output, in recipe.outputs order (the package's order)."""
    shapes = {"last_hidden_state": f"float32 [1, {seq}, {recipe.hidden_size}]",
              "sentence_embedding": f"float32 [1, {recipe.embedding_dim}]",
              "sparse_weights": f"float32 [1, {seq}]"}
    if recipe.heads is not None:
        shapes["colbert_vectors"] = f"float32 [1, {seq} - 1, {recipe.heads.colbert_dim}]"
    return {n: shapes[n] for n in recipe.outputs}


def output_descriptions(recipe, seq: str) -> dict[str, str]:
    """Shape and meaning of every output, for Xcode."""
    meaning = {
        "last_hidden_state": "token embeddings; rows at padding positions are undefined",
        "sentence_embedding": f"sentence embedding: {pooling_text(recipe)}",
        "sparse_weights": "lexical weight of every token: ReLU(sparse_linear), 0 on padding and special tokens; "
                          "the sparse vector is the max per token id",
        "colbert_vectors": "ColBERT vectors, one per token after the first: colbert_linear, zero on padding, "
                           "L2-normalized; score with MaxSim",
    }
    return {n: f"{shape}: {meaning[n]}" for n, shape in output_shapes(recipe, seq).items()}


def describe(mlmodel, source, recipe, plan: ShapePlan, card: ModelCard, pad_token_id: int) -> None:
    """Metadata Xcode shows and apps read: from the model card, plus what the tensors mean."""
    import json

    from ... import __version__

    seq = "S" if plan.mode != "fixed" else str(plan.lengths[0])
    from ...families import get as family

    what = family(recipe.family).what
    mlmodel.author = card.author or "not stated in the model card"
    mlmodel.license = card.license or "not stated in the model card"
    mlmodel.version = source.revision or ""
    mlmodel.short_description = (
        (card.summary + " " if card.summary else f"{source.name}: {what}. ")
        + f"Converted by modelport {__version__}: token embeddings and the sentence embedding ({pooling_text(recipe)})."
    )
    inputs = {
        "input_ids": f"token ids from tokenizer.json, int32 [1, {seq}] ({plan.describe()}); "
                     f"pad after the text with {pad_token_id}",
        "attention_mask": f"1 for text tokens, 0 for padding, int32 [1, {seq}]",
        "token_type_ids": f"segment ids, all 0 for one text, int32 [1, {seq}]",
    }
    for name in recipe.inputs:
        mlmodel.input_description[name] = inputs[name]
    for name, text in output_descriptions(recipe, seq).items():
        mlmodel.output_description[name] = text
    head = recipe.head
    meta = {
        "modelport.version": __version__,
        "modelport.source": source.name,
        "modelport.family": recipe.family,
        "modelport.pooling": recipe.pooling,
        "modelport.normalize": str(recipe.normalize).lower(),
        "modelport.max_length": str(plan.max_length),
        "modelport.shape": plan.describe(),
        "modelport.pad_token_id": str(pad_token_id),
        "modelport.embedding_dim": str(recipe.embedding_dim),
    }
    if head.query_prompt or head.document_prompt:  # what the app prepends before tokenizing
        meta["modelport.query_prompt"] = head.query_prompt
        meta["modelport.document_prompt"] = head.document_prompt
        meta["modelport.prompts"] = json.dumps(dict(head.prompts), ensure_ascii=False, sort_keys=True)
    if head.truncate_dim:
        meta["modelport.truncate_dim"] = str(head.truncate_dim)
    mlmodel.user_defined_metadata.update(meta)


def _pad_token_id(config: dict[str, Any], model_dir: Path | None = None) -> int:
    """config.json's pad_token_id, else the tokenizer's pad token (Qwen3 configs have none), else 0.
    Documentation for the app: padding is masked, so its id does not change the outputs."""
    pad = config.get("pad_token_id")
    if isinstance(pad, int):
        return pad
    if model_dir is not None:
        from ...fsutil import read_json

        try:
            token = read_json(model_dir / "tokenizer_config.json").get("pad_token")
            tok = read_json(model_dir / "tokenizer.json")
        except (OSError, ValueError, ModelportError):
            return 0
        token = token.get("content") if isinstance(token, dict) else token
        vocab = (tok.get("model") or {}).get("vocab")
        ids = dict(vocab) if isinstance(vocab, dict) else {}
        ids.update({t.get("content"): t.get("id") for t in tok.get("added_tokens", [])})
        if isinstance(ids.get(token), int):
            return ids[token]
    return 0


def convert(source, recipe, variants: list[str], out: Path, step: Step, shape: str | None = None,
            quant_plan: str | None = None) -> TargetInfo:
    """Write the requested variants under `out`; returns the target section of the manifest.
    Searched variants (palmix) are written from their quantization plan (`quant_plan`: the
    --quant-plan folder or file), recorded under the variant with its digest."""
    from ... import milinterp
    from ...layout import copy_model_files
    from ...quant.plan import plan_for

    quant_plans = {v: plan_for(quant_plan, v, "coreml", source.name) for v in variants if v in SEARCHED_VARIANTS}
    plan = parse_shape(shape, recipe.max_length, min_flexible_length(recipe))
    if plan.max_length != recipe.max_length:
        raise ModelportError(f"recipe max_length {recipe.max_length} does not match {plan.describe()} (adapt_recipe)")
    card = read_model_card(source.path)
    pad_token_id = _pad_token_id(source.config, source.path)
    step(f"export (torch.export, int32 inputs, {plan.describe()})")
    with _quiet():
        program = export_program(source, recipe, plan)
    converted: dict[tuple[bool, str], Any] = {}  # (fp16, target) -> converted model, shared by variants
    per_variant: dict[str, dict[str, Any]] = {}
    for name in variants:
        used = None
        if name in quant_plans:
            from .quantize import plan_features

            used = plan_features(quant_plans[name])
        target, features = deployment_target(name, plan, used)
        step(f"write {name} ({VARIANTS[name].description}; {target})")
        fp16 = name != "fp32"
        with _quiet():
            if (fp16, target) not in converted:
                converted[(fp16, target)] = convert_program(program, recipe, plan, fp16, target)
            mlmodel = converted[(fp16, target)]
            if name in ("w8", *PALETTE_BITS):
                mlmodel = compress(mlmodel, name)
            elif name in quant_plans:
                from .quantize import apply_plan

                mlmodel = apply_plan(mlmodel, quant_plans[name])
            describe(mlmodel, source, recipe, plan, card, pad_token_id)
            package = out / VARIANTS[name].path
            package.parent.mkdir(parents=True, exist_ok=True)
            mlmodel.save(str(package))
        normalize_package(package)
        per_variant[name] = {
            "minimum_deployment_target": f"{target} / {MACOS[target]}",
            "deployment_target_features": features,
            "bytes": _package_bytes(package),
            "ops": milinterp.op_counts(package),
        }
        if name in quant_plans:
            per_variant[name].update(plan=quant_plans[name].to_json(), plan_sha256=quant_plans[name].digest())
    copy_model_files(source, recipe, out)
    return TargetInfo.of(
        "coreml", recipe.family, variants, VARIANTS, per_variant,
        format="mlprogram",
        shape=plan.to_json(),
        inputs={n: f"int32 [1, {'S' if plan.mode != 'fixed' else plan.lengths[0]}]" for n in recipe.inputs},
        outputs=output_shapes(recipe, "S" if plan.mode != "fixed" else str(plan.lengths[0])),
        pad_token_id=pad_token_id,
        model_card=dataclasses.asdict(card),
    )


# ---------------------------------------------------------------------------------------------
# Running a package for the validator


def padded_length(spec: "InputSpec", n: int) -> int:
    """The sequence length a package runs a row of n tokens at (the row is padded up to it)."""
    if spec.enumerated:
        fits = sorted(s[1] for s in spec.enumerated if s[1] >= n)
        if not fits:
            raise ModelportError(f"{n} tokens do not fit the package's shapes ({spec.describe()})")
        return fits[0]
    if spec.ranges:
        lo, hi = spec.ranges[1]
        if hi >= 0 and n > hi:
            raise ModelportError(f"{n} tokens do not fit the package's shapes ({spec.describe()})")
        return max(n, lo)
    if n > spec.shape[1]:
        raise ModelportError(f"{n} tokens do not fit the package's shape ({spec.describe()})")
    return spec.shape[1]


def package_contract(package: Path) -> tuple["InputSpec", int]:
    """What the shipped file accepts (input_ids' shapes) and the pad id it documents."""
    from ... import milinterp

    spec, _ = milinterp.read_spec(package)
    ids = next(s for s in milinterp.input_specs(spec) if s.name == "input_ids")
    pad = int(spec.description.metadata.userDefined.get("modelport.pad_token_id", "0"))
    return ids, pad


# Outputs with one row per token, and how many leading tokens each leaves out (ColBERT skips CLS).
TOKEN_OUTPUTS = {"last_hidden_state": 0, "sparse_weights": 0, "colbert_vectors": 1}


def row_runner(predict: Predict, ids_spec: "InputSpec", pad_token_id: int,
               outputs: tuple[str, ...] = OUTPUT_NAMES) -> Runner:
    """Run a batch-1 package over a golden case: each row alone, padded to the length the package
    accepts, outputs (in `outputs` order: the golden's) cropped back to the case's length.

    The golden row goes in as it is, padding included, and the package's extra padding goes after
    it. For a left-padded row (Qwen3-Embedding's batches) that keeps every real token at the
    position the golden computed it at, so RoPE sees the same angles, and the padding after it is
    invisible to a causal trunk; last-token pooling finds the last real token from the mask, not
    from the length. Stripping the left padding instead would move the tokens: equal in exact
    arithmetic (RoPE is relative), not in float32."""

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        rows, n = feeds["input_ids"].shape
        length = padded_length(ids_spec, n)
        results: list[list[np.ndarray]] = [[] for _ in outputs]
        for r in range(rows):
            row = {}
            for name, value in feeds.items():
                padded = np.full((1, length), pad_token_id if name == "input_ids" else 0, dtype=np.int32)
                padded[0, :n] = value[r]
                row[name] = padded
            out = predict(row)
            for i, name in enumerate(outputs):
                value = np.asarray(out[name], dtype=np.float32)[0]
                if name in TOKEN_OUTPUTS:
                    value = value[: n - TOKEN_OUTPUTS[name]]
                results[i].append(value)
        return tuple(np.stack(r) for r in results)

    return run


def package_contract(package: Path) -> tuple["InputSpec", int]:
    """What the shipped file accepts (input_ids' shapes) and the pad id it documents."""
    from ... import milinterp

    spec, _ = milinterp.read_spec(package)
    ids = next(s for s in milinterp.input_specs(spec) if s.name == "input_ids")
    pad = int(spec.description.metadata.userDefined.get("modelport.pad_token_id", "0"))
    return ids, pad


def package_outputs(package: Path) -> tuple[str, ...]:
    """The package's output names, in its order (the recipe's: what the golden stores)."""
    from ... import milinterp

    spec, _ = milinterp.read_spec(package)
    return tuple(o.name for o in spec.description.output)


def load_runner(artifact: Path, variant: str) -> Runner:
    """The shipped package, run by the reference interpreter (every platform)."""
    from ... import milinterp

    return interpreter_runner(milinterp.Interpreter(artifact / VARIANTS[variant].path))


def interpreter_runner(interpreter) -> Runner:
    """A loaded package (milinterp.Interpreter) as a golden-case runner."""
    ids_spec, pad = package_contract(interpreter.package)
    return row_runner(interpreter.run, ids_spec, pad, package_outputs(interpreter.package))


# ---------------------------------------------------------------------------------------------
# What the quantization search (quantize.py) takes from this converter


def fp16_program(source, recipe, shape: str, target: str):
    """The fp16 ML Program of `--shape shape` for one deployment target (no package written)."""
    plan = parse_shape(shape, recipe.max_length, min_flexible_length(recipe))
    with _quiet():
        return convert_program(export_program(source, recipe, plan), recipe, plan, True, target)


def sentence_embeddings(interpreter, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Sentence embeddings of every row of `feeds`, each row run alone at the package's length."""
    outputs = package_outputs(interpreter.package)
    return interpreter_runner(interpreter)(feeds)[outputs.index("sentence_embedding")]


def search_hooks():
    from .quantize import EncoderHooks

    return EncoderHooks(adapt_recipe=adapt_recipe, fp16_program=fp16_program, embed=sentence_embeddings,
                        fp32_package=VARIANTS["fp32"].path)


def extra_metrics(artifact: Path, variant: str, run: Runner, golden) -> dict[str, Any]:
    """On macOS: the same golden comparison with MLModel.predict (CPU_ONLY, then ALL), judged by
    the artifact's family (multi-vector packages on their sparse and ColBERT outputs too)."""
    if not pkg.coreml_runtime_available():  # looked up on use: tests fake macOS
        return {}
    from ... import families, manifest

    family = families.get(manifest.load(artifact)["target"]["family"])
    package = artifact / VARIANTS[variant].path
    ids_spec, pad = package_contract(package)
    outputs = package_outputs(package)
    precision = VARIANTS[variant].precision
    extra: dict[str, Any] = {"failures": []}
    for units in pkg.COMPUTE_UNITS:
        gate = "fp16" if units != "CPU_ONLY" and precision == "fp32" else precision
        runner = row_runner(pkg.predict_with_coreml(package, units), ids_spec, pad, outputs)
        judgement = family.judge(artifact, golden, variant, gate, runner)
        extra[f"coreml_{units.lower()}"] = {"gate": gate, **{k: v for k, v in judgement.metrics.to_json().items()
                                                            if k != "cases"}}
        extra["failures"] += [f"Core ML {units}: {f}" for f in judgement.failures]
    return extra


def runtime_notes(target: TargetInfo) -> list[str]:
    """How the packages were run, for the validation report."""
    shape = target.details["shape"]
    rows = {
        "fixed": f"padded to {shape['lengths'][0]} tokens",
        "range": "at the case's own length",
        "enumerated": "padded to the shortest enumerated length that fits",
    }[shape["mode"]]
    notes = [f"input shape {shape['text']}: each golden case runs row by row (batch 1), {rows}; "
             "outputs are cropped back to the case's length"]
    if pkg.coreml_runtime_available():
        notes.insert(0, "validated with the reference interpreter and with Core ML (MLModel.predict, "
                        f"{' then '.join(pkg.COMPUTE_UNITS)}; results under extra)")
    else:
        notes.insert(0, "Core ML runtime not available: validated with the reference interpreter "
                        "(modelport.milinterp, NumPy; fp16 packages keep fp16 tensors between ops)")
    return notes


# ---------------------------------------------------------------------------------------------
# The registry's view


class CoreMLEncoderSession(ArtifactSession):
    """One Core ML encoder artifact: interpreter runners, Core ML itself on macOS."""

    def runner(self, variant: str) -> Runner:
        return load_runner(self.root, variant)

    def extra_metrics(self, variant: str, runner: Any, golden: Any) -> dict[str, Any]:
        return extra_metrics(self.root, variant, runner, golden)

    def notes(self) -> list[str]:
        from ... import manifest

        return runtime_notes(TargetInfo.from_json(manifest.load(self.root)["target"]))


@register
class CoreMLEncoder(Converter):
    target = "coreml"
    family = ENCODER.name
    variants = VARIANTS
    defaults = DEFAULT_VARIANTS
    requires = ("torch", "transformers", "coremltools")
    runtime_requires = ("coremltools",)

    @dataclass(frozen=True)
    class Options:
        shape: str | None = None  # fixed[:N] | range[:LO-HI] | enumerated[:A,B,...]
        quant_plan: str | None = None  # searched variants (palmix): a quantize-search folder or plan file

    def adapt_recipe(self, recipe: Any, options: Options) -> Any:
        return adapt_recipe(recipe, options.shape)

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step, shape=ctx.options.shape,
                       quant_plan=ctx.options.quant_plan)

    def quantize_search(self, ctx: Any) -> Any:
        """Palette search for `palmix` (targets/coreml/quantize.py)."""
        from .quantize import search

        return search(ctx, search_hooks())

    def open(self, artifact: Path) -> CoreMLEncoderSession:
        return CoreMLEncoderSession(artifact)

    def runtime_versions(self) -> dict[str, str]:
        return pkg.runtime_versions()


@register
class CoreMLDecoderEmbedder(CoreMLEncoder):
    """Qwen3-Embedding, EmbeddingGemma: the same export and variants. The trunk gets its masks
    ready-made per layer type (causal for Qwen3; bidirectional, with the sliding window on
    sliding_attention layers, for EmbeddingGemma): `torch_model.decoder_attention_masks`."""

    family = DECODER_EMBEDDER_FAMILY.name
    # The palette search is for sentence encoders (its dev-set judgement and embedding-table rule are
    # measured there); these families keep the fixed variants and the registry's refusal.
    variants = {k: v for k, v in VARIANTS.items() if k not in SEARCHED_VARIANTS}
    quantize_search = Converter.quantize_search


@register
class CoreMLMultiVector(CoreMLEncoder):
    """BGE-M3: the same export with two more named outputs, sparse_weights and colbert_vectors."""

    family = MULTI_VECTOR_FAMILY.name
    variants = {k: v for k, v in VARIANTS.items() if k not in SEARCHED_VARIANTS}  # as CoreMLDecoderEmbedder
    quantize_search = Converter.quantize_search
