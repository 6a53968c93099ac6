"""Fused encoder variants: the fp32 export with onnxruntime's transformer contrib operators
(com.microsoft MultiHeadAttention, BiasGelu, EmbedLayerNormalization / SkipLayerNormalization), and
fp16 / q4 made from that file as fp16 / q4 are made from the export.

    onnx/model_fused.onnx       fp32-fused: the fp32 export, fused
    onnx/model_fp16_fused.onnx  fp16-fused: fp32-fused -> fp16 (encoder.to_fp16, fp32 io kept)
    onnx/model_q4_fused.onnx    q4-fused:   fp32-fused -> 4-bit MatMulNBits (ort.quantize_q4)

transformers.js loads them with dtype fp32 + model_file_name (clients.TRANSFORMERS_JS_LOAD), as it
loads the searched q4mix. Opt-in: writing them cost 1.9 / 2.1 / 0.5 s on MiniLM plus 1.6-3.4 s of
validation each (2 shared cores), too much for the default conversion's time budget.

Which fuser: the one written for the export's graph shape (export.py records trace or dynamo).
- TorchScript trace (sentence encoders): onnxruntime's transformer optimizer (`optimize_model`, what
  Olive's OrtTransformersOptimization pass runs; Olive would add a dependency and nothing else).
  MiniLM: 6 MultiHeadAttention, 6 BiasGelu, 1 EmbedLayerNormalization, 533 -> 107 nodes. It needs
  opt_level 1 (an onnxruntime session folds the trace's Shape chains first; at 0 it finds only
  BiasGelu) and the heads / width from config.json (it cannot detect them here). Its
  SkipLayerNormalization fusion needs symbolic shape inference, which fails on this graph; an
  onnxruntime session fuses all 12 when it loads the fused file.
- torch.export (dynamo): onnxscript's ort_fusions, which match these graphs: 6 MultiHeadAttention,
  12 SkipLayerNormalization, 6 BiasGelu on MiniLM. The optimizer above finds only the 6 BiasGelu in
  a torch.export graph, and onnxscript no attention in a trace (both measured).

Attention form: MultiHeadAttention, Q, K and V left as three MatMuls. onnxscript's optimize_for_ort
packs them into one Attention whose weight is a Concat it leaves unfolded, and the 4-bit quantizer
(MatMul only) then skips those weights (18 of 36 MatMuls quantized on MiniLM); with MHA q4-fused
quantizes all 36, the matrices q4 quantizes (same cosines). On CPU onnxruntime the forms ran within
noise of each other.

Mask: MultiHeadAttention gets an additive attention_bias [batch, 1, seq, seq], as in the dynamo
export; the optimizer's key_padding_mask is rewritten to it (_padding_mask_as_bias: WebGPU refuses it).

Accuracy (MiniLM, validator vs golden PyTorch): fp32-fused 3.3e-6 tokens / 2.4e-7 pooled max abs
(fp32 2.9e-6 / 2.2e-7, gate 1e-5); fp16-fused cos min 0.999999; q4-fused equal to q4.
"""

from __future__ import annotations

import collections
import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any, Callable

from ...errors import ModelportError
from .ort import drop_dead_nodes

# opt-in (`--variants`), not in DEFAULT_VARIANTS: see the docs for the cost that decided it
FUSED_VARIANTS = ("fp32-fused", "fp16-fused", "q4-fused")
MS_DOMAIN = "com.microsoft"
# The attention operator a fused graph must contain: without it fusion found no transformer block and
# the "fused" file would be the export again under another name.
ATTENTION_OPS = frozenset({"MultiHeadAttention", "Attention"})


def _fusions() -> list[tuple[str, Callable[..., int], dict]]:
    """onnxscript's fusions for an encoder without KV cache, in optimize_for_ort's order, without its
    last step (fuse_attention: Q/K/V packed into Attention, see the module docstring)."""
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization

    return [
        ("erf_gelu", fuse_erfgelu, {}),
        ("skip_layer_normalization", fuse_skip_layer_normalization, {}),
        # new nodes of some SDPA patterns need shapes before the MHA rules can match them
        ("sdpa", fuse_sdpa, {"apply_shape_inference": True}),
        ("mha", fuse_mha2, {}),
        ("mha_scale", fuse_mha_scale, {}),
        ("mha_bias", fuse_mha_bias, {}),
        ("gelu", fuse_gelu, {}),
        ("bias_gelu", fuse_bias_gelu, {}),
    ]


def _fuse_dynamo(src: Path):
    """onnxscript's fusions on a torch.export graph; returns the onnx_ir model."""
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES
    from onnxscript.rewriter.ort_fusions import shape_optimization
    from onnxscript.rewriter.rules.common import gemm_to_matmul_add_rule

    model = ir.load(str(src))
    rewrite(model, [gemm_to_matmul_add_rule])
    # optimize_for_ort's preparation: shapes, constant folding, shape-op simplification
    passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    for _, fusion, kwargs in _fusions():
        fusion(model, **kwargs)
    optimize(model)  # inline what a later fusion did not consume, drop dead nodes
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    passes.RemoveInitializersFromInputsPass()(model)
    passes.ShapeInferencePass()(model)
    return ir.to_proto(model)


