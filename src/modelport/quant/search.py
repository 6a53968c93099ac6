"""What every target's quantization search shares: goals, candidates, sensitivity, the Pareto front.

A target implements the search for its own format (`Converter.quantize_search`, e.g.
targets/onnx/quantize.py) because candidates differ per format (MatMulNBits blocks, MLX groups,
Core ML palettes); the bookkeeping is here, once:

  Goal          "cos=0.99,min=0.98,top5=0.95" or "kld=1e-3,top1=0.99": parsed, checked, printed
  Quality       one candidate's figures on the dev set (never the validation set: quant/texts.py)
  Candidate     a plan + its size + its quality (+ "baseline" rows: naive RTN, peers such as Olive)
  sensitivity() one-at-a-time layer ranking, deterministic (ties broken by layer name)
  pareto()      the size/quality front; choose() the smallest candidate meeting the goal
  SearchResult  search.json + plan.json + pareto.png in the output folder
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import ModelportError
from .plan import Plan

if TYPE_CHECKING:
    import numpy as np

# What each goal key means; "higher" says which direction is better.
GOAL_KEYS: dict[str, tuple[str, bool]] = {
    "cos": ("cos_mean", True),
    "min": ("cos_min", True),
    "top5": ("top5", True),
    "kld": ("kld_mean", False),
    "top1": ("same_top1", True),
}
DEFAULT_ENCODER_GOAL = "cos=0.99,min=0.98,top5=0.95"
DEFAULT_DECODER_GOAL = "kld=1e-3,top1=0.99"


@dataclass(frozen=True)
class Goal:
    limits: dict[str, float]  # Quality attribute -> limit

    @classmethod
    def parse(cls, text: str) -> "Goal":
        limits: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, _, value = part.partition("=")
            if key not in GOAL_KEYS or not value:
                raise ModelportError(f"--goal: {part!r} is not KEY=VALUE with KEY one of {', '.join(GOAL_KEYS)} "
                                     f"(e.g. {DEFAULT_ENCODER_GOAL})")
            try:
                limits[GOAL_KEYS[key][0]] = float(value)
            except ValueError:
                raise ModelportError(f"--goal: {value!r} is not a number") from None
        if not limits:
            raise ModelportError(f"--goal is empty (e.g. {DEFAULT_ENCODER_GOAL})")
        return cls(limits)

    def misses(self, quality: "Quality") -> list[str]:
        out = []
        higher = {attr: hi for attr, hi in GOAL_KEYS.values()}
        for attr, limit in self.limits.items():
            value = getattr(quality, attr)
            if value is None or (value < limit if higher[attr] else value > limit):
                out.append(f"{attr} {value if value is None else f'{value:.5g}'} {'<' if higher[attr] else '>'} {limit:g}")
        return out

    def met(self, quality: "Quality") -> bool:
        return not self.misses(quality)

    def text(self) -> str:
        names = {attr: key for key, (attr, _) in GOAL_KEYS.items()}
        return ",".join(f"{names[a]}={v:g}" for a, v in self.limits.items())


@dataclass(frozen=True)
class Quality:
    """A candidate's figures on the dev set (encoders: cosine/top-5; decoders: KLD/same-top-1)."""

    cos_min: float | None = None
    cos_mean: float | None = None
    top5: float | None = None
    kld_mean: float | None = None
    same_top1: float | None = None

    def key(self) -> float:
        """One number for ranking and the Pareto front: mean cosine, or -KLD for decoders."""
        if self.cos_mean is not None:
            return self.cos_mean
        return -(self.kld_mean if self.kld_mean is not None else math.inf)

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


DEV_QUERIES = 16  # dev-v1: texts 0..15 are the top-5 queries, the other 64 the corpus


def dev_quality(reference: "np.ndarray", got: "np.ndarray", queries: int = DEV_QUERIES) -> Quality:
    """One candidate's quality on the dev texts, the validator's way: cosine of each text's sentence
    embedding against the float variant's (min, mean), and top-5 retrieval with the first `queries`
    texts as queries over the others (metrics.topk_agreement: a neighbour within 0.005 of the
    reference's 5th counts). Every target's search scores candidates with this one function."""
    from ..metrics import cosine_rows, topk_agreement

    cos = cosine_rows(reference, got)
    n = len(cos)
    if not 0 < queries < n - 5:
        raise ValueError(f"{queries} queries leave no top-5 corpus among {n} dev texts")
    top5, _ = topk_agreement(reference, got, list(range(queries)), list(range(queries, n)))
    return Quality(cos_min=float(cos.min()), cos_mean=float(cos.mean()), top5=float(top5))


