"""Multi-vector encoders (BGE-M3): one trunk, three outputs users migrate to it for.

    sentence_embedding  dense: normalized CLS (judged exactly like a sentence encoder)
    sparse_weights      lexical: ReLU(sparse_linear(h)) per token, 0 on padding and special tokens;
                        a client aggregates max per token id (`embedding.lexical_weights`)
    colbert_vectors     ColBERT: normalize(colbert_linear(h)) for tokens 1.., zero on padding;
                        scored by MaxSim (`embedding.maxsim`)

fp32 must reproduce PyTorch to 1e-5 on every real token of both extra outputs. Reduced precisions
are judged the way the outputs are used: the top-10 terms of each text's lexical weights (overlap
with the golden's), the largest weight error relative to the text's largest weight, and the
MaxSim scores of every query against every corpus text (largest error, and top-5 agreement of the
ranking they give).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embedding import lexical_weights, real_tokens
from ..metrics import Metrics
from ..multivector import MULTI_GATES, LexicalTally, gate_failures, lexical_scale, maxsim_figures
from ..recipes import MULTI_VECTOR
from ..reference import Golden
from ..thresholds import THRESHOLDS, check
from .base import Judgement
from .cards import LEADING_HEAD, TargetCard, leading_cells, num, table
from .embedder_cards import EMBEDDER_CARDS, embedder_fields
from .encoder import EncoderFamily, EncoderRunner, evaluate

@dataclass
class MultiVectorMetrics:
    dense: Metrics
    sparse_max_abs: float
    colbert_max_abs: float
    terms_min: float
    terms_mean: float
    sparse_rel_max: float
    maxsim_max_abs: float
    maxsim_top5_mean: float

    def to_json(self) -> dict:
        return {**self.dense.to_json(), "sparse_max_abs": self.sparse_max_abs,
                "colbert_max_abs": self.colbert_max_abs, "terms_min": self.terms_min, "terms_mean": self.terms_mean,
                "sparse_rel_max": self.sparse_rel_max, "maxsim_max_abs": self.maxsim_max_abs,
                "maxsim_top5_mean": self.maxsim_top5_mean}


def multi_metrics(golden: Golden, outputs: dict[str, tuple[np.ndarray, ...]], dense: Metrics,
                  batch_invariant: bool) -> MultiVectorMetrics:
    """Sparse and ColBERT figures from the variant's outputs per case (dense figures come in)."""
    sparse_abs = colbert_abs = 0.0
    tally = LexicalTally()
    vectors: dict[int, np.ndarray] = {}
    ref_vectors: dict[int, np.ndarray] = {}
    for case in golden.cases:
        if case["batched"] and not batch_invariant:
            continue
        name = case["name"]
        feeds = golden.inputs(name)
        mask = feeds["attention_mask"].astype(bool)
        _, _, sparse, colbert = outputs[name]
        ref_sparse = golden.output(name, "sparse_weights")
        ref_colbert = golden.output(name, "colbert_vectors")
        sparse_abs = max(sparse_abs, float(np.abs(sparse - ref_sparse)[real_tokens("sparse_weights", mask)].max()))
        colbert_abs = max(colbert_abs, float(np.abs(colbert - ref_colbert)[real_tokens("colbert_vectors", mask)]
                                             .max(initial=0.0)))
        for row, ids in enumerate(feeds["input_ids"]):
            keep = mask[row]
            tally.add(lexical_weights(ids[keep], ref_sparse[row][keep]), lexical_weights(ids[keep], sparse[row][keep]))
        if not case["batched"]:
            keep = real_tokens("colbert_vectors", mask[0])
            vectors[case["text_ids"][0]] = colbert[0][keep]
            ref_vectors[case["text_ids"][0]] = ref_colbert[0][keep]
    lexical = tally.figures(lexical_scale(golden))
    scores = maxsim_figures(ref_vectors, vectors, golden.meta["query_ids"], golden.meta["corpus_ids"])
    return MultiVectorMetrics(dense, sparse_abs, colbert_abs, lexical.get("terms_min", 1.0),
                              lexical.get("terms_mean", 1.0), lexical.get("sparse_rel_max", 0.0),
                              scores["maxsim_max_abs"], scores["maxsim_top5_mean"])


def check_multi(precision: str, m: MultiVectorMetrics) -> list[str]:
    return check(precision, m.dense) + gate_failures(m.to_json(), MULTI_GATES[precision].to_json())


