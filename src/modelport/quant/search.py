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
from typing import Any, Callable, Iterable

from ..errors import ModelportError
from .plan import Plan

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
        chosen = {c.name: v for v, c in self.chosen.items()}
        lines = [f"{'candidate':<34} {'size':>9} {'share':>6} {'bpw':>5}  quality"]
        for c in sorted(self.candidates, key=lambda c: c.size_bytes):
            if c.failed:
                lines.append(f"{c.name:<34} failed: {c.failed}")
                continue
            share = c.size_bytes / self.reference_bytes if self.reference_bytes else 0.0
            q = ", ".join(f"{k} {v:.4f}" if k != "kld_mean" else f"kld {v:.2e}" for k, v in c.quality.to_json().items())
            mark = (" <- " + chosen[c.name]) if c.name in chosen else (" *" if c.name in front else "")
            lines.append(f"{c.name:<34} {c.size_bytes / 1e6:>7.2f}MB {share:>6.1%} {c.bits_per_weight:>5.2f}  {q}"
                         f"{' (baseline)' if c.baseline else ''}{mark}")
        return lines


def plot_pareto(result: SearchResult, path: Path) -> None:
    """Size (share of fp32) against quality, the front joined, baselines and chosen variants marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in result.candidates if not c.failed]
    if not ok:
        return
    ref = result.reference_bytes or 1
    decoder = ok[0].quality.cos_mean is None

    def y(c: Candidate) -> float:
        return c.quality.kld_mean if decoder else c.quality.cos_mean  # type: ignore[return-value]

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    searched = [c for c in ok if not c.baseline]
    ax.scatter([c.size_bytes / ref * 100 for c in searched], [y(c) for c in searched], s=14, c="#888", label="searched")
    base = [c for c in ok if c.baseline]
    ax.scatter([c.size_bytes / ref * 100 for c in base], [y(c) for c in base], s=40, marker="x", c="#c33",
               label="naive / peer tools")
    for c in base:
        ax.annotate(c.name, (c.size_bytes / ref * 100, y(c)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto(ok)
    ax.plot([c.size_bytes / ref * 100 for c in front], [y(c) for c in front], "-", c="#36c", lw=1, label="Pareto front")
    for variant, c in result.chosen.items():
        ax.scatter([c.size_bytes / ref * 100], [y(c)], s=90, marker="*", c="#2a2", zorder=5)
        ax.annotate(variant, (c.size_bytes / ref * 100, y(c)), fontsize=8, xytext=(4, -10), textcoords="offset points")
    for attr, limit in result.goal.limits.items():
        if attr == ("kld_mean" if decoder else "cos_mean"):
            ax.axhline(limit, ls="--", c="#2a2", lw=0.8, label=f"goal {limit:g}")
    if decoder:
        ax.set_yscale("log")
    ax.set_xlabel("size, % of fp32")
    ax.set_ylabel("mean KLD vs fp32 (dev texts)" if decoder else "mean cosine vs fp32 (dev texts)")
    ax.set_title(f"{result.model}: {result.target} quantization search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right" if not decoder else "upper right")
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
