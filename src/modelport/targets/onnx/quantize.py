"""Searched 4-bit ONNX variants for embedding models (`q4mix`, `q4mix-wasm`): what a plan does to the
fp32 graph, the calibration statistics it needs, and the search that chooses the plan.

Why. The q4 variant (onnxruntime's MatMulNBitsQuantizer: round-to-nearest, symmetric, block 32,
embedding table left in fp32) keeps 61 % of the fp32 size of all-MiniLM-L6-v2 and costs it min
cosine 0.910 / mean 0.967 against fp32. Three things close most of that gap at a smaller size
(../shared/reference/quant measured them; `benchmarks/quant_onnx.py` re-measures them here):
GPTQ error feedback with MSE-searched asymmetric scales, the few most sensitive MatMuls at 8 bits,
and a quantized word-embedding table (23 % of the fp32 file by itself).

The graph (`load_graph`): every MatMul whose second input is a constant 2-D weight is a layer,
named from the exporter's module path (`pkg.torch.onnx.name_scopes` metadata: `L5.attn.v`,
`L4.mlp.up`; the initializer or node name where an exporter left none), and the Gather of
`input_ids` from a constant table is the word embedding.

The writer (`build_model` / `write_variant`): each layer -> com.microsoft MatMulNBits (bits 4 or 8,
block = the plan's group, codes / scales / zero points from `quant.numerics.quantize_matrix`),
packed exactly as onnxruntime's own quantizer packs them (tests/test_quant_onnx.py compares the
bytes on RTN sym). The embedding table per `plan.options["embedding_format"]`:
  float                    kept (plan.embedding None)
  gather_block_quantized   com.microsoft GatherBlockQuantized, 4-bit uint8-packed, zero points:
                           7.5 MB instead of 46.9 MB on MiniLM; onnxruntime-web's wasm build lacks
                           the operator (Node, WebGPU and Python onnxruntime run it)
  uint4_std                the same 4-bit blocks (codes two per byte, scales, zero points) unpacked
                           by standard operators after the Gather (Cast, Floor, Sub, Mul, Concat,
                           Reshape on the gathered rows only): GatherBlockQuantized's size, and it
                           runs everywhere, wasm included
  int8_row                 standard operators only (Gather int8 -> Cast -> Mul by the row's
                           Gather-ed scale): 11.8 MB, runs everywhere, wasm included
A plan + the fp32 graph + the calibration texts fix every byte: float64 NumPy, one onnxruntime
thread for the statistics, no randomness.

The search (`search`): sensitivity of every layer on the dev texts (quality lost with only that
layer at 4-bit RTN), then candidates from naive to GPTQ with the top-k sensitive layers at 8 bits
and each embedding format, measured on the dev texts against the fp32 graph's own embeddings,
and the smallest one meeting the goal per variant (q4mix: any format; q4mix-wasm: only what
browser wasm runs).

Measured on all-MiniLM-L6-v2 (benchmarks/quant_onnx.py, fp32 90.85 MB): the search chose GPTQ
(mse_asym, block 32) with the 16 layers of largest loss per weight at 8 bits, a 4-bit symmetric
embedding table (block 128) and int8-row position table: 16.16 MB (17.8 %) for both variants
(GatherBlockQuantized / uint4_std), dev texts cos min 0.9848 / mean 0.9956 / top-5 1.00; on the
validation set (never seen by the search) 0.9847 / 0.9948 / 0.95, the same in transformers.js Node,
Chromium wasm (q4mix-wasm) and WebGPU. onnxruntime's q4: 54.9 MB (60.5 %), 0.894 / 0.966 / 0.875.

Olive (olive-ai 0.13, its own venv, `olive_candidates`; dev texts, same measurement): OnnxBlockWiseRtn
defaults (4-bit sym b128, word/position tables as GatherBlockQuantized) 12.59 MB (13.9 %), 0.828 /
0.939 / 0.913; the same at b32 14.70 MB, 0.887 / 0.961 / 0.862; OnnxKQuant (b32, tables fp32)
55.10 MB, 0.903 / 0.972 / 0.938. OnnxHqq writes a model that runs but is wrong: 96.7 MB (it keeps
the fp32 weights as unused initializers) and mean cosine -0.01, its 4-bit codes laid out along N
(they correlate 0.91 with the fp32 weight read row-major, 0.00 as MatMulNBits reads them, by column).
Gptq and SelectiveMixedPrecision (PyTorch passes, the mixed-precision selection included) fail on
BERT before quantizing anything: "Attribute model.layers not found" (they only walk decoder LLMs).
"""

from __future__ import annotations

import ast
import copy
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ...errors import ModelportError
from ...quant.numerics import GroupQuant, quantize, quantize_matrix
from ...quant.plan import LayerQuant, Plan

if TYPE_CHECKING:
    import onnx

    from ...quant.search import Candidate, Quality, SearchContext, SearchResult

MSFT = "com.microsoft"
EMBEDDING_FORMATS = ("float", "gather_block_quantized", "uint4_std", "int8_row")
# What onnxruntime-web's wasm build runs (it has MatMulNBits, not GatherBlockQuantized): the
# portable variant may only use these embedding formats.
WASM_EMBEDDING_FORMATS = ("float", "uint4_std", "int8_row")
# Other constant tables (`plan.options["table_format"]`): kept, or int8 per row with standard operators.
TABLE_FORMATS = ("float", "int8_row")
# Operators a variant may contain that the browser wasm build of onnxruntime-web lacks (measured with
# transformers.js 4.3.1 / onnxruntime-web 1.31.0-dev.20260914 in Chromium: "Could not find an
# implementation for GatherBlockQuantized(1) node"; WebGPU and Node run it). The clients harness reads
# the same set to report such runs unsupported, with the reason, instead of running them.
WASM_MISSING_OPS = frozenset({"GatherBlockQuantized"})
MATMUL_BITS = (4, 8)
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits / GatherBlockQuantized: a power of two >= 16
SEARCHED_VARIANTS = ("q4mix", "q4mix-wasm")

