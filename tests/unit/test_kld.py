"""kld.py's figures on synthetic logits (closed-form cases), its windows and storage, and the tie-aware
token gate of thresholds.check_lm on a toy decoder. NumPy only: no model, no runtime."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from modelport import kld, lm
from modelport.thresholds import LM_THRESHOLDS, check_kld, check_lm

from .test_lm_spine import EOS, PROMPTS, ToyLM, toy_golden


def _stats(ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray, dtype=np.float32) -> dict:
    lp = kld.log_softmax(ref_logits)
    label_lp = np.take_along_axis(lp, labels[:, None], -1)[:, 0]
    return kld.kld_stats(lp.astype(dtype), lp.argmax(-1), label_lp, labels, logits)


# --- the metric math ------------------------------------------------------------------------------


def test_identical_distributions_score_zero() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 64)) * 4
    labels = rng.integers(0, 64, 40)
    s = _stats(logits, logits + 7.0, labels)  # a constant shift is the same distribution
    assert s["kld_mean"] == pytest.approx(0, abs=1e-12) and s["kld_max"] == pytest.approx(0, abs=1e-12)
    assert s["same_top1"] == 1.0 and s["dp_rms"] == pytest.approx(0, abs=1e-7)
    assert s["ppl_ratio"] == pytest.approx(1.0, abs=1e-7) and s["positions"] == 40


def test_a_two_token_case_has_its_closed_form_values() -> None:
    """p = (1/2, 1/2), q = (3/4, 1/4), correct token 0:
    KL(p||q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); Δp = 3/4 - 1/2; PPL(q)/PPL(p) = (1/q0)/(1/p0) = 2/3."""
    ref = np.zeros((1, 2))
    got = np.log(np.array([[0.75, 0.25]]))
    s = _stats(ref, got, np.array([0]))
    assert s["kld_mean"] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert s["dp_mean"] == pytest.approx(0.25, rel=1e-6) and s["dp_rms"] == pytest.approx(0.25, rel=1e-6)
    assert s["ppl_ratio"] == pytest.approx(2 / 3, rel=1e-6)
    assert s["ppl_golden"] == pytest.approx(2.0, rel=1e-6) and s["ppl_variant"] == pytest.approx(4 / 3, rel=1e-6)
    # ties go to the first index (np.argmax), like the golden's stored argmax
    assert s["same_top1"] == 1.0


def test_percentiles_mean_and_signed_dp_over_known_rows() -> None:
    """Rows p = (1/2, 1/2) against q = (a, 1 - a): KL = -1/2 ln(4a(1 - a)), Δp(token 0) = a - 1/2."""
    a = np.linspace(0.5, 0.9, 101)
    ref = np.zeros((a.size, 2))
    got = np.log(np.stack([a, 1 - a], axis=1))
    want = -0.5 * np.log(4 * a * (1 - a))
    s = _stats(ref, got, np.zeros(a.size, dtype=np.int64))
    assert s["kld_mean"] == pytest.approx(want.mean(), rel=1e-9)
    assert s["kld_median"] == pytest.approx(np.median(want), rel=1e-9)
    assert s["kld_p99"] == pytest.approx(np.percentile(want, 99), rel=1e-9)
    assert s["kld_max"] == pytest.approx(want.max(), rel=1e-9)
    assert s["dp_mean"] == pytest.approx((a - 0.5).mean(), rel=1e-6)
    assert s["dp_rms"] == pytest.approx(np.sqrt(((a - 0.5) ** 2).mean()), rel=1e-6)
    # token 0 is the argmax of every q (a > 1/2 except the first row, a tie that goes to index 0)
    assert s["same_top1"] == 1.0
    flipped = _stats(ref, got[:, ::-1], np.zeros(a.size, dtype=np.int64))
    assert flipped["same_top1"] == pytest.approx(1 / a.size)  # only the tie row keeps index 0
    assert flipped["dp_mean"] == pytest.approx(-s["dp_mean"], rel=1e-6)  # the correct token lost what it gained


def test_float16_storage_error_stays_far_below_the_gate() -> None:
    """The golden's log-probs stored as float16 (large vocabularies) move the KLD by ~5e-7 (see
    kld.stored_logprobs), against a 1e-3 gate; argmax and label log-probs are stored exactly."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(256, 4096)) * 3.0
    labels = rng.integers(0, 4096, 256)
    for noise in (0.01, 0.05):
        got = ref + rng.normal(size=ref.shape) * noise
        exact = _stats(ref, got, labels, dtype=np.float64)
        half = _stats(ref, got, labels, dtype=np.float16)
        assert abs(half["kld_mean"] - exact["kld_mean"]) < 2e-6, noise
        assert half["same_top1"] == exact["same_top1"] and half["ppl_ratio"] == exact["ppl_ratio"]
    assert kld.stored_logprobs(np.zeros((4, 64, 512))).dtype == np.float32  # tiny vocabularies: exact
    assert kld.stored_logprobs(np.zeros((4, 64, 128256))).dtype == np.float16


