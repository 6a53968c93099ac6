"""`modelport audit`: verdicts on artifacts written by the real tools, not by modelport.

  - an mlx-lm folder of folders written by `mlx_lm.convert` (4-bit and 8-bit) from the trained tiny Llama;
  - a transformers.js folder: modelport's own fp32 ONNX export of the tiny XLM-R encoder (the session's
    shared conversion, so CI pays nothing for it) with everything modelport adds removed (manifest, golden,
    the `sentence_embedding` output: onnx-community graphs return last_hidden_state only), then
    `model_q4.onnx` from onnxruntime's MatMulNBitsQuantizer (block 32, symmetric: transformers.js'
    scripts/quantize.py settings) and `model_quantized.onnx` from onnxruntime's quantize_dynamic (int8);
  - the tiny Llama's KV-cache graphs (fp32, q4) as a plain text-generation folder;
  - the encoder folder with its q4 embedding table, or one 4-bit matrix, perturbed: the audit fails q4;
  - inputs that are not an artifact, a reference of another architecture, a WebLLM package, an artifact
    with no variant modelport has a gate for: exit 2.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelport.cli import main
from modelport.fsutil import read_json

ENCODER = "tiny-xlm-roberta"
DECODER = "tiny-llama"


@pytest.fixture(scope="module")
def references() -> dict[str, Path]:
    from modelport import tiny

    return {name: tiny.materialize(name) for name in (ENCODER, DECODER)}


@pytest.fixture(scope="module")
def mlx_lm_folders(references, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<dir>/q4 and <dir>/q8, each exactly what `mlx_lm.convert -q --q-bits N` writes."""
    mlx_lm = pytest.importorskip("mlx_lm")
    out = tmp_path_factory.mktemp("mlx-lm")
    for bits in (4, 8):
        mlx_lm.convert(hf_path=str(references[DECODER]), mlx_path=str(out / f"q{bits}"), quantize=True, q_bits=bits)
    return out


