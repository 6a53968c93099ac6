"""The PyTorch model every target is compared against (and exported from).

`SentenceEncoder` wraps a Hugging Face encoder with the recipe's pooling and normalization, so the
reference and the exported graphs compute the exact same function: token embeddings plus the
pooled sentence embedding. Eager attention: it is the kernel every exporter traces faithfully.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import ModelportError

if TYPE_CHECKING:
    import torch

    from .recipes import Recipe
    from .source import ModelSource


def load_hf_model(source: "ModelSource") -> "torch.nn.Module":
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(
            source.path,
            dtype=torch.float32,
            attn_implementation="eager",
            trust_remote_code=source.trust_remote_code,
            use_safetensors=not any(p.suffix != ".safetensors" for p in source.weight_files),
        )
    except (OSError, ValueError) as e:
        raise ModelportError(f"transformers could not load {source.path}: {str(e).splitlines()[0]}") from e
    return model.eval()


class Models:
    """The PyTorch modules one conversion uses, each loaded once and passed explicitly (no module
    state): the golden and the ONNX export run the same `make_encoder` module instead of loading the
    checkpoint twice (MiniLM: 0.3 s; a 0.6B embedder: 2.4 GB read again). `clear()` drops them once
    the converter is done, before quantization and validation need the memory."""

    def __init__(self) -> None:
        self._encoders: dict[tuple[str, int], "torch.nn.Module"] = {}

    def encoder(self, source: "ModelSource", recipe: "Recipe") -> "torch.nn.Module":
        """make_encoder(load_hf_model(source), recipe, source.path), once per checkpoint and length."""
        key = (str(source.path), recipe.max_length)
        if key not in self._encoders:
            self._encoders[key] = make_encoder(load_hf_model(source), recipe, source.path)
        return self._encoders[key]

    def clear(self) -> None:
        self._encoders.clear()


def load_causal_lm(path: Path, *, trust_remote_code: bool = False, use_safetensors: bool | None = None,
                   dtype: Any = None) -> Any:
    """The one decoder loader every target and the golden use: float32, eager attention, eval mode.

    One policy for all of them (they used to disagree: four loaders, three flag sets):
    - eager attention, the kernel the golden uses: with SDPA, torch.onnx decomposes attention as
      softmax((Q*sqrt(s)) @ (K*sqrt(s))^T), a different rounding from eager's (Q @ K^T) * s: measured
      on tiny-smollm3, cached-decode logits moved from 8.6e-6 (eager) to 1.12e-5 (SDPA) max abs
      against the golden, over the 1e-5 fp32 gate; both graphs have the same ops otherwise.
    - trust_remote_code only when the user passed --trust-remote-code (source.inspect refuses auto_map
      otherwise); safetensors unless the user allowed pickle weights and the checkpoint has them.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if use_safetensors is not False and dtype in (None, torch.float32) and any(Path(path).glob("*.safetensors")):
        # the same model with its weights read tensor by tensor: from_pretrained's mapped pages count in
        # the RSS next to the copy it makes (2x the weights at load; issue 18, the 3B conversion in 24 GB)
        from .checkpoint_reader import load_causal_lm_streamed

        try:
            return load_causal_lm_streamed(Path(path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelportError(f"transformers could not load {path}: {str(e).splitlines()[0]}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, attn_implementation="eager", trust_remote_code=trust_remote_code,
            **({} if use_safetensors is None else {"use_safetensors": use_safetensors}))
    except (OSError, ValueError) as e:
        raise ModelportError(f"transformers could not load {path}: {str(e).splitlines()[0]}") from e
    return model.eval()


def load_causal_lm_source(source: "ModelSource") -> Any:
    """`load_causal_lm` with the checked source's own policy (remote code, weight format)."""
    return load_causal_lm(source.path, trust_remote_code=source.trust_remote_code,
                          use_safetensors=not any(p.suffix != ".safetensors" for p in source.weight_files))


def load_tokenizer(source: "ModelSource"):
    from transformers import AutoTokenizer

    if not (source.path / "tokenizer.json").is_file():
        raise ModelportError(
            f"no tokenizer.json in {source.path}: on-device clients (transformers.js, WebLLM) need the fast tokenizer file"
        )
    return AutoTokenizer.from_pretrained(source.path)


def make_encoder(hf_model: "torch.nn.Module", recipe: "Recipe", source_dir: Path | None = None) -> "torch.nn.Module":
    """(input_ids, attention_mask[, token_type_ids]) -> (last_hidden_state, sentence_embedding[,
    sparse_weights, colbert_vectors]): the trunk plus the recipe's whole embedding head."""
    import torch

    head = EmbeddingHead(recipe, source_dir)
    apply_model_fixes(hf_model, recipe)

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model
            self.head = head

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, ...]:
            # Explicit parameters (not *args): torch.export matches dynamic shapes to the signature.
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.model(**kwargs).last_hidden_state
            return (hidden, *self.head(hidden, input_ids, attention_mask))

    return SentenceEncoder().eval()


def apply_model_fixes(hf_model: "torch.nn.Module", recipe: "Recipe") -> list[str]:
    """Every quirk's rewrite of the PyTorch model (recipes.Quirk.model_fix), once per model."""
    done = getattr(hf_model, "_modelport_fixed", None)  # our own marker on the model object
    if done is not None:
        if done != recipe.max_length:
            raise ValueError(f"model already fixed for {done} positions, not {recipe.max_length}: load it again")
        return []
    notes = [n for q in recipe.quirks if q.model_fix for n in q.model_fix(hf_model, recipe)]
    hf_model._modelport_fixed = recipe.max_length
    return notes


def EmbeddingHead(recipe: "Recipe", source_dir: Path | None) -> "torch.nn.Module":
    """The torch module for everything after the trunk (embedding.EmbeddingContract + BGE-M3 heads).

    One definition for the golden and every torch-traced export (ONNX, Core ML); MLX reimplements
    it in `targets/mlx/head.py` from the same weights. Dense and head weights are read from the
    checkpoint folder (`source_dir`): safetensors, or torch.load(weights_only=True).
    """
    import torch

    from .embedding import dense_weights, head_weights

    contract = recipe.head
    if (contract.dense or recipe.heads) and source_dir is None:
        raise ValueError("the recipe has Dense layers or heads: pass the checkpoint folder to load them")

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = torch.nn.ModuleList()
            self.activations = [layer.activation for layer in contract.dense]
            for layer in contract.dense:
                weight, bias = dense_weights(source_dir, layer)
                linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=bias is not None)
                linear.weight.data = torch.from_numpy(weight.copy())
                if bias is not None:
                    linear.bias.data = torch.from_numpy(bias.copy())
                self.dense.append(linear)
            self.heads = recipe.heads is not None
            if self.heads:
                w = head_weights(source_dir, recipe.heads)
                self.sparse = torch.nn.Linear(recipe.hidden_size, 1)
                self.colbert = torch.nn.Linear(recipe.hidden_size, w["colbert.weight"].shape[0])
                for name, value in w.items():
                    mod, param = name.split(".")
                    getattr(self, mod).get_parameter(param).data = torch.from_numpy(value.copy())
                self.register_buffer("unused_ids", torch.tensor(recipe.heads.unused_ids, dtype=torch.long),
                                     persistent=False)

        def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = pool(hidden, attention_mask, recipe)
            for linear, activation in zip(self.dense, self.activations):
                x = linear(x)
                if activation == "tanh":
                    x = torch.tanh(x)
            x = finish(x, recipe)
            if not self.heads:
                return (x,)
            return (x, sparse_weights(self.sparse, hidden, input_ids, attention_mask, self.unused_ids),
                    colbert_vectors(self.colbert, hidden, attention_mask))

    return Head().eval()


