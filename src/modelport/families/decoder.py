"""Decoder LLMs (causal LM with a KV cache): logits, greedy tokens, cached vs full recompute.

Golden: `lm.LMGolden` (fixed prompts, PyTorch fp32 prefill logits and greedy steps). A variant is
judged by `lm.evaluate_lm` against `thresholds.LM_THRESHOLDS`. Quantized precisions are gated
against PyTorch running their own dequantized weights (`reference/lm_golden_<variant>`, written by the
converter): 4-bit rounding moves logits by ~1 on tiny models, which says nothing about the
conversion; their distance to the fp32 golden is reported under extra.vs_fp32, not gated.

Every variant also gets the KLD report (kld.py: full-vocabulary distributions on a fixed corpus vs
PyTorch fp32, `reference/kld_golden.npz`) under extra.kld; precisions with KLD gates (w8) are
gated on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import kld, lm
from ..recipes import CAUSAL_LM
from ..thresholds import LM_THRESHOLDS, check_kld, check_lm
from .base import Family, Judgement, Progress
from .cards import LEADING_HEAD, TargetCard, leading_cells, num, table, webllm_engine


class DecoderFamily(Family):
    name = CAUSAL_LM  # recipes.py names the family of each architecture
    what = "decoder LLMs"
    pipeline_tag = "text-generation"
    client_task = "text-generation"
    thresholds = LM_THRESHOLDS

    def compute_golden(self, source: Any, recipe: Any, out: Path, step: Progress, models: Any = None) -> None:
        step(f"reference: PyTorch fp32, {len(lm.PROMPTS)} prompts x {lm.STEPS} greedy steps with KV cache "
             f"({source.name})")
        lm.compute_golden(source.path, trust_remote_code=source.trust_remote_code).save(out)
        step(f"reference: PyTorch fp32 log-probs on the KLD corpus ({kld.CORPUS}, {kld.WINDOWS} windows x "
             f"{kld.WINDOW} tokens)")
        kld.compute_golden(source.path, trust_remote_code=source.trust_remote_code).save(out)

    def load_golden(self, root: Path) -> lm.LMGolden:
        return lm.LMGolden.load(root)

    def describe_run(self, variant: str, golden: lm.LMGolden) -> str:
        return f"validate {variant} ({golden.steps} greedy steps x {len(golden.prompts)} prompts)"

    def judge(self, root: Path, golden: lm.LMGolden, variant: str, precision: str, runner: Any) -> Judgement:
        gate = LM_THRESHOLDS[precision]
        extra: dict[str, Any] = {}
        against = golden
        if gate.reference == "dequantized":
            name = lm.golden_name(variant)
            if not lm.LMGolden.exists(root, name):
                raise FileNotFoundError(f"reference/{name}.npz (the dequantized-weights golden) is missing from "
                                        "the artifact")
            against = lm.LMGolden.load(root, name)
        metrics = lm.evaluate_lm(against, runner)
        notes = [f"gated against the {gate.reference} golden"]
        vs_fp32 = metrics
        if against is not golden:
            vs_fp32 = lm.evaluate_lm(golden, runner)
            v = extra["vs_fp32"] = {k: x for k, x in vs_fp32.to_json().items() if k != "prompts"}
            notes.append(f"vs fp32 PyTorch (not gated): top-1 {v['top1_agreement']:.3f}, KL {v['kl_mean']:.2e}, "
                         f"greedy {v['greedy_equal']}/{v['greedy_total']}, max abs {v['step_max_abs']:.3g}")
        failures = check_lm(precision, metrics)
        if kld.KLDGolden.exists(root):
            report = kld.evaluate(kld.KLDGolden.load(root), runner, vs_fp32.prompts).to_json()
            extra["kld"] = report
            failures += check_kld(precision, report)
            gated = " (gated)" if gate.kld_mean_max is not None or gate.same_top1_min is not None else ""
            notes.append(kld.summary(report) + gated)
        elif gate.kld_mean_max is not None or gate.same_top1_min is not None:
            failures.append(f"reference/{kld.GOLDEN}.npz (the KLD golden) is missing from the artifact: the "
                            f"{precision} KLD gate cannot be checked")
        else:
            notes.append(f"no KLD report: reference/{kld.GOLDEN}.npz is not in this artifact "
                         "(converted before it existed)")
        return Judgement(metrics, failures, notes, extra, against)

    def check_clients(self, root: Path, plan: dict[str, list[str] | None], quick: tuple[str, ...],
                      progress: Progress) -> dict[str, Any]:
        from ..clients import textgen

        return textgen.check(root, plan, progress=progress)

    def clients_table(self, results: dict[str, Any]) -> Any:
        from ..clients import textgen

        return textgen.summary_table(results)

    def report_table(self, report: dict[str, Any]) -> Any:
        """Decoder LLMs: logits distances and token agreement against the gated golden, plus (for
        quantized variants) top-1 / KL against fp32 PyTorch."""
        from rich.table import Table

        table = Table(title=f"validation: {report['target']} ({report['runtime']}), decoder: max abs logits")
        # "gate": the golden the row is judged against (fp32, or PyTorch on the dequantized weights)
        cols = ("variant", "verdict", "gate", "prefill", "step", "kv/full", "greedy", "top1 fp32", "KL fp32",
                "KLD mean", "KLD p99", "same top1", "PPL ratio", "time")
        for col in cols:
            table.add_column(col, justify="left" if col in ("variant", "verdict", "gate") else "right", no_wrap=True)
        for name, r in report["variants"].items():
            m = r["metrics"] or {}
            vs = (r.get("extra") or {}).get("vs_fp32") or m
            k = (r.get("extra") or {}).get("kld") or {}
            verdict = "[green]pass[/]" if r["verdict"] == "pass" else "[red]FAIL[/]"
            fmt = lambda d, k, f: (f.format(d[k]) if k in d else "-")  # noqa: E731
            greedy = f"{m['greedy_equal']}/{m['greedy_total']}" if m else "-"
            reference = (r.get("thresholds") or {}).get("reference", "-")
            gate = {"dequantized": "dequant"}.get(reference, reference)
            table.add_row(name, verdict, gate,
                          fmt(m, "prefill_max_abs", "{:.2e}"), fmt(m, "step_max_abs", "{:.2e}"),
                          fmt(m, "kv_vs_full_max_abs", "{:.2e}"), greedy, fmt(vs, "top1_agreement", "{:.3f}"),
                          fmt(vs, "kl_mean", "{:.1e}"), fmt(k, "kld_mean", "{:.1e}"), fmt(k, "kld_p99", "{:.1e}"),
                          fmt(k, "same_top1", "{:.3f}"), fmt(k, "ppl_ratio", "{:.4f}"), f"{r['seconds']:.1f}s")
        return table

    def verdict_table_html(self, rows: list[Any]) -> str:
        """report.html: logits distances (Python validator) or generated tokens (transformers.js clients)."""
        from ..report import html_verdict_table

        def cells(r: Any) -> list[str]:
            m = r.metrics
            k = (getattr(r, "extra", None) or {}).get("kld") or {}
            total = m.get("greedy_total")
            gold = m.get("greedy_equal_golden", m.get("greedy_equal"))
            return [num(m.get("prefill_max_abs"), ".2e"), num(m.get("step_max_abs"), ".2e"),
                    num(m.get("kv_vs_full_max_abs"), ".2e"), f"{gold}/{total}" if total else "–",
                    f"{m['greedy_equal_python_ort']}/{total}" if "greedy_equal_python_ort" in m else "–",
                    num(k.get("kld_mean"), ".1e"), num(k.get("same_top1"), ".3f")]

        head = ["prefill max abs", "step max abs", "KV vs full", "greedy = golden", "greedy = Python ORT",
                "KLD vs fp32 (mean)", "same top-1"]
        return html_verdict_table(head, rows, cells, cases=False)

    # --- model card ---------------------------------------------------------------------------------
    def card_usage(self, target: str) -> TargetCard | None:
        return DECODER_CARDS.get(target)

    def card_fields(self, man: dict[str, Any], repo: str) -> dict[str, str]:
        """The prompt (chat messages when the tokenizer has a chat template), context and EOS ids."""
        target, recipe = man["target"], man.get("recipe", {})
        chat = recipe.get("chat_template", True)
        eos = target.get("eos_token_id", recipe.get("eos_token_id"))
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        return {
            "js_prompt": ('const messages = [{ role: "user", content: "What is the capital of France?" }];'
                          if chat else 'const prompt = "Once upon a time";'),
            "js_input": "messages" if chat else "prompt",
            "js_print": "out[0].generated_text.at(-1).content" if chat else "out[0].generated_text",
            "py_prompt": ('prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital '
                          'of France?"}], add_generation_prompt=True)' if chat else 'prompt = "Once upon a time"'),
            "prompt_ids": ("token ids of the prompt rendered with the chat template (add_generation_prompt)" if chat
                           else "token ids of the prompt"),
            "context": str(target.get("context_length", recipe.get("max_length", "?"))),
            "eos_swift": "[" + ", ".join(str(e) for e in eos) + "]",
        }

    def card_validation_intro(self, man: dict[str, Any]) -> str:
        return ("Each variant ran modelport's fixed prompts (plain text and a chat prompt), prefill then greedy "
                "decoding with the KV cache, and was compared with PyTorch running the original checkpoint in "
                "fp32 (golden `fp32`) or, for quantized variants, PyTorch running the very weights the file stores "
                "(golden `dequantized`: 4-bit rounding alone moves logits further than any conversion error should). "
                "Prefill and step are max abs over the logits of every prompt position and every cached decode "
                "step; KV vs full compares the runtime's cached decode with its own full recompute; greedy counts "
                "generated tokens equal to the golden's (reported; the gated token check is teacher-forced and "
                "tie-aware: a changed argmax fails only where the golden's top-1/top-2 gap exceeds twice the "
                "step limit). Top-1 agreement and KL divergence are against fp32 PyTorch. KLD (mean, p99) and "
                "same top-1 are the KLD report: PyTorch fp32's full-vocabulary distributions at every position "
                f"of a fixed text ({kld.WINDOWS} windows x {kld.WINDOW} tokens) against the variant's, gated for "
                "8-bit variants (mean ≤ 1e-3, same top-1 ≥ 0.99).")

    def card_validation_table(self, man: dict[str, Any]) -> list[str]:
        head = LEADING_HEAD + ["golden", "prefill max abs", "step max abs", "KV vs full", "greedy",
                               "top-1 vs fp32", "KL vs fp32", "KLD mean", "KLD p99", "same top-1", "PPL ratio",
                               "gate"]
        rows = []
        for name, r in man.get("validation", {}).get("variants", {}).items():
            m = r.get("metrics") or {}
            gate = r.get("thresholds") or {}
            # the quantized variants' distance to fp32 PyTorch is under extra.vs_fp32; an fp32-gated
            # variant's own metrics are already against fp32
            vs = (r.get("extra") or {}).get("vs_fp32") or (m if gate.get("reference") == "fp32" else {})
            greedy = f"{m['greedy_equal']}/{m['greedy_total']}" if "greedy_total" in m else "–"
            k = (r.get("extra") or {}).get("kld") or {}
            rows.append(leading_cells(man, name, r) + [
                gate.get("reference", "–"), num(m.get("prefill_max_abs"), ".1e"), num(m.get("step_max_abs"), ".1e"),
                num(m.get("kv_vs_full_max_abs"), ".1e"), greedy, num(vs.get("top1_agreement"), ".3f"),
                num(vs.get("kl_mean"), ".1e"), num(k.get("kld_mean"), ".1e"), num(k.get("kld_p99"), ".1e"),
                num(k.get("same_top1"), ".3f"), num(k.get("ppl_ratio"), ".4f"), _gate_text(gate)])
        return table(head, rows)


def _gate_text(gate: dict[str, Any]) -> str:
    """`max abs 1e-05, greedy 100%`; relative gates as a fraction of the golden's largest |logit|."""
    if not gate:
        return "–"
    limits = [gate.get(k) for k in ("prefill_max_abs", "step_max_abs", "kv_vs_full_max_abs")]
    scale = " × max \\|logit\\|" if gate.get("relative") else ""  # escaped: a bare | splits a Markdown cell
    if len(set(limits)) == 1:
        parts = [f"max abs {limits[0]:g}{scale}"]
    else:
        parts = [f"{label} {v:g}{scale}" for label, v in zip(("prefill", "step", "KV vs full"), limits) if v is not None]
    if gate.get("tie_margin") is not None:
        parts.append(f"top-1 where gap > {gate['tie_margin']:g} × step limit")
    if gate.get("kld_mean_max") is not None:
        parts.append(f"KLD mean ≤ {gate['kld_mean_max']:g}")
    if gate.get("same_top1_min") is not None:
        parts.append(f"same top-1 ≥ {gate['same_top1_min']:g}")
    return ", ".join(parts)