def _quiet_quantizers():
    """onnxruntime's quantizers log one INFO line per node (hundreds): keep the test output readable."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    return lambda: [lg.setLevel(lv) for lg, lv in zip(loggers, levels)]


def _foreign_copy(artifact: Path, dst: Path, keep_onnx: tuple[str, ...]) -> Path:
    """A modelport artifact with everything modelport adds removed (manifest, golden, report), keeping only
    the ONNX files named: what is left is a plain transformers.js folder. Hard links: replace a file
    (unlink, then write) to change it, never write through."""
    modelport_only = {"manifest.json", "reference", "report.html"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        if Path(folder) == artifact:
            return modelport_only & set(names)
        if Path(folder) == artifact / "onnx":
            return {n for n in names if n not in keep_onnx}
        return set()

    shutil.copytree(artifact, dst, ignore=ignore, copy_function=os.link)
    assert not (dst / "manifest.json").exists() and not (dst / "reference").exists()
    return dst


@pytest.fixture(scope="module")
def transformers_js_folder(shared_artifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny XLM-R's fp32 export (the session's shared conversion) as onnx-community ships encoders (graph
    output last_hidden_state only), plus q4 and int8 files written by onnxruntime's own quantizers."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    out = _foreign_copy(shared_artifact(ENCODER, "onnx"), tmp_path_factory.mktemp("transformers-js") / "folder",
                        keep_onnx=())
    fp32 = out / "onnx" / "model.onnx"
    model = onnx.load(str(shared_artifact(ENCODER, "onnx") / "onnx" / "model.onnx"))
    keep = [o for o in model.graph.output if o.name == "last_hidden_state"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(fp32))
    restore = _quiet_quantizers()
    try:
        q4 = MatMulNBitsQuantizer(model=onnx.load(str(fp32)), block_size=32, is_symmetric=True, accuracy_level=None)
        q4.process()
        onnx.save(q4.model.model, str(out / "onnx" / "model_q4.onnx"))
        quantize_dynamic(str(fp32), str(out / "onnx" / "model_quantized.onnx"), weight_type=QuantType.QInt8)
    finally:
        restore()
    return out


def _audit(artifact: Path, reference: Path, out: Path) -> tuple[int, dict]:
    rc = main(["audit", str(artifact), "--reference", str(reference), "--out", str(out)])
    return rc, (read_json(out / "audit.json") if (out / "audit.json").is_file() else {})


def test_mlx_lm_convert_output_gets_a_verdict(mlx_lm_folders: Path, references, tmp_path: Path) -> None:
    rc, report = _audit(mlx_lm_folders, references[DECODER], tmp_path / "audit")
    assert rc == 0, report
    assert report["layout"] == "mlx-lm" and report["family"] == "causal-lm" and report["status"] == "pass"
    assert {k: v["precision"] for k, v in report["variant_files"].items()} == {"q4": "w4", "q8": "w8"}
    for name, v in report["variants"].items():
        m = v["metrics"]
        # gated against PyTorch on the weights the folder stores (computed by the audit), fp32 figures beside
        assert v["thresholds"]["reference"] == "dequantized" and m["greedy_total"] == 80
        assert m["prefill_max_abs"] <= 1e-5 and m["kv_vs_full_max_abs"] <= 1e-5
        assert "vs_fp32" in v["extra"] and v["extra"]["weights"]["checked"] > 0
        assert v["extra"]["weights"]["failed"] == 0
    # 4-bit rounding moves the distributions; 8-bit much less (the 8-bit KLD gate: mean <= 1e-3)
    q4, q8 = (report["variants"][n]["extra"]["kld"] for n in ("q4", "q8"))
    assert q8["kld_mean"] < 1e-3 < q4["kld_mean"]


def test_transformers_js_folder_gets_a_verdict(transformers_js_folder: Path, references, tmp_path: Path) -> None:
    rc, report = _audit(transformers_js_folder, references[ENCODER], tmp_path / "audit")
    assert rc == 0, report
    assert report["layout"] == "transformers.js" and report["family"] == "sentence-encoder"
    assert {k: v["precision"] for k, v in report["variant_files"].items()} == {
        "fp32": "fp32", "q4": "q4", "quantized": "q8"}
    fp32, q4 = report["variants"]["fp32"], report["variants"]["q4"]
    assert fp32["metrics"]["tokens_max_abs"] <= 1e-5 and fp32["metrics"]["pooled_max_abs"] <= 1e-5
    assert 0.9 < q4["metrics"]["cos_mean"] < 1.0  # really quantized, still close
    # the graph has no sentence_embedding: pooled here with the reference's own contract
    assert any("pooled with the reference's contract" in n for n in fp32["notes"])
    assert all(v["extra"]["weights"]["failed"] == 0 and v["extra"]["weights"]["checked"] > 0
               for v in report["variants"].values())


def _perturbed(folder: Path, tmp_path: Path, change) -> Path:
    """A copy of the folder whose model_q4.onnx has `change(model)` applied (other files hard-linked)."""
    import onnx

    art = tmp_path / "art"
    shutil.copytree(folder, art, copy_function=os.link)
    path = art / "onnx" / "model_q4.onnx"
    model = onnx.load(str(path))
    change(model)
    path.unlink()  # hard-linked to the module's folder: replace, never write through
    onnx.save(model, str(path))
    return art


def _scale_initializer(model, name: str, how) -> None:
    from onnx import numpy_helper

    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(how(numpy_helper.to_array(init)).astype(np.float32), name))


def test_perturbed_embedding_fails_the_audit(transformers_js_folder: Path, references, tmp_path: Path) -> None:
    """model_q4.onnx's word-embedding table (float: MatMulNBits quantizes MatMuls only) with noise of the
    table's own spread added: the q4 variant fails on the embeddings it computes and on its stored weights;
    the untouched variants still pass (exit 1)."""
    vocab, hidden = (read_json(transformers_js_folder / "config.json")[k] for k in ("vocab_size", "hidden_size"))

    def change(model) -> None:
        table = next(i for i in model.graph.initializer if list(i.dims) == [vocab, hidden])
        noise = np.random.default_rng(0).standard_normal((vocab, hidden))
        _scale_initializer(model, table.name, lambda w: w + noise * w.std())

    rc, report = _audit(_perturbed(transformers_js_folder, tmp_path, change), references[ENCODER], tmp_path / "a")
    assert rc == 1 and report["status"] == "fail"
    q4 = report["variants"]["q4"]
    assert q4["verdict"] == "fail"
    assert any(f.startswith("cosine") for f in q4["failures"]), q4["failures"]
    assert any(f.startswith("weights:") for f in q4["failures"]), q4["failures"]
    assert report["variants"]["fp32"]["verdict"] == report["variants"]["quantized"]["verdict"] == "pass"


def test_perturbed_4bit_matrix_fails_on_its_weights(transformers_js_folder: Path, references, tmp_path: Path) -> None:
    """One 4-bit matrix (the last FFN output projection) with its block scales tripled. On this random tiny
    encoder the golden barely sees it (measured: cos min 0.9984, top-5 1.00: the layers' contributions are
    small next to the embeddings), so the verdict comes from the weight check against the reference: its
    max |w| is 3x the reference matrix's, far outside one 4-bit step."""

    def change(model) -> None:
        node = [n for n in model.graph.node if n.op_type == "MatMulNBits"][-1]
        _scale_initializer(model, node.input[2], lambda s: s * 3.0)

    rc, report = _audit(_perturbed(transformers_js_folder, tmp_path, change), references[ENCODER], tmp_path / "a")
    assert rc == 1
    q4 = report["variants"]["q4"]
    assert q4["verdict"] == "fail" and q4["extra"]["weights"]["failed"] == 1
    assert [f for f in q4["failures"] if f.startswith("weights:")] == q4["failures"]
    assert "[64, 256] (4-bit) does not match the source checkpoint" in q4["failures"][0]


