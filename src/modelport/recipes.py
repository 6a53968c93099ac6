"""What modelport knows about each architecture, in one registry.

One `Architecture` entry per Hugging Face `model_type`: which inputs the exported graph takes,
the default pooling, position-id offsets, and every quirk that changes how it must be converted.
A `Recipe` is an architecture applied to one concrete checkpoint: pooling and normalization read
from its sentence-transformers config, and the max length it is really used at.

Adding an architecture means adding one entry here (and a tiny test model in `tiny.py`), not
sprinkling `if model_type == ...` through the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelportError
from .fsutil import read_json


@dataclass(frozen=True)
class Quirk:
    """A named property of a checkpoint family that a converter must handle deliberately."""

    name: str
    why: str


@dataclass(frozen=True)
class Architecture:
    model_type: str
    family: str
    inputs: tuple[str, ...]
    default_pooling: str
    # Usable positions = max_position_embeddings - position_offset (RoBERTa-style models start
    # position ids at padding_idx + 1).
    position_offset: int = 0
    quirks: tuple[Quirk, ...] = ()
    # Targets whose converter handles this architecture (the CLI refuses the others up front).
    targets: tuple[str, ...] = ("onnx", "coreml", "mlx")
    # Group size for group-wise weight quantization (MLX q8/q4): 64 is mlx-lm's default; a smaller
    # divisor is chosen when a layer's input width is not a multiple of it.
    quant_group_size: int = 64


TORCH_EXPORT_ONLY = Quirk(
    "torch-export-only",
    "transformers 5 builds attention masks with data-dependent code: the legacy TorchScript ONNX "
    "exporter bakes the example shape into the mask (1.4 max abs error on MiniLM); the dynamo "
    "exporter (torch.export) traces it correctly.",
)
PADDING_ROWS_UNDEFINED = Quirk(
    "padding-rows-undefined",
    "Hidden states at padding positions depend on the attention kernel (6.5e-5 between eager and "
    "SDPA in PyTorch itself): only non-padding positions are compared.",
)

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture(
            model_type="bert",
            family="sentence-encoder",
            inputs=("input_ids", "attention_mask", "token_type_ids"),
            default_pooling="mean",
            quirks=(TORCH_EXPORT_ONLY, PADDING_ROWS_UNDEFINED),
            targets=("onnx", "coreml", "mlx", "mlc"),
        ),
        Architecture(
            model_type="xlm-roberta",
            family="sentence-encoder",
            inputs=("input_ids", "attention_mask"),
            default_pooling="cls",
            position_offset=2,
            quirks=(
                TORCH_EXPORT_ONLY,
                PADDING_ROWS_UNDEFINED,
                Quirk(
                    "roberta-position-offset",
                    "position ids start at pad_token_id + 1, so the usable length is "
                    "max_position_embeddings - 2 (514 -> 512); exceeding it indexes past the table.",
                ),
                Quirk(
                    "no-token-type-ids",
                    "type_vocab_size is 1 and the tokenizer emits no token_type_ids: the graph "
                    "takes only input_ids and attention_mask.",
                ),
            ),
        ),
    )
}

POOLING_MODES = ("mean", "cls")


@dataclass(frozen=True)
class Recipe:
    """An architecture applied to one checkpoint: everything a target needs to know."""

    architecture: Architecture
    pooling: str
    normalize: bool
    max_length: int
    hidden_size: int
    pooling_source: str  # "sentence-transformers" or "architecture-default"
    notes: tuple[str, ...] = field(default=())
    quant_group_size: int = 64

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.architecture.inputs

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.architecture.model_type,
            "family": self.architecture.family,
            "inputs": list(self.inputs),
            "outputs": ["last_hidden_state", "sentence_embedding"],
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "hidden_size": self.hidden_size,
            "pooling_source": self.pooling_source,
            "quant_group_size": self.quant_group_size,
            "quirks": [q.name for q in self.architecture.quirks],
            "notes": list(self.notes),
        }


def supported_types() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def architecture_for(config: dict[str, Any]) -> Architecture:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        archs = ",".join(config.get("architectures") or []) or "?"
        raise ModelportError(
            f"unsupported architecture: model_type={model_type!r} ({archs}); "
            f"supported model types: {supported_types()}"
        )
    return ARCHITECTURES[model_type]


def read_pooling(model_dir: Path) -> tuple[str, bool] | None:
    """Pooling mode and normalization from sentence-transformers' modules.json, if present."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    modules = read_json(modules_path)
    pooling: str | None = None
    normalize = False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Pooling"):
            cfg_path = model_dir / module.get("path", "") / "config.json"
            if not cfg_path.is_file():
                raise ModelportError(f"modules.json names a Pooling module but {cfg_path} is missing")
            cfg = read_json(cfg_path)
            modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            if "pooling_mode" in cfg:  # newer sentence-transformers spell it as one string
                modes = [cfg["pooling_mode"]]
            modes = ["mean" if m == "mean_tokens" else "cls" if m == "cls_token" else m for m in modes]
            if len(modes) != 1 or modes[0] not in POOLING_MODES:
                raise ModelportError(
                    f"unsupported pooling in {cfg_path}: {modes or 'none'}; supported: {', '.join(POOLING_MODES)}"
                )
            pooling = modes[0]
        elif kind.endswith(".Normalize"):
            normalize = True
        elif kind.endswith(".Dense"):
            raise ModelportError("sentence-transformers Dense modules are not supported yet")
    if pooling is None:
        return None
    return pooling, normalize