# Readable layer names from module paths (BERT / XLM-R, Llama / Qwen / Gemma).
_PARTS = {
    "attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
    "attention.output.dense": "attn.o", "intermediate.dense": "mlp.up", "output.dense": "mlp.down",
    "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down",
}


# --- the graph ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One quantizable weight: the MatMul node(s) that multiply by it (a shared weight is one layer)."""

    name: str
    weight: str  # initializer name, [K, N]
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]  # the activation tensor each node multiplies (the Hessian's x)
    k: int
    n: int


@dataclass(frozen=True)
class Embedding:
    """The word-embedding table: Gather(table [vocab, dim], input_ids)."""

    weight: str
    node: str
    vocab: int
    dim: int


@dataclass
class Graph:
    """The fp32 graph a plan is applied to, with its layers found once."""

    model: "onnx.ModelProto"
    layers: dict[str, Layer]
    embedding: Embedding | None
    path: Path
    tables: list[Embedding] = field(default_factory=list)  # other constant Gather tables (positions)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            from onnx import numpy_helper

            init = next(i for i in self.model.graph.initializer if i.name == name)
            self._arrays[name] = numpy_helper.to_array(init, base_dir=str(self.path.parent)).astype(np.float32)
        return self._arrays[name]

    def matrix(self, layer: str) -> np.ndarray:
        """The layer's weight in numerics' convention: [rows = N (out), cols = K (in)]."""
        return np.ascontiguousarray(self.array(self.layers[layer].weight).T)

    def fp32_bytes(self) -> int:
        return self.path.stat().st_size + sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "_data"))


def _module_path(node: Any) -> str | None:
    """The torch module a node came from, without the wrapper's `model.`: the dynamo exporter's
    metadata, or the TorchScript exporter's scoped node name (`/model/encoder/layer.0/attention/self/
    query/MatMul`: sentence encoders are traced, targets/onnx/export.py)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2]:
                return str(scopes[-2]).removeprefix("model.")
    parts = node.name.split("/") if node.name.startswith("/") else []
    if len(parts) >= 3 and all(parts[1:-1]):
        return ".".join(parts[1:-1]).removeprefix("model.")
    return None


def short_name(module: str) -> str:
    """`encoder.layer.5.attention.self.value` -> `L5.attn.v`; other modules keep their path."""
    m = re.match(r"^(?:.*\.)?layers?\.(\d+)\.(.+)$", module)
    if not m:
        return module
    return f"L{m.group(1)}.{_PARTS.get(m.group(2), m.group(2))}"


def find_tables(model: "onnx.ModelProto", embedding: Embedding | None) -> list[Embedding]:
    """Constant 2-D tables other Gathers read rows of (position embeddings: 512 x 384 fp32 = 0.8 MB, 5 %
    of a 4-bit MiniLM), at least 4096 values (token-type tables of 2 rows are not worth a scale each)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if (node.op_type == "Gather" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2
                and (embedding is None or node.name != embedding.node)
                and not any(a.name == "axis" and a.i != 0 for a in node.attribute)):
            rows, cols = (int(d) for d in inits[node.input[0]].dims)
            if rows * cols >= 4096 and inits[node.input[0]].data_type == 1:  # float32
                out.append(Embedding(node.input[0], node.name, rows, cols))
    return out


def find_layers(model: "onnx.ModelProto") -> tuple[dict[str, Layer], Embedding | None]:
    """Every MatMul with a constant 2-D weight (by stable short name, graph order) and the word embedding."""
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    by_weight: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            by_weight.setdefault(node.input[1], []).append(node)
    layers: dict[str, Layer] = {}
    for weight, nodes in by_weight.items():
        module = _module_path(nodes[0])
        if module:
            name = short_name(module)
        elif not re.fullmatch(r"val_\d+", weight):
            name = weight
        else:
            name = nodes[0].name
        base, i = name, 2
        while name in layers:
            name, i = f"{base}#{i}", i + 1
        k, n = (int(d) for d in inits[weight].dims)
        layers[name] = Layer(name, weight, tuple(x.name for x in nodes), tuple(x.input[0] for x in nodes), k, n)
    embedding = None
    for node in model.graph.node:
        if (node.op_type == "Gather" and node.input[0] in inits and node.input[1] in graph_inputs
                and node.input[1] == "input_ids" and len(inits[node.input[0]].dims) == 2):
            vocab, dim = (int(d) for d in inits[node.input[0]].dims)
            embedding = Embedding(node.input[0], node.name, vocab, dim)
            break
    return layers, embedding


def load_graph(path: Path) -> Graph:
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    layers, embedding = find_layers(model)
    if not layers:
        raise ModelportError(f"{path}: no MatMul with a constant weight: nothing to quantize")
    return Graph(model, layers, embedding, path, find_tables(model, embedding))


# --- calibration statistics and running a graph ---------------------------------------------------------


def text_feeds(tokenizer: Any, texts: Iterable[str], recipe: Any) -> list[dict[str, np.ndarray]]:
    """One feed per text: no padding (what users embed one at a time), truncated at the model's max."""
    from ...reference import input_feeds

    return [input_feeds(tokenizer, recipe, [text]) for text in texts]


