"""manifest.json is written and read through a versioned JSON Schema (src/modelport/schema/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport import manifest
from modelport.errors import ModelportError
from modelport.fsutil import read_json, write_json
from modelport.manifest import TargetInfo
from modelport.targets import Variant

VARIANTS = {"fp32": Variant("fp32", "onnx/model.onnx", "fp32", "float32"),
            "q4": Variant("q4", "onnx/model_q4.onnx", "q4", "4-bit")}


def _artifact(tmp_path: Path) -> Path:
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx/model.onnx").write_bytes(b"graph")
    info = TargetInfo.of("onnx", "causal-lm", ["fp32"], VARIANTS, {"fp32": {"note": "x"}}, opset=18)
    man = manifest.build(tmp_path, command=["modelport"], source={"name": "tiny"},
                         recipe={"model_type": "llama", "family": "causal-lm", "inputs": ["input_ids"],
                                 "outputs": ["logits"], "max_length": 64}, target=info)
    manifest.save(tmp_path, man)
    return tmp_path


def test_written_manifest_matches_schema_and_round_trips(tmp_path: Path) -> None:
    root = _artifact(tmp_path)
    man = manifest.load(root)
    assert man["manifest_version"] == manifest.MANIFEST_VERSION == 2
    assert man["target"]["family"] == "causal-lm"
    assert man["target"]["variants"]["fp32"] == {"file": "onnx/model.onnx", "precision": "fp32",
                                                 "description": "float32", "note": "x"}
    assert TargetInfo.from_json(man["target"]).to_json() == man["target"]


def test_unknown_version_is_refused_with_a_clear_line(tmp_path: Path) -> None:
    root = _artifact(tmp_path)
    man = read_json(root / "manifest.json")
    man["manifest_version"] = 7
    write_json(root / "manifest.json", man)
    with pytest.raises(ModelportError, match="manifest_version 7; this modelport .* reads versions 1, 2"):
        manifest.load(root)


def test_version_1_is_read_with_the_family_filled_in(tmp_path: Path) -> None:
    root = _artifact(tmp_path)
    man = read_json(root / "manifest.json")
    man["manifest_version"] = 1
    del man["target"]["family"]
    man["target"]["kind"] = "causal-lm"  # how Core ML decoders said it in version 1
    write_json(root / "manifest.json", man)
    assert manifest.load(root)["target"]["family"] == "causal-lm"


def test_schema_mismatch_is_refused(tmp_path: Path) -> None:
    root = _artifact(tmp_path)
    man = read_json(root / "manifest.json")
    del man["target"]["variants"]["fp32"]["precision"]
    man["validation"]["status"] = "maybe"
    write_json(root / "manifest.json", man)
    with pytest.raises(ModelportError, match="does not match the manifest schema"):
        manifest.load(root)
    problems = manifest.check_schema(man)
    assert "manifest.target.variants.fp32.precision is missing" in problems
    assert any("validation.status" in p for p in problems)


def test_schema_file_agrees_with_jsonschema(tmp_path: Path) -> None:
    """The built-in checker implements a subset of JSON Schema: a real validator agrees with it."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = read_json(manifest.SCHEMA)
    man = read_json(_artifact(tmp_path) / "manifest.json")
    jsonschema.validate(man, schema)
    man["files"]["onnx/model.onnx"]["bytes"] = -1
    assert manifest.check_schema(man, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(man, schema)
