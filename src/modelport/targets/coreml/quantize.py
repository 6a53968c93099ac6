"""Core ML quantization search: which weights a 4-bit palettized package must keep at more bits.

The naive `pal4` variant gives every Linear weight and embedding table one 16-entry k-means table;
on all-MiniLM-L6-v2 that costs 0.895 min / 0.946 mean cosine (thresholds.py). Errors are not spread
evenly: a few weights lose most of it. The search measures that, then spends bytes where they buy
quality, and the smallest candidate that meets the goal becomes the variant `palmix`:

  1. sensitivity   one weight at a time at pal4, every other weight left fp16: the mean-cosine loss
                   on the dev texts (`search.sensitivity`: largest first, ties by name)
  2. candidates    pal4 everywhere (the naive variant, a baseline row), pal6 everywhere, pal4 with
                   the k most sensitive weights at pal8 / w8 / pal6, grouped pal4, pal6 with the k
                   least sensitive at pal4 (`candidate_plans`)
  3. choice        `search.choose`: the smallest candidate meeting ctx.goal

Measured on MiniLM (fixed [1, 128], benchmarks/quant_coreml.py, 2 shared cores: search 710 s wall,
palmix convert + validation 41 s): the goal cos 0.99 / min 0.98 / top-5 0.95 is met by
"pal4 + top24 pal6" at 16.53 MB (18.4 % of fp32 89.8 MB; dev 0.9915 / 0.9949 / 0.96; validation
set 0.9859 / 0.9942 / 0.95), where pal6 everywhere takes 17.01 MB (validation 0.9901 / 0.9963 /
0.97) and naive pal4 11.42 MB misses (dev 0.931 / 0.952 / 0.82). One table per tensor is the
limit: the most sensitive weights are spread over every layer (layer 0's FFN-in first, then
layers 4-5, the word embeddings 5th of 37), so no few promotions fix pal4, and promoting the word
embeddings (11.7 M of 22.7 M weights) to 8 bits costs as much as every Linear at 8 bits.

Plans (`quant.plan.Plan`, target "coreml") name weights by their MIL const names in the fp16
program (e.g. `p_model_encoder_layer_0_attention_self_query_weight_to_fp16`): they are what
coremltools' `OptimizationConfig(op_name_configs=...)` takes, they come from the torch.export
parameter names and so are stable for a checkpoint, and they read as the PyTorch module path.
`Plan.embedding` is the word-embedding table (None: kept fp16); `Plan.layers` overrides the default
for other weights. LayerQuant kinds: palette (k-means table of 2^bits fp16 values, group 0 = one
per tensor (iOS16), group G = one per G output channels (iOS18)), affine (8-bit symmetric with one
fp16 scale per block of `group` input weights, the w8 format, iOS18), float (kept fp16).

How candidates are scored without writing a package each: coremltools compresses every weight
independently (k-means or per-block scales of that tensor alone), so each format is applied once to
the whole model, its decompressed weights are read back (`constexpr` ops materialized), and a
candidate runs the fp16 package in `milinterp` with its weights swapped in
(`Interpreter.with_constants`). That is exactly what the written package computes: the benchmark
and tests/test_quant_coreml.py write the chosen plan as a real package and check quality and size.

Dev set: the first `DEV_TEXTS` (40) of quant.texts.dev_texts(), at the fp32 artifact's input
shape, one row per run; the interpreter is NumPy, ~0.15 s per MiniLM row at 128 tokens, so a
candidate costs ~6 s there (37 sensitivity runs 233 s, 30 candidates 168 s; compressing every
weight in the five formats, k-means mostly, 227 s). Quality is measured against the fp32 package's sentence
embeddings (the validated fp32 artifact, within 1e-5 of PyTorch): cosine min/mean over the 40
texts, and top-5 retrieval agreement (`metrics.topk_agreement`, its tie tolerance) with the first
`DEV_QUERIES` (10) texts as queries against the other 30.

Sizes are package bytes: the naive pal4 package is written for real, and a candidate's size is
its size with each weight's stored form (`stored_bytes`: indices, tables, scales) swapped for the
pal4 one. Not the fp16 package's: coremltools also writes a debug map of the torch.export program
(executorch_debug_handle_mapping.json, 30 KB on the tiny XLM-R) into uncompressed packages only.
Blob alignment (64 bytes per blob) and op records are left out: the written package differs from
the estimate by under 1 % (checked by tests/test_quant_coreml.py and the benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import ModelportError
from ...quant.plan import LayerQuant, Plan
from ...quant.search import Candidate, Quality, SearchContext, SearchResult, choose, dev_quality, sensitivity

PALMIX = "palmix"
TARGET = "coreml"
DEV_TEXTS = 40
DEV_QUERIES = 10
WORD_EMBEDDINGS = "word_embeddings"  # the const holding it is the plan's `embedding`
W8_BLOCK = 32  # the w8 variant's block (encoder.W8_BLOCK)
COMPRESSED_OP_TYPES = ("linear", "gather")  # encoder.COMPRESSED_OP_TYPES
COMPRESSION_MIN_ELEMENTS = 2048  # encoder.COMPRESSION_MIN_ELEMENTS

PAL4 = LayerQuant(bits=4, group=0, kind="palette")
PAL6 = LayerQuant(bits=6, group=0, kind="palette")
PAL8 = LayerQuant(bits=8, group=0, kind="palette")
W8 = LayerQuant(bits=8, group=W8_BLOCK, scales="rtn_sym", kind="affine")
FP16 = LayerQuant(bits=16, group=0, kind="float")
# Grouped palettes: one table per 16 output channels. Measured on MiniLM (see benchmarks/quant_coreml.py).
GROUPED = 16
CONSTEXPR_SUFFIXES = ("palettized", "quantized")  # what coremltools 9 appends to a compressed const's name


# ---------------------------------------------------------------------------------------------
# Plan -> coremltools config


def weight_consts(mlmodel) -> dict[str, tuple[int, ...]]:
    """The compressible weights of an (uncompressed) program: const name -> shape, program order.
    Weights of Linear layers and embedding tables with >= COMPRESSION_MIN_ELEMENTS values (the
    same rule as the fixed variants: biases, norms and token-type tables stay fp16)."""
    out: dict[str, tuple[int, ...]] = {}
    for op in mlmodel._mil_program.functions["main"].operations:
        if op.op_type != "const" or op.outputs[0].val is None:
            continue
        value = op.outputs[0].val
        users = op.outputs[0].child_ops
        if (isinstance(value, np.ndarray) and value.size >= COMPRESSION_MIN_ELEMENTS and users
                and all(u.op_type in COMPRESSED_OP_TYPES for u in users)
                and all(_weight_input(u) is op.outputs[0] for u in users)):
            out[op.name] = tuple(value.shape)
    return out


def _weight_input(op) -> Any:
    """The weight operand of a linear (weight) or gather (the table, x)."""
    return op.inputs.get("weight") if op.op_type == "linear" else op.inputs.get("x")


def word_embedding(names) -> str | None:
    found = [n for n in names if WORD_EMBEDDINGS in n]
    return found[0] if len(found) == 1 else None


def layer_specs(plan: Plan, names) -> dict[str, LayerQuant]:
    """Every weight's treatment under the plan (the word-embedding table: plan.embedding or fp16)."""
    emb = word_embedding(names)
    unknown = sorted(set(plan.layers) - set(names))
    if unknown:
        raise ModelportError(f"quantization plan names weight(s) this model does not have: {', '.join(unknown[:3])}"
                             f"{' ...' if len(unknown) > 3 else ''} (a plan for another model?)")
    return {n: ((plan.embedding or FP16) if n == emb else plan.layer(n)) for n in names}


