"""The PyTorch model every target is compared against (and exported from).

`SentenceEncoder` wraps a Hugging Face encoder with the recipe's pooling and normalization, so the
reference and the exported graphs compute the exact same function: token embeddings plus the
pooled sentence embedding. Eager attention: it is the kernel every exporter traces faithfully.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def make_encoder(hf_model: "torch.nn.Module", recipe: "Recipe") -> "torch.nn.Module":
    import torch

    class SentenceEncoder(torch.nn.Module):
        """(input_ids, attention_mask[, token_type_ids]) -> (last_hidden_state, sentence_embedding)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            # Explicit parameters (not *args): torch.export matches dynamic shapes to the signature.
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.model(**kwargs).last_hidden_state
            return hidden, pool(hidden, attention_mask, recipe)

    return SentenceEncoder().eval()


def pool(hidden: "torch.Tensor", attention_mask: "torch.Tensor", recipe: "Recipe") -> "torch.Tensor":
    """The recipe's pooling (CLS or masked mean) and optional L2 normalization: one definition for
    every wrapper, so all targets export the function the reference computes."""
    import torch.nn.functional as F

    if recipe.pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if recipe.normalize:
        pooled = F.normalize(pooled, p=2.0, dim=-1)
    return pooled


# Additive mask value for padded keys: exp(-1e4) underflows to exactly 0 in float32 and float16,
# so padding gets exactly zero attention, and unlike finfo(float32).min it stays finite in fp16.
ADDITIVE_MASK_VALUE = -1.0e4


def make_additive_mask_encoder(hf_model: "torch.nn.Module", recipe: "Recipe") -> "torch.nn.Module":
    """The same function as `make_encoder`, with the 4-D additive attention mask built here.

    transformers 5 builds the mask with ops some converters cannot translate (coremltools 9:
    `new_ones`, `diff`); a ready 4-D mask is passed through untouched, so the traced graph holds
    only a cast, a subtraction and a multiplication. The pooling still reads the 2-D mask.
    """
    import torch

    class AdditiveMaskEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            keep = attention_mask[:, None, None, :].to(torch.float32)
            kwargs = {"input_ids": input_ids, "attention_mask": (1.0 - keep) * ADDITIVE_MASK_VALUE}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.model(**kwargs).last_hidden_state
            return hidden, pool(hidden, attention_mask, recipe)

    return AdditiveMaskEncoder().eval()
