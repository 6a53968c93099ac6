"""KLD report for decoder LLMs: how far a variant's next-token distributions are from PyTorch fp32's.

The field's reference for judging a quantized LLM is llama.cpp's `llama-perplexity --kl-divergence`:
the full-vocabulary distributions of the original model on a fixed text, compared position by
position with the quantized model's. modelport computes the same figures through each target's own
runtime (`lm.LMRunner.prefill`: onnxruntime, MLX, the Core ML interpreter or Core ML itself):

  kld_mean / median / p99 / max   KL(golden || variant) per position, in nats (natural log)
  same_top1                       share of positions whose argmax equals the golden's ("same top p")
  dp_mean / dp_rms                Δp = p_variant(correct next token) - p_golden(correct next token)
  ppl_ratio                       PPL(variant) / PPL(golden) = exp(mean(log p_golden - log p_variant))
                                  over the correct next tokens
  first_divergence                first step where the variant's own greedy decoding leaves the fp32
                                  golden's, per validation prompt (from lm.evaluate_lm's greedy run;
                                  lm.STEPS = never)

The text: `quant/data/kld-v1.jsonl` (ordinary English paragraphs, none of them a validation prompt
or a calibration/dev text), joined by blank lines, tokenized once without special tokens, and cut
into WINDOWS consecutive windows of WINDOW tokens. Each window is one prefill from an empty cache and
EVERY position of it is scored (llama.cpp scores the second half of each window only, to give every
scored token a long context; here the point is the distance between two models on the same input,
which a short context does not bias, and scoring every position uses every token the runtime ran).
Labels are the next token of the stream, so the last position of a window is scored too. A tokenizer
that starts every sequence with BOS gets BOS + WINDOW - 1 corpus tokens per window.

Why 4 windows x 64 tokens (256 positions): the report runs for every decoder variant of every
conversion, CI included, so it must stay a small part of validation: measured on the tiny Llama
(busy 2-core machine) 0.25 s per variant with the Core ML interpreter, 0.36 s with MLX, plus a
0.2 s golden and a 455 kB reference/kld_golden.npz. 256 positions still resolve a 1 % same-top-1
share (2.6 positions) and put a mean KLD of 1e-3 eight orders above the float32 floor (fp32
variants measure 1e-14 to 1e-12). 64 tokens also fit the smallest context the Core ML
decoder tests build (64); a runtime with a shorter context scores each window's causal prefix.

Storage (the golden, `reference/kld_golden.npz` + `.json`): per position the label, the label's
log-prob and the argmax in float32/int (exact), and the full-vocabulary log-probs:
  float32 when positions x vocab <= FP32_MAX_VALUES (4M values, 16 MB): every tiny model (512 x 256
  = 131k values, 0.5 MB); float16 above it (Llama-3's 128256 x 256 = 32.8M values: 65.7 MB instead
  of 131 MB; the validation golden, lm_golden.npz, already stores ~150 float32 rows of that width).
Error of float16 log-probs (derivation in `stored_logprobs`): log p keeps 11 significant bits, so p is
off by a relative 2^-11 |log p| at most; the KLD estimate then moves by KL(p~||p) (second order,
~1e-7) plus sum (p~ - p) log(p/q), which is first order in that error but multiplied by log(p/q), the
variant's own distance. Measured (synthetic: 256 positions, vocab 4096, logits N(0, 3^2), Gaussian
noise on the variant's): 4.4e-7 absolute at a mean KLD of 1.1e-3 (0.04 %), 4.9e-7 at 4.5e-5 (1 %), so
a floor near 5e-7, 2000x below the 1e-3 gate (tests/unit/test_kld.py checks it stays < 2e-6). The argmax
and the label log-probs are stored exactly, so same-top-1, Δp and the perplexity ratio carry no
storage error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .fsutil import read_json, write_json
from .lm import REFERENCE_DIR, LMRunner

KLD_VERSION = "1"
CORPUS = "kld-v1"
WINDOWS = 4
WINDOW = 64
GOLDEN = "kld_golden"
FP32_MAX_VALUES = 1 << 22


def corpus_texts(name: str = CORPUS) -> tuple[str, ...]:
    from .quant import texts

    return texts.load(name)


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def windows(tokenizer, n: int = WINDOWS, length: int = WINDOW, name: str = CORPUS) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids [n, length], labels [n, length]) int64: consecutive windows of the corpus' tokens;
    labels[w, t] is the token after input_ids[w, t] in the stream."""
    from .errors import ModelportError

    stream = tokenizer("\n\n".join(corpus_texts(name)), add_special_tokens=False)["input_ids"]
    bos = _adds_bos(tokenizer)
    body = length - int(bos)
    if len(stream) < n * body + 1:
        raise ModelportError(f"the KLD corpus {name} has {len(stream)} tokens with this tokenizer; "
                             f"{n} windows of {length} need {n * body + 1}")
    ids, labels = [], []
    for w in range(n):
        chunk = stream[w * body:(w + 1) * body + 1]  # body + 1 tokens: the inputs and one more label
        ids.append(([tokenizer.bos_token_id] if bos else []) + chunk[:body])
        labels.append(chunk if bos else chunk[1:])  # BOS predicts the first corpus token
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def stored_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """The golden's log-probs as stored: float32, or float16 past FP32_MAX_VALUES (see the module
    docstring). Why float16 is enough: with p~ the stored distribution (renormalized on load),
    KL(p~||q) - KL(p||q) = KL(p~||p) + sum_i (p~_i - p_i) log(p_i / q_i). Rounding log p to float16
    moves p_i by a relative 2^-11 |log p_i| at most, so the first term is second order and the
    second is bounded by 2^-11 sum_i p_i |log p_i| |log(p_i / q_i)|: small where the variant is close
    to the golden, which is exactly where a KLD gate decides."""
    return logprobs.astype(np.float32 if logprobs.size <= FP32_MAX_VALUES else np.float16)