def op_config(spec: LayerQuant, shape: tuple[int, ...]) -> Any | None:
    """One weight's coremltools config (None: kept fp16). Refuses what the formats cannot store,
    instead of letting coremltools skip the weight silently."""
    import coremltools.optimize.coreml as cto

    if spec.kind == "float":
        if spec.bits != 16:
            raise ModelportError(f"Core ML plans keep float weights at 16 bits (the packages compute in fp16), "
                                 f"not {spec.bits}")
        return None
    if spec.kind == "palette":
        if spec.bits not in (1, 2, 3, 4, 6, 8):
            raise ModelportError(f"Core ML palettes have 1, 2, 3, 4, 6 or 8 bits, not {spec.bits}")
        if spec.group:
            if shape[0] % spec.group:
                raise ModelportError(f"a palette per {spec.group} channels does not divide a weight of shape "
                                     f"{list(shape)} (Core ML needs whole groups)")
            return cto.OpPalettizerConfig(mode="kmeans", nbits=spec.bits, granularity="per_grouped_channel",
                                          group_size=spec.group, weight_threshold=COMPRESSION_MIN_ELEMENTS)
        return cto.OpPalettizerConfig(mode="kmeans", nbits=spec.bits, granularity="per_tensor",
                                      weight_threshold=COMPRESSION_MIN_ELEMENTS)
    if spec.bits != 8 or spec.scales != "rtn_sym" or spec.gptq or not spec.group or shape[-1] % spec.group:
        raise ModelportError(f"Core ML affine weights are 8-bit symmetric round-to-nearest with a block dividing the "
                             f"input width (the w8 format); got {spec.label()} for a weight of shape {list(shape)}")
    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_block",
                                       block_size=spec.group, weight_threshold=COMPRESSION_MIN_ELEMENTS)


