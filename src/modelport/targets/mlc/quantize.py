"""MLC's 4-bit group quantization (q4f32_1, q4f16_1), written by modelport, loaded by WebLLM as is.

The stored format is mlc-llm's `GroupQuantize` with the parameters of its q4f16_1 / q4f32_1 presets
(mlc_llm/quantization/group_quantization.py; mlc-llm is not installable here, so this is our own
implementation of the same layout):

- every `Linear` weight [out, in] and every `Embedding` table [rows, dim] whose last axis is a
  multiple of 32 (mlc-llm's default, embeddings included) is split into groups of 32 consecutive
  values along that axis ("NK" layout);
- one scale per group, in the model dtype (float16 for q4f16_1, float32 for q4f32_1), stored as
  `<module>.q_scale` [out, in / 32];
- 4-bit codes, eight per uint32, code j of a word in bits 4j..4j+3, stored as `<module>.q_weight`
  [out, in / 8] (uint32);
- the kernels compute `(code - 7) * scale` in the model dtype and use it as the weight.

WebLLM reads the parameters by name from tensor-cache.json through `_metadata`, so these names,
shapes and dtypes and that formula are the whole contract. How the codes are chosen is ours (see
`quantize`): mlc-llm's quantizer uses 15 of the 16 codes, this one all 16, which the same kernels
decode. The dequantization happens inside the compiled kernels: the torch modules below express it
with integer shifts and masks that torch.export records and TVM's frontend imports (`__rshift__`
through build.frontend_converters), and TVM fuses it into the matmul / row lookup.

Measured on all-MiniLM-L6-v2 (PyTorch on the dequantized weights, the 47 validation texts, cosine
of the sentence embedding vs fp32, min / mean): every Linear and Embedding 0.906 / 0.963 (q4f32_1
and q4f16_1 alike); Linear only 0.910 / 0.967 (ONNX q4's figure: the same codes); mlc-llm's own
15-level choice 0.869 / 0.950 (all) and 0.872 / 0.958 (Linear only), below the q4 gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...quant import numerics

GROUP = 32
BITS = 4
PER_WORD = 32 // BITS  # eight 4-bit values in one uint32
MAX_INT = 2 ** (BITS - 1) - 1  # 7: a stored q in [0, 14] means (q - 7) * scale
MASK = 2 ** BITS - 1
SHIFTS = BITS * np.arange(PER_WORD, dtype=np.uint32)  # value j of a word sits at bits 4j..4j+3


def quantizable(shape: tuple[int, ...]) -> bool:
    """2-D with a last axis that splits into whole groups (mlc-llm pads a ragged group; no encoder
    weight here has one, and leaving such a tensor in float is the honest fallback)."""
    return len(shape) == 2 and shape[1] % GROUP == 0


def quantize(weight: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(q_weight uint32 [n, k/8], q_scale dtype [n, k/32]) of a float [n, k] weight.

    The codes are the project's round-to-nearest symmetric 4-bit (quant.numerics, "rtn_sym":
    onnxruntime's convention, the group's signed abs-max on code 0 with zero point 8) mirrored onto
    MLC's zero point 7: code' = 15 - code, scale' = -scale, so (code' - 7) * scale' equals
    (code - 8) * scale exactly. All 16 codes are used, where mlc-llm's quantizer (max|w| / 7) uses
    15: measured on all-MiniLM-L6-v2 (PyTorch on the dequantized Linear weights, 47 texts), cosine
    vs fp32 min / mean 0.910 / 0.968 with 16 levels against 0.872 / 0.958 with mlc-llm's 15.
    """
    w = np.asarray(weight, dtype=np.float32)
    if not quantizable(w.shape):
        raise ValueError(f"cannot group-quantize a {w.shape} tensor (last axis not a multiple of {GROUP})")
    n, k = w.shape
    ort = numerics.quantize(w, BITS, GROUP, "rtn_sym")
    scale = (-ort.scales).astype(dtype)
    codes = (MASK - ort.codes.astype(np.uint32)).reshape(n, k // PER_WORD, PER_WORD)
    packed = np.bitwise_or.reduce(codes << SHIFTS, axis=-1).astype(np.uint32)
    return packed, scale


def unpack(q_weight: np.ndarray) -> np.ndarray:
    """The 4-bit values q [n, k] (uint32 0..15) of a packed [n, k/8] weight."""
    values = (q_weight[..., None] >> SHIFTS) & np.uint32(MASK)
    return values.reshape(*q_weight.shape[:-1], q_weight.shape[-1] * PER_WORD)


def dequantize(q_weight: np.ndarray, q_scale: np.ndarray) -> np.ndarray:
    """What the kernels compute: (q - 7) * scale in the scale's dtype (the model dtype)."""
    dtype = q_scale.dtype
    q = unpack(q_weight).astype(dtype) - np.asarray(MAX_INT, dtype)
    n, k = q.shape
    return (q.reshape(n, k // GROUP, GROUP) * q_scale[..., None]).reshape(n, k)


# --- the torch side: modules torch.export records with the dequantization inside ----------------------------

def _modules():
    """The two module classes (defined here so this file imports without torch, like the rest of
    the target: the validator image has no torch)."""
    import torch
    import torch.nn.functional as F

    def dequant(q: torch.Tensor, scale: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        # q [..., k/8] uint32 -> [..., k] in the scale's dtype; the same ops as `dequantize` above
        values = ((q.unsqueeze(-1) >> shifts) & MASK).reshape(*q.shape[:-1], q.shape[-1] * PER_WORD)
        values = values.to(scale.dtype) - MAX_INT
        grouped = values.reshape(*values.shape[:-1], values.shape[-1] // GROUP, GROUP) * scale.unsqueeze(-1)
        return grouped.reshape(values.shape)

    class _Quantized(torch.nn.Module):
        def __init__(self, weight: torch.Tensor, dtype: str) -> None:
            super().__init__()
            packed, scale = quantize(weight.detach().to(torch.float32).numpy(), dtype)
            self.q_weight = torch.nn.Parameter(torch.from_numpy(packed), requires_grad=False)
            self.q_scale = torch.nn.Parameter(torch.from_numpy(scale), requires_grad=False)
            # a constant of the graph, not a parameter of the package
            self.register_buffer("shifts", torch.from_numpy(SHIFTS.copy()), persistent=False)

        def dequantized(self) -> np.ndarray:
            return dequantize(self.q_weight.numpy(), self.q_scale.numpy())

    class GroupQuantLinear(_Quantized):
        def __init__(self, linear: torch.nn.Linear, dtype: str) -> None:
            super().__init__(linear.weight, dtype)
            self.bias = linear.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, dequant(self.q_weight, self.q_scale, self.shifts), self.bias)

    class GroupQuantEmbedding(_Quantized):
        """Rows are looked up packed and dequantized after the lookup (as mlc-llm does): the
        kernel never expands the whole table."""

        def __init__(self, embedding: torch.nn.Embedding, dtype: str) -> None:
            super().__init__(embedding.weight, dtype)
            if embedding.max_norm is not None:
                raise ValueError("an Embedding with max_norm renormalizes its rows: not group-quantizable")

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return dequant(F.embedding(ids, self.q_weight), F.embedding(ids, self.q_scale), self.shifts)

    return GroupQuantLinear, GroupQuantEmbedding


def quantize_modules(model: Any, dtype: str) -> dict[str, np.ndarray]:
    """Replace, in place, every quantizable Linear and Embedding of `model` by its group-quantized
    module; returns {"<module>.weight": dequantized weight as float32} — the weights PyTorch must
    run for the dequantized-weights reference (names as in the model's state_dict)."""
    import torch

    GroupQuantLinear, GroupQuantEmbedding = _modules()
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and quantizable(tuple(module.weight.shape))]
    dequantized: dict[str, np.ndarray] = {}
    for name, module in targets:
        quantized = (GroupQuantLinear(module, dtype) if isinstance(module, torch.nn.Linear)
                     else GroupQuantEmbedding(module, dtype))
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, quantized)
        dequantized[f"{name}.weight"] = quantized.dequantized().astype(np.float32)
    return dequantized
