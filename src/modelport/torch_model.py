"""The PyTorch model every target is compared against (and exported from).

`SentenceEncoder` wraps a Hugging Face encoder with the recipe's pooling and normalization, so the
reference and the exported graphs compute the exact same function: token embeddings plus the
pooled sentence embedding. Eager attention: it is the kernel every exporter traces faithfully.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def load_tokenizer(source: "ModelSource"):
    from transformers import AutoTokenizer

    if not (source.path / "tokenizer.json").is_file():
        raise ModelportError(
            f"no tokenizer.json in {source.path}: on-device clients (transformers.js, WebLLM) need the fast tokenizer file"
        )
    return AutoTokenizer.from_pretrained(source.path)


def make_encoder(hf_model: "torch.nn.Module", recipe: "Recipe") -> "torch.nn.Module":
    import torch
    import torch.nn.functional as F

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
            mask = attention_mask
            if recipe.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            if recipe.normalize:
                pooled = F.normalize(pooled, p=2.0, dim=-1)
            return hidden, pooled

    return SentenceEncoder().eval()