def _session(model: "onnx.ModelProto", work: Path, optimize: bool = True):
    """A one-thread CPU session (deterministic figures); graphs over 2 GB go through a file."""
    import onnxruntime as ort

    from .ort import save_model

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    size = sum(len(i.raw_data) for i in model.graph.initializer)
    if size < 1_800_000_000:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def hessians(graph: Graph, feeds: list[dict[str, np.ndarray]], work: Path) -> dict[str, np.ndarray]:
    """Per layer, sum over calibration tokens of x x^T (float64 [K, K]), x = the layer's input.

    The fp32 graph runs with every layer input exposed as an extra output, unoptimized (the graph
    as exported, so the tensors are the ones the MatMuls see). q, k and v share one input: one sum.
    """
    from onnx import TensorProto, helper

    model = copy.deepcopy(graph.model)
    wanted = sorted({x for layer in graph.layers.values() for x in layer.inputs})
    present = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = _session(model, work, optimize=False)
    sums = {name: None for name in wanted}
    for feed in feeds:
        for name, x in zip(wanted, session.run(wanted, feed)):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            sums[name] = x.T @ x if sums[name] is None else sums[name] + x.T @ x
    out = {}
    for layer in graph.layers.values():
        h = sum(sums[x] for x in dict.fromkeys(layer.inputs))  # a shared weight: every input it sees
        out[layer.name] = np.asarray(h)
    return out


def embed(model: "onnx.ModelProto", feeds: list[dict[str, np.ndarray]], work: Path,
          output: str = "sentence_embedding") -> np.ndarray:
    """The graph's sentence embeddings, one text at a time, [texts, dim] float64."""
    session = _session(model, work)
    names = {i.name for i in session.get_inputs()}
    rows = [session.run([output], {k: v for k, v in f.items() if k in names})[0][0] for f in feeds]
    return np.stack(rows).astype(np.float64)


# --- the writer ---------------------------------------------------------------------------------------


