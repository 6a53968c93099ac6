"""Group-wise integer weight quantization in NumPy: the math every target's quantized format shares.

One convention for all formats: a weight matrix `w` of shape [rows, cols] (a PyTorch Linear's
[out, in], an embedding table's [vocab, dim]) is cut into groups of `group` consecutive columns
along each row; each group has one scale and one zero point, codes are unsigned in [0, 2^bits - 1],
and the stored weight is `(code - zero) * scale`. ONNX MatMulNBits / GatherBlockQuantized (blocks
along K), MLX's affine format (groups along the last axis; bias = -zero * scale) and Core ML's
blockwise linear format all store exactly this; only the packing differs, and packing lives with
each target.

Scale choices (`scales=`), measured on all-MiniLM-L6-v2's 36 MatMuls at 4 bits, group 32
(../shared/reference/quant, min / mean cosine of the sentence embedding vs fp32 with the embedding
table kept float):
  rtn_sym   the signed abs-max maps to -2^(bits-1) (onnxruntime's default)        0.910 / 0.968
  rtn_asym  [min(w,0), max(w,0)] with an integer zero point                       0.933 / 0.973
  mse_sym / mse_asym  a grid over the range, then least squares on the scale for the codes (llama.cpp's
            make_qx_quants idea), optionally weighted by per-column importance (the diagonal of the
            input Hessian: columns that see large activations matter more)
  + GPTQ    (`gptq`): quantize one column at a time and push its rounding error onto the columns not
            yet quantized, weighted by the inverse input Hessian; group scales are chosen when the
            group's first column is reached, on the already-corrected weights. mse_asym + importance
            + GPTQ: 0.976 / 0.987 at group 32.
onnxruntime 1.31's own GPTQ path propagates no error (it indexes an upper Cholesky factor as if it
were lower): it is not used.

Everything here is deterministic float64 NumPy (no threads-dependent reductions beyond BLAS
matmuls, which are fixed for a given input), so a plan re-run on the same weights and calibration
set writes the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALE_METHODS = ("rtn_sym", "rtn_asym", "mse_sym", "mse_asym")


@dataclass(frozen=True)
class GroupQuant:
    """Codes and group parameters of one matrix. dequantize() = (codes - zeros) * scales, per group."""

    codes: np.ndarray  # uint8 [rows, cols], values in [0, 2^bits - 1]
    scales: np.ndarray  # float32 [rows, cols // group]
    zeros: np.ndarray  # float32 [rows, cols // group], integer-valued
    bits: int
    group: int

    def dequantize(self) -> np.ndarray:
        rows, cols = self.codes.shape
        g = self.codes.reshape(rows, cols // self.group, self.group).astype(np.float32)
        w = (g - self.zeros[..., None].astype(np.float32)) * self.scales[..., None].astype(np.float32)
        return w.reshape(rows, cols)


def _groups(w: np.ndarray, group: int) -> np.ndarray:
    rows, cols = w.shape
    if cols % group:
        raise ValueError(f"{cols} columns are not a multiple of the group size {group}")
    return np.asarray(w, dtype=np.float64).reshape(rows * (cols // group), group)


def _scale_group_params(wg: np.ndarray, bits: int, method: str, imp: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero) per row of `wg` ([n, g] float64), by `method`."""
    top = 2 ** bits - 1
    half = 2 ** (bits - 1)
    weight = np.ones_like(wg) if imp is None else np.broadcast_to(imp, wg.shape)
    if method == "rtn_sym":
        idx = np.abs(wg).argmax(1)
        peak = wg[np.arange(len(wg)), idx]
        scale = peak / -half
        return np.where(scale == 0, 1.0, scale), np.full(len(wg), float(half))
    if method == "rtn_asym":
        lo, hi = np.minimum(wg.min(1), 0), np.maximum(wg.max(1), 0)
        scale = (hi - lo) / top
        scale = np.where(scale == 0, 1.0, scale)
        return scale, np.clip(np.round(-lo / scale), 0, top)
    if method == "mse_sym":
        idx = np.abs(wg).argmax(1)
        peak = wg[np.arange(len(wg)), idx]
        peak = np.where(peak == 0, 1.0, peak)
        best = (np.full(len(wg), np.inf), peak / -half)
        for sign, base in ((-1.0, half), (1.0, half - 1)):
            for f in np.linspace(-0.6, 1.0, 24):
                q = np.clip(np.round(wg * (sign * (base + f) / peak)[:, None]), -half, half - 1)
                s = _lsq_scale(wg, q, weight, best[1])
                err = (weight * (wg - s[:, None] * q) ** 2).sum(1)
                better = err < best[0]
                best = (np.where(better, err, best[0]), np.where(better, s, best[1]))
        scale = np.where(best[1] == 0, 1.0, best[1])
        return scale, np.full(len(wg), float(half))
    if method == "mse_asym":
        lo, hi = wg.min(1), wg.max(1)
        span = np.where(hi > lo, hi - lo, 1.0)
        best_err = np.full(len(wg), np.inf)
        best_s, best_z = span / top, np.zeros(len(wg))
        for f in np.linspace(-1.0, 1.2, 24):
            s = span / (top + f)
            for shift in (0.0, -0.5, 0.5):
                z = np.clip(np.round(-lo / s + shift), 0, top)
                for _ in range(2):  # alternate: codes -> least-squares scale -> best integer zero
                    q = np.clip(np.round(wg / s[:, None] + z[:, None]), 0, top)
                    s = _lsq_scale(wg, q - z[:, None], weight, s)
                    z = np.clip(np.round((weight * (q - wg / s[:, None])).sum(1) / weight.sum(1)), 0, top)
                q = np.clip(np.round(wg / s[:, None] + z[:, None]), 0, top)
                s = _lsq_scale(wg, q - z[:, None], weight, s)
                err = (weight * (wg - s[:, None] * (q - z[:, None])) ** 2).sum(1)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best_s, best_z = np.where(better, s, best_s), np.where(better, z, best_z)
        return best_s, best_z
    raise ValueError(f"unknown scale method {method!r} (one of {', '.join(SCALE_METHODS)})")


