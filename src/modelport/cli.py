"""The `modelport` command line.

    modelport convert <model> --target onnx [--variants fp32,fp16,q8,uint8,q4,q4f16] [--out DIR]
    modelport validate <artifact-dir> [--variants ...]
    modelport audit <foreign-artifact-dir> --reference <model> [--out DIR]
    modelport clients <artifact-dir> [--clients node,chromium-webgpu,chromium-wasm] [--variants ...] [--quick]
    modelport report <artifact-dir>
    modelport recipes
    modelport fetch <org/name>[@revision]
    modelport models
    modelport publish <artifact-dir> --repo <user/name> [--private] [--dry-run DIR]
    modelport bench <artifact-dir> [--threads 2] [--optimum-python PATH] [--also DIR] [--json OUT]

Every failure prints one line (`error: ...`), never a traceback: 1 validation failed (after the
table and the failing inputs), 2 bad input, 3 a toolchain or the environment failed (the line names
a log file with the details), 4 a bug in modelport (log file too).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_TOOLCHAIN, ModelportError, ToolchainError, ValidationFailed

EPILOG = """\
exit codes: 0 success, 1 validation failed, 2 bad input (message says why), 3 toolchain or environment
failure (missing package, converter crash: the message names a log file; full disk, read-only or unwritable
path, hub unreachable: the message names the path or host), 4 internal error (a bug: log file).
environment: MODELPORT_CACHE (built tiny models; default ~/.cache/modelport),
HF_HUB_OFFLINE / HF_HOME (standard Hugging Face cache), SOURCE_DATE_EPOCH (manifest timestamp).
"""


def _parser() -> argparse.ArgumentParser:
    from .catalog import MODELS
    from .targets import REGISTRY, TARGETS

    p = argparse.ArgumentParser(
        prog="modelport",
        description="Convert Hugging Face models to on-device formats and prove each artifact still computes "
        "what the PyTorch original computes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"modelport {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser(
        "convert",
        help="convert a model, validate it, write artifact + manifest",
        description="Convert MODEL for TARGET. Steps: check the model; run the PyTorch fp32 reference on the "
        "fixed validation set (golden outputs, stored in the artifact); write every variant; write "
        "manifest.json (tool versions, command, sha256 of every file); validate every variant against "
        "the golden outputs. Output is written to a temp dir and renamed into place.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("model", help=f"a local Hugging Face model directory, a hub id org/name[@revision] (from the "
                   f"Hugging Face cache, downloaded if missing), or a known model: {', '.join(MODELS)}")
    c.add_argument("--target", "-t", required=True, choices=sorted(TARGETS), help="output format")
    c.add_argument(
        "--variants",
        help="comma-separated variants to write (default: the target's defaults for the model's family). "
        + "; ".join(f"{t}: {','.join(REGISTRY.all_variants(t))}" for t in TARGETS),
    )
    c.add_argument("--shape", help="coreml: input shape of the packages (batch 1): fixed[:N] (default fixed:128), "
                   "range[:LO-HI] (default 1 to the max length), enumerated[:N,N,...] (default 32,64,...,max length)")
    c.add_argument("--context", type=int, help="coreml decoders: KV-cache length of the stateful package "
                   "(default: the target's own; prefill + generated tokens must fit)")
    c.add_argument("--truncate-dim", type=int, metavar="N",
                   help="embedders: ship the first N dims of the sentence embedding (Matryoshka; re-normalized "
                        "when the model normalizes), for every target")
    c.add_argument("--quant-plan", metavar="PLAN",
                   help="searched variants (onnx q4mix, q4mix-wasm; mlx q4mix; coreml palmix): the folder "
                        "`modelport quantize-search` wrote, or one plan-<variant>.json; the variant is rebuilt "
                        "from it byte for byte and the plan is recorded in the manifest")
    c.add_argument("--out", "-o", type=Path, help="artifact directory (default: artifacts/<model>/<target>)")
    c.add_argument("--force", action="store_true", help="replace an existing artifact directory")
    c.add_argument("--allow-pickle", action="store_true",
                   help="accept pytorch_model.bin (pickle) weights; they can execute code when loaded")
    c.add_argument("--trust-remote-code", action="store_true",
                   help="accept models whose config needs code from the model repo (auto_map)")
    c.add_argument("--ignore-lint", action="store_true",
                   help="convert even when the config lint finds an error (findings are recorded in the manifest)")
    c.add_argument("--skip-validation", action="store_true",
                   help="write the artifact without validating (run `modelport validate` later, e.g. in the "
                   "validator image)")

    v = sub.add_parser(
        "validate",
        help="re-run an artifact's validation and update its manifest",
        description="Check every file against manifest.json (sha256), run each variant on the golden inputs "
        "stored in the artifact, compare with the PyTorch outputs using the threshold table, and record the "
        "result in manifest.json. Needs only the target's runtime, not torch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("artifact", type=Path, help="artifact directory written by `modelport convert`")
    v.add_argument("--variants", help="comma-separated subset of the artifact's variants (default: all)")

    cl = sub.add_parser(
        "clients",
        help="run an ONNX artifact in real clients (transformers.js in Node / headless Chromium) and record it",
        description="Check every file against manifest.json, then run each variant through transformers.js's "
        "feature-extraction pipeline in the chosen clients (node: onnxruntime-node on CPU; chromium-webgpu / "
        "chromium-wasm: headless Chromium, page served from 127.0.0.1, nothing from a CDN). Each run is judged "
        "three ways: token ids vs the golden ids (per input), the threshold table vs the golden outputs, and "
        "Python onnxruntime on the same token ids (fp32: max abs <= 1e-6). Decoder artifacts (causal-lm) run the "
        "text-generation pipeline instead (greedy, 16 tokens per golden prompt; clients node, chromium-wasm): "
        "tokenizer ids vs the golden first, then the generated tokens must equal Python onnxruntime's and meet the "
        "decoder token gate. Results go to manifest.json "
        "validation.clients and report.html. Needs scripts/setup-clients.sh.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cl.add_argument("artifact", type=Path, help="ONNX artifact directory (transformers.js layout)")
    cl.add_argument("--clients", default="node",
                    help="comma-separated: node, chromium-webgpu, chromium-wasm (default: node)")
    cl.add_argument("--variants", help="comma-separated subset of the artifact's variants (default: all)")
    cl.add_argument("--quick", action="store_true",
                    help="run 4 of the golden cases (empty, CJK and emoji texts, the smallest padded batch) "
                    "instead of all 50; for slow devices like SwiftShader WebGPU (~4 s per call). Per-input gates "
                    "(max abs, cos min) apply; cos mean and top-5 describe the whole set and are not gated")

    qs = sub.add_parser(
        "quantize-search",
        help="search the smallest quantized variant that still computes like the original (writes plans)",
        description="Convert MODEL's float variant for TARGET and validate it, then let the target search its "
        "quantized format: per-layer sensitivity on a fixed dev text set, candidate recipes (round-to-nearest, "
        "searched scales, GPTQ with a fixed calibration set, mixed 4/8-bit by sensitivity, embedding table "
        "formats), naive variants and peer tools as baseline rows, and the size/quality Pareto front. Writes "
        "search.json, plan-<variant>.json for each chosen variant and pareto.png to --out, and prints the "
        "`modelport convert ... --quant-plan` command that writes and validates the chosen variants on the "
        "validation set (which the search never sees).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qs.add_argument("model", help="as for convert")
    qs.add_argument("--target", "-t", required=True, choices=sorted(TARGETS), help="output format")
    qs.add_argument("--goal", help="what the chosen variant must reach on the dev texts: encoders "
                    "cos=MEAN,min=MIN,top5=TOP5 (default cos=0.99,min=0.98,top5=0.95); decoders kld=MEAN_KLD,top1=SHARE "
                    "(default kld=1e-3,top1=0.99)")
    qs.add_argument("--quick", action="store_true", help="a small candidate grid (the same code paths; for tests)")
    qs.add_argument("--out", "-o", type=Path,
                    help="search folder (default: artifacts/<model>/<target>-quant-search)")
    qs.add_argument("--force", action="store_true", help="replace an existing search folder")
    qs.add_argument("--allow-pickle", action="store_true", help="as for convert")
    qs.add_argument("--trust-remote-code", action="store_true", help="as for convert")

    rp = sub.add_parser("report", help="write report.html: verdicts, figures, file sizes and plots",
                        description="Write <dir>/report.html from the manifest(s): per target and variant the "
                        "verdict of the Python validator and of each real client, max abs / cosine / top-5, file "
                        "sizes, tokenizer parity, and plots (embedded, viewable offline). <dir> is an artifact "
                        "or a folder of artifacts (artifacts/<model>/).")
    rp.add_argument("artifact", type=Path, help="artifact directory, or a folder holding several")

    au = sub.add_parser(
        "audit",
        help="judge an artifact modelport did not make (transformers.js folder, mlx-lm folder) against its original",
        description="Run modelport's measurements on someone else's artifact: detect its layout (a transformers.js "
        "folder as the onnx-community repos ship it: config.json + onnx/model_<dtype>.onnx; an mlx-lm folder as "
        "`mlx_lm.convert` writes it, or a folder of them), compute the golden from the reference checkpoint with "
        "PyTorch fp32, run every variant and judge it with the family's gates for the precision its file name or "
        "quantization config implies. Quantized decoders are gated against PyTorch on the weights they store "
        "(computed here), with their distance to fp32 reported; every variant's weights are checked against the "
        "reference's. WebLLM packages are not audited yet.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    au.add_argument("artifact", type=Path, help="the artifact folder to audit")
    au.add_argument("--reference", required=True,
                    help="the original model: a local Hugging Face model directory, hub id or known model name")
    au.add_argument("--out", "-o", type=Path, help="write audit.json to this folder (default: print only)")
    au.add_argument("--trust-remote-code", action="store_true", help="as for convert")

    _add_hub_commands(sub)
    from . import bench

    bench.add_arguments(sub.add_parser(
        "bench", help="time an artifact beside PyTorch and the peers (encoders: 1 text, batches; decoders: tokens/s)",
        description="Time a validated artifact through modelport.runtime beside its peers, in one run. Encoders: "
        "ms per call of one text (100 calls) and texts/s in batches of 32 for PyTorch eager (sentence-transformers), "
        "every variant in onnxruntime CPU and in transformers.js on Node, artifacts given with --also (MLX; MLC and "
        "the Core ML interpreter for correctness only) and optimum's export (plain and -O2, --optimum-python); the "
        "lowest cosine to PyTorch beside every speed. Decoders: prefill and decode tokens/s, greedy tokens equal to "
        "PyTorch's. See docs/runtime.md.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter))
    sub.add_parser("recipes", help="list supported architectures, known models and thresholds",
                   description="List the architecture registry, the models modelport can build or load "
                   "offline, and the validation threshold table.")
    return p


def _print_report(out, report) -> None:
    from rich.markup import escape

    from .ui import report_table

    from rich.console import Console

    data = report.to_json() if hasattr(report, "to_json") else report
    # in logs (no terminal) rich assumes 80 columns and squeezes the columns into '…': print wider there
    wide = out if out.is_terminal else Console(stderr=True, highlight=False, width=150)
    wide.print(report_table(data))
    for note in data.get("notes", []):
        out.print(f"[yellow]note:[/] {escape(note)}")
    for name, r in data["variants"].items():
        for f in r["failures"]:
            out.print(f"[red]✗ {name}:[/] {escape(f)}")
        for n in r["notes"]:
            out.print(f"[dim]  {name}: {escape(n)}[/]")


def _convert(args: argparse.Namespace, out) -> int:
    from rich.markup import escape

    from .convert import ConvertRequest, run
    from .ui import Steps

    req = ConvertRequest(
        model=args.model, target=args.target, variants=args.variants, out=args.out, force=args.force,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
        validate=not args.skip_validation, ignore_lint=args.ignore_lint, command=tuple(["modelport"] + sys.argv[1:]),
        options={k: v for k, v in (("shape", args.shape), ("context", args.context), ("quant_plan", args.quant_plan))
                 if v is not None},
        truncate_dim=args.truncate_dim,
    )
    with Steps(out) as steps:
        path, report = run(req, steps)
    if report is not None:
        _print_report(out, report)
        _write_report(out, path)
        if not report.passed:
            failed = [r.variant for r in report.results if not r.passed]
            raise ValidationFailed(f"validation failed for {', '.join(failed)}; artifact kept at {path} for inspection")
    out.print(f"[bold green]wrote {escape(str(path))}[/]" + (" (not validated)" if report is None else " (validated)"),
              soft_wrap=True)
    return 0


def _quantize_search(args: argparse.Namespace, out) -> int:
    from rich.markup import escape

    from .quant.run import SearchRequest, float_variant_of, next_command, run
    from .ui import Steps

    req = SearchRequest(model=args.model, target=args.target, goal=args.goal, out=args.out, force=args.force,
                        quick=args.quick, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    with Steps(out) as steps:
        path, result = run(req, steps)
    for line in result.table():
        out.print(escape(line), soft_wrap=True)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    out.print(f"[bold green]wrote {escape(str(path))}[/] (search.json, plans, pareto.png)", soft_wrap=True)
    command = next_command(args.model, args.target, path, result, float_variant_of(args.target, result.family))
    if command is None:
        out.print(f"[yellow]no candidate met the goal {escape(result.goal.text())}[/]: the best reachable front is "
                  f"in {escape(str(path / 'search.json'))} and pareto.png", soft_wrap=True)
        return 1
    out.print(f"next: {escape(command)}", soft_wrap=True)
    return 0


def _verified_manifest(root: Path) -> dict:
    """The artifact's manifest, after checking every file against its sha256 (a changed file is a failure)."""
    from . import manifest
    from .fsutil import JSONFileError, read_json

    if (root / manifest.MANIFEST).is_file():
        try:
            read_json(root / manifest.MANIFEST)
        except JSONFileError as e:
            raise ModelportError(f"artifact damaged: {e.path}: {e.why}") from None
    man = manifest.load(root)  # refuses a missing manifest, an unknown version, a schema mismatch
    problems = manifest.verify_files(root, man)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValidationFailed(f"artifact files do not match manifest.json: {shown}")
    _check_readable(root, man)
    return man


