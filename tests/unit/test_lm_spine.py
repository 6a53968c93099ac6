"""The decoder-LM spine without a model: lm.py's metrics on a NumPy toy decoder, recipes, lint,
bad input. Fast (no torch, no export), so it also runs where only the validator's packages are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport import lint, lm
from modelport.recipes import ARCHITECTURES, CAUSAL_LM, lm_recipe_for, recipe_for
from modelport.thresholds import LM_THRESHOLDS, check_lm

from ..conftest import convert

V = 50
EOS = 3


class ToyLM:
    """A causal toy decoder: logits at position t depend on tokens[:t+1] and t only.

    `break_cache` makes decode ignore the cached tokens (a dropped KV cache); `offset` shifts the
    positions decode uses (wrong position ids). Both must be caught by evaluate_lm.
    """

    context: int | None = None  # lm.LMRunner: no length limit

    def __init__(self, seed: int = 0, break_cache: bool = False, offset: int = 0, noise: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.emb = rng.normal(size=(V, 8))
        self.out = rng.normal(size=(8, V)) * 3
        self.pos = rng.normal(size=(64, 8))
        self.break_cache, self.offset, self.noise = break_cache, offset, noise
        self.rng = np.random.default_rng(seed + 1)

    def _logits(self, tokens: list[int], t: int) -> np.ndarray:
        h = self.emb[tokens[: t + 1]].mean(0) + self.pos[t]
        out = (np.tanh(h) @ self.out).astype(np.float32)
        if self.noise:
            out = out + self.rng.normal(scale=self.noise, size=V).astype(np.float32)
        return out

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        toks = [int(x) for x in input_ids.reshape(-1)]
        return np.stack([self._logits(toks, t) for t in range(len(toks))]), toks

    def decode(self, state: Any, token: int) -> tuple[np.ndarray, Any]:
        toks = ([] if self.break_cache else list(state)) + [token]
        t = len(toks) - 1 + (self.offset if not self.break_cache else 0)
        return self._logits(toks, min(t, 63)), ([*state, token])


def toy_golden(model: ToyLM, prompts: dict[str, list[int]], steps: int = lm.STEPS) -> lm.LMGolden:
    """A golden made the way compute_golden makes it (prefill + cached greedy, EOS masked)."""
    arrays: dict[str, np.ndarray] = {}
    metas = []
    for name, ids in prompts.items():
        x = np.asarray([ids], dtype=np.int64)
        toks, rows, prefill = lm.runner_greedy(model, x, steps, [EOS])
        arrays.update({f"{name}/input_ids": x, f"{name}/prefill_logits": prefill,
                       f"{name}/greedy_tokens": np.asarray(toks, dtype=np.int64), f"{name}/step_logits": rows})
        metas.append({"name": name, "text": name, "chat": False, "add_special_tokens": True, "messages": None})
    meta = {"prompts": metas, "steps": steps, "eos_token_id": [EOS], "vocab_size": V, "model_type": "toy"}
    return lm.LMGolden(meta=meta, arrays=arrays)


PROMPTS = {"a": [5, 6, 7], "b": [9], "c": [1, 2, 4, 8, 16, 32]}


def test_exact_runner_passes_the_fp32_gate() -> None:
    golden = toy_golden(ToyLM(), PROMPTS)
    m = lm.evaluate_lm(golden, ToyLM())
    assert m.prefill_max_abs == 0 and m.step_max_abs == 0 and m.kv_vs_full_max_abs == 0
    assert (m.greedy_equal, m.greedy_total, m.greedy_exact_prompts) == (48, 48, 3)
    assert m.top1_agreement == 1.0 and m.kl_mean == pytest.approx(0.0, abs=1e-12)
    assert check_lm("fp32", m) == []


def test_golden_rows_follow_the_contract() -> None:
    """step_logits row 0 = last prefill row; row i = after prompt + greedy[:i]; EOS never chosen."""
    model = ToyLM()
    golden = toy_golden(model, PROMPTS)
    for name, ids in PROMPTS.items():
        rows, toks = golden.step_logits(name), golden.greedy_tokens(name)
        assert rows.shape == (lm.STEPS, V) and toks.shape == (lm.STEPS,)
        np.testing.assert_array_equal(rows[0], golden.prefill_logits(name)[-1])
        full, _ = model.prefill(np.asarray([ids + toks[:-1].tolist()]))
        np.testing.assert_allclose(rows, full[len(ids) - 1:], atol=1e-6)
        assert EOS not in toks.tolist()


def test_eos_is_masked_even_when_it_is_the_argmax() -> None:
    row = np.zeros(V, dtype=np.float32)
    row[EOS], row[7] = 5.0, 1.0
    assert lm.greedy_pick(row, [EOS]) == 7
    assert lm.greedy_pick(row, []) == EOS


def test_a_dropped_kv_cache_fails() -> None:
    golden = toy_golden(ToyLM(), PROMPTS)
    m = lm.evaluate_lm(golden, ToyLM(break_cache=True))
    assert m.prefill_max_abs == 0  # prefill is fine: only the cached path is broken
    assert m.step_max_abs > 0.1 and m.kv_vs_full_max_abs > 0.1
    failures = check_lm("fp32", m)
    assert any("cached-decode" in f for f in failures) and any("KV-cache vs full" in f for f in failures)


def test_wrong_decode_positions_fail() -> None:
    golden = toy_golden(ToyLM(), PROMPTS)
    failures = check_lm("fp32", lm.evaluate_lm(golden, ToyLM(offset=1)))
    assert any("cached-decode" in f for f in failures)


def test_small_noise_passes_fp16_but_not_fp32() -> None:
    """Relative fp16 gate: noise far below it passes fp16, and the same runner fails the 1e-5 fp32 gate."""
    golden = toy_golden(ToyLM(), PROMPTS)
    m = lm.evaluate_lm(golden, ToyLM(noise=1e-4))
    assert m.greedy_agreement == 1.0
    assert check_lm("fp16", m) == []
    assert any("prefill" in f for f in check_lm("fp32", m))


def test_golden_save_load_round_trip_is_byte_stable(tmp_path: Path) -> None:
    golden = toy_golden(ToyLM(), PROMPTS)
    golden.save(tmp_path / "a")
    golden.save(tmp_path / "b", lm.golden_name("q4"))
    assert (tmp_path / "b/reference/lm_golden_q4.npz").is_file()
    again = lm.LMGolden.load(tmp_path / "a")
    assert again.prompt_names == list(PROMPTS) and again.eos_ids == [EOS]
    for k, v in golden.arrays.items():
        np.testing.assert_array_equal(again.arrays[k], v)
    again.save(tmp_path / "c")
    assert (tmp_path / "a/reference/lm_golden.npz").read_bytes() == (tmp_path / "c/reference/lm_golden.npz").read_bytes()


# --- recipes ---------------------------------------------------------------------------------------


def _config(model_type: str, **extra: Any) -> dict[str, Any]:
    return {"model_type": model_type, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 512, "eos_token_id": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, **extra}


@pytest.mark.parametrize("model_type,quirk", [("llama", "grouped-query-attention"), ("qwen2", "qkv-bias"),
                                              ("qwen3", "qk-norm"), ("smollm3", "nope-layers"),
                                              ("phi3", "fused-projections")])
def test_decoder_architectures_are_registered(tmp_path: Path, model_type: str, quirk: str) -> None:
    arch = ARCHITECTURES[model_type]
    assert arch.family == CAUSAL_LM and arch.is_decoder and "onnx" in arch.targets and ("mlc" in arch.targets) == (model_type != "phi3")
    r = recipe_for(tmp_path, _config(model_type, head_dim=32, tie_word_embeddings=True))
    assert quirk in r.to_json()["quirks"] and "tied-embeddings" in r.to_json()["quirks"]
    assert (r.num_kv_heads, r.head_dim, r.rope_theta, r.eos_token_id) == (2, 32, 10000.0, [2])
    assert r.tie_word_embeddings and not r.chat_template


def test_lm_recipe_reads_generation_config_eos_and_chat_template(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    r = lm_recipe_for(tmp_path, _config("llama"), ARCHITECTURES["llama"])
    assert r.eos_token_id == [7, 9] and r.chat_template
    assert r.head_dim == 32  # hidden / heads when head_dim is absent


# --- lint ------------------------------------------------------------------------------------------


def test_rope_parameters_only_is_named_for_onnx_decoders(tmp_path: Path) -> None:
    """transformers 5 writes rope_theta only in rope_parameters; optimum-onnx / transformers 4 misread it."""
    (tmp_path / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    (tmp_path / "chat_template.jinja").write_text("x")
    cfg = _config("smollm3", rope_parameters={"rope_type": "default", "rope_theta": 2000000.0})
    r = recipe_for(tmp_path, cfg)
    found = lint.run(tmp_path, cfg, r, "onnx")
    assert [(f.rule, f.severity) for f in found] == [("rope-parameters-only", "warning")]
    assert "rope_theta=2000000.0" in found[0].message and "optimum-onnx" in found[0].message
    assert lint.run(tmp_path, {**cfg, "rope_theta": 2000000.0}, r, "onnx") == []
    scaled = _config("llama", rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0})
    found = lint.run(tmp_path, {**scaled, "rope_theta": 5e5}, recipe_for(tmp_path, scaled), "onnx")
    assert [f.rule for f in found] == ["rope-parameters-only"] and "rope_scaling" in found[0].message


def test_decoder_without_chat_template_is_a_warning_and_no_pooling_rule_applies(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    cfg = _config("llama", rope_theta=10000.0)
    found = lint.run(tmp_path, cfg, recipe_for(tmp_path, cfg), "onnx")
    assert [(f.rule, f.severity) for f in found] == [("chat-template-missing", "warning")]


# --- bad input -------------------------------------------------------------------------------------


def test_decoder_a_target_cannot_carry_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # a complete checkpoint: the model directory checks (checkpoint.py) pass; Phi-3 is converted to ONNX only
    rc = convert("tiny-phi3", "--target", "mlc", "--out", str(tmp_path / "out"))
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "target 'mlc' does not support phi3 (causal-lm) yet (supported: onnx)" in err, err
    assert not (tmp_path / "out").exists()


def test_encoder_only_variant_for_a_decoder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = convert("tiny-qwen3", "--target", "onnx", "--variants", "fp32,q8", "--out", str(tmp_path / "o"))
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "unknown variant(s) q8; the onnx target writes for causal-lm models: fp32, fp16, q4, q4f16" in err
    assert not (tmp_path / "o").exists()


def test_every_lm_precision_has_a_gate() -> None:
    from modelport.targets.onnx.decoder import OnnxDecoder

    for v in OnnxDecoder.variants.values():
        assert v.precision in LM_THRESHOLDS
    assert LM_THRESHOLDS["fp32"].prefill_max_abs == 1e-5 and LM_THRESHOLDS["q4"].reference == "dequantized"


def test_tiny_bpe_tokenizer_is_deterministic_and_chatml() -> None:
    from modelport import tiny

    a, b = tiny._lm_tokenizer(), tiny._lm_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == tiny.LM_VOCAB and a.eos_token == "<|im_end|>"
    text = a.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = a(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == a.convert_tokens_to_ids("<|im_start|>")  # specials are single tokens
    # every validation prompt is covered by the byte-level vocabulary without unknown pieces
    for p in lm.PROMPTS:
        if p.text:
            assert a.decode(a(p.text)["input_ids"]) == p.text
