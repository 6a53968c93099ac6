"""report.html: every verdict of an artifact (or of a model's artifacts), its figures, sizes and plots.

The report reads only manifest.json (validation.variants from the Python validator of any target,
validation.clients from the real-client checks), so it is the same for ONNX, Core ML or MLX
artifacts and can be regenerated at any time. Plots are SVG written by `svgplot` (no plotting library:
matplotlib cost 1.9 s of a MiniLM conversion) embedded as base64 data: URIs, and there is no script, font
or stylesheet from elsewhere: the single file opens offline.
"""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import manifest as manifest_mod
from . import svgplot
from .errors import ModelportError

REPORT = "report.html"
VERDICT_TEXT = {"pass": "pass", "fail": "fail", "error": "error", "unsupported": "not supported on this device",
                "stale": "stale"}
VERDICT_MEANING = [
    ("pass", "the variant ran and meets its precision's thresholds against the PyTorch fp32 golden outputs "
             "(for a client's fp32 run, also within 1e-6 of Python onnxruntime on the same token ids)."),
    ("fail", "the variant ran but missed a threshold; the notes column says which, with the worst inputs."),
    ("error", "the variant could not be loaded or run in that runtime; the notes column has the message."),
    ("not supported on this device", "the device lacks a feature the dtype needs (fp16 on a WebGPU adapter "
                                     "without shader-f16): nothing ran; this is neither a pass nor a failure."),
    ("tokenizer mismatch", "the client's token ids differ from the golden ids for the listed inputs; those "
                           "inputs are left out of the numeric comparison and the client's status is fail."),
    ("stale", "a client result recorded for a file whose sha256 is no longer the one in manifest.json."),
]


@dataclass
class Row:
    """One line of the verdict table: a variant in one runtime."""

    variant: str
    precision: str
    runtime: str
    verdict: str
    metrics: dict[str, Any]
    size_bytes: int | None
    seconds: float | None
    vs_ort: float | None = None
    cases: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # the validator's extra (decoders: the KLD report)


def artifact_dirs(path: Path) -> list[Path]:
    """An artifact directory, or a folder of them (artifacts/<model>/ holds one per target)."""
    path = Path(path)
    if (path / manifest_mod.MANIFEST).is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / manifest_mod.MANIFEST).is_file()) if path.is_dir() else []
    if not found:
        raise ModelportError(f"{path} is not a modelport artifact and holds none (no {manifest_mod.MANIFEST})")
    return found


def variant_bytes(man: dict[str, Any], file: str) -> int | None:
    """Size of a variant's file, or of its directory (a Core ML .mlpackage), from the manifest's file list."""
    files = man.get("files", {})
    sizes = [v["bytes"] for k, v in files.items() if k == file or k.startswith(file.rstrip("/") + "/")]
    return sum(sizes) if sizes else None


def sized_path(entry: dict[str, Any]) -> str:
    """What a variant weighs is its `package` folder where the converter records one (an MLC variant:
    tensor-cache.json is its `file`, the weights are the shards beside it), else its `file`."""
    return entry.get("package") or entry.get("file", "")


def python_rows(man: dict[str, Any]) -> list[Row]:
    """Rows from the Python validator (validation.variants), whatever the target."""
    val = man.get("validation", {})
    variants = man.get("target", {}).get("variants", {})
    rows = []
    for name, v in val.get("variants", {}).items():
        n = len((v.get("metrics") or {}).get("cases", []))
        rows.append(Row(name, v.get("precision", "?"), f"Python {val.get('runtime', '')}".strip(), v["verdict"],
                        v.get("metrics") or {}, variant_bytes(man, sized_path(variants.get(name, {}))),
                        v.get("seconds"),
                        cases=f"{n} cases" if n else "", notes=v.get("failures", []) + v.get("notes", []),
                        extra=v.get("extra") or {}))
    return rows


