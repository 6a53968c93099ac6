"""Where things are in an MLC artifact (targets/mlc/layout.py)."""

from __future__ import annotations

import pytest


def test_an_artifact_in_the_old_layout_is_told_to_convert_again(tmp_path) -> None:
    """Artifacts written before the hub-loadable layout (<v>/resolve/main/, libs/*-webgpu.wasm) get one
    line saying what to do, not a missing-file error from deep inside the validator."""
    from modelport.errors import ModelportError
    from modelport.targets.mlc.layout import model_name

    (tmp_path / "f32" / "resolve" / "main").mkdir(parents=True)
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "m-f32-webgpu.wasm").write_bytes(b"\0asm")
    with pytest.raises(ModelportError, match=r"earlier <variant>/resolve/main/ layout.*convert the model again"):
        model_name(tmp_path)
    (tmp_path / "f32" / "m-f32-webgpu.wasm").write_bytes(b"\0asm")  # the current layout wins
    assert model_name(tmp_path) == "m"
