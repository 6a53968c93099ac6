"""The registry's other architectures, on tiny random models built locally with a fixed seed."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from modelport import manifest, tiny
from modelport.fsutil import sha256_file
from modelport.recipes import recipe_for
from modelport.source import resolve

from .conftest import convert


def test_xlm_roberta_fp32_parity_and_all_variants(xlmr_onnx: Path) -> None:
    validation = manifest.load(xlmr_onnx)["validation"]
    assert validation["status"] == "pass", validation
    fp32 = validation["variants"]["fp32"]["metrics"]
    assert fp32["tokens_max_abs"] <= 1e-5 and fp32["pooled_max_abs"] <= 1e-5


def test_xlm_roberta_quirks_applied(xlmr_onnx: Path) -> None:
    man = manifest.load(xlmr_onnx)
    assert man["recipe"]["pooling"] == "cls"
    assert man["recipe"]["max_length"] == 512  # 514 positions - 2 (roberta-position-offset)
    assert "roberta-position-offset" in man["recipe"]["quirks"]
    model = onnx.load(str(xlmr_onnx / "onnx/model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]  # no-token-type-ids


def test_arctic_shaped_bert_uses_cls_pooling(tmp_path: Path) -> None:
    out = tmp_path / "arctic"
    assert convert("tiny-bert-arctic", "-t", "onnx", "--variants", "fp32,q4", "--out", str(out)) == 0
    man = manifest.load(out)
    assert man["recipe"]["pooling"] == "cls" and man["recipe"]["max_length"] == 512
    assert man["validation"]["variants"]["fp32"]["metrics"]["tokens_max_abs"] <= 1e-5
    assert sorted(man["target"]["variants"]) == ["fp32", "q4"]
    assert not (out / "onnx/model_fp16.onnx").exists()


def test_tiny_builds_are_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tiny.materialize("tiny-xlm-roberta")
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "other-cache"))
    second = tiny.materialize("tiny-xlm-roberta")
    assert first != second
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256_file(first / name) == sha256_file(second / name), name


def test_recipe_reads_sentence_transformers_config() -> None:
    src = resolve("all-minilm-l6-v2")
    r = recipe_for(src.path, src.config)
    assert (r.pooling, r.normalize, r.max_length, r.pooling_source) == ("mean", True, 256, "sentence-transformers")