def _check_readable(root: Path, man: dict) -> None:
    """Parse the artifact's JSON files and golden arrays before any runtime starts.

    A file rewritten together with its manifest hash passes verify_files; this says which file is
    damaged and why, in one line (exit 2), instead of a traceback from deep inside a session.
    """
    import zipfile

    import numpy as np

    from .fsutil import JSONFileError, read_json

    for name in man["files"]:
        path = root / name
        if name.endswith(".json"):
            try:
                read_json(path)
            except JSONFileError as e:
                raise ModelportError(f"artifact damaged: {path}: {e.why}") from None
        elif name.startswith("reference/") and name.endswith(".npz"):
            try:
                with np.load(path, allow_pickle=False) as z:
                    for key in z.files:
                        z[key]  # decompresses: a truncated member fails here
            except (zipfile.BadZipFile, ValueError, EOFError, KeyError, zipfile.LargeZipFile) as e:
                why = (str(e).splitlines() or [""])[0][:200]
                raise ModelportError(f"artifact damaged: {path}: not a readable .npz array file "
                                     f"({type(e).__name__}: {why})") from None


def _variant_list(spec: str | None) -> list[str] | None:
    """--variants for validate / clients: None (all); an empty value is refused, never read as "all"."""
    if spec is None:
        return None
    names = [v.strip() for v in spec.split(",") if v.strip()]
    if not names:
        raise ModelportError("--variants is empty; omit it for all of the artifact's variants")
    return names