def check_plan(graph: Graph, plan: Plan) -> None:
    """One clear line for a plan this graph cannot take."""
    if plan.target != "onnx":
        raise ModelportError(f"the quantization plan is for the {plan.target} target, not onnx")
    unknown = sorted(set(plan.layers) - set(graph.layers))
    if unknown:
        raise ModelportError(f"the quantization plan names layers this graph does not have: {', '.join(unknown[:5])}"
                             f"{' ...' if len(unknown) > 5 else ''} (it has {', '.join(list(graph.layers)[:4])}, ...)")
    for name, spec in [("default", plan.default), *plan.layers.items()]:
        if spec.kind == "float" and spec.bits == 32:
            continue
        if spec.kind != "affine" or spec.bits not in MATMUL_BITS or spec.group not in BLOCK_SIZES:
            raise ModelportError(f"quantization plan layer {name}: {spec.label()} is not a MatMulNBits format "
                                 f"(affine, bits {'/'.join(map(str, MATMUL_BITS))}, group one of "
                                 f"{', '.join(map(str, BLOCK_SIZES))}; or float 32 to keep a layer)")
    if plan.options.get("table_format", "float") not in TABLE_FORMATS:
        raise ModelportError(f"quantization plan: table_format {plan.options['table_format']!r} is not one of "
                             f"{', '.join(TABLE_FORMATS)}")
    fmt = plan.options.get("embedding_format", "float")
    if fmt not in EMBEDDING_FORMATS:
        raise ModelportError(f"quantization plan: embedding_format {fmt!r} is not one of {', '.join(EMBEDDING_FORMATS)}")
    if (fmt == "float") != (plan.embedding is None):
        raise ModelportError("quantization plan: embedding_format float goes with no embedding spec, and a "
                             "quantized format needs one")
    if plan.embedding is not None:
        if graph.embedding is None:
            raise ModelportError("the quantization plan quantizes the word embedding, which this graph does not gather "
                                 "from input_ids")
        e = plan.embedding
        if fmt == "int8_row" and (e.bits != 8 or e.group != graph.embedding.dim or e.scales != "rtn_sym"):
            raise ModelportError(f"quantization plan: int8_row embeddings are rtn_sym, 8 bits, group = the row "
                                 f"({graph.embedding.dim}), not {e.label()}")
        if fmt == "uint4_std" and (e.bits != 4 or graph.embedding.dim % e.group):
            raise ModelportError(f"quantization plan: uint4_std embeddings take 4 bits and a block dividing "
                                 f"{graph.embedding.dim}, not {e.label()}")
        if (fmt == "gather_block_quantized" and e.bits == 4 and not e.scales.endswith("_sym")
                and (graph.embedding.dim // max(e.group, 1)) % 2):
            raise ModelportError(f"quantization plan: an asymmetric 4-bit GatherBlockQuantized table needs an even "
                                 f"number of blocks per row (onnxruntime's WebGPU kernel reads its zero points "
                                 f"unpadded); {graph.embedding.dim} / {e.group} is odd: use a symmetric method or "
                                 f"another block")
        if fmt == "gather_block_quantized" and (e.bits not in (4, 8) or e.group not in BLOCK_SIZES
                                                  or graph.embedding.dim % e.group):
            raise ModelportError(f"quantization plan: GatherBlockQuantized embeddings take 4 or 8 bits and a "
                                 f"block dividing {graph.embedding.dim}, not {e.label()}")


class Quantizer:
    """Quantized matrices by (layer, spec), computed once: candidates of a search share most layers."""

    def __init__(self, graph: Graph, hessian: dict[str, np.ndarray] | None) -> None:
        self.graph = graph
        self.hessian = hessian or {}
        self._cache: dict[tuple, GroupQuant] = {}

    def layer(self, name: str, spec: LayerQuant) -> GroupQuant:
        key = (name, spec)
        if key not in self._cache:
            w = self.graph.matrix(name)
            h = self.hessian.get(name) if (spec.gptq or spec.scales.startswith("mse")) else None
            if (spec.gptq or spec.scales.startswith("mse")) and h is None:
                raise ModelportError(f"layer {name}: {spec.label()} needs calibration statistics")
            pad = (-w.shape[1]) % spec.group
            if pad:  # K not a multiple of the block: zero columns no token excites (MatMulNBits pads too)
                w = np.pad(w, ((0, 0), (0, pad)))
                h = None if h is None else np.pad(h, ((0, pad), (0, pad)))
            self._cache[key] = quantize_matrix(w, spec.bits, spec.group, spec.scales, h, use_gptq=spec.gptq)
        return self._cache[key]

    def embedding(self, spec: LayerQuant, table: Embedding | None = None) -> GroupQuant:
        table = table or self.graph.embedding
        key = (f"<table {table.weight}>", spec)  # type: ignore[union-attr]
        if key not in self._cache:
            values = self.graph.array(table.weight)  # type: ignore[union-attr]
            self._cache[key] = quantize(values, spec.bits, spec.group, spec.scales)
        return self._cache[key]


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., n] -> bytes, low bits first (n * bits / 8 per row)."""
    if bits == 8:
        return codes.astype(np.uint8)
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = np.zeros(c.shape[:-1], np.uint8)
    for j in range(per):
        out |= (c[..., j] << (bits * j)).astype(np.uint8)
    return out


def _pack_zeros(zeros: np.ndarray, bits: int) -> np.ndarray:
    """Zero points [rows, blocks] -> uint8, each row padded to whole bytes (onnxruntime's layout)."""
    z = np.rint(zeros).astype(np.uint8)
    per = 8 // bits
    pad = (-z.shape[1]) % per
    if pad:
        z = np.pad(z, ((0, 0), (0, pad)))
    return _pack(z, bits)


def _symmetric(spec: LayerQuant) -> bool:
    return spec.scales.endswith("_sym")


def matmul_nbits(node: Any, layer: Layer, q: GroupQuant, spec: LayerQuant) -> tuple[Any, list[Any]]:
    """A MatMulNBits node replacing `node`, and its initializers (names as onnxruntime's quantizer)."""
    from onnx import helper, numpy_helper

    bits, block = q.bits, q.group
    n, k_pad = q.codes.shape
    blocks = k_pad // block
    b = _pack(q.codes.reshape(n, blocks, block), bits)
    names = [f"{layer.weight}_Q{bits}", f"{layer.weight}_scales"]
    inits = [numpy_helper.from_array(b, names[0]),
             numpy_helper.from_array(q.scales.astype(np.float32).reshape(n, blocks), names[1])]
    if not _symmetric(spec):  # symmetric: no input, the kernel's default zero point 2^(bits-1)
        names.append(f"{layer.weight}_zero_points")
        inits.append(numpy_helper.from_array(_pack_zeros(q.zeros, bits), names[2]))
    new = helper.make_node("MatMulNBits", [node.input[0], *names], list(node.output), name=f"{node.name}_Q{bits}",
                           domain=MSFT, K=layer.k, N=layer.n, bits=bits, block_size=block)
    return new, inits


def embedding_nodes(node: Any, emb: Embedding, q: GroupQuant, fmt: str) -> tuple[list[Any], list[Any]]:
    """The embedding Gather replaced per format (module doc); same output name."""
    from onnx import TensorProto, helper, numpy_helper

    ids, out = node.input[1], node.output[0]
    if fmt == "int8_row":
        table = (q.codes.astype(np.int16) - np.rint(q.zeros).astype(np.int16).repeat(q.group, axis=1)).astype(np.int8)
        scale = q.scales.astype(np.float32).reshape(emb.vocab, 1)
        qn, sn = f"{emb.weight}_quantized", f"{emb.weight}_scale"
        nodes = [helper.make_node("Gather", [qn, ids], [f"{out}_q"], name=f"{node.name}_int8"),
                 helper.make_node("Cast", [f"{out}_q"], [f"{out}_qf"], name=f"{node.name}_cast", to=TensorProto.FLOAT),
                 helper.make_node("Gather", [sn, ids], [f"{out}_s"], name=f"{node.name}_scale"),
                 helper.make_node("Mul", [f"{out}_qf", f"{out}_s"], [out], name=f"{node.name}_mul")]
        return nodes, [numpy_helper.from_array(table, qn), numpy_helper.from_array(scale, sn)]
    if fmt == "uint4_std":
        return uint4_std_nodes(node, emb, q)
    # gather_block_quantized: uint8 storage, blocks along the hidden axis; zero points only when asymmetric
    # (the kernels' default for uint8 storage is 2^(bits-1), as the codes of numerics' *_sym use)
    bits = q.bits
    data, sn, zn = f"{emb.weight}_Q{bits}", f"{emb.weight}_scales", f"{emb.weight}_zero_points"
    inits = [numpy_helper.from_array(_pack(q.codes, bits), data),
             numpy_helper.from_array(q.scales.astype(np.float32), sn)]
    inputs = [data, ids, sn]
    if not _symmetric_codes(q):
        inits.append(numpy_helper.from_array(_pack_zeros(q.zeros, bits), zn))
        inputs.append(zn)
    new = helper.make_node("GatherBlockQuantized", inputs, [out], name=f"{node.name}_Q{bits}",
                           domain=MSFT, gather_axis=0, quantize_axis=1, block_size=q.group, bits=bits)
    return [new], inits


def _symmetric_codes(q: GroupQuant) -> bool:
    """Every zero point is 2^(bits-1): the symmetric scale methods (no zero-point tensor is stored)."""
    return bool(np.all(q.zeros == 2 ** (q.bits - 1)))


def uint4_std_nodes(node: Any, emb: Embedding, q: GroupQuant) -> tuple[list[Any], list[Any]]:
    """4-bit blocks with standard operators only (wasm, WebGPU, every onnxruntime): gather the packed
    rows, then on the gathered [batch, seq, dim/2] bytes only: hi = floor(b / 16), lo = b - 16 hi,
    interleave (lo first, as packed), per block (code - zero) * scale; zero points packed the same way."""
    from onnx import TensorProto, helper, numpy_helper

    ids, out, w = node.input[1], node.output[0], emb.weight
    blocks = emb.dim // q.group
    p = f"{out}_u4"
    inits = [numpy_helper.from_array(_pack(q.codes, 4), f"{w}_Q4"),
             numpy_helper.from_array(q.scales.astype(np.float32), f"{w}_scales"),
             numpy_helper.from_array(_pack_zeros(q.zeros, 4), f"{w}_zero_points"),
             numpy_helper.from_array(np.array(1 / 16, np.float32), f"{w}_u4_sixteenth"),
             numpy_helper.from_array(np.array(16, np.float32), f"{w}_u4_sixteen"),
             numpy_helper.from_array(np.array([-1], np.int64), f"{w}_u4_last"),
             numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"{w}_u4_flat"),
             numpy_helper.from_array(np.array([0, 0, blocks, q.group], np.int64), f"{w}_u4_blocks"),
             numpy_helper.from_array(np.array([0, 0, emb.dim], np.int64), f"{w}_u4_dim")]

    def unpacked(src: str, name: str) -> list[Any]:
        """Gather packed bytes [V, n/2] by ids -> float codes [batch, seq, n] (lo, hi, lo, hi, ...)."""
        return [
            helper.make_node("Gather", [src, ids], [f"{name}_b"], name=f"{name}_gather"),
            helper.make_node("Cast", [f"{name}_b"], [f"{name}_f"], name=f"{name}_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}_f", f"{w}_u4_sixteenth"], [f"{name}_d"], name=f"{name}_div"),
            helper.make_node("Floor", [f"{name}_d"], [f"{name}_hi"], name=f"{name}_floor"),
            helper.make_node("Mul", [f"{name}_hi", f"{w}_u4_sixteen"], [f"{name}_hi16"], name=f"{name}_mul16"),
            helper.make_node("Sub", [f"{name}_f", f"{name}_hi16"], [f"{name}_lo"], name=f"{name}_lo"),
            helper.make_node("Unsqueeze", [f"{name}_lo", f"{w}_u4_last"], [f"{name}_lo1"], name=f"{name}_unsq_lo"),
            helper.make_node("Unsqueeze", [f"{name}_hi", f"{w}_u4_last"], [f"{name}_hi1"], name=f"{name}_unsq_hi"),
            helper.make_node("Concat", [f"{name}_lo1", f"{name}_hi1"], [f"{name}_pairs"], name=f"{name}_concat", axis=-1),
            helper.make_node("Reshape", [f"{name}_pairs", f"{w}_u4_flat"], [name], name=f"{name}_flat"),
        ]

    nodes = unpacked(f"{w}_Q4", f"{p}_codes") + [
        helper.make_node("Reshape", [f"{p}_codes", f"{w}_u4_blocks"], [f"{p}_cb"], name=f"{p}_blocks")]
    if _symmetric_codes(q):  # the constant zero point 8
        inits = [i for i in inits if i.name != f"{w}_zero_points"]
        inits.append(numpy_helper.from_array(np.array(8, np.float32), f"{w}_u4_eight"))
        nodes.append(helper.make_node("Sub", [f"{p}_cb", f"{w}_u4_eight"], [f"{p}_centered"], name=f"{p}_sub"))
    else:
        # zero points are packed like the codes, padded to whole bytes per row: keep the first `blocks`
        inits += [numpy_helper.from_array(np.array([0], np.int64), f"{p}_zstart"),
                  numpy_helper.from_array(np.array([blocks], np.int64), f"{p}_zend")]
        nodes += unpacked(f"{w}_zero_points", f"{p}_zeros") + [
            helper.make_node("Slice", [f"{p}_zeros", f"{p}_zstart", f"{p}_zend", f"{w}_u4_last"], [f"{p}_z"],
                             name=f"{p}_zslice"),
            helper.make_node("Unsqueeze", [f"{p}_z", f"{w}_u4_last"], [f"{p}_z1"], name=f"{p}_unsq_z"),
            helper.make_node("Sub", [f"{p}_cb", f"{p}_z1"], [f"{p}_centered"], name=f"{p}_sub")]
    nodes += [
        helper.make_node("Gather", [f"{w}_scales", ids], [f"{p}_s"], name=f"{p}_gather_scales"),
        helper.make_node("Unsqueeze", [f"{p}_s", f"{w}_u4_last"], [f"{p}_s1"], name=f"{p}_unsq_s"),
        helper.make_node("Mul", [f"{p}_centered", f"{p}_s1"], [f"{p}_values"], name=f"{p}_scale"),
        helper.make_node("Reshape", [f"{p}_values", f"{w}_u4_dim"], [out], name=f"{p}_out"),
    ]
    return nodes, inits


