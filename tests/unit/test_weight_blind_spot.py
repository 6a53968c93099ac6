"""Issue 20, "blind spot of the golden": a weight no golden input touches (an unused embedding row set
to 1000) passed validation once the manifest's hashes were rewritten. Conversion now records per-tensor
statistics of the source checkpoint (weight_stats.py) and validation checks every stored weight
against them: the variant fails with a line naming the tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelport import manifest as manifest_mod
from modelport import weight_stats
from modelport.cli import main
from modelport.reference import Golden
from modelport.targets import REGISTRY

EMBEDDING = "model.embeddings.word_embeddings.weight"  # the ONNX initializer of the word-embedding table


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-xlm-roberta to ONNX fp32 + q8 + q4, not validated (each test validates its own copy)."""
    out = tmp_path_factory.mktemp("blind") / "xlmr-onnx"
    assert main(["convert", "tiny-xlm-roberta", "--target", "onnx", "--variants", "fp32,q8,q4",
                 "--out", str(out), "--skip-validation"]) == 0
    return out


@pytest.fixture()
def artifact(converted: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "artifact"
    shutil.copytree(converted, dst)
    return dst


def _unused_token(root: Path) -> int:
    """The highest token id no golden input contains: its embedding row never reaches the golden."""
    golden = Golden.load(root)
    used = set(np.concatenate([golden.inputs(c["name"])["input_ids"].ravel() for c in golden.cases]).tolist())
    tensors = manifest_mod.load(root)["source"]["tensor_stats"]["tensors"]
    vocab = tensors["embeddings.word_embeddings.weight"]["shape"][0]
    return max(set(range(vocab)) - used)


def _edit_initializer(path: Path, name: str, change) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == name)
    values = numpy_helper.to_array(init).copy()
    change(values)
    init.CopyFrom(numpy_helper.from_array(values, name))
    onnx.save(model, str(path))


def _rewrite_hashes(root: Path) -> None:
    """What someone who edits a file can also do: make manifest.json's file list match again."""
    man = manifest_mod.load(root)
    man["files"] = manifest_mod.file_hashes(root)
    manifest_mod.save(root, man)


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_conversion_records_source_tensor_stats_and_validation_checks_them(
        converted: Path, artifact: Path, capsys: pytest.CaptureFixture) -> None:
    stats = manifest_mod.load(converted)["source"]["tensor_stats"]
    emb = stats["tensors"]["embeddings.word_embeddings.weight"]
    assert emb["dtype"] == "F32" and len(emb["sha256"]) == 64 and emb["min"] < 0 < emb["max"] and emb["mean_abs"] > 0
    before = {p: p.read_bytes() for p in converted.rglob("*") if p.is_file()}
    assert main(["validate", str(artifact)]) == 0
    assert "error:" not in capsys.readouterr().err
    variants = manifest_mod.load(artifact)["validation"]["variants"]
    converter = REGISTRY.converter("onnx", manifest_mod.load(artifact)["target"]["family"])
    for name, v in variants.items():
        w = v["extra"]["weights"]
        # every tensor the file stores is checked: at least the 12 Linear weights and 3 embedding tables
        # of the 2-layer model (the exporter stores tensors with equal values once: the tiny model's
        # untrained LayerNorm weights and zero biases are one initializer each)
        stored = sum(1 for _ in converter.weight_tensors(artifact, name))
        assert w["failed"] == 0 and w["checked"] == stored >= 15, (name, w, stored)
    assert variants["fp32"]["extra"]["weights"]["identical_bytes"] >= 5  # stored exactly as in the checkpoint
    assert {p: p.read_bytes() for p in converted.rglob("*") if p.is_file()} == before  # the copy was validated


