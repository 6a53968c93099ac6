"""The decoder LLM as a TVM Relax module with the functions WebLLM's chat pipeline calls.

mlc-llm is not installable here, so this is our own `relax.frontend.nn` model (Llama, Qwen2, Qwen3)
exporting the function set web-llm 0.2.86 (`LLMChatPipeline`) looks up by name:

    embed(input_ids int32[seq])                       -> [seq, hidden]
    prefill(input_embed [1, seq, hidden], kv_cache)   -> (logits [1, 1, vocab] of the last token, kv_cache)
    decode(input_embed [1, 1, hidden], kv_cache)      -> (logits [1, 1, vocab], kv_cache)
    create_tir_paged_kv_cache(max_batch, max_total_seq_len, prefill_chunk, page_size, sliding)
    softmax_with_temperature, argsort_probs, sample_with_top_p      (sampling, on the device)
    apply_logit_bias_inplace, apply_penalty_inplace, apply_bitmask_inplace
    _metadata() -> JSON (parameter names/shapes/dtypes in load order, KV cache shape, chunk sizes)

plus, in the validation build only, `prefill_logits` (every position's logits: the project's
LMRunner contract, which WebLLM's last-token `prefill` cannot serve).

Attention runs in TVM's paged KV cache (`TIRPagedKVCache`: RoPE applied inside, rotate-half
convention, grouped-query heads), as in WebLLM's own prebuilt models. The architecture differences
are the recipe's quirks, each handled here once: qkv-bias (Qwen2: q/k/v biases), qk-norm (Qwen3:
per-head RMSNorm on q and k before RoPE), tied-embeddings (lm_head reads the embedding table),
nope-layers (SmolLM3: the cache runs without RoPE and the model rotates q/k on its RoPE layers only,
with TVM's fused rope kernel at the cache's query positions).

4-bit variants (q4f32_1, q4f16_1) use `quantize.py`'s format: `<module>.q_weight` / `.q_scale`,
dequantized inside the kernels (a TE compute TVM fuses into the matmul or the row lookup).

The WebGPU sort: TVM 0.27's GPU sort (topi.gpu.sort, behind `op.argsort`) binds its merge step to
`blockIdx.z`, which TVM's WebGPU code generator does not emit. `argsort_probs` on WebGPU is therefore
our own kernel (`_bitonic_argsort`: a bitonic network over the vocabulary padded to a power of two,
using blockIdx.x/y and threadIdx.x only); the wasm32 CPU build keeps TVM's CPU sort.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import quantize

# WebGPU's default maxComputeInvocationsPerWorkgroup (256): kernels written here use at most that.
GPU_THREADS = 256


@dataclass(frozen=True)
class DecoderShape:
    """What the Relax model needs to know about a checkpoint (from its config and quirks)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    context_window_size: int
    prefill_chunk_size: int
    dtype: str  # float32 or float16: weights, activations and KV cache
    group_quantized: bool  # MLC q4*_1: Linear/Embedding weights stored 4-bit
    # quirk nope-layers (SmolLM3): which layers rotate q/k. None: every layer, and the KV cache applies
    # RoPE itself (RopeMode.NORMAL); a tuple: the model rotates those layers and the cache none.
    rope_layers: tuple[bool, ...] | None = None
    # TVM's rope_scaling dict (position_embedding.switch_rope_freq_func): {} for the default RoPE,
    # {"rope_type": "llama3", factor, low/high_freq_factor, original_max_position_embeddings} for Llama 3
    rope_scaling: dict[str, Any] = field(default_factory=dict)


# --- the model -------------------------------------------------------------------------------------------