@dataclass
class Candidate:
    name: str
    size_bytes: int
    bits_per_weight: float
    quality: Quality
    plan: Plan | None = None  # None: a baseline written by another tool (Olive, onnxruntime's quantizer)
    baseline: bool = False  # the naive variant or a peer tool: marked on the plot, never chosen
    note: str = ""
    failed: str = ""  # a candidate (or peer) that could not be built: why, in one line

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": self.size_bytes, "bits_per_weight": round(self.bits_per_weight, 4),
                "quality": self.quality.to_json(), "baseline": self.baseline, "note": self.note,
                "failed": self.failed, "plan": self.plan.to_json() if self.plan else None}


def sensitivity(layers: Iterable[str], measure: Callable[[str], float]) -> list[tuple[str, float]]:
    """Layers ranked by `measure(layer)` (the quality lost with only that layer quantized), largest
    loss first; equal losses in name order, so the ranking is the same on every run."""
    scored = [(name, float(measure(name))) for name in layers]
    return sorted(scored, key=lambda item: (-item[1], item[0]))


def pareto(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both size and quality (smaller and better), by size."""
    ok = sorted((c for c in candidates if not c.failed), key=lambda c: (c.size_bytes, -c.quality.key()))
    front: list[Candidate] = []
    best = -math.inf
    for c in ok:
        if c.quality.key() > best:
            front.append(c)
            best = c.quality.key()
    return front


def choose(candidates: Iterable[Candidate], goal: Goal, max_bytes: int | None = None) -> Candidate | None:
    """The smallest searched candidate (never a baseline) meeting the goal (and the size cap)."""
    fits = [c for c in candidates if not c.failed and not c.baseline and c.plan is not None and goal.met(c.quality)
            and (max_bytes is None or c.size_bytes <= max_bytes)]
    return min(fits, key=lambda c: (c.size_bytes, -c.quality.key(), c.name)) if fits else None


@dataclass
class SearchResult:
    """Everything a search found, written to `out/` as search.json (+ plan.json, pareto.png)."""

    target: str
    model: str
    goal: Goal
    reference_bytes: int  # the float variant the sizes are compared with (fp32)
    candidates: list[Candidate]
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    chosen: dict[str, Candidate] = field(default_factory=dict)  # variant name -> candidate (e.g. q4mix)
    notes: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # role -> text-set name (calibration, dev)
    family: str = ""  # the model's family (quant/run.py fills it)

    def to_json(self) -> dict[str, Any]:
        front = {c.name for c in pareto(self.candidates)}
        return {
            "target": self.target, "family": self.family, "model": self.model, "goal": self.goal.text(),
            "reference_bytes": self.reference_bytes, "texts": self.texts,
            "sensitivity": [{"layer": n, "loss": v} for n, v in self.sensitivity],
            "candidates": [{**c.to_json(), "pareto": c.name in front,
                            "size_share": c.size_bytes / self.reference_bytes if self.reference_bytes else None}
                           for c in self.candidates],
            "chosen": {k: c.name for k, c in self.chosen.items()},
            "notes": self.notes,
        }

    def save(self, out: Path) -> list[Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "search.json"]
        (out / "search.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")
        for variant, c in self.chosen.items():
            if c.plan is not None:
                c.plan.save(out / f"plan-{variant}.json")
                written.append(out / f"plan-{variant}.json")
        try:
            plot_pareto(self, out / "pareto.png")
            written.append(out / "pareto.png")
        except ImportError:
            self.notes.append("pareto.png not drawn: matplotlib is not installed")
        return written

    def table(self) -> list[str]:
        """The candidates as aligned text lines (what the CLI prints)."""
        front = {c.name for c in pareto(self.candidates)}
        chosen: dict[str, list[str]] = {}
        for variant, c in self.chosen.items():
            chosen.setdefault(c.name, []).append(variant)
        lines = [f"{'candidate':<34} {'size':>9} {'share':>6} {'bpw':>5}  quality"]
        for c in sorted(self.candidates, key=lambda c: c.size_bytes):
            if c.failed:
                lines.append(f"{c.name:<34} failed: {c.failed}")
                continue
            share = c.size_bytes / self.reference_bytes if self.reference_bytes else 0.0
            q = ", ".join(f"{k} {v:.4f}" if k != "kld_mean" else f"kld {v:.2e}" for k, v in c.quality.to_json().items())
            mark = (" <- " + ", ".join(chosen[c.name])) if c.name in chosen else (" *" if c.name in front else "")
            lines.append(f"{c.name:<34} {c.size_bytes / 1e6:>7.2f}MB {share:>6.1%} {c.bits_per_weight:>5.2f}  {q}"
                         f"{' (baseline)' if c.baseline else ''}{mark}")
        return lines


def plot_pareto(result: SearchResult, path: Path) -> None:
    """Size (share of fp32) against quality, the front joined, baselines and chosen variants marked.

    The quality axis spans the searched candidates (and the baselines near them): a peer tool that
    broke the model (Olive's HQQ pass on MiniLM: mean cosine -0.01) is drawn at the axis edge with
    its value in the label, instead of squashing every other point into one line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in result.candidates if not c.failed]
    if not ok:
        return
    ref = result.reference_bytes or 1
    decoder = ok[0].quality.cos_mean is None

    def x(c: Candidate) -> float:
        return c.size_bytes / ref * 100

    def y(c: Candidate) -> float:
        return c.quality.kld_mean if decoder else c.quality.cos_mean  # type: ignore[return-value]

    searched = [c for c in ok if not c.baseline] or ok
    lo, hi = min(y(c) for c in searched), max(y(c) for c in searched)
    if decoder:
        bottom, top = lo / 3, hi * 3
    else:
        span = max(hi - lo, 0.01)
        bottom, top = lo - 0.6 * span, min(1.0, hi) + 0.1 * span
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.scatter([x(c) for c in searched], [y(c) for c in searched], s=14, c="#888", label="searched")
    base = [c for c in ok if c.baseline]
    shown = {c.name: min(max(y(c), bottom), top) for c in base}
    ax.scatter([x(c) for c in base], [shown[c.name] for c in base], s=40, marker="x", c="#c33",
               label="naive / peer tools")
    xmax = max(x(c) for c in ok)

    def label_points(points: dict[tuple[float, float], list[str]], dy: int, **style: Any) -> None:
        """One label per point (names of coinciding candidates joined), kept inside the axes."""
        for (px, py), names in points.items():
            right = px > 0.6 * xmax
            ax.annotate("\n".join(names), (px, py), xytext=(-4 if right else 4, dy), textcoords="offset points",
                        ha="right" if right else "left", va="bottom" if dy > 0 else "top", **style)

    at: dict[tuple[float, float], list[str]] = {}
    for c in base:
        name = c.name.split(" (")[0]  # the tool and pass; the settings are in search.json
        off = "" if shown[c.name] == y(c) else f" (off scale: {y(c):.3g})"
        at.setdefault((round(x(c), 1), round(shown[c.name], 4)), []).append(name + off)
    label_points(at, 4, fontsize=6.5)
    front = pareto(searched)
    ax.plot([x(c) for c in front], [y(c) for c in front], "-", c="#36c", lw=1, label="Pareto front (searched)")
    at = {}
    for variant, c in result.chosen.items():
        ax.scatter([x(c)], [y(c)], s=90, marker="*", c="#2a2", zorder=5)
        at.setdefault((round(x(c), 1), round(y(c), 4)), []).append(variant)
    label_points({k: [", ".join(v)] for k, v in at.items()}, -8, fontsize=8, weight="bold")
    for attr, limit in result.goal.limits.items():
        if attr == ("kld_mean" if decoder else "cos_mean"):
            ax.axhline(limit, ls="--", c="#2a2", lw=0.8, label=f"goal {limit:g}")
    if decoder:
        ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.set_xlabel("size, % of fp32")
    ax.set_ylabel("mean KLD vs fp32 (dev texts)" if decoder else "mean cosine vs fp32 (dev texts)")
    ax.set_title(f"{result.model}: {result.target} quantization search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


@dataclass
class SearchContext:
    """What `Converter.quantize_search` gets (explicit data, like ConvertContext).

    fp32_dir   a converted, validated fp32 artifact of the model for this target (the search
               quantizes its weights: one export for every candidate), with its golden
    work       scratch space for candidate files (deleted afterwards)
    quick      fewer candidates (tests on tiny models): the same code paths, a smaller grid
    """

    source: Any  # source.ModelSource
    recipe: Any
    goal: Goal
    fp32_dir: Path
    work: Path
    step: Callable[[str], Any]
    quick: bool = False
    calibration: str = "calibration-v1"
    dev: str = "dev-v1"
