"""Embedders: token embeddings + the sentence embedding the checkpoint's sentence-transformers
contract defines (pooling, Dense layers, normalization, truncation; prompts applied to the inputs).

Two families share this judge: sentence encoders (BERT, XLM-R, ...) and decoder embedders
(Qwen3-Embedding, EmbeddingGemma), whose trunks each target converts differently. BGE-M3's
multi-vector family extends it (multivector.py).

Golden: `reference.Golden` (the fixed validation set: single texts in several scripts and lengths,
padded batches). A variant is judged on max abs over non-padding tokens and the pooled embedding,
per-text cosine, and top-5 retrieval agreement (`thresholds.THRESHOLDS`). Formats whose batched
result depends on padding (dynamic int8) are judged one input at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import reference
from ..metrics import Metrics, case_diff, cosine_rows, summarize, topk_agreement
from ..recipes import DECODER_EMBEDDER, SENTENCE_ENCODER
from ..reference import NO_PROMPT, Golden
from ..thresholds import THRESHOLDS, check
from .base import Family, Judgement, Progress
from .cards import LEADING_HEAD, TargetCard, leading_cells, num, table, webllm_engine

# A runner maps input arrays (by name) to the golden's outputs, in golden.meta["outputs"] order:
# (last_hidden_state, sentence_embedding[, sparse_weights, colbert_vectors]).
EncoderRunner = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, ...]]


def evaluate(golden: Golden, run: EncoderRunner, batch_invariant: bool) -> tuple[Metrics, list[str]]:
    """Run one variant over the golden cases and compute its metrics."""
    diffs = []
    notes = []
    singles: dict[int, np.ndarray] = {}
    for case in golden.cases:
        feeds = golden.inputs(case["name"])
        hidden, pooled = run(feeds)[:2]
        diff = case_diff(case["name"], feeds["attention_mask"], golden.output(case["name"], "last_hidden_state"),
                         hidden, golden.output(case["name"], "sentence_embedding"), pooled)
        if case["batched"] and not batch_invariant:
            notes.append(f"{case['name']}: batch result depends on padding for this format; "
                         f"reported, not gated (cos min {min(diff.cosines):.4f})")
            continue
        diffs.append(diff)
        if not case["batched"]:
            singles[case["text_ids"][0]] = pooled[0]
    ref = np.stack([golden.output(c["name"], "sentence_embedding")[0] for c in golden.cases if not c["batched"]])
    got = np.stack([singles[i] for i in range(len(golden.meta["texts"]))])
    top5 = topk_agreement(ref, got, golden.meta["query_ids"], golden.meta["corpus_ids"])
    return summarize(diffs, top5), notes


class EncoderFamily(Family):
    name = SENTENCE_ENCODER  # recipes.py names the family of each architecture
    what = "sentence encoders"
    pipeline_tag = "feature-extraction"
    client_task = "feature-extraction"
    thresholds = THRESHOLDS

    def compute_golden(self, source: Any, recipe: Any, out: Path, step: Progress, models: Any = None) -> None:
        step(f"reference: PyTorch fp32 on validation set ({source.name})")
        reference.compute(source, recipe, models=models).save(out)

    def load_golden(self, root: Path) -> Golden:
        return Golden.load(root)

    def judge(self, root: Path, golden: Golden, variant: str, precision: str, runner: EncoderRunner) -> Judgement:
        metrics, notes = evaluate(golden, runner, THRESHOLDS[precision].batch_invariant)
        return Judgement(metrics, check(precision, metrics), notes)

    def golden_notes(self, golden: Golden) -> list[str]:
        return blind_spots(golden, THRESHOLDS["fp16"])

    def check_clients(self, root: Path, plan: dict[str, list[str] | None], quick: tuple[str, ...],
                      progress: Progress) -> dict[str, Any]:
        from .. import clients

        return clients.check(root, plan, quick=quick, progress=progress)

    def clients_table(self, results: dict[str, Any]) -> Any:
        from .. import clients

        return clients.summary_table(results)

    def report_table(self, report: dict[str, Any]) -> Any:
        """The validation summary: one row per variant (max abs, cosine, top-5)."""
        from rich.table import Table

        table = Table(title=f"validation: {report['target']} ({report['runtime']})")
        for col in ("variant", "verdict", "tok max abs", "pooled max abs", "cos min", "cos mean", "top-5", "time"):
            table.add_column(col, justify="right" if col not in ("variant", "verdict") else "left")
        for name, r in report["variants"].items():
            m = r["metrics"] or {}
            verdict = "[green]pass[/]" if r["verdict"] == "pass" else "[red]FAIL[/]"
            fmt = lambda k, f: (f.format(m[k]) if k in m else "-")  # noqa: E731
            table.add_row(name, verdict, fmt("tokens_max_abs", "{:.2e}"), fmt("pooled_max_abs", "{:.2e}"),
                          fmt("cos_min", "{:.6f}"), fmt("cos_mean", "{:.6f}"), fmt("top5_mean", "{:.2f}"),
                          f"{r['seconds']:.1f}s")
        return table

    def verdict_table_html(self, rows: list[Any]) -> str:
        """report.html: embedding distances, cosine, top-5, and (clients) distance to Python onnxruntime."""
        from ..report import html_verdict_table

        head = ["tok max abs", "emb max abs", "cos min", "cos mean", "top-5", "vs Python ORT"]
        return html_verdict_table(head, rows, lambda r: [
            num(r.metrics.get("tokens_max_abs"), ".2e"), num(r.metrics.get("pooled_max_abs"), ".2e"),
            num(r.metrics.get("cos_min"), ".6f"), num(r.metrics.get("cos_mean"), ".6f"),
            num(r.metrics.get("top5_mean"), ".2f"), num(r.vs_ort, ".1e")], cases=True)

    # --- model card ---------------------------------------------------------------------------------
    def card_usage(self, target: str) -> TargetCard | None:
        return ENCODER_CARDS.get(target)

    def card_fields(self, man: dict[str, Any], repo: str) -> dict[str, str]:
        """Pooling, normalization, input and output names of the snippets, from the manifest's recipe."""
        target, recipe = man["target"], man.get("recipe", {})
        inputs = recipe.get("inputs", ["input_ids", "attention_mask"])
        outputs = target.get("outputs") or recipe.get("outputs") or ["last_hidden_state", "sentence_embedding"]
        pooling, normalize = recipe.get("pooling", "mean"), bool(recipe.get("normalize", False))
        pool = ("emb = hidden[:, 0]" if pooling == "cls" else
                "emb = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)")
        norm = "\nemb = emb / mx.linalg.norm(emb, axis=-1, keepdims=True)" if normalize else ""
        return {
            "pooling": pooling,
            "normalize_js": "true" if normalize else "false",
            "hidden": str(recipe.get("hidden_size", "?")),
            "max_length": str(recipe.get("max_length", "?")),
            "swift_inputs": "\n".join(f"let {_camel(n)} = try MLMultiArray(shape: [1, length], dataType: .int32)"
                                      for n in inputs),
            "swift_feeds": ", ".join(f'"{n}": {_camel(n)}' for n in inputs),
            "pooled_output": list(outputs)[-1],
            "mlx_token_types": "mx.zeros_like(ids)" if "token_type_ids" in inputs else "None",
            "mlx_pool": f"{pool}  # {pooling} pooling{', L2-normalized' if normalize else ''}{norm}",
        }

    def card_validation_intro(self, man: dict[str, Any]) -> str:
        return ("Each variant ran modelport's fixed validation set (single texts in several scripts and lengths, "
                "plus padded batches) and was compared with PyTorch fp32 running the original checkpoint. Max abs "
                "is over non-padding token embeddings and the pooled embedding; cosine is of the pooled embedding "
                "per text; top-5 is retrieval agreement with the reference.")

    def card_validation_table(self, man: dict[str, Any]) -> list[str]:
        head = LEADING_HEAD + ["tok max abs", "pooled max abs", "cos min", "cos mean", "top-5", "gate"]
        rows = []
        for name, r in man.get("validation", {}).get("variants", {}).items():
            m = r.get("metrics") or {}
            gate = ", ".join(f"{k} {v}" for k, v in (r.get("thresholds") or {}).items() if k != "batch_invariant")
            rows.append(leading_cells(man, name, r) + [
                num(m.get("tokens_max_abs"), ".1e"), num(m.get("pooled_max_abs"), ".1e"),
                num(m.get("cos_min"), ".6f"), num(m.get("cos_mean"), ".6f"), num(m.get("top5_mean"), ".2f"),
                gate or "–"])
        return table(head, rows)


