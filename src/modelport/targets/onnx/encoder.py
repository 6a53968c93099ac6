"""ONNX target: one fp32 export, then derived variants, in the transformers.js folder layout.

    <out>/config.json tokenizer.json tokenizer_config.json   (model_max_length = recipe max length)
    <out>/onnx/model.onnx            fp32, dynamic batch and sequence axes (torch.export / dynamo)
    <out>/onnx/model_fp16.onnx       fp16 weights and math, fp32 inputs/outputs kept
    <out>/onnx/model_quantized.onnx  q8: dynamic int8, signed weights, per-channel scales
    <out>/onnx/model_uint8.onnx      dynamic int8, unsigned weights, per-channel scales
    <out>/onnx/model_q4.onnx         4-bit MatMulNBits, block 32, symmetric
    <out>/onnx/model_q4f16.onnx      the fp16 model with 4-bit MatMulNBits
    <out>/onnx/model_q4mix.onnx      searched (quantize.py): only from a plan, `--quant-plan`
    <out>/onnx/model_q4mix_wasm.onnx searched, only operators browser wasm runs

Each file is what transformers.js loads for `dtype: fp32|fp16|q8|uint8|q4|q4f16`; the searched ones
load with dtype fp32 + model_file_name (clients.TRANSFORMERS_JS_LOAD).
The graph's outputs are the recipe's: `last_hidden_state` (what transformers.js' feature-extraction
pipeline pools itself: right only for plain mean/CLS models) and `sentence_embedding` (the whole
sentence-transformers head: pooling, Dense layers, normalization, truncation), plus BGE-M3's
`sparse_weights` and `colbert_vectors`. One export function serves sentence encoders, decoder
embedders (Qwen3-Embedding, EmbeddingGemma: torch.export traces their masks, sliding windows
included) and multi-vector encoders: three registered converters, one per family.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ...errors import ModelportError
from ...families import DECODER_EMBEDDER_FAMILY, ENCODER, MULTI_VECTOR_FAMILY
from ...manifest import TargetInfo
from ...quant.plan import Plan
from ..registry import ArtifactSession, ConvertContext, Converter, NoOptions, Variant, register
from .export import Exported, export_embedder
from .int8 import quantize_dynamic_int8
from .ort import OPSET, OnnxConverter, Q4_BLOCK, needs_external_data, quantize_q4, session_options
from .quantize import SEARCHED_VARIANTS, WASM_EMBEDDING_FORMATS
from . import fuse
from .fuse import FUSED_VARIANTS

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "onnx/model.onnx", "fp32", "float32 export"),
        Variant("fp16", "onnx/model_fp16.onnx", "fp16", "float16 weights/compute, fp32 io"),
        Variant("q8", "onnx/model_quantized.onnx", "q8", "dynamic int8, per-channel QInt8 weights"),
        Variant("uint8", "onnx/model_uint8.onnx", "uint8", "dynamic int8, per-channel QUInt8 weights"),
        Variant("q4", "onnx/model_q4.onnx", "q4", f"4-bit MatMulNBits block {Q4_BLOCK} sym"),
        Variant("q4f16", "onnx/model_q4f16.onnx", "q4f16", f"fp16 + 4-bit MatMulNBits block {Q4_BLOCK} sym"),
        # Fused (fuse.py): onnxruntime contrib operators MultiHeadAttention, SkipLayerNormalization,
        # BiasGelu; gated as the precision they are made in. Opt-in (`--variants`), loaded by
        # transformers.js with dtype fp32 + model_file_name (clients.TRANSFORMERS_JS_LOAD).
        Variant("fp32-fused", "onnx/model_fused.onnx", "fp32", "float32 export, transformer ops fused"),
        Variant("fp16-fused", "onnx/model_fp16_fused.onnx", "fp16", "fp32-fused -> float16 weights/compute, fp32 io"),
        Variant("q4-fused", "onnx/model_q4_fused.onnx", "q4", f"fp32-fused -> 4-bit MatMulNBits block {Q4_BLOCK} sym"),
        # Searched variants (quantize.py): written only from a plan (`--quant-plan`), never by default.
        # transformers.js loads them with dtype fp32 + model_file_name (clients.TRANSFORMERS_JS_LOAD).
        Variant("q4mix", "onnx/model_q4mix.onnx", "q4mix",
                "searched 4-bit: GPTQ MatMulNBits, sensitive layers 8-bit, quantized embedding (plan)", searched=True),
        Variant("q4mix-wasm", "onnx/model_q4mix_wasm.onnx", "q4mix",
                "searched 4-bit with only operators browser wasm runs (int8-row or float embedding) (plan)",
                searched=True),
    )
}
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in SEARCHED_VARIANTS and v not in FUSED_VARIANTS)

if TYPE_CHECKING:
    from ...quant.search import SearchContext, SearchResult

Step = Callable[[str], Any]
# feeds -> the graph's outputs in recipe.outputs order: what families.encoder judges
EncoderRunner = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, ...]]


def export_fp32(source, recipe, path: Path, note: Step | None = None, models=None) -> Exported:
    """The recipe's whole encoder (trunk + embedding head) -> ONNX with dynamic batch and sequence
    axes: traced where export.py allows it and the probes agree, torch.export otherwise.
    `models` (torch_model.Models): the module the golden ran, when the caller has it."""
    from ...torch_model import Models

    encoder = (models or Models()).encoder(source, recipe)
    return export_embedder(encoder, recipe, path, int(source.config["vocab_size"]), note)


def to_fp16(src: Path, dst: Path) -> None:
    """fp16 with fp32 inputs/outputs: onnxruntime's converter (onnxconverter-common's output fails to load).

    The converter needs every tensor's type (value_info) to put Casts around the operators it keeps in
    float32 (Range, CumSum, Resize, ...). Its own shape inference serializes the whole model, weights
    included (impossible past protobuf's 2 GB); the types come here from the graph without its weights
    instead (initializers as typed inputs), which gives the converter the same nodes, initializers and
    value_info types (tests/unit/test_fp16_convert.py; also checked on MiniLM, its fused graph and tiny
    EmbeddingGemma's torch.export graph). MiniLM, quiet: 0.93-1.06 s -> 0.65-0.70 s, the rest being
    the converter's clamping of every weight in numpy (0.4 s) and the load and save (0.1 s each).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    known = {v.name for v in model.graph.value_info}
    model.graph.value_info.extend(v for v in tensor_types(model) if v.name not in known)
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    onnx.save(model, str(dst))


def tensor_types(model: Any) -> list[Any]:
    """value_info of the model's intermediate tensors, inferred on a copy without weight data."""
    import onnx
    from onnx import helper

    graph = model.graph
    weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer]
    bare = helper.make_graph(graph.node, graph.name, list(graph.input) + weights, graph.output)
    bare_model = helper.make_model(bare, opset_imports=model.opset_import, ir_version=model.ir_version)
    return list(onnx.shape_inference.infer_shapes(bare_model).graph.value_info)


def quantize_dynamic(src: Path, dst: Path, signed: bool) -> None:
    """q8 (signed) / uint8: onnxruntime's dynamic per-channel int8, written by int8.py (same numbers,
    5x faster). Per-channel weight scales: per-tensor scales cost MiniLM 0.90 -> 0.98 min cosine (measured)."""
    with _gemm_as_matmul(src) as model:
        quantize_dynamic_int8(model, dst, signed)


@contextmanager
def _gemm_as_matmul(src: Path) -> Iterator[Path]:
    """`src`, or a copy whose Gemm nodes are MatMul + Add with no stale shape annotations.

    int8.py quantizes MatMul weights; EmbeddingGemma's Dense layers (the only 2-D Linear layers of an
    embedder) export as Gemm(transB=1). onnxruntime's rewrite makes them MatMul + Add; value_info is
    dropped (stale after the rewrite: onnxruntime's own quantizer failed on it with "Inferred shape
    and existing shape differ in dimension 0: (96) vs (384)").
    """
    import onnx
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = onnx.load(str(src), load_external_data=False)
    if not any(n.op_type == "Gemm" for n in model.graph.node):
        yield src
        return
    model = onnx.load(str(src))
    ONNXModel(model).replace_gemm_with_matmul()
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
        path = Path(tmp) / "model.onnx"
        n_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
        onnx.save(model, str(path), save_as_external_data=needs_external_data(n_bytes))
        yield path




def write_layout(source, recipe, out: Path) -> list[str]:
    """config + tokenizer (+ sentence-transformers pooling config) next to onnx/."""
    from ...layout import copy_model_files

    return copy_model_files(source, recipe, out)


def convert(source, recipe, variants: list[str], out: Path, step: Step, plans: dict[str, Plan] | None = None,
            models=None) -> TargetInfo:
    """Write the requested variants under `out`; returns the target section of the manifest.
    `plans`: the plan of each searched variant requested (q4mix, q4mix-wasm), recorded in the manifest."""
    plans = plans or {}
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    path = {name: out / VARIANTS[name].path for name in VARIANTS}
    fp32 = path["fp32"]
    step("export fp32 (trace checked on probe shapes, or torch.export)")
    exported = export_fp32(source, recipe, fp32, step, models)
    builders: dict[str, Callable[[], None]] = {
        "fp16": lambda: to_fp16(fp32, path["fp16"]),
        "q8": lambda: quantize_dynamic(fp32, path["q8"], signed=True),
        "uint8": lambda: quantize_dynamic(fp32, path["uint8"], signed=False),
        "q4": lambda: quantize_q4(fp32, path["q4"]),
        "q4f16": lambda: quantize_q4(path["fp16"], path["q4f16"]),
        "fp32-fused": lambda: fuse.fuse(fp32, path["fp32-fused"], source.config, exported.exporter),
        "fp16-fused": lambda: fuse.write_from_fused(fp32, path["fp32-fused"], path["fp16-fused"], to_fp16,
                                                    source.config, exported.exporter),
        "q4-fused": lambda: fuse.write_from_fused(fp32, path["fp32-fused"], path["q4-fused"],
                                                  lambda src, dst: quantize_q4(src, dst, quiet=True),
                                                  source.config, exported.exporter),
    }
    fp16_tmp = False
    if "q4f16" in variants and "fp16" not in variants:
        fp16_tmp = True
        builders["fp16"]()
    for name in variants:
        if name != "fp32" and name not in SEARCHED_VARIANTS:
            step(f"write {name} ({VARIANTS[name].description})")
            builders[name]()
    if plans:
        from .quantize import write_variants

        write_variants(fp32, plans, {v: path[v] for v in plans}, source, recipe, step)
    if fp16_tmp:
        path["fp16"].unlink()
    if "fp32" not in variants:
        fp32.unlink()
    write_layout(source, recipe, out)
    per_variant = {v: {"plan": p.to_json(), "plan_sha256": p.digest()} for v, p in plans.items()}
    return TargetInfo.of("onnx", recipe.family, variants, VARIANTS, per_variant=per_variant, opset=OPSET,
                         layout="transformers.js", outputs=list(recipe.outputs), export=exported.to_json())


def searched_plans(quant_plan: str | None, variants: list[str], model: str) -> dict[str, Plan]:
    """The plan of every searched variant requested; one clear line when one is missing or does not fit
    (checked before the export: a refusal costs no conversion work)."""
    from ...quant.plan import plan_for

    searched = [v for v in variants if v in SEARCHED_VARIANTS]
    if quant_plan and not searched:
        raise ModelportError(f"--quant-plan is only used by the searched variants; add them: --variants "
                             f"{','.join(variants + list(SEARCHED_VARIANTS))}")
    plans = {v: plan_for(quant_plan, v, "onnx", model) for v in searched}
    wasm = plans.get("q4mix-wasm")
    if wasm is not None and wasm.options.get("embedding_format", "float") not in WASM_EMBEDDING_FORMATS:
        raise ModelportError(f"the q4mix-wasm plan stores the embedding as {wasm.options.get('embedding_format')}, "
                             f"which browser wasm cannot run (use one of {', '.join(WASM_EMBEDDING_FORMATS)})")
    return plans


def load_runner(artifact: Path, variant: str, threads: int = 2) -> EncoderRunner:
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact / VARIANTS[variant].path), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]  # the export's order: recipe.outputs

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        return tuple(session.run(outputs, {n: feeds[n] for n in names}))

    return run


