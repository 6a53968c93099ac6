"""Streamed decoder export: the graph from a weightless model, the weights from the checkpoint one tensor
at a time, so no variant ever holds a second copy of the model.

Why: the old path (torch.onnx.export of the loaded fp32 model, then to_fp16 / untie / onnxruntime's
MatMulNBitsQuantizer on whole in-memory ModelProtos) peaked at 16-17 GB of RSS per billion parameters
(Llama-3.2-1B shape, q4 only: 19.8 GB, 413 s); a 3B model did not fit in 24 GB.

How:
1. `export_skeleton`: the Hugging Face model is built from its config under FakeTensorMode (no storage)
   and exported with the same KV-cache wrapper, example and dynamic shapes as before
   (torch.onnx dynamo). Parameters become initializers without values (`onnx_ir.ExternalTensor`
   placeholders, `STREAM`); the rotary buffers are computed for real (a model whose parameters live on
   the meta device) so the optimizer folds the same constants as a real export. The graph is the
   onnxscript optimizer's, like `optimize=True`; Linear weights stay `Transpose(weight) -> MatMul`
   (onnxruntime folds that at load for float variants).
2. Each variant is a graph rewrite of that skeleton: fp16 by onnxruntime's own float16 converter (it
   only flips a value-less initializer's type), 4-bit by replacing each MatMul on a weight with
   MatMulNBits (block 32, symmetric) and the embedding Gather with 4-bit blocks unpacked by standard
   operators (quantize.uint4_std_nodes: GatherBlockQuantized's size, and it runs in onnxruntime-web's
   wasm build, which lacks GatherBlockQuantized).
3. `write_streamed` fills the placeholders tensor by tensor from the safetensors files (plain reads, no
   mmap: mapped pages would count in the RSS): fp16 through the converter's own clamping
   (convert_np_to_float16), 4-bit through onnxruntime's quantize_matmul_4bits on the [K, N] matrix in the
   variant's float type, which is exactly what MatMulNBitsQuantizer calls: the bytes equal the old path's.
   The embedding table is quantized the same way (N = vocab, K = hidden), so with tied embeddings the
   dequantized table and the dequantized lm_head are the same matrix.

`DequantizedWeights` reads a written 4-bit file back, one PyTorch weight per `pop`, for the
dequantized-weights golden (lm.compute_golden consumes it): the golden judges the bytes in the file.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...checkpoint_reader import Checkpoint, parameters_on_meta
from ...errors import ModelportError
from .ort import OPSET, Q4_BLOCK, needs_external_data

STREAM = "__streamed__"  # the location of a value-less initializer until write_streamed fills it
WRAPPER = "model."  # make_kv_wrapper keeps the Hugging Face model as `self.model`: graph names get this prefix
MSFT = "com.microsoft"
# metadata on each node that reads a 4-bit weight: the PyTorch parameter it came from (DequantizedWeights)
WEIGHT_KEY = "modelport.weight"


# --- the graph without weights ----------------------------------------------------------------------------


@dataclass
class Skeleton:
    """The exported graph with value-less weight initializers, and where each one's values come from."""

    proto: Any  # onnx.ModelProto
    sources: dict[str, str]  # graph initializer -> checkpoint tensor


