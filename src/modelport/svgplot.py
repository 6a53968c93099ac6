"""Small multiples as SVG text, for report.html: step histograms and per-case series, no plotting library.

Why not matplotlib: report.html was its only use on the conversion path, and it cost 1.9 s of a 15.6 s
MiniLM conversion (import ~0.5 s, then `bbox_inches="tight"` draws each figure twice to measure it) —
the report's two figures are a few polylines, which this module writes in ~10 ms. The SVG is embedded
as a data: URI image, so the report stays one file with nothing to fetch.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
GATE_COLOR = "#d62728"
PANEL_W, PANEL_H = 400, 270  # one panel, pixels
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 26, 42  # plot-area margins inside a panel
TITLE_H = 28  # the figure's title line


@dataclass
class Series:
    """One runtime's values in a panel. `step`: a histogram outline over len(y)+1 bin edges in x;
    otherwise points (joined by a line when `join`)."""

    label: str
    x: list[float]
    y: list[float]
    step: bool = False
    join: bool = False


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    log_y: bool = False
    vline: tuple[float, str] | None = None  # (x, legend label): a dashed gate across the panel
    hline: tuple[float, str] | None = None  # (y, legend label)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"


def _panel(p: Panel, ox: float, oy: float) -> list[str]:
    """One panel's SVG elements with its top-left corner at (ox, oy)."""
    xs = [v for s in p.series for v in s.x] + ([p.vline[0]] if p.vline else [])
    ys = [v for s in p.series for v in s.y] + ([p.hline[0]] if p.hline else [])
    if p.log_y:
        ys = [math.log10(v) for v in ys if v > 0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (math.floor(min(ys)), math.ceil(max(ys))) if p.log_y else (min(0.0, min(ys)), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y1 = y0 + 1
    w, h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM
    left, top = ox + LEFT, oy + TOP

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        y = math.log10(max(y, 10.0 ** y0)) if p.log_y else y
        return top + h - (y - y0) / (y1 - y0) * h

    out = [f'<text x="{left + w / 2:.1f}" y="{oy + 16}" text-anchor="middle" font-size="12">{html.escape(p.title)}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#444"/>']
    for t in nice_ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" y1="{top + h}" x2="{px(t):.1f}" y2="{top + h + 4}" stroke="#444"/>'
                   f'<text x="{px(t):.1f}" y="{top + h + 15}" text-anchor="middle">{_fmt(t)}</text>')
    if p.log_y:
        stride = max(1, math.ceil((y1 - y0) / 6))
        yticks = [(10.0 ** k, f"1e{k}") for k in range(int(y0), int(y1) + 1, stride)]
    else:
        yticks = [(t, _fmt(t)) for t in nice_ticks(y0, y1)]
    for t, label in yticks:
        out.append(f'<line x1="{left - 4}" y1="{py(t):.1f}" x2="{left}" y2="{py(t):.1f}" stroke="#444"/>'
                   f'<text x="{left - 6}" y="{py(t) + 3:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{left + w / 2:.1f}" y="{oy + PANEL_H - 8}" text-anchor="middle">{html.escape(p.xlabel)}</text>'
               f'<text transform="translate({ox + 13},{top + h / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{html.escape(p.ylabel)}</text>')
    legend: list[tuple[str, str, bool]] = []
    for i, s in enumerate(p.series):
        color = PALETTE[i % len(PALETTE)]
        if s.step:
            pts = [(s.x[0], 0.0)] + [pt for k, c in enumerate(s.y) for pt in ((s.x[k], c), (s.x[k + 1], c))] \
                  + [(s.x[-1], 0.0)]
        else:
            pts = list(zip(s.x, s.y))
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        if s.step or s.join:
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        if not s.step:
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="1.8" fill="{color}"/>' for x, y in pts]
        legend.append((s.label, color, False))
    if p.vline:
        out.append(f'<line x1="{px(p.vline[0]):.1f}" y1="{top}" x2="{px(p.vline[0]):.1f}" y2="{top + h}" '
                   f'stroke="{GATE_COLOR}" stroke-dasharray="5,3"/>')
        legend.append((p.vline[1], GATE_COLOR, True))
    if p.hline:
        out.append(f'<line x1="{left}" y1="{py(p.hline[0]):.1f}" x2="{left + w}" y2="{py(p.hline[0]):.1f}" '
                   f'stroke="{GATE_COLOR}" stroke-dasharray="5,3"/>')
        legend.append((p.hline[1], GATE_COLOR, True))
    for k, (label, color, dashed) in enumerate(legend):
        y = top + 12 + 12 * k
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<line x1="{left + w - 172}" y1="{y - 3}" x2="{left + w - 154}" y2="{y - 3}" stroke="{color}" '
                   f'stroke-width="1.5"{dash}/><text x="{left + w - 150}" y="{y}">{html.escape(label)}</text>')
    return out


def figure(title: str, panels: list[Panel], cols: int = 3) -> str:
    """A titled grid of panels as one standalone SVG document (width and height set, so an <img> of it
    has a natural size)."""
    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    width, height = cols * PANEL_W, TITLE_H + rows * PANEL_H
    body = [f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    for i, p in enumerate(panels):
        body += _panel(p, (i % cols) * PANEL_W, TITLE_H + (i // cols) * PANEL_H)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">'
            f'<rect width="{width}" height="{height}" fill="white"/>' + "".join(body) + "</svg>")
