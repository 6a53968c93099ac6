"""manifest.json: what an artifact is, how it was made, whether it passed, and every file's hash.

The manifest is the artifact's provenance record: source model (origin, revision, weight hashes),
the recipe, every tool version, the exact command, the validation results, and the sha256 of every
other file in the directory. `verify_files` is how `validate` and `publish` detect tampering.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelportError
from .fsutil import list_files, read_json, sha256_file, write_json

MANIFEST = "manifest.json"
# 2: the target section is written through TargetInfo (every target records `family`; Core ML's old
# `kind` is gone); 1 is still read (see `_upgrade`).
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCHEMA = Path(__file__).parent / "schema" / "manifest.schema.json"
# Files that describe the artifact rather than being part of it.
UNHASHED = frozenset({MANIFEST, "report.html"})
TOOL_PACKAGES = (
    "torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "sentence-transformers",
    "numpy", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "coremltools", "mlx", "mlx-lm", "apache-tvm",
)


def tool_versions() -> dict[str, str]:
    tools = {"modelport": __version__, "python": platform.python_version()}
    for name in TOOL_PACKAGES:
        try:
            tools[name] = version(name)
        except PackageNotFoundError:
            pass
    return tools


def created_timestamp() -> int:
    """SOURCE_DATE_EPOCH when set, so reproducible builds give byte-identical manifests."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))


def file_hashes(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.as_posix(): {"sha256": sha256_file(root / p), "bytes": (root / p).stat().st_size}
        for p in list_files(root, exclude=UNHASHED)
    }


@dataclass(frozen=True)
class VariantInfo:
    """One variant's entry in the manifest: where it is, what precision gates it, target extras."""

    file: str  # relative path of the variant's file or folder
    precision: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)  # e.g. dequantized_reference, deployment target

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "precision": self.precision, "description": self.description, **self.details}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VariantInfo":
        details = {k: v for k, v in data.items() if k not in ("file", "precision", "description")}
        return cls(data["file"], data["precision"], data.get("description", ""), details)


@dataclass(frozen=True)
class TargetInfo:
    """The manifest's `target` section, the same shape for every (target, family) pair."""

    name: str
    family: str  # what tells encoders and decoders apart, for every target
    variants: dict[str, VariantInfo]
    details: dict[str, Any] = field(default_factory=dict)  # target-level facts: opset, layout, shapes, ...

    @classmethod
    def of(cls, name: str, family: str, chosen: list[str], variants: dict[str, Any],
           per_variant: dict[str, dict[str, Any]] | None = None, **details: Any) -> "TargetInfo":
        """From a converter's Variant table: the one place a manifest variant entry is built."""
        per_variant = per_variant or {}
        return cls(name, family, {
            v: VariantInfo(variants[v].path, variants[v].precision, variants[v].description, per_variant.get(v, {}))
            for v in chosen}, details)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, **self.details,
                "variants": {k: v.to_json() for k, v in self.variants.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TargetInfo":
        details = {k: v for k, v in data.items() if k not in ("name", "family", "variants")}
        return cls(data["name"], data["family"], {k: VariantInfo.from_json(v) for k, v in data["variants"].items()},
                   details)


def build(root: Path, *, command: list[str], source: dict, recipe: dict, target: TargetInfo,
          lint: list[dict] | None = None) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "created": created_timestamp(),
        "command": command,
        "platform": {"system": platform.system(), "machine": platform.machine(), "python": sys.version.split()[0]},
        "tools": tool_versions(),
        # Set by the Makefile when converting in a container: image tag @ content-derived ID.
        "images": {"convert": os.environ["MODELPORT_IMAGE"]} if os.environ.get("MODELPORT_IMAGE") else {},
        "source": source,
        "recipe": recipe,
        "lint": lint or [],
        "target": target.to_json(),
        "validation": {"status": "not-run"},
        "files": file_hashes(root),
    }


def load(root: Path) -> dict[str, Any]:
    """The manifest, checked against the schema; a version this modelport cannot read is refused."""
    path = root / MANIFEST
    if not path.is_file():
        raise ModelportError(f"{root} is not a modelport artifact (no {MANIFEST})")
    try:
        man = read_json(path)
    except ValueError as e:
        raise ModelportError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(man, dict):
        raise ModelportError(f"{path} is not a modelport manifest (not a JSON object)")
    version_ = man.get("manifest_version")
    if version_ not in READABLE_VERSIONS:
        raise ModelportError(
            f"{path} has manifest_version {version_!r}; this modelport ({__version__}) reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: use the modelport that wrote it, or convert again")
    man = _upgrade(man)
    problems = check_schema(man)
    if problems:
        raise ModelportError(f"{path} does not match the manifest schema: {'; '.join(problems[:3])}")
    return man


def _upgrade(man: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2 in memory: the target's family from the recipe (Core ML wrote it as `kind`)."""
    if man["manifest_version"] == 1:
        target = man.get("target", {})
        target.setdefault("family", target.pop("kind", None) or man.get("recipe", {}).get("family",
                                                                                          "sentence-encoder"))
        man["manifest_version"] = MANIFEST_VERSION
    return man


def save(root: Path, manifest: dict[str, Any]) -> None:
    write_json(root / MANIFEST, manifest)


def check_schema(man: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """Problems of `man` against schema/manifest.schema.json (empty: valid).

    The schema is a JSON Schema file (so other tools can read it too); this checks the subset it
    uses (type, required, properties, additionalProperties as a schema, enum, const, items, minimum) so
    the validator image needs no jsonschema package. tests/unit checks the two agree.
    """
    return _check(man, schema or read_json(SCHEMA), "manifest")


_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool,
          "null": type(None)}


def _check(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        ok = any(isinstance(value, _TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            return [f"{where} should be {' or '.join(kinds)}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where} should be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} should be one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        problems.append(f"{where} should be >= {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where}.{key} is missing")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                problems += _check(item, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                problems += _check(item, extra, f"{where}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += _check(item, schema["items"], f"{where}[{i}]")
    return problems


def verify_files(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Differences between the directory and the manifest's file list, as readable strings."""
    problems = []
    recorded = manifest.get("files", {})
    present = {p.as_posix() for p in list_files(root, exclude=UNHASHED)}
    for name in sorted(set(recorded) - present):
        problems.append(f"missing: {name}")
    for name in sorted(present - set(recorded)):
        problems.append(f"not in manifest: {name}")
    for name in sorted(present & set(recorded)):
        if sha256_file(root / name) != recorded[name]["sha256"]:
            problems.append(f"modified: {name} (sha256 differs from manifest)")
    return problems