def build_model(graph: Graph, plan: Plan, quantizer: Quantizer) -> "onnx.ModelProto":
    """The fp32 graph with the plan applied (module doc); deterministic for a given plan + statistics."""
    from onnx import helper

    check_plan(graph, plan)
    model = copy.deepcopy(graph.model)
    g = model.graph
    by_node = {node: layer for layer in graph.layers.values() for node in layer.nodes}
    fmt = plan.options.get("embedding_format", "float")
    tables = {t.node: t for t in graph.tables} if plan.options.get("table_format", "float") == "int8_row" else {}
    new_nodes: list[Any] = []
    added: dict[str, Any] = {}
    dropped: set[str] = set()
    for node in g.node:
        layer = by_node.get(node.name)
        if layer is not None:
            spec = plan.layer(layer.name)
            if spec.kind == "float":
                new_nodes.append(node)
                continue
            new, inits = matmul_nbits(node, layer, quantizer.layer(layer.name, spec), spec)
            new_nodes.append(new)
            added.update({i.name: i for i in inits})
            dropped.add(layer.weight)
        elif plan.embedding is not None and graph.embedding and node.name == graph.embedding.node:
            nodes, inits = embedding_nodes(node, graph.embedding, quantizer.embedding(plan.embedding), fmt)
            new_nodes += nodes
            added.update({i.name: i for i in inits})
            dropped.add(graph.embedding.weight)
        elif node.name in tables:
            table = tables[node.name]
            spec = LayerQuant(8, table.dim, "rtn_sym")
            nodes, inits = embedding_nodes(node, table, quantizer.embedding(spec, table), "int8_row")
            new_nodes += nodes
            added.update({i.name: i for i in inits})
            dropped.add(table.weight)
        else:
            new_nodes.append(node)
    still_used = {i for n in new_nodes for i in n.input}
    keep = [i for i in g.initializer if i.name not in dropped or i.name in still_used]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep + list(added.values()))
    if not any(o.domain == MSFT for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MSFT, 1))
    return model