def _lsq_scale(w: np.ndarray, d: np.ndarray, weight: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The scale minimizing sum(weight * (w - s*d)^2) per row (fallback where d is all zero)."""
    den = (weight * d * d).sum(1)
    s = np.where(den > 0, (weight * w * d).sum(1) / np.where(den > 0, den, 1.0), fallback)
    return np.where(s == 0, 1e-12, s)


def _encode(wg: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(np.round(wg / scale[:, None] + zero[:, None]), 0, 2 ** bits - 1)


def quantize(w: np.ndarray, bits: int, group: int, scales: str = "rtn_sym",
             importance: np.ndarray | None = None) -> GroupQuant:
    """Round-to-nearest with group parameters chosen by `scales`. importance: per column [cols] or None."""
    rows, cols = w.shape
    wg = _groups(w, group)
    imp = None
    if importance is not None:
        imp = np.tile(np.asarray(importance, dtype=np.float64).reshape(cols // group, group), (rows, 1))
    scale, zero = _scale_group_params(wg, bits, scales, imp)
    codes = _encode(wg, scale, zero, bits)
    return GroupQuant(codes.reshape(rows, cols).astype(np.uint8), scale.reshape(rows, -1).astype(np.float32),
                      zero.reshape(rows, -1).astype(np.float32), bits, group)


def gptq(w: np.ndarray, hessian: np.ndarray, bits: int, group: int, scales: str = "mse_asym",
         damp: float = 0.01, use_importance: bool = True) -> GroupQuant:
    """GPTQ (Frantar et al. 2022) with the group's scale/zero chosen at its first column.

    hessian: [cols, cols], sum of x x^T over the calibration tokens feeding this layer (x = the
    layer's input). Columns no token ever excites (zero diagonal) are quantized as zero weight
    input, as in the reference implementation. The stored scales/zeros are float32, and codes are
    computed against the float32-rounded scale so that dequantize() reproduces exactly what the
    error feedback assumed.
    """
    rows, cols = w.shape
    if cols % group:
        raise ValueError(f"{cols} columns are not a multiple of the group size {group}")
    top = 2 ** bits - 1
    W = np.array(w, dtype=np.float64)
    H = np.array(hessian, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    diag = np.diag(H).copy()
    H[np.diag_indices(cols)] += damp * diag.mean()
    # upper Cholesky factor of H^-1: row i holds the error-propagation weights of column i
    hinv = np.linalg.cholesky(np.linalg.inv(H)).T
    codes = np.zeros((rows, cols), dtype=np.uint8)
    n_groups = cols // group
    S = np.zeros((rows, n_groups))
    Z = np.zeros((rows, n_groups))
    for g in range(n_groups):
        a, b = g * group, (g + 1) * group
        imp = diag[a:b][None, :] if use_importance else None
        s, z = _scale_group_params(W[:, a:b], bits, scales, imp)
        s = s.astype(np.float32).astype(np.float64)
        S[:, g], Z[:, g] = s, z
        block_err = np.zeros((rows, group))
        for j in range(a, b):
            col = W[:, j]
            q = np.clip(np.round(col / s + z), 0, top)
            codes[:, j] = q.astype(np.uint8)
            deq = (q - z) * s
            err = (col - deq) / hinv[j, j]
            W[:, j:b] -= np.outer(err, hinv[j, j:b])
            block_err[:, j - a] = err
        W[:, b:] -= block_err @ hinv[a:b, b:]
    return GroupQuant(codes, S.astype(np.float32), Z.astype(np.float32), bits, group)


def quantize_matrix(w: np.ndarray, bits: int, group: int, scales: str, hessian: np.ndarray | None = None,
                    use_gptq: bool = False) -> GroupQuant:
    """The one entry point plans use: GPTQ when asked and a Hessian is given, else round-to-nearest
    (importance-weighted by the Hessian's diagonal when one is given and the method searches)."""
    if use_gptq:
        if hessian is None:
            raise ValueError("GPTQ needs the layer's input Hessian (calibration statistics)")
        return gptq(w, hessian, bits, group, scales)
    importance = None if hessian is None or scales.startswith("rtn") else np.diag(hessian)
    return quantize(w, bits, group, scales, importance)


def stored_bits(rows: int, cols: int, bits: int, group: int, scale_bits: int = 16, zero_bits: int | None = None) -> int:
    """Bits a quantized matrix occupies: codes + one scale (+ one zero) per group. zero_bits None ->
    same as `bits` (ONNX packs zero points at the code width; MLX stores a float bias: pass 16/32)."""
    n_groups = rows * (cols // group)
    return rows * cols * bits + n_groups * (scale_bits + (bits if zero_bits is None else zero_bits))
