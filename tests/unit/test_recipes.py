"""Recipe resolution from sentence-transformers configs, without running any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport.errors import ModelportError
from modelport.metrics import topk_agreement
from modelport.recipes import ARCHITECTURES, recipe_for


def make_dir(tmp_path: Path, pooling: dict | None, normalize: bool = True, max_seq: int | None = None) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    if pooling is not None:
        modules = [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (d / "modules.json").write_text(json.dumps(modules))
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling/config.json").write_text(json.dumps(pooling))
    if max_seq:
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq}))
    return d


BERT = {"model_type": "bert", "hidden_size": 8, "max_position_embeddings": 512}


def test_cls_pooling_without_normalize(tmp_path: Path) -> None:
    d = make_dir(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, normalize=False)
    r = recipe_for(d, BERT)
    assert (r.pooling, r.normalize) == ("cls", False)


def test_new_style_pooling_mode_string(tmp_path: Path) -> None:
    d = make_dir(tmp_path, {"pooling_mode": "mean"})
    assert recipe_for(d, BERT).pooling == "mean"


def test_max_pooling_is_rejected(tmp_path: Path) -> None:
    d = make_dir(tmp_path, {"pooling_mode_max_tokens": True})
    with pytest.raises(ModelportError, match="unsupported pooling"):
        recipe_for(d, BERT)


def test_no_sentence_transformers_config_falls_back_and_says_so(tmp_path: Path) -> None:
    r = recipe_for(make_dir(tmp_path, None), {**BERT})
    assert r.pooling_source == "architecture-default" and r.pooling == "mean"
    assert any("no sentence-transformers pooling config" in n for n in r.notes)


def test_max_length_is_the_smallest_declared_limit(tmp_path: Path) -> None:
    d = make_dir(tmp_path, {"pooling_mode_mean_tokens": True}, max_seq=128)
    assert recipe_for(d, BERT).max_length == 128
    xlmr = {"model_type": "xlm-roberta", "hidden_size": 8, "max_position_embeddings": 8194}
    d2 = tmp_path / "x"
    d2.mkdir()
    assert recipe_for(d2, xlmr).max_length == 8192


def test_registry_entries_are_complete() -> None:
    for a in ARCHITECTURES.values():
        assert {"input_ids", "attention_mask"} <= set(a.inputs)
        if a.is_decoder:  # causal LMs: no pooling; the class the reference and exporters load
            assert a.default_pooling == "none" and a.causal_lm_class and "position_ids" in a.inputs
        else:
            assert a.default_pooling in ("mean", "cls")
        assert all(q.name and q.why for q in a.quirks)


def test_topk_agreement_detects_reordering_but_forgives_ties() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 16))
    queries, corpus = [10, 11], list(range(10))
    assert topk_agreement(emb, emb, queries, corpus) == (1.0, 1.0)
    scrambled = emb.copy()
    scrambled[corpus] = emb[corpus][::-1]
    assert topk_agreement(emb, scrambled, queries, corpus)[0] < 1.0
    collinear = np.ones((12, 16)) + rng.normal(scale=1e-6, size=(12, 16))
    noisy = collinear + rng.normal(scale=1e-6, size=(12, 16))
    assert topk_agreement(collinear, noisy, queries, corpus) == (1.0, 1.0)