def blind_spots(golden: Golden, gate: Any) -> list[str]:
    """What a client that finishes the embedding itself would get, measured on the golden: mean-pooling
    last_hidden_state (transformers.js' default) instead of the shipped head, and dropping the query
    prompt. Reported so a reader sees that comparing the artifact's own `sentence_embedding` is what
    catches those mistakes, and a warning when the golden could not tell them apart (the check
    would pass a client that skips them)."""
    meta = golden.meta
    finished_in_graph = bool(meta.get("dense")) or meta.get("pooling") == "last_token" or bool(meta.get("truncate_dim"))
    if not finished_in_graph and not meta.get("prompts", {}).get("query"):
        return []  # mean/CLS pooling of last_hidden_state (a client option) is the whole contract
    notes = []
    singles = [c for c in golden.cases if not c["batched"]]
    naive, shipped = [], []
    for case in singles:
        hidden = golden.output(case["name"], "last_hidden_state")[0]
        mask = golden.inputs(case["name"])["attention_mask"][0].astype(bool)
        naive.append(hidden[mask].mean(0))
        shipped.append(golden.output(case["name"], "sentence_embedding")[0])
    if finished_in_graph:
        if all(len(a) == len(b) for a, b in zip(naive, shipped)):
            cos = cosine_rows(np.stack(naive), np.stack(shipped))
            verdict = "caught" if cos.min() < gate.cos_min else "NOT caught: this golden cannot tell them apart"
            skipped = [what for what, on in (("last-token pooling", meta.get("pooling") == "last_token"),
                                             ("the Dense layers", bool(meta.get("dense"))),
                                             ("the truncation", bool(meta.get("truncate_dim")))) if on]
            notes.append(f"a client that mean-pools last_hidden_state itself (skipping {' and '.join(skipped)}) "
                         f"gets cos min {cos.min():.4f} mean {cos.mean():.4f} vs the golden: {verdict}")
        else:
            notes.append(f"a client that mean-pools last_hidden_state gets {len(naive[0])}-dim vectors, not the "
                         f"{len(shipped[0])}-dim embedding: caught by shape")
    if NO_PROMPT in golden.arrays:
        ref = np.stack([golden.output(f"text{i:02d}", "sentence_embedding")[0] for i in meta["query_ids"]])
        cos = cosine_rows(golden.arrays[NO_PROMPT], ref)
        verdict = "caught" if cos.min() < gate.cos_min else "NOT caught: this golden cannot tell them apart"
        notes.append(f"a client that drops the query prompt gets cos min {cos.min():.4f} vs the golden: {verdict}")
    return notes


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


