"""Every bad input gets one clear line, a non-zero exit, no traceback, and no partial output."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from modelport import tiny
from modelport.cli import main


def run_convert(capsys: pytest.CaptureFixture, model: str, out: Path, *extra: str) -> tuple[int, str]:
    rc = main(["convert", model, "--target", "onnx", "--variants", "fp32", "--out", str(out), *extra])
    return rc, capsys.readouterr().err


def assert_clean(out: Path) -> None:
    assert not out.exists(), "no partial artifact may be left"
    assert_no_temp(out)


def assert_no_temp(out: Path) -> None:
    if out.parent.exists():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert leftovers == [], leftovers


def write_safetensors(path: Path, dtype: str) -> None:
    header = json.dumps({"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")


@pytest.fixture()
def xlmr_dir(tmp_path: Path) -> Path:
    """A writable copy of the tiny XLM-R model to break in various ways."""
    dst = tmp_path / "model"
    shutil.copytree(tiny.materialize("tiny-xlm-roberta"), dst)
    return dst


def test_missing_directory(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(tmp_path / "nope"), out)
    assert rc == 2 and "model not found" in err and "Traceback" not in err
    assert_clean(out)


def test_not_a_model_directory(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(tmp_path / "empty"), out)
    assert rc == 2 and "no config.json" in err
    assert_clean(out)


def test_no_weights(capsys, xlmr_dir: Path, tmp_path: Path) -> None:
    (xlmr_dir / "model.safetensors").unlink()
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(xlmr_dir), out)
    assert rc == 2 and "no weights" in err
    assert_clean(out)


def test_pickle_weights_refused_then_allowed(capsys, xlmr_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(xlmr_dir / "model.safetensors"), xlmr_dir / "pytorch_model.bin")
    (xlmr_dir / "model.safetensors").unlink()
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(xlmr_dir), out)
    assert rc == 2 and "pickle" in err and "--allow-pickle" in err
    assert_clean(out)
    rc, err = run_convert(capsys, str(xlmr_dir), out, "--allow-pickle")
    assert rc == 0, err
    assert (out / "onnx/model.onnx").is_file()


def test_unknown_architecture_lists_supported(capsys, xlmr_dir: Path, tmp_path: Path) -> None:
    cfg = json.loads((xlmr_dir / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2Model"])
    (xlmr_dir / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(xlmr_dir), out)
    assert rc == 2 and "unsupported architecture" in err and "bert" in err and "xlm-roberta" in err
    assert_clean(out)


def test_remote_code_refused(capsys, xlmr_dir: Path, tmp_path: Path) -> None:
    """An architecture transformers does not implement needs the repo's code: refused without the flag.
    (auto_map on a model_type transformers implements loads natively: test_hostile_checkpoints.)"""
    cfg = json.loads((xlmr_dir / "config.json").read_text())
    cfg.update(model_type="custom-encoder", auto_map={"AutoModel": "modeling_custom.CustomModel"})
    (xlmr_dir / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(xlmr_dir), out)
    assert rc == 2 and "trust_remote_code" in err and "--trust-remote-code" in err
    assert_clean(out)


def test_already_quantized_weights_refused(capsys, xlmr_dir: Path, tmp_path: Path) -> None:
    (xlmr_dir / "model.safetensors").unlink()
    write_safetensors(xlmr_dir / "model.safetensors", "I8")
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(xlmr_dir), out)
    assert rc == 2 and "already quantized" in err
    assert_clean(out)


def test_corrupt_safetensors(capsys, xlmr_dir: Path, tmp_path: Path) -> None:
    (xlmr_dir / "model.safetensors").write_bytes(b"\x05")
    out = tmp_path / "out" / "a"
    rc, err = run_convert(capsys, str(xlmr_dir), out)
    assert rc == 2 and "not a safetensors file" in err
    assert_clean(out)


def test_unknown_variant(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out" / "a"
    rc = main(["convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", "fp32,int3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "int3" in err and "q4f16" in err
    assert_clean(out)


def test_failure_midway_leaves_nothing(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.targets.onnx import encoder as onnx_target

    def boom(*a, **k):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_target, "quantize_q4", boom)
    out = tmp_path / "out" / "a"
    # a converter crash is a toolchain failure: exit 3, one line naming the step, the traceback in a log
    rc = main(["convert", "tiny-xlm-roberta", "-t", "onnx", "--variants", "fp32,q4", "--out", str(out)])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (earlier lines: progress, and logging noise from other tests' streams)
    assert rc == 3 and last.startswith("error: the onnx converter failed: RuntimeError: exporter crashed")
    log = Path(err.split("details: ")[1].split(")")[0].replace("\n", "").strip())
    assert "exporter crashed" in log.read_text()
    assert_clean(out)


def test_force_replaces_existing(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out" / "a"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    rc, err = run_convert(capsys, "tiny-xlm-roberta", out)
    assert rc == 2 and "--force" in err and (out / "stale.txt").exists()
    # --force replaces only a modelport artifact (tests/unit/test_output_safety.py: never other folders)
    (out / "manifest.json").write_text(json.dumps({"manifest_version": 2, "target": {"name": "onnx"}}))
    rc, err = run_convert(capsys, "tiny-xlm-roberta", out, "--force")
    assert rc == 0, err
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert_no_temp(out)


def test_validate_non_artifact(capsys, tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path)]) == 2
    assert "not a modelport artifact" in capsys.readouterr().err


def test_help_explains_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["convert", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--target", "--variants", "--out", "--force", "--allow-pickle", "--trust-remote-code",
                "--skip-validation"):
        assert opt in text


def test_client_plan_refuses_what_transformers_js_would_not_load(tmp_path: Path) -> None:
    """Both client checks (embeddings, text generation) go through harness.plan before running
    anything: unknown clients, non-ONNX artifacts, missing variants and files where transformers.js
    would not look for that dtype are refused by name."""
    from modelport.clients.harness import plan
    from modelport.errors import ModelportError

    from modelport import manifest
    from modelport.manifest import TargetInfo

    def write_manifest(target: str) -> None:
        info = TargetInfo.from_json({"name": target, "family": "causal-lm", "variants": {
            v: {"file": f, "precision": v, "description": v} for v, f in variants.items()}})
        manifest.save(tmp_path, manifest.build(tmp_path, command=[], source={"name": "x"}, target=info, recipe={
            "model_type": "llama", "family": "causal-lm", "inputs": [], "outputs": [], "max_length": 8}))

    files = {"fp32": "onnx/model.onnx", "q4": "onnx/model_q4.onnx"}
    variants = {"fp32": "onnx/model.onnx", "q4": "onnx/model_4bit.onnx"}
    write_manifest("onnx")
    with pytest.raises(ModelportError, match="unknown client\\(s\\) safari for decoders; available: node"):
        plan(tmp_path, {"safari": None}, ["node"], files, " for decoders")
    with pytest.raises(ModelportError, match="variant 'fp16' is not in this artifact \\(fp32, q4\\)"):
        plan(tmp_path, {"node": ["fp16"]}, ["node"], files)
    with pytest.raises(ModelportError, match="'q4' is at onnx/model_4bit.onnx, but transformers.js loads dtype "
                                             "'q4' from onnx/model_q4.onnx"):
        plan(tmp_path, {"node": None}, ["node"], files)
    write_manifest("mlx")
    with pytest.raises(ModelportError, match="loads ONNX artifacts; this artifact's target is 'mlx'"):
        plan(tmp_path, {"node": ["fp32"]}, ["node"], files)
