"""Gemma 3 text trunk in MLX, bidirectional (EmbeddingGemma): (input_ids, attention_mask) -> last_hidden_state.

Parameter names are transformers' `Gemma3TextModel` state dict (`embed_tokens.weight`,
`layers.0.self_attn.q_proj.weight`, ..., `norm.weight`), so the folder holds the checkpoint's tensors
under their own names. What sets Gemma 3 apart from the Llama-style trunk (llama.py), each checked
against transformers 5 (`models/gemma3/modeling_gemma3.py`) on the tiny model:

- RMSNorm multiplies by (1 + weight), statistics and multiply in float32, cast back once.
- The embeddings are scaled by sqrt(hidden_size), the scale cast to the weights' dtype first
  (transformers' `Gemma3TextScaledWordEmbedding`).
- Attention scores use query_pre_attn_scalar ** -0.5; q and k are RMS-normed per head before RoPE.
- Four norms per layer: input, post-attention (on the attention output, before the residual add),
  pre- and post-feed-forward; the MLP is GELU(tanh) gating.
- Layer types (config.layer_types): `sliding_attention` layers rotate with the local theta
  (rope_local_base_freq / rope_parameters.sliding_attention), `full_attention` with the global one.
- Bidirectional attention (config.use_bidirectional_attention): no causal mask; padding is masked on
  the keys. On sliding layers a key is visible when |q - k| < W with W = sliding_window // 2 + 1,
  where sliding_window is the config.json value: Gemma3TextConfig stores that W in memory and
  `_bidirectional_window_overlay` tests `abs(q_idx - kv_idx) < W` (its causal sliding mask, OR-ed
  in, is a subset). EmbeddingGemma's 512 gives 256 tokens each way.

Masks are additive with a finite value (-1e4: exp underflows to exactly 0 in float32 and float16),
not -inf or a boolean mask: a padding query whose whole window is padding then stays finite (with
-inf it would be NaN, and 0 * NaN leaks into real tokens through the next layer's values).
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ....errors import ModelportError
from .llama import ROPE_TYPES, Embedding, Linear, Rope, RoPE

MASK_VALUE = -1.0e4


def rope_settings(config: dict[str, Any]) -> dict[str, Rope]:
    """{"full_attention": Rope, "sliding_attention": Rope} from either spelling: transformers 5's
    per-layer-type `rope_parameters`, or the hub's top-level rope_theta / rope_local_base_freq /
    rope_scaling (which transformers applies to the full-attention layers only)."""
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        blocks = {k: dict(v) for k, v in params.items()}
    else:
        blocks = {"full_attention": {"rope_type": "default", **(scaling or {})},
                  "sliding_attention": {"rope_type": "default"}}
    full, sliding = blocks.setdefault("full_attention", {}), blocks.setdefault("sliding_attention", {})
    full.setdefault("rope_theta", config.get("rope_theta", 1_000_000.0))
    sliding.setdefault("rope_theta", config.get("rope_local_base_freq", 10_000.0))
    out = {}
    for kind, block in blocks.items():
        rope_type = block.get("rope_type", block.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ModelportError(f"gemma3 {kind} rope_type {rope_type!r} is not supported by MLX ({', '.join(ROPE_TYPES)})")
        extra = {k: v for k, v in block.items() if k not in ("rope_theta", "rope_type", "type")}
        if float(extra.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ModelportError("partial_rotary_factor != 1 is not supported by the MLX gemma3 trunk")
        if rope_type == "llama3":
            extra.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
        out[kind] = Rope(theta=float(block["rope_theta"]), rope_type=rope_type, params=extra)
    return out


def window(config: dict[str, Any]) -> int:
    """The exclusive bound W of a bidirectional sliding layer: visible iff |q - k| < W."""
    return int(config["sliding_window"]) // 2 + 1


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: x / rms(x) * (1 + weight), in float32, the mean of squares summed in blocks
    of 16 (llama.RMSNorm explains why: MLX's CPU kernel sums sequentially)."""

    BLOCK = 16

    def __init__(self, dims: int, eps: float) -> None:
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        width = x.shape[-1]
        block = math.gcd(width, self.BLOCK)
        x32 = x.astype(mx.float32)
        sq = (x32 * x32).reshape(*x.shape[:-1], width // block, block).sum(-1).sum(-1, keepdims=True)
        normed = x32 * mx.rsqrt(sq / width + self.eps)
        return (normed * (1.0 + self.weight.astype(mx.float32))).astype(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope: Rope) -> None:
        super().__init__()
        h, bias = cfg["hidden_size"], bool(cfg.get("attention_bias", False))
        self.num_heads, self.num_kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = cfg.get("head_dim") or h // self.num_heads
        self.scale = float(cfg["query_pre_attn_scalar"]) ** -0.5
        self.q_proj = Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, h, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"])
        self.k_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"])
        self._rope = RoPE(self.head_dim, rope)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, n, self.num_heads, self.head_dim)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q, k = self._rope(q, 0), self._rope(k, 0)  # positions 0..n-1, as transformers without position_ids
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        h, i = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = Linear(h, i, bias=False)
        self.up_proj = Linear(h, i, bias=False)
        self.down_proj = Linear(i, h, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any], layer_type: str, rope: Rope) -> None:
        super().__init__()
        eps = cfg["rms_norm_eps"]
        self.layer_type = layer_type
        self.self_attn = Attention(cfg, rope)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.post_feedforward_layernorm = RMSNorm(cfg["hidden_size"], eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


def _check(cfg: dict[str, Any]) -> list[str]:
    if not cfg.get("use_bidirectional_attention"):
        raise ModelportError("the MLX gemma3_text trunk is the bidirectional one (EmbeddingGemma); "
                             "use_bidirectional_attention is not set in config.json")
    if cfg.get("attn_logit_softcapping") is not None:  # (final_logit_softcapping applies to logits: no trunk here)
        raise ModelportError(f"attn_logit_softcapping={cfg['attn_logit_softcapping']}: attention soft-capping is "
                             f"not supported by the MLX gemma3 trunk")
    act = cfg.get("hidden_activation", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu_new"):
        raise ModelportError(f"hidden_activation {act!r}: the MLX gemma3 trunk implements GELU (tanh) only")
    n = int(cfg["num_hidden_layers"])
    types = cfg.get("layer_types") or [
        "sliding_attention" if (i + 1) % int(cfg.get("sliding_window_pattern", 6)) else "full_attention"
        for i in range(n)]
    if len(types) != n or any(t not in ("sliding_attention", "full_attention") for t in types):
        raise ModelportError(f"layer_types {types} do not describe {n} sliding/full attention layers")
    if "sliding_attention" in types and not cfg.get("sliding_window"):
        raise ModelportError("sliding_attention layers but no sliding_window in config.json")
    return list(types)


class Model(nn.Module):
    """(input_ids [B, L], attention_mask [B, L]) -> last_hidden_state [B, L, H] (after the final norm)."""

    def __init__(self, cfg: dict[str, Any], position_offset: int = 0) -> None:
        super().__init__()
        self.layer_types = _check(cfg)
        ropes = rope_settings(cfg)
        self.hidden_size = int(cfg["hidden_size"])
        self.window = window(cfg) if "sliding_attention" in self.layer_types else None
        self.embed_tokens = Embedding(cfg["vocab_size"], self.hidden_size)
        self.layers = [DecoderLayer(cfg, t, ropes[t]) for t in self.layer_types]
        self.norm = RMSNorm(self.hidden_size, cfg["rms_norm_eps"])

    def masks(self, attention_mask: mx.array, dtype: mx.Dtype) -> dict[str, mx.array]:
        """Additive masks [B, 1, L, L]: padding keys everywhere, plus |q - k| >= W on sliding layers."""
        keys = attention_mask[:, None, None, :].astype(mx.bool_)
        zero, neg = mx.array(0, dtype=dtype), mx.array(MASK_VALUE, dtype=dtype)
        out = {"full_attention": mx.where(keys, zero, neg)}
        if self.window is not None:
            n = attention_mask.shape[1]
            pos = mx.arange(n)
            near = mx.abs(pos[:, None] - pos[None, :]) < self.window
            out["sliding_attention"] = mx.where(keys & near[None, None], zero, neg)
        return out

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        x = self.embed_tokens(input_ids)
        # transformers: the scale is a float32 tensor cast to the weights' dtype before the multiply
        x = x * mx.array(self.hidden_size ** 0.5, dtype=mx.float32).astype(x.dtype)
        masks = self.masks(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, masks[layer.layer_type])
        return self.norm(x)


def checkpoint_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The checkpoint's tensors under this module's (= Gemma3TextModel's) names; a `model.` prefix
    (Gemma3ForCausalLM checkpoints) is dropped, an lm_head (tied to the embeddings) is not carried."""
    out = {}
    for name, value in weights.items():
        if name.startswith("model."):
            name = name[len("model."):]
        if name.startswith("lm_head.") or name.endswith("inv_freq"):
            continue
        out[name] = value
    return out
