"""Distances between a runtime's outputs and the golden PyTorch outputs.

Only non-padding token positions are compared: PyTorch itself gives padding rows that differ by
kernel (quirk `padding-rows-undefined`), and no client reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CaseDiff:
    case: str
    tokens_max_abs: float
    pooled_max_abs: float
    cosines: list[float]  # one per row (text) in the case


def case_diff(case: str, mask: np.ndarray, ref_tokens: np.ndarray, tokens: np.ndarray,
              ref_pooled: np.ndarray, pooled: np.ndarray) -> CaseDiff:
    keep = mask.astype(bool)
    tok = np.abs(ref_tokens.astype(np.float64) - tokens.astype(np.float64))[keep]
    pd = np.abs(ref_pooled.astype(np.float64) - pooled.astype(np.float64))
    return CaseDiff(case, float(tok.max()), float(pd.max()), cosine_rows(ref_pooled, pooled).tolist())


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-30)


TIE_TOLERANCE = 0.005


def topk_agreement(ref: np.ndarray, got: np.ndarray, query_ids: list[int], corpus_ids: list[int],
                   k: int = 5, tie: float = TIE_TOLERANCE) -> tuple[float, float]:
    """Mean and min, over queries, of the share of the variant's top-k that the reference agrees with.

    A neighbour agrees when its reference similarity reaches the reference's k-th best minus `tie`:
    swapping two neighbours whose reference similarities differ by less than 0.005 is not a
    retrieval error (and on random test models, whose embeddings are nearly collinear, every
    neighbour ties, so strict ranking would only measure noise).
    """

    def sims(emb: np.ndarray) -> np.ndarray:
        q = emb[query_ids].astype(np.float64)
        c = emb[corpus_ids].astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        return q @ c.T

    ref_sims, got_sims = sims(ref), sims(got)
    overlaps = []
    for r, g in zip(ref_sims, got_sims):
        kth = np.sort(r)[::-1][k - 1]
        top = np.argsort(-g, kind="stable")[:k]
        overlaps.append(float(np.mean(r[top] >= kth - tie)))
    return float(np.mean(overlaps)), float(np.min(overlaps))


@dataclass
class Metrics:
    """Aggregate figures for one variant, plus the per-case detail behind them."""

    tokens_max_abs: float
    pooled_max_abs: float
    cos_min: float
    cos_mean: float
    top5_mean: float
    top5_min: float
    cases: list[CaseDiff] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "tokens_max_abs": self.tokens_max_abs,
            "pooled_max_abs": self.pooled_max_abs,
            "cos_min": self.cos_min,
            "cos_mean": self.cos_mean,
            "top5_mean": self.top5_mean,
            "top5_min": self.top5_min,
            "cases": [
                {"case": c.case, "tokens_max_abs": c.tokens_max_abs, "pooled_max_abs": c.pooled_max_abs,
                 "cos_min": min(c.cosines)}
                for c in self.cases
            ],
        }


def summarize(diffs: list[CaseDiff], top5: tuple[float, float]) -> Metrics:
    cos = [c for d in diffs for c in d.cosines]
    return Metrics(
        tokens_max_abs=max(d.tokens_max_abs for d in diffs),
        pooled_max_abs=max(d.pooled_max_abs for d in diffs),
        cos_min=float(np.min(cos)),
        cos_mean=float(np.mean(cos)),
        top5_mean=top5[0],
        top5_min=top5[1],
        cases=diffs,
    )
