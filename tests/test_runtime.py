"""modelport.runtime and `modelport bench` on the session's real MiniLM artifact (~20 s past the fixture).

The runtime must give the vectors the validator judged (the golden sentence embeddings, fp32 within
the family's fp32 gate), and the bench must produce sane rows: every speed positive, fp32's cosine
to PyTorch ~1, int8's visibly lower. Counts are small: the numbers here prove the plumbing, not speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport import runtime
from modelport.cli import main
from modelport.reference import Golden


def test_runtime_reproduces_the_golden_sentence_embeddings(minilm_onnx: Path) -> None:
    enc = runtime.load(minilm_onnx)
    assert isinstance(enc, runtime.Encoder) and enc.variant == "fp32" and enc.note is None
    golden = Golden.load(minilm_onnx)
    texts = golden.meta["texts"]
    singles = [c for c in golden.cases if len(c["text_ids"]) == 1]
    got = enc.encode([texts[c["text_ids"][0]] for c in singles], batch_size=8)
    want = np.concatenate([golden.output(c["name"], "sentence_embedding") for c in singles])
    assert np.abs(got - want).max() < 1e-5  # the fp32 gate (thresholds.py): what the validator judged


def test_bench_writes_sane_numbers(minilm_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", str(minilm_onnx), "--variants", "fp32,q8", "--singles", "5", "--texts", "40",
                 "--no-node", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["runtime"], r["variant"]): r for r in result["rows"]}
    pt = rows[("pytorch eager (sentence-transformers)", "source")]
    fp32 = rows[("onnxruntime (modelport.runtime)", "fp32")]
    q8 = rows[("onnxruntime (modelport.runtime)", "q8")]
    for r in (pt, fp32, q8):
        assert r["single_ms"] > 0 and r["batch_texts_per_s"] > 0
    assert pt["cos_min"] == 1.0
    assert fp32["cos_min"] > 0.99999
    assert 0.9 < q8["cos_min"] < 0.9999  # int8 differs, visibly, in the same table
    assert result["texts"] == {"single": 5, "batch": 40, "batch_size": 32} and result["threads"] == 2
    assert result["tokenize"]["per_single_call_ms"] > 0


def test_bench_times_a_decoder(shared_artifact, tmp_path: Path) -> None:
    """Prefill and decode tokens/s per runtime; the artifact is the contract test's (no extra conversion)."""
    art = shared_artifact("tiny-llama", "onnx", "fp32,fp16,q4")
    out = tmp_path / "lm.json"
    assert main(["bench", str(art), "--variants", "fp32", "--prefill-tokens", "16", "--decode-tokens", "8",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["family"] == "causal-lm" and result["prompt_tokens"] == 16
    pt, fp32 = result["rows"]
    assert (pt["variant"], fp32["runtime"], fp32["variant"]) == ("source", "onnxruntime (modelport.runtime)", "fp32")
    for r in (pt, fp32):
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
    assert fp32["same_tokens"] == "9/9"  # the first token after prefill and 8 decode steps, all PyTorch's


def test_bench_runs_mlx_lm_beside_an_mlx_artifact(shared_artifact, tmp_path: Path) -> None:
    """An MLX decoder artifact is also timed as users run it (mlx_lm.load of each variant folder), beside its
    peer: mlx-lm's own `convert -q` of the same checkpoint (artifacts shared with the ONNX bench above and
    the KLD gate tests)."""
    pytest.importorskip("mlx_lm")
    onnx_art = shared_artifact("tiny-llama", "onnx", "fp32,fp16,q4")
    mlx_art = shared_artifact("tiny-llama", "mlx", None, accept=(0, 1))
    out = tmp_path / "lm.json"
    assert main(["bench", str(onnx_art), "--variants", "fp32", "--also", str(mlx_art), "--prefill-tokens", "16",
                 "--decode-tokens", "8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    ours = {r["variant"]: r for r in rows if r["runtime"] == "mlx (modelport.runtime)"}
    users = {r["variant"]: r for r in rows if r["runtime"].endswith("(this artifact's folder)")}
    peer = rows[-1]
    assert set(users) == set(ours) and "f32" in users  # every passed variant, both ways
    assert peer["runtime"].startswith("mlx-lm ") and peer["kind"] == "peer" and peer["variant"] == "q4 (group 64)"
    for r in [*users.values(), peer]:
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
    assert "mlx_lm.convert took" in peer["note"]
    assert ours["f32"]["same_tokens"] == users["f32"]["same_tokens"] == "9/9"  # f32 keeps PyTorch's tokens


def test_bench_decoder_rows_for_core_ml_and_mlc(shared_artifact, tmp_path: Path) -> None:
    """`--also` a Core ML decoder: agreement only (the MIL interpreter's speed is not Core ML's); an MLC chat
    package: its wasm32 library timed in Node. Artifacts are the contract tests' (no extra conversion)."""
    onnx_art = shared_artifact("tiny-llama", "onnx", "fp32,fp16,q4")
    coreml_art = shared_artifact("tiny-llama", "coreml", "fp32,w8,w4", "--context", "64")
    mlc_art = shared_artifact("tiny-llama", "mlc", None)
    out = tmp_path / "lm.json"
    assert main(["bench", str(onnx_art), "--variants", "fp32", "--also", str(coreml_art), "--also", str(mlc_art),
                 "--prefill-tokens", "16", "--decode-tokens", "8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    coreml = [r for r in rows if r["runtime"] == "coreml interpreter (milinterp)"]
    mlc = {r["variant"]: r for r in rows if r["runtime"] == "mlc (modelport.runtime)"}
    assert [r["variant"] for r in coreml] == ["fp32", "w8", "w4"]
    for r in coreml:
        assert r["prefill_tokens_per_s"] is None and r["decode_tokens_per_s"] is None
        assert r["note"].startswith("correctness only") and r["same_tokens"].endswith("/9")
    assert coreml[0]["same_tokens"] == "9/9"
    assert "f32" in mlc and mlc["f32"]["same_tokens"] == "9/9" and mlc["f32"]["decode_tokens_per_s"] > 0
    assert "wasm32 library in Node" in mlc["f32"]["note"]
