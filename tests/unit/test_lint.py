"""Config lint rules, on small config and tokenizer files written per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelport import lint
from modelport.errors import ModelportError
from modelport.recipes import ARCHITECTURES, Recipe


def recipe(pooling: str = "mean", source: str = "sentence-transformers") -> Recipe:
    return Recipe(ARCHITECTURES["bert"], pooling, True, 256, 32, source)


def write_tokenizer(d: Path, **fields) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tok = {"version": "1.0", "padding": None, "truncation": None, "post_processor": {"type": "BertProcessing"}}
    tok.update(fields)
    (d / "tokenizer.json").write_text(json.dumps(tok))


def rules(findings: list[lint.Finding]) -> list[tuple[str, str]]:
    return [(f.rule, f.severity) for f in findings]


def test_clean_model_has_no_findings(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    assert lint.run(tmp_path, {"model_type": "bert"}, recipe(), "mlx") == []


def test_rope_parameters_only_is_an_error_for_mlx_not_for_onnx(tmp_path: Path) -> None:
    """transformers 5 moved rope_theta into rope_parameters; mlx-lm reads only the old key."""
    write_tokenizer(tmp_path)
    cfg = {"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    found = lint.run(tmp_path, cfg, recipe(), "mlx")
    assert rules(found) == [("rope-parameters-only", "error")]
    assert "500000" in found[0].message and "rope_theta" in found[0].message
    # ONNX exports trace transformers 5 itself, which reads rope_parameters.
    assert lint.run(tmp_path, cfg, recipe(), "onnx") == []
    # With the top-level key written too, the MLX loader reads the right base.
    assert lint.run(tmp_path, {**cfg, "rope_theta": 500000.0}, recipe(), "mlx") == []


def test_scaled_rope_without_rope_scaling(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    cfg = {"rope_theta": 1e6, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}
    assert rules(lint.run(tmp_path, cfg, recipe(), "mlx")) == [("rope-parameters-only", "error")]


def test_missing_pooling_config_is_an_error_for_every_target(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    from modelport.targets import TARGETS

    for target in TARGETS:
        found = lint.run(tmp_path, {}, recipe(source="architecture-default"), target)
        assert rules(found) == [("pooling-config-missing", "error")]
    with pytest.raises(ModelportError, match="pooling-config-missing.*--ignore-lint"):
        lint.enforce(found, ignore=False)
    lint.enforce(found, ignore=True)  # recorded, not raised


def test_tokenizer_fixed_padding_and_long_truncation_are_warnings(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, padding={"strategy": {"Fixed": 128}}, truncation={"max_length": 512})
    found = lint.run(tmp_path, {}, recipe(), "onnx")
    assert rules(found) == [("tokenizer-fixed-padding", "warning"), ("tokenizer-truncation", "warning")]
    lint.enforce(found, ignore=False)  # warnings never stop a conversion


def test_cls_pooling_needs_a_leading_special_token(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, post_processor=None)
    assert rules(lint.run(tmp_path, {}, recipe("cls"), "coreml")) == [("cls-pooling-without-special-tokens", "error")]
    assert lint.run(tmp_path, {}, recipe("mean"), "coreml") == []


def test_tokenizer_file_that_transformers_overrides_is_named(tmp_path: Path) -> None:
    """Qwen2Tokenizer installs Qwen's digit-by-digit pre-tokenizer whatever tokenizer.json says; clients
    run the file. A file with GPT-2's regex (how the tiny Qwen3-Embedding was first built) is named."""
    import json
    import shutil

    from modelport import tiny
    from modelport.fsutil import read_json
    from modelport.lint import tokenizer_file_differs
    from modelport.recipes import recipe_for

    model = tmp_path / "m"
    shutil.copytree(tiny.materialize("tiny-qwen3-embedding"), model)
    config = read_json(model / "config.json")
    assert tokenizer_file_differs(model, config, recipe_for(model, config)) == []
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (model / "tokenizer.json").write_text(json.dumps(tok))
    [finding] = tokenizer_file_differs(model, config, recipe_for(model, config))
    assert finding.severity == "warning" and "Qwen2Tokenizer" in finding.message and "12345" in finding.message