def client_rows(man: dict[str, Any]) -> list[Row]:
    """Rows from the real-client checks (validation.clients); marks results for changed files stale."""
    rows = []
    variants = man.get("target", {}).get("variants", {})
    for client, entry in man.get("validation", {}).get("clients", {}).items():
        for name, v in entry.get("variants", {}).items():
            file = variants.get(name, {}).get("file", "")
            current = man.get("files", {}).get(file, {}).get("sha256")
            verdict = "stale" if v.get("sha256") and current and v["sha256"] != current else v["verdict"]
            seconds = sum(x for x in (v.get("load_s"), v.get("run_s")) if x is not None) or None
            rows.append(Row(name, v.get("precision", "?"), f"{client} ({entry.get('device', '?')})", verdict,
                            v.get("metrics") or {}, variant_bytes(man, file), seconds,
                            (v.get("vs_python_ort") or {}).get("pooled_max_abs"),
                            f"{v.get('cases', 0)} cases", v.get("failures", []) + v.get("notes", [])))
    return rows


def _per_case(metrics: dict[str, Any], key: str) -> list[float]:
    return [c[key] for c in metrics.get("cases", []) if c.get(key) is not None]


def _svg_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _by_variant(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.metrics.get("cases"):
            out.setdefault(r.variant, []).append(r)
    return out


def _thresholds(rows: list[Row]) -> Any:
    """The Threshold of the rows' precision (a variant has one precision), or None if unknown."""
    from .thresholds import THRESHOLDS

    return THRESHOLDS.get(rows[0].precision)


def error_histogram(rows: list[Row]) -> str | None:
    """Per variant: histogram of log10 max abs error of the embedding per validation case, one step line
    per runtime; a dashed line marks the max-abs gate where the precision has one (fp32). A data: URI."""
    groups = _by_variant(rows)
    if not groups:
        return None
    import numpy as np

    panels = []
    for variant, rs in groups.items():
        values = {r.runtime: np.log10(np.maximum(_per_case(r.metrics, "pooled_max_abs"), 1e-10)) for r in rs}
        values = {k: v for k, v in values.items() if v.size}
        if not values:
            continue
        gate = getattr(_thresholds(rs), "max_abs", None)
        lo = min(v.min() for v in values.values())
        hi = max([v.max() for v in values.values()] + ([math.log10(gate)] if gate else []))
        bins = np.linspace(lo - 0.1, hi + 0.1, 25)
        series = [svgplot.Series(runtime, bins.tolist(), np.histogram(v, bins=bins)[0].astype(float).tolist(),
                                 step=True) for runtime, v in values.items()]
        panels.append(svgplot.Panel(variant, "log10 max abs error", "cases", series,
                                    vline=(math.log10(gate), f"gate {gate:g}") if gate else None))
    if not panels:
        return None
    return _svg_uri(svgplot.figure("absolute error of the embedding vs PyTorch fp32 (max abs per validation case)",
                                   panels))


def cosine_plot(rows: list[Row]) -> str | None:
    """Per variant: cosine vs PyTorch fp32 per validation case, drawn as 1 - cosine on a log axis (fp32
    sits near 1e-12, q4 near 0.05: on a linear cosine axis one of them is always a flat line); a dashed
    line marks the cos-min gate. A data: URI."""
    groups = _by_variant(rows)
    if not groups:
        return None
    panels = []
    for variant, rs in groups.items():
        # x is the case's position in the fullest run, so a quick-subset run lines up with the full one.
        order: dict[str, int] = {}
        for r in sorted(rs, key=lambda r: -len(r.metrics["cases"])):
            for c in r.metrics["cases"]:
                order.setdefault(c["case"], len(order))
        series = []
        for r in rs:
            cases = [c for c in r.metrics["cases"] if c.get("cos_min") is not None]
            if cases:
                series.append(svgplot.Series(r.runtime, [float(order[c["case"]]) for c in cases],
                                             [max(1.0 - c["cos_min"], 1e-16) for c in cases], join=len(cases) > 12))
        if not series:
            continue
        gate = getattr(_thresholds(rs), "cos_min", None)
        panels.append(svgplot.Panel(variant, "validation case", "1 − cosine", series, log_y=True,
                                    hline=(1.0 - gate, f"gate cos {gate:g}") if gate else None))
    if not panels:
        return None
    return _svg_uri(svgplot.figure("cosine vs PyTorch fp32 per validation case, as 1 − cosine (lower is closer)",
                                   panels))


def _num(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _size(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} MB"


def html_verdict_table(head: list[str], rows: list[Row], figures: Callable[[Row], list[str]], *,
                       cases: bool) -> str:
    """The verdict table every family's `verdict_table_html` builds: variant, runtime, verdict, the
    family's figure columns (`head`, `figures(row)`: already HTML), size, time, (cases), notes."""
    head = ["variant", "runtime", "verdict", *head, "size", "time", *(["cases"] if cases else []), "notes"]
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = [html.escape(c) for c in (r.variant, r.runtime, VERDICT_TEXT.get(r.verdict, r.verdict))]
        cells += figures(r) + [_size(r.size_bytes), _num(r.seconds, ".1f") + (" s" if r.seconds else "")]
        cells += [html.escape(r.cases)] if cases else []
        cells.append("<br>".join(html.escape(n[:400]) for n in r.notes))
        out.append(f'<tr class="{html.escape(r.verdict)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</table>"


def verdict_table(man: dict[str, Any], rows: list[Row]) -> str:
    """The artifact's family draws the table (its own figure columns)."""
    from . import families

    return families.of_manifest(man).verdict_table_html(rows)


def tokenizer_section(man: dict[str, Any]) -> str:
    parts = []
    for client, entry in man.get("validation", {}).get("clients", {}).items():
        tok = entry.get("tokenizer")
        if not tok:
            continue
        status = "identical" if tok["status"] == "pass" else "tokenizer mismatch"
        parts.append(f"<p><b>{html.escape(client)}</b>: {tok['identical']}/{tok['inputs']} inputs have the golden "
                     f"token ids ({status}).</p>")
        if tok["mismatches"]:
            parts.append("<table><tr><th>text</th><th>preview</th><th>golden len</th><th>client len</th>"
                         "<th>golden tail</th><th>client tail</th><th>why</th><th>cases</th></tr>")
            for m in tok["mismatches"]:
                cells = [m["text"], m["preview"], m["golden_len"], m["client_len"], m["golden_tail"],
                         m["client_tail"], m["explanation"], ", ".join(m["cases"])]
                parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
            parts.append("</table>")
    return "\n".join(parts) or "<p>No client run recorded (<code>modelport clients &lt;artifact&gt;</code>).</p>"


def clients_section(man: dict[str, Any]) -> str:
    items = []
    for client, entry in man.get("validation", {}).get("clients", {}).items():
        versions = ", ".join(f"{k} {v}" for k, v in entry.get("versions", {}).items())
        env = entry.get("environment") or {}
        adapter = env.get("adapter") or {}
        extra = ""
        if adapter:
            extra = (f"; WebGPU adapter: {adapter.get('vendor')} {adapter.get('architecture')}, shader-f16 "
                     f"{'yes' if 'shader-f16' in adapter.get('features', []) else 'no'}")
        if env:
            extra += f"; crossOriginIsolated {env.get('crossOriginIsolated')}"
        blocked = entry.get("off_origin_requests") or []
        extra += f"; <b>requests outside 127.0.0.1: {len(blocked)}</b>" if blocked else ""
        items.append(f"<li><b>{html.escape(client)}</b> ({html.escape(entry.get('status', '?'))}): "
                     f"{html.escape(versions)}{extra}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def artifact_section(root: Path, man: dict[str, Any]) -> str:
    """One target: provenance, verdict table, tokenizer parity, plots."""
    target = man.get("target", {}).get("name", "?")
    val = man.get("validation", {})
    order = {name: i for i, name in enumerate(man.get("target", {}).get("variants", {}))}
    # Grouped by variant (stable sort: Python first, then the clients), so one variant's runtimes sit together.
    rows = sorted(python_rows(man) + client_rows(man), key=lambda r: order.get(r.variant, len(order)))
    hist, cos = error_histogram(rows), cosine_plot(rows)
    source = man.get("source", {})
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(man["created"])) if "created" in man else "?"
    plots = "".join(f'<img class="plot" alt="{alt}" src="{src}">' for alt, src in
                    (("histogram of absolute errors", hist), ("cosine per validation case", cos)) if src)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in val.get("notes", []))
    heading = target if root.name == target else f"{target} — {root.name}"
    return f"""<section><h2>{html.escape(heading)}</h2>
<p>Source: {html.escape(str(source.get('origin', source.get('path', '?'))))}
({html.escape(str(source.get('model_type', '')))});
created {created}; command <code>{html.escape(' '.join(man.get('command', [])))}</code>.
Python validation status: <b>{html.escape(str(val.get('status', 'not-run')))}</b>.</p>
{f'<ul>{notes}</ul>' if notes else ''}
<h3>Verdicts</h3>{verdict_table(man, rows) if rows else '<p>Not validated yet.</p>'}
<h3>Clients</h3>{clients_section(man) or '<p>No client run recorded.</p>'}
<h3>Tokenizer parity (client token ids vs golden)</h3>{tokenizer_section(man)}
<h3>Plots</h3>{plots or '<p>No per-case figures recorded.</p>'}
{search_section(root)}
</section>"""


def search_section(root: Path) -> str:
    """The quantize-search a searched variant came from (quant-search/ in the artifact): its Pareto
    plot and every candidate, the naive variants and peer tools marked, the chosen ones named."""
    import base64
    import json

    folder = root / "quant-search"
    try:
        data = json.loads((folder / "search.json").read_text())
    except (OSError, ValueError):
        return ""
    chosen: dict[str, str] = {}
    for variant, name in data.get("chosen", {}).items():
        chosen[name] = f"{chosen[name]}, {variant}" if name in chosen else variant
    rows = []
    for c in sorted(data.get("candidates", []), key=lambda c: c.get("size_bytes", 0)):
        q = c.get("quality", {})
        role = chosen.get(c["name"], "baseline" if c.get("baseline") else ("Pareto" if c.get("pareto") else ""))
        share = c.get("size_share")
        cells = [c["name"], role, _size(c.get("size_bytes")), f"{share:.1%}" if share else "-",
                 _num(c.get("bits_per_weight"), ".2f"),
                 *(_num(q.get(k), ".4f") for k in ("cos_min", "cos_mean", "top5")),
                 _num(q.get("kld_mean"), ".2e"), c.get("failed") or c.get("note") or ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("candidate", "role", "size", "of fp32", "bits/weight", "cos min",
                                            "cos mean", "top-5", "KLD", "note"))
    plot = ""
    if (folder / "pareto.png").is_file():
        src = "data:image/png;base64," + base64.b64encode((folder / "pareto.png").read_bytes()).decode()
        plot = f'<img class="plot" alt="size vs quality of every candidate" src="{src}">'
    return (f"<h3>Quantization search (goal {html.escape(str(data.get('goal', '')))}, dev texts "
            f"{html.escape(str(data.get('texts', {}).get('dev', '')))})</h3>{plot}"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>")


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}th{background:#f3f3f3}
tr.pass td:nth-child(3){color:#070;font-weight:bold}
tr.fail td:nth-child(3),tr.error td:nth-child(3){color:#b00;font-weight:bold}
tr.unsupported td:nth-child(3),tr.stale td:nth-child(3){color:#a60}img.plot{display:block;max-width:100%;margin:8px 0}
dt{font-weight:bold}code{font-size:12px}"""


def build(path: Path) -> str:
    """The whole report for an artifact directory or a folder of artifacts."""
    dirs = artifact_dirs(path)
    mans = [(d, manifest_mod.load(d)) for d in dirs]
    name = mans[0][1].get("source", {}).get("name", Path(path).name)
    meaning = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in VERDICT_MEANING)
    sections = "\n".join(artifact_section(d, m) for d, m in mans)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>modelport report: {html.escape(name)}</title>
<style>{CSS}</style></head><body>
<h1>modelport report: {html.escape(name)}</h1>
<p>Every figure compares a runtime's output with the PyTorch fp32 golden outputs stored in the artifact
(<code>reference/golden.npz</code>), non-padding tokens only, using the one threshold table
(<code>modelport recipes</code> prints it). "emb" is the pooled, normalized sentence embedding.</p>
{sections}
<h2>What the verdicts mean</h2><dl>{meaning}</dl>
</body></html>
"""


def write_report(path: Path) -> Path:
    """Write report.html into the artifact directory (or folder of artifacts); returns its path."""
    out = Path(path) / REPORT
    out.write_text(build(path), encoding="utf-8")
    return out