@dataclass
class KLDGolden:
    """The fixed windows and PyTorch fp32's distributions over them; reference/kld_golden.npz + .json."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def input_ids(self) -> np.ndarray:
        return self.arrays["input_ids"]

    @property
    def labels(self) -> np.ndarray:
        return self.arrays["labels"]

    def save(self, root: Path, name: str = GOLDEN) -> None:
        d = Path(root) / REFERENCE_DIR
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{name}.npz", "wb") as f:  # fixed zip timestamps: byte-stable
            np.savez_compressed(f, **self.arrays)
        write_json(d / f"{name}.json", self.meta)

    @classmethod
    def load(cls, root: Path, name: str = GOLDEN) -> "KLDGolden":
        d = Path(root) / REFERENCE_DIR
        with np.load(d / f"{name}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        return cls(meta=read_json(d / f"{name}.json"), arrays=arrays)

    @classmethod
    def exists(cls, root: Path, name: str = GOLDEN) -> bool:
        return (Path(root) / REFERENCE_DIR / f"{name}.npz").is_file()


def golden_from_logits(input_ids: np.ndarray, labels: np.ndarray, logits: np.ndarray,
                       meta: dict[str, Any] | None = None) -> KLDGolden:
    """A golden from the reference model's logits [n, T, V] (float32 or wider) on the windows."""
    lp = log_softmax(logits)
    label_lp = np.take_along_axis(lp, labels[..., None], -1)[..., 0]
    arrays = {"input_ids": np.asarray(input_ids, dtype=np.int64), "labels": np.asarray(labels, dtype=np.int64),
              "logprobs": stored_logprobs(lp), "top1": lp.argmax(-1).astype(np.int32),
              "label_logprob": label_lp.astype(np.float32)}
    meta = {**(meta or {}), "kld_version": KLD_VERSION, "windows": int(lp.shape[0]), "window": int(lp.shape[1]),
            "vocab_size": int(lp.shape[2]), "logprobs_dtype": str(arrays["logprobs"].dtype),
            "golden_ppl": float(np.exp(-label_lp.mean()))}
    return KLDGolden(meta=meta, arrays=arrays)


