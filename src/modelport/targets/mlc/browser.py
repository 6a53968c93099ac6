"""The real-client check of the MLC target: WebLLM in headless Chromium (SwiftShader WebGPU).

The validator calls this from MLCSession.extra_metrics (encoder.py): WebLLM 0.2.86 loads the package
and the WebGPU model library from 127.0.0.1 through the package's own `webllm-app-config.js`, the
artifact served the way the hub serves a published repo (/<org>/<name>/resolve/main/<file>, the URL
WebLLM builds from a hub id), and embeds the validation texts twice, one `embeddings.create` call
each (WebLLM pads and batches itself):
  - by token ids (the golden ids): gated like the Node check (fp32: max abs ≤ 1e-5 vs PyTorch);
  - by text, after the special-token rule (WebLLM's tokenizer adds none, so each text is wrapped in
    the tokenizer's own prefix/suffix tokens): gated the same way on texts that fit the max length;
    texts the reference truncated are reported, not gated (truncation cuts the wrapped suffix).
  - for a 4-bit variant (q4f32_1, q4f16_1), by ids again against PyTorch running the variant's own
    dequantized weights (`against_dequantized`): the WebGPU kernels' unpacking, judged like Node's.

A variant whose model record requires a WebGPU feature the adapter lacks (f16 requires
`shader-f16`; Chromium's SwiftShader adapter has none) is reported "not run" with the adapter's
features and WebLLM's own refusal (ShaderF16SupportError): a note, neither a pass nor a failure.

`MODELPORT_MLC_BROWSER`: `auto` (default: run when Chromium and the npm packages are installed,
otherwise say why not), `require` (missing prerequisites fail the variant), `off`.
`MODELPORT_MLC_BROWSER_MAX_TOKENS` (default 64, `all` for no limit): only texts up to this many
tokens go to the browser. SwiftShader runs WebGPU on the CPU, and one long text pads a whole batch
to its length, so the long texts (100 tokens, max length) would dominate; the Node check covers them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ... import chromium
from ...fsutil import read_json
from ...metrics import cosine_rows
from ...reference import Golden, sentence_embeddings
from ...thresholds import DEQUANT_RUNTIME_MAX_ABS, THRESHOLDS
from .layout import APP_CONFIG, JS, VARIANTS, model_name

TIMEOUT_S = 900
DEFAULT_MAX_TOKENS = 64


def missing_prerequisites() -> list[str]:
    missing = []
    if not shutil.which("node"):
        missing.append("node is not installed")
    if not os.access(chromium.path(), os.X_OK):
        missing.append(f"no Chromium at {chromium.path()}")
    for pkg in ("@mlc-ai/web-llm", "puppeteer-core"):
        if not (JS / "node_modules" / pkg).is_dir():
            missing.append(f"npm package {pkg} is not installed in {JS}")
    return missing


def max_tokens() -> int | None:
    value = os.environ.get("MODELPORT_MLC_BROWSER_MAX_TOKENS", str(DEFAULT_MAX_TOKENS))
    return None if value == "all" else int(value)


def chosen_texts(golden, limit: int | None) -> list[int]:
    """Indices of the validation texts sent to the browser (golden length within the limit)."""
    lengths = {c["text_ids"][0]: c["lengths"][0] for c in golden.cases if not c["batched"]}
    return [i for i in range(len(golden.meta["texts"])) if limit is None or lengths[i] <= limit]


# The hub repo id the artifact is served as: the check loads it at /<LOCAL_REPO>/resolve/main/, the
# URL WebLLM builds from a hub id, so it proves the layout a published repo has.
LOCAL_REPO = "modelport/artifact"


def hub_files_url(repo: str) -> str:
    """Where a hub repo's files are, relative to the hub's origin (what chromium_check.mjs serves)."""
    return f"/{repo}/resolve/main/"


def golden_inputs(golden, chosen: list[int]) -> tuple[list[list[int]], list[str]]:
    """The chosen single-text cases: their golden token ids and their raw texts."""
    ids = {c["text_ids"][0]: golden.inputs(c["name"])["input_ids"][0].astype(int).tolist()
           for c in golden.cases if not c["batched"]}
    texts = golden.meta["texts"]
    return [ids[i] for i in chosen], [texts[i] for i in chosen]


def wrap(text: str, specials: dict[str, Any]) -> str:
    """A text with the special tokens its tokenizer would add (WebLLM's tokenizer adds none)."""
    return " ".join([*specials["prefix"], text, *specials["suffix"]])


def not_runnable() -> dict[str, Any] | None:
    """The check's result when it cannot run (MODELPORT_MLC_BROWSER=off, missing Chromium or npm
    packages: a failure only under `require`), else None."""
    mode = os.environ.get("MODELPORT_MLC_BROWSER", "auto")
    if mode == "off":
        return {"webllm_chromium": {"status": "not run (MODELPORT_MLC_BROWSER=off)"}}
    missing = missing_prerequisites()
    if missing:
        why = "; ".join(missing) + " (run scripts/setup-mlc.sh)"
        fail = [f"WebLLM Chromium check required but: {why}"] if mode == "require" else []
        return {"webllm_chromium": {"status": f"not run: {why}"}, "browser_failures": fail}
    return None


def fatal(result: dict[str, Any]) -> dict[str, Any]:
    """WebLLM (or the page, or Chromium) failed: an error with the console's last lines."""
    return {"webllm_chromium": {"status": "error", "reason": result["fatal"],
                                "console_tail": result.get("console_tail", [])[-10:]},
            "browser_failures": [f"WebLLM in Chromium failed: {result['fatal'][:300]}"]}


def merge(result: dict[str, Any], check: dict[str, Any], variant: str, notes: list[str]) -> dict[str, Any]:
    """A session's extra_metrics `result` with a browser check folded in: its failures fail the
    variant, and a check that did not run is said in the report's notes (`notes`, appended)."""
    result.update(check)
    result["failures"] += result.pop("browser_failures", [])
    status = result["webllm_chromium"].get("status", "")
    if status.startswith("not run"):
        notes.append(f"{variant}: WebLLM Chromium check {status}")
    return result


def request(artifact: Path, variant: str, golden, chosen: list[int]) -> dict[str, Any]:
    """Load the artifact through its own webllm-app-config.js, served like a hub repo; texts wrapped
    in the special tokens the manifest records."""
    specials = read_json(artifact / "manifest.json")["target"]["special_tokens"]
    ids, texts = golden_inputs(golden, chosen)
    return {"hub_repos": {LOCAL_REPO: str(artifact.resolve())},
            "entry": {"app_config": f"{hub_files_url(LOCAL_REPO)}{APP_CONFIG}"},
            "model_id": f"{model_name(artifact)}-{variant}", "ids": ids,
            "texts": [wrap(t, specials) for t in texts], **browser_settings()}


def snippet_request(published: Path, repo: str, snippet: str, hub_url: str, golden,
                    chosen: list[int]) -> dict[str, Any]:
    """Load a published folder (`modelport publish --dry-run`) served as hub repo `repo` by running
    a model card's snippet as written (its `hub_url` pointed at the local server); raw texts, which
    the snippet's own withSpecialTokens wraps."""
    ids, texts = golden_inputs(golden, chosen)
    return {"hub_repos": {repo: str(published.resolve())}, "entry": {"snippet": snippet, "hub_url": hub_url},
            "ids": ids, "texts": texts, **browser_settings()}


def browser_settings() -> dict[str, Any]:
    """The request fields that say which Chromium runs and how (chromium.py's flags: SwiftShader WebGPU)."""
    return {"chromium": str(chromium.path()), "chromium_flags": list(chromium.FLAGS), "timeout_s": TIMEOUT_S}


def run_chromium(req: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="modelport-webllm-") as tmp:
        req_path, out_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req_path.write_text(json.dumps(req))
        proc = subprocess.run(["node", str(JS / "chromium_check.mjs"), str(req_path), str(out_path)], cwd=JS,
                              capture_output=True, text=True, timeout=TIMEOUT_S + 120)
        if not out_path.is_file():
            return {"fatal": f"chromium_check.mjs exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"}
        return json.loads(out_path.read_text())


def compare(result: dict[str, Any], golden, precision: str, chosen: list[int]) -> tuple[dict[str, Any], list[str]]:
    """Distances of WebLLM's embeddings to PyTorch's, by ids and by text, and the gate failures."""
    ref = sentence_embeddings(golden)[chosen]
    max_len = golden.meta["max_length"]
    all_lengths = {c["text_ids"][0]: c["lengths"][0] for c in golden.cases if not c["batched"]}
    lengths = [all_lengths[i] for i in chosen]
    fits = [k for k in range(len(chosen)) if lengths[k] < max_len]
    by_ids, by_text = np.array(result["ids"], dtype=np.float64), np.array(result["texts"], dtype=np.float64)
    ids_abs = np.abs(by_ids - ref).max(axis=1)
    text_abs = np.abs(by_text - ref).max(axis=1)
    cos_ids, cos_text = cosine_rows(ref, by_ids), cosine_rows(ref, by_text)
    metrics = {
        "by_ids": {"max_abs": float(ids_abs.max()), "cos_min": float(cos_ids.min()), "texts": len(ref)},
        "by_text": {"max_abs": float(text_abs[fits].max(initial=0.0)),
                    "cos_min": float(cos_text[fits].min(initial=1.0)), "texts": len(fits)},
        "by_text_truncated": {str(chosen[k]): {"max_abs": float(text_abs[k]), "cos": float(cos_text[k])}
                              for k in range(len(chosen)) if k not in fits},
        # WebLLM reports one total per call: it must equal the golden token count of the texts
        "token_counts_match": result["prompt_tokens"] == sum(lengths),
        "tokens_per_text_max": max(lengths),
        "chromium": result.get("chromium"), "adapter": result.get("adapter"),
        "seconds": {k: round(result[k], 1) for k in ("load_s", "ids_s", "texts_s", "page_s") if k in result},
    }
    failures = []
    t = THRESHOLDS[precision]
    for label, dist, cos in (("by ids", ids_abs, cos_ids), ("by text", text_abs[fits], cos_text[fits])):
        if not len(dist):
            continue
        if t.max_abs is not None and dist.max() > t.max_abs:
            failures.append(f"WebLLM in Chromium {label}: max abs {dist.max():.3g} > {t.max_abs:g}")
        if t.cos_min is not None and cos.min() < t.cos_min:
            failures.append(f"WebLLM in Chromium {label}: cosine min {cos.min():.6f} < {t.cos_min}")
    if result.get("off_origin_requests"):
        failures.append(f"WebLLM requested other origins: {result['off_origin_requests'][:3]}")
    return metrics, failures


def validate_in_chromium(artifact: Path, variant: str, golden) -> dict[str, Any]:
    """{"webllm_chromium": metrics or why it did not run, "browser_failures": [...]}."""
    skipped = not_runnable()
    if skipped:
        return skipped
    chosen = chosen_texts(golden, max_tokens())
    result = run_chromium(request(artifact, variant, golden, chosen))
    if "fatal" in result:
        return fatal(result)
    if "unsupported" in result:
        return unsupported(result, variant)
    metrics, failures = compare(result, golden, VARIANTS[variant].precision, chosen)
    entry = read_json(artifact / "manifest.json")["target"]["variants"][variant]
    if "dequantized_reference" in entry:
        metrics["by_ids_vs_dequantized"], more = against_dequantized(artifact, entry, golden, result, chosen)
        failures += more
    metrics["status"] = "pass" if not failures else "fail"
    return {"webllm_chromium": metrics, "browser_failures": failures}


def against_dequantized(artifact: Path, entry: dict[str, Any], golden, result: dict[str, Any],
                        chosen: list[int]) -> tuple[dict[str, Any], list[str]]:
    """A 4-bit variant's WebGPU kernels vs PyTorch running the same dequantized weights (the
    reference the converter stored): float32 compute within DEQUANT_RUNTIME_MAX_ABS, float16
    compute within the fp16 cosine gate. The q4 cosine gate vs fp32 cannot see a kernel that
    unpacks a few groups wrong; this can."""
    with np.load(artifact / entry["dequantized_reference"]) as z:
        ref = sentence_embeddings(Golden(meta=golden.meta, arrays={k: z[k] for k in z.files}))[chosen]
    got = np.array(result["ids"], dtype=np.float64)
    compute = entry["group_quantization"]["scale_dtype"]
    figures = {"max_abs": float(np.abs(got - ref).max()), "cos_min": float(cosine_rows(ref, got).min()),
               "compute": compute}
    failures = []
    if compute == "float32" and figures["max_abs"] > DEQUANT_RUNTIME_MAX_ABS:
        failures.append(f"WebLLM in Chromium vs PyTorch on the same dequantized weights: max abs "
                        f"{figures['max_abs']:.3g} > {DEQUANT_RUNTIME_MAX_ABS:g}")
    elif compute == "float16" and figures["cos_min"] < THRESHOLDS["fp16"].cos_min:
        failures.append(f"WebLLM in Chromium vs PyTorch on the same dequantized weights: cosine min "
                        f"{figures['cos_min']:.6f} < {THRESHOLDS['fp16'].cos_min}")
    return figures, failures


# The errors WebLLM 0.2.86 throws for a model record whose required_features the device lacks.
FEATURE_ERRORS = ("ShaderF16SupportError", "FeatureSupportError")


def unsupported(result: dict[str, Any], variant: str) -> dict[str, Any]:
    """The adapter lacks a feature the variant requires (f16 needs shader-f16; SwiftShader has none).

    Not a pass (nothing was computed) and not a failure of the artifact (the machine cannot run
    it): "not run", with the adapter's features and WebLLM's own refusal as evidence. WebLLM
    loading the variant anyway would mean the app config's required_features is not honoured:
    that is a failure.
    """
    info = result["unsupported"]
    missing, error = info["missing"], info.get("webllm_error")
    adapter = result.get("adapter") or {}
    arch = (adapter.get("info") or {}).get("architecture") or "no adapter"
    check = {"status": f"not run: this Chromium's WebGPU adapter ({arch}) has no {', '.join(missing)}; "
                       f"WebLLM refuses the variant ({(error or 'no error').split(':')[0]})",
             "missing_features": missing, "webllm_error": error, "adapter": adapter,
             "chromium": result.get("chromium")}
    failures = []
    if error is None:
        failures.append(f"WebLLM loaded {variant} without {', '.join(missing)}: required_features not enforced")
    elif not error.startswith(FEATURE_ERRORS):
        failures.append(f"WebLLM failed on {variant} with an unexpected error: {error[:300]}")
    return {"webllm_chromium": check, "browser_failures": failures}



# --- chat packages (decoder LLMs) -----------------------------------------------------------------------------

# A golden step whose top-2 logit gap is below this is a near tie: which token wins there depends on
# float rounding, and the tokens after it are a different (equally valid) continuation. Tokens are
# compared up to the first such step (the fp32 runtimes here differ from PyTorch by ~1e-5 in logits).
CLEAR_GAP = 1e-3


def chat_cases(golden) -> list[dict[str, Any]]:
    """Every golden prompt: plain ones go through completions.create, chat ones through
    chat.completions.create (WebLLM applies the package's conversation template)."""
    return [{"name": p["name"], "text": p["text"], "messages": p["messages"] if p["chat"] else None,
             "steps": golden.steps, "eos": golden.eos_ids} for p in golden.prompts]


def chat_request(artifact: Path, variant: str, golden) -> dict[str, Any]:
    """The package loaded through its own webllm-app-config.js, served like a hub repo."""
    return {"hub_repos": {LOCAL_REPO: str(artifact.resolve())},
            "entry": {"app_config": f"{hub_files_url(LOCAL_REPO)}{APP_CONFIG}"}, "page": "webllm_chat.html",
            "model_id": f"{model_name(artifact)}-{variant}", "ids": [], "texts": [], "cases": chat_cases(golden),
            **browser_settings()}


def chat_snippet_request(published: Path, repo: str, snippet: str, hub_url: str, golden) -> dict[str, Any]:
    """A published chat package (`modelport publish --dry-run`) served as hub repo `repo`, loaded by
    running a model card's snippet as written (its `hub_url` pointed at the local server)."""
    return {"hub_repos": {repo: str(published.resolve())}, "page": "webllm_chat.html",
            "entry": {"snippet": snippet, "hub_url": hub_url, "exports": ["engine"]}, "model_id": None,
            "ids": [], "texts": [], "cases": chat_cases(golden), **browser_settings()}


def compare_chat(result: dict[str, Any], golden) -> tuple[dict[str, Any], list[str]]:
    """WebLLM's greedy tokens vs the golden's up to the first near tie; its prompt token ids (plain
    prompts: WebLLM's tokenizer; chat: the count its conversation template produced) vs the golden's."""
    from ...lm import top2_gap

    failures: list[str] = []
    cases = {}
    for got in result["cases"]:
        name = got["name"]
        ref = golden.greedy_tokens(name).tolist()
        ids = golden.input_ids(name)[0].tolist()
        gaps = [top2_gap(row, golden.eos_ids) for row in golden.step_logits(name)]
        clear = next((i for i, g in enumerate(gaps) if g < CLEAR_GAP), len(gaps))
        equal = got["tokens"][:clear] == ref[:clear]
        prompt_ok = got["prompt_ids"] == ids if got["prompt_ids"] is not None else got["prompt_tokens"] == len(ids)
        cases[name] = {"tokens_equal": equal, "compared": clear, "of": len(ref), "prompt_ids_equal": prompt_ok,
                       "webllm_tokens": got["tokens"], "prefill_tokens_per_s": got.get("prefill_tokens_per_s"),
                       "decode_tokens_per_s": got.get("decode_tokens_per_s"), "text": got["text"][:120]}
        if not prompt_ok:
            failures.append(f"WebLLM in Chromium, prompt {name!r}: prompt token ids differ from the golden's")
        if not equal:
            failures.append(f"WebLLM in Chromium, prompt {name!r}: greedy tokens {got['tokens'][:clear]} != PyTorch "
                            f"{ref[:clear]} (first {clear} steps, top-2 gap >= {CLEAR_GAP:g})")
    if result.get("off_origin_requests"):
        failures.append(f"WebLLM requested other origins: {result['off_origin_requests'][:3]}")
    argsort = result.get("argsort") or {}
    if not argsort.get("equal"):
        failures.append(f"the library's argsort_probs differs from a reference sort in WebLLM: {argsort}")
    rates = [c for c in result["cases"] if c.get("decode_tokens_per_s")]
    metrics = {"cases": cases, "greedy_equal": sum(c["tokens_equal"] for c in cases.values()), "argsort": argsort,
               "prompts": len(cases), "chromium": result.get("chromium"), "adapter": result.get("adapter"),
               "load_s": round(result.get("load_s", 0.0), 1),
               "decode_tokens_per_s_median": float(np.median([c["decode_tokens_per_s"] for c in rates])) if rates else None,
               "prefill_tokens_per_s_median": float(np.median([c["prefill_tokens_per_s"] for c in rates])) if rates else None}
    return metrics, failures


def validate_chat_in_chromium(artifact: Path, variant: str, golden) -> dict[str, Any]:
    """{"webllm_chromium": metrics or why it did not run, "browser_failures": [...]} for a chat package.

    A 4-bit variant is compared with PyTorch on its own dequantized weights (the golden the Node
    check gates it on), the fp32 variant with the fp32 golden."""
    from ...lm import LMGolden, golden_name

    skipped = not_runnable()
    if skipped:
        return skipped
    entry = read_json(artifact / "manifest.json")["target"]["variants"][variant]
    against = LMGolden.load(artifact, golden_name(variant)) if "dequantized_reference" in entry else golden
    result = run_chromium(chat_request(artifact, variant, against))
    if "fatal" in result:
        return fatal(result)
    if "unsupported" in result:
        return unsupported(result, variant)
    metrics, failures = compare_chat(result, against)
    metrics["gated_against"] = "dequantized" if against is not golden else "fp32"
    metrics["status"] = "pass" if not failures else "fail"
    return {"webllm_chromium": metrics, "browser_failures": failures}