def _require_writable(root: Path) -> None:
    """validate records its result in manifest.json (and report.html): refuse a read-only artifact before
    running anything, rather than after the whole validation."""
    from .manifest import MANIFEST

    for path in (root, root / MANIFEST):
        if path.exists() and not os.access(path, os.W_OK):
            raise ToolchainError(f"cannot write to {path}: `validate` records its result in {root / MANIFEST}; "
                                 "make the artifact writable (chmod -R u+w), or pass --variants to check "
                                 "without recording")


def _validate(args: argparse.Namespace, out) -> int:
    from rich.markup import escape

    from .ui import Steps
    from .validate import record, validate

    root = args.artifact
    variants = _variant_list(args.variants)
    _verified_manifest(root)
    if variants is None:
        _require_writable(root)
    with Steps(out) as steps:
        report = validate(root, variants, progress=steps)
    if variants is None:
        record(root, report)
    _print_report(out, report)
    _write_report(out, root)
    if not report.passed:
        failed = [r.variant for r in report.results if not r.passed]
        raise ValidationFailed(f"validation failed for {', '.join(failed)}")
    out.print(f"[bold green]{escape(str(root))}: all {len(report.results)} variants pass[/]", soft_wrap=True)
    return 0


def _audit(args: argparse.Namespace, out) -> int:
    """`modelport audit`: the validate table for a foreign artifact (audit.py), audit.json with --out."""
    from rich.markup import escape

    from .audit import audit
    from .ui import Steps

    with Steps(out) as steps:
        result = audit(args.artifact, args.reference, progress=steps, trust_remote_code=args.trust_remote_code)
    _print_report(out, result.report)
    if args.out is not None:
        out.print(f"wrote {escape(str(result.save(args.out)))}", soft_wrap=True)
    if not result.passed:
        failed = [r.variant for r in result.report.results if not r.passed]
        raise ValidationFailed(f"audit failed for {', '.join(failed)}")
    judged = len(result.report.results)
    out.print(f"[bold green]{escape(str(args.artifact))}: {judged} judged variant{'s' * (judged != 1)} pass[/]"
              + (f" ({len(result.not_judged)} not judged)" if result.not_judged else ""), soft_wrap=True)
    return 0