def _max_length(model_dir: Path, config: dict[str, Any], arch: Architecture) -> tuple[int, list[str]]:
    """The length the model is really used at: the smallest of the declared limits."""
    notes = []
    limit = int(config.get("max_position_embeddings", 512)) - arch.position_offset
    candidates = {"positions": limit}
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file() and read_json(st_cfg).get("max_seq_length"):
        candidates["sentence-transformers max_seq_length"] = int(read_json(st_cfg)["max_seq_length"])
    tok_cfg = model_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        mml = read_json(tok_cfg).get("model_max_length")
        if isinstance(mml, (int, float)) and 0 < mml < 1_000_000:
            candidates["tokenizer model_max_length"] = int(mml)
    source, value = min(candidates.items(), key=lambda kv: kv[1])
    if len(set(candidates.values())) > 1:
        notes.append(f"max_length {value} from {source} (declared: {candidates})")
    return value, notes


def recipe_for(model_dir: Path, config: dict[str, Any]) -> Recipe:
    arch = architecture_for(config)
    pooled = read_pooling(model_dir)
    notes: list[str] = []
    if pooled is None:
        pooling, normalize, source = arch.default_pooling, True, "architecture-default"
        notes.append(f"no sentence-transformers pooling config: using {pooling} pooling + L2 normalize")
    else:
        (pooling, normalize), source = pooled, "sentence-transformers"
    max_length, more = _max_length(model_dir, config, arch)
    group, group_notes = _quant_group_size(config, arch)
    return Recipe(
        architecture=arch,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        hidden_size=int(config["hidden_size"]),
        pooling_source=source,
        notes=tuple(notes + more + group_notes),
        quant_group_size=group,
    )


def _quant_group_size(config: dict[str, Any], arch: Architecture) -> tuple[int, list[str]]:
    """The architecture's group size, or the largest smaller power of two (>= 16) that divides
    every quantized layer's input width (hidden and intermediate sizes)."""
    widths = [int(config[k]) for k in ("hidden_size", "intermediate_size") if k in config]
    group = arch.quant_group_size
    while group >= 16:
        if all(w % group == 0 for w in widths):
            break
        group //= 2
    else:
        return 0, [f"no quantization group size divides the layer widths {widths}: group-wise quantization unavailable"]
    notes = [] if group == arch.quant_group_size else [
        f"quantization group size {group} (the default {arch.quant_group_size} does not divide {widths})"]
    return group, notes