def pool(hidden: "torch.Tensor", attention_mask: "torch.Tensor", recipe: "Recipe") -> "torch.Tensor":
    """The recipe's pooling, as sentence-transformers computes it; one definition for every torch
    wrapper. Normalization and Dense layers come after (`EmbeddingHead`); for a recipe without Dense
    layers `finish(pool(...))` is the sentence embedding."""
    import torch

    mode = recipe.pooling
    if mode == "cls":
        if recipe.head.padding_side == "left":  # the first real token, as sentence-transformers finds it
            first = attention_mask.to(torch.int32).argmax(dim=1)
            return torch.gather(hidden, 1, first[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)
        return hidden[:, 0]
    if mode == "last_token":
        # the last real position, for either padding side: the largest index whose mask is 1
        positions = torch.arange(hidden.shape[1], device=hidden.device, dtype=torch.int32)[None, :]
        last = (attention_mask.to(torch.int32) * positions).argmax(dim=1)
        return torch.gather(hidden, 1, last[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def finish(x: "torch.Tensor", recipe: "Recipe") -> "torch.Tensor":
    """Normalize, then the Matryoshka truncation (re-normalized when the model normalizes)."""
    import torch.nn.functional as F

    contract = recipe.head
    if contract.normalize:
        x = F.normalize(x, p=2.0, dim=-1)
    if contract.truncate_dim:
        x = x[:, : contract.truncate_dim]
        if contract.normalize:
            x = F.normalize(x, p=2.0, dim=-1)
    return x


def sparse_weights(linear: "torch.nn.Module", hidden: "torch.Tensor", input_ids: "torch.Tensor",
                   attention_mask: "torch.Tensor", unused_ids: "torch.Tensor") -> "torch.Tensor":
    """BGE-M3's lexical weight of every token: ReLU(linear(h)), 0 on padding and on the tokenizer's
    cls/eos/pad/unk ids (FlagEmbedding drops those). Aggregation per token id (max) is
    `embedding.lexical_weights`, on the client: a dictionary is not a tensor."""
    import torch

    w = torch.relu(linear(hidden)).squeeze(-1)
    keep = attention_mask.to(w.dtype)
    for i in range(unused_ids.shape[0]):  # a handful of ids: unrolled compares, every converter has them
        keep = keep * (input_ids != unused_ids[i]).to(w.dtype)
    return w * keep


def colbert_vectors(linear: "torch.nn.Module", hidden: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """BGE-M3's ColBERT vectors: linear(h) for tokens 1.. (not CLS), zeroed on padding, L2-normalized
    (a zero row stays zero)."""
    import torch.nn.functional as F

    v = linear(hidden[:, 1:]) * attention_mask[:, 1:, None].to(hidden.dtype)
    return F.normalize(v, p=2.0, dim=-1)


# Additive mask value for padded keys: exp(-1e4) underflows to exactly 0 in float32 and float16,
# so padding gets exactly zero attention, and unlike finfo(float32).min it stays finite in fp16.
ADDITIVE_MASK_VALUE = -1.0e4


def make_additive_mask_encoder(hf_model: "torch.nn.Module", recipe: "Recipe",
                               source_dir: Path | None = None) -> "torch.nn.Module":
    """The same function as `make_encoder`, with the 4-D additive attention mask built here.

    transformers 5 builds the mask with ops some converters cannot translate (coremltools 9:
    `new_ones`, `diff`); a ready 4-D mask is passed through untouched, so the traced graph holds
    only a cast, a subtraction and a multiplication. The pooling still reads the 2-D mask.

    Decoder trunks (Qwen3, Gemma3) take the ready mask as a dict per layer type
    ({"full_attention": m, "sliding_attention": m}, what their forward accepts instead of building
    masks) and it must carry everything transformers would have put in it: `decoder_attention_masks`.
    They run without a KV cache. The recipe's model fixes are applied to `hf_model` as in
    `make_encoder` (rope-tables: cos/sin gathered from float32 tables, which also keeps a Core ML
    fp16 program with a flexible shape from computing the angles in fp16).
    """
    import torch

    head = EmbeddingHead(recipe, source_dir)
    apply_model_fixes(hf_model, recipe)  # as make_encoder (the golden's): e.g. rope-tables
    from .recipes import DECODER_EMBEDDER

    masks = decoder_attention_masks(hf_model.config) if recipe.family == DECODER_EMBEDDER else None

    class AdditiveMaskEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model
            self.head = head

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, ...]:
            keep = attention_mask[:, None, None, :].to(torch.float32)
            kwargs: dict[str, Any] = {"input_ids": input_ids}
            if masks is None:
                kwargs["attention_mask"] = (1.0 - keep) * ADDITIVE_MASK_VALUE
            else:
                # no KV cache: one pass over the whole text (a cache adds update and slice ops to
                # the graph; the sliding layers' slice pins the sequence length to > window - 1)
                kwargs.update(attention_mask=masks(keep), use_cache=False)
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.model(**kwargs).last_hidden_state
            return (hidden, *self.head(hidden, input_ids, attention_mask))

    return AdditiveMaskEncoder().eval()


def decoder_attention_masks(config: Any) -> Callable[["torch.Tensor"], dict[str, "torch.Tensor"]]:
    """keep [B, 1, 1, L] (1 = real key) -> {layer type: additive mask [B, 1, L, L]}, what
    transformers' masking_utils builds for this config, as float arithmetic:

      causal (Qwen3):             key j visible to query i when j <= i
      bidirectional (Gemma3 with use_bidirectional_attention, EmbeddingGemma): every key
      sliding_attention, causal:  i - window < j <= i   (sliding_window_causal_mask_function)
      sliding_attention, bidir.:  |i - j| < window      (gemma3's `_bidirectional_window_overlay`; the
                                  config already halved `sliding_window` for bidirectional models:
                                  window = sliding_window // 2 + 1 of the file's value)
    and always a real (unpadded) key. Masked entries get ADDITIVE_MASK_VALUE once (products of 0/1
    floats, not sums of penalties), so a fully masked query row (left padding under a causal mask)
    stays finite in fp16.
    """
    import torch

    causal = not getattr(config, "use_bidirectional_attention", False)
    window = getattr(config, "sliding_window", None)
    types = sorted(set(config.layer_types))
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ModelportError(f"layer types {sorted(unknown)}: no attention mask for them")
    if "sliding_attention" in types and not window:
        raise ModelportError("sliding_attention layers without a sliding_window in the config")

    def build(keep: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        n = keep.shape[-1]
        pos = torch.arange(n, dtype=torch.int32)
        delta = pos[:, None] - pos[None, :]  # i - j: query i, key j
        out = {}
        for kind in types:
            allowed = keep
            if causal:
                allowed = allowed * (delta >= 0).to(torch.float32)
            if kind == "sliding_attention":
                near = (delta < window) if causal else (delta.abs() < window)
                allowed = allowed * near.to(torch.float32)
            out[kind] = (1.0 - allowed.expand(-1, -1, n, -1)) * ADDITIVE_MASK_VALUE
        return out

    return build
