"""MLC's q4f*_1 group quantization (targets/mlc/quantize.py): the stored layout WebLLM reads."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.targets.mlc import quantize as q4


def test_bit_layout_is_mlc_llms() -> None:
    """Code j of a uint32 word sits in bits 4j..4j+3 and means (code - 7) * scale (mlc-llm's kernels)."""
    codes = np.array([list(range(16)) + list(range(15, -1, -1))], dtype=np.int64)  # one group of 32
    scale = 0.25
    w = ((codes - 7) * scale).astype(np.float32)  # the peak (+8 levels) is positive: scale stays positive
    packed, scales = q4.quantize(w, "float32")
    assert packed.dtype == np.uint32 and packed.shape == (1, 4) and scales.shape == (1, 1)
    assert scales[0, 0] == np.float32(scale)
    assert int(packed[0, 0]) == sum(int(codes[0, j]) << (4 * j) for j in range(8))
    assert np.array_equal(q4.unpack(packed), codes.astype(np.uint32))
    assert np.array_equal(q4.dequantize(packed, scales), w)
    # a negative peak gives a negative scale: the same kernel formula decodes it
    packed, scales = q4.quantize(-w, "float32")
    assert scales[0, 0] == np.float32(-scale) and np.array_equal(q4.dequantize(packed, scales), -w)


def test_codes_are_the_shared_rtn_sym_codes_mirrored() -> None:
    """Same dequantized values as quant.numerics' rtn_sym (what the ONNX q4 variant stores)."""
    from modelport.quant import numerics

    w = np.random.default_rng(5).standard_normal((12, 128)).astype(np.float32)
    packed, scales = q4.quantize(w, "float32")
    assert np.array_equal(q4.dequantize(packed, scales), numerics.quantize(w, 4, 32, "rtn_sym").dequantize())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_error_is_half_a_level(dtype: str) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 96)).astype(np.float32) * rng.uniform(0.01, 3, (16, 1)).astype(np.float32)
    packed, scales = q4.quantize(w, dtype)
    assert scales.dtype == np.dtype(dtype) and scales.shape == (16, 3) and packed.shape == (16, 12)
    deq = q4.dequantize(packed, scales).astype(np.float64).reshape(16, 3, 32)
    err = np.abs(deq - w.astype(np.float64).reshape(16, 3, 32))
    level = np.abs(scales.astype(np.float64))[..., None]
    # the peak sits on code 0 or 15 (8 levels out); on the other side the grid ends at 7 levels, so a
    # value beyond 7.5 levels there is clipped (error < 1 level); everything else is within half a
    # level, plus the rounding of the scale and of (code - 7) * scale in the model dtype (fp16: <= 8
    # levels * eps / 2 relative, 0.4 %)
    slack = 1 + 16 * np.finfo(dtype).eps
    level = np.broadcast_to(level, err.shape)
    clipped = np.abs(w.reshape(16, 3, 32)) > 7.5 * level
    assert np.all(err[~clipped] <= level[~clipped] / 2 * slack + 1e-7)
    assert np.all(err[clipped] <= level[clipped] * slack)
    peak = np.abs(w.reshape(16, 3, 32)).max(-1)
    assert np.allclose(8 * level[..., 0], peak, rtol=2 * np.finfo(dtype).eps)  # the peak is a level


def test_zero_group_is_zero_not_nan() -> None:
    w = np.zeros((2, 64), np.float32)
    w[1, 32:] = 1.0
    packed, scales = q4.quantize(w, "float16")
    deq = q4.dequantize(packed, scales)
    assert np.all(np.isfinite(deq)) and np.array_equal(deq, w.astype(np.float16))
    assert np.all(q4.unpack(packed)[0, :32] == 7)


def test_ragged_groups_are_refused() -> None:
    assert not q4.quantizable((8, 48)) and not q4.quantizable((64,)) and q4.quantizable((8, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        q4.quantize(np.ones((4, 40), np.float32), "float32")


def test_quantize_modules_swaps_and_returns_dequantized_weights() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 64), torch.nn.Linear(64, 32), torch.nn.Linear(32, 5),
                                torch.nn.Linear(20, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deq = q4.quantize_modules(model, "float32")
    assert sorted(deq) == ["0.weight", "1.weight", "2.weight"]  # in-dim 20 is not a multiple of 32: kept
    assert isinstance(model[3], torch.nn.Linear) and not isinstance(model[1], torch.nn.Linear)
    state = model.state_dict()
    assert state["1.q_weight"].dtype == torch.uint32 and tuple(state["1.q_weight"].shape) == (32, 8)
    assert tuple(state["1.q_scale"].shape) == (32, 2) and torch.equal(state["1.bias"], before["1.bias"])
    assert "0.shifts" not in state  # a graph constant, not a package parameter
    for name, value in deq.items():
        ref = before[name].numpy()
        assert value.shape == ref.shape and value.dtype == np.float32
        assert np.abs(value - ref).max() < np.abs(ref).max() / 7  # within a level, not a different tensor


def _golden_and_reference(tmp_path, rng):
    """A two-case golden and a dequantized-weights reference 0.05 away from it (the format's error)."""
    from modelport.dequantized import reference_path
    from modelport.reference import Golden

    meta = {"inputs": ["input_ids", "attention_mask"], "cases": [{"name": "a"}, {"name": "b"}]}
    arrays, deq = {}, {}
    for name in ("a", "b"):
        arrays[f"{name}/input_ids"] = np.ones((1, 5), np.int64)
        arrays[f"{name}/attention_mask"] = np.array([[1, 1, 1, 1, 0]])
        hidden, pooled = rng.standard_normal((1, 5, 8)), rng.standard_normal((1, 8))
        arrays[f"{name}/last_hidden_state"], arrays[f"{name}/sentence_embedding"] = hidden, pooled
        deq[f"{name}/last_hidden_state"], deq[f"{name}/sentence_embedding"] = hidden + 0.05, pooled + 0.05
    (tmp_path / "reference").mkdir()
    np.savez(tmp_path / reference_path("q4f32_1"), **deq)
    return Golden(meta=meta, arrays=arrays), deq


@pytest.mark.parametrize("compute", ["float32", "float16"])
def test_runtime_check_judges_the_runtime_not_the_format(tmp_path, compute: str) -> None:
    """A runtime reproducing PyTorch on the dequantized weights passes although it is 0.05 from fp32;
    one that unpacks differently (here: a 0.02 offset, a sign flip) fails, whatever its cosine vs fp32."""
    from modelport.dequantized import runtime_check

    golden, deq = _golden_and_reference(tmp_path, np.random.default_rng(0))

    def runner(offset: float, sign: float = 1.0):
        def run(feeds):
            case = "a" if feeds["input_ids"] is golden.arrays["a/input_ids"] else "b"
            return (deq[f"{case}/last_hidden_state"] + offset,
                    sign * deq[f"{case}/sentence_embedding"] + offset)
        return run

    good = runtime_check(tmp_path, "q4f32_1", runner(1e-6), golden, "test runtime", compute)
    assert good["failures"] == []
    assert good["dequantized_reference"]["format_vs_fp32_pytorch"]["tokens_max_abs"] == pytest.approx(0.05)
    off = runtime_check(tmp_path, "q4f32_1", runner(0.02), golden, "test runtime", compute)
    flipped = runtime_check(tmp_path, "q4f32_1", runner(0.0, -1.0), golden, "test runtime", compute)
    assert flipped["failures"] and "a runtime error" in flipped["failures"][0]
    if compute == "float32":  # fp16 compute is gated by cosine: a small offset is its rounding's business
        assert off["failures"] and "> 1e-05" in off["failures"][0]