def export_skeleton(source, wrap: Callable[[Any], Any], example: tuple[Any, ...], dynamic: dict[str, Any],
                    input_names: list[str], output_names: list[str]) -> Skeleton:
    """torch.onnx (dynamo) export of `wrap(model)` (decoder.make_kv_wrapper) around a storage-less model
    (module doc, 1.)."""
    import onnx_ir as ir
    import onnxscript
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = source.trust_remote_code
    config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust)
    kwargs = dict(attn_implementation="eager", dtype=torch.float32, trust_remote_code=trust)
    with parameters_on_meta():
        shell = AutoModelForCausalLM.from_config(config, **kwargs)
    buffers = {WRAPPER + n: b.detach().numpy().copy() for n, b in shell.named_buffers()}
    # tied parameters: one graph initializer, several names; the checkpoint stores one of them
    aliases: dict[int, list[str]] = {}
    for name, p in shell.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    del shell
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    wrapper = wrap(model.eval())
    with torch.no_grad():
        program = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=dynamic, input_names=input_names,
                                    output_names=output_names, opset_version=OPSET, optimize=False, verbose=False)
    ckpt = Checkpoint(source.weight_files)
    names = {n: group for group in aliases.values() for n in group}
    sources: dict[str, str] = {}
    for value in program.model.graph.initializers.values():
        if value.name in buffers:
            value.const_value = ir.Tensor(buffers[value.name], name=value.name)
            continue
        hf = value.name.removeprefix(WRAPPER)
        found = [n for n in names.get(hf, [hf]) if n in ckpt]
        if not found:
            raise ModelportError(f"graph weight {value.name}: no tensor {hf} (or a tied alias) in the checkpoint")
        sources[value.name] = found[0]
        value.const_value = None  # the optimizer folds nothing that depends on a weight's values
    quiet = logging.getLogger("onnx_ir")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # one "skipped deduplication" line per value-less weight otherwise
    try:
        onnxscript.optimizer.optimize_ir(program.model)  # what optimize=True runs
    finally:
        quiet.setLevel(level)
    for value in program.model.graph.initializers.values():
        if value.const_value is None:
            value.const_value = ir.ExternalTensor(STREAM, 0, 0, value.dtype, shape=value.shape, name=value.name)
    proto = ir.serde.serialize_model(program.model)
    _merge_tied(proto, sources)
    return Skeleton(proto, sources)


def _merge_tied(proto, sources: dict[str, str]) -> None:
    """torch.export lifts a tied table once per name (embed_tokens and lm_head); a real export's
    optimizer merges the two equal initializers, the value-less ones here are merged by their source."""
    first: dict[str, str] = {}
    rename: dict[str, str] = {}
    for init in proto.graph.initializer:
        if init.name in sources:
            rename[init.name] = first.setdefault(sources[init.name], init.name)
    rename = {k: v for k, v in rename.items() if k != v}
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    keep = [i for i in proto.graph.initializer if i.name not in rename]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    for name in rename:
        del sources[name]
    for name in [n for n in sources if n not in {i.name for i in keep}]:
        del sources[name]


def _mark(init) -> None:
    from onnx import TensorProto

    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value=STREAM)


def _unmark(init) -> None:
    from onnx import TensorProto

    init.data_location = TensorProto.DEFAULT
    del init.external_data[:]


def streamed(init) -> bool:
    from onnx import TensorProto

    return init.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == STREAM for e in init.external_data)


# --- variants: graph rewrites of the skeleton ---------------------------------------------------------------

Producer = Callable[[], np.ndarray]


@dataclass
class Variant:
    """A rewritten skeleton and, for every value-less initializer, how to make its values."""

    proto: Any
    producers: dict[str, Producer]


def float_variant(skel: Skeleton, ckpt: Checkpoint, fp16: bool) -> Variant:
    """fp32 as exported; fp16 through onnxruntime's converter (the old to_fp16's settings)."""
    proto = copy.deepcopy(skel.proto)
    if fp16:
        from onnx import helper
        from onnxruntime.transformers import float16

        # the converter runs shape inference, which refuses a missing external file: hand it value-less
        # tensors (it then only flips their type), mark them again afterwards. It reads each converted
        # initializer's shape by decoding its values; the dims say the same without values.
        value_less = [i.name for i in proto.graph.initializer if streamed(i)]
        for i in proto.graph.initializer:
            if i.name in value_less:
                _unmark(i)
        decode = float16.make_value_info_from_tensor
        float16.make_value_info_from_tensor = lambda t: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        try:
            proto = float16.convert_float_to_float16(proto, keep_io_types=True,
                                                     op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST))
        finally:
            float16.make_value_info_from_tensor = decode
        for i in proto.graph.initializer:
            if i.name in value_less:
                _mark(i)
    return Variant(proto, {i.name: _float_producer(ckpt, skel.sources[i.name], i.data_type)
                           for i in proto.graph.initializer if streamed(i)})