def _write_report(out, path: Path) -> None:
    """report.html after every validation run; where the folder is not writable one line says so, never an
    error: the verdict is already printed and recorded."""
    from rich.markup import escape  # a path may hold [brackets]: markup would swallow them

    from .report import write_report

    try:
        out.print(escape(f"wrote {write_report(path)}"), soft_wrap=True)
    except OSError as e:
        where = argparse.Namespace(command="report", artifact=path)
        out.print(f"[yellow]{escape(f'report.html not written: {_os_error_line(e, where)}')}[/]", soft_wrap=True)


def _report(args: argparse.Namespace, out) -> int:
    from rich.markup import escape

    from .report import write_report

    written = write_report(args.artifact)
    out.print(escape(f"wrote {written}"), soft_wrap=True)
    out.print(escape(f"open it with: xdg-open {written}  (or python -m http.server -d {written.parent}, "
                     f"then http://127.0.0.1:8000/{written.name})"), soft_wrap=True)
    return 0


def _clients(args: argparse.Namespace, out) -> int:
    from rich.console import Console
    from rich.markup import escape

    from . import clients, families

    root = args.artifact
    man = _verified_manifest(root)
    names = [c.strip() for c in args.clients.split(",") if c.strip()]
    if not names:
        raise ModelportError("--clients is empty; omit it for node")
    variants = _variant_list(args.variants)
    progress = lambda line: out.print(f"[dim]  {escape(line)}[/]")  # noqa: E731
    # the family picks the transformers.js task: feature-extraction or text-generation
    family = families.get(man["target"]["family"])
    results = family.check_clients(root, {n: variants for n in names}, tuple(names) if args.quick else (), progress)
    table = family.clients_table(results)
    clients.record(root, results)
    # In logs (no terminal) rich assumes 80 columns and squeezes 11 columns into '…': print wider there.
    wide = out if out.is_terminal else Console(stderr=True, highlight=False, width=150)
    wide.print(table)
    for line in clients.problem_lines(results):
        out.print(f"[red]✗[/] {escape(line)}", soft_wrap=True)
    for line in clients.unsupported_lines(results):
        out.print(f"[yellow]–[/] {escape(line)}", soft_wrap=True)
    for line in clients.probe_lines(results):  # what a client skipping the graph's head would have got
        out.print(f"[dim]  {escape(line)}[/]", soft_wrap=True)
    _write_report(out, root)
    failed = [n for n, e in results.items() if e["status"] == "fail"]
    if failed:
        raise ValidationFailed(f"client check failed for {', '.join(failed)} (see above; recorded in "
                               f"{root}/manifest.json)")
    out.print(f"[bold green]{escape(str(root))}: {', '.join(names)} pass[/]", soft_wrap=True)
    return 0


