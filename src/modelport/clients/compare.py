"""Judge a client's outputs: tokenizer parity, the threshold table against golden, and Python ORT.

Three separate questions, kept separate so a failure says which one broke:
  1. Did the client's tokenizer produce the golden token ids?  (per input; a mismatch is reported
     with where it differs, and that input is left out of the numeric comparison, which would
     otherwise blame the model for a tokenizer difference. A mismatch that is a known, explained
     client behaviour (KNOWN_DIFFERENCES) is reported as such and does not fail the client.)
  2. Do the outputs meet the same threshold table the Python validator uses?  (same CaseDiff,
     summarize, top-5 and `thresholds.check` code, on the inputs whose token ids match)
  3. Does the client compute what Python onnxruntime computes on the *same* token ids?  (fed the
     client's own inputs, so this holds for every row; gated at 1e-6 for fp32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..metrics import CaseDiff, Metrics, cosine_rows, summarize, topk_agreement
from ..reference import Golden, sentence_embeddings
from ..thresholds import THRESHOLDS, check
from .harness import CaseOutput

# fp32 in a client must compute what Python onnxruntime computes on the same ids, to this max abs
# on the returned (pooled, normalized) embedding: the same graph on another build of the same
# runtime differs only by float summation order.
FP32_VS_ORT = 1e-6

Runner = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]

# Client tokenizer behaviours that are understood and explained (docs/validation.md, "Real clients"):
# an input hitting one is left out of the numeric comparison and reported as a known difference, not
# a client failure. The validation set keeps its texts clear of both (validation_set.fit); they show
# on goldens made before validation set 2026.12-1, and on a user's own over-long or space-ended texts.
KNOWN_DIFFERENCES = {
    "truncation-after-special-tokens": (
        "known client difference: transformers.js truncates after adding special tokens, so an input longer "
        "than the max length loses its final special token (Python keeps it); keep inputs within the max "
        "length minus the special tokens"),
    "trailing-whitespace-token": (
        "known client difference: for a text ending in whitespace transformers.js emits one more token (a "
        "trailing '\u2581') than Hugging Face tokenizers; strip trailing whitespace"),
}


@dataclass
class Parity:
    """Token-id parity over a run: which (case, row) pairs match golden, and readable mismatches."""

    same: set[tuple[str, int]]
    mismatches: list[dict[str, Any]]
    inputs: int

    def to_json(self) -> dict[str, Any]:
        """status: pass (all identical), known-difference (every mismatch is a known client behaviour:
        not a failure), or mismatch (a client failure)."""
        status = ("pass" if not self.mismatches else
                  "known-difference" if all(m.get("known") for m in self.mismatches) else "mismatch")
        return {"status": status, "inputs": self.inputs, "identical": self.inputs - len(self.mismatches),
                "mismatches": self.mismatches}


def _real(ids: np.ndarray, mask: np.ndarray) -> list[int]:
    return [int(x) for x in ids[mask.astype(bool)]]


def _explain(golden_ids: list[int], client_ids: list[int], max_length: int) -> str:
    if len(client_ids) == len(golden_ids) == max_length and client_ids[:-1] == golden_ids[:-1]:
        return (f"truncated to {max_length} tokens without the final special token: golden ends with "
                f"{golden_ids[-1]}, the client with {client_ids[-1]} (the client truncates after adding "
                f"special tokens)")
    first = next((i for i, (a, b) in enumerate(zip(golden_ids, client_ids)) if a != b),
                 min(len(golden_ids), len(client_ids)))
    return (f"first difference at token {first}: golden {golden_ids[first:first + 3]}, "
            f"client {client_ids[first:first + 3]}; lengths {len(golden_ids)} vs {len(client_ids)}")


def known_difference(text: str, golden_ids: list[int], client_ids: list[int], max_length: int) -> str | None:
    """The KNOWN_DIFFERENCES key that explains a mismatch exactly, or None (an unexplained mismatch)."""
    g, c = golden_ids, client_ids
    if len(c) == len(g) == max_length and c[:-1] == g[:-1]:
        return "truncation-after-special-tokens"
    if text != text.rstrip() and len(c) == len(g) + 1 and any(
            c[:i] + c[i + 1:] == g for i in range(max(0, len(g) - 3), len(c))):
        return "trailing-whitespace-token"
    return None


def tokenizer_parity(golden: Golden, outputs: dict[str, CaseOutput]) -> Parity:
    """Compare the token ids the client's pipeline fed its model with the golden ids, row by row."""
    texts = golden.meta["texts"]
    same: set[tuple[str, int]] = set()
    by_text: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()
    for case in golden.cases:
        out = outputs.get(case["name"])
        if out is None:
            continue
        ref = golden.inputs(case["name"])
        for row, text_id in enumerate(case["text_ids"]):
            seen.add(text_id)
            g = _real(ref["input_ids"][row], ref["attention_mask"][row])
            c = _real(out.input_ids[row], out.attention_mask[row])
            if g == c:
                same.add((case["name"], row))
                continue
            max_length = int(golden.meta["max_length"])
            known = known_difference(texts[text_id], g, c, max_length)
            m = by_text.setdefault(text_id, {
                "text": text_id, "preview": texts[text_id][:60], "golden_len": len(g), "client_len": len(c),
                "golden_tail": g[-3:], "client_tail": c[-3:], "known": known,
                "explanation": _explain(g, c, max_length) + (f" ({KNOWN_DIFFERENCES[known]})" if known else ""),
                "cases": []})
            if m["known"] != known:  # one text, two behaviours across cases: not the known one
                m["known"] = None
            m["cases"].append(case["name"])
    return Parity(same=same, mismatches=[by_text[k] for k in sorted(by_text)], inputs=len(seen))