def apply_plan(mlmodel, plan: Plan):
    """The fp16 model compressed as the plan says. Two coremltools passes (8-bit blocks, then
    palettes), each with op_name_configs only: a weight the plan does not compress is left alone.
    Deterministic (k-means with a fixed seed inside coremltools), so the same plan gives the same
    bytes after `package.normalize_package`. Every weight the plan compresses must come out
    compressed (coremltools skips silently what it cannot do)."""
    import coremltools.optimize.coreml as cto

    if plan.target != TARGET:
        raise ModelportError(f"this is a quantization plan for the {plan.target} target, not {TARGET}")
    shapes = weight_consts(mlmodel)
    specs = layer_specs(plan, shapes)
    configs = {n: (specs[n].kind, op_config(specs[n], shapes[n])) for n in shapes}
    affine = {n: c for n, (k, c) in configs.items() if k == "affine"}
    palette = {n: c for n, (k, c) in configs.items() if k == "palette"}
    if affine:
        mlmodel = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(op_name_configs=affine))
    if palette:
        mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(op_name_configs=palette))
    left = sorted((set(affine) | set(palette)) - set(compressed_weights(mlmodel)))
    if left:
        raise ModelportError(f"coremltools did not compress {', '.join(left[:3])} as the plan says")
    return mlmodel


def compressed_weights(mlmodel) -> dict[str, np.ndarray]:
    """Decompressed value of every compressed weight, by the const name it had in the fp16 program
    (constexpr ops are named after the const they replace: `<const>_palettized`, `<const>_quantized`)."""
    out = {}
    for op in mlmodel._mil_program.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            base, _, suffix = op.name.rpartition("_")
            if suffix not in CONSTEXPR_SUFFIXES:
                raise ModelportError(f"unexpected compressed weight {op.name} ({op.op_type}): coremltools changed "
                                     f"how it names them")
            out[base] = np.asarray(op.materialized_val_inference())
    return out


def plan_features(plan: Plan) -> tuple[str, ...]:
    """encoder.FEATURES the plan's package uses (sets its minimum deployment target), from the
    plan alone: its default, overrides and embedding (the default covers every weight not named)."""
    if plan.target != TARGET:
        raise ModelportError(f"this is a quantization plan for the {plan.target} target, not {TARGET}")
    specs = [plan.default, *plan.layers.values(), plan.embedding or FP16]
    features = ["ml-program"]
    if any(s.kind == "palette" and not s.group for s in specs):
        features.append("palettized-weights")
    if any(s.kind == "palette" and s.group for s in specs):
        features.append("grouped-palettes")
    if any(s.kind == "affine" for s in specs):
        features.append("blockwise-int8-weights")
    return tuple(features)


