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

from ..embedding import lexical_weights, real_tokens
from ..multivector import GATED, LexicalTally, gate_failures, lexical_scale, maxsim_figures
from ..metrics import CaseDiff, Metrics, cosine_rows, summarize, topk_agreement
from ..reference import NO_PROMPT, Golden, sentence_embeddings
from ..thresholds import THRESHOLDS, check
from .harness import CaseOutput

# fp32 in a client must compute what Python onnxruntime computes on the same ids, to this max abs
# on the returned (pooled, normalized) embedding: the same graph on another build of the same
# runtime differs only by float summation order.
FP32_VS_ORT = 1e-6

Runner = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, ...]]  # outputs in golden.meta["outputs"] order

# BGE-M3's extra outputs, compared per real token (ColBERT has no vector for the first token).
EXTRA_OUTPUTS = ("sparse_weights", "colbert_vectors")

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


def _real_rows(value: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """One row's values on its real tokens: [seq(, dim)] -> [real(, dim)] (embedding.real_tokens)."""
    return value[real_tokens(name, mask)]


def vs_runner(outputs: dict[str, CaseOutput], run: Runner, names: list[str] | None = None) -> dict[str, float]:
    """Max abs between the client and a Python runner fed the client's exact inputs, every row (and, for
    graphs with extra outputs, each of those on real tokens)."""
    names = names or ["last_hidden_state", "sentence_embedding"]
    tok = pooled = 0.0
    extra = {n: 0.0 for n in names[2:]}
    for out in outputs.values():
        got = run(ort_feeds(out))
        hidden, emb = got[0], got[1]
        mask = out.attention_mask.astype(bool)
        tok = max(tok, float(np.abs(hidden[mask].astype(np.float64) - out.hidden[mask]).max()))
        pooled = max(pooled, float(np.abs(emb.astype(np.float64) - out.pooled).max()))
        for name, value in zip(names[2:], got[2:]):
            for r in range(len(mask)):
                a, b = _real_rows(value[r], mask[r], name), _real_rows(out.extra[name][r], mask[r], name)
                if a.size:
                    extra[name] = max(extra[name], float(np.abs(a.astype(np.float64) - b).max()))
    return {"tokens_max_abs": tok, "pooled_max_abs": pooled, **{f"{n}_max_abs": v for n, v in extra.items()}}


def extra_metrics(golden: Golden, outputs: dict[str, CaseOutput], parity: Parity, precision: str,
                  gates: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str], list[str]]:
    """BGE-M3's sparse weights and ColBERT vectors from the client vs the golden, on the rows whose token
    ids match: max abs per real token (fp32: gated at the fp32 max abs), and as they are used: the worst
    text's top-10 lexical terms overlap, lexical weight error / the golden's largest weight, MaxSim scores of
    every query against every corpus text (max abs, top-5 agreement; a full run only). Returns
    (figures, failures, notes). `gates`: the thresholds the Python validator recorded for this variant
    (manifest validation.variants.<v>.thresholds); fp32 is gated at the fp32 max abs whatever they say.
    A figure not computed (a --quick run has no MaxSim ranking) is not gated."""
    names = [n for n in golden.meta.get("outputs", []) if n in EXTRA_OUTPUTS]
    if not names:
        return {}, [], []
    invariant = THRESHOLDS[precision].batch_invariant
    abs_err = {n: 0.0 for n in names}
    tally = LexicalTally()
    scale = lexical_scale(golden) if "sparse_weights" in names else 0.0
    vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # text id -> (golden, client) ColBERT on real tokens
    for case in golden.cases:
        out = outputs.get(case["name"])
        if out is None or (case["batched"] and not invariant):
            continue
        g_in = golden.inputs(case["name"])
        for r in range(len(case["text_ids"])):
            if (case["name"], r) not in parity.same:
                continue
            g_mask, c_mask = g_in["attention_mask"][r], out.attention_mask[r]
            for n in names:
                a = _real_rows(golden.output(case["name"], n)[r], g_mask, n).astype(np.float64)
                b = _real_rows(out.extra[n][r], c_mask, n).astype(np.float64)
                if a.size:
                    abs_err[n] = max(abs_err[n], float(np.abs(a - b).max()))
            if "sparse_weights" in names:
                ids = g_in["input_ids"][r][g_mask.astype(bool)]
                tally.add(lexical_weights(ids, _real_rows(golden.output(case["name"], "sparse_weights")[r], g_mask,
                                                          "sparse_weights")),
                          lexical_weights(ids, _real_rows(out.extra["sparse_weights"][r], c_mask, "sparse_weights")))
            if "colbert_vectors" in names and not case["batched"]:
                vectors[case["text_ids"][0]] = (
                    _real_rows(golden.output(case["name"], "colbert_vectors")[0], g_mask, "colbert_vectors"),
                    _real_rows(out.extra["colbert_vectors"][0], c_mask, "colbert_vectors"))
    # named as the validator names them (multivector.GATED): sparse_max_abs, colbert_max_abs, ...
    figures: dict[str, Any] = {f"{n.split('_')[0]}_max_abs": v for n, v in abs_err.items()}
    figures.update(tally.figures(scale))
    notes: list[str] = []
    q_ids, c_ids = golden.meta["query_ids"], golden.meta["corpus_ids"]
    if "colbert_vectors" in names and all(i in vectors for i in [*q_ids, *c_ids]):
        figures.update(maxsim_figures({i: v[0] for i, v in vectors.items()}, {i: v[1] for i, v in vectors.items()},
                                      q_ids, c_ids))
    elif "colbert_vectors" in names:
        notes.append("MaxSim scores not computed: not every query and corpus text ran (or matched golden ids)")
    gates = dict(gates or {})
    limit = THRESHOLDS[precision].max_abs
    if precision == "fp32" and limit is not None:  # the fp32 contract: never looser than the table's max abs
        for key in ("sparse_max_abs", "colbert_max_abs"):
            gates[key] = min(gates.get(key, limit), limit)
    failures = gate_failures(figures, gates)
    if not any(gates.get(key) is not None for key, _, _ in GATED):
        notes.append("sparse / ColBERT figures reported, not gated: the manifest records no multi-vector gate")
    return figures, failures, notes


