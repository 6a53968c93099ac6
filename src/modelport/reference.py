"""Golden outputs: the PyTorch fp32 model run on the fixed validation set.

The golden file stores the exact token ids each case was run with, so every validator (Python
runtimes, Node, the browser) feeds identical inputs and compares like with like; the tokenizer is
checked separately. It lives inside the artifact (`reference/`), so validating an artifact needs
no torch: the validator image stays small and the check is reproducible from the artifact alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import validation_set
from .errors import ModelportError
from .fsutil import read_json, write_json

GOLDEN_NPZ = "reference/golden.npz"
GOLDEN_JSON = "reference/golden.json"
OUTPUTS = ("last_hidden_state", "sentence_embedding")  # every embedder; BGE-M3 adds recipe.outputs' extra two
# Query embeddings computed without the query prompt: how far a client that forgets the prompt lands
# (families.encoder reports it, so a prompt check that could not fail is visible).
NO_PROMPT = "no-prompt/sentence_embedding"


@dataclass
class Golden:
    """Inputs and PyTorch outputs per validation case."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def cases(self) -> list[dict[str, Any]]:
        return self.meta["cases"]

    def inputs(self, case: str) -> dict[str, np.ndarray]:
        return {name: self.arrays[f"{case}/{name}"] for name in self.meta["inputs"]}

    def output(self, case: str, name: str) -> np.ndarray:
        return self.arrays[f"{case}/{name}"]

    def save(self, root: Path) -> None:
        (root / GOLDEN_NPZ).parent.mkdir(parents=True, exist_ok=True)
        # np.savez writes zip entries with a fixed timestamp: the file is byte-stable.
        with open(root / GOLDEN_NPZ, "wb") as f:
            np.savez_compressed(f, **self.arrays)
        write_json(root / GOLDEN_JSON, self.meta)

    @classmethod
    def load(cls, root: Path) -> "Golden":
        with np.load(root / GOLDEN_NPZ) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(meta=read_json(root / GOLDEN_JSON), arrays=arrays)


def prompted_texts(tokenizer, recipe) -> tuple[list[str], list[str]]:
    """The validation texts as sentence-transformers encodes them: the query prompt before each query,
    the document prompt before every other text (prompt + text, string concatenation), each then
    fitted within the max length. Returns (texts, the prompt name applied to each)."""
    head = recipe.head
    kinds = ["query" if i in validation_set.QUERY_IDS else "document" for i in range(len(validation_set.TEXTS))]
    prompts = {"query": head.query_prompt, "document": head.document_prompt}
    fitted = [validation_set.fit(prompts[k] + t, tokenizer, recipe.max_length)
              for k, t in zip(kinds, validation_set.TEXTS)]
    return fitted, kinds