def test_unused_embedding_row_set_to_1000_fails_naming_the_tensor(artifact: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    row = _unused_token(artifact)
    _edit_initializer(artifact / "onnx/model.onnx", EMBEDDING, lambda w: w.__setitem__(row, 1000.0))
    _rewrite_hashes(artifact)
    assert main(["validate", str(artifact), "--variants", "fp32"]) == 1
    err = capsys.readouterr().err
    assert _one_error(err).startswith("error: validation failed for fp32")
    flat = " ".join(err.split())  # the terminal wraps long lines
    assert f"weights: {EMBEDDING} [453, 64] (float32) does not match the source checkpoint" in flat
    assert "max 1000" in flat

    # The blind spot itself: without the statistics the golden alone passes the same artifact.
    man = manifest_mod.load(artifact)
    del man["source"]["tensor_stats"]
    manifest_mod.save(artifact, man)
    assert main(["validate", str(artifact), "--variants", "fp32"]) == 0
    assert "not checked" in " ".join(
        str(v) for v in weight_stats.check_variant(_converter(artifact), artifact, "fp32", man).extra.values())


def _converter(root: Path):
    from modelport.targets import REGISTRY

    info = manifest_mod.load(root)["target"]
    return REGISTRY.converter(info["name"], info["family"])


@pytest.mark.parametrize("variant,name", [("q8", f"{EMBEDDING}_scale"), ("q4", None)])
def test_quantized_weight_out_of_range_fails(artifact: Path, variant: str, name: str | None,
                                             capsys: pytest.CaptureFixture) -> None:
    """Quantized variants: a scale made 1000 times larger puts the dequantized max |w| far outside the
    source's (what a row of 1000s needs in a quantized file); the line names the weight."""
    import onnx

    path = artifact / manifest_mod.load(artifact)["target"]["variants"][variant]["file"]
    if name is None:  # the first 4-bit weight's scales
        model = onnx.load(str(path), load_external_data=False)
        name = next(n.input[2] for n in model.graph.node if n.op_type == "MatMulNBits")

    def grow(values: np.ndarray) -> None:
        values.reshape(-1)[0] *= 1000

    _edit_initializer(path, name, grow)
    _rewrite_hashes(artifact)
    assert main(["validate", str(artifact), "--variants", variant]) == 1
    err = capsys.readouterr().err
    assert _one_error(err).startswith(f"error: validation failed for {variant}")
    assert f"({'8' if variant == 'q8' else '4'}-bit) does not match the source checkpoint" in " ".join(err.split())


def test_check_compares_float16_and_transposed_tensors() -> None:
    """The bounds in isolation: a transposed float32 copy passes (same statistics), float16 rounding
    passes, a float16 row of 1000 fails, an unknown shape is counted, not judged."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, (40, 24)).astype(np.float32)
    recorded = {"tensors": {"layer.weight": {"dtype": "F32", "shape": [40, 24], "sha256": "x",
                                             **weight_stats.stats_of(w).to_json()}}}
    ok = weight_stats.check([("val_1", w.T.copy(), None), ("layer.weight", w.astype(np.float16), None),
                             ("const", np.ones(7, np.float32), None)], recorded)
    assert ok.failures == [] and ok.extra["not_in_source"] == 1 and ok.extra["within_bounds"] == 2
    bad = w.astype(np.float16)
    bad[3] = 1000
    failed = weight_stats.check([("model.layer.weight", bad, None)], recorded)
    (line,) = failed.failures
    assert line.startswith("weights: model.layer.weight [40, 24] (float16) does not match")


def test_mlx_weights_are_checked(tmp_path: Path) -> None:
    """MLX folders are read with numpy (no mlx needed): f32 is byte-identical to the checkpoint, q4's
    dequantized weights are within one quantization step; a changed scale fails."""
    pytest.importorskip("mlx.core")
    out = tmp_path / "mlx"
    assert main(["convert", "tiny-xlm-roberta", "--target", "mlx", "--variants", "f32,q4", "--out", str(out),
                 "--skip-validation"]) == 0
    man = manifest_mod.load(out)
    conv = _converter(out)
    f32 = weight_stats.check_variant(conv, out, "f32", man)
    assert f32.failures == [] and f32.extra["identical_bytes"] == f32.extra["checked"] > 0
    q4 = weight_stats.check_variant(conv, out, "q4", man)
    assert q4.failures == [] and q4.extra["within_bounds"] > 0

    from modelport.targets.mlx.weights import mlx_weights

    tensors = list(mlx_weights(out / "q4"))
    name, values, bits = next(t for t in tensors if t[2] == 4 and "word_embeddings" in t[0])
    values = values.copy()
    values[-1] = 1000.0
    changed = [(n, values if n == name else v, b) for n, v, b in tensors]
    (line,) = weight_stats.check(changed, man["source"]["tensor_stats"]).failures
    assert line.startswith(f"weights: {name} [") and "(4-bit)" in line
