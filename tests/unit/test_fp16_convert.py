"""to_fp16 hands the float16 converter tensor types inferred without the weights: the same nodes and weights
as the converter with its own shape inference, with and without an operator it keeps in float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: E402

from modelport.targets.onnx.encoder import to_fp16  # noqa: E402


def _graph(with_blocked_op: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1e-9, 7e4, -2.0, 0.5, 0, 1, 2, 3], np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"])]
    if with_blocked_op:  # CumSum stays float32 in onnxruntime's converter: Casts around it need the types
        inits.append(numpy_helper.from_array(np.array(1, np.int64), "axis"))
        nodes += [helper.make_node("CumSum", ["a", "axis"], ["c"]), helper.make_node("Softmax", ["c"], ["y"])]
    else:
        nodes.append(helper.make_node("Softmax", ["a"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("blocked", [False, True])
def test_same_nodes_and_weights_as_the_converter_with_shape_inference(tmp_path: Path, blocked: bool) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_graph(blocked), str(src))
    to_fp16(src, tmp_path / "f16.onnx")
    ours = onnx.load(str(tmp_path / "f16.onnx"))
    theirs = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)  # shape inference on
    assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
    assert [t.SerializeToString() for t in ours.graph.initializer] == \
           [t.SerializeToString() for t in theirs.graph.initializer]
    assert any(n.op_type == "Cast" for n in ours.graph.node)
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(run(ours)[0], run(theirs)[0])