def calibration_hessians(graph: Graph, plan_list: Iterable[Plan], source: Any, recipe: Any,
                         work: Path) -> dict[str, np.ndarray] | None:
    """The Hessians the plans need (None when none needs calibration), from their calibration text set."""
    from ...quant.texts import load

    plans = list(plan_list)
    needed = [p for p in plans if p.needs_calibration()]
    if not needed:
        return None
    names = {p.calibration for p in needed}
    if len(names) != 1 or not next(iter(names)):
        raise ModelportError(f"the quantization plans name calibration sets {sorted(names)}; one set is needed")
    try:
        texts = load(next(iter(names)))
    except ValueError as e:
        raise ModelportError(f"quantization plan: {e}") from None
    feeds = text_feeds(_tokenizer(source), texts, recipe)
    return hessians(graph, feeds, work)


def _tokenizer(source: Any) -> Any:
    from ...torch_model import load_tokenizer

    return load_tokenizer(source)


def write_variants(fp32: Path, plans: dict[str, Plan], dst: dict[str, Path], source: Any, recipe: Any,
                   step: Callable[[str], Any]) -> None:
    """Write each searched variant (name -> plan) from the fp32 graph at `fp32`."""
    from .ort import save_model

    graph = load_graph(fp32)
    for plan in plans.values():
        check_plan(graph, plan)
    step(f"calibration statistics for {', '.join(plans)} ({next(iter(plans.values())).calibration or 'none needed'})")
    quantizer = Quantizer(graph, calibration_hessians(graph, plans.values(), source, recipe, fp32.parent))
    for name, plan in plans.items():
        step(f"write {name} from its plan (sha256 {plan.digest()[:12]})")
        save_model(build_model(graph, plan, quantizer), dst[name])


# --- the search -------------------------------------------------------------------------------------------


@dataclass
class DevSet:
    """The dev texts' feeds and the fp32 graph's embeddings of them (what candidates are compared with)."""

    feeds: list[dict[str, np.ndarray]]
    golden: np.ndarray
    queries: int

    def quality(self, emb: np.ndarray) -> "Quality":
        """quant.search.dev_quality against the fp32 graph's embeddings."""
        from ...quant.search import dev_quality

        return dev_quality(self.golden, emb, self.queries)


def _bits_per_weight(graph: Graph, model: "onnx.ModelProto") -> float:
    """Stored bits per weight of the quantizable tensors (layers + embedding tables), codes + scales + zeros."""
    tables = ([graph.embedding] if graph.embedding else []) + graph.tables
    quantizable = {layer.weight for layer in graph.layers.values()} | {t.weight for t in tables}
    n = sum(layer.k * layer.n for layer in graph.layers.values()) + sum(t.vocab * t.dim for t in tables)
    stored = sum(len(i.raw_data) for i in model.graph.initializer
                 if i.name in quantizable or any(i.name.startswith(w + "_") for w in quantizable))
    return 8.0 * stored / max(n, 1)


def _wasm_portable(plan: Plan | None) -> bool:
    return plan is not None and plan.options.get("embedding_format", "float") in WASM_EMBEDDING_FORMATS


