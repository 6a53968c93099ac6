"""The weights an ONNX variant stores, as floats, for the check against the source checkpoint
(`weight_stats.py`; `Converter.weight_tensors` of OnnxEncoder and OnnxDecoder).

One pass over the graph's initializers, external data read tensor by tensor (never the whole
model at once): float initializers as stored (fp32 / fp16); 8-bit weights of dynamic quantization
(`<w>_quantized` with `<w>_scale` / `<w>_zero_point`, consumed by MatMulInteger or DequantizeLinear)
dequantized; 4- and 8-bit MatMulNBits weights dequantized (dequantize_matmul_nbits, the same code the
decoder's dequantized-weights golden uses); GatherBlockQuantized tables and the int8-row embedding
(`<w>_quantized` + `<w>_scale` per row) of the searched variants dequantized. Scales and zero points are not weights and are not yielded.
Needs onnx and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _axis(q: np.ndarray, scale: np.ndarray, dq_axis: int | None) -> int | None:
    """The axis a per-channel scale runs along (None: per tensor)."""
    if scale.size == 1:
        return None
    if dq_axis is not None:
        return dq_axis % q.ndim
    if scale.size == q.shape[-1]:
        return q.ndim - 1  # MatMulInteger B [K, N]: one scale per output column
    if scale.size == q.shape[0]:
        return 0
    raise ValueError(f"scale of {scale.size} values fits no axis of a {list(q.shape)} weight")


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int | None) -> np.ndarray:
    shape = [1] * q.ndim
    if axis is not None:
        shape[axis] = -1
    s = scale.astype(np.float32).reshape(shape if axis is not None else ())
    z = (zero.astype(np.float32).reshape(shape if axis is not None else ()) if zero is not None
         else np.float32(0.0))
    return (q.astype(np.float32) - z) * s


def dequantize_matmul_nbits(node, inits: dict[str, Any]) -> np.ndarray:
    """A MatMulNBits weight as the float [N, K] (= nn.Linear [out, in]) matrix the kernel uses.

    Layout (onnxruntime contrib op): B uint8 [N, blocks, block_size * bits / 8], 4-bit values two per
    byte, low nibble first (8-bit: one per byte); scales [N * blocks]; zero_points uint8, each row's
    packed the same way and padded to whole bytes; no zero_points input = symmetric, zero point
    2^(bits-1) (8 for 4-bit, 128 for 8-bit).
    """
    import onnx
    from onnx import numpy_helper

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    K, N, block, bits = attrs["K"], attrs["N"], attrs["block_size"], attrs.get("bits", 4)
    if bits not in (4, 8):
        raise ValueError(f"{node.name}: {bits}-bit MatMulNBits is not handled")
    packed = numpy_helper.to_array(inits[node.input[1]]).reshape(N, -1)
    q = unpack(packed, bits)[:, :K].astype(np.float32)
    blocks = (K + block - 1) // block
    scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(N, blocks)
    zero = np.float32(2 ** (bits - 1))
    if len(node.input) > 3 and node.input[3]:
        z = numpy_helper.to_array(inits[node.input[3]]).reshape(N, -1)
        zero = unpack(z, bits)[:, :blocks].astype(np.float32)
        zero = np.repeat(zero, block, axis=1)[:, :K]
    return (q - zero) * np.repeat(scales, block, axis=1)[:, :K]


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes [rows, n] -> codes [rows, n * 8 / bits], low bits first."""
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)


def dequantize_gather_block(node, inits: dict[str, Any]) -> np.ndarray:
    """A GatherBlockQuantized table (uint8 storage, gather_axis 0, quantize_axis 1) as floats [vocab, dim]."""
    import onnx
    from onnx import numpy_helper

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    bits, block = attrs.get("bits", 4), attrs.get("block_size", 128)
    if attrs.get("quantize_axis", 1) != 1 or attrs.get("gather_axis", 0) != 0:
        raise ValueError(f"{node.name}: GatherBlockQuantized with other axes is not handled")
    packed = numpy_helper.to_array(inits[node.input[0]])
    q = unpack(packed.reshape(packed.shape[0], -1), bits).astype(np.float32)
    scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
    zero = np.float32(2 ** (bits - 1))
    if len(node.input) > 3 and node.input[3]:
        z = numpy_helper.to_array(inits[node.input[3]])
        zero = np.repeat(unpack(z.reshape(z.shape[0], -1), bits)[:, :scales.shape[1]].astype(np.float32), block, 1)
    return (q - zero) * np.repeat(scales, block, axis=1)


