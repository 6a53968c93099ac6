"""int8.py writes what onnxruntime's quantize_dynamic(per_channel=True) writes: same weights, same
outputs, on a small graph with the shapes that matter (a table read by Gather and MatMuls reading its
rows, two MatMuls sharing one input, a constant column, a weight that is all positive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _model(path: Path, seed: int) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.normal(0, 0.5, (50, 16)).astype(np.float32)
    w1 = rng.normal(0, 0.2, (16, 24)).astype(np.float32)
    w1[:, 3] = 0.0  # a constant column: scale 1, as onnxruntime does
    w2 = np.abs(rng.normal(0, 0.2, (16, 8))).astype(np.float32)  # all positive: range widened to 0
    w3 = rng.normal(0, 0.2, (24, 8)).astype(np.float32)
    w4 = rng.normal(0, 0.2, (24, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="gather"),
        helper.make_node("MatMul", ["emb", "w1"], ["h1"], name="mm1"),
        helper.make_node("MatMul", ["emb", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w3"], ["h3"], name="mm3"),
        helper.make_node("MatMul", ["r1", "w4"], ["h4"], name="mm4"),  # shares its input with mm3
        helper.make_node("Add", ["h2", "h3"], ["h23"]),
        helper.make_node("Add", ["h23", "h4"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 8])],
        [numpy_helper.from_array(a, n) for n, a in (("table", table), ("w1", w1), ("w2", w2), ("w3", w3),
                                                                   ("w4", w4))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))


@pytest.mark.parametrize("signed", [True, False], ids=["q8", "uint8"])
@pytest.mark.parametrize("seed", [0, 7])
def test_same_weights_and_outputs_as_onnxruntime(tmp_path: Path, signed: bool, seed: int) -> None:
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelport.targets.onnx.int8 import quantize_dynamic_int8

    src = tmp_path / "m.onnx"
    _model(src, seed)
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    quantize_dynamic_int8(src, ours, signed)
    quantize_dynamic(str(src), str(theirs), weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                     per_channel=True)
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(ours)).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(theirs)).graph.initializer}
    assert set(a) == set(b)
    for name in b:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    ops = sorted(n.op_type for n in onnx.load(str(ours)).graph.node)
    assert ops == sorted(n.op_type for n in onnx.load(str(theirs)).graph.node)
    # mm1 and mm2 read the quantized table rows as they are (no DequantizeLinear left); mm3 and mm4
    # share one DynamicQuantizeLinear of their common input
    assert ops.count("DynamicQuantizeLinear") == 1 and "DequantizeLinear" not in ops
    ids = np.random.default_rng(1).integers(0, 50, (3, 5))
    got = ort.InferenceSession(str(ours)).run(None, {"ids": ids})[0]
    want = ort.InferenceSession(str(theirs)).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(got, want)
