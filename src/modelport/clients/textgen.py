"""Real clients for decoder artifacts: transformers.js `text-generation` in Node (and headless Chromium).

What users run is the pipeline: transformers.js's tokenizer and chat template, its generate() loop
with its own KV-cache bookkeeping (empty-cache shapes from the graph, position ids, attention
mask), its logits processors, and its ONNX Runtime build. Each golden prompt goes through
`generator(prompt, {max_new_tokens: 16, min_new_tokens: 16, do_sample: false})` and is judged:

1. tokenizer parity first: the ids the pipeline fed the model must equal the golden's (the chat
   prompt through transformers.js's own rendering of the chat template). When they differ, the
   generated tokens are not comparable and the run fails on the tokenizer alone.
2. the generated tokens must equal Python onnxruntime's greedy tokens for the same file
   (lm.runner_greedy over targets/onnx/decoder.OrtLMRunner): same graph, same ids, so any difference
   is the client's generation loop or its runtime.
3. the generated tokens against the variant's gating golden (thresholds.LM_THRESHOLDS: fp32
   PyTorch, or PyTorch on the dequantized weights for 4-bit), with the same token gate as the
   Python validator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import chromium
from ..lm import LMGolden, golden_logit_scale, golden_name, runner_greedy, top2_gap
from ..thresholds import LM_THRESHOLDS
from .harness import CLIENTS, chromium_path, plan, run_program

Progress = Callable[[str], Any]

# client name -> harness program for decoders (the encoder programs are in harness.CLIENTS)
PROGRAMS = {"node": "node_run.mjs", "chromium-wasm": "browser_embed.mjs", "chromium-webgpu": "browser_embed.mjs"}
TEXTGEN_FILES = {"fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "q4": "onnx/model_q4.onnx",
                 "q4f16": "onnx/model_q4f16.onnx"}


def build_request(root: Path, golden: LMGolden, runs: list[dict[str, Any]]) -> dict[str, Any]:
    prompts = [{"name": p["name"], "text": p["text"], "messages": p.get("messages"),
                "add_special_tokens": bool(p.get("add_special_tokens", True))} for p in golden.prompts]
    return {"model_dir": str(Path(root).resolve()), "task": "text-generation", "steps": golden.steps,
            "prompts": prompts, "runs": runs, "chromium": str(chromium_path()),
            "chromium_flags": list(chromium.FLAGS), "run_timeout_s": 900}


class OrtTokens:
    """Python onnxruntime's greedy tokens per (variant, input ids), computed once."""

    def __init__(self, root: Path, eos: list[int], steps: int) -> None:
        from ..targets.onnx import decoder as onnx_lm

        self._load = lambda v: onnx_lm.load_lm_runner(root, v)
        self.eos, self.steps = eos, steps
        self._runners: dict[str, Any] = {}
        self._cache: dict[tuple, list[int]] = {}

    def tokens(self, variant: str, ids: list[int]) -> list[int]:
        key = (variant, tuple(ids))
        if key not in self._cache:
            if variant not in self._runners:
                self._runners[variant] = self._load(variant)
            toks, _, _ = runner_greedy(self._runners[variant], np.asarray([ids], dtype=np.int64), self.steps,
                                       self.eos)
            self._cache[key] = toks
        return self._cache[key]


def _tokenizer_parity(golden: LMGolden, run: dict[str, Any]) -> dict[str, Any]:
    mismatches = []
    prompts = {p["name"]: p for p in golden.prompts}
    for p in run.get("prompts", []):
        want = golden.input_ids(p["name"])[0].tolist()
        if p["input_ids"] != want:
            first = next((i for i, (a, b) in enumerate(zip(p["input_ids"], want)) if a != b),
                         min(len(want), len(p["input_ids"])))
            how = "chat template + tokenizer" if prompts[p["name"]].get("chat") else "tokenizer"
            mismatches.append({
                "text": p["name"], "preview": prompts[p["name"]]["text"][:60],
                "explanation": f"{how}: transformers.js fed {len(p['input_ids'])} ids, Python {len(want)}; first "
                               f"difference at position {first}"})
    n = len(run.get("prompts", []))
    return {"status": "mismatch" if mismatches else "match", "inputs": n, "identical": n - len(mismatches),
            "mismatches": mismatches}


