"""The weights an MLX variant folder stores, as floats, for the check against the source checkpoint
(`weight_stats.py`; `Converter.weight_tensors` of both MLX converters).

`<variant>/model.safetensors` read with numpy (weight_stats.read_safetensors: no mlx, no torch):
float tensors as stored (f32 / f16); a quantized layer (`.weight` uint32 + `.scales` + `.biases`,
`quantization` in config.json, per-layer overrides honoured) dequantized the way mlx does it,
w = q * scale + bias per group, q packed low bits first in uint32 words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...fsutil import read_json
from ...weight_stats import as_float, read_safetensors


def dequantize(packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int) -> np.ndarray:
    """mlx.core.dequantize in numpy, every affine width (2, 3, 4, 5, 6, 8 bits)."""
    if 32 % bits:  # 3/5/6-bit codes straddle uint32 words: one little-endian bit stream per row
        stream = np.unpackbits(np.ascontiguousarray(packed, dtype="<u4").view(np.uint8), axis=-1, bitorder="little")
        stream = stream.reshape(*packed.shape[:-1], -1, bits).astype(np.uint32)
        q = (stream << np.arange(bits, dtype=np.uint32)).sum(-1, dtype=np.uint32).astype(np.float32)
    else:
        per_word = 32 // bits
        shifts = (np.arange(per_word, dtype=np.uint32) * bits).astype(np.uint32)
        q = (packed[..., None] >> shifts) & np.uint32((1 << bits) - 1)
        q = q.reshape(*packed.shape[:-1], packed.shape[-1] * per_word).astype(np.float32)
    s = np.repeat(scales.astype(np.float32), group_size, axis=-1)
    b = np.repeat(biases.astype(np.float32), group_size, axis=-1)
    return q * s + b


def mlx_weights(folder: Path, weights_file: str = "model.safetensors") -> Iterator[tuple[str, np.ndarray, int | None]]:
    """(name, float array, bits) for every weight of an MLX variant folder (bits None: stored as float)."""
    folder = Path(folder)
    quant = (read_json(folder / "config.json") if (folder / "config.json").is_file() else {}).get("quantization") or {}
    tensors = {name: (dtype, values) for name, dtype, _, values in read_safetensors(folder / weights_file)}
    aux: set[str] = set()
    for name, (dtype, values) in tensors.items():
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and dtype == "U32" and f"{layer}.scales" in tensors:
            spec = quant.get(layer) if isinstance(quant.get(layer), dict) else quant
            aux.update({f"{layer}.scales", f"{layer}.biases"})
            scales, biases = tensors[f"{layer}.scales"][1], tensors[f"{layer}.biases"][1]
            bits = int(spec["bits"])
            yield name, dequantize(values, scales, biases, int(spec["group_size"]), bits), bits
    for name, (dtype, values) in tensors.items():
        if name not in aux and dtype in ("F32", "F16", "BF16", "F64"):
            yield name, as_float(dtype, values), None


def weight_tensors(artifact: Path, variant_path: str) -> Iterator[tuple[str, Any, int | None]]:
    path = Path(artifact) / variant_path
    return mlx_weights(path.parent, path.name)
