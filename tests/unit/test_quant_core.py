"""The quantization pieces every target shares: text sets, numerics, plans, the search bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelport import validation_set
from modelport.errors import ModelportError
from modelport.quant import numerics, texts
from modelport.quant.plan import LayerQuant, Plan, plan_for
from modelport.quant.search import Candidate, Goal, Quality, SearchResult, choose, pareto, sensitivity


# --- text sets ----------------------------------------------------------------------------------


def test_text_sets_are_disjoint_from_validation_and_each_other():
    cal, dev = set(texts.calibration_texts()), set(texts.dev_texts())
    val = set(validation_set.TEXTS)
    assert len(cal) >= 150 and len(dev) >= 70
    assert not cal & dev, "calibration and dev texts overlap"
    assert not (cal | dev) & val, "a quantization text is also a validation text"
    assert all(isinstance(t, str) and t.strip() for t in cal | dev)


def test_unknown_text_set_is_one_line():
    with pytest.raises(ValueError, match="unknown text set 'calibration-v0'; shipped: .*calibration-v1"):
        texts.load("calibration-v0")


# --- numerics -----------------------------------------------------------------------------------


def _layer(seed: int = 0, rows: int = 48, cols: int = 64):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * 0.05
    # inputs with a few loud, correlated channels: where GPTQ and importance weighting matter
    x = rng.standard_normal((600, cols)) @ (np.eye(cols) + 0.2 * rng.standard_normal((cols, cols)) / 8)
    x[:, :4] *= 6
    return w, x


def _out_err(w, x, q: numerics.GroupQuant) -> float:
    return float(np.linalg.norm(x @ (w - q.dequantize()).T))


@pytest.mark.parametrize("scales", numerics.SCALE_METHODS)
def test_codes_fit_the_bit_width_and_dequantize_within_half_a_step(scales):
    w, _ = _layer()
    q = numerics.quantize(w, bits=4, group=16, scales=scales)
    assert q.codes.dtype == np.uint8 and q.codes.max() <= 15
    assert q.scales.shape == q.zeros.shape == (48, 4)
    assert np.all(q.zeros == np.round(q.zeros))  # integer zero points: what MatMulNBits and MLX can store
    step = np.repeat(np.abs(q.scales), 16, axis=1)
    err = np.abs(w - q.dequantize())
    # rtn_asym puts every weight within half a step; rtn_sym maps the signed peak to -2^(bits-1), so an
    # opposite-sign value as large clips at +2^(bits-1)-1 (one step: onnxruntime's convention); searched
    # scales may clip a few outliers for a lower total error
    inside = (err <= 0.5 * step + 1e-7).mean()
    if scales == "rtn_asym":
        assert inside == 1.0
    elif scales == "rtn_sym":
        assert inside > 0.95 and np.all(err <= step + 1e-7)
    else:
        assert inside > 0.9


def test_searched_scales_and_gptq_each_lower_the_output_error():
    w, x = _layer()
    h = x.T @ x
    rtn = _out_err(w, x, numerics.quantize(w, 4, 16, "rtn_asym"))
    mse = _out_err(w, x, numerics.quantize(w, 4, 16, "mse_asym", np.diag(h)))
    gptq = _out_err(w, x, numerics.gptq(w, h, 4, 16, "mse_asym"))
    assert mse < rtn
    assert gptq < mse and gptq < 0.8 * rtn, (rtn, mse, gptq)


def test_gptq_is_deterministic_and_matches_its_stored_form():
    w, x = _layer(seed=3)
    h = x.T @ x
    a, b = numerics.gptq(w, h, 4, 16), numerics.gptq(w, h, 4, 16)
    assert a.codes.tobytes() == b.codes.tobytes() and a.scales.tobytes() == b.scales.tobytes()
    assert a.scales.dtype == np.float32


def test_eight_bits_is_near_lossless_and_group_must_divide():
    w, x = _layer()
    q8 = numerics.quantize(w, 8, 16, "rtn_asym")
    # the 8-bit step is 15/255 = 1/17 of the 4-bit one: the error shrinks by about that much
    ratio = _out_err(w, x, q8) / _out_err(w, x, numerics.quantize(w, 4, 16, "rtn_asym"))
    assert 0.03 < ratio < 0.08
    with pytest.raises(ValueError, match="not a multiple of the group size 24"):
        numerics.quantize(w, 4, 24)
    with pytest.raises(ValueError, match="needs the layer's input Hessian"):
        numerics.quantize_matrix(w, 4, 16, "mse_asym", use_gptq=True)


def test_stored_bits_counts_codes_scales_and_zeros():
    assert numerics.stored_bits(2, 64, 4, 32) == 2 * 64 * 4 + 4 * (16 + 4)
    assert numerics.stored_bits(2, 64, 4, 64, scale_bits=16, zero_bits=16) == 2 * 64 * 4 + 2 * 32


# --- plans --------------------------------------------------------------------------------------


def _plan(target: str = "onnx") -> Plan:
    return Plan(target, LayerQuant(4, 32, "mse_asym", gptq=True),
                layers={"L5.v": LayerQuant(8, 128, "rtn_sym")},
                embedding=LayerQuant(8, 384, "rtn_sym"), calibration="calibration-v1",
                options={"embedding_format": "int8-row"})


def test_plan_round_trips_and_its_digest_is_stable(tmp_path):
    plan = _plan()
    plan.save(tmp_path / "p.json")
    again = Plan.load(tmp_path / "p.json")
    assert again == plan and again.digest() == plan.digest()
    assert plan.layer("L5.v").bits == 8 and plan.layer("L0.q").bits == 4
    assert plan.needs_calibration()
    assert plan.with_layers({"L0.q": LayerQuant(8, 32)}).layer("L0.q").bits == 8


def test_bad_plans_are_refused_in_one_line(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ModelportError, match="cannot be read"):
        Plan.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"plan_version": "1", "target": "onnx", "default": {"bits": 4,
                                                                                                    "scales": "best"}}))
    with pytest.raises(ModelportError, match="malformed: scale method 'best'"):
        Plan.load(tmp_path / "y.json")
    with pytest.raises(ModelportError, match="not a modelport quantization plan"):
        Plan.from_json({"target": "onnx"})


def test_plan_for_resolves_a_search_folder_or_a_file(tmp_path):
    with pytest.raises(ModelportError, match="q4mix needs --quant-plan PLAN .*quantize-search m --target onnx"):
        plan_for(None, "q4mix", "onnx", "m")
    _plan().save(tmp_path / "plan-q4mix.json")
    assert plan_for(str(tmp_path), "q4mix", "onnx") == _plan()
    assert plan_for(str(tmp_path / "plan-q4mix.json"), "q4mix", "onnx") == _plan()
    with pytest.raises(ModelportError, match="no plan-q4mix-wasm.json there"):
        plan_for(str(tmp_path), "q4mix-wasm", "onnx")
    with pytest.raises(ModelportError, match="is a plan for the onnx target, not mlx"):
        plan_for(str(tmp_path), "q4mix", "mlx")


# --- search bookkeeping -------------------------------------------------------------------------


def test_goal_parses_checks_and_refuses():
    goal = Goal.parse("cos=0.99,min=0.98,top5=0.95")
    assert goal.met(Quality(cos_min=0.981, cos_mean=0.992, top5=0.96))
    assert goal.misses(Quality(cos_min=0.97, cos_mean=0.992, top5=0.96)) == ["cos_min 0.97 < 0.98"]
    assert Goal.parse("kld=1e-3,top1=0.99").misses(Quality(kld_mean=2e-3, same_top1=0.995)) == ["kld_mean 0.002 > 0.001"]
    for bad in ("", "cos", "speed=2", "cos=high"):
        with pytest.raises(ModelportError, match="--goal"):
            Goal.parse(bad)


def _cand(name, size, cos, baseline=False, plan=True, failed=""):
    return Candidate(name, size, 4.0, Quality(cos_min=cos - 0.01, cos_mean=cos, top5=0.96),
                     plan=_plan() if plan else None, baseline=baseline, failed=failed)


def test_pareto_and_choose():
    cands = [_cand("a", 10, 0.95), _cand("b", 12, 0.993), _cand("c", 14, 0.991), _cand("d", 20, 0.998),
             _cand("naive", 9, 0.999, baseline=True), _cand("broken", 5, 1.0, failed="crashed")]
    assert [c.name for c in pareto(cands)] == ["naive"]  # a baseline can sit on the front
    assert [c.name for c in pareto([c for c in cands if not c.baseline])] == ["a", "b", "d"]
    goal = Goal.parse("cos=0.99,min=0.98")
    assert choose(cands, goal).name == "b"  # never a baseline, never a failed one
    assert choose(cands, goal, max_bytes=11) is None


def test_sensitivity_ranking_is_deterministic_with_ties():
    losses = {"L1.q": 0.001, "L0.v": 0.004, "L2.v": 0.004, "L0.q": 0.0}
    ranked = sensitivity(sorted(losses, reverse=True), losses.__getitem__)
    assert [n for n, _ in ranked] == ["L0.v", "L2.v", "L1.q", "L0.q"]


def test_search_result_saves_json_plans_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    cands = [_cand("rtn", 10, 0.96, baseline=True, plan=False), _cand("gptq", 11, 0.993)]
    result = SearchResult("onnx", "m", Goal.parse("cos=0.99"), 100, cands, chosen={"q4mix": cands[1]})
    written = result.save(tmp_path)
    assert {p.name for p in written} == {"search.json", "plan-q4mix.json", "pareto.png"}
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["chosen"] == {"q4mix": "gptq"} and [c["pareto"] for c in data["candidates"]] == [True, True]
    assert Plan.load(tmp_path / "plan-q4mix.json") == _plan()
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert any("<- q4mix" in line for line in result.table())
