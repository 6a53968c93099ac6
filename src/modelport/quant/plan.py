"""A quantization plan: what a searched variant did to every layer, enough to rebuild it byte for byte.

A plan is data, not code: it names the quantizer settings of every quantizable layer (by the
target's own layer names), the word-embedding table's treatment, and the text set the calibration
statistics came from. `modelport quantize-search` writes one (`plan.json`), the converter reads it
(`--quant-plan`), the manifest records it under the variant (`details.plan`, with its digest), and
the variant is rebuilt from it: same weights + same plan + same calibration texts = same bytes
(tests/test_quant_*.py rebuild and compare).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ModelportError
from .numerics import SCALE_METHODS

PLAN_VERSION = "1"
KINDS = ("affine", "palette", "float")


@dataclass(frozen=True)
class LayerQuant:
    """How one layer is stored.

    kind    affine: integer codes with a scale and zero point per group (numerics.GroupQuant);
            palette: a look-up table of 2^bits values per group of channels (Core ML);
            float: kept in the variant's float type (bits = 16 or 32)
    bits    code width (affine/palette) or float width
    group   columns per scale (affine), channels per table (palette, 0 = one table per tensor)
    scales  numerics.SCALE_METHODS (affine)
    gptq    error feedback with the calibration Hessian (affine)
    """

    bits: int
    group: int = 32
    scales: str = "rtn_sym"
    gptq: bool = False
    kind: str = "affine"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"layer kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "affine" and self.scales not in SCALE_METHODS:
            raise ValueError(f"scale method {self.scales!r} is not one of {', '.join(SCALE_METHODS)}")

    def label(self) -> str:
        if self.kind == "float":
            return f"f{self.bits}"
        if self.kind == "palette":
            return f"pal{self.bits}" + (f"/g{self.group}" if self.group else "")
        return f"{'gptq-' if self.gptq else ''}{self.scales}-{self.bits}b/g{self.group}"


@dataclass(frozen=True)
class Plan:
    """Per-layer settings of one quantized variant.

    target       the target whose format the plan is for (onnx, mlx, coreml)
    default      every quantizable layer not named in `layers`
    layers       overrides by layer name (e.g. 8 bits for the most sensitive MatMuls)
    embedding    the word-embedding table (None: kept as in the float model)
    calibration  the text set the statistics came from (quant/texts.py), "" when no statistic is used
    options      format details the target needs to rebuild the bytes (e.g. embedding_format)
    """

    target: str
    default: LayerQuant
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    embedding: LayerQuant | None = None
    calibration: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str) -> LayerQuant:
        return self.layers.get(name, self.default)

    def with_layers(self, overrides: dict[str, LayerQuant]) -> "Plan":
        return replace(self, layers={**self.layers, **overrides})

    def needs_calibration(self) -> bool:
        specs = [self.default, *self.layers.values()] + ([self.embedding] if self.embedding else [])
        return any(s.gptq or (s.kind == "affine" and s.scales.startswith("mse")) for s in specs)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan_version": PLAN_VERSION,
            "target": self.target,
            "default": asdict(self.default),
            "layers": {k: asdict(v) for k, v in sorted(self.layers.items())},
            "embedding": asdict(self.embedding) if self.embedding else None,
            "calibration": self.calibration,
            "options": dict(sorted(self.options.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        if not isinstance(data, dict) or data.get("plan_version") != PLAN_VERSION:
            raise ModelportError(f"not a modelport quantization plan (plan_version {PLAN_VERSION} expected)")
        try:
            return cls(
                target=data["target"],
                default=LayerQuant(**data["default"]),
                layers={k: LayerQuant(**v) for k, v in data.get("layers", {}).items()},
                embedding=LayerQuant(**data["embedding"]) if data.get("embedding") else None,
                calibration=data.get("calibration", ""),
                options=dict(data.get("options", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelportError(f"quantization plan is malformed: {e}") from None

    def digest(self) -> str:
        """sha256 of the canonical JSON: the manifest records it beside the plan."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ModelportError(f"quantization plan {path} does not exist") from None
        except (OSError, ValueError) as e:
            raise ModelportError(f"quantization plan {path} cannot be read: {e}") from None
        return cls.from_json(data)


def plan_for(quant_plan: str | None, variant: str, target: str, model: str = "<model>") -> Plan:
    """The plan a searched variant is written from.

    `quant_plan` (the --quant-plan value) is either a search folder, holding `plan-<variant>.json`
    for every variant the search chose (what `modelport quantize-search` writes), or one plan file
    (then only one searched variant can be written per run). One clear line for everything else.
    """
    if not quant_plan:
        raise ModelportError(f"variant {variant} needs --quant-plan PLAN (write one with: modelport quantize-search "
                             f"{model} --target {target})")
    path = Path(quant_plan)
    if path.is_dir():
        path = path / f"plan-{variant}.json"
        if not path.is_file():
            raise ModelportError(f"--quant-plan {quant_plan}: no plan-{variant}.json there (the search did not choose "
                                 f"a {variant} variant, or this is not a quantize-search folder)")
    plan = Plan.load(path)
    if plan.target != target:
        raise ModelportError(f"--quant-plan {path} is a plan for the {plan.target} target, not {target}")
    return plan
