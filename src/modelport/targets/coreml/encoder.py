"""Core ML sentence encoders (`CoreMLEncoder`): ML Program packages for iOS and macOS, proven on Linux
by a NumPy interpreter.

    <out>/fp32/model.mlpackage   float32 compute
    <out>/fp16/model.mlpackage   float16 compute (what Core ML's GPU and Neural Engine run)
    <out>/w8/model.mlpackage     fp16 compute, int8 weights with one scale per block of 32
    <out>/pal6/model.mlpackage   fp16 compute, 6-bit palettized weights (k-means look-up table)
    <out>/pal4/model.mlpackage   fp16 compute, 4-bit palettized weights
    <out>/config.json tokenizer.json tokenizer_config.json ...   (model_max_length = longest shape)

Every package takes `input_ids`, `attention_mask` (+ `token_type_ids` for BERT), int32 [1, S], and
returns `last_hidden_state` float32 [1, S, H] and `sentence_embedding` float32 [1, H] (the
recipe's pooling and normalization), like the ONNX target. Compression touches the weights of
Linear layers and embedding tables only (`COMPRESSED_OP_TYPES`): LayerNorms, biases and constants
folded from positions stay fp16.

Shapes are one `--shape` option per artifact rather than part of the variant names: the input
shape is the contract an app is written against, and it is the same whichever precision a
device gets; crossing 3 shape modes with 5 variants would give 15 names for one choice.
    fixed[:N]            [1, N]; default N = 128 (capped at the model's max length)
    range[:LO-HI]        [1, LO..HI]; default 1..max length
    enumerated[:A,B,..]  [1, A] | [1, B] | ...; default 32, 64, 128, 256, 512 up to the max length
The longest shape caps the sequence length: the reference is computed (and the shipped tokenizer
truncates) at that length, so what is validated is what the app can run. Batch is always 1.

Minimum deployment target: the oldest OS that has every feature the package uses (`FEATURES`),
recorded per variant in the manifest with the features that set it.

Validation: Core ML cannot run off macOS, so the validator runs the shipped package with
`modelport.milinterp` (fp16 packages keep fp16 tensors between ops). On macOS it also runs
`MLModel.predict` with CPU_ONLY and then ALL compute units (`CoreMLEncoderSession.extra_metrics`). The packages take
one row of a fixed length, so each golden case runs row by row, padded to the length the package
accepts, and the outputs are cropped back to the case's length.

Determinism: `package.normalize_package` (shared with the decoder) makes every package a function
of its content, so converting twice gives byte-identical packages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ...errors import ModelportError
from ...families import ENCODER
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
    )
}
DEFAULT_VARIANTS = tuple(VARIANTS)
OUTPUT_NAMES = ("last_hidden_state", "sentence_embedding")

SHAPE_MODES = ("fixed", "range", "enumerated")
DEFAULT_FIXED_LENGTH = 128
DEFAULT_ENUMERATED = (32, 64, 128, 256, 512)

# Each feature a package can use, with the oldest OS that runs it.
FEATURES: dict[str, tuple[str, str]] = {
    "ml-program": ("iOS15", "ML Program with int32 inputs and typed fp16/fp32 tensors"),
    "palettized-weights": ("iOS16", "palettized weights (constexpr_lut_to_dense, one table per tensor)"),
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


def parse_shape(spec: str | None, max_length: int) -> ShapePlan:
    """`--shape` -> ShapePlan, checked against the model's max length."""
    text = spec or "fixed"
    mode, _, arg = text.partition(":")
    usage = "expected fixed[:N], range[:LO-HI] or enumerated[:N,N,...]"
    if mode not in SHAPE_MODES:
        raise ModelportError(f"unknown --shape {text!r}: {usage}")
    try:
        if mode == "fixed":
            lengths: tuple[int, ...] = (int(arg),) if arg else (min(DEFAULT_FIXED_LENGTH, max_length),)
        elif mode == "range":
            lo, hi = (int(x) for x in arg.split("-")) if arg else (1, max_length)
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
    if max(lengths) > max_length:
        raise ModelportError(f"--shape {text!r} exceeds the model's max length {max_length}")
    return ShapePlan(mode, lengths)


def _default_enumerated(max_length: int) -> tuple[int, ...]:
    return tuple(sorted({n for n in DEFAULT_ENUMERATED if n < max_length} | {max_length}))


