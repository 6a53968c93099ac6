"""Decoder-only LLMs in MLX: Llama, Qwen2, Qwen3 and SmolLM3, with a KV cache.

One forward pass covers the four families: they are the same pre-norm transformer (RMSNorm,
grouped-query attention with rotary positions, SwiGLU MLP) and differ only in the few facts of
the `FAMILIES` table:

| model_type | q/k/v bias            | o bias           | q/k RMSNorm | NoPE layers            |
|------------|-----------------------|------------------|-------------|------------------------|
| llama      | attention_bias        | attention_bias   | no          | none                   |
| qwen2      | always                | never            | no          | none                   |
| qwen3      | attention_bias        | attention_bias   | per head    | none                   |
| smollm3    | attention_bias        | attention_bias   | no          | no_rope_layers[i] == 0 |

Tied embeddings (`tie_word_embeddings`) are a config switch for every family: the output
projection is then `embed_tokens` used as a linear layer and the folder has no `lm_head.weight`.

Parameter names are the checkpoint's (`model.layers.0.self_attn.q_proj.weight`, ...), which are also
mlx-lm's, so the folders modelport writes load in mlx-lm and the checkpoint loads here unchanged.

Rotary settings are read from both spellings transformers has used: `rope_parameters` (transformers
5) and top-level `rope_theta` / `rope_scaling` (transformers 4, and what mlx-lm reads). A config
where the two disagree is refused: the model would compute something different depending on who
reads it. modelport writes both, equal, into every artifact.

The cache is functional (`KVCache` is immutable; each call returns the extended one), so a state
can be decoded from twice, e.g. to compare cached decoding with a full recompute.

Numerics. The layers are mlx-lm's (fused SDPA, `mx.fast.rope` fed transformers' own frequencies)
except two sums that MLX's CPU backend does sequentially in float32 (Linux wheels bundle the
reference BLAS): RMSNorm's mean of squares and a quantized layer's dot products are summed in
blocks (see `RMSNorm`, `groupwise_quantized_matmul`). Each was measured further from a float64 run
than PyTorch is, enough to cross the 1e-5 logits gate on the trained tiny models; blocked, the
runner is within 7.6e-6 of PyTorch everywhere. The files are unaffected: mlx-lm loads them as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ....errors import ModelportError


@dataclass(frozen=True)
class Family:
    """What one decoder family changes in the shared forward pass.

    A `str` value names a boolean config key (absent = False); a `bool` is fixed for the family.
    """

    qkv_bias: bool | str
    o_bias: bool | str
    mlp_bias: bool | str
    qk_norm: bool
    # Config key of the per-layer "uses rotary positions" list (1 = RoPE, 0 = NoPE), if any.
    rope_layers_key: str | None = None

    @staticmethod
    def flag(value: bool | str, config: dict[str, Any]) -> bool:
        return bool(config.get(value, False)) if isinstance(value, str) else value


FAMILIES: dict[str, Family] = {
    "llama": Family(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias", qk_norm=False),
    "qwen2": Family(qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False),
    "qwen3": Family(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias=False, qk_norm=True),
    "smollm3": Family(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias", qk_norm=False,
                      rope_layers_key="no_rope_layers"),
}

# transformers' rope types this module computes exactly; others (yarn, longrope, dynamic) change the
# attention scale or depend on the sequence length and are refused rather than approximated.
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class Rope:
    """Rotary position settings, resolved: what transformers 5 computes for this config."""

    theta: float
    rope_type: str = "default"
    params: dict[str, Any] = field(default_factory=dict)  # factor, low/high_freq_factor, ...

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies, computed the way transformers does (float32 powers of theta)."""
        exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
        inv = (1.0 / (np.float32(self.theta) ** exponents)).astype(np.float32)
        if self.rope_type == "linear":
            inv = inv / np.float32(self.params["factor"])
        elif self.rope_type == "llama3":
            inv = _llama3_inv_freq(inv, self.params)
        return inv.astype(np.float32)