def test_onnx_decoder_folder_gets_a_verdict(shared_artifact, references, tmp_path: Path) -> None:
    """The tiny Llama's KV-cache graphs (the session's shared conversion) as a plain transformers.js
    text-generation folder: the q4 file's dequantized-weights golden is built by matching each 4-bit
    matrix to the reference's Linear weights (no names to go by in a foreign graph)."""
    art = _foreign_copy(shared_artifact(DECODER, "onnx", "fp32,fp16,q4"), tmp_path / "art",
                        keep_onnx=("model.onnx", "model_q4.onnx"))
    rc, report = _audit(art, references[DECODER], tmp_path / "audit")
    assert rc == 0, report
    assert {k: v["precision"] for k, v in report["variant_files"].items()} == {"fp32": "fp32", "q4": "q4"}
    fp32, q4 = report["variants"]["fp32"], report["variants"]["q4"]
    assert fp32["thresholds"]["reference"] == "fp32" and fp32["metrics"]["prefill_max_abs"] <= 1e-5
    assert q4["thresholds"]["reference"] == "dequantized" and q4["metrics"]["step_max_abs"] <= 1e-5
    assert q4["extra"]["kld"]["kld_mean"] > fp32["extra"]["kld"]["kld_mean"]


def test_bad_input_exits_2(mlx_lm_folders: Path, transformers_js_folder: Path, references, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    def run(artifact: Path, reference: Path) -> tuple[int, str]:
        rc = main(["audit", str(artifact), "--reference", str(reference)])
        return rc, " ".join(capsys.readouterr().err.split())

    rc, err = run(references[DECODER], references[DECODER])  # a checkpoint is not an artifact
    assert rc == 2 and "is not an artifact this audits" in err
    rc, err = run(mlx_lm_folders, tmp_path / "missing")
    assert rc == 2 and "model not found" in err
    rc, err = run(transformers_js_folder, references[DECODER])
    assert rc == 2 and "another architecture" in err and "model_type" in err
    # mlx-lm keeps a float16 checkpoint's dtype: 8-bit weights with float16 math, a row the table lacks
    mlx_lm = pytest.importorskip("mlx_lm")
    mlx_lm.convert(hf_path=str(references[DECODER]), mlx_path=str(tmp_path / "q8f16"), quantize=True, q_bits=8,
                   dtype="float16")
    rc, err = run(tmp_path / "q8f16", references[DECODER])
    assert rc == 2 and "float16 compute: no causal-lm gate for precision 'w8f16'" in err
    webllm = tmp_path / "webllm"
    (webllm / "f32" / "resolve" / "main").mkdir(parents=True)
    (webllm / "f32" / "resolve" / "main" / "mlc-chat-config.json").write_text("{}")
    rc, err = run(webllm, references[ENCODER])
    assert rc == 2 and "not audited yet" in err
