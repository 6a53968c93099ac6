"""Model cards come from the artifact's family: pipeline tag, usage snippet per target, validation table.

Every (family, target) pair that converts gets a card from a synthetic manifest shaped like a real
one (manifest_version 2: target section as TargetInfo writes it, validation as validate.Report.to_json
writes it, with the real threshold tables and metrics objects). No conversion: milliseconds.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from modelport import families, modelcard
from modelport.lm import LMMetrics
from modelport.metrics import Metrics
from modelport.thresholds import LM_THRESHOLDS, THRESHOLDS

ENCODER, DECODER = "sentence-encoder", "causal-lm"
EMBEDDER, MULTI = "decoder-embedder", "multi-vector-encoder"
REPO = "someone/tiny-model"

# (family, target) -> {variant: (file, precision)}: two variants each, the first full precision.
PAIRS: dict[tuple[str, str], dict[str, tuple[str, str]]] = {
    (ENCODER, "onnx"): {"fp32": ("onnx/model.onnx", "fp32"), "q8": ("onnx/model_quantized.onnx", "q8")},
    (ENCODER, "coreml"): {"fp32": ("fp32/model.mlpackage", "fp32"), "w8": ("w8/model.mlpackage", "w8")},
    (ENCODER, "mlx"): {"f32": ("f32/model.safetensors", "fp32"), "q4": ("q4/model.safetensors", "w4")},
    (ENCODER, "mlc"): {"f32": ("f32/tensor-cache.json", "fp32"), "f16": ("f16/tensor-cache.json", "fp16")},
    (DECODER, "onnx"): {"fp32": ("onnx/model.onnx", "fp32"), "q4": ("onnx/model_q4.onnx", "q4")},
    (DECODER, "coreml"): {"fp32": ("fp32/model.mlpackage", "fp32"), "w4": ("w4/model.mlpackage", "w4")},
    (DECODER, "mlx"): {"f32": ("f32/model.safetensors", "fp32"), "q4": ("q4/model.safetensors", "w4")},
    (DECODER, "mlc"): {"f32": ("f32/tensor-cache.json", "fp32"), "q4f32_1": ("q4f32_1/tensor-cache.json", "w4")},
    **{(family, target): variants for family in (EMBEDDER, MULTI) for target, variants in (
        ("onnx", {"fp32": ("onnx/model.onnx", "fp32"), "q8": ("onnx/model_quantized.onnx", "q8")}),
        ("coreml", {"fp32": ("fp32/model.mlpackage", "fp32"), "w8": ("w8/model.mlpackage", "w8")}),
        ("mlx", {"f32": ("f32/model.safetensors", "fp32"), "q4": ("q4/model.safetensors", "w4")}))},
}
MLC_SPECIALS = {"prefix_ids": [101], "suffix_ids": [102], "prefix": ["[CLS]"], "suffix": ["[SEP]"], "pad_token_id": 0}
LIBRARY = {"onnx": "transformers.js", "coreml": "coreml", "mlx": "mlx", "mlc": "mlc-llm"}

RECIPES = {
    ENCODER: {"model_type": "bert", "family": ENCODER, "inputs": ["input_ids", "attention_mask", "token_type_ids"],
              "outputs": ["last_hidden_state", "sentence_embedding"], "pooling": "mean", "normalize": True,
              "max_length": 256, "hidden_size": 384, "pooling_source": "sentence-transformers",
              "quant_group_size": 64, "quirks": [], "notes": []},
    DECODER: {"model_type": "qwen3", "family": DECODER, "inputs": ["input_ids", "attention_mask", "position_ids"],
              "outputs": ["logits"], "num_layers": 2, "num_attention_heads": 4, "num_kv_heads": 2, "head_dim": 16,
              "hidden_size": 64, "vocab_size": 512, "max_length": 2048, "tie_word_embeddings": True,
              "eos_token_id": [2, 7], "rope_theta": 1000000.0, "chat_template": True, "quant_group_size": 32,
              "quirks": ["rope-parameters"], "notes": []},
}


RECIPES[EMBEDDER] = {**RECIPES[ENCODER], "model_type": "gemma3_text", "family": EMBEDDER,
                     "inputs": ["input_ids", "attention_mask"], "hidden_size": 96, "embedding_dim": 96,
                     "dense": [{"path": "2_Dense", "in_features": 96, "out_features": 384, "bias": False,
                                "activation": "identity"},
                               {"path": "3_Dense", "in_features": 384, "out_features": 96, "bias": False,
                                "activation": "identity"}],
                     "prompts": {"query": "task: search result | query: ", "document": "title: none | text: "}}
RECIPES[MULTI] = {**RECIPES[ENCODER], "model_type": "xlm-roberta", "family": MULTI, "pooling": "cls",
                  "inputs": ["input_ids", "attention_mask"], "embedding_dim": 384,
                  "outputs": ["last_hidden_state", "sentence_embedding", "sparse_weights", "colbert_vectors"],
                  "prompts": {"query": "", "document": ""}}


def multi_result(variant: str, precision: str, k: int) -> dict[str, Any]:
    from modelport.families.multivector import MULTI_VECTOR_FAMILY, MultiVectorMetrics

    r = encoder_result(variant, precision, k)
    dense = Metrics(tokens_max_abs=2.5e-6 * k, pooled_max_abs=1.25e-6 * k, cos_min=1 - 3e-7 * k,
                    cos_mean=1 - 1e-7 * k, top5_mean=1.0, top5_min=0.8)
    r["metrics"] = MultiVectorMetrics(dense, 2e-6 * k, 3e-6 * k, 1.0, 1.0, 1e-3 * k, 4e-6 * k, 1.0).to_json()
    r["thresholds"] = MULTI_VECTOR_FAMILY.gate_json(precision)
    return r


def encoder_result(variant: str, precision: str, k: int) -> dict[str, Any]:
    metrics = Metrics(tokens_max_abs=2.5e-6 * k, pooled_max_abs=1.25e-6 * k, cos_min=1 - 3e-7 * k,
                      cos_mean=1 - 1e-7 * k, top5_mean=1.0 - 0.05 * (k - 1), top5_min=0.8)
    return {"variant": variant, "precision": precision, "verdict": "pass",
            "thresholds": THRESHOLDS[precision].to_json(), "metrics": metrics.to_json(), "failures": [],
            "notes": [], "seconds": 1.5 * k, "extra": {}}


def lm_metrics(scale: float, greedy: int, top1: int) -> dict[str, Any]:
    return LMMetrics(prefill_max_abs=3.1e-6 * scale, step_max_abs=4.2e-6 * scale, kv_vs_full_max_abs=1.7e-6 * scale,
                     greedy_equal=greedy, greedy_prefix_total=greedy, greedy_total=80, greedy_exact_prompts=5,
                     top1_equal=top1, top1_total=80, kl_mean=2.3e-9 * scale, logit_scale=12.5).to_json()


def decoder_result(variant: str, precision: str, k: int) -> dict[str, Any]:
    gate = LM_THRESHOLDS[precision]
    extra, notes = {}, [f"gated against the {gate.reference} golden"]
    if gate.reference == "dequantized":  # what DecoderFamily.judge records: figures vs fp32 PyTorch, not gated
        vs = lm_metrics(1e5, 71, 74)
        extra["vs_fp32"] = {key: x for key, x in vs.items() if key != "prompts"}
    return {"variant": variant, "precision": precision, "verdict": "pass", "thresholds": gate.to_json(),
            "metrics": lm_metrics(k, 80, 80), "failures": [], "notes": notes, "seconds": 2.0 * k, "extra": extra}


def manifest(family: str, target: str) -> dict[str, Any]:
    variants = PAIRS[(family, target)]
    result = {DECODER: decoder_result, MULTI: multi_result}.get(family, encoder_result)
    files = {}
    for i, (file, _) in enumerate(variants.values()):
        if file.endswith(".mlpackage"):
            files[f"{file}/Manifest.json"] = {"sha256": "a" * 64, "bytes": 600}
            files[f"{file}/Data/com.apple.CoreML/weights/weight.bin"] = {"sha256": "b" * 64, "bytes": 2_400_000 >> i}
        else:
            files[file] = {"sha256": "c" * 64, "bytes": 3_000_000 >> i}
    files["tokenizer.json"] = {"sha256": "d" * 64, "bytes": 9_000}
    target_section: dict[str, Any] = {"name": target, "family": family, "layout": f"{target} layout",
                                      "variants": {v: {"file": f, "precision": p, "description": f"{p} weights"}
                                                   for v, (f, p) in variants.items()}}
    if family == DECODER and target == "coreml":
        target_section.update(context_length=512, eos_token_id=[2, 7])
    if target == "mlc":  # what targets/mlc/encoder.py records
        target_section["special_tokens"] = MLC_SPECIALS
        for v, entry in target_section["variants"].items():
            entry["model_lib"] = f"{v}/tiny-model-{v}-webgpu.wasm"
    runtime = {"onnx": "onnxruntime 1.31.1", "coreml": "milinterp (Linux)", "mlx": "mlx 0.32.4 (cpu)",
               "mlc": "node (wasm)"}[target]
    return {
        "manifest_version": 2, "created": 1_790_000_000,
        "command": ["modelport", "convert", "tiny-model", "--target", target, "--out", f"artifacts/tiny/{target}"],
        "platform": {"system": "Linux", "machine": "x86_64", "python": "3.11.7"},
        "tools": {"modelport": "0.1.0", "python": "3.11.7"}, "images": {},
        "source": {"name": "tiny-model", "origin": "hf:org/tiny-model@main", "hub_id": "org/tiny-model",
                   "revision": "0123456789abcdef0123456789abcdef01234567", "license": "apache-2.0", "weights": {}},
        "recipe": RECIPES[family], "lint": [], "target": target_section,
        "validation": {"status": "pass", "family": family, "target": target, "runtime": runtime, "notes": [],
                       "variants": {v: result(v, p, k) for k, (v, (_, p)) in enumerate(variants.items(), 1)}},
        "files": files,
    }


def front_matter(card: str) -> dict[str, Any]:
    match = re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def section(card: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", card, re.DOTALL | re.MULTILINE)
    assert match, f"no '## {title}' section in:\n{card}"
    return match.group(0)


def validation_table(card: str) -> tuple[list[str], list[dict[str, str]]]:
    """The first Markdown table of the Validation section: header cells, one dict per row."""
    lines = [ln for ln in section(card, "Validation").splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    head, rule, *rows = cells
    assert all(set(c) == {"-"} for c in rule)
    return head, [dict(zip(head, row, strict=True)) for row in rows]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("family, target", list(PAIRS), ids=[f"{f}-{t}" for f, t in PAIRS])
def test_card_front_matter_and_usage_come_from_the_family(family: str, target: str) -> None:
    man = manifest(family, target)
    card = modelcard.render(man, REPO)
    meta = front_matter(card)
    assert meta["pipeline_tag"] == families.get(family).pipeline_tag
    assert meta["pipeline_tag"] == ("text-generation" if family == DECODER else "feature-extraction")
    assert meta["library_name"] == LIBRARY[target]
    assert meta["tags"] == ["modelport", target, *PAIRS[(family, target)]]
    assert meta["base_model"] == "org/tiny-model" and meta["license"] == "apache-2.0"

    usage = section(card, "Usage")
    assert usage.count("```") == 2
    assert not re.search(r"\{[a-z_]+\}", usage), "an unfilled template field"  # every field was formatted
    first_variant, (first_file, _) = next(iter(PAIRS[(family, target)].items()))
    if family == DECODER:
        for encoder_only in ("pooling", "feature-extraction", "embedding", "sentence_embedding"):
            assert encoder_only not in usage, encoder_only
        expected = {
            "onnx": [f'pipeline("text-generation", "{REPO}", {{ dtype: "{first_variant}"',
                     '{ role: "user", content:', "max_new_tokens"],
            "mlx": ["from mlx_lm import generate, load", f'allow_patterns=["{first_variant}/*"]',
                    "tokenizer.apply_chat_template(", "generate(model, tokenizer, prompt=prompt"],
            "coreml": [first_file, "model.makeState()", "context 512 tokens", "eos: [2, 7]", '"causal_mask"'],
            "mlc": ["model_type: 0, // ModelType.LLM", f'model_id: "tiny-model-{first_variant}"',
                    f'model: files + "{first_variant}/",',
                    f'model_lib: files + "{first_variant}/tiny-model-{first_variant}-webgpu.wasm",',
                    "engine.chat.completions.create(", '{ role: "user", content:'],
        }[target]
    elif family in (EMBEDDER, MULTI):  # the graph finishes the embedding: read sentence_embedding, add the prompt
        assert "pipeline(" not in usage and "pooling: " not in usage
        outputs = "sentence_embedding, sparse_weights, colbert_vectors" if family == MULTI else "sentence_embedding"
        query = '"task: search result | query: "' if family == EMBEDDER else '""'
        expected = {
            "onnx": [f'AutoModel.from_pretrained("{REPO}", {{ dtype: "{first_variant}"', f"const {{ {outputs} }}",
                     f"const queries = [{query} + "],
            "coreml": [first_file, 'featureValue(for: "sentence_embedding")', query],
            "mlx": ["from modelport.targets.mlx.embedder import load_model", f"config_sentence_transformers.json: {query}",
                    'model.encode(["What is the capital of France?"], prompt_name="query")'],
        }[target]
        if family == EMBEDDER:
            expected.append("Dense 96->384, Dense 384->96, L2 normalize")
    else:
        assert "text-generation" not in usage and "makeState" not in usage and "mlx_lm" not in usage
        expected = {
            "onnx": [f'pipeline("feature-extraction", "{REPO}", {{ dtype: "{first_variant}"',
                     'pooling: "mean", normalize: true', "[1, 384]"],
            "coreml": [first_file, '"token_type_ids": tokenTypeIds', 'featureValue(for: "sentence_embedding")'],
            "mlx": [f'allow_patterns=["{first_variant}/*"]', "mx.zeros_like(ids)", "mean pooling, L2-normalized"],
            "mlc": ["model_type: 1, // ModelType.embedding", f'model_id: "tiny-model-{first_variant}"',
                    f'const files = "https://huggingface.co/{REPO}/resolve/main/";',
                    f'model: files + "{first_variant}/",',
                    f'model_lib: files + "{first_variant}/tiny-model-{first_variant}-webgpu.wasm",',
                    'const withSpecialTokens = (text) => "[CLS] " + text + " [SEP]";',
                    '.map(withSpecialTokens)'],
        }[target]
    for text in expected:
        assert text in usage, f"{text!r} not in:\n{usage}"


@pytest.mark.parametrize("family, target", list(PAIRS), ids=[f"{f}-{t}" for f, t in PAIRS])
def test_validation_table_has_the_family_columns_filled(family: str, target: str) -> None:
    man = manifest(family, target)
    card = modelcard.render(man, REPO)
    head, rows = validation_table(card)
    figures = {ENCODER: ["tok max abs", "pooled max abs", "cos min", "cos mean", "top-5"],
               EMBEDDER: ["tok max abs", "pooled max abs", "cos min", "cos mean", "top-5"],
               MULTI: ["pooled max abs", "cos min", "sparse max abs", "terms min", "colbert max abs", "MaxSim max abs"],
               DECODER: ["prefill max abs", "step max abs", "KV vs full", "top-1 vs fp32", "KL vs fp32"]}[family]
    assert head[:4] == ["variant", "precision", "verdict", "size"] and head[-1] == "gate"
    assert set(figures) <= set(head)
    assert ("cos min" if family == DECODER else "prefill max abs") not in head  # not the other family's
    val = man["validation"]["variants"]
    assert [r["variant"] for r in rows] == list(PAIRS[(family, target)]) == list(val)
    for row in rows:
        result = val[row["variant"]]
        assert row["precision"] == result["precision"] and row["verdict"] == "pass"
        assert row["size"].endswith(("MB", "kB"))
        for col in figures:
            assert is_number(row[col]), f"{row['variant']} {col}: {row[col]!r} (a figure, not a dash)"
        assert row["gate"] not in ("", "–")
        m = result["metrics"]
        if family in (ENCODER, EMBEDDER):
            assert row["tok max abs"] == f"{m['tokens_max_abs']:.1e}" and row["cos min"] == f"{m['cos_min']:.6f}"
            continue
        if family == MULTI:
            assert row["sparse max abs"] == f"{m['sparse_max_abs']:.1e}" and row["cos min"] == f"{m['cos_min']:.6f}"
            continue
        gate = result["thresholds"]
        vs = result["extra"].get("vs_fp32", m)
        assert row["golden"] == gate["reference"]
        assert row["prefill max abs"] == f"{m['prefill_max_abs']:.1e}"
        assert row["step max abs"] == f"{m['step_max_abs']:.1e}"
        assert row["KV vs full"] == f"{m['kv_vs_full_max_abs']:.1e}"
        assert row["greedy"] == f"{m['greedy_equal']}/{m['greedy_total']}" == "80/80"
        assert row["top-1 vs fp32"] == f"{vs['top1_agreement']:.3f}" and row["KL vs fp32"] == f"{vs['kl_mean']:.1e}"
        assert f"max abs {gate['prefill_max_abs']:g}" in row["gate"]
    if family == DECODER:
        quantized = rows[1]
        assert quantized["golden"] == "dequantized" and quantized["top-1 vs fp32"] == f"{74 / 80:.3f}"
        assert rows[0]["golden"] == "fp32" and rows[0]["top-1 vs fp32"] == "1.000"
        assert "dequantized" in section(card, "Validation") and "greedy decoding" in section(card, "Validation")
    else:
        assert "pooled embedding" in section(card, "Validation")


def test_relative_fp16_gate_is_one_markdown_cell() -> None:
    """A relative gate names max |logit|: its bars are escaped, or the row would gain columns."""
    man = manifest(DECODER, "mlx")
    man["target"]["variants"]["f16"] = {"file": "f16/model.safetensors", "precision": "fp16", "description": "f16"}
    man["validation"]["variants"]["f16"] = decoder_result("f16", "fp16", 3)
    head, rows = validation_table(modelcard.render(man, REPO))
    f16 = next(r for r in rows if r["variant"] == "f16")
    assert f16["gate"] == r"max abs 0.004 × max \|logit\|, top-1 where gap > 2 × step limit" \
        and is_number(f16["prefill max abs"])


def test_a_failed_or_missing_figure_shows_a_dash_not_a_crash() -> None:
    man = manifest(DECODER, "onnx")
    q4 = man["validation"]["variants"]["q4"]
    q4.update(verdict="fail", metrics=None, extra={}, failures=["could not run: RuntimeError: boom"])
    card = modelcard.render(man, REPO)
    _, rows = validation_table(card)
    assert rows[1]["verdict"] == "fail" and rows[1]["prefill max abs"] == "–" and rows[1]["greedy"] == "–"
    assert "- q4: could not run: RuntimeError: boom" in card


def test_no_snippet_for_a_pair_that_does_not_convert() -> None:
    """A target without a usage snippet for the family: no usage section, but the rest of the card
    (tables, files) stands."""
    assert families.get(DECODER).card_usage("gguf") is None
    man = manifest(DECODER, "mlx")
    man["target"]["name"] = "gguf"
    card = modelcard.render(man, REPO)
    assert "## Usage" not in card and "## Validation" in card and "## Files" in card
    assert front_matter(card)["pipeline_tag"] == "text-generation"


def test_every_converting_pair_has_a_snippet_and_no_other() -> None:
    from modelport.targets import REGISTRY

    registered = {(family, target) for target, family in REGISTRY.pairs()}
    assert registered == set(PAIRS)  # the table above covers every pair the registry converts
    for family in families.FAMILIES.values():
        for target in REGISTRY.targets:
            assert (family.card_usage(target) is not None) == ((family.name, target) in registered), (family, target)
    for (family, target), variants in PAIRS.items():  # and names their variants as the converters do
        table = REGISTRY.converter_class(target, family).variants
        assert {v: (table[v].path, table[v].precision) for v in variants} == variants, (family, target)


def test_card_family_falls_back_to_the_recipe() -> None:
    """Hand-made manifests (and tests/test_hub's relabelled ones) may lack target.family."""
    man = manifest(DECODER, "onnx")
    del man["target"]["family"]
    assert front_matter(modelcard.render(man, REPO))["pipeline_tag"] == "text-generation"


def test_mlc_snippet_uses_the_recorded_special_tokens_and_model_library() -> None:
    """WebLLM's tokenizer adds no special tokens, so the snippet wraps texts in the ones the manifest
    records (here XLM-R's, not BERT's) and names the model library the converter wrote."""
    man = manifest(ENCODER, "mlc")
    man["target"]["special_tokens"] = {**MLC_SPECIALS, "prefix": ["<s>"], "suffix": ["</s>"]}
    man["target"]["variants"]["f32"]["model_lib"] = "f32/other-name-f32-webgpu.wasm"
    usage = section(modelcard.render(man, REPO), "Usage")
    assert 'const withSpecialTokens = (text) => "<s> " + text + " </s>";' in usage
    assert 'model_lib: files + "f32/other-name-f32-webgpu.wasm",' in usage
    assert "[CLS]" not in usage and "<model library" not in usage


def test_mlc_card_without_the_recorded_library_says_so_instead_of_guessing() -> None:
    """A manifest that does not record the model library (or the special tokens) gets no snippet
    with a made-up file name, but a line saying what is missing."""
    man = manifest(ENCODER, "mlc")
    del man["target"]["variants"]["f32"]["model_lib"]
    usage = section(modelcard.render(man, REPO), "Usage")
    assert "```" not in usage and "does not record the model_lib of variant f32" in usage


def test_mlc_snippet_carries_the_required_features_of_the_variant() -> None:
    """A card whose first variant needs shader-f16 (f16, q4f16_1) declares it in the ModelRecord, so
    WebLLM refuses it on a GPU without the feature instead of failing inside a shader; f32 declares none."""
    man = manifest(ENCODER, "mlc")
    man["target"]["variants"] = {"q4f16_1": {**man["target"]["variants"]["f16"], "required_features": ["shader-f16"],
                                             "model_lib": "q4f16_1/tiny-model-q4f16_1-webgpu.wasm"},
                                 "f32": {**man["target"]["variants"]["f32"], "required_features": []}}
    man["validation"]["variants"] = {"q4f16_1": man["validation"]["variants"]["f16"],
                                     "f32": man["validation"]["variants"]["f32"]}
    usage = section(modelcard.render(man, REPO), "Usage")
    assert '    required_features: ["shader-f16"],' in usage
    man["target"]["variants"] = {"f32": man["target"]["variants"]["f32"]}
    man["validation"]["variants"] = {"f32": man["validation"]["variants"]["f32"]}
    assert "required_features" not in section(modelcard.render(man, REPO), "Usage")


def test_mlc_size_is_the_variant_package_not_its_tensor_cache() -> None:
    """An MLC variant's `file` is tensor-cache.json (a few kB); its weight is the folder's shards."""
    man = manifest(ENCODER, "mlc")
    man["files"]["f32/params_shard_0.bin"] = {"sha256": "e" * 64, "bytes": 40_000_000}
    man["target"]["variants"]["f32"]["package"] = "f32/"
    _, rows = validation_table(modelcard.render(man, REPO))
    sizes = {r["variant"]: r["size"] for r in rows}
    assert sizes["f32"] == "43.0 MB" and sizes["f16"] == "1.5 MB"  # f16 records no package: its file alone