def matmul_nbits_matrices(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(weight initializer name, float [N, K] matrix) for every MatMulNBits of an ONNX file: what the
    dequantized-weights goldens are built from (our own q4 files and foreign ones, audit.py)."""
    import onnx

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            yield node.input[1], dequantize_matmul_nbits(node, inits)


def onnx_weights(path: Path) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """(name, float array, bits) for every weight of an ONNX file: bits None for a float initializer as
    stored, the bit width for a dequantized one; a quantized weight carries its float name (no suffix)."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in proto.graph.initializer}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name], base_dir=str(path.parent))

    not_weights: set[str] = set()
    dq_axis: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            dq_axis[node.input[0]] = axis
    # 4-bit MatMulNBits: [N, K] like the Linear it came from
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits" or node.input[1] not in inits:
            continue
        names = [n for n in node.input[1:] if n]
        loaded = {n: numpy_helper.from_array(array(n), n) for n in names}
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        not_weights.update(names)
        yield node.input[1].removesuffix(f"_Q{bits}"), dequantize_matmul_nbits(node, loaded), bits
    # GatherBlockQuantized embedding tables (searched variants, quantize.py): [vocab, dim]
    for node in proto.graph.node:
        if node.op_type != "GatherBlockQuantized" or node.input[0] not in inits:
            continue
        names = [n for i, n in enumerate(node.input) if n and i != 1]
        loaded = {n: numpy_helper.from_array(array(n), n) for n in names}
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        not_weights.update(names)
        yield node.input[0].removesuffix(f"_Q{bits}"), dequantize_gather_block(node, loaded), bits
    # 4-bit blocks unpacked by standard operators (quantize.py's uint4_std embedding): <w>_Q4 [rows, cols/2]
    # + <w>_scales [rows, blocks] (+ <w>_zero_points packed like the codes; none: 8), read by no contrib op
    for name in list(inits):
        base = name.removesuffix("_Q4")
        if name == base or name in not_weights or f"{base}_scales" not in inits:
            continue
        packed, scales = array(name), array(f"{base}_scales")
        if packed.dtype != np.uint8 or packed.ndim != 2 or scales.ndim != 2:
            continue
        codes = unpack(packed, 4).astype(np.float32)
        block = codes.shape[1] // scales.shape[1]
        z: Any = np.float32(8.0)
        if f"{base}_zero_points" in inits:
            z = np.repeat(unpack(array(f"{base}_zero_points"), 4)[:, :scales.shape[1]].astype(np.float32), block, 1)
        not_weights.update({name, f"{base}_scales", f"{base}_zero_points"})
        yield base, (codes - z) * np.repeat(scales.astype(np.float32), block, 1), 4
    # 8-bit: <w>_quantized + <w>_scale (+ <w>_zero_point)
    for name in list(inits):
        if not name.endswith("_quantized") or name in not_weights:
            continue
        base = name.removesuffix("_quantized")
        if f"{base}_scale" not in inits:
            continue
        q = array(name)
        if q.dtype.kind not in "iu":
            continue
        scale = array(f"{base}_scale")
        zero = array(f"{base}_zero_point") if f"{base}_zero_point" in inits else None
        not_weights.update({name, f"{base}_scale", f"{base}_zero_point"})
        yield base, _dequantize(q, scale, zero, _axis(q, scale, dq_axis.get(name))), 8 * q.dtype.itemsize
    for name, init in inits.items():
        if name in not_weights or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                         onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            continue
        values = array(name)
        if values.dtype.kind == "f":
            yield name, values, None


def weight_tensors(artifact: Path, variant_path: str) -> Iterator[tuple[str, Any, int | None]]:
    return onnx_weights(Path(artifact) / variant_path)
