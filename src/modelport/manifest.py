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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import __version__
from .fsutil import list_files, read_json, sha256_file, write_json

MANIFEST = "manifest.json"
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


def build(root: Path, *, command: list[str], source: dict, recipe: dict, target: dict,
          lint: list[dict] | None = None) -> dict[str, Any]:
    return {
        "manifest_version": 1,
        "created": created_timestamp(),
        "command": command,
        "platform": {"system": platform.system(), "machine": platform.machine(), "python": sys.version.split()[0]},
        "tools": tool_versions(),
        # Set by the Makefile when converting in a container: image tag @ content-derived ID.
        "images": {"convert": os.environ["MODELPORT_IMAGE"]} if os.environ.get("MODELPORT_IMAGE") else {},
        "source": source,
        "recipe": recipe,
        "lint": lint or [],
        "target": target,
        "validation": {"status": "not-run"},
        "files": file_hashes(root),
    }


def load(root: Path) -> dict[str, Any]:
    return read_json(root / MANIFEST)


def save(root: Path, manifest: dict[str, Any]) -> None:
    write_json(root / MANIFEST, manifest)


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