def stored_bytes(spec: LayerQuant, shape: tuple[int, ...]) -> int:
    """Bytes one weight takes in the package: fp16 values; palette indices (bits each) + fp16
    tables of 2^bits entries; int8 values + one fp16 scale per block."""
    n = math.prod(shape)
    if spec.kind == "float":
        return 2 * n
    if spec.kind == "palette":
        tables = shape[0] // spec.group if spec.group else 1
        return math.ceil(n * spec.bits / 8) + tables * (2 ** spec.bits) * 2
    return n + (n // spec.group) * 2


def weight_bytes(plan: Plan, shapes: dict[str, tuple[int, ...]]) -> int:
    specs = layer_specs(plan, shapes)
    return sum(stored_bytes(specs[n], s) for n, s in shapes.items())


def plan_bytes(plan: Plan, shapes: dict[str, tuple[int, ...]], written: Plan, written_bytes: int) -> tuple[int, float]:
    """Package bytes under `plan`, from a package written under another plan (`written`, of
    `written_bytes`), and the stored bits per weight."""
    stored = weight_bytes(plan, shapes)
    return written_bytes - weight_bytes(written, shapes) + stored, 8 * stored / sum(math.prod(s) for s in shapes.values())


# ---------------------------------------------------------------------------------------------
# Scoring on the dev texts


@dataclass
class DevSet:
    """The dev rows at the package's input shape and the fp32 package's sentence embeddings."""

    feeds: dict[str, np.ndarray]  # one batch of DEV_TEXTS rows (the runner pads each to the package's length)
    reference: np.ndarray  # [texts, dim]

    def quality(self, embeddings: np.ndarray) -> Quality:
        """quant.search.dev_quality against the fp32 package's embeddings (DEV_QUERIES of the texts)."""
        return dev_quality(self.reference, embeddings, DEV_QUERIES)


def dev_feeds(source, recipe, count: int = DEV_TEXTS) -> dict[str, np.ndarray]:
    """The first `count` dev texts, tokenized as the golden tokenizes (document prompt first,
    truncated at the recipe's max length: the package's longest shape)."""
    from ...quant.texts import dev_texts
    from ...reference import input_feeds
    from ...torch_model import load_tokenizer

    tokenizer = load_tokenizer(source)
    tokenizer.padding_side = recipe.head.padding_side
    texts = [recipe.head.document_prompt + t for t in dev_texts()[:count]]
    return input_feeds(tokenizer, recipe, texts)


@dataclass(frozen=True)
class EncoderHooks:
    """What the search takes from the encoder converter, passed in by it (`encoder.search_hooks`):
    encoder.py writes palmix with this module's `apply_plan`, so this module cannot import it."""

    adapt_recipe: Callable[[Any, str], Any]  # (recipe, --shape) -> the recipe at the package's length
    fp16_program: Callable[[Any, Any, str, str], Any]  # (source, recipe, --shape, iOS target) -> MLModel
    embed: Callable[[Any, dict[str, np.ndarray]], np.ndarray]  # (Interpreter, rows) -> sentence embeddings
    fp32_package: str  # the fp32 variant's path in an artifact


# ---------------------------------------------------------------------------------------------
# The search


def candidate_plans(ranking: list[str], shapes: dict[str, tuple[int, ...]], quick: bool
                    ) -> list[tuple[str, Plan, bool, str]]:
    """(name, plan, baseline, note) for every candidate, in a fixed order.

    Promotions follow the sensitivity ranking: the k most sensitive weights go to pal8 (smallest
    8-bit form, iOS16), w8 (per-block int8, iOS18: scales follow each row's range) or pal6. The
    word-embedding table is promoted like any other weight when it ranks high; since it is half of
    a small model's weights (MiniLM: 11.7 M of 22.7 M), promoting it to pal8 costs as much as every
    Linear at pal8, so some candidates give it pal6 instead. Demotions go the other way: pal6
    everywhere (what meets the goal on MiniLM) with the k least sensitive weights at pal4.
    Measured on MiniLM (benchmarks/quant_coreml.py): grouped tables (pal4/g16) gain little over
    one table per tensor (dev mean 0.956 against 0.952), so they get fewer rows."""
    embedding = word_embedding(shapes)
    base = Plan(TARGET, default=PAL4, embedding=PAL4 if embedding else None, calibration="",
                options={"format": "coremltools.optimize.coreml (k-means palettes, per-block int8)"})
    pal6 = replace(base, default=PAL6, embedding=PAL6 if embedding else None)

    def moved(plan: Plan, names: list[str], spec: LayerQuant, emb_spec: LayerQuant | None = None) -> Plan:
        plan = plan.with_layers({n: spec for n in names if n != embedding})
        return replace(plan, embedding=emb_spec or spec) if embedding in names else plan

    def top(k: int) -> list[str]:
        return ranking[:k]

    out = [("pal4 (naive: one table per tensor)", base, True, "the fixed pal4 variant"),
           ("pal6", pal6, False, "the fixed pal6 variant")]
    # grouped tables where the output channels split into whole groups (e.g. not XLM-R's 514 positions)
    grouped = replace(base, default=replace(PAL4, group=GROUPED),
                      layers={n: PAL4 for n, s in shapes.items() if s[0] % GROUPED and n != embedding})
    out.append((f"pal4/g{GROUPED}", grouped, False, f"one table per {GROUPED} output channels (embedding: one)"))
    ks = (1, 2, 4) if quick else (2, 4, 6, 8, 12, 16, 24)
    for k in ks:
        out.append((f"pal4 + top{k} pal8", moved(base, top(k), PAL8), False, ""))
    for k in ks if quick else (4, 12, 16):
        out.append((f"pal4/g{GROUPED} + top{k} pal8", moved(grouped, top(k), PAL8), False, ""))
    for k in (2,) if quick else (4, 8, 16):
        out.append((f"pal4 + top{k} w8", moved(base, top(k), W8), False, ""))
    for k in (4,) if quick else (8, 12, 16, 24):
        if embedding in top(k):
            out.append((f"pal4 + top{k} pal8 (emb pal6)", moved(base, top(k), PAL8, PAL6), False, ""))
    for k in (2,) if quick else (8, 16, 24):
        out.append((f"pal4 + top{k} pal6", moved(base, top(k), PAL6), False, ""))
    if not quick:
        for k in (2, 4, 8):
            out.append((f"pal6 + top{k} pal8", moved(pal6, top(k), PAL8), False, ""))
    for k in (2,) if quick else (4, 8, 12, 16):
        out.append((f"pal6 + bottom{k} pal4", moved(pal6, ranking[-k:], PAL4), False, ""))
    return out


def _banks(fp16_model, shapes: dict[str, tuple[int, ...]], specs: list[LayerQuant]) -> dict[LayerQuant, dict[str, np.ndarray]]:
    """Every weight decompressed in each format (one coremltools pass per format)."""
    banks = {}
    for spec in specs:
        usable = [n for n, s in shapes.items() if not (spec.kind == "palette" and spec.group and s[0] % spec.group)]
        plan = Plan(TARGET, default=FP16, layers={n: spec for n in usable if WORD_EMBEDDINGS not in n},
                    embedding=spec if word_embedding(usable) else None)
        banks[spec] = compressed_weights(apply_plan(fp16_model, plan))
    return banks


def overrides(plan: Plan, shapes, banks) -> dict[str, np.ndarray]:
    return {n: banks[s][n] for n, s in layer_specs(plan, shapes).items() if s.kind != "float"}


def shape_option(shape_json: dict[str, Any]) -> str:
    """The --shape option that wrote an artifact (its manifest's target.shape)."""
    lengths = shape_json["lengths"]
    if shape_json["mode"] == "fixed":
        return f"fixed:{lengths[0]}"
    if shape_json["mode"] == "range":
        return f"range:{lengths[0]}-{lengths[1]}"
    return "enumerated:" + ",".join(map(str, lengths))


def save_package(mlmodel, package: Path) -> int:
    from .package import _package_bytes, _quiet, normalize_package

    package.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        mlmodel.save(str(package))
    normalize_package(package)
    return _package_bytes(package)


FORMATS = (PAL4, PAL6, PAL8, W8, replace(PAL4, group=GROUPED))  # what candidate_plans uses


@dataclass
class Workbench:
    """What scoring needs, built once: the fp16 package and its interpreter, the compressible
    weights, every weight decompressed in each format (`banks`), the dev rows and reference."""

    hooks: EncoderHooks
    shape: str
    recipe: Any
    fp16_model: Any
    fp16_bytes: int
    shapes: dict[str, tuple[int, ...]]
    interpreter: Any
    dev: DevSet
    banks: dict[LayerQuant, dict[str, np.ndarray]]

    @classmethod
    def build(cls, ctx: SearchContext, hooks: EncoderHooks, shape: str | None = None, dev_count: int = DEV_TEXTS,
              formats: tuple[LayerQuant, ...] = FORMATS) -> "Workbench":
        """`shape`: the packages' input shape (default: the fp32 artifact's). The fp16 program is
        converted for iOS18, where every format of the grid exists (grouped palettes, w8 blocks)."""
        from ... import manifest, milinterp
        from .package import _quiet

        shape = shape or shape_option(manifest.load(ctx.fp32_dir)["target"]["shape"])
        recipe = hooks.adapt_recipe(ctx.recipe, shape)
        ctx.step(f"fp16 program ({shape}) and its package")
        fp16_model = hooks.fp16_program(ctx.source, recipe, shape, "iOS18")
        fp16_package = ctx.work / "fp16" / "model.mlpackage"
        fp16_bytes = save_package(fp16_model, fp16_package)
        shapes = weight_consts(fp16_model)
        ctx.step(f"reference: the fp32 package on the first {dev_count} dev texts")
        feeds = dev_feeds(ctx.source, recipe, dev_count)
        dev = DevSet(feeds, hooks.embed(milinterp.Interpreter(ctx.fp32_dir / hooks.fp32_package), feeds))
        ctx.step(f"compress every weight once per format ({', '.join(f.label() for f in formats)})")
        with _quiet():
            banks = _banks(fp16_model, shapes, list(formats))
        return cls(hooks, shape, recipe, fp16_model, fp16_bytes, shapes, milinterp.Interpreter(fp16_package), dev, banks)

    def score(self, plan: Plan) -> Quality:
        """The plan's dev-set quality: the fp16 package with the plan's compressed weights swapped in."""
        patched = self.interpreter.with_constants(overrides(plan, self.shapes, self.banks))
        return self.dev.quality(self.hooks.embed(patched, self.dev.feeds))

    def sensitivity(self) -> list[tuple[str, float]]:
        """Mean-cosine loss with only that weight at pal4 (the others fp16), largest first."""
        emb = word_embedding(self.shapes)

        def alone(name: str) -> Plan:
            if name == emb:
                return Plan(TARGET, default=FP16, embedding=PAL4)
            return Plan(TARGET, default=FP16, layers={name: PAL4})

        return sensitivity(self.shapes, lambda n: 1.0 - self.score(alone(n)).cos_mean)


def search(ctx: SearchContext, hooks: EncoderHooks, shape: str | None = None, dev_count: int = DEV_TEXTS,
           log: Callable[[str], Any] | None = None) -> SearchResult:
    """quantize-search for a Core ML sentence encoder (see the module docstring). `shape`: the
    packages' input shape (default: the fp32 artifact's)."""
    from ...quant.texts import DEV
    from .package import _package_bytes, _quiet

    bench = Workbench.build(ctx, hooks, shape, dev_count)
    ctx.step(f"sensitivity: {len(bench.shapes)} weights, one at a time at pal4")
    ranking = bench.sensitivity()
    plans = candidate_plans([n for n, _ in ranking], bench.shapes, ctx.quick)
    naive = plans[0][1]
    with _quiet():
        naive_model = apply_plan(bench.fp16_model, naive)
    naive_bytes = save_package(naive_model, ctx.work / "pal4" / "model.mlpackage")
    fp16 = bench.dev.quality(hooks.embed(bench.interpreter, bench.dev.feeds))
    candidates = [Candidate("fp16", bench.fp16_bytes, 16.0, fp16,
                            plan=None, baseline=True, note="the fixed fp16 variant")]
    ctx.step(f"{len(plans)} candidates on the dev texts")
    for name, plan, baseline, note in plans:
        size, bpw = plan_bytes(plan, bench.shapes, naive, naive_bytes)
        quality = bench.score(plan)
        candidates.append(Candidate(name, size, bpw, quality, plan=plan, baseline=baseline, note=note))
        if log:
            log(f"{name}: {size / 1e6:.2f} MB, {quality.to_json()}")
    chosen = choose(candidates, ctx.goal)
    notes = [f"dev set: the first {dev_count} texts of {DEV} at {bench.shape}, against the fp32 package; top-5: "
             f"the first {DEV_QUERIES} texts as queries over the other {dev_count - DEV_QUERIES}",
             "sizes: the written pal4 package with each weight at its stored size (indices, tables, scales)"]
    if chosen is None:
        best = max((c for c in candidates if not c.baseline), key=lambda c: c.quality.key())
        notes.append(f"no candidate met {ctx.goal.text()}: the best, {best.name} ({best.size_bytes / 1e6:.2f} MB), "
                     f"misses {'; '.join(ctx.goal.misses(best.quality))}")
    return SearchResult(
        target=TARGET, model=ctx.source.name, goal=ctx.goal,
        reference_bytes=_package_bytes(ctx.fp32_dir / hooks.fp32_package),
        candidates=candidates, sensitivity=ranking, chosen={PALMIX: chosen} if chosen else {},
        notes=notes, texts={"dev": DEV},
    )
