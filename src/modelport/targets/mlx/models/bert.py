"""BERT-family encoders (BERT, XLM-RoBERTa) in MLX.

Parameter names follow transformers' `BertModel` / `XLMRobertaModel` (without the `pooler`, which
sentence embedding models do not use), so the converted safetensors are the checkpoint's own
tensors under their own names.

Two checkpoint quirks are handled here, both named in the recipe registry:
- `roberta-position-offset`: XLM-R position ids count non-padding tokens starting at
  `pad_token_id + 1`, not 0.
- `no-token-type-ids`: a single token-type row; the graph is fed zeros.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

# transformers' `hidden_act` names -> MLX functions. "gelu" is the exact (erf) GELU.
ACTIVATIONS = {
    "gelu": nn.gelu,
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
}


class Embeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any], position_offset: int) -> None:
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], h)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.get("layer_norm_eps", 1e-12))
        self.position_offset = position_offset
        self.pad_token_id = cfg.get("pad_token_id", 0)

    def positions(self, input_ids: mx.array) -> mx.array:
        if self.position_offset == 0:
            return mx.broadcast_to(mx.arange(input_ids.shape[1])[None, :], input_ids.shape)
        # RoBERTa: 1-based count of real tokens, shifted past the padding index; padding stays at it.
        real = (input_ids != self.pad_token_id).astype(mx.int32)
        return mx.cumsum(real, axis=1) * real + self.pad_token_id

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array) -> mx.array:
        x = (self.word_embeddings(input_ids) + self.position_embeddings(self.positions(input_ids))
             + self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)


class DenseNorm(nn.Module):
    """Linear -> dropout (none at inference) -> residual add -> LayerNorm."""

    def __init__(self, n_in: int, h: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, h)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        h = cfg["hidden_size"]
        self.self = SelfAttention(h)
        self.output = DenseNorm(h, h, cfg.get("layer_norm_eps", 1e-12))
        self.heads = cfg["num_attention_heads"]

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, n, h = x.shape
        d = h // self.heads

        def split(t: mx.array) -> mx.array:
            return t.reshape(b, n, self.heads, d).transpose(0, 2, 1, 3)

        q, k, v = split(self.self.query(x)), split(self.self.key(x)), split(self.self.value(x))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d), mask=mask)
        return self.output(o.transpose(0, 2, 1, 3).reshape(b, n, h), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])


class Layer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        act = cfg.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} has no MLX equivalent here ({', '.join(ACTIVATIONS)})")
        self.act = ACTIVATIONS[act]
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg["intermediate_size"], cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12))

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        a = self.attention(x, mask)
        return self.output(self.act(self.intermediate.dense(a)), a)


class Encoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.layer = [Layer(cfg) for _ in range(cfg["num_hidden_layers"])]


class Model(nn.Module):
    """(input_ids, attention_mask, token_type_ids?) -> last_hidden_state."""

    def __init__(self, cfg: dict[str, Any], position_offset: int = 0) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg, position_offset)
        self.encoder = Encoder(cfg)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array,
                 token_type_ids: mx.array | None = None) -> mx.array:
        if token_type_ids is None:
            token_type_ids = mx.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # Additive mask [B, 1, 1, L] in the compute dtype, with that dtype's most negative value,
        # as transformers' eager attention builds it.
        neg = mx.array(mx.finfo(x.dtype).min, dtype=x.dtype)
        mask = mx.where(attention_mask[:, None, None, :].astype(mx.bool_), mx.array(0, dtype=x.dtype), neg)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x


def checkpoint_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The checkpoint's tensors this module uses, under its names.

    Drops what an encoder for sentence embeddings does not compute: the pooler (sentence
    transformers pool themselves), the `position_ids` buffer older checkpoints saved, and the
    `bert.` / `roberta.` prefix some checkpoints carry.
    """
    out = {}
    for name, value in weights.items():
        for prefix in ("bert.", "roberta.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith("pooler.") or name.endswith("position_ids"):
            continue
        out[name] = value
    return out