def input_feeds(tokenizer, recipe, texts: list[str]) -> dict[str, np.ndarray]:
    """The recipe's graph inputs for `texts`, padded to the longest, truncated at the recipe's max length
    (what the golden runs; the quantization searches tokenize their text sets with it too)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=recipe.max_length, return_tensors="np")
    feeds = {}
    for name in recipe.inputs:
        if name in enc:
            feeds[name] = enc[name].astype(np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)
        else:
            raise ModelportError(f"the tokenizer produces no {name}, which the graph takes")
    return feeds


def compute(source, recipe, progress=None, models=None) -> Golden:
    """Run the fp32 PyTorch embedder (trunk + the whole sentence-transformers head) on every case.
    `models` (torch_model.Models): the conversion's loaded modules, shared with the export."""
    import torch
    import transformers

    from .torch_model import Models, load_tokenizer

    tokenizer = load_tokenizer(source)
    tokenizer.padding_side = recipe.head.padding_side  # what the checkpoint's tokenizer config says
    encoder = (models or Models()).encoder(source, recipe)
    outputs = recipe.outputs
    arrays: dict[str, np.ndarray] = {}
    cases = []
    all_texts, kinds = prompted_texts(tokenizer, recipe)  # within what every client tokenizes alike
    for case in validation_set.cases():
        feeds = input_feeds(tokenizer, recipe, [all_texts[i] for i in case.text_ids])
        with torch.no_grad():
            outs = encoder(*[torch.from_numpy(feeds[n]) for n in recipe.inputs])
        for name, value in feeds.items():
            arrays[f"{case.name}/{name}"] = value
        for name, value in zip(outputs, outs):
            arrays[f"{case.name}/{name}"] = value.numpy().astype(np.float32)
        cases.append({"name": case.name, "text_ids": list(case.text_ids), "batched": case.batched,
                      "lengths": feeds["attention_mask"].sum(1).astype(int).tolist()})
        if progress:
            progress()
    head = recipe.head
    if head.query_prompt:
        bare = [validation_set.fit(validation_set.TEXTS[i], tokenizer, recipe.max_length)
                for i in validation_set.QUERY_IDS]
        rows = []
        for text in bare:  # one at a time: no padding involved
            feeds = input_feeds(tokenizer, recipe, [text])
            with torch.no_grad():
                rows.append(encoder(*[torch.from_numpy(feeds[n]) for n in recipe.inputs])[1].numpy()[0])
        arrays[NO_PROMPT] = np.stack(rows).astype(np.float32)
    meta = {
        "validation_set": validation_set.VERSION,
        "texts": list(all_texts),
        "prompt_names": kinds,
        "prompts": {"query": head.query_prompt, "document": head.document_prompt},
        "corpus_ids": list(validation_set.CORPUS_IDS),
        "query_ids": list(validation_set.QUERY_IDS),
        "inputs": list(recipe.inputs),
        "outputs": list(outputs),
        "max_length": recipe.max_length,
        "pooling": recipe.pooling,
        "normalize": recipe.normalize,
        "dense": [d.to_json() for d in head.dense],
        "truncate_dim": head.truncate_dim,
        "padding_side": head.padding_side,
        "embedding_dim": recipe.embedding_dim,
        "runtime": {"torch": torch.__version__, "transformers": transformers.__version__,
                    "attn_implementation": "eager", "dtype": "float32"},
        "cases": cases,
    }
    return Golden(meta=meta, arrays=arrays)


def sentence_embeddings(golden: Golden) -> np.ndarray:
    """One pooled embedding per text, from the single-text cases (no padding involved)."""
    n = len(golden.meta["texts"])
    out = [None] * n
    for case in golden.cases:
        if not case["batched"]:
            out[case["text_ids"][0]] = golden.output(case["name"], "sentence_embedding")[0]
    return np.stack(out)


def outputs_with_weights(source, recipe, golden: Golden, replace: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch fp32 outputs on the golden inputs with some weights replaced.

    Used to split a quantized format's error from its runtime's error: the replaced weights are
    the format's dequantized weights, so PyTorch computes exactly what the format stores, and the
    runtime (MLX, onnxruntime, ...) should match this to fp32 precision.
    """
    import torch

    from .torch_model import load_hf_model, make_encoder

    model = load_hf_model(source)
    state = model.state_dict()
    missing = sorted(set(replace) - set(state))
    if missing:
        raise KeyError(f"dequantized weights not in the PyTorch model: {missing[:5]}")
    for name, value in replace.items():
        if tuple(state[name].shape) != value.shape:
            raise ValueError(f"{name}: dequantized shape {value.shape} != checkpoint {tuple(state[name].shape)}")
        state[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    model.load_state_dict(state)
    encoder = make_encoder(model, recipe, source.path)
    arrays: dict[str, np.ndarray] = {}
    for case in golden.cases:
        feeds = golden.inputs(case["name"])
        with torch.no_grad():
            outs = encoder(*[torch.from_numpy(feeds[n]) for n in golden.meta["inputs"]])
        for name, value in zip(golden.meta.get("outputs", OUTPUTS), outs):
            arrays[f"{case['name']}/{name}"] = value.numpy().astype(np.float32)
    return arrays
