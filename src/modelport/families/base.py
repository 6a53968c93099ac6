"""The `Family` contract: what one model family (sentence encoder, decoder LLM, ...) means to the
pipeline, owned in one object instead of re-dispatched by string across the code base.

A family owns:
  - its golden: PyTorch fp32 on fixed inputs, computed at conversion, stored in the artifact
    (`compute_golden`, `load_golden`);
  - how one variant is judged against it (`judge`: metrics, the threshold table, failures, notes);
  - its real-client check (`check_clients`: transformers.js feature-extraction or text-generation);
  - what the hub and the model card say about it (`pipeline_tag`, `card_usage` + `card_fields`: the
    usage snippet per target, `card_validation_intro` + `card_validation_table`: its figures), and
    the verdict table of report.html (`verdict_table_html`).
Targets never ask "which family is this?": a converter is registered per (target, family), and the
validator hands the family a runner from the target's `ArtifactSession`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from .cards import TargetCard


@dataclass
class Judgement:
    """One variant judged: `failures` empty means it passes."""

    metrics: Any  # a metrics object with to_json() (metrics.Metrics, lm.LMMetrics)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # the golden the gated figures were measured against, when it is not the artifact's main golden
    # (decoders: a quantized variant's dequantized-weights golden); handed to the session's extra_metrics
    against: Any = None


Progress = Callable[[str], Any]


class Family(ABC):
    name: ClassVar[str]  # recorded as recipe.family and target.family in the manifest
    what: ClassVar[str]  # for messages: "sentence encoders", "decoder LLMs"
    pipeline_tag: ClassVar[str]  # Hugging Face hub pipeline tag of a published artifact
    client_task: ClassVar[str]  # the transformers.js pipeline its real-client check runs
    thresholds: ClassVar[Mapping[str, Any]]  # precision -> gate (a dataclass with to_json())

    # --- golden -------------------------------------------------------------------------------------
    @abstractmethod
    def compute_golden(self, source: Any, recipe: Any, out: Path, step: Progress, models: Any = None) -> None:
        """Run PyTorch fp32 on the family's fixed inputs and store the golden under out/reference/.
        `models` (torch_model.Models): modules loaded once per conversion, shared with the converter."""

    @abstractmethod
    def load_golden(self, root: Path) -> Any:
        """The golden stored in an artifact."""

    # --- judging ------------------------------------------------------------------------------------
    @abstractmethod
    def judge(self, root: Path, golden: Any, variant: str, precision: str, runner: Any) -> Judgement:
        """Run one variant over the golden and gate it with the family's threshold table."""

    def golden_notes(self, golden: Any) -> list[str]:
        """Notes about the golden itself, said once per report (not per variant): e.g. how far a
        client that skips part of the embedding head would land."""
        return []

    def describe_run(self, variant: str, golden: Any) -> str:
        """The progress line while a variant is validated."""
        return f"validate {variant}"

    def gate_json(self, precision: str) -> dict[str, Any] | None:
        gate = self.thresholds.get(precision)
        return gate.to_json() if gate is not None else None

    # --- real clients -------------------------------------------------------------------------------
    @abstractmethod
    def check_clients(self, root: Path, plan: dict[str, list[str] | None], quick: tuple[str, ...],
                      progress: Progress) -> dict[str, Any]:
        """Run the artifact in real clients (transformers.js); results keyed by client name."""

    @abstractmethod
    def clients_table(self, results: dict[str, Any]) -> Any:
        """A rich table summarizing check_clients' results."""

    # --- presentation -------------------------------------------------------------------------------
    @abstractmethod
    def report_table(self, report: dict[str, Any]) -> Any:
        """The terminal table of a validation report (`Report.to_json()`), one row per variant."""

    @abstractmethod
    def verdict_table_html(self, rows: list[Any]) -> str:
        """report.html's verdict table: one line per variant and runtime (`report.Row`: the Python
        validator's rows and the real clients'), in the family's own columns."""

    # --- model card (modelcard.render; modelcard itself knows no family) ----------------------------
    @abstractmethod
    def card_usage(self, target: str) -> TargetCard | None:
        """The usage section of an artifact of `target` (client, language, snippet template), or None
        where this family has no snippet for that target."""

    def card_fields(self, man: dict[str, Any], repo: str) -> dict[str, str]:
        """The family's own fields of its snippet templates, from the manifest (modelcard adds the
        target-level ones: repo, variant, variant_file, variant_dir, ...)."""
        return {}

    @abstractmethod
    def card_validation_intro(self, man: dict[str, Any]) -> str:
        """What the validation measured, in words: the paragraph above the table."""

    @abstractmethod
    def card_validation_table(self, man: dict[str, Any]) -> list[str]:
        """The validation table as Markdown lines (header, rule, one row per validated variant) with
        the family's own figures and the gate each variant had to meet."""