def judge_run(golden: LMGolden, goldens: dict[str, LMGolden], man: dict[str, Any], variant: str,
              run: dict[str, Any], ort: OrtTokens) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(variant entry, tokenizer parity) for one client run."""
    precision = man["target"]["variants"][variant]["precision"]
    file = man["target"]["variants"][variant]["file"]
    gate = LM_THRESHOLDS[precision]
    entry: dict[str, Any] = {
        "variant": variant, "precision": precision, "thresholds": gate.to_json(),
        "sha256": man["files"].get(file, {}).get("sha256"), "cases": len(run.get("prompts", [])),
        "load_s": run.get("load_s"), "run_s": run.get("run_s"), "metrics": None, "failures": [], "notes": [],
    }
    if run["status"] == "unsupported":
        return {**entry, "verdict": "unsupported", "notes": [run["reason"]]}, None
    if run["status"] != "ok":
        return {**entry, "verdict": "error", "failures": [f"{run.get('stage', 'run')}: {run.get('reason', '?')}"],
                "console_tail": run.get("console_tail", [])}, None
    parity = _tokenizer_parity(golden, run)
    if parity["mismatches"]:
        return {**entry, "verdict": "fail", "failures": ["tokenizer ids differ from the golden's: the generated "
                                                         "tokens are not comparable"]}, parity
    gating = goldens[variant]
    failures: list[str] = []
    eq_ort = eq_gold = total = 0
    per_prompt = []
    for p in run["prompts"]:
        ort_tokens = ort.tokens(variant, p["input_ids"])
        ref = gating.greedy_tokens(p["name"]).tolist()
        same_ort = sum(int(a == b) for a, b in zip(p["tokens"], ort_tokens)) if len(p["tokens"]) == len(ort_tokens) else 0
        same_gold = sum(int(a == b) for a, b in zip(p["tokens"], ref))
        eq_ort += same_ort
        eq_gold += same_gold
        total += len(ref)
        per_prompt.append({"name": p["name"], "tokens": p["tokens"], "python_ort_tokens": ort_tokens,
                           "equal_python_ort": same_ort, "equal_golden": same_gold, "text": p["text"],
                           "seconds": p.get("seconds")})
        if p["tokens"] != ort_tokens:
            failures.append(f"{p['name']}: transformers.js tokens differ from Python onnxruntime's on the same ids "
                            f"({same_ort}/{len(ort_tokens)} equal): {p['tokens']} vs {ort_tokens}")
    # tie-aware (thresholds.LMThreshold.tie_margin): the client returns tokens only, so what can be judged is
    # the first step where its greedy text leaves the golden's; after it the two texts are not comparable
    bound = gate.tie_bound(golden_logit_scale(gating))
    for p in run["prompts"]:
        ref = gating.greedy_tokens(p["name"]).tolist()
        k = next((i for i, (a, b) in enumerate(zip(p["tokens"], ref)) if a != b), None)
        gap = top2_gap(gating.step_logits(p["name"])[k], gating.eos_ids) if k is not None else 0.0
        if gap > bound:
            failures.append(f"{p['name']}: greedy token {k} differs from the {gate.reference} golden's where its "
                            f"top-1/top-2 gap {gap:.3g} exceeds {bound:.3g} ({gate.tie_margin:g} x the step limit)")
    metrics = {"greedy_equal_python_ort": eq_ort, "greedy_equal_golden": eq_gold, "greedy_total": total,
               "golden": gate.reference, "prompts": per_prompt}
    return {**entry, "verdict": "fail" if failures else "pass", "metrics": metrics, "failures": failures,
            "notes": [f"gated against the {gate.reference} golden and Python onnxruntime"]}, parity


def _merge_parity(parities: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not parities:
        return None
    mismatches = {m["text"]: m for p in parities for m in p["mismatches"]}
    n = max(p["inputs"] for p in parities)
    return {"status": "mismatch" if mismatches else "match", "inputs": n, "identical": n - len(mismatches),
            "mismatches": list(mismatches.values())}


def check(root: Path, clients: dict[str, list[str] | None], progress: Progress | None = None) -> dict[str, Any]:
    """Run `clients` ({name: variants, None = all}) on a decoder artifact; one entry per client, in the
    shape clients.record() stores under validation.clients."""
    from . import client_status

    root = Path(root)
    man, plans = plan(root, clients, PROGRAMS, TEXTGEN_FILES, " for decoders")
    golden = LMGolden.load(root)
    goldens = {}
    for v in {v for vs in plans.values() for v in vs}:
        precision = man["target"]["variants"][v]["precision"]
        goldens[v] = LMGolden.load(root, golden_name(v)) if LM_THRESHOLDS[precision].reference == "dequantized" \
            else golden
    ort = OrtTokens(root, golden.eos_ids, golden.steps)
    results: dict[str, Any] = {}
    for program in sorted({PROGRAMS[c] for c in clients}):
        names = [c for c in clients if PROGRAMS[c] == program]
        runs = [{"device": CLIENTS[c].device, "dtype": v} for c in names for v in plans[c]]
        raw = run_program(program, build_request(root, golden, runs), 120 + 900 * len(runs), progress)
        for c in names:
            variants, parities = {}, []
            for run in raw["runs"]:
                if run["device"] != CLIENTS[c].device:
                    continue
                entry, parity = judge_run(golden, goldens, man, run["dtype"], run, ort)
                variants[run["dtype"]] = entry
                if parity:
                    parities.append(parity)
            result = {"client": raw["client"], "device": CLIENTS[c].device, "task": "text-generation",
                      "versions": raw.get("versions", {}), "environment": raw.get("environment", {}).get(CLIENTS[c].device),
                      "tokenizer": _merge_parity(parities), "off_origin_requests": sorted(
                          {u for run in raw["runs"] for u in run.get("off_origin_requests", [])}),
                      "variants": variants}
            result["status"] = client_status(result)
            results[c] = result
    return results


def summary_table(results: dict[str, Any]) -> Any:
    from rich.table import Table

    from . import VERDICT_TEXT, fmt

    table = Table(title="real clients (transformers.js text-generation): greedy tokens")
    for col in ("client", "variant", "verdict", "tokenizer", "= Python ORT", "= golden", "golden", "time"):
        table.add_column(col, justify="left" if col in ("client", "variant", "verdict", "golden") else "right")
    colors = {"pass": "green", "fail": "red", "error": "red", "unsupported": "yellow"}
    for name, entry in results.items():
        tok = (entry.get("tokenizer") or {}).get("status", "-")
        for variant, v in entry["variants"].items():
            m = v["metrics"] or {}
            total = m.get("greedy_total")
            seconds = sum(x for x in (v.get("load_s"), v.get("run_s")) if x is not None)
            table.add_row(name, variant, f"[{colors[v['verdict']]}]{VERDICT_TEXT[v['verdict']]}[/]", tok,
                          f"{m['greedy_equal_python_ort']}/{total}" if total else "-",
                          f"{m['greedy_equal_golden']}/{total}" if total else "-", m.get("golden", "-"),
                          fmt(seconds, ".1f") + "s" if seconds else "-")
    return table