def _llama3_inv_freq(inv: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Llama 3.1 frequency smoothing (transformers' `_compute_llama3_parameters`)."""
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def read_rope(config: dict[str, Any]) -> Rope:
    """Rotary settings from a config.json, from either spelling; refuses a config where they disagree.

    transformers 5 keeps them in `rope_parameters` ({"rope_type", "rope_theta", ...}); transformers 4
    and mlx-lm use top-level `rope_theta` and an optional `rope_scaling` block. Reading only one of
    them is the classic silent error (mlx-lm falls back to theta 10000: 3.7e-3 logits error measured
    on SmolLM3), so both are read and must agree.
    """
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    top_theta = config.get("rope_theta")
    if isinstance(params, dict) and params and any(isinstance(v, dict) for v in params.values()):
        raise ModelportError("per-layer-type rope_parameters are not supported by the MLX decoder")
    block = dict(params) if isinstance(params, dict) and params else dict(scaling or {})
    theta = block.get("rope_theta", top_theta)
    if theta is None:
        raise ModelportError("config.json has no rope_theta (neither top-level nor in rope_parameters)")
    if top_theta is not None and float(top_theta) != float(theta):
        raise ModelportError(
            f"config.json disagrees with itself: rope_theta={top_theta} at the top level but "
            f"{theta} in rope_parameters (transformers 5 uses the latter, mlx-lm the former)")
    rope_type = block.get("rope_type", block.get("type", "default"))
    if isinstance(params, dict) and params and isinstance(scaling, dict) and scaling:
        other = scaling.get("rope_type", scaling.get("type", "default"))
        if other != rope_type:
            raise ModelportError(
                f"config.json disagrees with itself: rope_scaling type {other!r} but rope_parameters "
                f"type {rope_type!r}")
    if rope_type not in ROPE_TYPES:
        raise ModelportError(f"rope_type {rope_type!r} is not supported by the MLX decoder ({', '.join(ROPE_TYPES)})")
    extra = {k: v for k, v in block.items() if k not in ("rope_theta", "rope_type", "type")}
    if rope_type == "llama3":
        extra.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
    if float(extra.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelportError("partial_rotary_factor != 1 is not supported by the MLX decoder")
    return Rope(theta=float(theta), rope_type=rope_type, params=extra)


@dataclass(frozen=True)
class Args:
    """The shape of one checkpoint, read from its config.json."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    rope: Rope
    rope_layers: tuple[bool, ...]
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Args":
        model_type = config.get("model_type")
        if model_type not in FAMILIES:
            raise ModelportError(f"no MLX decoder for model_type={model_type!r} ({', '.join(FAMILIES)})")
        fam = FAMILIES[model_type]
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ModelportError(f"hidden_act {act!r}: the MLX decoder implements SwiGLU (silu) only")
        n_layers = int(config["num_hidden_layers"])
        layer_types = config.get("layer_types") or ["full_attention"] * n_layers
        if config.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
            raise ModelportError("sliding-window attention layers are not supported by the MLX decoder")
        heads = int(config["num_attention_heads"])
        rope_layers = [True] * n_layers
        if fam.rope_layers_key and config.get(fam.rope_layers_key) is not None:
            rope_layers = [bool(v) for v in config[fam.rope_layers_key]]
            if len(rope_layers) != n_layers:
                raise ModelportError(f"{fam.rope_layers_key} has {len(rope_layers)} entries for {n_layers} layers")
        return cls(
            model_type=model_type,
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope=read_rope(config),
            rope_layers=tuple(rope_layers),
            qkv_bias=Family.flag(fam.qkv_bias, config),
            o_bias=Family.flag(fam.o_bias, config),
            mlp_bias=Family.flag(fam.mlp_bias, config),
            qk_norm=fam.qk_norm,
        )


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer so far ([1, kv_heads, offset, head_dim] each); immutable."""

    keys: tuple[mx.array | None, ...]
    values: tuple[mx.array | None, ...]
    offset: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> "KVCache":
        return cls((None,) * num_layers, (None,) * num_layers, 0)


class RMSNorm(nn.RMSNorm):
    """RMSNorm with the mean of squares summed in float32 blocks of (up to) 16, then across blocks.

    Same parameters as `nn.RMSNorm` (the folder is unchanged). Why not `mx.fast.rms_norm`: MLX's
    CPU kernel sums the squares sequentially (3.5x the rounding error of PyTorch's vectorized sum
    over 128 values); through the final norm that alone moved tiny-llama's logits by 1.65e-5 from
    PyTorch (4.3e-6 with blocked sums), past the 1e-5 gate. GPU kernels reduce in trees, which the
    blocked sum resembles. The statistics and the weight multiply are float32 for any input dtype,
    rounded to the activation dtype once: in float16 that keeps SmolLM3's logits 1.55e-2 from fp32
    PyTorch, against 2.13e-2 when the normalized activations are rounded before the multiply (as
    transformers and mx.fast.rms_norm do).
    """

    BLOCK = 16

    def __call__(self, x: mx.array) -> mx.array:
        width = x.shape[-1]
        block = math.gcd(width, self.BLOCK)
        x32 = x.astype(mx.float32)
        sq = (x32 * x32).reshape(*x.shape[:-1], width // block, block).sum(-1).sum(-1, keepdims=True)
        return (self.weight.astype(mx.float32) * (x32 * mx.rsqrt(sq / width + self.eps))).astype(x.dtype)


def _pairwise_sum(parts: list[mx.array]) -> mx.array:
    while len(parts) > 1:
        parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def groupwise_quantized_matmul(x: mx.array, layer: nn.Module) -> mx.array:
    """x @ W^T for a quantized layer, one quantization group at a time, groups added pairwise.

    The same weights and the same quantized kernel (`mx.quantized_matmul`), only the summation is
    split at group boundaries, as quantized GPU kernels walk a row group by group. Why: MLX's CPU
    path hands the whole row to a sequential float32 sum (its bundled reference BLAS); with 4- and
    8-bit tiny-smollm3 weights that put cached-decode logits 1.5e-5 from a float64 run where
    PyTorch is 5.2e-6, i.e. 1.05e-5 from the dequantized-weights golden. Group-wise: 4.0e-6 from
    float64, and at most 7.6e-6 from the golden across the four families.
    """
    gs, bits = layer.group_size, layer.bits
    if layer.mode != "affine":
        return mx.quantized_matmul(x, layer["weight"], scales=layer["scales"], biases=layer.get("biases"),
                                   transpose=True, group_size=gs, bits=bits, mode=layer.mode)
    packed = gs * bits // 32  # uint32 words per group and row
    w, scales, biases = layer["weight"], layer["scales"], layer["biases"]
    return _pairwise_sum([
        mx.quantized_matmul(x[..., g * gs:(g + 1) * gs], w[:, g * packed:(g + 1) * packed],
                            scales=scales[:, g:g + 1], biases=biases[:, g:g + 1], transpose=True,
                            group_size=gs, bits=bits)
        for g in range(scales.shape[-1])
    ])


class QuantizedLinear(nn.QuantizedLinear):
    """`nn.QuantizedLinear` (same parameters, same file) with group-wise accumulation."""

    def __call__(self, x: mx.array) -> mx.array:
        y = groupwise_quantized_matmul(x, self)
        return y + self["bias"] if "bias" in self else y


class QuantizedEmbedding(nn.QuantizedEmbedding):
    """`nn.QuantizedEmbedding`; as the tied output projection it accumulates group-wise too."""

    def as_linear(self, x: mx.array) -> mx.array:
        return groupwise_quantized_matmul(x, self)


class Linear(nn.Linear):
    """`nn.Linear` that quantizes (nn.quantize / mlx-lm's rule) into the group-wise layer above."""

    def to_quantized(self, group_size: int | None = None, bits: int | None = None, mode: str = "affine",
                     quantize_input: bool = False) -> nn.Module:
        if quantize_input:
            raise ValueError("activation quantization is not used for MLX decoders")
        return QuantizedLinear.from_linear(self, group_size, bits, mode)


class Embedding(nn.Embedding):
    def to_quantized(self, group_size: int | None = None, bits: int | None = None, mode: str = "affine",
                     quantize_input: bool = False) -> nn.Module:
        if quantize_input:
            raise ValueError("activation quantization is not used for MLX decoders")
        return QuantizedEmbedding.from_embedding(self, group_size, bits, mode)


class RoPE(nn.Module):
    """Rotary embedding with transformers' frequencies (half-split, not interleaved)."""

    def __init__(self, head_dim: int, rope: Rope) -> None:
        super().__init__()
        self.head_dim = head_dim
        # Stored as a private attribute: a buffer, not a parameter (the folder does not carry it).
        self._freqs = mx.array(1.0 / rope.inv_freq(head_dim))

    def __call__(self, x: mx.array, offset: int) -> mx.array:
        return mx.fast.rope(x, self.head_dim, traditional=False, base=None, scale=1.0, offset=offset,
                            freqs=self._freqs)


class Attention(nn.Module):
    def __init__(self, a: Args, use_rope: bool) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = a.num_heads, a.num_kv_heads, a.head_dim
        self.scale = a.head_dim ** -0.5
        self.q_proj = Linear(a.hidden_size, a.num_heads * a.head_dim, bias=a.qkv_bias)
        self.k_proj = Linear(a.hidden_size, a.num_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.v_proj = Linear(a.hidden_size, a.num_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.o_proj = Linear(a.num_heads * a.head_dim, a.hidden_size, bias=a.o_bias)
        if a.qk_norm:
            self.q_norm = RMSNorm(a.head_dim, eps=a.rms_norm_eps)
            self.k_norm = RMSNorm(a.head_dim, eps=a.rms_norm_eps)
        self._qk_norm = a.qk_norm
        self._rope = RoPE(a.head_dim, a.rope) if use_rope else None

    def __call__(self, x: mx.array, past: tuple[mx.array | None, mx.array | None], offset: int,
                 mask: mx.array | None = None) -> tuple[mx.array, mx.array, mx.array]:
        b, n, _ = x.shape
        q = self.q_proj(x).reshape(b, n, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim)
        if self._qk_norm:  # Qwen3: RMSNorm over each head's vector, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        if self._rope is not None:
            q, k = self._rope(q, offset), self._rope(k, offset)
        past_k, past_v = past
        if past_k is not None:
            k, v = mx.concatenate([past_k, k], axis=2), mx.concatenate([past_v, v], axis=2)
        # mlx-lm's kernel. "causal" aligns the last query with the last key, so it is right with a
        # cache too; a single new token attends to everything and needs no mask. (Spelling the
        # attention out in transformers' eager order was tried: closer on prefill, farther on
        # single-token decode, where the fused kernel's accumulation is more accurate.)
        if mask is None:
            mask = "causal" if n > 1 else None
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, n, -1)), k, v


class MLP(nn.Module):
    def __init__(self, a: Args) -> None:
        super().__init__()
        self.gate_proj = Linear(a.hidden_size, a.intermediate_size, bias=a.mlp_bias)
        self.up_proj = Linear(a.hidden_size, a.intermediate_size, bias=a.mlp_bias)
        self.down_proj = Linear(a.intermediate_size, a.hidden_size, bias=a.mlp_bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, a: Args, use_rope: bool) -> None:
        super().__init__()
        self.self_attn = Attention(a, use_rope)
        self.mlp = MLP(a)
        self.input_layernorm = RMSNorm(a.hidden_size, eps=a.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(a.hidden_size, eps=a.rms_norm_eps)

    def __call__(self, x: mx.array, past: tuple[mx.array | None, mx.array | None], offset: int,
                 mask: mx.array | None = None) -> tuple[mx.array, mx.array, mx.array]:
        h, k, v = self.self_attn(self.input_layernorm(x), past, offset, mask)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Backbone(nn.Module):
    def __init__(self, a: Args) -> None:
        super().__init__()
        self.embed_tokens = Embedding(a.vocab_size, a.hidden_size)
        self.layers = [DecoderLayer(a, use_rope) for use_rope in a.rope_layers]
        self.norm = RMSNorm(a.hidden_size, eps=a.rms_norm_eps)


# Additive mask value of the embedder trunk: exp underflows to exactly 0 in float32 and float16, and a
# padding query that sees no key (left padding, causal) stays finite (-inf would give NaN rows, and
# 0 * NaN leaks into real tokens through the next layer's values).
MASK_VALUE = -1.0e4


class Trunk(Backbone):
    """The decoder without a head or cache, as an embedder runs it (Qwen3-Embedding):
    (input_ids [B, L], attention_mask [B, L]) -> last_hidden_state [B, L, H].

    Parameter names are the bare decoder's (transformers' `Qwen3Model`: `embed_tokens.weight`,
    `layers.0...`, `norm.weight`). Attention is causal AND padding (keys); positions are 0..L-1
    including padding, which is what transformers' AutoModel computes when no position_ids are given:
    with left padding a row's first real token sits at position (number of pads), not 0."""

    def __init__(self, config: dict[str, Any], position_offset: int = 0) -> None:
        args = Args.from_config(config)
        super().__init__(args)
        self.args = args

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        x = self.embed_tokens(input_ids)
        n = input_ids.shape[1]
        pos = mx.arange(n)
        visible = (pos[None, :] <= pos[:, None])[None, None] & attention_mask[:, None, None, :].astype(mx.bool_)
        mask = mx.where(visible, mx.array(0, dtype=x.dtype), mx.array(MASK_VALUE, dtype=x.dtype))
        for layer in self.layers:
            x, _, _ = layer(x, (None, None), 0, mask)
        return self.norm(x)


def trunk_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """A checkpoint's tensors under `Trunk`'s names: the `model.` prefix of a *ForCausalLM state dict
    dropped, no lm_head (an embedder has none), no rotary buffers."""
    out = {}
    for name, value in weights.items():
        if name.startswith("model."):
            name = name[len("model."):]
        if name.startswith("lm_head.") or name.endswith("rotary_emb.inv_freq"):
            continue
        out[name] = value
    return out


class Model(nn.Module):
    """(input_ids [B, T], cache) -> (logits [B, T, V], extended cache)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.args = Args.from_config(config)
        self.model = Backbone(self.args)
        if not self.args.tie_word_embeddings:
            self.lm_head = Linear(self.args.hidden_size, self.args.vocab_size, bias=False)

    def make_cache(self) -> KVCache:
        return KVCache.empty(self.args.num_layers)

    def __call__(self, input_ids: mx.array, cache: KVCache | None = None) -> tuple[mx.array, KVCache]:
        cache = cache or self.make_cache()
        x = self.model.embed_tokens(input_ids)
        keys, values = [], []
        for layer, pk, pv in zip(self.model.layers, cache.keys, cache.values):
            x, k, v = layer(x, (pk, pv), cache.offset)
            keys.append(k)
            values.append(v)
        x = self.model.norm(x)
        logits = self.model.embed_tokens.as_linear(x) if self.args.tie_word_embeddings else self.lm_head(x)
        return logits, KVCache(tuple(keys), tuple(values), cache.offset + input_ids.shape[1])


def checkpoint_weights(weights: dict[str, mx.array], config: dict[str, Any]) -> dict[str, mx.array]:
    """The checkpoint's tensors this module uses, under its (= the checkpoint's) names.

    Tied checkpoints may list `lm_head.weight` (transformers' state dict names both aliases); the
    folder stores the table once, as `model.embed_tokens.weight`, the way mlx-lm expects it.
    Rotary `inv_freq` buffers are recomputed from the config, not carried.
    """
    tied = bool(config.get("tie_word_embeddings", False))
    return {
        name: value for name, value in weights.items()
        if not name.endswith("rotary_emb.inv_freq") and not (tied and name == "lm_head.weight")
    }