class MultiVectorFamily(EncoderFamily):
    name = MULTI_VECTOR
    what = "multi-vector encoders (dense + sparse + ColBERT)"
    thresholds = MULTI_GATES

    def card_usage(self, target: str) -> TargetCard | None:
        return EMBEDDER_CARDS.get(target)

    def card_fields(self, man: dict[str, Any], repo: str) -> dict[str, str]:
        return {**super().card_fields(man, repo), **embedder_fields(man)}

    def judge(self, root: Path, golden: Golden, variant: str, precision: str, runner: EncoderRunner) -> Judgement:
        outputs: dict[str, tuple[np.ndarray, ...]] = {}
        order = iter(golden.cases)

        def recording(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
            out = runner(feeds)
            if len(out) != 4:
                raise ValueError(f"a multi-vector runner returns 4 outputs, got {len(out)}")
            outputs[next(order)["name"]] = out
            return out

        invariant = THRESHOLDS[precision].batch_invariant
        dense, notes = evaluate(golden, recording, invariant)
        metrics = multi_metrics(golden, outputs, dense, invariant)
        return Judgement(metrics, check_multi(precision, metrics), notes)

    def golden_notes(self, golden: Golden) -> list[str]:
        notes = super().golden_notes(golden)
        if lexical_scale(golden) == 0.0:  # e.g. an untrained full-shape build: every token's ReLU is 0
            notes.append("every sparse weight of the golden is 0: the lexical checks (terms, weight error) "
                         "cannot fail on this model; only the max abs of sparse_weights is meaningful")
        return notes

    def gate_json(self, precision: str) -> dict[str, Any] | None:
        dense, multi = THRESHOLDS.get(precision), MULTI_GATES.get(precision)
        if dense is None:
            return None
        return {**dense.to_json(), **(multi.to_json() if multi else {})}

    def report_table(self, report: dict[str, Any]) -> Any:
        from rich.table import Table

        table_ = Table(title=f"validation: {report['target']} ({report['runtime']})")
        cols = ("variant", "verdict", "pooled max abs", "cos min", "top-5", "sparse max abs", "terms min",
                "colbert max abs", "MaxSim max abs", "MaxSim top-5", "time")
        for col in cols:
            table_.add_column(col, justify="left" if col in ("variant", "verdict") else "right")
        for name, r in report["variants"].items():
            m = r["metrics"] or {}
            fmt = lambda k, f: (f.format(m[k]) if k in m else "-")  # noqa: E731
            table_.add_row(name, "[green]pass[/]" if r["verdict"] == "pass" else "[red]FAIL[/]",
                           fmt("pooled_max_abs", "{:.2e}"), fmt("cos_min", "{:.6f}"), fmt("top5_mean", "{:.2f}"),
                           fmt("sparse_max_abs", "{:.2e}"), fmt("terms_min", "{:.2f}"), fmt("colbert_max_abs", "{:.2e}"),
                           fmt("maxsim_max_abs", "{:.2e}"), fmt("maxsim_top5_mean", "{:.2f}"), f"{r['seconds']:.1f}s")
        return table_

    def card_validation_intro(self, man: dict[str, Any]) -> str:
        return (super().card_validation_intro(man) + " The sparse lexical weights and ColBERT vectors are compared "
                "per real token (max abs), by the overlap of each text's top-10 lexical terms, and by the MaxSim "
                "scores of every query against every corpus text.")

    def card_validation_table(self, man: dict[str, Any]) -> list[str]:
        head = LEADING_HEAD + ["pooled max abs", "cos min", "sparse max abs", "terms min", "colbert max abs",
                               "MaxSim max abs", "MaxSim top-5", "gate"]
        rows = []
        for name, r in man.get("validation", {}).get("variants", {}).items():
            m = r.get("metrics") or {}
            rows.append(leading_cells(man, name, r) + [
                num(m.get("pooled_max_abs"), ".1e"), num(m.get("cos_min"), ".6f"), num(m.get("sparse_max_abs"), ".1e"),
                num(m.get("terms_min"), ".2f"), num(m.get("colbert_max_abs"), ".1e"), num(m.get("maxsim_max_abs"), ".1e"),
                num(m.get("maxsim_top5_mean"), ".2f"),
                ", ".join(f"{k} {v}" for k, v in (r.get("thresholds") or {}).items() if k != "batch_invariant") or "–"])
        return table(head, rows)


MULTI_VECTOR_FAMILY = MultiVectorFamily()