def adapt_recipe(recipe, shape: str | None):
    """The recipe at the length the packages accept: a fixed [1, 128] model truncates at 128, so
    the reference must be computed (and the tokenizer must truncate) at 128 too."""
    plan = parse_shape(shape, recipe.max_length)
    if plan.max_length >= recipe.max_length:
        return recipe
    note = f"max_length {plan.max_length}: capped by the Core ML input shape {plan.describe()}"
    return dataclasses.replace(recipe, max_length=plan.max_length, notes=recipe.notes + (note,))


def deployment_target(variant: str, plan: ShapePlan) -> tuple[str, list[str]]:
    """The oldest iOS that has every feature of this package, and those features."""
    features = list(VARIANT_FEATURES[variant]) + (["enumerated-shapes"] if plan.mode == "enumerated" else [])
    target = max((FEATURES[f][0] for f in features), key=lambda t: int(t[3:]))
    return target, [f"{FEATURES[f][0]}: {FEATURES[f][1]}" for f in features]


# ---------------------------------------------------------------------------------------------
# Conversion


def export_program(source, recipe, plan: ShapePlan):
    """torch.export of the additive-mask encoder with int32 inputs (Core ML has no int64 arrays)."""
    import torch

    from ...torch_model import load_hf_model, make_additive_mask_encoder

    encoder = make_additive_mask_encoder(load_hf_model(source), recipe)
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


