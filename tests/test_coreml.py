"""Core ML target: conversion in every shape mode, the NumPy interpreter, determinism, macOS path.

Each artifact is converted once per module (and validated by `convert` itself). BERT: MiniLM (real
weights) at the default fixed [1, 128] and with enumerated shapes, the arctic-shaped BERT with a
range; XLM-R: every mode, and every variant. fp32 and fp16 everywhere. The interpreter runs every
golden row at the length the package takes, so the MiniLM-sized range is kept short (<= 64).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelport import manifest, milinterp
from modelport.cli import main
from modelport.errors import ModelportError
from modelport.fsutil import read_json
from modelport.reference import Golden
from modelport.source import ModelCard, read_license, read_model_card
from modelport.targets.coreml import encoder as coreml
from modelport.targets.coreml import package as coreml_package
from modelport.thresholds import THRESHOLDS
from modelport.validate import validate

from .conftest import convert

# coremltools' specificationVersion per minimum deployment target.
SPEC_VERSION = {"iOS15": 6, "iOS16": 7, "iOS17": 8, "iOS18": 9}

ARTIFACTS = {
    # name: (model, --shape, variants)
    "minilm_fixed": ("all-minilm-l6-v2", None, "fp32,fp16"),
    "minilm_enumerated": ("all-minilm-l6-v2", "enumerated", "fp32,fp16"),
    "arctic_range": ("tiny-bert-arctic", "range:1-64", "fp32,fp16"),
    "xlmr_fixed": ("tiny-xlm-roberta", "fixed:64", "fp32,fp16,w8,pal6,pal4"),
    "xlmr_range": ("tiny-xlm-roberta", "range:2-512", "fp32,fp16"),
    "xlmr_enumerated": ("tiny-xlm-roberta", "enumerated", "fp32,fp16,w8,pal4"),  # iOS18 compression ops
}


@pytest.fixture(scope="module")
def artifacts(shared_artifact) -> dict[str, Path]:
    """Converted lazily, once: `artifacts[name]` converts on first use (xlmr_fixed is shared with the
    registry contract test)."""

    class Lazy(dict):
        def __missing__(self, name: str) -> Path:
            model, shape, variants = ARTIFACTS[name]
            self[name] = shared_artifact(model, "coreml", variants, *(["--shape", shape] if shape else []))
            return self[name]

    return Lazy()


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_every_variant_passes_its_gate(artifacts: dict[str, Path], name: str) -> None:
    """Validated by the interpreter: fp32 <= 1e-5 max abs, the others by the threshold table."""
    root = artifacts[name]
    validation = manifest.load(root)["validation"]
    assert validation["status"] == "pass", validation
    assert list(validation["variants"]) == ARTIFACTS[name][2].split(",")
    for variant, v in validation["variants"].items():
        m = v["metrics"]
        if v["precision"] == "fp32":
            assert m["tokens_max_abs"] <= 1e-5 and m["pooled_max_abs"] <= 1e-5, (variant, m)
        else:
            assert m["cos_min"] >= THRESHOLDS[v["precision"]].cos_min, (variant, m)
    notes = validation["notes"]
    assert notes[0].startswith("Core ML runtime not available: validated with the reference interpreter")
    assert "row by row" in notes[1]


def test_minilm_package_contract(artifacts: dict[str, Path]) -> None:
    """What an app sees: int32 inputs [1, 128], float32 outputs, metadata from the model card."""
    root = artifacts["minilm_fixed"]
    spec, _ = milinterp.read_spec(root / "fp32/model.mlpackage")
    inputs = milinterp.input_specs(spec)
    assert [(i.name, i.dtype, i.shape) for i in inputs] == [
        (n, np.int32, (1, 128)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = {o.name: o.type.multiArrayType for o in spec.description.output}
    assert list(outputs) == ["last_hidden_state", "sentence_embedding"]
    assert all(o.dataType == o.FLOAT32 for o in outputs.values())
    assert list(outputs["sentence_embedding"].shape) == [1, 384]
    meta = spec.description.metadata
    assert meta.license == "apache-2.0"  # from the model card's front matter
    assert "384 dimensional dense vector space" in meta.shortDescription
    assert "mean of the token embeddings" in meta.shortDescription
    assert meta.userDefined["modelport.pad_token_id"] == "0"
    assert "pad after the text with 0" in spec.description.input[0].shortDescription
    assert spec.specificationVersion == SPEC_VERSION["iOS15"]


def test_fixed_shape_caps_the_validated_length(artifacts: dict[str, Path]) -> None:
    """MiniLM runs at 256 tokens, the package takes 128: reference and tokenizer truncate at 128."""
    root = artifacts["minilm_fixed"]
    man = manifest.load(root)
    assert man["recipe"]["max_length"] == 128
    assert any("capped by the Core ML input shape fixed [1, 128]" in n for n in man["recipe"]["notes"])
    assert read_json(root / "tokenizer_config.json")["model_max_length"] == 128
    golden = Golden.load(root)
    assert max(n for c in golden.cases for n in c["lengths"]) == 128
    assert man["target"]["shape"] == {"mode": "fixed", "lengths": [128], "batch": 1, "text": "fixed [1, 128]"}


def test_range_and_enumerated_shapes(artifacts: dict[str, Path]) -> None:
    spec, _ = milinterp.read_spec(artifacts["arctic_range"] / "fp16/model.mlpackage")
    ids = milinterp.input_specs(spec)[0]
    assert ids.ranges == ((1, 1), (1, 64)) and not ids.enumerated
    assert spec.specificationVersion == SPEC_VERSION["iOS15"]
    assert spec.description.metadata.userDefined["modelport.pooling"] == "cls"  # arctic: CLS pooling
    spec, _ = milinterp.read_spec(artifacts["minilm_enumerated"] / "fp16/model.mlpackage")
    ids = milinterp.input_specs(spec)[0]
    assert sorted(s[1] for s in ids.enumerated) == [32, 64, 128, 256]
    assert manifest.load(artifacts["minilm_enumerated"])["recipe"]["max_length"] == 256  # not capped
    assert spec.specificationVersion == SPEC_VERSION["iOS18"]  # enumerated shapes need iOS18
    # fp16 packages keep float32 outputs
    assert all(o.type.multiArrayType.dataType == o.type.multiArrayType.FLOAT32 for o in spec.description.output)


def test_deployment_target_per_feature(artifacts: dict[str, Path]) -> None:
    variants = manifest.load(artifacts["xlmr_fixed"])["target"]["variants"]
    expected = {"fp32": "iOS15", "fp16": "iOS15", "w8": "iOS18", "pal6": "iOS16", "pal4": "iOS16"}
    for name, target in expected.items():
        assert variants[name]["minimum_deployment_target"].startswith(target), name
        spec, _ = milinterp.read_spec(artifacts["xlmr_fixed"] / variants[name]["file"])
        assert spec.specificationVersion == SPEC_VERSION[target], name
    assert "constexpr_blockwise_shift_scale" in variants["w8"]["ops"]
    assert "constexpr_lut_to_dense" in variants["pal4"]["ops"]


def test_xlm_roberta_inputs(artifacts: dict[str, Path]) -> None:
    """no-token-type-ids quirk: two inputs; pad id 1 documented in the package."""
    spec, _ = milinterp.read_spec(artifacts["xlmr_range"] / "fp16/model.mlpackage")
    assert [i.name for i in spec.description.input] == ["input_ids", "attention_mask"]
    assert spec.description.metadata.userDefined["modelport.pad_token_id"] == "1"


@pytest.mark.parametrize("name", ["xlmr_fixed", "xlmr_enumerated"])
def test_decompression_matches_coremltools(artifacts: dict[str, Path], name: str) -> None:
    """Our weight.bin reader and constexpr ops give exactly coremltools' own decompression."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    root = artifacts[name]
    for variant in ("w8", "pal6", "pal4"):
        package = root / f"{variant}/model.mlpackage"
        if not package.exists():
            continue
        interp = milinterp.Interpreter(package)
        spec, weights = milinterp.read_spec(package)
        program = milproto_load(spec, specification_version=spec.specificationVersion, file_weights_dir=str(weights))
        ops = [o for o in program.functions["main"].operations if o.op_type.startswith("constexpr_")]
        assert ops, variant
        for o in ops:
            np.testing.assert_array_equal(interp.constants[o.outputs[0].name], o.materialized_val_inference())


