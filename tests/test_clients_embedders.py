"""Real clients for the embedders whose graph finishes the embedding (issue 15, item 6): Qwen3-Embedding
(last-token pooling, left padding, query prompt), EmbeddingGemma (mean pooling + two Dense layers,
prompts) and BGE-M3 (dense + sparse + ColBERT outputs).

transformers.js' feature-extraction pipeline cannot express these heads, so the client runs what those
models' users run (AutoTokenizer + AutoModel, the graph's own `sentence_embedding` and extra outputs,
clients/embed_core.mjs runEmbedModel). The same run measures what a client that does not use the
graph's embedding would get: the pipeline's mean pooling of last_hidden_state (skipping last-token
pooling / the Dense layers), the pipeline's own `last_token` pooling, and the query without its
prompt. Those must land below the fp16 cosine gate, the strictest one: a client doing that fails.

One shared ONNX artifact per model (fp32 + q8, the same conftest.shared_artifact key the ONNX contract
test uses); Node runs every model, headless Chromium (wasm) EmbeddingGemma.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from modelport.clients import check, probe_lines, problem_lines, quick_cases
from modelport.clients.compare import FP32_VS_ORT
from modelport.clients.harness import bare_queries, needs_model
from modelport.reference import Golden
from modelport.thresholds import THRESHOLDS

from .conftest import require_clients

MODELS = ("tiny-qwen3-embedding", "tiny-embeddinggemma", "tiny-bge-m3")
VARIANTS = "fp32,q8"
GATE = THRESHOLDS["fp16"].cos_min  # 0.9999: the strictest cosine gate
PADDING = {"tiny-qwen3-embedding": "left", "tiny-embeddinggemma": "right", "tiny-bge-m3": "right"}
MODEL_CLASS = {"tiny-qwen3-embedding": "Qwen3Model", "tiny-embeddinggemma": "Gemma3Model",
               "tiny-bge-m3": "XLMRobertaModel"}


@pytest.fixture(scope="module")
def artifacts(shared_artifact) -> dict[str, Path]:
    return {m: shared_artifact(m, "onnx", VARIANTS) for m in MODELS}


@pytest.fixture(scope="module")
def node(artifacts: dict[str, Path]) -> dict[str, dict]:
    """Every model, both variants, every golden case, through transformers.js in Node."""
    require_clients(["node"])
    return {m: check(root, {"node": None})["node"] for m, root in artifacts.items()}


@pytest.fixture(scope="module")
def wasm(artifacts: dict[str, Path]) -> dict:
    """EmbeddingGemma (Dense layers + prompts; the model browser users reported wrong vectors for) in
    headless Chromium on wasm, both variants, every golden case."""
    require_clients(["chromium-wasm"])
    return check(artifacts["tiny-embeddinggemma"], {"chromium-wasm": None})["chromium-wasm"]


@pytest.mark.parametrize("model", MODELS)
def test_node_runs_the_graph_and_meets_the_gates(node: dict, model: str) -> None:
    entry = node[model]
    assert entry["tokenizer"]["status"] == "pass", entry["tokenizer"]["mismatches"]
    assert entry["status"] == "pass", problem_lines({"node": entry})
    assert set(entry["variants"]) == set(VARIANTS.split(","))
    for name, v in entry["variants"].items():
        assert v["verdict"] == "pass", (name, v["failures"])
        assert v["mode"] == "model" and v["model_class"] == MODEL_CLASS[model] and v["cases"] == 50
    fp32 = entry["variants"]["fp32"]
    assert fp32["metrics"]["pooled_max_abs"] <= 1e-5 and fp32["metrics"]["tokens_max_abs"] <= 1e-5
    assert all(x <= FP32_VS_ORT for k, x in fp32["vs_python_ort"].items() if k != "tokens_max_abs")
    assert entry["variants"]["q8"]["metrics"]["cos_min"] >= THRESHOLDS["q8"].cos_min


@pytest.mark.parametrize("model", MODELS)
def test_the_tokenizer_pads_on_the_golden_side(node: dict, model: str) -> None:
    """transformers.js reads padding_side from tokenizer_config.json: Qwen3-Embedding pads left."""
    for v in node[model]["variants"].values():
        assert v["padding_side"] == PADDING[model]
        assert not any("pads" in n for n in v["notes"])


@pytest.mark.parametrize("model", MODELS)
def test_a_client_that_skips_the_head_would_have_failed(node: dict, model: str) -> None:
    """The pipeline's mean pooling of last_hidden_state (what a client gets that does not read the graph's
    sentence_embedding) lands below the fp16 gate at every precision."""
    # every row: 47 texts alone + 17 in 3 padded batches, less rows whose token ids differ (the first test
    # reports those)
    left_out = sum(len(m["cases"]) for m in node[model]["tokenizer"]["mismatches"])
    for name, v in node[model]["variants"].items():
        probe = v["would_have_failed"]["pipeline_mean"]
        assert probe["rows"] == 64 - left_out and probe["batch_rows"] >= 15, probe
        assert probe["below_fp16_gate"] and probe["cos_min"] < GATE, (name, probe)
    assert any("such a client fails" in line for line in probe_lines({"node": node[model]}))


@pytest.mark.parametrize("model", ["tiny-qwen3-embedding", "tiny-embeddinggemma"])
def test_a_client_that_drops_the_query_prompt_would_have_failed(node: dict, model: str) -> None:
    for name, v in node[model]["variants"].items():
        probe = v["would_have_failed"]["bare_queries"]
        assert probe["rows"] == 8 and probe["below_fp16_gate"] and probe["cos_min"] < GATE, (name, probe)
    # the probe itself is right: the fp32 client's prompt-less embedding is the golden's own
    assert node[model]["variants"]["fp32"]["would_have_failed"]["bare_queries"]["vs_golden_no_prompt_max_abs"] <= 1e-5


def test_the_pipelines_last_token_pooling_matches_qwen3(node: dict) -> None:
    """transformers.js 4.3.1 has pooling 'last_token' (the last position): with the left padding the
    tokenizer config asks for, it equals the graph's last-token pooling on single texts and padded batches
    alike (Qwen3 has no Dense layer and this artifact no truncation)."""
    variants = node["tiny-qwen3-embedding"]["variants"]
    fp32 = variants["fp32"]["would_have_failed"]["pipeline_last_token"]
    assert fp32["max_abs"] <= 1e-5 and not fp32["below_fp16_gate"]
    for v in variants.values():
        assert v["would_have_failed"]["pipeline_last_token"]["vs_graph_max_abs"] <= FP32_VS_ORT
    assert "pipeline_last_token" not in node["tiny-embeddinggemma"]["variants"]["fp32"]["would_have_failed"]


def test_bge_m3_sparse_and_colbert_outputs(node: dict) -> None:
    variants = node["tiny-bge-m3"]["variants"]
    m = variants["fp32"]["metrics"]
    assert m["sparse_max_abs"] <= 1e-5 and m["colbert_max_abs"] <= 1e-5
    assert m["terms_min"] == 1.0 and m["maxsim_top5_mean"] == 1.0
    ort = variants["fp32"]["vs_python_ort"]
    assert ort["sparse_weights_max_abs"] <= FP32_VS_ORT and ort["colbert_vectors_max_abs"] <= FP32_VS_ORT
    q8 = variants["q8"]
    assert {"terms_min", "sparse_rel_max", "maxsim_max_abs"} <= set(q8["metrics"])
    assert q8["thresholds"]["sparse_rel_max"] is not None  # the validator's multi-vector gates apply


def test_chromium_wasm_runs_embeddinggemma(wasm: dict) -> None:
    assert wasm["status"] == "pass", problem_lines({"chromium-wasm": wasm})
    assert wasm["environment"]["crossOriginIsolated"] is True and wasm["off_origin_requests"] == []
    assert wasm["tokenizer"]["status"] == "pass" and wasm["tokenizer"]["identical"] == 47
    for name, v in wasm["variants"].items():
        assert v["verdict"] == "pass" and v["cases"] == 50, (name, v["failures"])
        assert v["would_have_failed"]["pipeline_mean"]["cos_min"] < GATE
        assert v["would_have_failed"]["bare_queries"]["cos_min"] < GATE
    assert wasm["variants"]["fp32"]["metrics"]["pooled_max_abs"] <= 1e-5
    assert wasm["variants"]["fp32"]["vs_python_ort"]["pooled_max_abs"] <= FP32_VS_ORT


def test_webgpu_fp32_rope_models_meet_the_fp32_gate(artifacts: dict[str, Path]) -> None:
    """Quirk rope-tables: with cos/sin computed in the graph, WebGPU (SwiftShader) missed the fp32 gate on
    both RoPE embedders (3.3e-5 / 3.6e-5: WGSL's sin/cos are accurate only inside [-pi, pi]); the graphs
    now gather them from tables and have no Sin/Cos. WebGPU runs Qwen3 only, four cases (--quick):
    SwiftShader takes ~90 s per model here."""
    import onnx

    require_clients(["chromium-webgpu"])
    for model in ("tiny-qwen3-embedding", "tiny-embeddinggemma"):
        graph = onnx.load(str(artifacts[model] / "onnx" / "model.onnx"), load_external_data=False).graph
        assert not {n.op_type for n in graph.node} & {"Sin", "Cos"}, model
    root = artifacts["tiny-qwen3-embedding"]
    gpu = check(root, {"chromium-webgpu": ["fp32"]}, quick=("chromium-webgpu",))["chromium-webgpu"]
    assert gpu["status"] == "pass", problem_lines({"chromium-webgpu": gpu})
    assert gpu["variants"]["fp32"]["metrics"]["pooled_max_abs"] <= 1e-5


def test_right_padding_breaks_the_pipelines_last_token_not_the_graph(artifacts: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """A Qwen3-Embedding tokenizer config without padding_side pads right (transformers.js' default):
    the graph's last-token pooling still finds each row's last real token, the pipeline's does not."""
    require_clients(["node"])
    dst = tmp_path / "qwen3"
    shutil.copytree(artifacts["tiny-qwen3-embedding"], dst, copy_function=os.link)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    del cfg["padding_side"]
    (dst / "tokenizer_config.json").unlink()  # hard-linked to the shared artifact: never write in place
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    v = check(dst, {"node": ["fp32"]})["node"]["variants"]["fp32"]
    assert v["verdict"] == "pass" and v["padding_side"] == "right"
    assert any("pads right, the golden left" in n for n in v["notes"])
    probe = v["would_have_failed"]["pipeline_last_token"]
    assert probe["below_fp16_gate"] and probe["batch_cos_min"] < GATE  # the padded rows pool a pad token


def test_request_plan_for_prompted_goldens(artifacts: dict[str, Path]) -> None:
    """No client needed: which goldens take the AutoModel path, the bare queries, the --quick subset."""
    goldens = {m: Golden.load(root) for m, root in artifacts.items()}
    assert all(needs_model(g.meta) for g in goldens.values())
    assert not needs_model({"pooling": "mean", "normalize": True})  # a golden from before issue 15: the pipeline
    gemma = goldens["tiny-embeddinggemma"]
    queries = bare_queries(gemma)
    assert len(queries) == 8 and not queries[0]["text"].startswith("task:")
    assert bare_queries(goldens["tiny-bge-m3"]) == []  # no prompts
    # the texts carry their prompt; --quick still finds the empty, CJK and emoji texts
    assert len(quick_cases(gemma)) == 4 and quick_cases(gemma)[0] == "text32"
