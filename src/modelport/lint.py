"""Config lint: checkpoint settings that a target's loader would silently misread.

Runs before any conversion work. Each rule is named, says which targets it concerns, and explains
the failure it prevents. An `error` stops the conversion (unless `--ignore-lint`); a `warning` is
printed and recorded in the manifest. Rules read only files (no torch), so the same lint runs in
every image.

Why a lint at all: the worst conversion bugs give plausible numbers. A guessed pooling mode, a
rope base the loader never read (transformers 5 moved `rope_theta` into `rope_parameters`; mlx-lm
and optimum-onnx still read the old key and fall back to 10000 without a word: 3.7e-3 logits error
measured on SmolLM3) or a tokenizer that pads to a fixed length all produce embeddings that look
fine and are wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ModelportError
from .fsutil import read_json
from .recipes import CAUSAL_LM, EMBEDDING_FAMILIES, SENTENCE_ENCODER, Recipe

# A rule about the checkpoint itself (tokenizer, pooling) applies to every registered target, present and future.
ALL_TARGETS = ("*",)
ALL_FAMILIES = (*EMBEDDING_FAMILIES, CAUSAL_LM)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error" stops the conversion; "warning" is recorded
    message: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class Rule:
    name: str
    targets: tuple[str, ...]
    check: Callable[[Path, dict[str, Any], Recipe], list[Finding]]
    # model families (recipes.py) the rule concerns: pooling rules mean nothing for a decoder
    families: tuple[str, ...] = EMBEDDING_FAMILIES


def _tokenizer_json(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer.json"
    return read_json(path) if path.is_file() else {}


def pooling_config_missing(model_dir: Path, config: dict[str, Any], recipe: Recipe) -> list[Finding]:
    if recipe.pooling_source != "architecture-default":
        return []
    return [Finding(
        "pooling-config-missing", "error",
        f"no sentence-transformers pooling config (modules.json + 1_Pooling/config.json) in {model_dir}: "
        f"modelport would guess {recipe.pooling} pooling + L2 normalize for {recipe.architecture.model_type}, and "
        "a wrong guess gives plausible but wrong embeddings. Add the model's pooling config, or accept the "
        "guess (it is then written into the artifact and recorded in the manifest)")]


def rope_parameters_only(model_dir: Path, config: dict[str, Any], recipe: Recipe) -> list[Finding]:
    """transformers 5 writes `rope_parameters`; mlx-lm (and optimum-onnx) read `rope_theta`/`rope_scaling`."""
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return []
    findings = []
    if "rope_theta" in params and "rope_theta" not in config:
        findings.append(Finding(
            "rope-parameters-only", "error",
            f"config.json sets rope_theta={params['rope_theta']} only inside rope_parameters (transformers 5); "
            "mlx-lm reads the top-level rope_theta and would silently use its default (10000): logits off by "
            "3.7e-3 on SmolLM3. Add \"rope_theta\" at the top level of config.json"))
    rope_type = params.get("rope_type", "default")
    if rope_type != "default" and not config.get("rope_scaling"):
        findings.append(Finding(
            "rope-parameters-only", "error",
            f"rope_parameters has rope_type={rope_type!r} but config.json has no rope_scaling: mlx-lm would "
            "apply plain RoPE. Add the rope_scaling block at the top level of config.json"))
    return findings


def tokenizer_fixed_padding(model_dir: Path, config: dict[str, Any], recipe: Recipe) -> list[Finding]:
    padding = _tokenizer_json(model_dir).get("padding")
    strategy = (padding or {}).get("strategy")
    if isinstance(strategy, dict) and "Fixed" in strategy:
        return [Finding(
            "tokenizer-fixed-padding", "warning",
            f"tokenizer.json pads every input to {strategy['Fixed']} tokens; the reference pads to the longest "
            "input, and clients that honour tokenizer.json (WebLLM, tokenizers) will run padded inputs")]
    return []


def tokenizer_truncation(model_dir: Path, config: dict[str, Any], recipe: Recipe) -> list[Finding]:
    trunc = _tokenizer_json(model_dir).get("truncation")
    if isinstance(trunc, dict) and int(trunc.get("max_length", 0)) > recipe.max_length:
        return [Finding(
            "tokenizer-truncation", "warning",
            f"tokenizer.json truncates at {trunc['max_length']} tokens but the model is used at "
            f"{recipe.max_length}: the artifact's tokenizer_config.json sets model_max_length={recipe.max_length}")]
    return []


def tokenizer_file_differs(model_dir: Path, config: dict[str, Any], recipe: Recipe) -> list[Finding]:
    """tokenizer.json is what every on-device client runs (transformers.js, swift-transformers, the
    `tokenizers` MLX users load); the golden is tokenized by transformers, whose tokenizer class can
    replace parts of the file when it loads (Qwen2Tokenizer installs Qwen's digit-by-digit pre-tokenizer
    whatever the file says). Found on a Qwen3-Embedding tokenizer whose file kept GPT-2's regex:
    " 12345" gave different ids in transformers.js, and the client check failed on that text."""
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer

    from .validation_set import TEXTS

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return []
    try:
        python, file = AutoTokenizer.from_pretrained(model_dir), Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer that does not load is reported by the checks that need it
        return []
    file.no_truncation()  # length limits are checked elsewhere (tokenizer-truncation): compare the splitting
    file.no_padding()
    python.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    for text in (t.rstrip() for t in TEXTS):  # as the golden runs them (validation_set.fit strips the end)
        a, b = list(python(text)["input_ids"]), file.encode(text).ids
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return [Finding(
                "tokenizer-file-differs", "warning",
                f"tokenizer.json does not tokenize as transformers' {type(python).__name__} does: {text[:40]!r} "
                f"differs from token {at} ({a[at:at + 6]} vs the file's {b[at:at + 6]}): clients run the file, the "
                "golden runs transformers, so client checks will report token-id mismatches; fix the file's "
                "pre_tokenizer / normalizer")]
    return []


def cls_pooling_special_tokens(model_dir: Path, config: dict[str, Any], recipe: Recipe) -> list[Finding]:
    tok = _tokenizer_json(model_dir)
    if recipe.pooling != "cls" or not tok or tok.get("post_processor"):
        return []
    return [Finding(
        "cls-pooling-without-special-tokens", "error",
        "the recipe pools the first token (CLS pooling) but tokenizer.json has no post_processor, so no "
        "[CLS]/<s> is added: every client would pool the first word instead")]


def decoder_rope_parameters_only(model_dir: Path, config: dict[str, Any], recipe) -> list[Finding]:
    """A decoder config with RoPE settings only in `rope_parameters` (transformers 5).

    modelport's ONNX export traces transformers 5, which reads them, so the graph is right; but the
    checkpoint (and any config shipped as is) is misread by readers built for transformers 4:
    optimum-onnx 0.1.0 (on transformers 4.57) exported a SmolLM3 whose prefill logits were off by
    3.69 max abs and whose greedy tokens matched on 0 of 5 prompts; the same export is exact once a
    top-level rope_theta is added. The artifact's config.json gets that top-level copy (and
    rope_scaling for scaled RoPE); this finding names the checkpoint so its owner can fix the source.
    """
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return []
    missing = []
    if "rope_theta" in params and config.get("rope_theta") is None:
        missing.append(f"rope_theta={params['rope_theta']}")
    rope_type = params.get("rope_type", "default")
    if rope_type != "default" and not config.get("rope_scaling"):
        missing.append(f"rope_scaling (rope_type={rope_type!r})")
    if not missing:
        return []
    return [Finding(
        "rope-parameters-only", "warning",
        f"config.json keeps {' and '.join(missing)} only inside rope_parameters (transformers 5): optimum-onnx and "
        "transformers < 5 read the top-level keys and silently fall back to defaults (SmolLM3 exported that way: "
        "logits off by 3.69, 0/5 greedy sequences right). modelport's export reads rope_parameters; the artifact's "
        "config.json gets the top-level keys so other readers of the artifact agree. Fix the checkpoint's "
        "config.json too")]


def chat_template_missing(model_dir: Path, config: dict[str, Any], recipe) -> list[Finding]:
    if getattr(recipe, "chat_template", True):
        return []
    return [Finding(
        "chat-template-missing", "warning",
        "no chat template (tokenizer_config.json chat_template or chat_template.jinja): clients cannot format "
        "chat messages, and the validation's chat prompt is run as plain text")]


RULES: tuple[Rule, ...] = (
    Rule("pooling-config-missing", ALL_TARGETS, pooling_config_missing),
    # Targets that trace transformers 5 in-process (onnx, coreml) read rope_parameters correctly.
    # (decoders on MLX: the converter writes the top-level keys itself, see the warning rule below)
    Rule("rope-parameters-only", ("mlx",), rope_parameters_only, (SENTENCE_ENCODER,)),
    Rule("tokenizer-fixed-padding", ALL_TARGETS, tokenizer_fixed_padding, ALL_FAMILIES),
    Rule("tokenizer-truncation", ALL_TARGETS, tokenizer_truncation),
    Rule("cls-pooling-without-special-tokens", ALL_TARGETS, cls_pooling_special_tokens),
    Rule("tokenizer-file-differs", ALL_TARGETS, tokenizer_file_differs),
    # decoders: the artifact is right (ONNX/Core ML trace transformers 5; MLX writes the top-level
    # rope_theta/rope_scaling mlx-lm reads), but the checkpoint misleads transformers-4-era readers
    Rule("rope-parameters-only", ("onnx", "coreml", "mlx"), decoder_rope_parameters_only, (CAUSAL_LM,)),
    Rule("chat-template-missing", ALL_TARGETS, chat_template_missing, (CAUSAL_LM,)),
)


def run(model_dir: Path, config: dict[str, Any], recipe: Recipe, target: str) -> list[Finding]:
    family = recipe.family
    return [f for rule in RULES if (target in rule.targets or rule.targets == ALL_TARGETS) and family in rule.families
            for f in rule.check(model_dir, config, recipe)]


def enforce(findings: list[Finding], ignore: bool) -> None:
    """Raise on errors unless `ignore`; the caller records every finding either way."""
    errors = [f for f in findings if f.severity == "error"]
    if errors and not ignore:
        lines = "; ".join(f"[{f.rule}] {f.message}" for f in errors)
        raise ModelportError(f"config lint failed: {lines} (pass --ignore-lint to convert anyway)")
