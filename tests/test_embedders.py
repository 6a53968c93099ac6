"""The embedding families end to end on ONNX (issue 15): the golden is what sentence-transformers itself
computes (prompts, last-token pooling with left padding, Dense layers, normalization, Matryoshka
truncation), BGE-M3's sparse and ColBERT outputs are what FlagEmbedding's formulas give, and the
multi-vector gates hold on a BGE-M3 built with another seed (gates judge the conversion, not the model
they were set on).

Artifacts are the shared ONNX fp32,q8 ones the client and contract tests use (conftest.shared_artifact).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelport import validation_set
from modelport.reference import Golden
from modelport.validate import validate

from .conftest import convert

MODELS = ("tiny-qwen3-embedding", "tiny-embeddinggemma", "tiny-bge-m3")
VARIANTS = "fp32,q8"  # the key test_clients_embedders.py and test_contract_conversions.py share


def st_embeddings(model_dir: Path, golden: Golden, **st_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """sentence-transformers' own embeddings of the validation queries (prompt "query") and corpus
    (prompt "document"), single texts, as its users call it."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", **st_kwargs)
    prompts = golden.meta["prompts"]
    q_ids, c_ids = golden.meta["query_ids"], golden.meta["corpus_ids"]
    norm = {"normalize_embeddings": True} if golden.meta["normalize"] else {}
    q = st.encode([validation_set.TEXTS[i] for i in q_ids], prompt=prompts["query"], batch_size=1, **norm)
    c = st.encode([validation_set.TEXTS[i] for i in c_ids], prompt=prompts["document"], batch_size=1, **norm)
    return q, c


def golden_rows(golden: Golden, ids: list[int]) -> np.ndarray:
    return np.stack([golden.output(f"text{i:02d}", "sentence_embedding")[0] for i in ids])


@pytest.mark.parametrize("model", MODELS)
def test_golden_is_what_sentence_transformers_computes(model: str, shared_artifact) -> None:
    from modelport import tiny

    root = shared_artifact(model, "onnx", VARIANTS)
    golden = Golden.load(root)
    q, c = st_embeddings(tiny.materialize(model), golden)
    assert np.abs(golden_rows(golden, golden.meta["query_ids"]) - q).max() <= 1e-5
    assert np.abs(golden_rows(golden, golden.meta["corpus_ids"]) - c).max() <= 1e-5
    # batched cases are padded as the tokenizer pads (Qwen3-Embedding: left) and still agree
    batch = golden.output("batch-queries", "sentence_embedding")
    assert np.abs(batch - q).max() <= 1e-5
    mask = golden.inputs("batch-queries")["attention_mask"]
    padded = mask.sum(1) < mask.shape[1]
    side = golden.meta["padding_side"]
    assert padded.any() and (mask[padded, 0 if side == "left" else -1] == 0).all()


def test_bge_m3_sparse_and_colbert_are_flagembedding_outputs(shared_artifact) -> None:
    """FlagEmbedding's BGEM3 formulas, written out independently here from the shipped .pt heads."""
    import torch
    from transformers import AutoModel

    from modelport import tiny

    model_dir = tiny.materialize("tiny-bge-m3")
    golden = Golden.load(shared_artifact("tiny-bge-m3", "onnx", VARIANTS))
    trunk = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    sparse = torch.load(model_dir / "sparse_linear.pt", weights_only=True)
    colbert = torch.load(model_dir / "colbert_linear.pt", weights_only=True)
    unused = {0, 1, 2, 3}  # <s> <pad> </s> <unk>: cls, pad, eos, unk
    for case in golden.cases:
        feeds = golden.inputs(case["name"])
        ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
        with torch.no_grad():
            h = trunk(input_ids=ids, attention_mask=mask).last_hidden_state
        w = torch.relu(h @ sparse["weight"].T + sparse["bias"]).squeeze(-1)
        w = w * torch.tensor([[t not in unused for t in row] for row in ids.tolist()]) * mask
        v = (h[:, 1:] @ colbert["weight"].T + colbert["bias"]) * mask[:, 1:, None]
        v = torch.nn.functional.normalize(v, dim=-1)
        keep = mask.numpy().astype(bool)
        assert np.abs(golden.output(case["name"], "sparse_weights") - w.numpy())[keep].max() <= 1e-5
        assert np.abs(golden.output(case["name"], "colbert_vectors") - v.numpy())[keep[:, 1:]].max(initial=0) <= 1e-5


def test_matryoshka_truncation_is_sentence_transformers_truncate_dim(tmp_path: Path) -> None:
    from modelport import tiny

    out = tmp_path / "qwen3-32"
    assert convert("tiny-qwen3-embedding", "--target", "onnx", "--variants", "fp32", "--truncate-dim", "32",
                   "--out", str(out)) == 0
    golden = Golden.load(out)
    assert golden.meta["truncate_dim"] == 32 and golden.output("text00", "sentence_embedding").shape == (1, 32)
    q, c = st_embeddings(tiny.materialize("tiny-qwen3-embedding"), golden, truncate_dim=32)
    assert np.abs(golden_rows(golden, golden.meta["query_ids"]) - q).max() <= 1e-5
    assert np.abs(golden_rows(golden, golden.meta["corpus_ids"]) - c).max() <= 1e-5


def test_truncate_dim_on_a_text_generator_is_one_line(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "modelport", "convert", "tiny-qwen3", "--target", "onnx",
                        "--truncate-dim", "16", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert p.returncode == 2 and "--truncate-dim applies to embedding models" in p.stderr
    assert "Traceback" not in p.stderr


def test_multi_vector_gates_hold_on_a_bge_m3_of_another_seed(tmp_path: Path) -> None:
    """The reduced-precision gates were set on tiny-bge-m3; a BGE-M3 of another seed (trunk and heads)
    must pass them through every ONNX variant, or the gates judge the model, not the conversion."""
    env = {**os.environ, "MODELPORT_CACHE": str(tmp_path / "cache")}
    code = ("import modelport.tiny as t; t.SEED = 7; print(t.materialize('tiny-bge-m3'))")
    model_dir = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]
    out = tmp_path / "bge-m3-seed7"
    assert convert(model_dir, "--target", "onnx", "--out", str(out)) == 0
    report = validate(out)
    assert report.passed, [f for r in report.results for f in r.failures]
    assert {r.variant for r in report.results} == {"fp32", "fp16", "q8", "uint8", "q4", "q4f16"}


def test_a_sentence_encoder_truncated_on_mlx_ships_what_the_golden_computed(tmp_path: Path) -> None:
    """The MLX sentence-encoder runner reads the shipped head (targets/mlx/head.py): a truncation (or Dense
    layers, or last-token pooling) on a BERT model is computed, not dropped."""
    out = tmp_path / "arctic-mlx-64"
    assert convert("tiny-bert-arctic", "--target", "mlx", "--variants", "f32", "--truncate-dim", "64",
                   "--out", str(out)) == 0
    assert Golden.load(out).output("text00", "sentence_embedding").shape == (1, 64)
