"""The registry contract, end to end: every registered (target, family) pair converts a tiny model of
its family through the CLI, the artifact says which family it is, and it validates through the same
registry entry (session -> runner -> family judge). The declarative half is tests/unit/test_registry_contract.py.

Each pair uses an artifact its own target suite also uses (conftest.shared_artifact), so this test
adds no conversion to CI's time budget.
"""

from __future__ import annotations

import pytest

from modelport import families, manifest
from modelport.targets import REGISTRY
from modelport.validate import validate

# (target, family) -> (model, variants or None for the defaults, extra CLI args, env while converting):
# the key the target's own suite converts with (tests/conftest.shared_artifact), so both use one conversion.
OFF = {"MODELPORT_MLC_BROWSER": "off"}
TINY: dict[tuple[str, str], tuple[str, str | None, tuple[str, ...], dict[str, str]]] = {
    ("onnx", "sentence-encoder"): ("tiny-xlm-roberta", None, (), {}),  # conftest.xlmr_onnx
    ("onnx", "causal-lm"): ("tiny-llama", "fp32,fp16,q4", (), {}),  # test_lm_onnx.lm_artifact
    ("coreml", "sentence-encoder"): ("tiny-xlm-roberta", "fp32,fp16,w8,pal6,pal4", ("--shape", "fixed:64"), {}),
    ("coreml", "causal-lm"): ("tiny-llama", "fp32,w8,w4", ("--context", "64"), {}),  # test_coreml_lm.artifact
    # tiny EmbeddingGemma: not w8/pal4, the tiny random weights fail those gates in PyTorch itself
    ("coreml", "decoder-embedder"): ("tiny-embeddinggemma", "fp32,fp16", ("--shape", "fixed:64"), {}),
    ("coreml", "multi-vector-encoder"): ("tiny-bge-m3", "fp32,w8", ("--shape", "fixed:64"), {}),
    ("mlx", "sentence-encoder"): ("tiny-xlm-roberta", "f32,q4", (), {}),  # test_mlx.xlmr_mlx
    ("mlx", "causal-lm"): ("tiny-qwen3", None, (), {}),  # test_mlx_lm.artifact
    ("onnx", "decoder-embedder"): ("tiny-embeddinggemma", "fp32,q8", (), {}),  # test_clients_embedders
    ("onnx", "multi-vector-encoder"): ("tiny-bge-m3", "fp32,q8", (), {}),  # test_embedders, test_clients_embedders
    ("mlx", "decoder-embedder"): ("tiny-embeddinggemma", "f32,q4", (), {}),
    ("mlx", "multi-vector-encoder"): ("tiny-bge-m3", "f32,q4", (), {}),
    ("mlc", "sentence-encoder"): ("tiny-bert-arctic", "f32,f16,q4f32_1,q4f16_1", (), OFF),  # test_mlc.arctic_mlc
    ("mlc", "causal-lm"): ("tiny-llama", None, (), {}),  # test_mlc.llama_chat (WebLLM in Chromium too)
}


def test_every_registered_pair_has_a_tiny_model_here() -> None:
    assert set(TINY) == set(REGISTRY.pairs()), "a new (target, family) pair needs a tiny model in TINY"


@pytest.mark.parametrize("pair", sorted(TINY), ids=lambda p: f"{p[0]}-{p[1]}")
def test_pair_converts_and_validates(pair: tuple[str, str], shared_artifact,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target, family = pair
    model, variants, extra, env = TINY[pair]
    root = shared_artifact(model, target, variants, *extra, env=env)
    expected = variants.split(",") if variants else list(REGISTRY.converter_class(target, family).defaults)
    man = manifest.load(root)
    assert man["target"]["name"] == target and man["target"]["family"] == family
    assert man["recipe"]["family"] == family
    assert list(man["target"]["variants"]) == expected
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    report = validate(root)  # through the registry: the pair's session, runner and family judge
    assert report.family == family and report.target == target
    assert [r.variant for r in report.results] == expected
    assert report.passed, [f for r in report.results for f in r.failures]
    gates = families.get(family).thresholds
    assert all(r.precision in gates for r in report.results)
