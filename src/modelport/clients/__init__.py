"""Real clients for ONNX artifacts: transformers.js in Node and in headless Chromium (WebGPU, wasm).

The Python validator proves the artifact's graphs compute what PyTorch computes under onnxruntime.
Users do not run that: they run transformers.js, which has its own tokenizer, its own pooling, its
own ONNX Runtime builds (native in Node, wasm and WebGPU in the browser) and picks the file for a
`dtype` by name. `check` runs every requested variant through that real pipeline and judges it
three ways (see compare.py): tokenizer parity, the threshold table against golden, and agreement
with Python onnxruntime on the same token ids. A tokenizer difference that is a known, explained client
behaviour (compare.KNOWN_DIFFERENCES) is reported, not failed: it neither fails the client nor blocks
`publish`. `record` stores the verdicts under
`validation.clients` in manifest.json, where report.html reads them.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import manifest as manifest_mod
from .. import validation_set
from ..reference import Golden
from ..report import VERDICT_TEXT
from ..thresholds import THRESHOLDS
from . import compare
from .harness import (
    CLIENTS,
    JS_DIR,
    CaseOutput,
    build_request,
    decode_cases,
    decode_probes,
    missing_prerequisites,
    plan,
    run_program,
)

__all__ = ["CLIENTS", "JS_DIR", "VERDICT_TEXT", "check", "missing_prerequisites", "probe_lines", "problem_lines",
           "quick_cases", "record", "summary_table", "unsupported_lines"]

# The file transformers.js loads for each `dtype` (its naming, not ours): a variant is only
# meaningful to a client if it sits exactly there.
TRANSFORMERS_JS_FILES = {
    "fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "q8": "onnx/model_quantized.onnx",
    "int8": "onnx/model_int8.onnx", "uint8": "onnx/model_uint8.onnx", "q4": "onnx/model_q4.onnx",
    "q4f16": "onnx/model_q4f16.onnx",
    # modelport's searched variants (targets/onnx/quantize.py) are no transformers.js dtype: they load
    # with dtype fp32 and model_file_name (TRANSFORMERS_JS_LOAD), as a user of such a file writes it
    "q4mix": "onnx/model_q4mix.onnx", "q4mix-wasm": "onnx/model_q4mix_wasm.onnx",
    # and so are the fused ones (targets/onnx/fuse.py)
    "fp32-fused": "onnx/model_fused.onnx", "fp16-fused": "onnx/model_fp16_fused.onnx",
    "q4-fused": "onnx/model_q4_fused.onnx",
}
# How transformers.js 4.x loads a variant that is not one of its dtypes: dtype fp32 adds no file
# suffix, model_file_name replaces `model` (src/models/session_config.js, utils/model-loader.js).
TRANSFORMERS_JS_LOAD = {
    "q4mix": {"dtype": "fp32", "model_file_name": "model_q4mix"},
    "q4mix-wasm": {"dtype": "fp32", "model_file_name": "model_q4mix_wasm"},
    "fp32-fused": {"dtype": "fp32", "model_file_name": "model_fused"},
    "fp16-fused": {"dtype": "fp32", "model_file_name": "model_fp16_fused"},
    "q4-fused": {"dtype": "fp32", "model_file_name": "model_q4_fused"},
}

Progress = Callable[[str], Any]


def quick_cases(golden: Golden) -> list[str]:
    """A few golden cases for slow devices: SwiftShader WebGPU costs ~4 s per call plus ~0.1 s per token.

    The tokenizer is the same JS code on every device and is checked on every input by the other
    clients; what differs per device is the kernels. So: the empty string (pooling over [CLS]/[SEP]
    only), a CJK text and an emoji text (different lengths), and the cheapest padded batch (masking).
    Top-5 needs the whole corpus and is then not gated (the run's notes say so).
    """
    texts = golden.meta["texts"]
    # a prompted golden's texts carry their prompt (reference.prompted_texts): match the text after it
    # (fitting strips trailing whitespace: the empty text with a prompt is the prompt without its last space)
    prompts, kinds = golden.meta.get("prompts") or {}, golden.meta.get("prompt_names") or []

    def unprompted(i: int, text: str) -> str:
        p = (prompts.get(kinds[i]) or "") if i < len(kinds) else ""
        return text[len(p):] if text.startswith(p) else "" if p and text == p.rstrip() else text

    bare = [unprompted(i, t) for i, t in enumerate(texts)]
    picks = {validation_set.EDGE[i] for i in (0, 6, 10)}
    names = [c["name"] for c in golden.cases if not c["batched"] and bare[c["text_ids"][0]] in picks]
    batches = [c for c in golden.cases if c["batched"]]
    if batches:
        names.append(min(batches, key=lambda c: len(c["lengths"]) * max(c["lengths"]))["name"])
    return names


class OrtReference:
    """Python onnxruntime outputs on the clients' exact inputs, computed once per variant and inputs."""

    def __init__(self, root: Path) -> None:
        from ..targets.onnx import encoder as onnx_target

        self._load = lambda variant: onnx_target.load_runner(root, variant)
        self._runners: dict[str, compare.Runner] = {}
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def runner(self, variant: str) -> compare.Runner:
        def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            key = (variant, feeds["input_ids"].shape, feeds["input_ids"].tobytes(), feeds["attention_mask"].tobytes(),
                   feeds["token_type_ids"].tobytes())
            if key not in self._cache:
                if variant not in self._runners:
                    self._runners[variant] = self._load(variant)
                self._cache[key] = self._runners[variant](feeds)
            return self._cache[key]

        return run


def device_lacks(root: Path, man: dict[str, Any], variant: str, device: str) -> str | None:
    """Why `device` cannot run the variant's graph at all (an operator its onnxruntime build lacks), or None.

    Browser wasm (onnxruntime-web's CPU build) has MatMulNBits but not GatherBlockQuantized, so the
    searched q4mix (4-bit GatherBlockQuantized embedding table) is reported unsupported there, with
    this reason (measured: "Could not find an implementation for GatherBlockQuantized(1)"), and
    q4mix-wasm (the same table unpacked by standard operators, or int8 rows) is the variant that runs.
    """
    from ..targets.onnx.quantize import WASM_MISSING_OPS, searched_ops

    if device != "wasm" or variant not in TRANSFORMERS_JS_LOAD:
        return None
    missing = sorted(searched_ops(root / man["target"]["variants"][variant]["file"]) & WASM_MISSING_OPS)
    if not missing:
        return None
    return (f"the graph uses {', '.join(missing)}, which onnxruntime-web's wasm build does not implement; "
            f"q4mix-wasm is the variant for browser wasm")


def judge_run(golden: Golden, man: dict[str, Any], variant: str, run: dict[str, Any],
              outputs: dict[str, CaseOutput], parity: compare.Parity | None, ort: OrtReference) -> dict[str, Any]:
    """One (client, variant) verdict: pass / fail / error / unsupported, with the figures behind it."""
    precision = man["target"]["variants"][variant]["precision"]
    file = man["target"]["variants"][variant]["file"]
    entry: dict[str, Any] = {
        "variant": variant, "precision": precision, "thresholds": THRESHOLDS[precision].to_json(),
        "sha256": man["files"].get(file, {}).get("sha256"), "cases": len(run.get("cases", [])),
        "load_s": run.get("load_s"), "run_s": run.get("run_s"), "metrics": None, "failures": [], "notes": [],
    }
    if run["status"] == "unsupported":
        return {**entry, "verdict": "unsupported", "notes": [run["reason"]]}
    if run["status"] != "ok":
        return {**entry, "verdict": "error", "failures": [f"{run.get('stage', 'run')}: {run.get('reason', '?')}"],
                "console_tail": run.get("console_tail", [])}
    if parity is None:
        return {**entry, "verdict": "error", "failures": ["the client returned no outputs"]}
    try:
        metrics, failures, notes = compare.golden_metrics(golden, outputs, parity, precision)
    except ValueError as e:
        return {**entry, "verdict": "fail", "failures": [str(e)]}
    names = list(golden.meta.get("outputs") or ("last_hidden_state", "sentence_embedding"))
    vs_ort = compare.vs_runner(outputs, ort.runner(variant), names)
    if precision == "fp32":
        failures += [f"{'embedding' if k == 'pooled_max_abs' else k[:-len('_max_abs')]} max abs vs Python onnxruntime "
                     f"{v:.3g} > {compare.FP32_VS_ORT:g} (same token ids)"
                     for k, v in vs_ort.items() if k != "tokens_max_abs" and v > compare.FP32_VS_ORT]
    metrics_out = compare.metrics_json(metrics)
    if run.get("mode") == "model":  # the graph's own outputs through AutoModel (harness.needs_model)
        # the sparse / ColBERT gates the Python validator applied (its family's table, recorded per variant)
        gates = ((man.get("validation") or {}).get("variants", {}).get(variant) or {}).get("thresholds")
        extra, extra_failures, extra_notes = compare.extra_metrics(golden, outputs, parity, precision, gates)
        if gates:
            entry["thresholds"] = {**entry["thresholds"], **gates}
        metrics_out.update(extra)
        failures += extra_failures
        notes += extra_notes
        want = golden.meta.get("padding_side")
        entry.update(mode="model", padding_side=run.get("padding_side"), model_class=run.get("model_class"),
                     probes_s=run.get("probes_s"),
                     would_have_failed=compare.probe_figures(golden, decode_probes(run), outputs, parity))
        if want and run.get("padding_side") != want:
            notes.append(f"the client's tokenizer pads {run.get('padding_side')}, the golden {want} (the graph pools "
                         "either side; transformers.js' pipeline last_token pooling would not)")
    return {**entry, "verdict": "fail" if failures else "pass", "metrics": metrics_out,
            "vs_python_ort": vs_ort, "failures": failures, "notes": notes}


def merge_tokenizer(reports: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One tokenizer verdict from several runs: the union of their mismatches (later runs win per text).

    Every run of a client uses the same tokenizer files, so a quick run that saw no over-long input
    must not clear a mismatch an earlier full run found.
    """
    reports = [r for r in reports if r]
    if not reports:
        return None
    mismatches: dict[int, dict[str, Any]] = {}
    for r in reports:
        mismatches.update({m["text"]: m for m in r["mismatches"]})
    merged = compare.Parity(same=set(), mismatches=[mismatches[k] for k in sorted(mismatches)],
                            inputs=max(r["inputs"] for r in reports))
    return merged.to_json()


def client_status(entry: dict[str, Any]) -> str:
    """pass unless a variant failed or errored, the tokenizer differs in a way that is not a known client
    difference (tokenizer status "known-difference" is reported, not failed), or something left 127.0.0.1."""
    verdicts = [v["verdict"] for v in entry["variants"].values()]
    bad = any(v in ("fail", "error") for v in verdicts)
    bad = bad or (entry.get("tokenizer") or {}).get("status") == "mismatch" or bool(entry.get("off_origin_requests"))
    if bad:
        return "fail"
    return "unsupported" if verdicts and all(v == "unsupported" for v in verdicts) else "pass"


def _judge_client(name: str, raw: dict[str, Any], golden: Golden, man: dict[str, Any],
                  ort: OrtReference) -> dict[str, Any]:
    """The client's entry for validation.clients from the harness's raw answer (dtype = variant name)."""
    client = CLIENTS[name]
    variants: dict[str, Any] = {}
    parities: list[compare.Parity] = []
    off_origin: list[str] = []
    for run in raw["runs"]:
        if run["device"] != client.device:
            continue
        outputs = decode_cases(run) if run["status"] == "ok" else {}
        parity = compare.tokenizer_parity(golden, outputs) if outputs else None
        if parity:
            parities.append(parity)
        off_origin += run.get("off_origin_requests", [])
        variants[run["dtype"]] = judge_run(golden, man, run["dtype"], run, outputs, parity, ort)
    entry = {
        "client": raw["client"], "device": client.device, "versions": raw.get("versions", {}),
        "environment": raw.get("environment", {}).get(client.device),
        "tokenizer": merge_tokenizer([p.to_json() for p in parities]),
        "off_origin_requests": sorted(set(off_origin)), "variants": variants,
    }
    entry["status"] = client_status(entry)
    return entry


def check(root: Path, clients: dict[str, list[str] | None], quick: Collection[str] = (),
          progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Run `clients` ({client name: variants, None = all}) on the artifact; returns one entry per client.

    Clients named in `quick` run the quick subset of the golden cases (quick_cases) instead of all.
    """
    root = Path(root)
    man, plans = plan(root, clients, CLIENTS, TRANSFORMERS_JS_FILES)
    golden = Golden.load(root)
    all_cases = [c["name"] for c in golden.cases]
    ort = OrtReference(root)
    results: dict[str, dict[str, Any]] = {}
    for program in sorted({CLIENTS[c].program for c in clients}):
        names = [c for c in clients if CLIENTS[c].program == program]
        runs, skipped = [], []
        for c in names:
            cases = quick_cases(golden) if c in quick else all_cases
            for v in plans[c]:
                run = {"device": CLIENTS[c].device, "dtype": v, "cases": cases}
                reason = device_lacks(root, man, v, CLIENTS[c].device)
                if reason:
                    skipped.append({**run, "status": "unsupported", "reason": reason, "cases": []})
                    continue
                runs.append({**run, **({"load": TRANSFORMERS_JS_LOAD[v]} if v in TRANSFORMERS_JS_LOAD else {})})
        raw = {"client": "node" if program == CLIENTS["node"].program else "chromium", "runs": []}  # all skipped
        if runs:
            request = build_request(root, golden, all_cases, runs)
            timeout = 120 + 900 * len(runs)  # the harness also times out each browser run at 900 s
            raw = run_program(program, request, timeout, progress)
        raw["runs"] = raw["runs"] + skipped
        for c in names:
            results[c] = _judge_client(c, raw, golden, man, ort)
    return results


def record(root: Path, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge results into manifest validation.clients (a re-run replaces the variants it covers)."""
    man = manifest_mod.load(root)
    stored = man.setdefault("validation", {"status": "not-run"}).setdefault("clients", {})
    for name, entry in results.items():
        old = stored.get(name)
        if old and old.get("device") == entry["device"]:
            entry = {**entry, "variants": {**old.get("variants", {}), **entry["variants"]},
                     "tokenizer": merge_tokenizer([old.get("tokenizer"), entry["tokenizer"]])}
            entry["status"] = client_status(entry)
        stored[name] = entry
    manifest_mod.save(root, man)
    return stored


def fmt(x: float | None, spec: str) -> str:
    """A figure for tables; '-' when absent or not computed."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summary_table(results: dict[str, dict[str, Any]]) -> Any:
    """The client verdicts as a rich table: one row per (client, variant)."""
    from rich.table import Table

    table = Table(title="real clients (transformers.js) vs golden PyTorch fp32")
    for col in ("client", "variant", "verdict", "tok max abs", "emb max abs", "cos min", "cos mean", "top-5",
                "vs Python ORT", "cases", "time"):
        table.add_column(col, justify="left" if col in ("client", "variant", "verdict") else "right")
    colors = {"pass": "green", "fail": "red", "error": "red", "unsupported": "yellow"}
    for name, entry in results.items():
        for variant, v in entry["variants"].items():
            m = v["metrics"] or {}
            ort = (v.get("vs_python_ort") or {}).get("pooled_max_abs")
            seconds = sum(x for x in (v.get("load_s"), v.get("run_s")) if x is not None)
            table.add_row(name, variant, f"[{colors[v['verdict']]}]{VERDICT_TEXT[v['verdict']]}[/]",
                          fmt(m.get("tokens_max_abs"), ".2e"), fmt(m.get("pooled_max_abs"), ".2e"),
                          fmt(m.get("cos_min"), ".6f"), fmt(m.get("cos_mean"), ".6f"), fmt(m.get("top5_mean"), ".2f"),
                          fmt(ort, ".1e"), str(v["cases"]), f"{seconds:.1f}s" if seconds else "-")
    return table


PROBE_TEXT = {
    "pipeline_mean": "feature-extraction pipeline, pooling 'mean' + normalize (skips the graph's {what})",
    "pipeline_last_token": "feature-extraction pipeline, pooling 'last_token' + normalize",
    "bare_queries": "the model without the query prompt",
}


def probe_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The "would have failed" figures of model-mode runs, one line per (client, variant, probe)."""
    lines = []
    for name, entry in results.items():
        for variant, v in entry["variants"].items():
            for probe, f in (v.get("would_have_failed") or {}).items():
                if not f.get("rows"):
                    continue
                what = PROBE_TEXT.get(probe, probe).format(what="head")
                if "dims" in f:
                    lines.append(f"{name} {variant}: {what}: {f['dims'][0]}-dim vectors, not {f['dims'][1]}: fails")
                    continue
                verdict = "below the fp16 gate: such a client fails" if f["below_fp16_gate"] else \
                    "meets the fp16 gate: this client gets the golden"
                own = f" (vs this run's sentence_embedding: cos min {f['vs_graph_cos_min']:.6f})" \
                    if "vs_graph_cos_min" in f else ""
                lines.append(f"{name} {variant}: {what}: cos min {f['cos_min']:.4f} mean {f['cos_mean']:.4f} over "
                             f"{f['rows']} rows vs the golden{own}, {verdict}")
    return lines


def problem_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """Everything that makes a client fail, one readable line each (tokenizer, thresholds, errors, network)."""
    lines = []
    for name, entry in results.items():
        for m in (entry.get("tokenizer") or {}).get("mismatches", []):
            if m.get("known"):
                continue  # reported by unsupported_lines: not a failure
            lines.append(f"{name}: token ids differ for text {m['text']} ({m['preview'][:40]!r}...): "
                         f"{m['explanation']}")
        for variant, v in entry["variants"].items():
            lines += [f"{name} {variant}: {f}" for f in v["failures"]]
        for url in entry.get("off_origin_requests", []):
            lines.append(f"{name}: the page requested {url} (outside 127.0.0.1; blocked)")
    return lines


def unsupported_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """Neither a pass nor a failure, but worth a line: why a device could not run a dtype, and each
    input whose token ids differ by a known, explained client behaviour (left out of the comparison)."""
    lines = [f"{name} {variant}: not supported on this device: {v['notes'][0]}"
             for name, entry in results.items() for variant, v in entry["variants"].items()
             if v["verdict"] == "unsupported"]
    for name, entry in results.items():
        for m in (entry.get("tokenizer") or {}).get("mismatches", []):
            if m.get("known"):
                lines.append(f"{name}: token ids differ for text {m['text']} ({m['preview'][:40]!r}...): "
                             f"{m['explanation']}; reported, not a failure")
    return lines