# --- windows, golden, evaluate ---------------------------------------------------------------------


class CharTokenizer:
    """One id per character; optionally a BOS id added in front (as Llama's tokenizers do)."""

    def __init__(self, bos: int | None = None) -> None:
        self.bos_token_id = bos

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [ord(c) % 200 + 1 for c in text]
        bos = [self.bos_token_id] if add_special_tokens and self.bos_token_id is not None else []
        return {"input_ids": bos + ids}


@pytest.mark.parametrize("bos", [None, 0])
def test_windows_are_consecutive_and_every_position_has_its_next_token(bos) -> None:
    tok = CharTokenizer(bos)
    ids, labels = kld.windows(tok, n=3, length=16)
    stream = tok("\n\n".join(kld.corpus_texts()), add_special_tokens=False)["input_ids"]
    assert ids.shape == labels.shape == (3, 16) and ids.dtype == labels.dtype == np.int64
    body = 16 - (bos is not None)
    for w in range(3):
        seq = ids[w, 1:] if bos is not None else ids[w]
        assert seq.tolist() == stream[w * body:(w + 1) * body]
        # the label of position t is the token after it: the next input, and for the last position
        # the first token of the next window
        assert labels[w, :-1].tolist() == ids[w, 1:].tolist()
        assert labels[w, -1] == stream[(w + 1) * body]
        if bos is not None:
            assert ids[w, 0] == bos
    with pytest.raises(Exception, match="KLD corpus"):
        kld.windows(tok, n=1000, length=64)


def test_corpus_is_fixed_and_not_a_validation_prompt() -> None:
    texts = kld.corpus_texts()
    assert len(texts) == 10 and all(len(t) > 150 for t in texts)
    prompts = [p.text for p in lm.PROMPTS] + [c for p in lm.PROMPTS for _, c in p.messages]
    assert not any(p and p in t for p in prompts for t in texts)


def _toy_golden(model: ToyLM, n: int = 3, length: int = 20) -> kld.KLDGolden:
    rng = np.random.default_rng(5)
    stream = rng.integers(0, 50, n * length + 1)
    ids = np.stack([stream[w * length:(w + 1) * length] for w in range(n)])
    labels = np.stack([stream[w * length + 1:(w + 1) * length + 1] for w in range(n)])
    logits = np.stack([model.prefill(ids[w:w + 1])[0] for w in range(n)])
    return kld.golden_from_logits(ids, labels, logits, {"corpus": "toy"})