def _float_producer(ckpt: Checkpoint, name: str, data_type: int) -> Producer:
    from onnx import TensorProto

    def make() -> np.ndarray:
        values = ckpt.array(name)
        return _fp16(values) if data_type == TensorProto.FLOAT16 else values

    return make


def _fp16(values: np.ndarray) -> np.ndarray:
    """float32 -> float16 exactly as onnxruntime's float16 converter does it (tiny values clamp to
    5.96e-8, not to 0; large ones to 65504)."""
    from onnxruntime.transformers.float16 import convert_np_to_float16

    return convert_np_to_float16(values)


class _Q4Cache:
    """The last 4-bit quantization, so a weight's codes and scales (written one after the other) and a
    tied table's two uses come from one call."""

    def __init__(self, ckpt: Checkpoint, fp16: bool) -> None:
        self.ckpt, self.fp16, self.key, self.value = ckpt, fp16, None, None

    def get(self, name: str, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
        """(packed uint8 [N, blocks, 16], scales [N, blocks]) of the Linear-layout [N, K] matrix `name`
        (`transposed`: the checkpoint tensor is [K, N], a MatMul weight as stored)."""
        key = (name, transposed)
        if key != self.key:
            self.value = None  # free the previous one first
            w = self.ckpt.array(name)
            b = w if transposed else w.T  # MatMul B: [K, N]
            self.value = quantize_q4_matrix(_fp16(b) if self.fp16 else b)
            self.key = key
        return self.value  # type: ignore[return-value]


def quantize_q4_matrix(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MatMul weight B [K, N] (float32 or float16) -> (packed [N, blocks, 16] uint8, scales [N, blocks] in
    B's type): onnxruntime's quantize_matmul_4bits with the arguments DefaultWeightOnlyQuantizer passes for
    block 32, symmetric (ort.quantize_q4), so the bytes are the ones the old path wrote."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    k, n = b.shape
    b = np.ascontiguousarray(b)
    pad = (-k) % Q4_BLOCK
    if pad:
        b = np.pad(b, ((0, pad), (0, 0)))
    blocks = (k + pad) // Q4_BLOCK
    packed = np.zeros((n, blocks, Q4_BLOCK // 2), dtype=np.uint8)
    zero = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=b.dtype)
    quantize_matmul_4bits(packed, b, scales, zero, Q4_BLOCK, n, k, True)  # K unpadded, as the quantizer passes it
    return packed, scales


def _module_weight(node) -> str | None:
    """The PyTorch parameter a MatMul / Gather computes with, from the exporter's name scopes
    ([..., 'model.model.layers.0.self_attn.q_proj', 'linear']): the module path minus the wrapper."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            scopes = json.loads(p.value.replace("'", '"'))
            if len(scopes) >= 2 and scopes[-2].startswith(WRAPPER):
                return scopes[-2].removeprefix(WRAPPER) + ".weight"
    return None


def q4_variant(skel: Skeleton, ckpt: Checkpoint, fp16: bool) -> Variant:
    """Every MatMul on a weight -> MatMulNBits (4-bit, block 32, sym; lm_head included, tied or not), the
    embedding Gather -> 4-bit blocks + standard operators; fp16 compute for q4f16. Other weights (norms)
    stay float in the variant's type."""
    import onnx
    from onnx import TensorProto, helper

    from .quantize import Embedding, uint4_std_nodes
    from ...quant.numerics import GroupQuant

    base = float_variant(skel, ckpt, fp16)
    proto = base.proto
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    stream_inits = {n for n, i in inits.items() if streamed(i)}
    producer = {o: n for n in graph.node for o in n.output}
    cache = _Q4Cache(ckpt, fp16)
    scale_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    producers: dict[str, Producer] = {}
    new_inits: list[Any] = []
    nodes: list[Any] = []

    def skeleton(name: str, dims: list[int], data_type: int):
        t = onnx.TensorProto(name=name, dims=dims, data_type=data_type)
        _mark(t)
        return t

    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2:
            b = node.input[1]
            t = producer.get(b)
            perm = None if t is None else next((list(a.ints) for a in t.attribute if a.name == "perm"), None)
            if t is not None and t.op_type == "Transpose" and t.input[0] in stream_inits and perm in (None, [1, 0]):
                weight, transposed = t.input[0], False  # Linear [N, K] through a Transpose
            elif b in stream_inits:
                weight, transposed = b, True  # a MatMul weight stored [K, N]
            else:
                nodes.append(node)
                continue
            dims = list(inits[weight].dims)
            if len(dims) != 2:
                nodes.append(node)
                continue
            n, k = (dims[1], dims[0]) if transposed else (dims[0], dims[1])
            blocks = (k + Q4_BLOCK - 1) // Q4_BLOCK
            qb, qs = f"{node.output[0]}.{weight}_Q4", f"{node.output[0]}.{weight}_scales"
            new_inits += [skeleton(qb, [n, blocks, Q4_BLOCK // 2], TensorProto.UINT8), skeleton(qs, [n, blocks], scale_type)]
            src = skel.sources[weight]
            producers[qb] = lambda src=src, tr=transposed: cache.get(src, tr)[0]
            producers[qs] = lambda src=src, tr=transposed: cache.get(src, tr)[1]
            new = helper.make_node("MatMulNBits", [node.input[0], qb, qs], list(node.output),
                                   name=f"{node.name}_Q4", domain=MSFT, K=k, N=n, bits=4, block_size=Q4_BLOCK)
            torch_name = _module_weight(node) or skel.sources[weight]
            new.metadata_props.add(key=WEIGHT_KEY, value=torch_name)
            nodes.append(new)
        elif (node.op_type == "Gather" and node.input[0] in stream_inits and node.input[1] == "input_ids"
              and len(inits[node.input[0]].dims) == 2):
            table = node.input[0]
            vocab, dim = inits[table].dims
            if dim % Q4_BLOCK:
                nodes.append(node)
                continue
            w = f"{table}.embedding"
            out = node.output[0]
            gather = helper.make_node("Gather", list(node.input), [f"{out}_dq" if fp16 else out], name=node.name)
            dummy = GroupQuant(codes=np.zeros((1, 2), np.uint8), scales=np.zeros((1, 1), np.float32),
                               zeros=np.full((1, 1), 8.0, np.float32), bits=4, group=Q4_BLOCK)
            added, extra = uint4_std_nodes(gather, Embedding(w, node.name, vocab, dim), dummy)
            codes, scales = f"{w}_Q4", f"{w}_scales"
            for i in extra:
                if i.name == codes:
                    i = skeleton(codes, [vocab, dim // 2], TensorProto.UINT8)
                elif i.name == scales:
                    i = skeleton(scales, [vocab, dim // Q4_BLOCK], TensorProto.FLOAT)
                new_inits.append(i)
            src = skel.sources[table]
            producers[codes] = lambda src=src: cache.get(src, False)[0].reshape(vocab, dim // 2)
            producers[scales] = lambda src=src: cache.get(src, False)[1].astype(np.float32)
            torch_name = _module_weight(node) or skel.sources[table]
            added[0].metadata_props.add(key=WEIGHT_KEY, value=torch_name)  # the Gather of the packed rows
            nodes += added
            if fp16:
                nodes.append(helper.make_node("Cast", [f"{out}_dq"], [out], name=f"{node.name}_to_fp16",
                                              to=TensorProto.FLOAT16))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    _prune(graph)
    if not any(o.domain == MSFT for o in proto.opset_import):
        proto.opset_import.add(domain=MSFT, version=1)
    producers.update({n: p for n, p in base.producers.items() if n in {i.name for i in graph.initializer}})
    return Variant(proto, producers)


def _prune(graph) -> None:
    """Drop nodes whose outputs nothing reads (the weights' Transposes) and initializers nothing reads."""
    from .ort import drop_dead_nodes

    drop_dead_nodes(graph)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


# --- writing ----------------------------------------------------------------------------------------------


def _nbytes(init) -> int:
    import onnx

    itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return int(np.prod(init.dims, dtype=np.int64)) * itemsize


def write_streamed(variant: Variant, path: Path) -> bool:
    """Fill every value-less initializer from its producer, one tensor at a time, into `path` (weights
    inline) or `<path>_data` beside it above protobuf's 2 GB (ort.needs_external_data), as transformers.js
    loads it. Returns whether the weights went to `<path>_data`."""
    import onnx
    from onnx import TensorProto

    proto = variant.proto
    total = sum(_nbytes(i) if streamed(i) else len(i.raw_data) for i in proto.graph.initializer)
    external = needs_external_data(total)
    data = path.with_name(path.name + "_data")
    data.unlink(missing_ok=True)
    fh = open(data, "wb") if external else None
    try:
        for init in proto.graph.initializer:
            if not streamed(init):
                continue
            values = variant.producers[init.name]()
            want = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            if tuple(values.shape) != tuple(init.dims) or values.dtype != want:
                raise ValueError(f"{init.name}: made {values.dtype}{list(values.shape)}, the graph says "
                                 f"{want}{list(init.dims)}")
            raw = np.ascontiguousarray(values).tobytes()
            del values
            del init.external_data[:]
            if fh is None:
                init.data_location = TensorProto.DEFAULT
                init.raw_data = raw
            else:
                offset = fh.tell()
                fh.write(raw)
                for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(len(raw)))):
                    init.external_data.add(key=key, value=value)
            del raw
    finally:
        if fh is not None:
            fh.close()
    onnx.save(proto, str(path))
    return external


# --- reading a 4-bit file back for the golden -----------------------------------------------------------------


def dequantized_entries(proto) -> dict[str, tuple[str, str, int]]:
    """PyTorch parameter -> (codes initializer, scales initializer, K) for every 4-bit weight of a written
    file, from the WEIGHT_KEY metadata q4_variant puts on the nodes that read them."""
    inits = {i.name: i for i in proto.graph.initializer}
    out: dict[str, tuple[str, str, int]] = {}
    for node in proto.graph.node:
        name = next((p.value for p in node.metadata_props if p.key == WEIGHT_KEY), None)
        if name is None:
            continue
        if node.op_type == "MatMulNBits":
            k = next(a.i for a in node.attribute if a.name == "K")
            out[name] = (node.input[1], node.input[2], k)
        else:  # the embedding's Gather of packed rows [vocab, dim / 2]
            codes = node.input[0]
            out[name] = (codes, codes.removesuffix("_Q4") + "_scales", 2 * inits[codes].dims[1])
    return out


class DequantizedWeights(dict):
    """PyTorch parameter name -> its dequantized float32 value in a written 4-bit file, read when popped
    (lm.replace_weights pops each one as it replaces it), so no second model-sized dict exists."""

    def __init__(self, path: Path) -> None:
        import onnx

        self.path = Path(path)
        self.proto = onnx.load(str(path), load_external_data=False)
        self.inits = {i.name: i for i in self.proto.graph.initializer}
        self.entries = dequantized_entries(self.proto)
        if not self.entries:
            raise ValueError(f"{self.path.name} has no 4-bit weight written by the streamed export")
        super().__init__({name: None for name in self.entries})
    def _array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name], base_dir=str(self.path.parent))

    def value(self, name: str) -> np.ndarray:
        codes_name, scales_name, k = self.entries[name]
        codes, scales = self._array(codes_name), self._array(scales_name).astype(np.float32)
        rows = codes.shape[0]
        from .weights import unpack

        q = unpack(codes.reshape(rows, -1), 4).astype(np.float32)
        blocks = scales.reshape(rows, -1).shape[1]
        w = (q.reshape(rows, blocks, Q4_BLOCK) - np.float32(8.0)) * scales.reshape(rows, blocks, 1)
        return w.reshape(rows, -1)[:, :k]

    def pop(self, name: str, *default: Any) -> np.ndarray:  # type: ignore[override]
        super().pop(name)
        return self.value(name)
