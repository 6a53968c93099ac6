"""Decoder LLMs on the ONNX target, end to end: `modelport convert tiny-<arch> --target onnx` exports a
KV-cache graph, writes the variants, and validates token by token with onnxruntime (lm.evaluate_lm).

One artifact per family, converted once per session. qwen3 gets all four variants (the clients test
uses it); llama, qwen2 and smollm3 get fp32, fp16 and q4, which cover their quirks (untied / qkv
bias / NoPE layers, tied embeddings with a 4-bit lm_head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

from modelport import lm, manifest
from modelport.cli import main
from modelport.fsutil import read_json
from modelport.targets.onnx import decoder as onnx_decoder
from modelport.targets.onnx import ort as onnx_ort

from .conftest import convert

FAMILIES = {
    "llama": ("tiny-llama", "fp32,fp16,q4", "grouped-query-attention"),
    "qwen2": ("tiny-qwen2", "fp32,fp16,q4", "qkv-bias"),
    "qwen3": ("tiny-qwen3", "fp32,fp16,q4,q4f16", "qk-norm"),
    "smollm3": ("tiny-smollm3", "fp32,fp16,q4", "nope-layers"),
}


@pytest.fixture(scope="session")
def lm_artifact(shared_artifact) -> Callable[[str], Path]:
    """family -> its converted artifact (converted on first use, once per session; shared with the
    registry contract test)."""

    def get(family: str) -> Path:
        model, variants, _ = FAMILIES[family]
        return shared_artifact(model, "onnx", variants)

    return get


@pytest.fixture(params=list(FAMILIES))
def artifact(request: pytest.FixtureRequest, lm_artifact: Callable[[str], Path]) -> tuple[str, Path]:
    return request.param, lm_artifact(request.param)


@pytest.fixture()
def qwen3(lm_artifact: Callable[[str], Path]) -> Path:
    """The artifact with all four variants: negative checks and the real clients run on it."""
    return lm_artifact("qwen3")


def test_validation_passes_token_by_token(artifact: tuple[str, Path]) -> None:
    family, out = artifact
    man = manifest.load(out)
    v = man["validation"]
    assert v["status"] == "pass" and v["family"] == "causal-lm", v
    fp32 = v["variants"]["fp32"]["metrics"]
    assert max(fp32["prefill_max_abs"], fp32["step_max_abs"], fp32["kv_vs_full_max_abs"]) <= 1e-5
    assert (fp32["greedy_equal"], fp32["greedy_total"]) == (80, 80)
    fp16 = v["variants"]["fp16"]["metrics"]
    assert fp16["greedy_equal"] == 80 and 0 < fp16["step_max_abs"] <= 0.05 * fp16["logit_scale"]
    q4 = v["variants"]["q4"]
    # gated against PyTorch on the dequantized weights; the distance to fp32 is real quantization error
    assert q4["thresholds"]["reference"] == "dequantized"
    assert q4["metrics"]["step_max_abs"] <= 1e-5 and q4["metrics"]["greedy_equal"] == 80
    vs = q4["extra"]["vs_fp32"]
    assert vs["step_max_abs"] > 0.05 and 0 <= vs["kl_mean"] < 0.05 and 0 < vs["top1_agreement"] <= 1
    assert FAMILIES[family][2] in man["recipe"]["quirks"]


def test_graph_has_the_transformers_js_kv_layout(artifact: tuple[str, Path]) -> None:
    _, out = artifact
    man = manifest.load(out)
    r = man["recipe"]
    model = onnx.load(str(out / "onnx/model.onnx"), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    layers = r["num_layers"]
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert [o.name for o in model.graph.output] == ["logits"] + [
        f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert dims["past_key_values.0.key"] == ["batch_size", r["num_kv_heads"], "past_sequence_length", r["head_dim"]]
    assert dims["present.0.value"] == ["batch_size", r["num_kv_heads"], "total_sequence_length", r["head_dim"]]
    assert dims["logits"] == ["batch_size", "sequence_length", r["vocab_size"]]
    assert man["target"]["export_check"]["export_example_logits_max_abs"] <= 1e-5


def test_layout_carries_tokenizer_chat_template_and_config(artifact: tuple[str, Path]) -> None:
    _, out = artifact
    cfg = read_json(out / "config.json")
    assert cfg["use_cache"] is True and cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]
    tok = read_json(out / "tokenizer_config.json")
    assert "<|im_start|>" in tok["chat_template"] and tok["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert read_json(out / "generation_config.json")["eos_token_id"] == 2
    golden = lm.LMGolden.load(out)
    chat = [p for p in golden.prompts if p["chat"]]
    assert len(chat) == 1 and chat[0]["text"].endswith("<|im_start|>assistant\n")
    assert not chat[0]["add_special_tokens"]


def test_tied_embeddings_policy_is_recorded_and_applied(artifact: tuple[str, Path]) -> None:
    """4-bit variants quantize every MatMul (lm_head included) and the embedding table (4-bit blocks read
    by standard operators), and the dequantized-weights golden replaces both: the gate judges them."""
    family, out = artifact
    man = manifest.load(out)
    tied = man["recipe"]["tie_word_embeddings"]
    assert tied == (family != "llama")
    assert man["target"]["tied_embeddings"].startswith("tied" if tied else "untied")
    q4 = onnx.load(str(out / "onnx/model_q4.onnx"))
    inits = {i.name: i for i in q4.graph.initializer}
    gathers = [n for n in q4.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"]
    tables = [inits[n.input[0]] for n in gathers if n.input[0] in inits]
    # the packed 4-bit rows and their block scales; no float table left
    assert sorted((t.data_type, list(t.dims)) for t in tables) == sorted(
        [(onnx.TensorProto.UINT8, [man["recipe"]["vocab_size"], man["recipe"]["hidden_size"] // 2]),
         (onnx.TensorProto.FLOAT, [man["recipe"]["vocab_size"], man["recipe"]["hidden_size"] // onnx_ort.Q4_BLOCK])])
    assert not [i for i in q4.graph.initializer if man["recipe"]["vocab_size"] in i.dims
                and i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and i.dims[1] > 64]
    nbits = [n for n in q4.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 7 * man["recipe"]["num_layers"] + 1  # q k v o gate up down per layer + lm_head
    assert not [n for n in q4.graph.node if n.op_type == "MatMul" and n.input[1] in inits]  # nothing left float
    fp32 = onnx.load(str(out / "onnx/model.onnx"))
    tables = [i for i in fp32.graph.initializer if len(i.dims) == 2 and man["recipe"]["vocab_size"] in i.dims]
    assert len(tables) == (1 if tied else 2)  # tied: one table in the fp32 file
    info = man["target"]["variants"]["q4"]["dequantized_reference"]
    assert info["weights_replaced"] == len(nbits) + 1 and info["embedding_quantized"]  # + the embedding table


def test_a_broken_kv_cache_is_caught(qwen3: Path) -> None:
    """A runner that drops the past (decode sees only the new token at the right position) must fail
    the cached-decode and KV-vs-full gates, while its prefill still matches."""
    out = qwen3

    class NoCache(onnx_decoder.OrtLMRunner):
        def decode(self, state, token):
            past, past_len = state
            logits, _ = self._run(np.array([[token]], dtype=np.int64), self.empty, 0)
            return logits[-1], (past, past_len + 1)

    golden = lm.LMGolden.load(out)
    m = lm.evaluate_lm(golden, NoCache(out / "onnx/model.onnx"))
    assert m.prefill_max_abs <= 1e-5 and m.step_max_abs > 0.1 and m.kv_vs_full_max_abs > 0.1
    from modelport.thresholds import check_lm

    assert len(check_lm("fp32", m)) >= 2


def test_revalidation_and_a_missing_dequantized_golden(qwen3: Path, tmp_path: Path) -> None:
    out = qwen3
    assert main(["validate", str(out), "--variants", "fp32,q4f16"]) == 0
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "reference/lm_golden_q4.npz").unlink()
    from modelport.validate import validate

    report = validate(copy, ["q4"])
    assert not report.passed and "dequantized-weights golden" in report.results[0].failures[0]


# --- real clients: transformers.js text-generation ---------------------------------------------------


def test_transformers_js_generates_the_python_tokens(qwen3: Path) -> None:
    """Node (onnxruntime-node) for every variant of qwen3, Chromium wasm for fp32: tokenizer ids first,
    then the pipeline's 16 greedy tokens per prompt against Python onnxruntime and the golden."""
    out = qwen3
    from modelport.clients import textgen

    from .conftest import require_clients

    require_clients(["node", "chromium-wasm"])
    results = textgen.check(out, {"node": None, "chromium-wasm": ["fp32"]})
    for name, entry in results.items():
        assert entry["tokenizer"]["status"] == "match", entry["tokenizer"]
        assert entry["status"] == "pass", {v: r["failures"] for v, r in entry["variants"].items()}
        for variant, r in entry["variants"].items():
            m = r["metrics"]
            assert m["greedy_equal_python_ort"] == m["greedy_total"] == 80, (name, variant)
    assert sorted(results["node"]["variants"]) == ["fp16", "fp32", "q4", "q4f16"]
    # the chat prompt went through transformers.js's own chat-template rendering
    chat = [p for p in results["node"]["variants"]["fp32"]["metrics"]["prompts"] if p["name"] == "chat"][0]
    assert chat["equal_golden"] == 16