# Usage sections of an encoder artifact, per target (str.format templates: see cards.TargetCard).
ENCODER_CARDS: dict[str, TargetCard] = {
    "onnx": TargetCard(
        "transformers.js (browser: WebGPU or wasm; Node)", "js",
        """\
import {{ pipeline }} from "@huggingface/transformers";

// dtype picks the file: {dtypes}
const extractor = await pipeline("feature-extraction", "{repo}", {{ dtype: "{variant}", device: "webgpu" }});
const output = await extractor(["A sentence to embed."], {{ pooling: "{pooling}", normalize: {normalize_js} }});
console.log(output.dims); // [1, {hidden}]""",
    ),
    "coreml": TargetCard(
        "Core ML (Swift, iOS / macOS)", "swift",
        """\
import CoreML

// {variant_file} from this repo; Core ML compiles a package once, then loads the compiled model.
let compiled = try await MLModel.compileModel(at: packageURL)
let model = try MLModel(contentsOf: compiled)
// Token ids from tokenizer.json (truncate at {max_length}), shape [1, sequence length].
{swift_inputs}
let features = try MLDictionaryFeatureProvider(dictionary: [{swift_feeds}])
let out = try await model.prediction(from: features)
let embedding = out.featureValue(for: "{pooled_output}")!.multiArrayValue!  // {hidden} floats""",
    ),
    "mlx": TargetCard(
        "MLX (Python, Apple silicon)", "python",
        """\
from pathlib import Path

import mlx.core as mx
from huggingface_hub import snapshot_download
from tokenizers import Tokenizer

from modelport.targets.mlx.encoder import load_model  # the forward pass the validation ran

# One folder per variant: {variant_dirs}
folder = Path(snapshot_download("{repo}", allow_patterns=["{variant_dir}/*"])) / "{variant_dir}"
model = load_model(folder)
enc = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("A sentence to embed.")
ids, mask = mx.array([enc.ids]), mx.array([enc.attention_mask])
hidden = model(ids, mask, {mlx_token_types})
{mlx_pool}""",
    ),
    "mlc": TargetCard(
        "WebLLM (browser, WebGPU)", "js",
        webllm_engine("1, // ModelType.embedding") + """\

// WebLLM's tokenizer adds no special tokens: add the ones the model was trained with, or the
// embeddings are silently wrong. A wrapped text over {max_length} tokens loses its last token: truncate first.
const withSpecialTokens = (text) => {special_prefix} + text + {special_suffix};
const result = await engine.embeddings.create({{ input: ["A sentence to embed."].map(withSpecialTokens) }});""",
    ),
}


ENCODER = EncoderFamily()


class DecoderEmbedderFamily(EncoderFamily):
    """Embedders on a decoder trunk (Qwen3-Embedding: causal, last-token pooling, left padding;
    EmbeddingGemma: bidirectional, sliding windows, mean pooling + Dense). Judged like sentence
    encoders; a family of its own because each target converts the trunk with other code."""

    name = DECODER_EMBEDDER
    what = "decoder-based embedders"

    def card_usage(self, target: str) -> TargetCard | None:
        from .embedder_cards import EMBEDDER_CARDS

        return EMBEDDER_CARDS.get(target)

    def card_fields(self, man: dict[str, Any], repo: str) -> dict[str, str]:
        from .embedder_cards import embedder_fields

        return {**super().card_fields(man, repo), **embedder_fields(man)}


DECODER_EMBEDDER_FAMILY = DecoderEmbedderFamily()
