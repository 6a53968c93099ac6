"""A NumPy reference interpreter for Core ML ML Program packages (`.mlpackage`).

Why it exists: Core ML has no Linux runtime (coremltools converts on Linux but cannot predict),
yet modelport must show that the *shipped file* computes what PyTorch computes. So this module
reads the package itself — `Manifest.json`, the `model.mlmodel` protobuf (parsed with the classes
in `coremltools.proto`, no converter code) and `weights/weight.bin` (parsed here) — and runs the
MIL program op by op with NumPy.

Numerics follow Core ML's storage rules, not the most accurate possible math:
- every op's result is rounded to the dtype the program declares for it, so an fp16 program keeps
  fp16 tensors between ops as Core ML does; inside one op the math is float32 (fp16 inputs are
  upcast, which is exact), so an fp16 verdict measures fp16 storage, not NumPy's fp16 kernels;
- the dot products of float32 programs (linear, matmul) accumulate in float64 and are rounded
  once to float32: what is left is the program's own storage rounding, not NumPy's summation
  order. Measured on the tiny SmolLM3 (4 layers, logits up to 12): PyTorch fp32 is 6.3e-6 from
  float64 and so was a float32-accumulating interpreter (5.7e-6), in opposite directions, so the
  two differed by 1.2e-5 with no conversion error at all; accumulating in float64 brings the
  interpreter to 1.5e-6 from float64 there. What remains is float32 storage between ops, as on
  device (one logit of the w4 package stays 5.1e-6 from float64, PyTorch 6.1e-6 the other way);
- weights are decompressed from their stored form (int8 + scale, n-bit palette indices + LUT)
  exactly as the MIL constexpr op specifications define;
- declared shapes are checked after every op, and inputs against the model's fixed, range or
  enumerated shapes, so a runner cannot feed what Core ML would refuse.

Coverage is deliberate: `OPS` holds the ops the supported recipes produce (BERT-family and
XLM-R encoders, fixed/range/enumerated shapes, fp32/fp16, 8-bit linear and 4/6-bit palettized
weights; decoder LLMs — Llama, Qwen2/3, SmolLM3 — with an iOS18 stateful KV cache, flexible
query and cache lengths, 8-bit and 4-bit block-wise weights). Any other op is refused when the
package is loaded, with a ModelportError naming it.

States (iOS18 `ct.StateType`, the KV cache) are a dict of NumPy arrays owned by the caller, like
Core ML's MLState: `make_state()` gives zeros, `run(inputs, state)` reads them with `read_state`
and writes them in place with `write_state` / `coreml_update_state`, so a decode step sees what
the previous call left. Core ML states are float16 only (coremltools refuses others), and the
interpreter checks every write against the state's declared dtype and shape.

Only numpy, protobuf (via coremltools.proto) and modelport.errors are imported: no torch, so
this runs in the small validator image.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ModelportError


def _import_proto() -> tuple[Any, Any]:
    """coremltools.proto, without the warnings coremltools logs on Linux (no runtime, torch version)."""
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from coremltools.proto import MIL_pb2, Model_pb2
    finally:
        log.setLevel(level)
    return MIL_pb2, Model_pb2


MIL_pb2, Model_pb2 = _import_proto()
DT = MIL_pb2.DataType

NP_DTYPES: dict[int, Any] = {
    DT.BOOL: np.bool_, DT.FLOAT16: np.float16, DT.FLOAT32: np.float32, DT.FLOAT64: np.float64,
    DT.INT8: np.int8, DT.INT16: np.int16, DT.INT32: np.int32, DT.INT64: np.int64,
    DT.UINT8: np.uint8, DT.UINT16: np.uint16, DT.UINT32: np.uint32, DT.UINT64: np.uint64,
}
# Sub-byte types (iOS18): bits per element, packed LSB first. Unsigned ones are palette indices;
# INT4 is the two's-complement data of 4-bit linear quantization (constexpr_blockwise_shift_scale).
SUB_BYTE_BITS = {DT.UINT1: 1, DT.UINT2: 2, DT.UINT3: 3, DT.UINT4: 4, DT.UINT6: 6, DT.INT4: 4}
SIGNED_SUB_BYTE = {DT.INT4}
CAST_DTYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "int8": np.int8,
               "uint8": np.uint8, "uint16": np.uint16, "bool": np.bool_}
# weight.bin blob data types (MILBlob's BlobDataType), each seen in packages coremltools 9 writes:
# fp16, fp32, uint8, int8, uint16, int4, uint4 and uint6 (sub-byte: raw bytes, unpacked by type),
# int32.
BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8, 7: np.uint16, 8: np.uint8, 11: np.uint8,
               13: np.uint8, 14: np.int32}
BLOB_SENTINEL = 0xDEADBEEF
BLOB_HEADER = struct.Struct("<IIQQ")  # sentinel, data type, size in bytes, data offset

Array = np.ndarray


# ---------------------------------------------------------------------------------------------
# Reading the package


def read_spec(package: Path) -> tuple[Any, Path]:
    """The Model protobuf of an .mlpackage and its weights directory (via Manifest.json)."""
    manifest_path = package / "Manifest.json"
    if not manifest_path.is_file():
        raise ModelportError(f"{package} is not an .mlpackage (no Manifest.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    model_file = package / "Data" / root
    spec = Model_pb2.Model()
    spec.ParseFromString(model_file.read_bytes())
    if spec.WhichOneof("Type") != "mlProgram":
        raise ModelportError(f"{package} is a {spec.WhichOneof('Type')} model; only ML Programs are interpreted")
    return spec, model_file.parent / "weights"


class WeightFile:
    """weight.bin (MIL blob storage v2): 64-byte file header, then 64-byte aligned blobs, each
    behind a metadata record (sentinel, data type, size, offset of the data)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buf = path.read_bytes()

    def read(self, offset: int) -> Array:
        sentinel, dtype, size, data_offset = BLOB_HEADER.unpack_from(self.buf, offset)
        if sentinel != BLOB_SENTINEL:
            raise ModelportError(f"{self.path}: no blob at offset {offset} (sentinel {sentinel:#x})")
        if dtype not in BLOB_DTYPES:
            raise ModelportError(f"{self.path}: blob data type {dtype} at offset {offset} is not supported")
        np_dtype = np.dtype(BLOB_DTYPES[dtype])
        return np.frombuffer(self.buf, dtype=np_dtype, count=size // np_dtype.itemsize, offset=data_offset)


def unpack_bits(packed: Array, nbits: int, count: int) -> Array:
    """n-bit unsigned integers packed LSB first into bytes (how Core ML stores sub-byte tensors)."""
    bits = np.unpackbits(packed.view(np.uint8), bitorder="little")[: count * nbits].reshape(count, nbits)
    return (bits.astype(np.uint8) << np.arange(nbits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def tensor_shape(tensor_type: Any) -> list[int | None]:
    """Declared dimensions; None where the program leaves a dimension unknown (flexible shapes)."""
    return [d.constant.size if d.HasField("constant") else None for d in tensor_type.dimensions]


def decode_value(value: Any, weights: dict[str, WeightFile]) -> Any:
    """A MIL Value (immediate or in weight.bin) as a NumPy array, string, or list of them."""
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        return _decode_blob(value, weights)
    if kind != "immediateValue":
        raise ModelportError(f"MIL value of kind {kind!r} is not supported")
    imm = value.immediateValue
    which = imm.WhichOneof("value")
    if which == "list":
        return [decode_value(v, weights) for v in imm.list.values]
    if which == "tuple":
        return tuple(decode_value(v, weights) for v in imm.tuple.values)
    if which != "tensor":
        raise ModelportError(f"MIL immediate value of kind {which!r} is not supported")
    tt = value.type.tensorType
    tensor = imm.tensor
    field = tensor.WhichOneof("value")
    if tt.dataType == DT.STRING:
        strings = list(tensor.strings.values)
        return strings[0] if tt.rank == 0 else strings
    np_dtype = _np_dtype(tt.dataType)
    if field == "bytes":
        arr = np.frombuffer(tensor.bytes.values, dtype=np_dtype)
    else:
        arr = np.array(list(getattr(tensor, field).values)).astype(np_dtype)
    return arr.reshape(tensor_shape(tt))


def _decode_blob(value: Any, weights: dict[str, WeightFile]) -> Array:
    blob = value.blobFileValue
    name = blob.fileName.replace("@model_path/weights/", "")
    if name not in weights:
        raise ModelportError(f"weight file {blob.fileName} is missing from the package")
    raw = weights[name].read(blob.offset)
    tt = value.type.tensorType
    shape = tensor_shape(tt)
    if tt.dataType in SUB_BYTE_BITS:
        nbits = SUB_BYTE_BITS[tt.dataType]
        values = unpack_bits(raw, nbits, int(np.prod(shape)))
        if tt.dataType in SIGNED_SUB_BYTE:  # two's complement: 8..15 are -8..-1
            values = values.astype(np.int8) - ((values >> (nbits - 1)) << nbits).astype(np.int8)
        return values.reshape(shape)
    return raw.view(_np_dtype(tt.dataType)).reshape(shape)


def _np_dtype(data_type: int) -> Any:
    if data_type not in NP_DTYPES:
        raise ModelportError(f"MIL data type {MIL_pb2.DataType.Name(data_type)} is not supported")
    return NP_DTYPES[data_type]


# ---------------------------------------------------------------------------------------------
# Op implementations. Each takes the op's parameters (inputs and attributes) by name and returns
# an array (or a tuple for multi-output ops); the caller rounds to the declared dtype.

OPS: dict[str, Callable[..., Any]] = {}


def op(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def f32(x: Any) -> Array:
    """Float inputs upcast to float32 (exact for fp16): the math inside one op runs in fp32."""
    x = np.asarray(x)
    return x.astype(np.float32, copy=False) if x.dtype.kind == "f" else x


def _axes(axes: Any) -> tuple[int, ...] | None:
    return None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))


BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum, "minimum": np.minimum,
    "equal": np.equal, "not_equal": np.not_equal, "greater_equal": np.greater_equal,
    "greater": np.greater, "less": np.less, "less_equal": np.less_equal,
}
for _name, _fn in BINARY.items():
    OPS[_name] = lambda x, y, _fn=_fn: _fn(f32(x), f32(y))


@op("real_div")
def real_div(x: Array, y: Array) -> Array:
    return np.true_divide(f32(x), f32(y))


@op("const")
def const(val: Any) -> Any:
    return val


@op("cast")
def cast(x: Array, dtype: str) -> Array:
    if dtype not in CAST_DTYPES:
        raise ModelportError(f"MIL cast to {dtype!r} is not supported")
    return np.asarray(x).astype(CAST_DTYPES[dtype])


@op("clip")
def clip(x: Array, alpha: Array, beta: Array) -> Array:
    return np.minimum(np.maximum(f32(x), f32(alpha)), f32(beta))


@op("select")
def select(cond: Array, a: Array, b: Array) -> Array:
    return np.where(np.asarray(cond).astype(bool), f32(a), f32(b))


@op("shape")
def shape(x: Array) -> Array:
    return np.array(np.shape(x), dtype=np.int32)


@op("expand_dims")
def expand_dims(x: Array, axes: Array) -> Array:
    x = np.asarray(x)
    rank = x.ndim + np.size(axes)
    for a in sorted(int(a) % rank for a in np.atleast_1d(axes)):
        x = np.expand_dims(x, a)
    return x


@op("reshape")
def reshape(x: Array, shape: Array) -> Array:
    dims = [int(s) for s in np.atleast_1d(shape)]
    if len(dims) == x.ndim:  # MIL: 0 keeps the input's dimension when the ranks match
        dims = [x.shape[i] if s == 0 else s for i, s in enumerate(dims)]
    return np.reshape(x, dims)


@op("squeeze")
def squeeze(x: Array, axes: Array | None = None) -> Array:
    """MIL: drop the given size-1 axes, or every size-1 axis when `axes` is absent."""
    x = np.asarray(x)
    return np.squeeze(x, axis=_axes(axes)) if axes is not None else np.squeeze(x)


@op("identity")
def identity(x: Array) -> Array:
    return x


@op("transpose")
def transpose(x: Array, perm: Array) -> Array:
    return np.transpose(x, [int(p) for p in perm])


@op("tile")
def tile(x: Array, reps: Array) -> Array:
    return np.tile(x, [int(r) for r in reps])


@op("concat")
def concat(values: list[Array], axis: Array, interleave: Any = False) -> Array:
    if bool(interleave):
        raise ModelportError("MIL concat with interleave=True is not supported")
    return np.concatenate([np.atleast_1d(v) for v in values], axis=int(axis))


@op("gather")
def gather(x: Array, indices: Array, axis: Array = 0, batch_dims: Array = 0, validate_indices: Any = False) -> Array:
    if int(batch_dims) != 0:
        raise ModelportError("MIL gather with batch_dims != 0 is not supported")
    return np.take(x, np.asarray(indices).astype(np.int64), axis=int(axis))


@op("gather_along_axis")
def gather_along_axis(x: Array, indices: Array, axis: Array = 0, validate_indices: Any = False) -> Array:
    return np.take_along_axis(x, np.asarray(indices).astype(np.int64), axis=int(axis))


def _slice_index(rank: int, begin: Array, end: Array, stride: Array | None, begin_mask: Array | None,
                 end_mask: Array | None, squeeze_mask: Array | None) -> tuple[Any, ...]:
    """The NumPy index of a MIL slice (slice_by_index and slice_update share the semantics)."""
    stride = [1] * rank if stride is None else [int(s) for s in stride]
    begin_mask = [False] * rank if begin_mask is None else [bool(b) for b in begin_mask]
    end_mask = [False] * rank if end_mask is None else [bool(b) for b in end_mask]
    squeeze_mask = [False] * rank if squeeze_mask is None else [bool(b) for b in squeeze_mask]
    index: list[Any] = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(int(begin[i]))
        else:
            index.append(slice(None if begin_mask[i] else int(begin[i]), None if end_mask[i] else int(end[i]),
                               stride[i]))
    return tuple(index)


@op("slice_by_index")
def slice_by_index(x: Array, begin: Array, end: Array, stride: Array | None = None, begin_mask: Array | None = None,
                   end_mask: Array | None = None, squeeze_mask: Array | None = None) -> Array:
    return np.asarray(x[_slice_index(x.ndim, begin, end, stride, begin_mask, end_mask, squeeze_mask)])


@op("slice_update")
def slice_update(x: Array, update: Array, begin: Array, end: Array, stride: Array | None = None,
                 begin_mask: Array | None = None, end_mask: Array | None = None,
                 squeeze_mask: Array | None = None) -> Array:
    """iOS18: x with x[slice] = update (a copy; the KV-cache write). The update must have exactly
    the slice's shape: Core ML does not broadcast it, so neither does the interpreter."""
    index = _slice_index(x.ndim, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    out = np.array(x, copy=True)
    target_shape = out[index].shape
    update = np.asarray(update)
    if update.shape != target_shape:
        raise ModelportError(f"MIL slice_update: update of shape {list(update.shape)} for a slice of shape "
                             f"{list(target_shape)}")
    out[index] = update.astype(out.dtype, copy=False)
    return out


@op("cumsum")
def cumsum(x: Array, axis: Array = 0, exclusive: Any = False, reverse: Any = False) -> Array:
    x = f32(x)
    axis = int(axis)
    if bool(reverse):
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if bool(exclusive):
        out = out - x
    return np.flip(out, axis) if bool(reverse) else out


@op("reduce_sum")
def reduce_sum(x: Array, axes: Array | None = None, keep_dims: Any = False) -> Array:
    return np.sum(f32(x), axis=_axes(axes), keepdims=bool(keep_dims))


@op("reduce_argmax")
def reduce_argmax(x: Array, axis: Array = -1, keep_dims: Any = False, output_dtype: str = "int32") -> Array:
    """MIL: index of the largest value along one axis (ties: Core ML does not say which; the
    first here, like NumPy), int32 or, from iOS18, `output_dtype`. Last-token pooling:
    argmax(mask * positions)."""
    out = np.argmax(f32(x), axis=int(axis))
    out = np.expand_dims(out, int(axis)) if bool(keep_dims) else out
    return out.astype(CAST_DTYPES[str(output_dtype)])


@op("reduce_mean")
def reduce_mean(x: Array, axes: Array | None = None, keep_dims: Any = False) -> Array:
    return np.mean(f32(x), axis=_axes(axes), keepdims=bool(keep_dims))


@op("reduce_l2_norm")
def reduce_l2_norm(x: Array, axes: Array | None = None, keep_dims: Any = False) -> Array:
    x = f32(x)
    return np.sqrt(np.sum(x * x, axis=_axes(axes), keepdims=bool(keep_dims)))


@op("softmax")
def softmax(x: Array, axis: Array = -1) -> Array:
    x = f32(x)
    e = np.exp(x - np.max(x, axis=int(axis), keepdims=True))
    return e / np.sum(e, axis=int(axis), keepdims=True)


@op("range_1d")
def range_1d(start: Array, end: Array, step: Array) -> Array:
    """[start, end) by step, in the inputs' dtype (int32 positions in the decoder graphs)."""
    start, end, step = np.asarray(start), np.asarray(end), np.asarray(step)
    return np.arange(start.item(), end.item(), step.item(), dtype=np.result_type(start, end, step))


@op("abs")
def abs_(x: Array) -> Array:
    """MIL: |x| (EmbeddingGemma's bidirectional window: |i - j| < window)."""
    return np.abs(f32(x))


@op("cos")
def cos(x: Array) -> Array:
    return np.cos(f32(x))


@op("sin")
def sin(x: Array) -> Array:
    return np.sin(f32(x))


@op("pow")
def pow_(x: Array, y: Array) -> Array:
    x, y = f32(x), f32(y)
    if y.ndim == 0 and float(y) == 2.0:  # RMSNorm's x**2: x * x is the same rounded square, faster
        return x * x
    return np.power(x, y)


@op("rsqrt")
def rsqrt(x: Array, epsilon: Array = 1e-12) -> Array:
    """MIL: 1 / sqrt(x + epsilon). The converter leaves the default 1e-12 in RMSNorm, on top of
    the model's own epsilon (>= 1e-6): below one float32 ulp of the sum, as on device."""
    return np.float32(1.0) / np.sqrt(f32(x) + f32(epsilon))


@op("relu")
def relu(x: Array) -> Array:
    """MIL: max(x, 0) (BGE-M3's sparse head)."""
    return np.maximum(f32(x), np.float32(0.0))


@op("silu")
def silu(x: Array) -> Array:
    x = f32(x)
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: silu -> -0, correct
        return x / (np.float32(1.0) + np.exp(-x))


def erf(x: Array) -> Array:
    """erf to float64 accuracy (math.erf per element): NumPy has none, and the usual rational
    approximations are off by ~1e-7, a visible share of the 1e-5 fp32 budget after 6 layers."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    return np.fromiter(map(math.erf, flat.tolist()), dtype=np.float64, count=flat.size).reshape(np.shape(x))


@functools.cache
def _erf_table_fp16() -> Array:
    """erf(x / sqrt 2) for every float16 x, indexed by its bits: fp16 programs feed gelu fp16
    tensors, so a 65536-entry table gives the same values as `erf` at a fraction of the cost."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore"):
        return erf(x / np.float32(math.sqrt(2.0)))


@op("gelu")
def gelu(x: Array, mode: str = "EXACT") -> Array:
    x = np.asarray(x)
    if mode == "EXACT":
        e = _erf_table_fp16()[x.view(np.uint16)] if x.dtype == np.float16 else erf(x / np.float32(math.sqrt(2.0)))
        x = f32(x)
        return (0.5 * x * (1.0 + e)).astype(np.float32)
    x = f32(x)
    if mode == "TANH_APPROXIMATION":  # BERT configs with hidden_act gelu_new / gelu_pytorch_tanh
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise ModelportError(f"MIL gelu mode {mode!r} is not supported")


@op("layer_norm")
def layer_norm(x: Array, axes: Array | None = None, gamma: Array | None = None, beta: Array | None = None,
               epsilon: Array = 1e-5) -> Array:
    x = f32(x)
    ax = _axes(axes)
    mean = np.mean(x, axis=ax, keepdims=True)
    var = np.mean(np.square(x - mean), axis=ax, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(epsilon))
    if gamma is not None:
        y = y * f32(gamma)
    if beta is not None:
        y = y + f32(beta)
    return y


def _dot_dtype(x: Array) -> Any:
    """Accumulation dtype of a dot product: float64 for a float32 activation (rounded once to
    float32 when stored), float32 for float16 (exact products, far below fp16 storage rounding)."""
    return np.float64 if np.asarray(x).dtype == np.float32 else np.float32


@op("linear")
def linear(x: Array, weight: Array, bias: Array | None = None) -> Array:
    acc = _dot_dtype(x)
    x = np.asarray(x).astype(acc, copy=False)
    # As one 2-D GEMM: NumPy's batched matmul with a transposed operand is several times slower.
    y = (x.reshape(-1, x.shape[-1]) @ np.asarray(weight).astype(acc, copy=False).T).reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + f32(bias)


@op("matmul")
def matmul(x: Array, y: Array, transpose_x: Any = False, transpose_y: Any = False) -> Array:
    acc = _dot_dtype(x) if np.asarray(x).dtype.kind == "f" else np.float32
    x, y = np.asarray(x).astype(acc, copy=False), np.asarray(y).astype(acc, copy=False)
    if bool(transpose_x):
        x = np.swapaxes(x, -1, -2)
    if bool(transpose_y):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


# States (iOS18): the program's state inputs are bound to `StateSlot`s holding the caller's arrays.


@dataclass
class StateSlot:
    """One state of the running program: its name and the caller's array, written in place."""

    name: str
    store: dict[str, Array]

    def read(self) -> Array:
        return np.array(self.store[self.name], copy=True)

    def write(self, value: Array) -> None:
        current = self.store[self.name]
        value = np.asarray(value)
        if value.shape != current.shape:
            raise ModelportError(f"write to state {self.name}: shape {list(value.shape)}, "
                                 f"declared {list(current.shape)}")
        if value.dtype != current.dtype:
            raise ModelportError(f"write to state {self.name}: dtype {value.dtype}, declared {current.dtype} "
                                 "(the program must cast before writing)")
        current[...] = value


@op("read_state")
def read_state(input: StateSlot) -> Array:
    return input.read()


@op("write_state")
def write_state(input: StateSlot, data: Array) -> tuple[()]:
    input.write(data)
    return ()


@op("coreml_update_state")
def coreml_update_state(state: StateSlot, value: Array) -> Array:
    """The converter's dialect op (lowered to write_state when saved): write, then pass through."""
    state.write(value)
    return np.asarray(value)


# Compressed weights (coremltools.optimize): compile-time ops that rebuild a dense constant.


@op("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data: Array, scale: Array, offset: Array | None = None) -> Array:
    """iOS18 linear quantization: scale * (data - offset), scale repeated over blocks of `data`."""
    out = data.astype(np.float32)
    scale = _repeat_blocks(np.asarray(scale, np.float32), data.shape)
    if offset is not None:
        out = out - _repeat_blocks(np.asarray(offset, np.float32), data.shape)
    return scale * out


def _repeat_blocks(param: Array, shape: tuple[int, ...]) -> Array:
    for axis, (full, part) in enumerate(zip(shape, param.shape)):
        if full != part:
            param = np.repeat(param, full // part, axis=axis)
    return param


@op("constexpr_lut_to_dense")
def constexpr_lut_to_dense(indices: Array, lut: Array, shape: Array | None = None,
                           vector_axis: Array | None = None) -> Array:
    """Palettized weights. iOS16: one LUT per tensor, indices bit-packed in uint8, `shape` given.
    iOS18: indices typed uint1..uint8 (unpacked on read), LUT of rank K+2 with one palette per
    block of the output; only scalar palettes (vector size 1) are produced by modelport."""
    if shape is not None:
        dims = [int(s) for s in shape]
        nbits = int(math.log2(lut.size))
        return lut[unpack_bits(indices, nbits, int(np.prod(dims)))].reshape(dims)
    if lut.shape[-1] != 1:
        raise ModelportError("constexpr_lut_to_dense with vector palettes (vector size > 1) is not supported")
    palettes = lut[..., 0]  # [*blocks, n_palettes]
    block_ids = np.zeros(indices.shape, dtype=np.int64)
    for axis, (full, blocks) in enumerate(zip(indices.shape, palettes.shape[:-1])):
        pos = (np.arange(full) // (full // blocks)).reshape([-1 if a == axis else 1 for a in range(indices.ndim)])
        block_ids = block_ids * blocks + pos
    flat = palettes.reshape(-1, palettes.shape[-1])
    return flat[block_ids, indices.astype(np.int64)]


# ---------------------------------------------------------------------------------------------
# The program


@dataclass(frozen=True)
class InputSpec:
    """What Core ML accepts for one input: dtype and fixed / range / enumerated shapes."""

    name: str
    dtype: Any
    shape: tuple[int, ...]  # the default shape
    ranges: tuple[tuple[int, int], ...] = ()  # per dimension (lower, upper); upper -1 = unbounded
    enumerated: tuple[tuple[int, ...], ...] = ()

    def accepts(self, shape: tuple[int, ...]) -> bool:
        if self.enumerated:
            return tuple(shape) in self.enumerated
        if self.ranges:
            return len(shape) == len(self.ranges) and all(
                lo <= s and (hi < 0 or s <= hi) for s, (lo, hi) in zip(shape, self.ranges))
        return tuple(shape) == self.shape

    def describe(self) -> str:
        if self.enumerated:
            return "one of " + ", ".join(str(list(s)) for s in self.enumerated)
        if self.ranges:
            return "[" + ", ".join(f"{lo}..{hi if hi >= 0 else 'inf'}" for lo, hi in self.ranges) + "]"
        return str(list(self.shape))


ARRAY_DTYPES = {"INT32": np.int32, "FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64}


def input_specs(spec: Any) -> list[InputSpec]:
    """The model description's inputs, as Core ML enforces them at predict time."""
    out = []
    for i in spec.description.input:
        arr = i.type.multiArrayType
        dtype_name = Model_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
        kind = arr.WhichOneof("ShapeFlexibility")
        out.append(InputSpec(
            name=i.name,
            dtype=ARRAY_DTYPES[dtype_name],
            shape=tuple(int(s) for s in arr.shape),
            ranges=tuple((r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges)
            if kind == "shapeRange" else (),
            enumerated=tuple(tuple(int(d) for d in s.shape) for s in arr.enumeratedShapes.shapes)
            if kind == "enumeratedShapes" else (),
        ))
    return out


@dataclass(frozen=True)
class StateSpec:
    """One iOS18 state of the model (a KV cache buffer): fixed shape, float16 in Core ML 8."""

    name: str
    dtype: Any
    shape: tuple[int, ...]


def state_specs(spec: Any) -> list[StateSpec]:
    """The model description's states (what `MLModel.make_state()` allocates)."""
    out = []
    for st in spec.description.state:
        arr = st.type.stateType.arrayType
        dtype_name = Model_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
        out.append(StateSpec(st.name, ARRAY_DTYPES[dtype_name], tuple(int(s) for s in arr.shape)))
    return out


def op_counts(package: Path, function: str = "main") -> dict[str, int]:
    """How many ops of each type the package's program holds (read from the file, no weights)."""
    spec, _ = read_spec(Path(package))
    fn = spec.mlProgram.functions[function]
    return _count_ops(fn.block_specializations[fn.opset])


def _count_ops(block: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in block.operations:
        counts[o.type] = counts.get(o.type, 0) + 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Step:
    """One op, decoded once from the protobuf: what `run` executes."""

    type: str
    fixed: dict[str, Any]  # attributes and inline inputs (immediate or in weight.bin)
    refs: dict[str, list[tuple[bool, Any]]]  # inputs: (True, name of another op's output) or (False, value)
    outputs: tuple[tuple[str, Any, tuple[int | None, ...]], ...]  # name, dtype (None: not a tensor), shape

    @property
    def is_constant(self) -> bool:
        """const and constexpr_* ops depend on nothing at run time."""
        return self.type == "const" or self.type.startswith("constexpr_")


class Interpreter:
    """Load an .mlpackage once, then `run(inputs)` as often as needed."""

    def __init__(self, package: Path, function: str = "main") -> None:
        self.package = Path(package)
        self.spec, weights_dir = read_spec(self.package)
        program = self.spec.mlProgram
        if function not in program.functions:
            raise ModelportError(f"{package}: no function {function!r} in the ML Program")
        fn = program.functions[function]
        self.block = fn.block_specializations[fn.opset]
        self.inputs = input_specs(self.spec)
        self.states = state_specs(self.spec)
        self.output_names = list(self.block.outputs)
        unknown = sorted({o.type for o in self.block.operations if o.type not in OPS or len(o.blocks)})
        if unknown:
            raise ModelportError(
                f"{package}: the Core ML reference interpreter does not implement MIL op(s) {', '.join(unknown)}; "
                f"this package cannot be validated on Linux (modelport.milinterp.OPS lists the supported ops)"
            )
        self.weights = {p.name: WeightFile(p) for p in sorted(weights_dir.glob("*.bin"))} if weights_dir.is_dir() else {}
        steps = [self._compile(o) for o in self.block.operations]
        self.constants: dict[str, Any] = {}
        for step in (s for s in steps if s.is_constant):
            self._execute(step, self.constants)
        self.steps = [s for s in steps if not s.is_constant]
        # Outputs of constexpr_* ops: the decompressed weights (see `constexpr_values`).
        self.constexpr_names = [o[0] for s in steps if s.type.startswith("constexpr_") for o in s.outputs]
        # Ops compute in fp32 anyway: upcast float constants once (exact) instead of on every call.
        self._compute_constants = {k: f32(v) if isinstance(v, np.ndarray) else v for k, v in self.constants.items()}

    def op_counts(self) -> dict[str, int]:
        return _count_ops(self.block)

    def with_constants(self, values: dict[str, Array]) -> "Interpreter":
        """A copy that runs with some constants replaced (same names, same shapes): the quantization
        search (targets/coreml/quantize.py) scores a weight's compressed form without writing a
        package per candidate. Values are stored as `run` sees every constant (float32)."""
        unknown = sorted(set(values) - set(self._compute_constants))
        if unknown:
            raise ModelportError(f"{self.package}: no constant(s) named {', '.join(unknown[:3])}")
        for name, value in values.items():
            if np.shape(value) != np.shape(self._compute_constants[name]):
                raise ModelportError(f"{self.package}: constant {name} has shape "
                                     f"{list(np.shape(self._compute_constants[name]))}, got {list(np.shape(value))}")
        patched = copy.copy(self)
        patched._compute_constants = {**self._compute_constants, **{k: f32(v) for k, v in values.items()}}
        return patched

    def _compile(self, o: Any) -> Step:
        fixed = {k: decode_value(v, self.weights) for k, v in o.attributes.items() if k != "name"}
        refs = {key: [(True, b.name) if b.name else (False, decode_value(b.value, self.weights)) for b in arg.arguments]
                for key, arg in o.inputs.items()}
        outputs = []
        for out in o.outputs:
            tt = out.type.tensorType
            dtype = None if tt.dataType == DT.STRING or not out.type.HasField("tensorType") else _np_dtype(tt.dataType)
            outputs.append((out.name, dtype, tuple(tensor_shape(tt))))
        return Step(o.type, fixed, refs, tuple(outputs))

    def _execute(self, step: Step, env: dict[str, Any]) -> None:
        params = dict(step.fixed)
        for key, args in step.refs.items():
            values = [env[x] if is_ref else x for is_ref, x in args]
            params[key] = values if key == "values" else values[0]
        result = OPS[step.type](**params)
        for (name, dtype, shape), value in zip(step.outputs, result if isinstance(result, tuple) else (result,)):
            env[name] = self._store(value, name, dtype, shape, step.type)

    def _store(self, value: Any, name: str, dtype: Any, declared: tuple[int | None, ...], op_type: str) -> Any:
        """Round to the declared dtype (fp16 storage between ops) and check the declared shape."""
        if dtype is None or not isinstance(value, (np.ndarray, np.generic, int, float, bool)):
            return value
        arr = np.asarray(value).astype(dtype, copy=False)
        if len(declared) != arr.ndim or any(d is not None and d != s for d, s in zip(declared, arr.shape)):
            raise ModelportError(
                f"{self.package}: op {op_type} -> {name}: computed shape {list(arr.shape)}, "
                f"the program declares {list(declared)} (interpreter bug or malformed program)"
            )
        return arr

    def check_inputs(self, inputs: dict[str, Array]) -> dict[str, Array]:
        feeds = {}
        for s in self.inputs:
            if s.name not in inputs:
                raise ModelportError(f"{self.package}: missing input {s.name!r}")
            x = np.asarray(inputs[s.name])
            if not s.accepts(x.shape):
                raise ModelportError(
                    f"{self.package}: input {s.name} has shape {list(x.shape)}; the model accepts {s.describe()}")
            feeds[s.name] = x.astype(s.dtype)
        return feeds

    def make_state(self) -> dict[str, Array]:
        """Fresh states, zero-filled, as Core ML's `MLModel.make_state()` allocates them."""
        return {s.name: np.zeros(s.shape, dtype=s.dtype) for s in self.states}

    def check_state(self, state: dict[str, Array] | None) -> dict[str, Array]:
        if not self.states:
            if state:
                raise ModelportError(f"{self.package}: the model has no states; got {sorted(state)}")
            return {}
        if state is None:
            raise ModelportError(f"{self.package}: stateful model: pass the state from make_state()")
        for s in self.states:
            x = state.get(s.name)
            if not isinstance(x, np.ndarray) or x.shape != s.shape or x.dtype != np.dtype(s.dtype):
                raise ModelportError(f"{self.package}: state {s.name} must be a {np.dtype(s.dtype).name} array "
                                     f"of shape {list(s.shape)}")
        return state

    def run(self, inputs: dict[str, Array], state: dict[str, Array] | None = None) -> dict[str, Array]:
        """One prediction. A stateful model reads and updates `state` (from `make_state()`) in
        place, like Core ML's `predict(inputs, state=...)`."""
        env: dict[str, Any] = dict(self._compute_constants)
        env.update(self.check_inputs(inputs))
        store = self.check_state(state)
        env.update({s.name: StateSlot(s.name, store) for s in self.states})
        with single_threaded_blas():
            for step in self.steps:
                self._execute(step, env)
        return {name: env[name] for name in self.output_names}


@functools.cache
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """One BLAS thread while the interpreter runs, when threadpoolctl is installed.

    Batch-1 matrices are small: more OpenBLAS threads gain little, and on a busy machine they
    spin-wait for cores (MiniLM at 128 tokens, 2 shared cores: 0.23 s per forward with one
    thread, 1.2-2.9 s with two). Only the summation order changes (~1e-7).
    """
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller else contextlib.nullcontext()


def constexpr_values(package: Path) -> dict[str, Array]:
    """Every compressed constant of a package, decompressed as the program defines it, by name.

    Quantized variants are validated against PyTorch running exactly these weights: reading them
    from the shipped file (not from the compressor's Python objects) means a wrong scale layout or
    sign convention in the file shows up as a mismatch instead of being copied into the reference.
    """
    interpreter = Interpreter(Path(package))
    return {name: interpreter.constants[name] for name in interpreter.constexpr_names}
