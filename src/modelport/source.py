"""Resolve what the user named into a checked, local Hugging Face model directory.

`<model>` is a local directory or the name of a known model (see `MODELS`). Everything that can
be wrong with a checkpoint is checked here, before any conversion starts, so each problem gets
one clear message: missing directory or config, no weights, pickle-only weights (arbitrary code
on load), remote code, already-quantized weights, and the model directory checks of `checkpoint`
(files outside the directory, malformed JSON and safetensors, config types, tokenizer ids, size,
missing or misshapen tensors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from . import checkpoint
from .catalog import MODELS, KnownModel  # noqa: F401  (re-exported: the known-models table)
from .errors import ModelportError
from .fsutil import cache_root, read_json, sha256_file  # noqa: F401  (cache_root re-exported)
from .recipes import ARCHITECTURES

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


@dataclass(frozen=True)
class ModelSource:
    """A checked local checkpoint and where it came from (recorded in every manifest)."""

    name: str
    path: Path
    origin: str
    revision: str | None
    config: dict[str, Any]
    weight_files: tuple[Path, ...]
    weights_dtype: tuple[str, ...]
    trust_remote_code: bool = False
    notes: tuple[str, ...] = field(default=())
    hub_id: str | None = None  # set when the weights are a hub model's (hub id, or a known model's origin)
    license: str | None = None  # from the source's model card or config, carried into published cards

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "origin": self.origin,
            "revision": self.revision,
            "model_type": self.config.get("model_type"),
            "weights": {p.name: sha256_file(p) for p in self.weight_files},
            "weights_dtype": list(self.weights_dtype),
            "notes": list(self.notes),
            "hub_id": self.hub_id,
            "license": self.license,
        }


def _revision_of(path: Path) -> str | None:
    """A Hugging Face cache snapshot directory is named after its commit."""
    if path.parent.name == "snapshots" and len(path.name) == 40:
        return path.name
    return None


def is_hub_id(spec: str) -> bool:
    """`org/name[@revision]` that is not a local path: one '/', not starting like a path does.

    A local directory always wins, so `models/foo` is a hub id only when ./models/foo does not exist.
    """
    repo = spec.partition("@")[0]
    return (spec not in MODELS and repo.count("/") == 1 and not repo.startswith((".", "/", "~"))
            and all(repo.split("/")) and not Path(spec).expanduser().exists())


def resolve(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelSource:
    """Turn a model name, hub id or directory into a checked `ModelSource`, or raise `ModelportError`."""
    hub_id = None
    if spec in MODELS:
        path, origin = MODELS[spec].materialize()
        name, hub_id = spec, MODELS[spec].hub_id
    elif is_hub_id(spec):
        from . import hub

        snap = hub.resolve(spec)
        path, origin, hub_id = snap.path, f"hf:{snap.ref.repo_id}@{snap.ref.rev}", snap.ref.repo_id
        name = hub_id.split("/")[-1]
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            known = ", ".join(MODELS)
            raise ModelportError(f"model not found: {spec!r} is neither a directory nor a known model ({known}) "
                                 "nor a hub id (org/name[@revision])")
        if not path.is_dir():
            raise ModelportError(f"model path {spec!r} is not a directory")
        path = path.resolve()
        name = path.name if _revision_of(path) is None else path.parent.parent.name.split("--")[-1]
        origin = f"local:{path}"
    source = inspect(path, name=name, origin=origin, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return replace(source, hub_id=hub_id) if hub_id else source


def inspect(
    path: Path, *, name: str, origin: str, allow_pickle: bool = False, trust_remote_code: bool = False
) -> ModelSource:
    """Check a model directory completely before any tensor is loaded (see `checkpoint` for each check)."""
    if checkpoint.checked_file(path, "config.json") is None:
        raise ModelportError(f"no config.json in {path}: not a Hugging Face model directory")
    config = checkpoint.read_json_object(path, "config.json")
    notes: list[str] = []
    trust_remote_code = _remote_code_policy(path, config, trust_remote_code, notes)
    arch = ARCHITECTURES.get(config.get("model_type")) if isinstance(config.get("model_type"), str) else None

    safetensors = sorted(path.glob("*.safetensors"))
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    checkpoint.check_files(path, [p.name for p in safetensors])
    if arch is not None:  # an unknown model_type is refused by name right after (recipes.architecture_for)
        checkpoint.check_config(config)
    if safetensors:
        weights = tuple(safetensors)
    elif pickles:
        if not allow_pickle:
            raise ModelportError(
                f"{path.name} has only pickle weights ({', '.join(p.name for p in pickles)}): loading them can "
                "run arbitrary code; convert to safetensors or pass --allow-pickle"
            )
        for p in pickles:
            checkpoint.checked_file(path, p.name)
        weights = tuple(pickles)
        notes.append("loaded from pickle weights (--allow-pickle): the tensor inventory was not checked before loading")
    else:
        raise ModelportError(f"no weights in {path} (expected *.safetensors)")
    headers = {p.name: checkpoint.read_header(p) for p in weights if p.suffix == ".safetensors"}
    dtypes = {t.dtype for tensors in headers.values() for t in tensors.values()}
    float_only = dtypes & FLOAT_DTYPES
    if dtypes and not float_only:
        raise ModelportError(
            f"weights in {path.name} have dtype {sorted(dtypes)}: already quantized checkpoints cannot be the "
            "reference; convert from the float checkpoint"
        )
    if dtypes - FLOAT_DTYPES - {"I64", "I32", "BOOL", "U8"}:
        raise ModelportError(f"weights in {path.name} have unsupported dtypes {sorted(dtypes - FLOAT_DTYPES)}")
    if float_only - {"F32"}:
        notes.append(f"weights stored as {sorted(float_only)}; the reference runs them upcast to fp32")
    checkpoint.check_side_configs(path)
    if arch is not None:
        checkpoint.check_tokenizer(path, config)
        if headers:
            loaded = checkpoint.read_weights(path, headers)
            weights = tuple(sorted(set(weights) | {path / f for f in loaded.files}))
            checkpoint.check_fits(checkpoint.config_params_lower_bound(config), loaded, at_least=True)
            if checkpoint.torch_available():  # without torch the conversion stops at its package check anyway
                notes += checkpoint.check_inventory(path, config, loaded, decoder=arch.is_decoder)
    return ModelSource(
        name=name,
        path=path,
        origin=origin,
        revision=_revision_of(path),
        config=config,
        weight_files=weights,
        weights_dtype=tuple(sorted(dtypes)),
        trust_remote_code=trust_remote_code,
        notes=tuple(notes),
        license=read_license(path, config),
    )


def _remote_code_policy(path: Path, config: dict[str, Any], trust_remote_code: bool, notes: list[str]) -> bool:
    """Whether transformers may run the model repo's own code.

    config.json's `auto_map` points at Python files in the repo. When transformers implements the
    model_type itself (the real Phi-3-mini config has an auto_map), the model loads natively: no repo
    code runs, none is needed (`fetch` never downloads *.py), and a note in the manifest says so. Only an
    architecture transformers does not know needs --trust-remote-code."""
    auto_map = config.get("auto_map")
    if not auto_map:
        return trust_remote_code
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in checkpoint.native_model_types():
        classes = ", ".join(sorted(map(str, auto_map.values()))) if isinstance(auto_map, dict) else str(auto_map)
        notes.append(f"config.json's auto_map names repo code ({classes}); transformers implements {model_type} "
                     "itself, so it was loaded natively and no repo code ran"
                     + (" (--trust-remote-code was not needed)" if trust_remote_code else ""))
        return False
    if not trust_remote_code:
        raise ModelportError(
            f"{path.name} needs trust_remote_code (config.json has auto_map and model_type {model_type!r} is not "
            "one transformers implements): it runs Python from the model repo; refused unless you pass "
            "--trust-remote-code"
        )
    return True


def read_license(path: Path, config: dict[str, Any]) -> str | None:
    """The license the model card's YAML front matter (or config.json) declares, for published cards:
    one license id (what a hub card's `license` field holds), so a list is not taken here."""
    meta, _ = read_front_matter(path / "README.md")
    if isinstance(meta.get("license"), str):
        return meta["license"]
    value = config.get("license")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ModelCard:
    """What the model card's front matter and first paragraph say (all optional)."""

    author: str | None = None
    license: str | None = None
    summary: str | None = None


def read_model_card(model_dir: Path) -> ModelCard:
    """README.md of the source: YAML front matter (license, author) and the first prose paragraph.

    The license as a person reads it (Core ML packages show it in Xcode): a list of licenses is
    joined, and `license_name` (what hub cards add to `license: other`) is taken without `license`."""
    if not (model_dir / "README.md").is_file():
        return ModelCard()
    meta, body = read_front_matter(model_dir / "README.md")
    license_ = meta.get("license") or meta.get("license_name")
    if isinstance(license_, list):
        license_ = ", ".join(map(str, license_))
    author = meta.get("author") or meta.get("model_creator")
    return ModelCard(author=str(author) if author else None, license=str(license_) if license_ else None,
                     summary=_first_paragraph(body))


def read_front_matter(card: Path) -> tuple[dict[str, Any], str]:
    """(YAML front matter, the markdown after it) of a model card; ({}, "") when there is no card.

    The one front-matter parser (read_license and read_model_card both use it): the card starts with
    `---`, the front matter ends at the next line starting with `---`; front matter that is not a
    YAML mapping reads as {}."""
    if not card.is_file():
        return {}, ""
    text = card.read_text(encoding="utf-8", errors="replace")
    end = text.find("\n---", 3) if text.startswith("---") else -1
    if end < 0:
        return {}, text
    import yaml

    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        meta = None
    return (meta if isinstance(meta, dict) else {}), text[end + 4:]


def _first_paragraph(markdown: str, limit: int = 400) -> str | None:
    """First paragraph of prose: no heading, code, table, HTML or image; links reduced to their text."""
    markdown = re.sub(r"```.*?```", "", markdown, flags=re.S)  # fenced code, blank lines included
    markdown = re.sub(r"(?m)^#.*$", "", markdown)  # headings (often directly above the first paragraph)
    for block in re.split(r"\n\s*\n", markdown):
        block = block.strip()
        if not block or block[0] in "<`|!>" or block.startswith(("---", "[![")):
            continue
        block = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", block)
        block = re.sub(r"[*_`]", "", " ".join(block.split()))
        return block if len(block) <= limit else block[: limit - 1].rsplit(" ", 1)[0] + "…"
    return None
