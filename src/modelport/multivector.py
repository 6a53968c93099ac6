"""How BGE-M3's sparse and ColBERT outputs are measured and gated: one definition for the Python
validator (families/multivector.py) and the real-client check (clients/compare.py).

It lives outside `families` because `clients` cannot import `families` (families.encoder imports
clients); a second copy of these formulas in the client check drifted once (the lexical weight error
changed definition and the client failed BGE-M3 q8 at 0.202 while the validator passed it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .embedding import maxsim

TOP_TERMS = 10
TIE = 0.005  # as metrics.topk_agreement: swapping neighbours closer than this is not a retrieval error


@dataclass(frozen=True)
class MultiVectorGate:
    sparse_max_abs: float | None = None  # fp32: per-token weights on real tokens
    colbert_max_abs: float | None = None  # fp32: ColBERT vectors on real tokens
    terms_min: float | None = None  # worst text: share of the golden's top-10 terms in the variant's top-10
    sparse_rel_max: float | None = None  # worst lexical weight error / the golden's largest weight
    maxsim_max_abs: float | None = None  # largest MaxSim score error (scores lie in [-1, 1])
    maxsim_top5_mean: float | None = None  # top-5 retrieval agreement by MaxSim

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# fp32 as every fp32 gate. Reduced precisions: set on tiny-bge-m3's ONNX and MLX figures
# (docs/measurements.md, "BGE-M3") with the dense gates' margins, and checked on a BGE-M3 of another
# seed (tests/test_embedders.py).
MULTI_GATES: dict[str, MultiVectorGate] = {
    "fp32": MultiVectorGate(sparse_max_abs=1e-5, colbert_max_abs=1e-5),
    "fp16": MultiVectorGate(terms_min=0.9, sparse_rel_max=0.01, maxsim_max_abs=0.005, maxsim_top5_mean=0.95),
    "q8": MultiVectorGate(terms_min=0.7, sparse_rel_max=0.1, maxsim_max_abs=0.05, maxsim_top5_mean=0.85),
    "uint8": MultiVectorGate(terms_min=0.7, sparse_rel_max=0.1, maxsim_max_abs=0.05, maxsim_top5_mean=0.85),
    "w8": MultiVectorGate(terms_min=0.9, sparse_rel_max=0.02, maxsim_max_abs=0.01, maxsim_top5_mean=0.95),
    "q4": MultiVectorGate(terms_min=0.5, sparse_rel_max=0.25, maxsim_max_abs=0.1, maxsim_top5_mean=0.75),
    "q4f16": MultiVectorGate(terms_min=0.5, sparse_rel_max=0.25, maxsim_max_abs=0.1, maxsim_top5_mean=0.75),
    "w4": MultiVectorGate(terms_min=0.5, sparse_rel_max=0.25, maxsim_max_abs=0.1, maxsim_top5_mean=0.75),
    "pal6": MultiVectorGate(terms_min=0.7, sparse_rel_max=0.1, maxsim_max_abs=0.05, maxsim_top5_mean=0.85),
    "pal4": MultiVectorGate(terms_min=0.5, sparse_rel_max=0.25, maxsim_max_abs=0.1, maxsim_top5_mean=0.75),
}

# (gate / figure name, label, higher is better)
GATED = (
    ("sparse_max_abs", "sparse weights max abs", False),
    ("colbert_max_abs", "ColBERT vectors max abs", False),
    ("terms_min", f"top-{TOP_TERMS} lexical terms overlap (worst text)", True),
    ("sparse_rel_max", "lexical weight error / the golden's largest weight", False),
    ("maxsim_max_abs", "MaxSim score max abs", False),
    ("maxsim_top5_mean", "MaxSim top-5 agreement", True),
)


def top_terms(weights: dict[int, float], k: int = TOP_TERMS) -> set[int]:
    return {t for t, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:k]}


def lexical_scale(golden: Any) -> float:
    """The golden's largest lexical weight over all texts: what weight errors are measured against
    (a text whose terms all weigh ~0 would make a per-text ratio explode on rounding noise)."""
    return max(float(golden.output(c["name"], "sparse_weights").max()) for c in golden.cases)


@dataclass
class LexicalTally:
    """Per-text lexical comparisons, accumulated: top-10 term overlaps and the largest weight error."""

    terms: list[float] = field(default_factory=list)
    err: float = 0.0

    def add(self, ref: dict[int, float], got: dict[int, float]) -> None:
        every = set(ref) | set(got)
        if every:
            self.err = max(self.err, max(abs(got.get(t, 0.0) - ref.get(t, 0.0)) for t in every))
        if ref:
            top = top_terms(ref)
            self.terms.append(len(top & top_terms(got)) / len(top))

    def figures(self, scale: float) -> dict[str, float]:
        if not self.terms:
            return {}
        return {"terms_min": float(min(self.terms)), "terms_mean": float(np.mean(self.terms)),
                "sparse_rel_max": self.err / scale if scale > 0 else 0.0}


def score_topk(ref: np.ndarray, got: np.ndarray, k: int = 5, tie: float = TIE) -> float:
    """Mean share of the variant's top-k (by its scores) that reach the golden's k-th score minus a tie
    tolerance: metrics.topk_agreement's rule, on a score matrix (queries x corpus)."""
    shares = []
    for r, g in zip(ref, got):
        kth = np.sort(r)[::-1][k - 1]
        top = np.argsort(-g, kind="stable")[:k]
        shares.append(float(np.mean(r[top] >= kth - tie)))
    return float(np.mean(shares))


def maxsim_figures(ref: dict[int, np.ndarray], got: dict[int, np.ndarray], query_ids: list[int],
                   corpus_ids: list[int]) -> dict[str, float]:
    """MaxSim of every query against every corpus text (ColBERT vectors on real tokens, by text id)."""
    r = np.array([[maxsim(ref[q], ref[c]) for c in corpus_ids] for q in query_ids])
    g = np.array([[maxsim(got[q], got[c]) for c in corpus_ids] for q in query_ids])
    return {"maxsim_max_abs": float(np.abs(r - g).max()), "maxsim_top5_mean": score_topk(r, g)}


def gate_failures(figures: dict[str, float], gate: dict[str, float]) -> list[str]:
    """Failed multi-vector gates as readable lines; a figure or bound that is absent is not gated."""
    failures = []
    for key, label, higher_is_better in GATED:
        value, bound = figures.get(key), gate.get(key)
        if value is None or bound is None:
            continue
        if (value < bound) if higher_is_better else (value > bound):
            failures.append(f"{label} {value:.3g} {'<' if higher_is_better else '>'} {bound:g}")
    return failures
