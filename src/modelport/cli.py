"""The `modelport` command line.

    modelport convert <model> --target onnx [--variants fp32,fp16,q8,uint8,q4,q4f16] [--out DIR]
    modelport validate <artifact-dir> [--variants ...]
    modelport recipes

User errors print one line (`error: ...`) and exit 2; a failed validation prints the table and
the failing inputs and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ModelportError, ValidationFailed

EPILOG = """\
exit codes: 0 success, 1 validation failed, 2 bad input (message says why).
environment: MODELPORT_CACHE (built tiny models; default ~/.cache/modelport),
HF_HUB_OFFLINE / HF_HOME (standard Hugging Face cache), SOURCE_DATE_EPOCH (manifest timestamp).
"""


def _parser() -> argparse.ArgumentParser:
    from .source import MODELS
    from .targets import TARGETS

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
    c.add_argument("model", help=f"a local Hugging Face model directory, or a known model: {', '.join(MODELS)}")
    c.add_argument("--target", "-t", required=True, choices=sorted(TARGETS), help="output format")
    c.add_argument(
        "--variants",
        help="comma-separated precisions to write (default: all the target supports). "
        "onnx: fp32,fp16,q8,uint8,q4,q4f16 (transformers.js dtype names)",
    )
    c.add_argument("--out", "-o", type=Path, help="artifact directory (default: artifacts/<model>/<target>)")
    c.add_argument("--force", action="store_true", help="replace an existing artifact directory")
    c.add_argument("--allow-pickle", action="store_true",
                   help="accept pytorch_model.bin (pickle) weights; they can execute code when loaded")
    c.add_argument("--trust-remote-code", action="store_true",
                   help="accept models whose config needs code from the model repo (auto_map)")
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

    sub.add_parser("recipes", help="list supported architectures, known models and thresholds",
                   description="List the architecture registry, the models modelport can build or load "
                   "offline, and the validation threshold table.")
    return p


def _print_report(out, report) -> None:
    from .ui import report_table

    data = report.to_json() if hasattr(report, "to_json") else report
    out.print(report_table(data))
    for note in data.get("notes", []):
        out.print(f"[yellow]note:[/] {note}")
    for name, r in data["variants"].items():
        for f in r["failures"]:
            out.print(f"[red]✗ {name}:[/] {f}")
        for n in r["notes"]:
            out.print(f"[dim]  {name}: {n}[/]")


def _convert(args: argparse.Namespace, out) -> int:
    from .convert import ConvertRequest, run
    from .ui import Steps

    req = ConvertRequest(
        model=args.model, target=args.target, variants=args.variants, out=args.out, force=args.force,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
        validate=not args.skip_validation, command=tuple(["modelport"] + sys.argv[1:]),
    )
    with Steps(out) as steps:
        path, report = run(req, steps)
    if report is not None:
        _print_report(out, report)
        if not report.passed:
            failed = [r.variant for r in report.results if not r.passed]
            raise ValidationFailed(f"validation failed for {', '.join(failed)}; artifact kept at {path} for inspection")
    out.print(f"[bold green]wrote {path}[/]" + (" (not validated)" if report is None else " (validated)"))
    return 0


def _validate(args: argparse.Namespace, out) -> int:
    from . import manifest
    from .ui import Steps
    from .validate import record, validate

    root = args.artifact
    if not (root / manifest.MANIFEST).is_file():
        raise ModelportError(f"{root} is not a modelport artifact (no {manifest.MANIFEST})")
    man = manifest.load(root)
    problems = manifest.verify_files(root, man)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValidationFailed(f"artifact files do not match manifest.json: {shown}")
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    with Steps(out) as steps:
        report = validate(root, variants, progress=steps)
    if variants is None:
        record(root, report)
    _print_report(out, report)
    if not report.passed:
        failed = [r.variant for r in report.results if not r.passed]
        raise ValidationFailed(f"validation failed for {', '.join(failed)}")
    out.print(f"[bold green]{root}: all {len(report.results)} variants pass[/]")
    return 0


def _recipes(out) -> int:
    from rich.table import Table

    from .recipes import ARCHITECTURES
    from .source import MODELS
    from .thresholds import THRESHOLDS

    t = Table(title="architectures")
    for col in ("model_type", "family", "inputs", "default pooling", "targets", "quirks"):
        t.add_column(col)
    for a in ARCHITECTURES.values():
        t.add_row(a.model_type, a.family, ", ".join(a.inputs), a.default_pooling, ", ".join(a.targets),
                  ", ".join(q.name for q in a.quirks))
    out.print(t)
    m = Table(title="known models (no hub needed)")
    m.add_column("name")
    m.add_column("what")
    for k in MODELS.values():
        m.add_row(k.name, k.description)
    out.print(m)
    th = Table(title="validation thresholds")
    for col in ("precision", "max abs", "cos min", "cos mean", "top-5 mean", "batches gated"):
        th.add_column(col)
    for name, x in THRESHOLDS.items():
        th.add_row(name, *(str(v) if v is not None else "-" for v in (x.max_abs, x.cos_min, x.cos_mean, x.top5_mean)),
                   "yes" if x.batch_invariant else "no (per input)")
    out.print(th)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .ui import console

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    out = console()
    args = _parser().parse_args(argv)
    if argv is not None:
        sys.argv = ["modelport", *argv]
    try:
        if args.command == "convert":
            return _convert(args, out)
        if args.command == "validate":
            return _validate(args, out)
        return _recipes(out)
    except ModelportError as e:
        out.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        out.print("[red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
