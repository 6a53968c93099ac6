"""Per-tensor statistics of the source checkpoint, recorded at conversion and checked at validation.

What this closes. The golden checks what the validation inputs reach: a weight no input touches (an
unused row of the embedding table) can hold anything and every variant still matches PyTorch. The
manifest's sha256 list protects the *files* against change after conversion, but whoever can change
a file can rewrite its hash too (the manifest is not signed). So conversion also records, for every
tensor of the source checkpoint, its shape, dtype, the sha256 of its raw bytes and its min / max /
mean |w| (float64), under `source.tensor_stats` in manifest.json; validation reads each variant's
stored weights through the target's `Converter.weight_tensors` hook, in one pass, and compares:

  float32 as stored    the bytes equal a source tensor's (sha256), or - stored transposed or with
                       another name - min and max equal exactly and mean |w| to 1e-9 relative
  float16 / bfloat16   min, max and mean |w| within 1e-3 (8e-3) relative: the format's rounding
  n-bit quantized      the dequantized max |w| within one quantization step of the source's,
                       2 / (2^bits - 1) relative (+ 1e-3 for float16 scales)

An artifact tensor is compared with the source tensor of the same name (the artifact may add a
prefix, e.g. `model.`), else with every source tensor of the same shape (up to transposition); it
passes when one of them is within bounds. A tensor with no such source tensor (a constant the
exporter made) is counted, not judged. An embedding row set to 1000 fails the variant with a line
that names the tensor. What this cannot see: a change within the bounds (a row swapped or zeroed in
a quantized variant), and formats whose weights the hook cannot read (Core ML, MLC: not checked).

Read with numpy only (safetensors headers parsed here): the validator image has no torch and no
safetensors package.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

STATS_VERSION = 1
CHUNK = 1 << 22  # elements per step: bounded memory on multi-GB tensors

_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# Relative bound of a float tensor as stored, by numpy dtype name (float32: exact, see module doc).
_FLOAT_REL = {"float64": 0.0, "float32": 0.0, "float16": 1e-3, "bfloat16": 8e-3}
_ABS_SLACK = 1e-7  # float16 subnormals: values below ~6e-8 round to 0


# --- reading ----------------------------------------------------------------------------------------


def read_safetensors(path: Path) -> Iterator[tuple[str, str, tuple[int, ...], np.ndarray]]:
    """(name, dtype, shape, values) for every tensor of a safetensors file, memory-mapped.

    `values` has the file's dtype, except BF16, which comes as its raw uint16 (see `as_float`).
    """
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    size = path.stat().st_size - 8 - n
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 0 else np.zeros(0, np.uint8)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        yield name, info["dtype"], shape, data[start:end].view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(shape)


def as_float(dtype: str, values: np.ndarray) -> np.ndarray:
    """A safetensors float tensor as numpy floats (BF16 widened to float32, exactly)."""
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values


# --- statistics ---------------------------------------------------------------------------------------


@dataclass
class Stats:
    min: float
    max: float
    mean_abs: float
    numel: int

    @property
    def max_abs(self) -> float:
        return max(abs(self.min), abs(self.max))

    def to_json(self) -> dict[str, Any]:
        return {"min": _finite(self.min), "max": _finite(self.max), "mean_abs": _finite(self.mean_abs)}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def stats_of(values: np.ndarray, dtype: str | None = None, digest: Any = None) -> Stats:
    """min, max, mean |w| (float64 sums) in one chunked pass; also feeds the raw bytes to `digest`."""
    flat = values.reshape(-1)
    lo, hi, total = math.inf, -math.inf, 0.0
    for i in range(0, flat.size, CHUNK):
        raw = flat[i:i + CHUNK]
        if digest is not None:
            digest.update(np.ascontiguousarray(raw).tobytes())
        x = as_float(dtype, raw) if dtype else raw
        x = x.astype(np.float64)
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        total += float(np.abs(x).sum())
    if flat.size == 0:
        lo = hi = 0.0
    return Stats(lo, hi, total / max(flat.size, 1), int(flat.size))


def source_stats(weight_files: Iterable[Path], extra: dict[str, tuple[str, np.ndarray]] | None = None,
                 forms: Callable[[str, np.ndarray], dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """The manifest's `source.tensor_stats`: per tensor of every safetensors weight file, its shape,
    dtype, sha256 of the raw bytes and (float tensors) min / max / mean |w|. `extra`: tensors that
    live outside the weight files (name -> (file, float32 array)): an embedder's Dense layers and
    BGE-M3's heads, named as the exported head names them (`embedding.head_tensors`). `forms`: other
    forms a converter may store a tensor in (recipes.Quirk.stored_forms: Gemma's folded 1 + w), recorded
    under their own names with statistics only."""
    tensors: dict[str, Any] = {}
    skipped: list[str] = []
    for name, (file, values) in (extra or {}).items():
        digest = hashlib.sha256()
        entry = {"file": file, "dtype": "F32", "shape": list(values.shape),
                 **stats_of(values.astype(np.float32), "F32", digest).to_json()}
        entry["sha256"] = digest.hexdigest()
        tensors[name] = entry
    for path in weight_files:
        path = Path(path)
        if path.suffix != ".safetensors":
            skipped.append(f"{path.name}: not safetensors (pickle weights are not read again)")
            continue
        for name, dtype, shape, values in read_safetensors(path):
            digest = hashlib.sha256()
            entry: dict[str, Any] = {"file": path.name, "dtype": dtype, "shape": list(shape)}
            if dtype in FLOAT_DTYPES:
                entry.update(stats_of(values, dtype, digest).to_json())
                for form, derived in (forms(name, as_float(dtype, values)) if forms else {}).items():
                    tensors[form] = {"file": path.name, "dtype": "F32", "shape": list(shape),
                                     **stats_of(derived.astype(np.float32), "F32").to_json()}
            else:
                digest.update(np.ascontiguousarray(values).tobytes())
            entry["sha256"] = digest.hexdigest()
            tensors[name] = entry
    return {"version": STATS_VERSION, "tensors": tensors, **({"skipped": skipped} if skipped else {})}


# --- the check ----------------------------------------------------------------------------------------


@dataclass
class Check:
    """One variant's weight check: failure lines, and figures for the report (`extra.weights`)."""

    failures: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Source:
    name: str
    shape: tuple[int, ...]
    dtype: str
    sha256: str
    stats: Stats | None


def _sources(recorded: dict[str, Any]) -> list[_Source]:
    out = []
    for name, e in recorded.get("tensors", {}).items():
        stats = None
        if e.get("dtype") in FLOAT_DTYPES and None not in (e.get("min"), e.get("max"), e.get("mean_abs")):
            stats = Stats(e["min"], e["max"], e["mean_abs"], int(np.prod(e["shape"], dtype=np.int64)))
        out.append(_Source(name, tuple(e["shape"]), e["dtype"], e.get("sha256", ""), stats))
    return out


def _dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape up to transposition and unit dimensions: how a stored weight may be laid out differently."""
    return tuple(sorted(d for d in shape if d != 1))


def _by_name(name: str, sources: dict[str, _Source]) -> _Source | None:
    """The source tensor of the same name, or whose name ends the artifact's (`model.` + name), or whose
    name ends with the artifact's (a checkpoint prefix like `bert.` the artifact dropped); unique only."""
    if name in sources:
        return sources[name]
    hits = [s for n, s in sources.items() if name.endswith("." + n) or n.endswith("." + name)]
    return hits[0] if len(hits) == 1 else None


def _within(a: Stats, s: Stats, rel: float, quantized: bool) -> bool:
    if quantized:
        return abs(a.max_abs - s.max_abs) <= rel * s.max_abs + _ABS_SLACK
    if rel == 0.0:
        return a.min == s.min and a.max == s.max and abs(a.mean_abs - s.mean_abs) <= 1e-9 * s.mean_abs + 1e-30
    return (abs(a.min - s.min) <= rel * abs(s.min) + _ABS_SLACK and abs(a.max - s.max) <= rel * abs(s.max) + _ABS_SLACK
            and abs(a.mean_abs - s.mean_abs) <= rel * s.mean_abs + _ABS_SLACK)


def _storage(values: np.ndarray, bits: int | None) -> tuple[str, float]:
    """How a tensor is stored, and its relative bound (module doc)."""
    if bits:
        return f"{bits}-bit", 2.0 / (2 ** bits - 1) + 1e-3
    kind = str(values.dtype)
    return kind, _FLOAT_REL.get(kind, 1e-3)


def check(tensors: Iterable[tuple[str, np.ndarray, int | None]], recorded: dict[str, Any] | None) -> Check:
    """Compare a variant's stored weights (from `Converter.weight_tensors`) with the source's statistics."""
    if not recorded or not recorded.get("tensors"):
        return Check(extra={"checked": 0, "note": "no source tensor statistics in manifest.json (converted by an "
                                                  "older modelport, or from pickle weights): weights not checked"})
    sources = _sources(recorded)
    named = {s.name: s for s in sources if s.stats}
    by_dims: dict[tuple[int, ...], list[_Source]] = {}
    for s in sources:
        if s.stats:
            by_dims.setdefault(_dims(s.shape), []).append(s)
    hashes = {s.sha256 for s in sources if s.dtype == "F32"}
    result = Check()
    checked = identical = not_in_source = 0
    for name, values, bits in tensors:
        if values.dtype.kind != "f" or values.size == 0:
            continue
        storage, rel = _storage(values, bits)
        exact = rel == 0.0 and not bits
        digest = hashlib.sha256() if exact and values.dtype == np.float32 else None
        a = stats_of(values, None, digest)
        checked += 1
        if digest is not None and digest.hexdigest() in hashes:
            identical += 1
            continue
        same = _by_name(name, named)
        if same is not None and same.stats.numel == a.numel:
            candidates = [same]
        elif values.size < 2:
            # one-element tensors are matched by name only: graphs hold scalar constants (epsilons,
            # scales) that a shape match would compare with every one-element weight (BGE-M3's
            # sparse bias)
            candidates = []
        else:
            candidates = by_dims.get(_dims(values.shape), [])
        if not candidates:
            not_in_source += 1
            continue
        if any(_within(a, s.stats, rel, bool(bits)) for s in candidates):
            continue
        near = min(candidates, key=lambda s: abs(math.log((a.max_abs + 1e-30) / (s.stats.max_abs + 1e-30))))
        what = "max |w|" if bits else "min / max / mean |w|"
        result.failures.append(
            f"weights: {name} {list(values.shape)} ({storage}) does not match the source checkpoint: "
            f"min {a.min:.6g} max {a.max:.6g} mean |w| {a.mean_abs:.6g}; {near.name} has min {near.stats.min:.6g} "
            f"max {near.stats.max:.6g} mean |w| {near.stats.mean_abs:.6g} ({what} must agree "
            f"{'exactly' if exact else f'within {rel:.3g} relative'}): the weight was changed after conversion, "
            f"or the conversion wrote a wrong tensor")
    result.extra = {"checked": checked, "identical_bytes": identical, "within_bounds": checked - identical -
                    not_in_source - len(result.failures), "not_in_source": not_in_source,
                    "failed": len(result.failures)}
    return result


def check_variant(converter: Any, root: Path, variant: str, manifest: dict[str, Any]) -> Check:
    """The validator's entry point: never raises (an unreadable weight file is a failure line)."""
    recorded = (manifest.get("source") or {}).get("tensor_stats")
    if type(converter).weight_tensors.__qualname__ == "Converter.weight_tensors":  # the registry's default
        return Check(extra={"checked": 0, "note": f"the {converter.target} target's stored weights are not read: "
                                                  "not checked against the source"})
    if not recorded:
        return check((), recorded)
    try:
        return check(converter.weight_tensors(root, variant), recorded)
    except ImportError as e:  # the reader's package (onnx) is missing here: not a verdict on the artifact
        return Check(extra={"checked": 0, "note": f"weights not checked: {e}"})
    except Exception as e:  # noqa: BLE001 - a damaged file fails the variant, it does not crash validate
        first = (str(e).splitlines() or [""])[0][:300]
        return Check(failures=[f"weights: could not read the stored weights of {variant}: {type(e).__name__}: {first}"],
                     extra={"checked": 0})