def search(ctx: "SearchContext") -> "SearchResult":
    """Sensitivity, candidates, Pareto front and the chosen q4mix / q4mix-wasm plans (module doc)."""
    from ...quant.search import DEV_QUERIES, Candidate, SearchResult, choose, sensitivity
    from ...quant.texts import calibration_texts, dev_texts

    fp32 = Path(ctx.fp32_dir) / "onnx" / "model.onnx"
    graph = load_graph(fp32)
    work = Path(ctx.work)
    tokenizer = _tokenizer(ctx.source)
    ctx.step(f"calibration statistics ({ctx.calibration}: {len(calibration_texts(ctx.calibration))} texts)")
    hess = hessians(graph, text_feeds(tokenizer, calibration_texts(ctx.calibration), ctx.recipe), work)
    quantizer = Quantizer(graph, hess)
    feeds = text_feeds(tokenizer, dev_texts(ctx.dev), ctx.recipe)
    dev = DevSet(feeds, embed(graph.model, feeds, work), DEV_QUERIES)
    ref_bytes = graph.fp32_bytes()
    candidates: list[Candidate] = []

    def measure(name: str, plan: Plan, baseline: bool = False, note: str = "") -> Candidate:
        ctx.step(name)
        model = build_model(graph, plan, quantizer)
        c = Candidate(name, model.ByteSize(), _bits_per_weight(graph, model), dev.quality(embed(model, feeds, work)),
                      plan=plan, baseline=baseline, note=note)
        candidates.append(c)
        return c

    def plan_of(default: LayerQuant, layers: dict[str, LayerQuant] | None = None, emb: str = "float",
                emb_group: int = 128) -> Plan:
        embedding, options = embedding_spec(graph, emb, emb_group)
        calibrated = any(s.gptq or s.scales.startswith("mse") for s in [default, *(layers or {}).values()])
        return Plan("onnx", default, dict(layers or {}), embedding, ctx.calibration if calibrated else "", options)

    # the naive rows: onnxruntime's own quantizer (today's q4) and peers
    ctx.step("baselines: onnxruntime MatMulNBitsQuantizer (q4), Olive")
    candidates.append(ort_q4_candidate(fp32, work, dev, graph))
    candidates.extend(olive_candidates(fp32, work, dev, graph, ctx.source, ctx.calibration))
    rtn = LayerQuant(4, 32, "rtn_sym")
    measure("rtn-sym-b32 (own writer)", plan_of(rtn), baseline=True, note="same codes as onnxruntime's q4")

    ctx.step(f"sensitivity: {len(graph.layers)} layers, one at a time at 4-bit RTN, on {len(feeds)} dev texts")
    keep = LayerQuant(32, 0, kind="float")
    base = Plan("onnx", keep, {}, None, "", {"embedding_format": "float"})

    def loss(name: str) -> float:
        model = build_model(graph, base.with_layers({name: rtn}), quantizer)
        return 1.0 - dev.quality(embed(model, feeds, work)).cos_mean  # type: ignore[operator]

    ranking = sensitivity(graph.layers, loss)
    orders = {"top": [name for name, _ in ranking], "dense": per_weight(graph, ranking)}

    eight = {name: LayerQuant(8, eight_bit_group(graph.layers[name]), "rtn_sym") for name in graph.layers}
    gptq32 = LayerQuant(4, 32, "mse_asym", gptq=True)
    embs = ["gather_block_quantized", "uint4_std", "int8_row"] if graph.embedding else []
    measure("gptq-mse-asym-b32", plan_of(gptq32))
    if ctx.quick:
        grid = [("gptq-mse-asym-b32", gptq32, "top", [0, 2])]
    else:
        measure("rtn-asym-b32", plan_of(LayerQuant(4, 32, "rtn_asym")))
        measure("mse-asym-b32", plan_of(LayerQuant(4, 32, "mse_asym")))
        measure("gptq-rtn-asym-b32", plan_of(LayerQuant(4, 32, "rtn_asym", gptq=True)))
        b16 = LayerQuant(4, 16, "mse_asym", gptq=True)
        measure("gptq-mse-asym-b16", plan_of(b16))
        if graph.embedding:
            for group in (32, 64):
                measure(f"gptq-mse-asym-b32 emb-gbq4/{group}", plan_of(gptq32, emb="gather_block_quantized",
                                                                        emb_group=group))
            measure("gptq-mse-asym-b16 emb-gbq4/128", plan_of(b16, emb="gather_block_quantized"))
        grid = [("gptq-mse-asym-b32", gptq32, order, [0, 4, 8, 12, 16, 20]) for order in ("top", "dense")]
    for label, default, order, ks in grid:
        for k in ks:
            for emb in embs:
                if k == 0 and order != "top":
                    continue  # the same plan as top0
                name = f"{label} {order}{k}@8b emb-{EMB_LABEL[emb]}"
                measure(name, plan_of(default, {n: eight[n] for n in orders[order][:k]}, emb))

    chosen: dict[str, Candidate] = {}
    best = choose(candidates, ctx.goal)
    if best is not None:
        chosen["q4mix"] = best
    portable = choose([c for c in candidates if _wasm_portable(c.plan)], ctx.goal)
    if portable is not None:
        chosen["q4mix-wasm"] = portable
    notes = []
    for variant in SEARCHED_VARIANTS:
        if variant not in chosen:
            notes.append(f"no candidate meets the goal {ctx.goal.text()} for {variant} on the dev texts: the "
                         "Pareto front shows the best reachable")
    return SearchResult("onnx", ctx.source.name, ctx.goal, ref_bytes, candidates, ranking, chosen, notes,
                        {"calibration": ctx.calibration, "dev": ctx.dev})


EMB_LABEL = {"float": "f32", "int8_row": "i8row", "gather_block_quantized": "gbq4", "uint4_std": "u4std"}