def _modules(gpu: bool):
    """The nn classes (TVM imported on use: the validator image has no TVM). `gpu`: 4-bit Linear
    layers unpack inside the matmul for one-token steps (WebGPU); the wasm32 CPU build always unpacks
    then runs its scheduled matmul (build.wasm32_cpu_pipeline's rules match a plain matmul)."""
    from tvm import te, tirx
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import Tensor, op
    from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

    def matmul(x: Tensor, weight: Tensor, out_dtype: str | None) -> Tensor:
        """x @ weight.T, accumulated in float32 (float16 models too, as the encoder's f16 and every
        other fp16 runtime here do), returned in `out_dtype` (None: the input dtype)."""
        if x.dtype == "float32":
            return op.matmul(x, op.permute_dims(weight))
        out = op.matmul(x, op.permute_dims(weight), out_dtype="float32")
        return out if out_dtype == "float32" else out.astype(x.dtype)

    def element(q, s, row, col, dtype: str):
        """Weight [row, col] of a packed q_weight / q_scale pair: (code - 7) * scale (quantize.dequantize)."""
        per, bits, group = quantize.PER_WORD, quantize.BITS, quantize.GROUP
        code = (q[row, col // per] >> tirx.Cast("uint32", (col % per) * bits)) & tirx.const(quantize.MASK, "uint32")
        return (code.astype(dtype) - tirx.const(quantize.MAX_INT, dtype)) * s[row, col // group]

    def dequantize(q_weight: Tensor, q_scale: Tensor, dtype: str) -> Tensor:
        def compute(q, s):
            rows, words = q.shape
            return te.compute((rows, words * quantize.PER_WORD), lambda i, j: element(q, s, i, j, dtype),
                              name="dequantize")
        return op.tensor_expr_op(compute, "dequantize", [q_weight, q_scale])

    def one_row(x: Tensor) -> bool:
        """One token per sequence (static shape [b, 1, k]): the matrix-vector case."""
        rows = x.shape[-2]
        return int(rows) == 1 if isinstance(rows, (int, tirx.IntImm)) else False

    def dequantize_matmul(x: Tensor, q_weight: Tensor, q_scale: Tensor, dtype: str, out_dtype: str | None) -> Tensor:
        """x @ dequantize(q_weight, q_scale).T as one reduction: the 4-bit words are read and unpacked
        inside the matmul, never written out as a float matrix. Used on WebGPU for one-token steps,
        where a GPU is bound by reading the weights: 0.5 byte per weight here, against 0.5 + 4 + 4
        (unpack, write float32, read it back) for unpack-then-matmul, which would make q4f32_1 decode
        slower than f32's 4. Prefill keeps unpack-then-matmul, which dlight's Matmul rule tiles (the
        fused reduction is not a plain matmul to it: on SwiftShader, prefill ran at 24 tokens/s fused
        against 120 unfused on tiny-llama q4f32_1). Same products and sums as the two-kernel form."""
        acc = "float32"

        def compute(a, q, s):
            b, n_seq, k = a.shape
            r = te.reduce_axis((0, k), name="k")
            out = te.compute((b, n_seq, q.shape[0]),
                             lambda i, j, n: te.sum(a[i, j, r].astype(acc) * element(q, s, n, r, dtype).astype(acc),
                                                    axis=r), name="dequantize_NT_matmul")
            if (out_dtype or dtype) == acc:
                return out
            return te.compute(out.shape, lambda i, j, n: out[i, j, n].astype(out_dtype or dtype), name="cast")
        return op.tensor_expr_op(compute, "dequantize_NT_matmul", [x, q_weight, q_scale])

    class GroupQuantLinear(nn.Module):
        def __init__(self, in_features: int, out_features: int, bias: bool, dtype: str,
                     out_dtype: str | None) -> None:
            self.dtype, self.out_dtype = dtype, out_dtype
            self.q_weight = nn.Parameter((out_features, in_features // quantize.PER_WORD), "uint32")
            self.q_scale = nn.Parameter((out_features, in_features // quantize.GROUP), dtype)
            self.bias = nn.Parameter((out_features,), dtype) if bias else None

        def forward(self, x: Tensor) -> Tensor:
            if gpu and one_row(x):  # decode (and prefill's last-token logits): a GEMV, bound by reading weights
                y = dequantize_matmul(x, self.q_weight, self.q_scale, self.dtype, self.out_dtype)
            else:
                y = matmul(x, dequantize(self.q_weight, self.q_scale, self.dtype), self.out_dtype)
            return y + self.bias if self.bias is not None else y

    class Linear(nn.Module):
        def __init__(self, in_features: int, out_features: int, bias: bool, dtype: str,
                     out_dtype: str | None) -> None:
            self.out_dtype = out_dtype
            self.weight = nn.Parameter((out_features, in_features), dtype)
            self.bias = nn.Parameter((out_features,), dtype) if bias else None

        def forward(self, x: Tensor) -> Tensor:
            y = matmul(x, self.weight, self.out_dtype)
            return y + self.bias if self.bias is not None else y

    class RMSNorm(nn.Module):
        """In float32 whatever the model dtype, as transformers' LlamaRMSNorm computes it (a float16
        sum of squares measured 4.8e-3 x max |logit| on tiny-llama f16, over the 4e-3 fp16 gate)."""

        def __init__(self, size: int, eps: float, dtype: str) -> None:
            self.eps, self.dtype = eps, dtype
            self.weight = nn.Parameter((size,), dtype)

        def forward(self, x: Tensor) -> Tensor:
            if self.dtype == "float32":
                return op.rms_norm(x, self.weight, axes=[-1], epsilon=self.eps)
            out = op.rms_norm(x.astype("float32"), self.weight.astype("float32"), axes=[-1], epsilon=self.eps)
            return out.astype(self.dtype)

    class GroupQuantEmbedding(nn.Module):
        """Rows are looked up packed and dequantized after the lookup (the table never expands)."""

        def __init__(self, rows: int, dim: int, dtype: str) -> None:
            self.dtype = dtype
            self.q_weight = nn.Parameter((rows, dim // quantize.PER_WORD), "uint32")
            self.q_scale = nn.Parameter((rows, dim // quantize.GROUP), dtype)

        def forward(self, ids: Tensor) -> Tensor:
            return dequantize(op.take(self.q_weight, ids, axis=0), op.take(self.q_scale, ids, axis=0), self.dtype)

        def table(self) -> Tensor:
            return dequantize(self.q_weight, self.q_scale, self.dtype)

    class Embedding(nn.Embedding):
        def table(self) -> Tensor:
            return self.weight

    def linear(c: DecoderShape, n_in: int, n_out: int, bias: bool = False, out_dtype: str | None = None) -> nn.Module:
        """out_dtype "float32": the lm_head's logits, never rounded to float16."""
        if c.group_quantized and quantize.quantizable((n_out, n_in)):
            return GroupQuantLinear(n_in, n_out, bias, c.dtype, out_dtype)
        return Linear(n_in, n_out, bias, c.dtype, out_dtype)

    def embedding(c: DecoderShape) -> nn.Module:
        if c.group_quantized and quantize.quantizable((c.vocab_size, c.hidden_size)):
            return GroupQuantEmbedding(c.vocab_size, c.hidden_size, c.dtype)
        return Embedding(c.vocab_size, c.hidden_size, dtype=c.dtype)

    def rms_norm(c: DecoderShape, size: int) -> nn.Module:
        return RMSNorm(size, c.rms_norm_eps, c.dtype)

    class Attention(nn.Module):
        def __init__(self, c: DecoderShape) -> None:
            self.c = c
            hq, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
            self.q_proj = linear(c, c.hidden_size, hq * d, c.qkv_bias)
            self.k_proj = linear(c, c.hidden_size, hkv * d, c.qkv_bias)
            self.v_proj = linear(c, c.hidden_size, hkv * d, c.qkv_bias)
            self.o_proj = linear(c, hq * d, c.hidden_size)
            if c.qk_norm:  # quirk qk-norm: per-head RMSNorm before RoPE (which the KV cache applies)
                self.q_norm = rms_norm(c, d)
                self.k_norm = rms_norm(c, d)

        def forward(self, x: Tensor, kv: PagedKVCache, layer: int) -> Tensor:
            c = self.c
            b, s, _ = x.shape
            hq, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
            q = op.reshape(self.q_proj(x), (b, s, hq, d))
            k = op.reshape(self.k_proj(x), (b, s, hkv, d))
            v = op.reshape(self.v_proj(x), (b, s, hkv, d))
            if c.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            qkv = op.concat([q, k, v], dim=2)
            if c.rope_layers is not None and c.rope_layers[layer]:
                qkv = rotate(c, qkv, kv)
            out = kv.attention_with_fused_qkv(layer, qkv, hq, sm_scale=d ** -0.5)
            return self.o_proj(op.reshape(out, (b, s, hq * d)))

    def rotate(c: DecoderShape, qkv: Tensor, kv: PagedKVCache) -> Tensor:
        """RoPE on q and k at the cache's query positions (TVM's fused rope kernel, the one the
        cache runs in RopeMode.NORMAL), for a model that rotates only some layers."""
        from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map

        b, s, heads, d = qkv.shape
        hq, hkv = c.num_attention_heads, c.num_key_value_heads
        positions = kv.get_query_positions(b * s)
        func = llama_rope_with_position_map(c.rope_theta, 1.0, d, hq, hkv, c.dtype, dict(c.rope_scaling))
        # apply_rope (its last parameter) fixed to 1; private: the cache registers its own "fused_rope"
        func = func.specialize({func.params[-1]: tirx.IntImm("int64", 1)}).without_attr("global_symbol")
        q, k, v = op.tensor_ir_op(func, "rope_with_position_map", [op.reshape(qkv, (b * s, heads, d)), positions],
                                  [Tensor.placeholder((b * s, hq, d), c.dtype),
                                   Tensor.placeholder((b * s, hkv, d), c.dtype),
                                   Tensor.placeholder((b * s, hkv, d), c.dtype)])
        return op.reshape(op.concat([q, k, v], dim=1), (b, s, heads, d))

    class MLP(nn.Module):
        def __init__(self, c: DecoderShape) -> None:
            self.gate_proj = linear(c, c.hidden_size, c.intermediate_size)
            self.up_proj = linear(c, c.hidden_size, c.intermediate_size)
            self.down_proj = linear(c, c.intermediate_size, c.hidden_size)

        def forward(self, x: Tensor) -> Tensor:
            return self.down_proj(op.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self, c: DecoderShape) -> None:
            self.self_attn = Attention(c)
            self.mlp = MLP(c)
            self.input_layernorm = rms_norm(c, c.hidden_size)
            self.post_attention_layernorm = rms_norm(c, c.hidden_size)

        def forward(self, x: Tensor, kv: PagedKVCache, layer: int) -> Tensor:
            x = x + self.self_attn(self.input_layernorm(x), kv, layer)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Trunk(nn.Module):
        def __init__(self, c: DecoderShape) -> None:
            self.embed_tokens = embedding(c)
            self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])
            self.norm = rms_norm(c, c.hidden_size)

        def forward(self, x: Tensor, kv: PagedKVCache) -> Tensor:
            for i, layer in enumerate(self.layers):
                x = layer(x, kv, i)
            return self.norm(x)

    return nn, op, te, Tensor, PagedKVCache, Trunk, linear


def build_model(c: DecoderShape, target: Any, gpu: bool, validation: bool):
    """The nn.Module and its export spec. `validation` adds prefill_logits (every position)."""
    from tvm import relax

    nn, op, te, Tensor, PagedKVCache, Trunk, linear = _modules(gpu)
    from tvm.relax.frontend.nn.llm.kv_cache import RopeMode, TIRPagedKVCache

    def last_token(x: Tensor) -> Tensor:
        b, _, h = x.shape
        return op.tensor_expr_op(
            lambda t: te.compute((b, 1, h), lambda i, _j, k: t[i, t.shape[1] - 1, k], name="last_token"),
            "index_last_token", [x])

    class ChatModel(nn.Module):
        def __init__(self) -> None:
            self.model = Trunk(c)
            if not c.tie_word_embeddings:
                self.lm_head = linear(c, c.hidden_size, c.vocab_size, out_dtype="float32")

        def logits(self, h: Tensor) -> Tensor:
            if c.tie_word_embeddings:  # quirk tied-embeddings: the output projection is the table
                table = self.model.embed_tokens.table()
                return op.matmul(h, op.permute_dims(table), out_dtype="float32")
            return self.lm_head(h)

        def embed(self, input_ids: Tensor) -> Tensor:
            return self.model.embed_tokens(input_ids)

        def prefill(self, input_embed: Tensor, kv: PagedKVCache):
            return self.logits(last_token(self.model(input_embed, kv))), kv

        def prefill_logits(self, input_embed: Tensor, kv: PagedKVCache):
            return self.logits(self.model(input_embed, kv)), kv

        def decode(self, input_embed: Tensor, kv: PagedKVCache):
            return self.logits(self.model(input_embed, kv)), kv

        def create_tir_paged_kv_cache(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
                                      support_sliding_window) -> PagedKVCache:
            return TIRPagedKVCache(
                attn_kind="mha", max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
                prefill_chunk_size=prefill_chunk_size, page_size=page_size,
                support_sliding_window=support_sliding_window,
                layer_partition=relax.ShapeExpr([0, c.num_hidden_layers]), num_hidden_layers=c.num_hidden_layers,
                num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                qk_head_dim=c.head_dim, v_head_dim=c.head_dim, mla_original_qk_head_dim=0,
                mla_original_v_head_dim=0,
                rope_mode=RopeMode.NORMAL if c.rope_layers is None else RopeMode.NONE, rope_scale=1,
                rope_theta=c.rope_theta,
                rope_scaling=dict(c.rope_scaling), rope_ext_factors=relax.prim_value(0), rotary_dim=c.head_dim,
                enable_disaggregation=False, dtype=c.dtype, target=target)

        def softmax_with_temperature(self, logits: Tensor, temperature: Tensor):
            b, _, _ = logits.shape
            return op.softmax(logits / op.reshape(temperature, (b, 1, 1)), axis=-1)

        def argsort_probs(self, probs: Tensor):
            if gpu:
                b, v = probs.shape
                padded = _padded(c.vocab_size)
                ordered, idx, _, _ = op.tensor_ir_op(
                    _bitonic_argsort(c.vocab_size), "bitonic_argsort_desc", [probs],
                    [Tensor.placeholder((b, v), "float32"), Tensor.placeholder((b, v), "int32"),
                     Tensor.placeholder((b, padded), "float32"), Tensor.placeholder((b, padded), "int32")])
                return ordered, idx
            idx = op.argsort(probs, axis=-1, descending=True, dtype="int32")
            ordered = op.tensor_expr_op(
                lambda p, i: te.compute(p.shape, lambda r, j: p[r, i[r, j]], name="take_sorted"),
                "take_sorted_probs", [probs, idx])
            return ordered, idx

        def sample_with_top_p(self, sorted_probs: Tensor, sorted_indices: Tensor, uniform_samples: Tensor,
                              sample_indices: Tensor, top_p: Tensor):
            b, v = sorted_probs.shape
            n = uniform_samples.shape[0]
            top_k = op.tensor_expr_op(  # no top-k cut: WebLLM samples by top_p only
                lambda p: te.compute((p.shape[0], 1), lambda i, _j: p.shape[1].astype("int32"), name="all_k"),
                "all_k", [sorted_probs])
            out = op.sample_top_p_top_k_from_sorted_prob(
                sorted_probs, sorted_indices, op.reshape(top_p, (b, 1)), top_k, op.reshape(uniform_samples, (n, 1)),
                op.reshape(sample_indices, (n, 1)))
            return op.reshape(out, (n,))

    f32 = "float32"
    packed = {"param_mode": "packed", "effect_mode": "none"}
    plain = {"param_mode": "none", "effect_mode": "none"}
    kv = nn.spec.Object(object_type=PagedKVCache)
    spec: dict[str, Any] = {
        "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
        "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", c.hidden_size], c.dtype), "kv": kv, "$": packed},
        "decode": {"input_embed": nn.spec.Tensor([1, 1, c.hidden_size], c.dtype), "kv": kv, "$": packed},
        "create_tir_paged_kv_cache": {"max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int,
                                      "page_size": int, "support_sliding_window": int, "$": plain},
        "softmax_with_temperature": {"logits": nn.spec.Tensor(["batch_size", 1, c.vocab_size], f32),
                                     "temperature": nn.spec.Tensor(["batch_size"], f32), "$": plain},
        "argsort_probs": {"probs": nn.spec.Tensor(["batch_size", c.vocab_size], f32), "$": plain},
        "sample_with_top_p": {"sorted_probs": nn.spec.Tensor(["batch_size", c.vocab_size], f32),
                              "sorted_indices": nn.spec.Tensor(["batch_size", c.vocab_size], "int32"),
                              "uniform_samples": nn.spec.Tensor(["num_samples"], f32),
                              "sample_indices": nn.spec.Tensor(["num_samples"], "int32"),
                              "top_p": nn.spec.Tensor(["batch_size"], f32), "$": plain},
    }
    if validation:
        spec["prefill_logits"] = {"input_embed": nn.spec.Tensor([1, "seq_len", c.hidden_size], c.dtype), "kv": kv,
                                  "$": packed}
    model = ChatModel()
    return model, nn.spec.ModuleSpec.from_raw(spec, model)


def _padded(vocab: int) -> int:
    """The bitonic network's width: the vocabulary rounded up to a power of two."""
    return 1 << max(1, math.ceil(math.log2(vocab)))


def _bitonic_argsort(vocab: int):
    """argsort_probs for WebGPU: (probs sorted descending, their indices), ties by ascending index.

    A bitonic sorting network over the row padded to a power of two P (pads: probability -1, below
    every real one, so they sort last and are dropped). Stage (k, j) compares element i with i ^ j;
    each stage is one kernel launch of P threads (host loops over the log2(P)(log2(P)+1)/2 stages),
    so only blockIdx.x (positions), blockIdx.y (rows) and threadIdx.x are used.
    """
    from tvm.script import tirx as T

    size = _padded(vocab)
    log2 = size.bit_length() - 1
    tx = min(GPU_THREADS, size)
    blocks = size // tx

    @T.prim_func(private=True, s_tir=True)
    def argsort(var_probs: T.handle, var_sorted: T.handle, var_indices: T.handle, var_keys: T.handle,
                var_ids: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # kOpaque: fuse nothing
        batch = T.int32()
        probs = T.match_buffer(var_probs, (batch, vocab), "float32")
        out_sorted = T.match_buffer(var_sorted, (batch, vocab), "float32")
        out_indices = T.match_buffer(var_indices, (batch, vocab), "int32")
        keys = T.match_buffer(var_keys, (batch, size), "float32")  # scratch (the caller allocates it)
        ids = T.match_buffer(var_ids, (batch, size), "int32")
        with T.sblock("root"):  # the root block Relax's analyses expect; the kernels are plain loops
            for bx in T.thread_binding(blocks, "blockIdx.x"):
                for by in T.thread_binding(batch, "blockIdx.y"):
                    for t in T.thread_binding(tx, "threadIdx.x"):
                        keys[by, bx * tx + t] = T.if_then_else(bx * tx + t < vocab,
                                                               probs[by, T.min(bx * tx + t, vocab - 1)], T.float32(-1.0))
                        ids[by, bx * tx + t] = bx * tx + t
            for stage in T.serial(log2):
                for step in T.serial(stage + 1):
                    for bx in T.thread_binding(blocks, "blockIdx.x"):
                        for by in T.thread_binding(batch, "blockIdx.y"):
                            for t in T.thread_binding(tx, "threadIdx.x"):
                                i = bx * tx + t
                                partner = T.bitwise_xor(i, T.shift_right(T.shift_left(1, stage), step))
                                # within a block of 2 << stage, descending unless bit (stage + 1) of i is set
                                down = T.bitwise_and(i, T.shift_left(2, stage)) == 0
                                a_key = keys[by, i]
                                b_key = keys[by, partner]
                                a_id = ids[by, i]
                                b_id = ids[by, partner]
                                # a belongs after b in descending order (equal keys: lower index first)
                                after = T.Or(a_key < b_key, T.And(a_key == b_key, a_id > b_id))
                                if T.And(partner > i, after == down):
                                    keys[by, i] = b_key
                                    keys[by, partner] = a_key
                                    ids[by, i] = b_id
                                    ids[by, partner] = a_id
            for bx in T.thread_binding(blocks, "blockIdx.x"):
                for by in T.thread_binding(batch, "blockIdx.y"):
                    for t in T.thread_binding(tx, "threadIdx.x"):
                        if bx * tx + t < vocab:
                            out_sorted[by, bx * tx + t] = keys[by, bx * tx + t]
                            out_indices[by, bx * tx + t] = ids[by, bx * tx + t]

    return argsort


# --- logit processors WebLLM calls in place -----------------------------------------------------------------

def logit_processors(gpu: bool) -> dict[str, Any]:
    """apply_logit_bias_inplace, apply_penalty_inplace, apply_bitmask_inplace: one item per thread
    (GPU: blockIdx.x/threadIdx.x, 256 per block), a serial loop on the CPU. Signatures are
    web-llm 0.2.86's calls (llm_chat.ts)."""
    from tvm.script import tirx as T

    tx = GPU_THREADS
    if gpu:
        @T.prim_func(s_tir=True)
        def logit_bias(var_logits: T.handle, var_pos2seq: T.handle, var_tok: T.handle, var_bias: T.handle):
            T.func_attr({"global_symbol": "apply_logit_bias_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
            b, v, n = T.int32(), T.int32(), T.int32()
            logits = T.match_buffer(var_logits, (b, v), "float32")
            pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
            tok = T.match_buffer(var_tok, (n,), "int32")
            bias = T.match_buffer(var_bias, (n,), "float32")
            for p0 in T.thread_binding((n + tx - 1) // tx, "blockIdx.x"):
                for p1 in T.thread_binding(tx, "threadIdx.x"):
                    with T.sblock("bias"):
                        vp = T.axis.spatial(n, p0 * tx + p1)
                        T.where(p0 * tx + p1 < n)
                        logits[pos2seq[vp], tok[vp]] += bias[vp]

        @T.prim_func(s_tir=True)
        def penalty(var_logits: T.handle, var_seq_ids: T.handle, var_pos2seq: T.handle, var_tok: T.handle,
                    var_cnt: T.handle, var_pen: T.handle):
            T.func_attr({"global_symbol": "apply_penalty_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
            b, v, n, ns = T.int32(), T.int32(), T.int32(), T.int32()
            logits = T.match_buffer(var_logits, (b, v), "float32")
            seq_ids = T.match_buffer(var_seq_ids, (ns,), "int32")
            pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
            tok = T.match_buffer(var_tok, (n,), "int32")
            cnt = T.match_buffer(var_cnt, (n,), "int32")
            pen = T.match_buffer(var_pen, (ns, 3), "float32")  # presence, frequency, repetition
            for p0 in T.thread_binding((n + tx - 1) // tx, "blockIdx.x"):
                for p1 in T.thread_binding(tx, "threadIdx.x"):
                    with T.sblock("penalty"):
                        vp = T.axis.spatial(n, p0 * tx + p1)
                        T.where(p0 * tx + p1 < n)
                        logits[seq_ids[pos2seq[vp]], tok[vp]] -= (
                            pen[pos2seq[vp], 0] + T.Cast("float32", cnt[vp]) * pen[pos2seq[vp], 1])
                        logits[seq_ids[pos2seq[vp]], tok[vp]] = T.if_then_else(
                            logits[seq_ids[pos2seq[vp]], tok[vp]] < 0.0,
                            logits[seq_ids[pos2seq[vp]], tok[vp]] * pen[pos2seq[vp], 2],
                            logits[seq_ids[pos2seq[vp]], tok[vp]] / pen[pos2seq[vp], 2])

        @T.prim_func(s_tir=True)
        def bitmask(var_logits: T.handle, var_seq_ids: T.handle, var_mask: T.handle):
            T.func_attr({"global_symbol": "apply_bitmask_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
            b, v, ns = T.int32(), T.int32(), T.int32()
            logits = T.match_buffer(var_logits, (b, v), "float32")
            seq_ids = T.match_buffer(var_seq_ids, (ns,), "int32")
            mask = T.match_buffer(var_mask, (b, (v + 31) // 32), "int32")
            for p0 in T.thread_binding((ns * v + tx - 1) // tx, "blockIdx.x"):
                for p1 in T.thread_binding(tx, "threadIdx.x"):
                    with T.sblock("bitmask"):
                        vs = T.axis.spatial(ns, (p0 * tx + p1) // v)
                        vv = T.axis.spatial(v, (p0 * tx + p1) % v)
                        T.where(p0 * tx + p1 < ns * v)
                        logits[seq_ids[vs], vv] = T.if_then_else(
                            (mask[seq_ids[vs], vv // 32] >> (vv % 32)) & 1 == 1, logits[seq_ids[vs], vv],
                            T.float32(-3.0e38))
    else:
        @T.prim_func(s_tir=True)
        def logit_bias(var_logits: T.handle, var_pos2seq: T.handle, var_tok: T.handle, var_bias: T.handle):
            T.func_attr({"global_symbol": "apply_logit_bias_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
            b, v, n = T.int32(), T.int32(), T.int32()
            logits = T.match_buffer(var_logits, (b, v), "float32")
            pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
            tok = T.match_buffer(var_tok, (n,), "int32")
            bias = T.match_buffer(var_bias, (n,), "float32")
            for i in range(n):
                logits[pos2seq[i], tok[i]] += bias[i]

        @T.prim_func(s_tir=True)
        def penalty(var_logits: T.handle, var_seq_ids: T.handle, var_pos2seq: T.handle, var_tok: T.handle,
                    var_cnt: T.handle, var_pen: T.handle):
            T.func_attr({"global_symbol": "apply_penalty_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
            b, v, n, ns = T.int32(), T.int32(), T.int32(), T.int32()
            logits = T.match_buffer(var_logits, (b, v), "float32")
            seq_ids = T.match_buffer(var_seq_ids, (ns,), "int32")
            pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
            tok = T.match_buffer(var_tok, (n,), "int32")
            cnt = T.match_buffer(var_cnt, (n,), "int32")
            pen = T.match_buffer(var_pen, (ns, 3), "float32")
            for i in range(n):
                logits[seq_ids[pos2seq[i]], tok[i]] -= pen[pos2seq[i], 0] + T.Cast("float32", cnt[i]) * pen[pos2seq[i], 1]
                logits[seq_ids[pos2seq[i]], tok[i]] = T.if_then_else(
                    logits[seq_ids[pos2seq[i]], tok[i]] < 0.0, logits[seq_ids[pos2seq[i]], tok[i]] * pen[pos2seq[i], 2],
                    logits[seq_ids[pos2seq[i]], tok[i]] / pen[pos2seq[i], 2])

        @T.prim_func(s_tir=True)
        def bitmask(var_logits: T.handle, var_seq_ids: T.handle, var_mask: T.handle):
            T.func_attr({"global_symbol": "apply_bitmask_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
            b, v, ns = T.int32(), T.int32(), T.int32()
            logits = T.match_buffer(var_logits, (b, v), "float32")
            seq_ids = T.match_buffer(var_seq_ids, (ns,), "int32")
            mask = T.match_buffer(var_mask, (b, (v + 31) // 32), "int32")
            for s, j in T.grid(ns, v):
                logits[seq_ids[s], j] = T.if_then_else(
                    (mask[seq_ids[s], j // 32] >> (j % 32)) & 1 == 1, logits[seq_ids[s], j], T.float32(-3.0e38))

    return {"apply_logit_bias_inplace": logit_bias, "apply_penalty_inplace": penalty,
            "apply_bitmask_inplace": bitmask}


# --- export ------------------------------------------------------------------------------------------------

def export(c: DecoderShape, kind: str, quantization: str, max_batch: int = 1):
    """(Relax IRModule, parameter names in load order, metadata) for a library of `kind`
    ("webgpu" or "wasm32-cpu"); the wasm32 CPU build carries prefill_logits for validation."""
    import tvm
    from tvm import relax

    from .build import WASM32, WASM32_CPU

    gpu = kind == "webgpu"
    target = tvm.target.Target({"kind": "webgpu", "host": WASM32}) if gpu else tvm.target.Target(WASM32_CPU)
    model, spec = build_model(c, target, gpu=gpu, validation=not gpu)
    with target:
        mod, named = model.export_tvm(spec=spec)
    for name, func in logit_processors(gpu).items():
        mod[name] = func
    params = [(n, [int(s) for s in p.shape], str(p.dtype)) for n, p in named]
    metadata = {
        "model_type": c.model_type, "quantization": quantization,
        "context_window_size": c.context_window_size, "sliding_window_size": -1, "attention_sink_size": -1,
        "prefill_chunk_size": c.prefill_chunk_size, "tensor_parallel_shards": 1, "pipeline_parallel_stages": 1,
        "disaggregation": False, "kv_state_kind": "kv_cache", "max_batch_size": max_batch,
        "active_vocab_size": None, "model_task": "chat",
        "kv_cache": {"num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                     "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim},
        "params": [{"name": n, "shape": s, "dtype": d, "preprocs": [], "pipeline_stages": [0]} for n, s, d in params],
        "memory_usage": {},
    }
    builder = relax.BlockBuilder(mod)
    with builder.function("_metadata", params=[]):
        builder.emit_func_output(tvm.ir.StringImm(json.dumps(metadata)))
    mod = builder.finalize()
    # upper bounds for static memory planning (mlc-llm attaches the same hints)
    bounds = {"seq_len": c.prefill_chunk_size, "total_seq_len": c.context_window_size, "batch_size": max_batch,
              "num_samples": max_batch}
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function) and gv.name_hint != "_metadata":
            mod[gv] = func.with_attr("tir_var_upper_bound", bounds).with_attr("tir_non_negative_var", ["vocab_size"])
    return mod, [n for n, _, _ in params], metadata


# --- parameters ----------------------------------------------------------------------------------------------

def parameters(c: DecoderShape, names: list[str], state: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The package tensors in load order from a float32 state dict (transformers names, which the
    Relax model uses), and for a 4-bit variant the dequantized weights PyTorch must run for the
    dequantized-weights golden ({"<module>.weight": float32}; a tied lm_head gets the table's)."""
    out: dict[str, np.ndarray] = {}
    dequantized: dict[str, np.ndarray] = {}
    quantized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        module, _, leaf = name.rpartition(".")
        if leaf in ("q_weight", "q_scale"):
            if module not in quantized:
                quantized[module] = quantize.quantize(state[f"{module}.weight"], c.dtype)
                dequantized[f"{module}.weight"] = quantize.dequantize(*quantized[module]).astype(np.float32)
            out[name] = quantized[module][0 if leaf == "q_weight" else 1]
        else:
            out[name] = np.ascontiguousarray(state[name], dtype=c.dtype)
    if c.tie_word_embeddings and "model.embed_tokens.weight" in dequantized:
        dequantized["lm_head.weight"] = dequantized["model.embed_tokens.weight"]
    return out, dequantized