def _fuse_traced(src: Path, config: dict[str, Any]):
    """onnxruntime's transformer optimizer on a TorchScript-traced graph; returns the ModelProto.

    opt_level 1: the optimizer first lets an onnxruntime session fold the trace's Shape/Constant
    chains; at opt_level 0 it finds only BiasGelu (measured). num_heads / hidden_size from the config:
    it cannot detect them on this graph. use_multi_head_attention: MultiHeadAttention with Q/K/V as
    separate MatMuls, as the dynamo path gives (see the module docstring)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    model = optimize_model(str(src), model_type="bert", num_heads=int(config.get("num_attention_heads", 0)),
                           hidden_size=int(config.get("hidden_size", 0)), opt_level=1,
                           optimization_options=options)
    return _padding_mask_as_bias(model.model)


# What onnxruntime's own key_padding_mask path adds to masked scores (MultiHeadAttention's
# mask_filter_value default): exp() of it is 0 in fp32 and it stays finite in fp16.
MASK_FILTER_VALUE = -10000.0


def _padding_mask_as_bias(model):
    """MultiHeadAttention's key_padding_mask -> attention_bias [batch, 1, seq, seq] built from the
    attention_mask input.

    The optimizer feeds the keys' lengths (ReduceSum of the mask: right padding assumed) as
    key_padding_mask, which onnxruntime-web's WebGPU kernel refuses ("input `key_padding_mask` not
    implemented for webgpu", measured). An additive bias from the 0/1 mask is what the dynamo path
    feeds, runs on every client, and holds for either padding side."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    mha = [n for n in graph.node if n.domain == MS_DOMAIN and n.op_type == "MultiHeadAttention"
           and len(n.input) > 4 and n.input[4]]
    if not mha or "attention_mask" not in {i.name for i in graph.input}:
        return model
    p = "padding_bias"
    graph.initializer.extend([numpy_helper.from_array(np.array(v, dtype=dt), f"{p}_{k}") for k, v, dt in (
        ("one", 1.0, np.float32), ("filter", MASK_FILTER_VALUE, np.float32), ("axes", [1, 2], np.int64),
        ("dim1", [1], np.int64))])
    nodes = [
        helper.make_node("Cast", ["attention_mask"], [f"{p}_mask"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", [f"{p}_one", f"{p}_mask"], [f"{p}_masked"]),
        helper.make_node("Mul", [f"{p}_masked", f"{p}_filter"], [f"{p}_row"]),  # [batch, seq]
        helper.make_node("Unsqueeze", [f"{p}_row", f"{p}_axes"], [f"{p}_4d"]),  # [batch, 1, 1, seq]
        helper.make_node("Shape", ["attention_mask"], [f"{p}_s"], start=1),
        helper.make_node("Shape", ["attention_mask"], [f"{p}_b"], end=1),
        helper.make_node("Concat", [f"{p}_b", f"{p}_dim1", f"{p}_s", f"{p}_s"], [f"{p}_shape"], axis=0),
        helper.make_node("Expand", [f"{p}_4d", f"{p}_shape"], [p]),  # [batch, 1, seq, seq]
    ]
    for n in mha:
        inputs = list(n.input) + [""] * (6 - len(n.input))
        inputs[4], inputs[5] = "", p
        del n.input[:]
        n.input.extend(inputs)
    first = min(i for i, n in enumerate(graph.node) if n in mha)
    for k, node in enumerate(nodes):
        graph.node.insert(first + k, node)
    drop_dead_nodes(graph)  # the lengths computation nothing reads any more
    return model


# export.py's exporter name -> the fuser written for its graph shape: onnxscript's rewriters match
# torch.export graphs, onnxruntime's optimizer matches TorchScript traces (measured on MiniLM: each
# fuses no attention on the other's graph)
FUSERS: dict[str, Callable[[Path, dict[str, Any]], Any]] = {
    "dynamo": lambda src, config: _fuse_dynamo(src),
    "trace": _fuse_traced,
}


def fuse(src: Path, dst: Path, config: dict[str, Any], exporter: str) -> dict[str, int]:
    """Write `src` (the fp32 export) with transformer contrib operators to `dst`; returns the contrib
    operators of `dst` by type. `config`: the source's config.json (heads and width, traced path);
    `exporter`: which exporter wrote `src` (export.py: trace or dynamo), which picks the fuser."""
    import logging

    from .ort import save_model

    # both fusers log per rewrite (onnxscript's constant folding, onnxruntime's fusions under their bare
    # module names, e.g. "symbolic shape inference disabled or failed."), and onnxruntime's OnnxModel
    # prints "failed in shape inference" to stdout where its shape inference gives up (SkipLayerNorm,
    # see the module docstring: expected): a conversion shows errors only
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = FUSERS[exporter](src, config)
    finally:
        logging.disable(logging.NOTSET)
    ops = collections.Counter(n.op_type for n in model.graph.node if n.domain == MS_DOMAIN)
    if not ATTENTION_OPS & set(ops):
        raise ModelportError(f"{src.name}: no attention block fused in the {exporter} graph (fused only: "
                             f"{', '.join(f'{k} {v}' for k, v in sorted(ops.items())) or 'nothing'}); the fused "
                             f"variants are for BERT-style encoders, drop them from --variants")
    save_model(model, dst)
    return dict(ops)


def write_from_fused(fp32: Path, fused: Path, dst: Path, derive: Callable[[Path, Path], None],
                     config: dict[str, Any], exporter: str) -> None:
    """`dst` = derive(fused fp32): reuses `fused` when fp32-fused was written already, else fuses into a
    temporary file (fp16-fused or q4-fused asked for without fp32-fused)."""
    if fused.exists():
        derive(fused, dst)
        return
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        tmp_fused = Path(tmp) / fused.name
        fuse(fp32, tmp_fused, config, exporter)
        derive(tmp_fused, dst)


def contrib_ops(path: Path) -> dict[str, int]:
    """The com.microsoft operators of an ONNX file by type (graph only, weights not read)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(collections.Counter(n.op_type for n in graph.node if n.domain == MS_DOMAIN))
