"""The embedding head in MLX: everything between a trunk's hidden states and the shipped outputs.

The same function as `torch_model.EmbeddingHead` (the golden's), read from the same files, which every
MLX embedder folder carries beside its weights:

    modules.json + <Pooling>/config.json     pooling: cls | mean | last_token
    <i>_Dense/config.json + model.safetensors Linear(+bias) then identity or tanh, in order
    a Normalize module                       L2 over the last axis
    config_sentence_transformers.json        prompts; `truncate_dim` when the conversion truncated
    sparse_linear.safetensors                BGE-M3: ReLU(h @ w.T + b) per token, 0 on padding and on
                                             the tokenizer's cls/eos/pad/unk ids
    colbert_linear.safetensors               BGE-M3: normalize((h[:, 1:] @ W.T + b) * mask[:, 1:])

The head computes in float32 whatever the trunk's dtype (the f16 and quantized folders keep the Dense
and head weights in float32, as the PyTorch references that judge them do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ...embedding import EmbeddingContract, dense_weights, head_weights, read_contract, read_heads
from ...errors import ModelportError
from ...fsutil import read_json

ST_CONFIG = "config_sentence_transformers.json"
EPS = 1e-12  # torch.nn.functional.normalize's


def read_folder_contract(folder: Path, hidden_size: int) -> EmbeddingContract:
    """The contract a folder ships: sentence-transformers' files plus the truncation it records."""
    from dataclasses import replace

    contract = read_contract(folder, hidden_size)
    if contract is None:
        raise ModelportError(f"{folder} has no sentence-transformers Pooling module (modules.json)")
    cfg = read_json(folder / ST_CONFIG) if (folder / ST_CONFIG).is_file() else {}
    if cfg.get("truncate_dim"):
        contract = replace(contract, truncate_dim=int(cfg["truncate_dim"]))
    return contract


def _normalize(x: mx.array) -> mx.array:
    return x / mx.maximum(mx.sqrt((x * x).sum(axis=-1, keepdims=True)), EPS)


class Head:
    """hidden [B, L, H] (any dtype), input_ids, attention_mask -> (sentence_embedding[, sparse_weights,
    colbert_vectors]), float32."""

    def __init__(self, contract: EmbeddingContract, dense: list[tuple[np.ndarray, np.ndarray | None, str]],
                 heads: dict[str, np.ndarray] | None = None, unused_ids: tuple[int, ...] = ()) -> None:
        self.contract = contract
        self.dense = [(mx.array(w), None if b is None else mx.array(b), act) for w, b, act in dense]
        self.heads = None if heads is None else {k: mx.array(v) for k, v in heads.items()}
        self.unused_ids = tuple(int(i) for i in unused_ids)

    @classmethod
    def from_folder(cls, folder: Path, hidden_size: int) -> "Head":
        contract = read_folder_contract(folder, hidden_size)
        dense = [(*dense_weights(folder, layer), layer.activation) for layer in contract.dense]
        spec = read_heads(folder, hidden_size)
        heads = head_weights(folder, spec) if spec else None
        return cls(contract, dense, heads, spec.unused_ids if spec else ())

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("sentence_embedding",) + (("sparse_weights", "colbert_vectors") if self.heads else ())

    def pool(self, hidden: mx.array, attention_mask: mx.array) -> mx.array:
        mode = self.contract.pooling
        if mode == "cls":
            if self.contract.padding_side == "left":  # the first real token
                first = mx.argmax(attention_mask.astype(mx.int32), axis=1)
                return mx.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0]
            return hidden[:, 0]
        if mode == "last_token":  # the largest position whose mask is 1, for either padding side
            positions = mx.arange(hidden.shape[1], dtype=mx.int32)[None, :]
            last = mx.argmax(attention_mask.astype(mx.int32) * positions, axis=1)
            return mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        m = attention_mask.astype(hidden.dtype)[..., None]
        return (hidden * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)

    def __call__(self, hidden: mx.array, input_ids: mx.array, attention_mask: mx.array) -> tuple[mx.array, ...]:
        hidden = hidden.astype(mx.float32)
        x = self.pool(hidden, attention_mask)
        for w, b, act in self.dense:
            x = x @ w.T
            if b is not None:
                x = x + b
            if act == "tanh":
                x = mx.tanh(x)
        c = self.contract
        if c.normalize:
            x = _normalize(x)
        if c.truncate_dim:
            x = x[:, : c.truncate_dim]
            if c.normalize:
                x = _normalize(x)
        if self.heads is None:
            return (x,)
        h = self.heads
        sparse = mx.maximum(hidden @ h["sparse.weight"].T + h["sparse.bias"], 0.0)[..., 0]
        keep = attention_mask.astype(mx.float32)
        for tid in self.unused_ids:
            keep = keep * (input_ids != tid).astype(mx.float32)
        colbert = (hidden[:, 1:] @ h["colbert.weight"].T + h["colbert.bias"]) * \
            attention_mask[:, 1:, None].astype(mx.float32)
        return (x, sparse * keep, _normalize(colbert))


def head_json(head: Head) -> dict[str, Any]:
    """What the head computes, for the manifest."""
    return {"outputs": list(head.outputs), **head.contract.to_json(),
            **({"unused_ids": list(head.unused_ids)} if head.heads else {})}