def test_evaluate_through_a_runner_and_first_divergence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    golden = _toy_golden(ToyLM())
    golden.save(tmp_path / "a")
    golden.save(tmp_path / "b")
    a, b = (tmp_path / d / "reference/kld_golden.npz" for d in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    golden = kld.KLDGolden.load(tmp_path / "a")
    prompts = [SimpleNamespace(name="a", greedy_prefix=16), SimpleNamespace(name="b", greedy_prefix=5)]
    same = kld.evaluate(golden, ToyLM(), prompts)
    assert same.positions == 60 and same.kld_max == pytest.approx(0, abs=1e-9) and same.same_top1 == 1.0
    assert same.first_divergence == {"a": 16, "b": 5} and same.first_divergence_min == 5
    noisy = kld.evaluate(golden, ToyLM(noise=0.3))
    assert noisy.kld_mean > 1e-3 and noisy.kld_max >= noisy.kld_p99 >= noisy.kld_median > 0
    assert noisy.first_divergence is None and "first_divergence" not in noisy.to_json()
    # the gate reads the report
    assert check_kld("w8", same.to_json()) == [] and check_kld("fp16", noisy.to_json()) == []
    failures = check_kld("w8", noisy.to_json())
    assert len(failures) == 1 and failures[0].startswith("mean KLD")
    # a same-top-1 gate (none of the shipped precisions has one: see thresholds, w8)
    with_top1 = dataclasses.replace(LM_THRESHOLDS["w8"], kld_mean_max=None, same_top1_min=0.99)
    monkeypatch.setitem(LM_THRESHOLDS, "w8", with_top1)
    assert check_kld("w8", same.to_json()) == []
    assert [f[:11] for f in check_kld("w8", {**same.to_json(), "same_top1": 0.98})] == ["same top-1 "]


def test_a_short_context_scores_each_windows_causal_prefix() -> None:
    golden = _toy_golden(ToyLM())
    runner = ToyLM()
    runner.context = 8
    report = kld.evaluate(golden, runner)
    assert report.positions == 3 * 8 and report.kld_max == pytest.approx(0, abs=1e-9)
    assert "first 8 positions" in report.note


# --- the tie-aware token gate (thresholds.check_lm) ------------------------------------------------


TOY_SEED = 1  # a toy whose golden has a near-tie (smallest top-2 gap 0.011) and decisive steps (up to 8.7)


class FlipAt(ToyLM):
    """ToyLM whose row at step `step` of prompt `prompt` has its top-2 swapped: each of the two logits moves
    0.51 x their gap toward and past the other (the smallest logit error that swaps them); every other
    row is exact."""

    def __init__(self, golden: lm.LMGolden, prompt: str, step: int) -> None:
        super().__init__(seed=TOY_SEED)
        self.golden, self.prompt_ids, self.step = golden, golden.input_ids(prompt)[0].tolist(), step

    def _logits(self, tokens: list[int], t: int) -> np.ndarray:
        out = super()._logits(tokens, t)
        if tokens[:len(self.prompt_ids)] == self.prompt_ids and t == len(self.prompt_ids) - 1 + self.step:
            row = out.copy()
            row[EOS] = -np.inf
            a, b = np.argsort(row)[-1], np.argsort(row)[-2]
            move = 0.51 * (out[a] - out[b])
            out[a], out[b] = out[a] - move, out[b] + move
        return out


def _gap(golden: lm.LMGolden, prompt: str, step: int) -> float:
    return lm.top2_gap(golden.step_logits(prompt)[step], golden.eos_ids)


def test_a_flip_at_a_near_tie_passes_and_a_decisive_one_fails() -> None:
    """A swapped top-2 needs a logit error of just over half their gap. Under the relative fp16 gate the tie
    bound is 2 x 4e-3 x max |logit|: the smallest-gap step of the toy is below it (that flip stays inside
    the max-abs gate and passes, though free-running greedy then differs), the largest far above (fails)."""
    golden = toy_golden(ToyLM(seed=TOY_SEED), PROMPTS)
    gaps = sorted((_gap(golden, p, s), p, s) for p in PROMPTS for s in range(lm.STEPS))
    scale = lm.golden_logit_scale(golden)
    bound = LM_THRESHOLDS["fp16"].tie_bound(scale)
    (small, p_small, s_small), (large, p_large, s_large) = gaps[0], gaps[-1]
    assert small < bound < large
    near = lm.evaluate_lm(golden, FlipAt(golden, p_small, s_small))
    assert near.top1_equal == near.top1_total - 1 and near.prompts[list(PROMPTS).index(p_small)].top1_misses
    assert near.greedy_equal < near.greedy_total  # the old 80/80-style gate would have failed it
    assert check_lm("fp16", near) == []
    far = lm.evaluate_lm(golden, FlipAt(golden, p_large, s_large))
    failures = check_lm("fp16", far)
    assert any(f.startswith("teacher-forced top-1 differs") and f"{p_large} step {s_large}" in f for f in failures)
    assert far.decisive_misses(bound) == [(p_large, s_large, pytest.approx(large))]


def test_the_client_token_gate_is_tie_aware_at_the_first_divergence() -> None:
    """transformers.js returns tokens only: its run is judged at the first step where its greedy text leaves
    the golden's, by the golden's top-1/top-2 gap there (the steps after it belong to another text)."""
    from modelport.clients import textgen

    golden = toy_golden(ToyLM(seed=TOY_SEED), PROMPTS)
    gaps = sorted((_gap(golden, p, s), p, s) for p in PROMPTS for s in range(lm.STEPS))
    man = {"target": {"variants": {"fp16": {"precision": "fp16", "file": "model_fp16.onnx"}}}, "files": {}}

    class SameAsClient:  # Python onnxruntime agreeing with the client: only the golden check is left
        def __init__(self, tokens: dict) -> None:
            self.by_ids = tokens

        def tokens(self, variant: str, ids: list[int]) -> list[int]:
            return self.by_ids[tuple(ids)]

    def judge(prompt: str, step: int) -> dict:
        prompts, by_ids = [], {}
        for name in PROMPTS:
            ids = golden.input_ids(name)[0].tolist()
            tokens = golden.greedy_tokens(name).tolist()
            if name == prompt:  # the runner-up token at `step`, then anything
                row = golden.step_logits(name)[step].astype(np.float64)
                row[golden.eos_ids] = -np.inf
                tokens[step] = int(np.argsort(row)[-2])
                tokens[step + 1:] = [0] * (len(tokens) - step - 1)
            prompts.append({"name": name, "input_ids": ids, "tokens": tokens, "text": ""})
            by_ids[tuple(ids)] = tokens
        entry, _ = textgen.judge_run(golden, {"fp16": golden}, man, "fp16", {"status": "ok", "prompts": prompts},
                                     SameAsClient(by_ids))
        return entry

    (_, p_small, s_small), (_, p_large, s_large) = gaps[0], gaps[-1]
    near = judge(p_small, s_small)
    assert near["verdict"] == "pass", near["failures"]
    assert near["metrics"]["greedy_equal_golden"] < near["metrics"]["greedy_total"]  # reported, not gated
    far = judge(p_large, s_large)
    assert far["verdict"] == "fail" and far["failures"][0].startswith(f"{p_large}: greedy token {s_large} differs")