def _rows_diff(case: str, rows: list[int], g_mask: np.ndarray, g_hidden: np.ndarray, g_pooled: np.ndarray,
               c_mask: np.ndarray, c_hidden: np.ndarray, c_pooled: np.ndarray) -> CaseDiff:
    """CaseDiff over the chosen rows, real tokens only (the two sides may pad to different lengths)."""
    tok = 0.0
    for r in rows:
        a = g_hidden[r][g_mask[r].astype(bool)].astype(np.float64)
        b = c_hidden[r][c_mask[r].astype(bool)].astype(np.float64)
        tok = max(tok, float(np.abs(a - b).max()))
    gp, cp = g_pooled[rows].astype(np.float64), c_pooled[rows].astype(np.float64)
    return CaseDiff(case, tok, float(np.abs(gp - cp).max()), cosine_rows(gp, cp).tolist())


def golden_metrics(golden: Golden, outputs: dict[str, CaseOutput], parity: Parity,
                   precision: str) -> tuple[Metrics, list[str], list[str]]:
    """Metrics vs golden and threshold failures, mirroring validate.evaluate; returns (metrics, failures, notes)."""
    batch_invariant = THRESHOLDS[precision].batch_invariant
    diffs, notes = [], []
    singles: dict[int, np.ndarray] = {}
    left_out: dict[int, list[str]] = {}  # text id -> cases it was dropped from (token ids differ)
    for case in golden.cases:
        out = outputs.get(case["name"])
        if out is None:
            continue
        if not case["batched"]:
            singles[case["text_ids"][0]] = out.pooled[0]
        rows = [r for r in range(len(case["text_ids"])) if (case["name"], r) in parity.same]
        for r in set(range(len(case["text_ids"]))) - set(rows):
            left_out.setdefault(case["text_ids"][r], []).append(case["name"])
        if not rows:
            continue
        g = golden.inputs(case["name"])
        diff = _rows_diff(case["name"], rows, g["attention_mask"], golden.output(case["name"], "last_hidden_state"),
                          golden.output(case["name"], "sentence_embedding"), out.attention_mask, out.hidden, out.pooled)
        if case["batched"] and not batch_invariant:
            notes.append(f"{case['name']}: batch result depends on padding for this format; reported, not gated "
                         f"(cos min {min(diff.cosines):.4f})")
            continue
        diffs.append(diff)
    known = {m["text"]: m.get("known") for m in parity.mismatches}
    notes += [f"text {t} left out of the comparison in {', '.join(cases)}: its token ids differ from golden"
              + (f" (known client difference: {known[t]})" if known.get(t) else "")
              for t, cases in sorted(left_out.items())]
    if not diffs:
        raise ValueError("no case left to compare: every row's token ids differ from golden")
    n_texts = len(golden.meta["texts"])
    if len(singles) == n_texts:
        ref = sentence_embeddings(golden)
        got = np.stack([singles[i] for i in range(n_texts)])
        metrics = summarize(diffs, topk_agreement(ref, got, golden.meta["query_ids"], golden.meta["corpus_ids"]))
        return metrics, check(precision, metrics), notes
    # A subset (--quick): per-input gates (max abs, cos min) still apply; cos mean and top-5 describe
    # the whole validation set (a mean over 3 hard edge cases is not the set's mean; top-5 needs the
    # corpus), so they are reported but not gated. NaN compares false: check() skips those conditions.
    metrics = summarize(diffs, (math.nan, math.nan))
    notes.append(f"quick subset ({len(singles)} of {n_texts} texts): cos mean is reported, top-5 not computed; "
                 "neither is gated (they describe the whole validation set)")
    return metrics, check(precision, replace(metrics, cos_mean=math.nan)), notes


def ort_feeds(out: CaseOutput) -> dict[str, np.ndarray]:
    """The client's own inputs, as onnxruntime feeds (token_type_ids zeros when the client sent none)."""
    tt = out.token_type_ids if out.token_type_ids is not None else np.zeros_like(out.input_ids)
    return {"input_ids": out.input_ids, "attention_mask": out.attention_mask, "token_type_ids": tt}


def vs_runner(outputs: dict[str, CaseOutput], run: Runner) -> dict[str, float]:
    """Max abs between the client and a Python runner fed the client's exact inputs, every row."""
    tok = pooled = 0.0
    for out in outputs.values():
        hidden, emb = run(ort_feeds(out))
        mask = out.attention_mask.astype(bool)
        tok = max(tok, float(np.abs(hidden[mask].astype(np.float64) - out.hidden[mask]).max()))
        pooled = max(pooled, float(np.abs(emb.astype(np.float64) - out.pooled).max()))
    return {"tokens_max_abs": tok, "pooled_max_abs": pooled}


def metrics_json(metrics: Metrics) -> dict[str, Any]:
    """Metrics.to_json with NaN (not computed) as null, so the manifest stays strict JSON."""
    data = metrics.to_json()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}
