"""What both Core ML converters share: the .mlpackage on disk and Core ML itself on macOS.

- `normalize_package`: coremltools writes random Manifest.json ids and serializes protobuf maps in
  arbitrary order; this re-serializes deterministically and derives the ids from content, so
  converting twice gives byte-identical packages.
- `_quiet`: coremltools' progress bars and warnings held back (replayed if a conversion fails).
- `predict_with_coreml` / `load_mlmodel`, `COMPUTE_UNITS`, `coreml_runtime_available`: on macOS the
  validator also runs every variant in Core ML (CPU_ONLY, then ALL compute units).
- `runtime_versions`: coremltools, the interpreter, and Core ML when there is one.

No toolchain at module level: coremltools (and `modelport.milinterp`, which imports
coremltools.proto) are imported by the functions that use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

# Deployment target -> the macOS release of the same year (recorded next to each variant's iOS).
MACOS = {"iOS15": "macOS12", "iOS16": "macOS13", "iOS17": "macOS14", "iOS18": "macOS15"}

# On macOS every variant also runs in Core ML itself. CPU_ONLY computes at the package's precision
# and is gated like the interpreter; ALL may place a float32 package on the GPU or Neural Engine,
# which compute in fp16, so float32 packages are gated there by the family's fp16 thresholds.
COMPUTE_UNITS = ("CPU_ONLY", "ALL")

PACKAGE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "mlpackage.modelport")
# coremltools stamps the day of conversion into the model's metadata: dropped, so a conversion
# made tomorrow is byte-identical (the manifest records when the artifact was made).
CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools draws tqdm bars and logs warnings on stderr for every pass; the step lines
    already show progress. The captured text is replayed if the conversion fails."""
    import logging

    captured = io.StringIO()
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue()[-4000:])
        raise
    finally:
        log.setLevel(level)


def normalize_package(package: Path) -> None:
    """Make the package a function of its content: model.mlmodel without the conversion date and
    serialized deterministically (protobuf map order is otherwise arbitrary), Manifest.json ids
    derived from each item's content with uuid5 (coremltools draws random ones), fixed file modes."""
    from ... import milinterp

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = manifest["itemInfoEntries"]
    ids = {}
    for old_id, entry in entries.items():
        item = package / "Data" / entry["path"]
        if item.is_file() and item.suffix == ".mlmodel":
            spec = milinterp.Model_pb2.Model()
            spec.ParseFromString(item.read_bytes())
            spec.description.metadata.userDefined.pop(CONVERSION_DATE_KEY, None)
            item.write_bytes(spec.SerializeToString(deterministic=True))
        ids[old_id] = str(uuid.uuid5(PACKAGE_NAMESPACE, f"{entry['path']}:{_digest(item)}"))
    manifest["itemInfoEntries"] = {ids[k]: v for k, v in sorted(entries.items(), key=lambda kv: ids[kv[0]])}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    for path in [package, *package.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _digest(item: Path) -> str:
    """sha256 of a file, or of a directory's sorted (path, sha256) list."""
    if item.is_file():
        return hashlib.sha256(item.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(q for q in item.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(item).as_posix()}:{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def _package_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Core ML itself (macOS)


def coreml_runtime_available() -> bool:
    """Core ML exists on macOS only; coremltools' predict needs it. Looked up on use (tests fake macOS)."""
    return sys.platform == "darwin"


def load_mlmodel(package: Path, compute_units: str) -> Any:
    """coremltools' MLModel for the package on the given compute units (CPU_ONLY, ALL, ...)."""
    import coremltools as ct

    return ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))


def predict_with_coreml(package: Path, compute_units: str) -> Predict:
    """MLModel.predict on the given compute units, for a stateless package (a stateful one passes
    `state=`: the decoder builds its runner on `load_mlmodel`)."""
    model = load_mlmodel(package, compute_units)
    return lambda feeds: model.predict(feeds)


def runtime_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    from ... import __version__

    versions = {"coremltools": version("coremltools"), "interpreter": f"modelport.milinterp {__version__}"}
    if coreml_runtime_available():
        versions["Core ML"] = f"macOS {platform.mac_ver()[0]}"
    return versions