class OnnxEncoderSession(ArtifactSession):
    # onnxruntime sessions are independent and run outside the GIL: six MiniLM variants validate in
    # 2.2 s two at a time (one thread each) against 3.6 s one after another (two threads), measured here
    parallel_variants = 2

    def runner(self, variant: str) -> EncoderRunner:
        return load_runner(self.root, variant, self.threads or 2)


@register
class OnnxEncoder(OnnxConverter):
    """Sentence encoders -> transformers.js `feature-extraction` layout (see the module docstring)."""

    family = ENCODER.name
    variants = VARIANTS
    defaults = DEFAULT_VARIANTS

    @dataclass(frozen=True)
    class Options:
        quant_plan: str | None = None  # --quant-plan: a quantize-search folder or one plan-<variant>.json

        def __post_init__(self) -> None:
            if self.quant_plan is None:
                return
            path = Path(self.quant_plan)
            if not path.exists():
                raise ModelportError(f"--quant-plan {self.quant_plan} does not exist")
            for file in sorted(path.glob("plan-*.json")) if path.is_dir() else [path]:
                plan = Plan.load(file)
                if plan.target != "onnx":
                    raise ModelportError(f"--quant-plan {file} is a plan for the {plan.target} target, not onnx")

    def convert(self, ctx: ConvertContext) -> TargetInfo:
        plans = searched_plans(getattr(ctx.options, "quant_plan", None), ctx.variants, ctx.source.name)
        return convert(ctx.source, ctx.recipe, ctx.variants, ctx.out, ctx.step, plans, ctx.models)

    def quantize_search(self, ctx: "SearchContext") -> "SearchResult":
        from .quantize import search

        return search(ctx)

    def open(self, artifact: Path) -> OnnxEncoderSession:
        return OnnxEncoderSession(artifact)


@register
class OnnxDecoderEmbedder(OnnxEncoder):
    """Qwen3-Embedding, EmbeddingGemma: the same export (torch.export traces the decoder trunk's
    causal or bidirectional, sliding-window masks), the same variants but the fused ones: neither
    fuser finds their attention (RoPE, GQA, q/k norms; fuse.py), so they are refused before any work."""

    family = DECODER_EMBEDDER_FAMILY.name
    variants = {k: v for k, v in VARIANTS.items() if k not in FUSED_VARIANTS}


@register
class OnnxMultiVector(OnnxEncoder):
    """BGE-M3: the same export with two more named outputs, sparse_weights and colbert_vectors.

    No searched variants (q4mix): the search judges the sentence embedding only, and this family's
    sparse / ColBERT gates have no searched-variant row yet."""

    family = MULTI_VECTOR_FAMILY.name
    variants = {k: v for k, v in VARIANTS.items() if k not in SEARCHED_VARIANTS}
    Options = NoOptions
    quantize_search = Converter.quantize_search
