"""MLX q4mix: the searched variant's writer, plan round trip and validation, on the tiny XLM-R model.

The MiniLM search itself is a benchmark (benchmarks/quant_mlx.py), not a test: minutes of CPU.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelport import manifest
from modelport.cli import main
from modelport.fsutil import read_json
from modelport.quant.plan import LayerQuant, Plan
from modelport.targets.mlx import quantize as mq
from modelport.targets.mlx.encoder import MLXEncoder, _build_model
from modelport.targets.mlx.weights import dequantize as read_mlx_weight
from modelport.validate import validate

MODEL = "tiny-xlm-roberta"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qs") / "search"
    assert main(["quantize-search", MODEL, "--target", "mlx", "--quick", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def mixed_plan(search: Path) -> Path:
    """The search's plan with its most sensitive layer at 8 bits: the per-layer config path is exercised
    whatever the quick search chose on this model."""
    plan = Plan.load(search / "plan-q4mix.json")
    ranked = json.loads((search / "search.json").read_text())["sensitivity"]
    top = next(s["layer"] for s in ranked if s["layer"] != mq.EMBEDDING)
    path = search.parent / "plan-mixed.json"
    plan.with_layers({top: LayerQuant(8, 64, "rtn_asym")}).save(path)
    return path


@pytest.fixture(scope="module")
def q4mix(mixed_plan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q4mix") / "art"
    assert main(["convert", MODEL, "--target", "mlx", "--variants", "q4mix", "--quant-plan", str(mixed_plan),
                 "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_packed_writer_matches_mx_quantize_bit_for_bit(bits: int) -> None:
    """Given mx.quantize's own scales and biases, our codes and packing give its uint32 words exactly."""
    import mlx.core as mx

    rng = np.random.default_rng(bits)
    for group in (32, 64, 128):
        w = (rng.standard_normal((8, 256)) * 0.05).astype(np.float32)
        q, s, b = mx.quantize(mx.array(w), group_size=group, bits=bits)
        scales, biases = np.repeat(np.array(s), group, 1), np.repeat(np.array(b), group, 1)
        codes = np.clip(np.round((w - biases) / scales), 0, 2 ** bits - 1)
        packed = mq.pack(codes, bits)
        assert packed.dtype == np.uint32 and packed.tobytes() == np.array(q).tobytes()
        stored = mq.Stored(packed, np.array(s), np.array(b), bits, group)
        want = np.array(mx.dequantize(q, s, b, group_size=group, bits=bits))
        assert np.abs(stored.dequantize(embedding=False) - want).max() <= 1e-6
        # the validator's numpy reader (weight check) reads every width too, 3/5/6-bit words included
        assert np.abs(read_mlx_weight(np.array(q), np.array(s), np.array(b), group, bits) - want).max() <= 1e-6


def test_numerics_codes_become_mlx_scale_and_bias() -> None:
    """(code - zero) * scale stored as scale * code + bias: mx.dequantize of what we store is numerics' matrix."""
    import mlx.core as mx

    from modelport.quant.numerics import quantize_matrix

    w = (np.random.default_rng(0).standard_normal((16, 128)) * 0.05).astype(np.float32)
    gq = quantize_matrix(w, 4, 32, "mse_asym")
    st = mq.to_stored(gq, "float32")
    got = np.array(mx.dequantize(mx.array(st.weight), mx.array(st.scales), mx.array(st.biases), group_size=32, bits=4))
    assert np.abs(got - gq.dequantize()).max() <= 1e-6


def test_sensitivity_ordering_is_deterministic(search: Path) -> None:
    """Recomputed from scratch in this process, the ranking (layer names and scores) equals the one the
    search wrote in its own run."""
    from modelport.quant.search import Goal
    from modelport.quant.texts import load
    from modelport.recipes import recipe_for
    from modelport.source import resolve

    source = resolve(MODEL)
    recipe = recipe_for(source.path, source.config)
    config = read_json(source.path / "config.json")
    shapes = mq.model_layers(config, _build_model)
    quant = mq.Quantizer(mq.mlx_weights(source, config),
                         mq.calibration_hessians(source, recipe, config, load("calibration-v1")))
    dev = mq.DevSet(source, recipe, config, load("dev-v1"))
    specs = {n: LayerQuant(4, 64, "mse_asym", gptq=True) for n in shapes if n != mq.EMBEDDING}
    specs[mq.EMBEDDING] = LayerQuant(4, 64, "rtn_asym")
    goal = Goal.parse("cos=0.99,min=0.98,top5=0.95")
    first = mq.layer_sensitivity(mq.layer_losses(dev, quant, specs, "float16"), goal)
    scores = [v for _, v in first]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    written = json.loads((search / "search.json").read_text())["sensitivity"]
    assert [(s["layer"], s["loss"]) for s in written] == first