def compute_golden(model_dir: Path, trust_remote_code: bool = False, n: int = WINDOWS,
                   length: int = WINDOW) -> KLDGolden:
    """PyTorch fp32 (eager attention, the validation golden's loader) on the corpus windows: one
    forward pass per window from an empty cache."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from .torch_model import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids, labels = windows(tokenizer, n, length)
    model = load_causal_lm(Path(model_dir), trust_remote_code=trust_remote_code)
    with torch.no_grad():
        logits = np.stack([model(input_ids=torch.from_numpy(ids[w:w + 1])).logits[0].float().numpy()
                           for w in range(n)])
    meta = {"corpus": CORPUS, "bos": _adds_bos(tokenizer),
            "runtime": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "attn_implementation": "eager", "dtype": "float32"}}
    return golden_from_logits(ids, labels, logits, meta)


# ---------------------------------------------------------------------------------------------
# The figures


@dataclass
class KLDReport:
    positions: int
    kld_mean: float
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top1: float
    dp_mean: float
    dp_rms: float
    ppl_golden: float
    ppl_variant: float
    ppl_ratio: float
    first_divergence: dict[str, int] | None = None  # prompt -> first greedy step that differs (STEPS = none)
    first_divergence_min: int | None = None
    logprobs_dtype: str = "float32"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


def kld_stats(ref_logprobs: np.ndarray, ref_top1: np.ndarray, ref_label_logprob: np.ndarray, labels: np.ndarray,
              logits: np.ndarray) -> dict[str, float]:
    """The figures over N positions: ref_logprobs [N, V] (float32 or float16, renormalized here),
    ref_top1 [N], ref_label_logprob [N], labels [N], the variant's logits [N, V]."""
    lp = log_softmax(ref_logprobs)  # renormalizes a float16-stored golden; exact no-op otherwise
    lq = log_softmax(logits)
    kld = np.maximum((np.exp(lp) * (lp - lq)).sum(-1), 0.0)  # >= 0 mathematically; clip float64 rounding
    labels = np.asarray(labels, dtype=np.int64)
    lq_label = np.take_along_axis(lq, labels[:, None], -1)[:, 0]
    lp_label = np.asarray(ref_label_logprob, dtype=np.float64)
    dp = np.exp(lq_label) - np.exp(lp_label)
    return {
        "positions": int(kld.size),
        "kld_mean": float(kld.mean()),
        "kld_median": float(np.median(kld)),
        "kld_p99": float(np.percentile(kld, 99)),
        "kld_max": float(kld.max()),
        "same_top1": float((lq.argmax(-1) == np.asarray(ref_top1)).mean()),
        "dp_mean": float(dp.mean()),
        "dp_rms": float(np.sqrt((dp ** 2).mean())),
        "ppl_golden": float(np.exp(-lp_label.mean())),
        "ppl_variant": float(np.exp(-lq_label.mean())),
        "ppl_ratio": float(np.exp((lp_label - lq_label).mean())),
    }


def first_divergence(prompts: list[Any]) -> dict[str, int]:
    """Prompt -> the first greedy step whose token differs from the fp32 golden's (lm.PromptLM.greedy_prefix)."""
    return {p.name: int(p.greedy_prefix) for p in prompts}


def evaluate(golden: KLDGolden, runner: LMRunner, prompts: list[Any] | None = None,
             progress: Callable[[], Any] | None = None) -> KLDReport:
    """Prefill every window through `runner` and compare with the golden. `prompts`: the variant's
    lm.PromptLM results against the fp32 golden, for the first greedy divergence.

    A runner whose context is shorter than a window scores the window's first `context` positions:
    causal logits there depend on nothing later, so the golden's rows still apply."""
    ids = golden.input_ids
    keep = min(ids.shape[1], runner.context or ids.shape[1])
    rows = []
    for w in range(ids.shape[0]):
        logits, _ = runner.prefill(ids[w:w + 1, :keep])
        rows.append(np.asarray(logits, dtype=np.float32).reshape(keep, -1))
        if progress:
            progress()
    a = golden.arrays
    vocab = a["logprobs"].shape[-1]
    stats = kld_stats(a["logprobs"][:, :keep].reshape(-1, vocab), a["top1"][:, :keep].reshape(-1),
                      a["label_logprob"][:, :keep].reshape(-1), a["labels"][:, :keep].reshape(-1),
                      np.concatenate(rows))
    div = first_divergence(prompts) if prompts else None
    note = (f"context {keep} < window {ids.shape[1]}: each window's first {keep} positions scored"
            if keep < ids.shape[1] else "")
    return KLDReport(**stats, first_divergence=div, first_divergence_min=min(div.values()) if div else None,
                     logprobs_dtype=str(a["logprobs"].dtype), note=note)


def summary(report: dict[str, Any]) -> str:
    """One line for the validation notes."""
    return (f"KLD vs fp32 PyTorch over {report['positions']} corpus positions: mean {report['kld_mean']:.2e}, "
            f"p99 {report['kld_p99']:.2e}, max {report['kld_max']:.2e}; same top-1 {report['same_top1']:.3f}; "
            f"Δp rms {report['dp_rms']:.2e}; PPL ratio {report['ppl_ratio']:.4f}")