def embedding_spec(graph: Graph, fmt: str, group: int = 128) -> tuple[LayerQuant | None, dict[str, Any]]:
    """The embedding's LayerQuant for a format, and the plan options (a quantized embedding table goes
    with int8-row position tables: 0.8 MB -> 0.2 MB on MiniLM at no measurable cost).

    int8_row: rtn_sym, group = dim. 4-bit (gather_block_quantized, uint4_std): rtn_sym at block 128
    (the largest dividing MiniLM's 384), no zero-point tensor. Measured on MiniLM's dev texts with the
    GPTQ MatMuls and 8-12 layers at 8 bits: block 128 cost no min cosine against block 32 / 64
    (0.970 vs 0.968 / 0.969) and saves 0.8 / 0.4 MB; with 16 layers at 8 bits rtn_sym gave min 0.9848 /
    mean 0.9956, rtn_asym 0.9838 / 0.9960, mse_sym 0.9809 / 0.9957. Symmetric also stores no zero
    points, which matters beyond size: onnxruntime's WebGPU GatherBlockQuantized reads 4-bit zero points
    unpadded across rows and refuses an odd block count per row ("scales and zero_points must have the
    same shape": 384 / 128 = 3)."""
    if fmt == "float" or graph.embedding is None:
        return None, {"embedding_format": "float"}
    options = {"embedding_format": fmt, "table_format": "int8_row" if graph.tables else "float"}
    if fmt == "int8_row":
        return LayerQuant(8, graph.embedding.dim, "rtn_sym"), options
    while graph.embedding.dim % group:
        group //= 2
    return LayerQuant(4, group, "rtn_sym"), options


def per_weight(graph: Graph, ranking: list[tuple[str, float]]) -> list[str]:
    """Layers by quality lost per weight (the 8-bit promotion's cost grows with K x N): a 384 x 384
    attention projection costs a quarter of an MLP matrix, so it goes first at a third of the loss."""
    loss = dict(ranking)
    return sorted(loss, key=lambda n: (-loss[n] / (graph.layers[n].k * graph.layers[n].n), n))


def eight_bit_group(layer: Layer) -> int:
    """8-bit layers use block 128 where K allows (scales cost 0.25 bit per weight instead of 1)."""
    return 128 if layer.k % 128 == 0 else 32


def ort_q4_candidate(fp32: Path, work: Path, dev: DevSet, graph: Graph) -> "Candidate":
    """Today's q4: onnxruntime's MatMulNBitsQuantizer, RTN symmetric, block 32, embedding fp32."""
    import onnx

    from ...quant.search import Candidate, Quality
    from .ort import quantize_q4

    dst = work / "ort_q4.onnx"
    try:
        quantize_q4(fp32, dst, quiet=True)
        model = onnx.load(str(dst))
        return Candidate("onnxruntime q4 (MatMulNBitsQuantizer)", dst.stat().st_size, _bits_per_weight(graph, model),
                         dev.quality(embed(model, dev.feeds, work)), baseline=True,
                         note="what `convert` writes as q4 today")
    except Exception as e:  # noqa: BLE001 - a peer tool failing is a row, not a crash
        return Candidate("onnxruntime q4 (MatMulNBitsQuantizer)", 0, 0.0, Quality(), baseline=True,
                         failed=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    finally:
        dst.unlink(missing_ok=True)


OLIVE_SCRIPT = Path(__file__).resolve().parents[4] / "benchmarks" / "olive_quant.py"


def olive_candidates(fp32: Path, work: Path, dev: DevSet, graph: Graph, source: Any = None,
                     calibration: str = "") -> list["Candidate"]:
    """Olive's quantization passes as peer rows. olive-ai is not a dependency of modelport (it pins its
    own torch / transformers) and is never imported here: where MODELPORT_OLIVE_PYTHON names the python
    of a venv with olive-ai, benchmarks/olive_quant.py runs in it as a subprocess and writes one ONNX
    file per pass; each is measured like every candidate (file size, dev-set quality), each pass that
    failed is a failed row with Olive's reason."""
    import json
    import os
    import subprocess

    import onnx

    from ...quant.search import Candidate, Quality
    from ...quant.texts import calibration_texts

    def failed(name: str, why: str) -> Candidate:
        return Candidate(name, 0, 0.0, Quality(), baseline=True, failed=why)

    python = os.environ.get("MODELPORT_OLIVE_PYTHON", "")
    if not python:
        return [failed("Olive (olive-ai) quantization", "not run: set MODELPORT_OLIVE_PYTHON to the python of a venv "
                       "with olive-ai (benchmarks/quant_onnx.py --olive-python)")]
    if not OLIVE_SCRIPT.is_file():
        return [failed("Olive (olive-ai) quantization", f"not run: {OLIVE_SCRIPT} not found (a source checkout has it)")]
    out = work / "olive"
    cmd = [python, str(OLIVE_SCRIPT), str(fp32), str(out)]
    if source is not None:
        texts = work / "olive-calibration.json"
        texts.write_text(json.dumps(list(calibration_texts(calibration) if calibration else calibration_texts())))
        cmd += ["--hf-model", str(source.path), "--texts", str(texts)]
    proc = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "OLIVE_DISABLE_TELEMETRY": "1"})
        rows = json.loads((out / "olive.json").read_text())["rows"]
    except Exception as e:  # noqa: BLE001 - a peer tool failing is a row, not a crash
        tail = (proc.stderr.strip().splitlines() or [""])[-1] if proc is not None else ""
        return [failed("Olive (olive-ai) quantization", f"{type(e).__name__}: {str(e)[:150]} {tail[:150]}".strip())]
    candidates = []
    for row in rows:
        if row["failed"]:
            candidates.append(failed(row["name"], row["failed"]))
            continue
        path = out / row["file"]
        try:
            model = onnx.load(str(path))
            size = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())
            candidates.append(Candidate(row["name"], size, _bits_per_weight(graph, model),
                                        dev.quality(embed(model, dev.feeds, work)), baseline=True,
                                        note="olive-ai peer row"))
        except Exception as e:  # noqa: BLE001
            candidates.append(failed(row["name"], f"measure: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"))
    return candidates


def searched_ops(path: Path) -> set[str]:
    """The operator types of an ONNX file (graph only, weights not read)."""
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}

