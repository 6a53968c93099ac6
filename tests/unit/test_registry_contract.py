"""The target × family registry's contract, checked declaratively (no model, no toolchain run).

tests/test_contract_conversions.py converts and validates a tiny model per registered pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from modelport import families
from modelport.errors import ModelportError
from modelport.targets import REGISTRY, TARGETS, ArtifactSession, Converter, Variant
from modelport.targets.registry import (NoOptions, Registry, TargetSpec, contract_problems, parse_options,
                                        parse_variants)

ROOT = Path(__file__).resolve().parents[2]
PAIRS = REGISTRY.pairs()


def test_every_target_and_family_is_registered() -> None:
    assert set(TARGETS) == {"onnx", "coreml", "mlx", "mlc"}
    assert set(PAIRS) == {("onnx", "sentence-encoder"), ("onnx", "causal-lm"), ("coreml", "sentence-encoder"),
                          ("coreml", "causal-lm"), ("mlx", "sentence-encoder"), ("mlx", "causal-lm"),
                          ("mlc", "sentence-encoder"), ("mlc", "causal-lm")} | {
        (target, family) for target in ("onnx", "coreml", "mlx")
        for family in ("decoder-embedder", "multi-vector-encoder")}
    for _, family in PAIRS:
        assert family in families.FAMILIES


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_registered_converter_keeps_the_contract(pair: tuple[str, str]) -> None:
    cls = REGISTRY.converter_class(*pair)
    assert contract_problems(cls) == []
    converter = cls()  # instantiable: every abstract hook implemented
    assert converter.runtime_versions.__func__ is not Converter.runtime_versions
    spec = TARGETS[pair[0]]
    # the target's toolchain image exists (its own Dockerfile, or a lock the toolchain template builds)
    assert (ROOT / "images" / spec.image / "Dockerfile").is_file() or (
        ROOT / "images" / spec.image / "requirements.lock").is_file(), spec.image
    # its CLI options parse into its Options dataclass, and a flag it does not take is refused by name
    assert parse_variants(cls, None) == list(cls.defaults)
    with pytest.raises(ModelportError, match="--no-such-flag does not apply"):
        parse_options(cls, {"no-such-flag": "1"})


def _toy_registry() -> Registry:
    reg = Registry()
    reg.add_target(TargetSpec("toy", "a toy target", extra="toy", image="toy"))
    return reg


class _Session(ArtifactSession):
    def runner(self, variant: str):
        return lambda feeds: feeds


def test_contract_fails_when_a_converter_lacks_a_runner() -> None:
    """A converter registered without `open` (the validator's runner) is reported, and cannot be built."""
    reg = _toy_registry()

    @reg.register
    class NoRunner(Converter):
        target, family = "toy", "sentence-encoder"
        variants = {"fp32": Variant("fp32", "model.bin", "fp32", "toy")}
        defaults = ("fp32",)

        def convert(self, ctx):
            raise AssertionError

        def runtime_versions(self):
            return {}

    assert any("does not implement open" in p for p in contract_problems(NoRunner))
    with pytest.raises(TypeError):
        NoRunner()

    class SessionWithoutRunner(ArtifactSession):
        pass

    with pytest.raises(TypeError):
        SessionWithoutRunner(Path("."))


def test_contract_fails_on_a_precision_without_a_gate() -> None:
    reg = _toy_registry()

    @reg.register
    class Ungated(Converter):
        target, family = "toy", "causal-lm"
        variants = {"q3": Variant("q3", "model_q3.bin", "q3", "3-bit")}
        defaults = ("q3",)

        def convert(self, ctx):
            raise AssertionError

        def open(self, artifact):
            return _Session(artifact)

        def runtime_versions(self):
            return {}

    assert any("precision 'q3'" in p for p in contract_problems(Ungated))


def test_registry_refuses_duplicates_and_undeclared_targets() -> None:
    reg = _toy_registry()

    class A(Converter):
        target, family = "toy", "sentence-encoder"
        variants = {"fp32": Variant("fp32", "m", "fp32", "")}
        defaults = ("fp32",)
        convert = open = runtime_versions = None  # type: ignore[assignment]

    reg.register(A)
    with pytest.raises(ValueError, match="already converted by"):
        reg.register(type("B", (A,), {}))
    with pytest.raises(ValueError, match="not declared"):
        reg.register(type("C", (A,), {"target": "nowhere"}))
    with pytest.raises(ValueError, match="already registered"):
        reg.add_target(TargetSpec("toy", "again", extra="toy", image="toy"))


def test_refusals_name_the_targets_that_do() -> None:
    with pytest.raises(ModelportError, match=r"target 'mlc' does not convert multi-vector-encoder models.*targets that do: "
                                             r"onnx, coreml, mlx"):
        REGISTRY.converter_class("mlc", "multi-vector-encoder")
    with pytest.raises(ModelportError, match="unknown target 'gguf'; available: onnx"):
        REGISTRY.converter_class("gguf", "causal-lm")


def test_options_are_typed_fields() -> None:
    cls = REGISTRY.converter_class("coreml", "sentence-encoder")
    assert parse_options(cls, {"shape": "range"}).shape == "range"
    with pytest.raises(ModelportError, match="--context does not apply to the coreml target for sentence-encoder"):
        parse_options(cls, {"context": 64})
    onnx = REGISTRY.converter_class("onnx", "sentence-encoder")
    assert parse_options(onnx, {}).quant_plan is None  # --quant-plan (searched variants, issue 16)
    assert REGISTRY.converter_class("onnx", "multi-vector-encoder").Options is NoOptions

    @dataclass(frozen=True)
    class Opt:
        shape: str | None = None

    assert parse_options(type("T", (), {"Options": Opt, "target": "t", "family": "f"}), {}) == Opt()