def _known_models_table():
    """The models modelport can build or load without a hub (`recipes` and `models` both list them)."""
    from rich.table import Table

    from .catalog import MODELS

    table = Table(title="known models (no hub needed)")
    table.add_column("name")
    table.add_column("what")
    for k in MODELS.values():
        table.add_row(k.name, k.description)
    return table


def _registry_table():
    """Targets x families from the registry: what converts what, with which variants and options."""
    import dataclasses

    from rich.table import Table

    from .targets import REGISTRY

    table = Table(title="targets x families (registered converters)")
    for col in ("target", "family", "variants (default first)", "options", "converter"):
        table.add_column(col)
    for target, family in REGISTRY.pairs():
        cls = REGISTRY.converter_class(target, family)
        opts = ", ".join("--" + f.name.replace("_", "-") for f in dataclasses.fields(cls.Options)) or "-"
        table.add_row(target, family, ", ".join(cls.variants), opts, f"{cls.__module__}.{cls.__qualname__}")
    return table


def _recipes(out) -> int:
    from rich.table import Table

    from .recipes import ARCHITECTURES
    from .thresholds import THRESHOLDS

    t = Table(title="architectures")
    for col in ("model_type", "family", "inputs", "default pooling", "targets", "quirks"):
        t.add_column(col)
    for a in ARCHITECTURES.values():
        family = a.family + (", decoder-embedder (Pooling module)" if a.embedder else "")
        t.add_row(a.model_type, family, ", ".join(a.inputs), a.default_pooling, ", ".join(a.targets),
                  ", ".join(q.name for q in a.quirks))
    out.print(t)
    out.print(_registry_table())
    out.print(_known_models_table())
    th = Table(title="validation thresholds")
    for col in ("precision", "max abs", "cos min", "cos mean", "top-5 mean", "batches gated"):
        th.add_column(col)
    for name, x in THRESHOLDS.items():
        th.add_row(name, *(str(v) if v is not None else "-" for v in (x.max_abs, x.cos_min, x.cos_mean, x.top5_mean)),
                   "yes" if x.batch_invariant else "no (per input)")
    out.print(th)
    from .thresholds import LM_THRESHOLDS

    lt = Table(title="decoder LLM thresholds (5 prompts x 16 greedy steps; max abs of logits)")
    for col in ("precision", "against", "prefill / step / KV-vs-full max abs", "top-1 (tie-aware)", "KLD vs fp32"):
        lt.add_column(col)
    for name, x in LM_THRESHOLDS.items():
        scale = " x max |logit|" if x.relative else ""
        kld = ", ".join(f for f in (f"mean <= {x.kld_mean_max:g}" if x.kld_mean_max is not None else "",
                                    f"same top-1 >= {x.same_top1_min:g}" if x.same_top1_min is not None else "") if f)
        lt.add_row(name, f"{x.reference} golden",
                   f"{x.prefill_max_abs:g} / {x.step_max_abs:g} / {x.kv_vs_full_max_abs:g}{scale}",
                   f"where gap > {x.tie_margin:g} x step limit", kld or "reported")
    out.print(lt)
    return 0


