"""MLX target: weights converted for MLX, run in MLX (CPU backend) and compared with PyTorch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelport import manifest, tiny
from modelport.fsutil import read_json
from modelport.recipes import read_pooling
from modelport.targets.mlx import encoder as mlx_target
from modelport.validate import validate

from .conftest import convert


@pytest.fixture(scope="module")
def minilm_mlx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlx") / "minilm"
    assert convert("all-minilm-l6-v2", "--target", "mlx", "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def xlmr_mlx(shared_artifact) -> Path:
    return shared_artifact("tiny-xlm-roberta", "mlx", "f32,q4")  # shared with the registry contract test


def test_minilm_every_variant_passes(minilm_mlx: Path) -> None:
    validation = manifest.load(minilm_mlx)["validation"]
    assert validation["status"] == "pass", validation
    assert set(validation["variants"]) == {"f32", "f16", "q8", "q4"}
    f32 = validation["variants"]["f32"]["metrics"]
    assert f32["tokens_max_abs"] <= 1e-5 and f32["pooled_max_abs"] <= 1e-5
    assert validation["variants"]["q8"]["precision"] == "w8" and validation["variants"]["q4"]["precision"] == "w4"
    assert any("mlx[cpu]" in n for n in validation["notes"])  # says Metal was not exercised


def test_quantized_variants_report_format_and_runtime_error_apart(minilm_mlx: Path) -> None:
    variants = manifest.load(minilm_mlx)["validation"]["variants"]
    for name in ("q8", "q4"):
        split = variants[name]["extra"]["dequantized_reference"]
        runtime = split["runtime_vs_dequantized_pytorch"]
        assert runtime["tokens_max_abs"] <= 1e-5 and runtime["pooled_max_abs"] <= 1e-5
        # The format's own error is what the cosine gate measured: the split explains it entirely.
        assert split["format_vs_fp32_pytorch"]["cos_min"] == pytest.approx(variants[name]["metrics"]["cos_min"], abs=1e-5)
    # f32 has no format/runtime split, only the weight check every variant gets (validate.py)
    assert set(variants["f32"].get("extra") or {}) <= {"weights"}


def test_variant_folders_are_what_mlx_loaders_read(minilm_mlx: Path) -> None:
    import mlx.core as mx

    for name, bits in (("f32", None), ("f16", None), ("q8", 8), ("q4", 4)):
        folder = minilm_mlx / name
        cfg = read_json(folder / "config.json")
        assert cfg["model_type"] == "bert"
        assert (cfg.get("quantization") or {}).get("bits") == bits
        assert read_pooling(folder) == ("mean", True)  # pooling config carried over
        assert read_json(folder / "tokenizer_config.json")["model_max_length"] == 256
        weights = mx.load(str(folder / "model.safetensors"))
        assert "embeddings.word_embeddings.weight" in weights and not any(k.startswith("pooler") for k in weights)
        if bits:
            assert "encoder.layer.0.attention.self.query.scales" in weights
            assert "embeddings.word_embeddings.scales" in weights
            assert "embeddings.position_embeddings.scales" not in weights
    sizes = {n: (minilm_mlx / n / "model.safetensors").stat().st_size for n in ("f32", "f16", "q8", "q4")}
    assert sizes["f32"] > sizes["f16"] > sizes["q8"] > sizes["q4"]


def test_xlm_roberta_position_offset_in_mlx(xlmr_mlx: Path) -> None:
    validation = manifest.load(xlmr_mlx)["validation"]
    assert validation["status"] == "pass", validation
    assert validation["variants"]["f32"]["metrics"]["tokens_max_abs"] <= 1e-5


def perturbed_copy(art: Path, tmp_path: Path, variant: str, tensor: str, factor: float) -> Path:
    """A copy of the artifact with one tensor of one variant scaled (the manifest is left as it was)."""
    import mlx.core as mx

    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    path = copy / variant / "model.safetensors"
    weights = dict(mx.load(str(path)))
    weights[tensor] = weights[tensor] * factor
    mx.save_safetensors(str(path), weights)
    return copy


def test_a_changed_weight_fails_validation(xlmr_mlx: Path, tmp_path: Path) -> None:
    """0.1 % on one LayerNorm weight is far below any cosine gate's notice but not fp32's."""
    art = perturbed_copy(xlmr_mlx, tmp_path, "f32", "encoder.layer.1.output.LayerNorm.weight", 1.001)
    result = validate(art, ["f32"]).results[0]
    assert not result.passed and "max abs" in result.failures[0]


def test_a_runtime_error_is_told_apart_from_quantization_error(xlmr_mlx: Path, tmp_path: Path) -> None:
    """Scales changed after the dequantized reference was made: the runtime gate names the runtime."""
    art = perturbed_copy(xlmr_mlx, tmp_path, "q4", "encoder.layer.0.intermediate.dense.scales", 1.01)
    result = validate(art, ["q4"]).results[0]
    assert any("runtime error, not quantization error" in f for f in result.failures), result.failures


def test_dequantized_weights_match_what_mlx_computes() -> None:
    """The split relies on dequantize(quantize(W)) being exactly what QuantizedLinear multiplies by."""
    import mlx.core as mx
    import mlx.nn as nn

    mx.random.seed(0)
    layer = nn.Linear(128, 16)
    model = nn.Sequential(layer)
    nn.quantize(model, group_size=64, bits=4)
    x = mx.random.normal((3, 128))
    w = mlx_target.dequantized_weights(model)["layers.0.weight"]
    want = np.array(x) @ w.T + np.array(model.layers[0].bias)
    assert np.abs(np.array(model(x)) - want).max() < 1e-5


def test_variants_are_mlx_names(capsys, tmp_path: Path) -> None:
    assert convert("tiny-xlm-roberta", "-t", "mlx", "--variants", "fp32", "--out", str(tmp_path / "x")) == 2
    assert "f32, f16, q8, q4" in capsys.readouterr().err


def test_model_without_pooling_config_stops_then_converts_with_ignore_lint(capsys, tmp_path: Path) -> None:
    src = tmp_path / "nopool"
    shutil.copytree(tiny.materialize("tiny-xlm-roberta"), src)
    for name in ("modules.json", "sentence_bert_config.json"):
        (src / name).unlink()
    shutil.rmtree(src / "1_Pooling")
    out = tmp_path / "out"
    assert convert(str(src), "-t", "mlx", "--variants", "f32", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "pooling-config-missing" in err and "--ignore-lint" in err and not out.exists()
    assert convert(str(src), "-t", "mlx", "--variants", "f32", "--out", str(out), "--ignore-lint") == 0
    man = manifest.load(out)
    assert [f["rule"] for f in man["lint"]] == ["pooling-config-missing"]
    # The guess the conversion used is written down for the client, not left to it.
    assert read_pooling(out / "f32") == ("cls", True)