def test_promotion_path_buys_the_most_loss_per_bit() -> None:
    """A small layer with a large loss is widened before a large layer with the same loss; each step widens
    one layer to the next width; the path ends with everything at 8 bits."""
    path = mq.promotion_path({"big": 1.0, "small": 1.0, "calm": 0.01}, {"big": 4000, "small": 1000, "calm": 1000})
    assert path[0] == {"big": 4, "small": 5, "calm": 4}
    for before, after in zip(path, path[1:]):
        assert sum(a != b for a, b in zip(before.values(), after.values())) == 1
    assert path[-1] == {"big": 8, "small": 8, "calm": 8}


def test_q4mix_validates_with_its_plan_in_the_manifest(q4mix: Path, mixed_plan: Path) -> None:
    man = manifest.load(q4mix)
    v = man["validation"]["variants"]["q4mix"]
    assert man["validation"]["status"] == "pass" and v["precision"] == "q4mix", v
    split = v["extra"]["dequantized_reference"]["runtime_vs_dequantized_pytorch"]
    assert max(split["tokens_max_abs"], split["pooled_max_abs"]) <= 1e-5
    assert v["extra"]["weights"]["failed"] == 0
    plan = Plan.load(mixed_plan)
    info = man["target"]["variants"]["q4mix"]
    assert info["plan"] == plan.to_json() and info["plan_sha256"] == plan.digest()
    assert info["bits_per_weight"] > 4 and "q4mix" not in MLXEncoder.defaults  # written only from a plan


def test_q4mix_folder_loads_per_layer_bits_as_mlx_lm_reads_them(q4mix: Path, mixed_plan: Path) -> None:
    """config.json carries mlx-lm's per-layer form; mlx-lm's own inference from the stored shapes and our
    loader both agree with it, layer by layer."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import infer_quant_config

    from modelport.targets.mlx.encoder import load_model

    folder = q4mix / "q4mix"
    cfg = read_json(folder / "config.json")
    q = cfg["quantization"]
    (eight, spec), = [(k, v) for k, v in q.items() if isinstance(v, dict)]
    assert spec["bits"] == 8 and eight in Plan.load(mixed_plan).layers
    weights = mx.load(str(folder / "model.safetensors"))
    fresh = dict(_build_model(cfg).named_modules())
    loaded = dict(load_model(folder).named_modules())
    quantized = [p for p, m in loaded.items() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    assert mq.EMBEDDING in quantized and len(quantized) == len(mq.model_layers(cfg, _build_model))
    for path in quantized:
        want = q.get(path, q) if isinstance(q.get(path), dict) else q
        inferred = infer_quant_config(path, fresh[path], weights)
        assert (inferred["bits"], inferred["group_size"]) == (want["bits"], want["group_size"]), path
        assert (loaded[path].bits, loaded[path].group_size) == (want["bits"], want["group_size"]), path


def test_q4mix_rebuilt_from_its_plan_is_byte_identical(q4mix: Path, mixed_plan: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["convert", MODEL, "--target", "mlx", "--variants", "q4mix", "--quant-plan", str(mixed_plan),
                 "--out", str(again), "--skip-validation"]) == 0
    for rel in ("q4mix/model.safetensors", "q4mix/config.json", "reference/dequant_q4mix.npz"):
        assert sha(again / rel) == sha(q4mix / rel), rel


def test_a_perturbed_stored_weight_fails_validation(q4mix: Path, tmp_path: Path) -> None:
    """One layer's packed codes changed after the reference was made: caught (runtime gate, weight check)."""
    import mlx.core as mx

    copy = tmp_path / "art"
    shutil.copytree(q4mix, copy)
    path = copy / "q4mix" / "model.safetensors"
    weights = dict(mx.load(str(path)))
    name = "encoder.layer.0.intermediate.dense.weight"
    weights[name] = mx.array(np.array(weights[name]) ^ np.uint32(0x11111111))  # flip one bit in every code
    mx.save_safetensors(str(path), weights)
    result = validate(copy, ["q4mix"]).results[0]
    assert not result.passed
    assert any("runtime error, not quantization error" in f for f in result.failures), result.failures


def test_q4mix_needs_a_plan_for_mlx(capsys, tmp_path: Path, search: Path) -> None:
    def run(*extra: str) -> tuple[int, str]:
        rc = main(["convert", MODEL, "--target", "mlx", "--out", str(tmp_path / "x"), *extra])
        return rc, capsys.readouterr().err

    rc, err = run("--variants", "q4mix")
    assert rc == 2 and "variant q4mix needs --quant-plan PLAN" in err and "Traceback" not in err
    onnx = tmp_path / "onnx-plan.json"
    Plan("onnx", LayerQuant(4, 32, "rtn_asym")).save(onnx)
    rc, err = run("--variants", "q4mix", "--quant-plan", str(onnx))
    assert rc == 2 and "is a plan for the onnx target, not mlx" in err and "Traceback" not in err
    rc, err = run("--variants", "f32", "--quant-plan", str(search))
    assert rc == 2 and "--quant-plan writes searched variants (q4mix): name them in --variants" in err
    assert not (tmp_path / "x").exists()