def test_client_catches_a_tokenizer_mismatch(qwen3: Path, tmp_path: Path) -> None:
    """A tokenizer.json that splits differently must fail on tokenizer parity, before any token check."""
    out = qwen3
    import json
    import shutil

    from modelport.clients import textgen

    from .conftest import require_clients

    require_clients(["node"])
    copy = tmp_path / "tok"
    shutil.copytree(out, copy)
    tok = json.loads((copy / "tokenizer.json").read_text())
    tok["model"]["merges"] = tok["model"]["merges"][: len(tok["model"]["merges"]) // 2]  # fewer merges
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    entry = textgen.check(copy, {"node": ["fp32"]})["node"]
    assert entry["status"] == "fail" and entry["tokenizer"]["status"] == "mismatch"
    assert "not comparable" in entry["variants"]["fp32"]["failures"][0]


def test_external_weights_leave_no_stale_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above 2 GB a graph's weights live in <file>_data beside it (forced here with a 0-byte
    threshold on the tiny Llama). A q4-only artifact holds only the q4 graph and its weights, and
    config.json tells transformers.js to load them: the old path's intermediates (an fp32 export and an
    untied copy) once left 11 GB of stale weights in the 1B scale model's q4 artifact; the streamed
    export writes no intermediate file at all."""
    monkeypatch.setattr(onnx_ort, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "llama"
    assert convert("tiny-llama", "--target", "onnx", "--variants", "q4", "--out", str(out)) == 0
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model_q4.onnx", "model_q4.onnx_data"]
    js = read_json(out / "config.json").get("transformers.js_config", {})
    assert js["use_external_data_format"] == {"model_q4.onnx": 1}
    assert read_json(out / "manifest.json")["validation"]["status"] == "pass"


def test_fp16_alone_is_checked_against_pytorch(tmp_path: Path) -> None:
    """With neither fp32 nor a 4-bit variant requested, the export check runs the fp16 file (it once
    indexed an empty list of 4-bit variants and stopped the conversion)."""
    out = tmp_path / "llama-fp16"
    assert convert("tiny-llama", "--target", "onnx", "--variants", "fp16", "--out", str(out)) == 0
    man = read_json(out / "manifest.json")
    check = man["target"]["export_check"]
    assert check["graph"] == "model_fp16.onnx" and 0 < check["export_example_logits_max_abs"] < 0.05
    assert man["validation"]["status"] == "pass"


# --- the streamed export (issue 18: a 3B model in 24 GB) ------------------------------------------------


def test_streamed_4bit_bytes_are_onnxruntimes_quantizer_bytes(tmp_path: Path) -> None:
    """The streamed writer quantizes each weight itself (stream.quantize_q4_matrix); its bytes must be
    what ort.quantize_q4 (MatMulNBitsQuantizer, the old path) writes for the same MatMul weight, in fp32
    (q4) and fp16 (q4f16), K not a multiple of the block included: the gates and goldens keep their meaning."""
    from onnx import TensorProto, helper, numpy_helper

    from modelport.targets.onnx import stream

    rng = np.random.default_rng(0)
    for dtype, onnx_type, k in ((np.float32, TensorProto.FLOAT, 96), (np.float16, TensorProto.FLOAT16, 80)):
        b = (rng.standard_normal((k, 40)) * 0.05).astype(dtype)
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                                  [helper.make_tensor_value_info("x", onnx_type, [1, k])],
                                  [helper.make_tensor_value_info("y", onnx_type, [1, 40])],
                                  [numpy_helper.from_array(b, "w")])
        src, dst = tmp_path / f"{k}.onnx", tmp_path / f"{k}_q4.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
        onnx_ort.quantize_q4(src, dst, quiet=True)
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer}
        packed, scales = stream.quantize_q4_matrix(b)
        assert np.array_equal(packed, inits["w_Q4"].reshape(packed.shape))
        assert scales.dtype == dtype and np.array_equal(scales, inits["w_scales"].reshape(scales.shape))


def test_the_4bit_embedding_is_used_and_judged(lm_artifact: Callable[[str], Path]) -> None:
    """The 4-bit files read the embedding from 4-bit blocks, the dequantized golden replaces the table
    with what the file holds (tied: the same matrix as the lm_head's), and a golden that left the float
    table in would fail the 1e-5 gate: the gate judges the quantized embedding."""
    from modelport import tiny
    from modelport.targets.onnx import stream

    out = lm_artifact("smollm3")
    path = out / "onnx/model_q4.onnx"
    weights = stream.DequantizedWeights(path)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(weights)
    lm_head = weights.value("lm_head.weight")
    assert np.array_equal(weights.value("model.embed_tokens.weight"), lm_head)
    # the golden's reader agrees with the weight check's MatMulNBits reader
    from modelport.targets.onnx.weights import matmul_nbits_matrices

    by_name = dict(matmul_nbits_matrices(path))
    assert np.array_equal(by_name[weights.entries["lm_head.weight"][0]], lm_head)
    runner = onnx_decoder.OrtLMRunner(path)
    del weights["model.embed_tokens.weight"]  # the float table stays in PyTorch
    golden = lm.compute_golden(tiny.materialize("tiny-smollm3"), state_dict=weights, steps=4)
    m = lm.evaluate_lm(golden, runner)
    assert m.prefill_max_abs > 1e-3, m  # far outside the gate: the embedding is quantized and counted