def test_two_conversions_are_byte_identical(artifacts: dict[str, Path], tmp_path: Path) -> None:
    first = artifacts["xlmr_fixed"]
    again = tmp_path / "again"
    assert convert("tiny-xlm-roberta", "-t", "coreml", "--variants", "fp32,fp16,w8,pal6,pal4", "--shape", "fixed:64",
                   "--skip-validation", "--out", str(again)) == 0
    files_a = manifest.load(first)["files"]
    files_b = manifest.load(again)["files"]
    assert files_a == files_b
    assert sum(f.endswith("Manifest.json") for f in files_a) == 5
    spec, _ = milinterp.read_spec(again / "fp32/model.mlpackage")
    assert coreml_package.CONVERSION_DATE_KEY not in spec.description.metadata.userDefined  # same bytes tomorrow
    for package in again.glob("*/model.mlpackage"):
        assert all((p.stat().st_mode & 0o777) == (0o755 if p.is_dir() else 0o644) for p in package.rglob("*"))


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def _first_op(spec, op_type: str):
    fn = spec.mlProgram.functions["main"]
    return next(o for o in fn.block_specializations[fn.opset].operations if o.type == op_type)


def test_unknown_op_is_a_clear_error(artifacts: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(artifacts["xlmr_fixed"], tmp_path)
    model_file = root / "fp32/model.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    spec, _ = milinterp.read_spec(root / "fp32/model.mlpackage")
    _first_op(spec, "softmax").type = "softmax_v99"
    model_file.write_bytes(spec.SerializeToString())
    with pytest.raises(ModelportError, match="does not implement MIL op.*softmax_v99"):
        milinterp.Interpreter(root / "fp32/model.mlpackage")
    report = validate(root, ["fp32"])
    assert not report.passed
    assert "softmax_v99" in report.results[0].failures[0]


def test_interpreter_catches_a_small_weight_change(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """Scaling one LayerNorm weight by 1.001 in weight.bin fails the fp32 gate: the check has teeth.
    (One element: the tiny random model is almost invariant to scaling a whole gamma.)"""
    root = _copy(artifacts["xlmr_fixed"], tmp_path)
    package = root / "fp32/model.mlpackage"
    spec, weights = milinterp.read_spec(package)
    gamma_name = _first_op(spec, "layer_norm").inputs["gamma"].arguments[0].name
    fn = spec.mlProgram.functions["main"]
    const = next(o for o in fn.block_specializations[fn.opset].operations if o.outputs[0].name == gamma_name)
    blob = const.attributes["val"].blobFileValue
    path = weights / "weight.bin"
    data = bytearray(path.read_bytes())
    _, _, size, offset = milinterp.BLOB_HEADER.unpack_from(data, blob.offset)
    gamma = np.frombuffer(data, np.float32, size // 4, offset).copy()
    gamma[0] *= np.float32(1.001)
    data[offset:offset + size] = gamma.tobytes()
    path.write_bytes(bytes(data))
    report = validate(root, ["fp32"])
    assert not report.passed and any("max abs" in f for f in report.results[0].failures)


def test_fake_macos_predict_path(artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On macOS, validate also runs MLModel.predict on CPU_ONLY then ALL; here MLModel is faked."""
    import coremltools as ct

    root = _copy(artifacts["xlmr_fixed"], tmp_path)
    calls: list[tuple[str, str, tuple[int, ...]]] = []

    class FakeMLModel:
        offset = 0.0  # added to every output on ALL compute units

        def __init__(self, path: str, compute_units=None) -> None:
            self.units = compute_units.name
            self.interp = milinterp.Interpreter(Path(path))

        def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            assert all(v.dtype == np.int32 for v in feeds.values())
            calls.append((Path(self.interp.package).parent.name, self.units, feeds["input_ids"].shape))
            out = self.interp.run(feeds)
            return {k: v + np.float32(self.offset if self.units == "ALL" else 0.0) for k, v in out.items()}

    monkeypatch.setattr(coreml_package, "coreml_runtime_available", lambda: True)
    monkeypatch.setattr(ct.models, "MLModel", FakeMLModel)
    report = validate(root, ["fp32", "pal4"])
    assert report.passed, [r.failures for r in report.results]
    assert {(v, u) for v, u, _ in calls} == {(v, u) for v in ("fp32", "pal4") for u in ("CPU_ONLY", "ALL")}
    assert {shape for _, _, shape in calls} == {(1, 64)}, "rows are padded to the fixed shape"
    fp32 = report.results[0].extra
    assert fp32["coreml_cpu_only"]["gate"] == "fp32" and fp32["coreml_all"]["gate"] == "fp16"
    assert fp32["coreml_cpu_only"]["tokens_max_abs"] <= 1e-5
    assert "MLModel.predict" in report.notes[0]
    FakeMLModel.offset = 0.05  # ALL compute units drift: fp32's fp16 (cosine) gate must catch it
    report = validate(root, ["fp32"])
    assert not report.passed
    assert all(f.startswith("Core ML ALL:") for f in report.results[0].failures)


def test_row_runner_pads_and_crops() -> None:
    seen: list[dict[str, np.ndarray]] = []

    def predict(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(feeds)
        n = feeds["input_ids"].shape[1]
        return {"last_hidden_state": np.arange(n, dtype=np.float32).reshape(1, n, 1),
                "sentence_embedding": feeds["attention_mask"].sum(1, keepdims=True).astype(np.float32)}

    enum = milinterp.InputSpec("input_ids", np.int32, (1, 32), enumerated=((1, 32), (1, 64)))
    run = coreml.row_runner(predict, enum, pad_token_id=7)
    ids = np.array([[5, 6, 9], [5, 9, 0]], dtype=np.int64)
    hidden, pooled = run({"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)})
    assert [f["input_ids"].shape for f in seen] == [(1, 32), (1, 32)]
    assert seen[0]["input_ids"][0, :4].tolist() == [5, 6, 9, 7] and seen[0]["attention_mask"][0, 3] == 0
    assert hidden.shape == (2, 3, 1) and pooled[:, 0].tolist() == [3.0, 2.0]
    assert coreml.padded_length(enum, 33) == 64
    with pytest.raises(ModelportError, match="do not fit"):
        coreml.padded_length(enum, 65)
    ranged = milinterp.InputSpec("input_ids", np.int32, (1, 1), ranges=((1, 1), (2, 512)))
    assert coreml.padded_length(ranged, 1) == 2 and coreml.padded_length(ranged, 300) == 300


def test_interpreter_rejects_shapes_core_ml_would() -> None:
    spec = milinterp.InputSpec("input_ids", np.int32, (1, 128))
    assert spec.accepts((1, 128)) and not spec.accepts((1, 127)) and not spec.accepts((2, 128))
    ranged = milinterp.InputSpec("input_ids", np.int32, (1, 1), ranges=((1, 1), (1, -1)))
    assert ranged.accepts((1, 4000)) and not ranged.accepts((2, 5))


def test_unpack_bits_is_lsb_first() -> None:
    values = np.array([1, 0, 3, 2, 63, 5, 17], dtype=np.uint8)
    bits = np.concatenate([np.unpackbits(np.array([v], np.uint8), bitorder="little")[:6] for v in values])
    packed = np.packbits(bits, bitorder="little")
    np.testing.assert_array_equal(milinterp.unpack_bits(packed, 6, len(values)), values)


@pytest.mark.parametrize("spec, message", [
    ("cube", "unknown --shape"),
    ("fixed:abc", "bad --shape"),
    ("range:9-3", "range needs LO < HI"),
    ("enumerated:64", "two lengths or more"),
    ("fixed:4096", "exceeds the model's max length 256"),
])
def test_bad_shape_option(spec: str, message: str) -> None:
    with pytest.raises(ModelportError, match=message):
        coreml.parse_shape(spec, 256)


def test_shape_option_is_refused_by_onnx(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "x"
    assert main(["convert", "tiny-xlm-roberta", "-t", "onnx", "--shape", "fixed", "--out", str(out)]) == 2
    assert "--shape does not apply to the onnx target" in capsys.readouterr().err
    assert not out.exists()


def test_default_shapes() -> None:
    assert coreml.parse_shape(None, 256) == coreml.ShapePlan("fixed", (128,))
    assert coreml.parse_shape(None, 64) == coreml.ShapePlan("fixed", (64,))
    assert coreml.parse_shape("range", 512) == coreml.ShapePlan("range", (1, 512))
    assert coreml.parse_shape("enumerated", 256).lengths == (32, 64, 128, 256)
    assert coreml.parse_shape("enumerated", 384).lengths == (32, 64, 128, 256, 384)


def test_model_card(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "---\nlicense: mit\nauthor: Jane Doe\ntags: [a, b]\n---\n\n# Title\n\n[![badge](x.svg)](y)\n\n"
        "This model maps [sentences](https://x) to *vectors*.\nSecond line.\n\n## Usage\n", encoding="utf-8")
    card = read_model_card(tmp_path)
    assert card == ModelCard(author="Jane Doe", license="mit",
                             summary="This model maps sentences to vectors. Second line.")
    assert read_model_card(tmp_path / "missing") == ModelCard()
    # one front-matter parser for the card and the license: a list reads joined in the card (what Xcode
    # shows), license_name stands in for a missing license; read_license takes one license id only
    (tmp_path / "README.md").write_text("---\nlicense: [mit, apache-2.0]\nmodel_creator: ACME\n---\nText.\n")
    assert read_model_card(tmp_path) == ModelCard(author="ACME", license="mit, apache-2.0", summary="Text.")
    assert read_license(tmp_path, {"license": "bsd"}) == "bsd"
    (tmp_path / "README.md").write_text("---\nlicense_name: llama3\n---\n")
    assert read_model_card(tmp_path).license == "llama3"
    assert read_license(tmp_path, {}) is None


def test_interpreter_imports_without_torch(artifacts: dict[str, Path]) -> None:
    """The validator image has no torch: milinterp must import and run without it."""
    package = artifacts["xlmr_fixed"] / "pal4/model.mlpackage"
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from modelport.milinterp import Interpreter\n"
        f"it = Interpreter(Path({str(package)!r}))\n"
        "out = it.run({s.name: np.ones(s.shape, np.int32) for s in it.inputs})\n"
        "print(sorted(out), out['sentence_embedding'].dtype)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['last_hidden_state', 'sentence_embedding'] float32" in result.stdout
