"""Fused ONNX variants (targets/onnx/fuse.py): MiniLM converted with fp32 and the three fused variants.

One conversion (shared_artifact, ~30 s on 2 quiet cores): the fused graphs hold the contrib operators
they should, each variant passed its precision's gate in the validator (fused fp32 within the fp32
gate, 1e-5), and the fused graph is smaller than the export it came from. Speed is measured by the
command in docs/targets/onnx.md ("Fused variants"), never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelport.errors import ModelportError
from modelport.thresholds import THRESHOLDS

FUSED = "fp32,fp32-fused,fp16-fused,q4-fused"


@pytest.fixture(scope="module")
def fused(shared_artifact) -> Path:
    return shared_artifact("all-minilm-l6-v2", "onnx", FUSED)


def _graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def test_fused_graphs_hold_the_contrib_ops(fused: Path) -> None:
    from modelport.targets.onnx.fuse import contrib_ops

    onnx_dir = fused / "onnx"
    # MiniLM: 6 layers -> 6 attention blocks and 6 GELUs; the embeddings' gather + add + LayerNorm as one op
    expected = {"MultiHeadAttention": 6, "BiasGelu": 6, "EmbedLayerNormalization": 1}
    assert contrib_ops(onnx_dir / "model_fused.onnx") == expected
    assert contrib_ops(onnx_dir / "model_fp16_fused.onnx") == expected
    # Q, K, V stay MatMuls under MultiHeadAttention, so 4-bit reaches all 6 x 6 linear layers, as in q4
    assert contrib_ops(onnx_dir / "model_q4_fused.onnx") == {**expected, "MatMulNBits": 36}
    assert contrib_ops(onnx_dir / "model.onnx") == {}
    # the mask reaches attention as an additive bias, not key_padding_mask (which WebGPU refuses)
    for node in _graph(onnx_dir / "model_fused.onnx").node:
        if node.op_type == "MultiHeadAttention":
            assert node.input[4] == "" and node.input[5] == "padding_bias"


def test_fused_variants_pass_their_precisions_gates(fused: Path) -> None:
    man = json.loads((fused / "manifest.json").read_text())
    results = man["validation"]["variants"]
    assert man["validation"]["status"] == "pass"
    for variant, precision in (("fp32-fused", "fp32"), ("fp16-fused", "fp16"), ("q4-fused", "q4")):
        assert man["target"]["variants"][variant]["precision"] == precision
        r = results[variant]
        assert r["verdict"] == "pass", (variant, r["failures"])
        assert r["thresholds"] == THRESHOLDS[precision].to_json()
    m = results["fp32-fused"]["metrics"]
    assert m["tokens_max_abs"] <= 1e-5 and m["pooled_max_abs"] <= 1e-5  # the bar for fused fp32


def test_fused_graph_is_smaller_than_the_export(fused: Path) -> None:
    fused_nodes = len(_graph(fused / "onnx/model_fused.onnx").node)
    export_nodes = len(_graph(fused / "onnx/model.onnx").node)
    assert fused_nodes < export_nodes / 2, (fused_nodes, export_nodes)


def test_fused_variants_are_opt_in_and_loadable_by_transformers_js() -> None:
    from modelport.clients import TRANSFORMERS_JS_FILES, TRANSFORMERS_JS_LOAD
    from modelport.targets.onnx.encoder import DEFAULT_VARIANTS, VARIANTS
    from modelport.targets.onnx.fuse import FUSED_VARIANTS

    assert not set(FUSED_VARIANTS) & set(DEFAULT_VARIANTS)
    for v in FUSED_VARIANTS:
        path = VARIANTS[v].path
        assert TRANSFORMERS_JS_FILES[v] == path
        load = TRANSFORMERS_JS_LOAD[v]  # dtype fp32 adds no suffix: model_file_name is the whole file name
        assert load["dtype"] == "fp32" and f"onnx/{load['model_file_name']}.onnx" == path


def test_a_graph_without_attention_is_refused_in_one_line(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from modelport.targets.onnx.fuse import fuse

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    src = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(src))
    for exporter in ("dynamo", "trace"):
        with pytest.raises(ModelportError, match="no attention block fused.*drop them from --variants"):
            fuse(src, tmp_path / "fused.onnx", {"num_attention_heads": 1, "hidden_size": 4}, exporter)
        assert not (tmp_path / "fused.onnx").exists()