# Usage sections of a decoder artifact, per target it converts to (str.format templates: see
# cards.TargetCard). MLC has no decoder converter, so no snippet.
DECODER_CARDS: dict[str, TargetCard] = {
    "onnx": TargetCard(
        "transformers.js (browser: WebGPU or wasm; Node)", "js",
        """\
import {{ pipeline }} from "@huggingface/transformers";

// dtype picks the file: {dtypes}
const generator = await pipeline("text-generation", "{repo}", {{ dtype: "{variant}", device: "webgpu" }});
{js_prompt}
const out = await generator({js_input}, {{ max_new_tokens: 64, do_sample: false }});
console.log({js_print});  // greedy, as validated""",
    ),
    "mlx": TargetCard(
        "mlx-lm (Python, Apple silicon)", "python",
        """\
from pathlib import Path

from huggingface_hub import snapshot_download
from mlx_lm import generate, load

# One mlx-lm model folder per variant: {variant_dirs}
folder = Path(snapshot_download("{repo}", allow_patterns=["{variant_dir}/*"])) / "{variant_dir}"
model, tokenizer = load(str(folder))
{py_prompt}
print(generate(model, tokenizer, prompt=prompt, max_tokens=64))""",
    ),
    "mlc": TargetCard(
        "WebLLM (browser, WebGPU)", "js",
        webllm_engine("0, // ModelType.LLM") + """\
// WebLLM builds the prompt from the package's conversation template (derived from the chat template)
const reply = await engine.chat.completions.create({{
  messages: [{{ role: "user", content: "What is the capital of France?" }}], temperature: 0, max_tokens: 64,
}});
console.log(reply.choices[0].message.content);  // greedy, as validated""",
    ),
    "coreml": TargetCard(
        "Core ML (Swift, iOS 18 / macOS 15; stateful KV cache)", "swift",
        """\
import CoreML

// {variant_file} from this repo: the KV cache is the model's state (MLState), context {context} tokens.
// Tokenize with tokenizer.json (e.g. swift-transformers' AutoTokenizer); chat prompts with its chat template.

/// [1, 1, q, past + q] float32: 0 where query i may see key j (j <= past + i), -1e4 elsewhere.
func causalMask(q: Int, past: Int) throws -> MLMultiArray {{
    let end = past + q
    let mask = try MLMultiArray(shape: [1, 1, NSNumber(value: q), NSNumber(value: end)], dataType: .float32)
    for i in 0..<q {{ for j in 0..<end {{ mask[i * end + j] = NSNumber(value: j <= past + i ? 0 : -1e4) }} }}
    return mask
}}

/// One call: new tokens after `past` cached ones; returns the logits of the last new token.
func step(_ model: MLModel, _ state: MLState, tokens: [Int32], past: Int) throws -> [Float] {{
    let ids = try MLMultiArray(shape: [1, NSNumber(value: tokens.count)], dataType: .int32)
    for (i, t) in tokens.enumerated() {{ ids[i] = NSNumber(value: t) }}
    let input = try MLDictionaryFeatureProvider(dictionary: [
        "input_ids": MLFeatureValue(multiArray: ids),
        "causal_mask": MLFeatureValue(multiArray: try causalMask(q: tokens.count, past: past)),
    ])
    let logits = try model.prediction(from: input, using: state).featureValue(for: "logits")!.multiArrayValue!
    let vocab = logits.shape[2].intValue, last = (tokens.count - 1) * vocab   // logits: Float32 [1, q, vocab]
    return (0..<vocab).map {{ logits[last + $0].floatValue }}
}}

/// Greedy decoding; prompt + new tokens must fit the context ({context}).
func generate(_ model: MLModel, prompt: [Int32], maxNewTokens: Int, eos: Set<Int32>) throws -> [Int32] {{
    let state = model.makeState()                      // zeroed KV cache, one per sequence
    var logits = try step(model, state, tokens: prompt, past: 0)      // prefill
    var out: [Int32] = []
    for _ in 0..<maxNewTokens {{
        let next = Int32(logits.indices.max {{ logits[$0] < logits[$1] }}!)   // greedy
        if eos.contains(next) {{ break }}
        out.append(next)
        logits = try step(model, state, tokens: [next], past: prompt.count + out.count - 1)
    }}
    return out
}}

let config = MLModelConfiguration()
config.computeUnits = .cpuAndGPU  // as validated (float32); .all may use the Neural Engine in fp16
let model = try MLModel(contentsOf: try await MLModel.compileModel(at: packageURL), configuration: config)
let promptIds: [Int32] = []  // {prompt_ids}
let newTokens = try generate(model, prompt: promptIds, maxNewTokens: 64, eos: {eos_swift})""",
    ),
}


DECODER = DecoderFamily()