def convert_program(program, recipe, plan: ShapePlan, fp16: bool, target: str):
    """One ct.convert: an ML Program with float32 outputs whatever the compute precision."""
    import coremltools as ct

    kwargs: dict[str, Any] = {}
    if plan.mode == "enumerated":  # the only mode the exported program cannot express itself
        default = plan.example_length
        shapes = ct.EnumeratedShapes(shapes=[[1, n] for n in plan.lengths], default=[1, default])
        kwargs["inputs"] = [ct.TensorType(name=n, shape=shapes, dtype=np.int32) for n in recipe.inputs]
    return ct.convert(
        program,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        minimum_deployment_target=getattr(ct.target, target),
        outputs=[ct.TensorType(name=n, dtype=np.float32) for n in OUTPUT_NAMES],
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


def describe(mlmodel, source, recipe, plan: ShapePlan, card: ModelCard, pad_token_id: int) -> None:
    """Metadata Xcode shows and apps read: from the model card, plus what the tensors mean."""
    from ... import __version__

    seq = "S" if plan.mode != "fixed" else str(plan.lengths[0])
    pooled = {"mean": "mean of the token embeddings over attention_mask", "cls": "the first ([CLS]) token embedding"}
    pooling = pooled[recipe.pooling] + (", L2-normalized" if recipe.normalize else "")
    mlmodel.author = card.author or "not stated in the model card"
    mlmodel.license = card.license or "not stated in the model card"
    mlmodel.version = source.revision or ""
    mlmodel.short_description = (
        (card.summary + " " if card.summary else f"{source.name}: sentence encoder. ")
        + f"Converted by modelport {__version__}: token embeddings and the sentence embedding ({pooling})."
    )
    inputs = {
        "input_ids": f"token ids from tokenizer.json, int32 [1, {seq}] ({plan.describe()}); "
                     f"pad after the text with {pad_token_id}",
        "attention_mask": f"1 for text tokens, 0 for padding, int32 [1, {seq}]",
        "token_type_ids": f"segment ids, all 0 for one text, int32 [1, {seq}]",
    }
    for name in recipe.inputs:
        mlmodel.input_description[name] = inputs[name]
    mlmodel.output_description["last_hidden_state"] = (
        f"token embeddings, float32 [1, {seq}, {recipe.hidden_size}]; rows at padding positions are undefined")
    mlmodel.output_description["sentence_embedding"] = f"sentence embedding, float32 [1, {recipe.hidden_size}]: {pooling}"
    mlmodel.user_defined_metadata.update({
        "modelport.version": __version__,
        "modelport.source": source.name,
        "modelport.pooling": recipe.pooling,
        "modelport.normalize": str(recipe.normalize).lower(),
        "modelport.max_length": str(plan.max_length),
        "modelport.shape": plan.describe(),
        "modelport.pad_token_id": str(pad_token_id),
    })


def _pad_token_id(config: dict[str, Any]) -> int:
    pad = config.get("pad_token_id")
    return int(pad) if isinstance(pad, int) else 0


def convert(source, recipe, variants: list[str], out: Path, step: Step, shape: str | None = None) -> TargetInfo:
    """Write the requested variants under `out`; returns the target section of the manifest."""
    from ... import milinterp
    from ...layout import copy_model_files

    plan = parse_shape(shape, recipe.max_length)
    if plan.max_length != recipe.max_length:
        raise ModelportError(f"recipe max_length {recipe.max_length} does not match {plan.describe()} (adapt_recipe)")
    card = read_model_card(source.path)
    pad_token_id = _pad_token_id(source.config)
    step(f"export (torch.export, int32 inputs, {plan.describe()})")
    with _quiet():
        program = export_program(source, recipe, plan)
    converted: dict[tuple[bool, str], Any] = {}  # (fp16, target) -> converted model, shared by variants
    per_variant: dict[str, dict[str, Any]] = {}
    for name in variants:
        target, features = deployment_target(name, plan)
        step(f"write {name} ({VARIANTS[name].description}; {target})")
        fp16 = name != "fp32"
        with _quiet():
            if (fp16, target) not in converted:
                converted[(fp16, target)] = convert_program(program, recipe, plan, fp16, target)
            mlmodel = converted[(fp16, target)]
            if name in ("w8", *PALETTE_BITS):
                mlmodel = compress(mlmodel, name)
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
    copy_model_files(source, recipe, out)
    return TargetInfo.of(
        "coreml", ENCODER.name, variants, VARIANTS, per_variant,
        format="mlprogram",
        shape=plan.to_json(),
        inputs={n: f"int32 [1, {'S' if plan.mode != 'fixed' else plan.lengths[0]}]" for n in recipe.inputs},
        outputs={"last_hidden_state": f"float32 [1, S, {recipe.hidden_size}]",
                 "sentence_embedding": f"float32 [1, {recipe.hidden_size}]"},
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


def row_runner(predict: Predict, ids_spec: "InputSpec", pad_token_id: int) -> Runner:
    """Run a batch-1 package over a golden case: each row alone, padded to the length the package
    accepts, outputs cropped back to the case's length."""

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        rows, n = feeds["input_ids"].shape
        length = padded_length(ids_spec, n)
        hidden, pooled = [], []
        for r in range(rows):
            row = {}
            for name, value in feeds.items():
                padded = np.full((1, length), pad_token_id if name == "input_ids" else 0, dtype=np.int32)
                padded[0, :n] = value[r]
                row[name] = padded
            out = predict(row)
            hidden.append(np.asarray(out["last_hidden_state"], dtype=np.float32)[0, :n])
            pooled.append(np.asarray(out["sentence_embedding"], dtype=np.float32)[0])
        return np.stack(hidden), np.stack(pooled)

    return run


def load_runner(artifact: Path, variant: str) -> Runner:
    """The shipped package, run by the reference interpreter (every platform)."""
    from ... import milinterp

    package = artifact / VARIANTS[variant].path
    interpreter = milinterp.Interpreter(package)
    ids_spec, pad = package_contract(package)
    return row_runner(interpreter.run, ids_spec, pad)


def extra_metrics(artifact: Path, variant: str, run: Runner, golden) -> dict[str, Any]:
    """On macOS: the same golden comparison with MLModel.predict (CPU_ONLY, then ALL)."""
    if not pkg.coreml_runtime_available():  # looked up on use: tests fake macOS
        return {}
    from ...families.encoder import evaluate
    from ...thresholds import THRESHOLDS, check

    package = artifact / VARIANTS[variant].path
    ids_spec, pad = package_contract(package)
    precision = VARIANTS[variant].precision
    extra: dict[str, Any] = {"failures": []}
    for units in pkg.COMPUTE_UNITS:
        gate = "fp16" if units != "CPU_ONLY" and precision == "fp32" else precision
        runner = row_runner(pkg.predict_with_coreml(package, units), ids_spec, pad)
        metrics, _ = evaluate(golden, runner, THRESHOLDS[gate].batch_invariant)
        extra[f"coreml_{units.lower()}"] = {"gate": gate, **{k: v for k, v in metrics.to_json().items() if k != "cases"}}
        extra["failures"] += [f"Core ML {units}: {f}" for f in check(gate, metrics)]
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

    def adapt_recipe(self, recipe: Any, options: Options) -> Any:
        return adapt_recipe(recipe, options.shape)

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        return convert(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step, shape=ctx.options.shape)

    def open(self, artifact: Path) -> CoreMLEncoderSession:
        return CoreMLEncoderSession(artifact)

    def runtime_versions(self) -> dict[str, str]:
        return pkg.runtime_versions()