def _add_hub_commands(sub) -> None:
    """fetch / models / publish: the Hugging Face hub side (hub.py, publish.py, modelcard.py)."""
    f = sub.add_parser(
        "fetch", help="download a hub model into the Hugging Face cache (safetensors, configs, tokenizer only)",
        description="Download org/name[@revision] into the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE) "
        "and print the commit it resolved to. Only *.safetensors, *.json, tokenizer files, sentence-transformers "
        "module folders and README.md are fetched; pickle weights (*.bin, *.pt), other frameworks' weights and "
        "ONNX files never are. Files already cached are never downloaded again, and a dropped connection resumes "
        "where it stopped. "
        "With HF_HUB_OFFLINE=1 only the cache is used.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("model", help="hub id, optionally @branch, @tag or @commit-sha "
                   "(e.g. Snowflake/snowflake-arctic-embed-xs@main)")
    sub.add_parser("models", help="list known models and the hub models in the Hugging Face cache",
                   description="List the models modelport builds or loads without a hub, and the model repos in "
                   "the Hugging Face cache (with their cached commits) that `convert` can use offline.")
    pb = sub.add_parser(
        "publish", help="upload a validated artifact with a generated model card to a hub repo",
        description="Upload ARTIFACT to the hub repo --repo, with a generated README.md model card (hub metadata, "
        "usage snippet for the target's client, validation table, file sizes, how to reproduce). Refused when "
        "the artifact's validation failed or was not run, or when a file no longer matches manifest.json. "
        "Token: HF_TOKEN, or the one saved by `hf auth login`.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pb.add_argument("artifact", type=Path, help="artifact directory written by `modelport convert`")
    pb.add_argument("--repo", required=True, help="hub repo to create or update: <user or org>/<name>")
    pb.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    pb.add_argument("--dry-run", type=Path, metavar="DIR",
                    help="write the exact folder that would be uploaded (files + README.md) to DIR; upload nothing")


def _fetch(args: argparse.Namespace, out) -> int:
    from rich.markup import escape

    from . import hub

    snap = hub.fetch(hub.parse(args.model))
    how = "downloaded" if snap.downloaded else "already in the cache, nothing downloaded"
    out.print(f"[bold green]{escape(str(snap.ref))}[/] -> commit {snap.commit} ({how})", soft_wrap=True)
    out.print(escape(str(snap.path)), soft_wrap=True)
    return 0


def _models(out) -> int:
    import datetime

    from rich.markup import escape
    from rich.table import Table

    from . import hub

    out.print(_known_models_table())
    cached = Table(title=f"Hugging Face cache: {escape(str(hub.cache_dir()))}"
                   + (" (HF_HUB_OFFLINE=1)" if hub.offline() else ""))
    for col in ("hub id", "commits (refs)", "size", "last used"):
        cached.add_column(col)
    for m in hub.cached_models():
        revs = ", ".join(c[:12] + (f" ({', '.join(refs)})" if refs else "") for c, refs in m.revisions)
        when = datetime.datetime.fromtimestamp(m.last_modified).strftime("%Y-%m-%d %H:%M")
        cached.add_row(m.repo_id, revs, f"{m.size_on_disk / 1e6:.1f} MB", when)
    out.print(cached)
    return 0


def _publish(args: argparse.Namespace, out) -> int:
    from rich.markup import escape

    from .publish import publish

    result = publish(args.artifact, args.repo, private=args.private, dry_run=args.dry_run)
    if result.dry_run is not None:
        out.print(f"[bold green]dry run:[/] wrote the {len(result.files)} files that would go to {result.repo} into "
                  f"{escape(str(result.dry_run))} (nothing uploaded)", soft_wrap=True)
    else:
        out.print(f"[bold green]published {len(result.files)} files to {result.repo}[/]: {escape(result.url or '')}",
                  soft_wrap=True)
    return 0


def _internal_error(args: argparse.Namespace, e: BaseException, out) -> int:
    """A bug: one line, the traceback in a log file."""
    from rich.markup import escape

    from .fsutil import write_error_log

    try:
        where = f"traceback in {write_error_log(args.command, e)}"
    except OSError:
        where = "no log could be written"
    first = (str(e).splitlines() or [""])[0][:300]
    out.print(f"[bold red]internal error:[/] {escape(type(e).__name__)}: {escape(first)} ({escape(where)}); "
              "this is a bug in modelport, please report it with that file", soft_wrap=True)
    return EXIT_INTERNAL


# errno -> (what happened, what to do); "{path}" is the file the OS named (or the command's output folder).
OS_ERRORS = {
    errno.ENOSPC: ("disk full at {path}", "free space on that disk, or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded at {path}", "free space in your quota, or write somewhere else"),
    errno.EROFS: ("read-only file system at {path}", "write somewhere else (--out, MODELPORT_CACHE, HF_HOME)"),
    errno.EACCES: ("permission denied: {path}", "check its permissions (ls -ld), or use another path"),
    errno.EPERM: ("operation not permitted: {path}", "check its permissions (ls -ld), or use another path"),
    errno.ENAMETOOLONG: ("file name too long: {path}", "use a shorter path or model name"),
    errno.ENOTDIR: ("not a directory: {path}", "part of that path is a file where a folder is needed: move the "
                    "file or use another path"),
    errno.EISDIR: ("is a directory: {path}", "a file was expected there"),
    errno.EEXIST: ("already exists: {path}", "a file is where a folder is needed (or the reverse): move it or use "
                   "another path"),
    errno.ENOENT: ("no such file or directory: {path}", "check the path (was it removed while modelport ran?)"),
    errno.ELOOP: ("too many levels of symbolic links: {path}", "fix the link"),
    errno.EMFILE: ("too many open files (at {path})", "raise the limit (ulimit -n)"),
    errno.ENFILE: ("too many open files in the system (at {path})", "close other programs, or raise the limit"),
    errno.EIO: ("input/output error at {path}", "the disk or network file system failed: check it"),
}
# Raised inside a converter (toolchain_step wraps them as exit 3 "converter failed"): shown as what they are.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.EIO})


def _command_folder(args: argparse.Namespace) -> str:
    """Where the command writes: the path to name when the OS does not say (a full disk fails in write())."""
    if args.command in ("convert", "quantize-search"):
        return str(args.out or "artifacts/")
    if args.command == "publish":
        return str(args.dry_run or args.artifact)
    if args.command == "audit":
        return str(args.out or args.artifact)
    if args.command in ("validate", "clients", "report"):
        return str(args.artifact)
    if args.command == "bench":
        return str(args.json or args.artifact)
    try:
        from .hub import cache_dir

        return str(cache_dir())
    except Exception:
        return "the Hugging Face cache"


def _os_error_line(e: OSError, args: argparse.Namespace) -> str:
    """One line for an OS error: what happened, at which path, what to do."""
    path = e.filename if e.filename is not None else _command_folder(args)
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    what, todo = OS_ERRORS.get(e.errno, (f"{e.strerror or type(e).__name__} (errno {e.errno}) at {{path}}",
                                         "check that path"))
    return f"{what.format(path=path)}: {todo}{_setting_for(str(path))}"


def _setting_for(path: str) -> str:
    """When the path is one of modelport's or huggingface_hub's caches, name the variable that moves it."""
    from .fsutil import cache_root

    roots = [(str(cache_root()), "MODELPORT_CACHE")]
    try:
        from huggingface_hub import constants

        roots.append((str(constants.HF_HOME), "HF_HOME"))
    except Exception:
        pass
    for root, name in roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return f" ({name} chooses this folder: {root})"
    return ""


def run() -> NoReturn:
    """The `modelport` command: main(), then exit without tearing the interpreter down.

    Why: after a conversion, Python's finalization spends ~1.1 s destroying torch, transformers and
    onnxruntime objects (measured on MiniLM, 2 cores: atexit handlers 0.01 s, then 1.1 s until the
    process ended), work whose result nobody sees. Everything a command writes is closed by then (files
    and locks are context managers; outputs land by rename), so the exit runs the atexit handlers, waits
    for any non-daemon thread, flushes the standard streams and ends the process with os._exit.
    """
    import atexit

    try:
        rc = main()
    except SystemExit as e:  # argparse's usage errors and --help
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (modelport ... | head): nothing left to tell
            pass
    os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    from rich.markup import escape

    from .ui import console

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    out = console()
    args = _parser().parse_args(argv)
    if argv is not None:
        sys.argv = ["modelport", *argv]
    termination = _catch_termination()
    try:
        if args.command == "convert":
            return _convert(args, out)
        if args.command == "quantize-search":
            return _quantize_search(args, out)
        if args.command == "validate":
            return _validate(args, out)
        if args.command == "audit":
            return _audit(args, out)
        if args.command == "report":
            return _report(args, out)
        if args.command == "clients":
            return _clients(args, out)
        if args.command == "fetch":
            return _fetch(args, out)
        if args.command == "models":
            return _models(out)
        if args.command == "publish":
            return _publish(args, out)
        if args.command == "bench":
            from . import bench

            return bench.main(args, out)
        return _recipes(out)
    except ModelportError as e:
        cause = e.__cause__
        if isinstance(e, ToolchainError) and isinstance(cause, OSError) and cause.errno in ENVIRONMENT_ERRNOS:
            # a full disk or a read-only folder inside a converter: the folder, not the converter, is the story
            line = _os_error_line(cause, args) + (f" (details: {e.log})" if e.log else "")
            out.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
            return EXIT_TOOLCHAIN
        out.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return e.exit_code
    except ModuleNotFoundError as e:
        # Each image installs only its toolchain: say which package this command needs there.
        out.print(f"[bold red]error:[/] `modelport {args.command}` needs the Python package {e.name!r}, which is "
                  "not installed in this environment (pip install it, or run the command in an image that has it)",
                  soft_wrap=True)
        return EXIT_TOOLCHAIN
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: staging dirs are removed on the way out
        signum = getattr(e, "signum", signal.SIGINT)
        out.print(f"[bold red]error:[/] interrupted by {signal.Signals(signum).name}; no partial output was kept")
        return 128 + signum
    except OSError as e:  # the environment: a full disk, a read-only folder, a path that cannot be, ...
        if e.errno is None:  # an OSError a library raised for its own reasons: not about the file system
            return _internal_error(args, e, out)
        out.print(f"[bold red]error:[/] {escape(_os_error_line(e, args))}", soft_wrap=True)
        return EXIT_TOOLCHAIN
    except Exception as e:  # a bug: one line, the traceback in a log file
        return _internal_error(args, e, out)
    finally:
        termination.restore()


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so it unwinds like Ctrl-C (staging removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Termination:
    """SIGTERM and SIGHUP handled like Ctrl-C for one main() call: the handler raises `Terminated` where
    the program is, and the clean-up (staging dir removed) runs as the exception unwinds.

    Two guards. A signal that comes while an interrupt is already unwinding (inside an except or
    finally block, where `sys.exc_info()` holds it) does nothing: it must not cut the clean-up short.
    And a raise can be swallowed (C code that clears errors while calling back into Python, a library's
    `except BaseException: pass`), so after a signal a thread re-delivers it every REDELIVER_S until
    main() has caught it. A signal already ignored (nohup) stays ignored; outside the main thread
    Python cannot install handlers, and nothing changes.
    """

    REDELIVER_S = 2.0

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.done = threading.Event()
        self.watchdog: threading.Thread | None = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):  # (no SIGHUP on Windows)
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                self.previous[signum] = signal.signal(signum, self.handle)

    def handle(self, signum: int, _frame: object) -> None:
        if self.done.is_set() or isinstance(sys.exc_info()[1], KeyboardInterrupt):
            return
        if self.watchdog is None:
            self.watchdog = threading.Thread(target=self.redeliver, args=(signum, threading.get_ident()), daemon=True)
            self.watchdog.start()
        raise Terminated(signum)

    def redeliver(self, signum: int, main_thread: int) -> None:
        while not self.done.wait(self.REDELIVER_S):
            signal.pthread_kill(main_thread, signum)  # a real signal: it also interrupts a blocking call

    def restore(self) -> None:
        self.done.set()
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


def _catch_termination() -> _Termination:
    return _Termination()


if __name__ == "__main__":
    sys.exit(main())