def probe_figures(golden: Golden, probes: dict[str, dict[str, np.ndarray]], outputs: dict[str, CaseOutput],
                  parity: Parity) -> dict[str, Any]:
    """What clients that do NOT use the graph's final embedding would get, vs the golden sentence embedding:
      pipeline_<pooling>  transformers.js' feature-extraction pipeline with that pooling + normalize, on every
                          row (single texts and padded batches) whose token ids match golden; also vs the
                          graph's own sentence_embedding in the same run (vs_graph_*: the recipe's own
                          error, apart from the variant's quantization error), and the padded rows alone
                          (batch_cos_min: where the padding side matters)
      bare_queries        the graph's embedding of each query alone without its prompt (vs the prompted golden;
                          also vs the golden's own no-prompt embedding, which shows the probe ran right)
    Each: rows, cos_min, cos_mean, max_abs and below_fp16_gate (cos min < the fp16 cos min gate, the
    strictest cosine gate: a client doing that fails the check at every precision)."""
    gate = THRESHOLDS["fp16"].cos_min

    def summary(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
        if not ref:
            return {"rows": 0}
        if any(a.shape != b.shape for a, b in zip(ref, got)):
            return {"rows": len(ref), "dims": [int(got[0].shape[-1]), int(ref[0].shape[-1])], "below_fp16_gate": True}
        r, g = np.stack(ref).astype(np.float64), np.stack(got).astype(np.float64)
        cos = cosine_rows(r, g)
        return {"rows": len(ref), "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                "max_abs": float(np.abs(r - g).max()), "below_fp16_gate": bool(cos.min() < gate)}

    figures: dict[str, Any] = {}
    singles = {c["name"]: c["text_ids"][0] for c in golden.cases if not c["batched"]}
    for probe, per in probes.items():
        if probe == "bare_queries":
            continue
        ref, got, own, batched = [], [], [], []
        for case in golden.cases:
            name = case["name"]
            if name not in per or name not in outputs:
                continue
            for r in range(len(case["text_ids"])):
                if (name, r) in parity.same:
                    ref.append(golden.output(name, "sentence_embedding")[r])
                    got.append(per[name][r])
                    own.append(outputs[name].pooled[r])
                    batched.append(case["batched"])
        figures[probe] = summary(ref, got)
        mine = summary(own, got)
        figures[probe].update({f"vs_graph_{k}": mine[k] for k in ("cos_min", "max_abs") if k in mine})
        rows_b = [i for i, b in enumerate(batched) if b]
        if rows_b and "cos_min" in figures[probe]:  # padded rows: where the padding side matters
            figures[probe]["batch_rows"] = len(rows_b)
            figures[probe]["batch_cos_min"] = float(cosine_rows(np.stack([ref[i] for i in rows_b]),
                                                                np.stack([got[i] for i in rows_b])).min())
    bare = probes.get("bare_queries")
    if bare:
        by_text = {t: n for n, t in singles.items()}
        q_ids = golden.meta["query_ids"]
        ids = [i for i in q_ids if str(i) in bare and (by_text.get(i), 0) in parity.same]
        figures["bare_queries"] = summary([golden.output(by_text[i], "sentence_embedding")[0] for i in ids],
                                          [bare[str(i)][0] for i in ids])
        if NO_PROMPT in golden.arrays and ids:
            no_prompt = golden.arrays[NO_PROMPT]
            figures["bare_queries"]["vs_golden_no_prompt_max_abs"] = float(max(
                np.abs(no_prompt[q_ids.index(i)].astype(np.float64) - bare[str(i)][0]).max() for i in ids))
    return figures


def metrics_json(metrics: Metrics) -> dict[str, Any]:
    """Metrics.to_json with NaN (not computed) as null, so the manifest stays strict JSON."""
    data = metrics.to_json()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}
