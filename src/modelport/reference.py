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
from .fsutil import read_json, write_json

GOLDEN_NPZ = "reference/golden.npz"
GOLDEN_JSON = "reference/golden.json"
OUTPUTS = ("last_hidden_state", "sentence_embedding")


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


def compute(source, recipe, progress=None) -> Golden:
    """Run the fp32 PyTorch encoder on every validation case."""
    import torch
    import transformers

    from .torch_model import load_hf_model, load_tokenizer, make_encoder

    tokenizer = load_tokenizer(source)
    encoder = make_encoder(load_hf_model(source), recipe)
    arrays: dict[str, np.ndarray] = {}
    cases = []
    all_texts = validation_set.texts(tokenizer, recipe.max_length)  # within what every client tokenizes alike
    for case in validation_set.cases():
        texts = [all_texts[i] for i in case.text_ids]
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=recipe.max_length, return_tensors="np"
        )
        feeds = {}
        for name in recipe.inputs:
            if name in enc:
                feeds[name] = enc[name].astype(np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)
            else:
                raise KeyError(f"tokenizer did not produce {name}")
        with torch.no_grad():
            outs = encoder(*[torch.from_numpy(feeds[n]) for n in recipe.inputs])
        for name, value in feeds.items():
            arrays[f"{case.name}/{name}"] = value
        for name, value in zip(OUTPUTS, outs):
            arrays[f"{case.name}/{name}"] = value.numpy().astype(np.float32)
        cases.append({"name": case.name, "text_ids": list(case.text_ids), "batched": case.batched,
                      "lengths": enc["attention_mask"].sum(1).astype(int).tolist()})
        if progress:
            progress()
    meta = {
        "validation_set": validation_set.VERSION,
        "texts": list(all_texts),
        "corpus_ids": list(validation_set.CORPUS_IDS),
        "query_ids": list(validation_set.QUERY_IDS),
        "inputs": list(recipe.inputs),
        "outputs": list(OUTPUTS),
        "max_length": recipe.max_length,
        "pooling": recipe.pooling,
        "normalize": recipe.normalize,
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
    encoder = make_encoder(model, recipe)
    arrays: dict[str, np.ndarray] = {}
    for case in golden.cases:
        feeds = golden.inputs(case["name"])
        with torch.no_grad():
            outs = encoder(*[torch.from_numpy(feeds[n]) for n in golden.meta["inputs"]])
        for name, value in zip(OUTPUTS, outs):
            arrays[f"{case['name']}/{name}"] = value.numpy().astype(np.float32)
    return arrays
