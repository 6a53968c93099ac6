#!/usr/bin/env python3
"""Assemble release/<version>/ from built images and validated artifacts (`make release`, docs/release.md).

    release.py check-models MODEL ...        exit 2 with one line if a name is neither a known model
                                             nor a local model directory (before anything is built)
    release.py assemble --out DIR --models "M ..." --targets "T ..." [--archs "amd64 arm64"] [--force]
                                             copy artifacts/<model>/<target>, write sbom/ and release.json
    release.py check-dir DIR                 every file of DIR against its release.json (exit 1: names it)

The Makefile builds the images and converts + validates every (model, target) pair first; this only
collects, hashes and writes. release.json holds nothing run-dependent (no timings, no paths of the
checkout, no host names), so two releases of one commit with one SOURCE_DATE_EPOCH are byte-identical
and `make verify-release` compares them file by file. What would break that is kept out on purpose:
each artifact's manifest.json and report.html are copied but not hashed here, because they record
validation timings (`seconds`); the files they describe are hashed, and their verdicts recorded.
Standard library only ($(PYTHON) may be the system python3): no modelport import.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sbom  # noqa: E402
from locks import ARCHES, LockError, file_sha256, wheel_index  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FORMAT = 1
# Files an artifact holds that describe it and carry run timings (modelport.manifest.UNHASHED).
DESCRIPTIVE = ("manifest.json", "report.html")
HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")


class ReleaseError(Exception):
    """One line for the user: what is wrong and what to do."""


def known_models() -> list[str]:
    """Known model names, from this checkout's catalog (src/modelport/catalog.py imports no third-party
    package, so the system python3 reads it before any venv exists)."""
    sys.path.insert(0, str(ROOT / "src"))
    from modelport.catalog import MODELS

    return sorted(MODELS)


def model_name(model: str) -> str:
    """The artifact folder name `make <target> MODEL=...` uses: a local directory's base name, else the name."""
    return Path(os.path.abspath(model)).name if (Path(model) / "config.json").is_file() else model


def check_models(models: list[str]) -> None:
    if not models:
        raise ReleaseError("MODELS is empty: name at least one model (e.g. MODELS=tiny-xlm-roberta)")
    known = known_models()
    unknown = [m for m in models if m not in known and not (Path(m) / "config.json").is_file()]
    if unknown:
        raise ReleaseError(f"MODELS: unknown {' '.join(unknown)}: neither a known model ({', '.join(known)}) "
                           f"nor a directory with config.json")
    names = [model_name(m) for m in models]
    if len(set(names)) != len(names):
        raise ReleaseError(f"MODELS: two models share an artifact name ({' '.join(names)})")


def stamp_id(root: Path, image: str, arch: str) -> str:
    """The normalized image ID from its stamp (design note: host platform build/stamps/image-<img>,
    another platform build/stamps/<arch>/image-<img>)."""
    stamp = root / "build" / "stamps" / (f"image-{image}" if arch == HOST_ARCH else f"{arch}/image-{image}")
    if not stamp.is_file():
        raise ReleaseError(f"no {stamp.relative_to(root)}: image {image} for linux/{arch} is not built "
                           f"(make release builds it; by hand: make image-{image})")
    words = stamp.read_text().split()
    if not words or not words[0].startswith("sha256:"):
        raise ReleaseError(f"{stamp.relative_to(root)} holds no image ID (rebuild it: rm it, make image-{image})")
    return words[0]


def image_platforms(root: Path, image: str) -> list[str]:
    """images/<img>/platforms (the Makefile's platforms_of): the platforms an image is built for."""
    spec = root / "images" / image / "platforms"
    listed = spec.read_text().split("\n") if spec.is_file() else []
    words = [w for line in listed for w in line.split("#", 1)[0].split()]
    return words or ["linux/amd64", "linux/arm64"]


def base_ids(archs: list[str]) -> dict[str, dict[str, str]]:
    """The base image each platform's images were built FROM, by ID: the one input that no lock pins.

    Tags as the Makefile's PBASE: modelport/base:bookworm has one tag per platform (-arm64 for the
    other one); a registry base is one multi-platform tag, of which the engine holds one platform."""
    base, docker = os.environ.get("BASE", "python:3.11-slim-bookworm"), os.environ.get("DOCKER", "docker")
    out = {}
    for arch in archs:
        tag = f"{base}-{arch}" if arch != HOST_ARCH and base.startswith("modelport/base:") else base
        p = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}} {{.Architecture}}", tag],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise ReleaseError(f"base image {tag} (linux/{arch}) is not in the engine: {p.stderr.strip()[:200]}")
        image_id, _, image_arch = p.stdout.strip().partition(" ")
        if image_arch and image_arch != arch:
            raise ReleaseError(f"base image {tag} in the engine is linux/{image_arch}, not linux/{arch}: release both "
                               f"platforms from modelport's own base (make base; make base PLATFORM=linux/{arch})")
        out[f"linux/{arch}"] = {"tag": tag, "id": image_id}
    return out


def git_state(root: Path) -> dict[str, object]:
    def git(*args: str) -> str:
        p = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        if p.returncode != 0:
            raise ReleaseError(f"git {' '.join(args)} failed in {root}: {p.stderr.strip()[:200]}")
        return p.stdout

    # dirty: uncommitted changes to tracked or unignored files. Such a release names a commit that
    # does not hold what was built, so verify-release refuses it.
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}


def artifact_entry(root: Path, art: Path, images: dict[str, dict[str, str]], target: str) -> dict:
    """sha256 of every file (checked against the artifact's own manifest) and the validation verdicts."""
    manifest_path = art / "manifest.json"
    if not manifest_path.is_file():
        raise ReleaseError(f"{art.relative_to(root)}: no manifest.json (convert it: make {target} MODEL=...)")
    try:
        man = json.loads(manifest_path.read_text())
        recorded = {name: entry["sha256"] for name, entry in man["files"].items()}
        validation = man["validation"]
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError(f"{manifest_path.relative_to(root)}: not a modelport manifest ({e!r})") from None
    files = {p.relative_to(art).as_posix(): file_sha256(p) for p in sorted(art.rglob("*")) if p.is_file()}
    hashed = {k: v for k, v in files.items() if k not in DESCRIPTIVE}
    if hashed != recorded:
        first = next(k for k in sorted(set(hashed) | set(recorded)) if hashed.get(k) != recorded.get(k))
        raise ReleaseError(f"{art.relative_to(root)}/{first}: does not match the artifact's manifest.json "
                           f"(modified after conversion?): convert it again")
    if validation.get("status") in (None, "not-run"):
        raise ReleaseError(f"{art.relative_to(root)}: not validated (make {target} validates it)")
    made_by = man.get("images", {})
    host = f"linux/{HOST_ARCH}"
    for step, image in (("convert", target), ("validate", "validator")):
        if not str(made_by.get(step, "")).endswith(images[image][host]):
            raise ReleaseError(f"{art.relative_to(root)}: {step} ran in {made_by.get(step) or 'no image'}, not in "
                               f"modelport/{image}@{images[image][host]} (stale artifact: rm it and make release)")
    verdicts: dict[str, object] = {
        "status": validation["status"],
        "variants": {v: r.get("verdict") for v, r in sorted(validation.get("variants", {}).items())},
    }
    if validation.get("clients"):
        verdicts["clients"] = {
            name: {"status": c.get("status"),
                   "variants": {v: r.get("verdict") for v, r in sorted(c.get("variants", {}).items())}}
            for name, c in sorted(validation["clients"].items())}
    return {"files": hashed, "descriptive": sorted(k for k in files if k in DESCRIPTIVE),
            "images": {step: made_by[step] for step in ("convert", "validate")}, "validation": verdicts}


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def assemble(root: Path, out: Path, models: list[str], targets: list[str], archs: list[str], version: str,
             epoch: int, force: bool) -> Path:
    if not HOST_ARCH:
        raise ReleaseError(f"unsupported host machine {platform.machine()!r} (amd64 or arm64 hosts)")
    if out.exists() and not force:
        raise ReleaseError(f"{out} exists: pass FORCE=1 to replace it")
    if out.exists() and not (out / "release.json").is_file():
        raise ReleaseError(f"{out} exists and is not a release (no release.json): not replaced, move it away")
    check_models(models)
    archs = [HOST_ARCH] + sorted(set(archs) - {HOST_ARCH})
    bad = [a for a in archs if a not in ARCHES]
    if bad:
        raise ReleaseError(f"RELEASE_ARCHS: unknown {' '.join(bad)} (known: {' '.join(ARCHES)})")
    image_names = sorted(set(targets) | {"validator"})
    # Every image for the host; for another platform, the images built for it (images/<img>/platforms).
    images = {img: {f"linux/{a}": stamp_id(root, img, a) for a in archs
                    if a == HOST_ARCH or f"linux/{a}" in image_platforms(root, img)} for img in image_names}
    doc: dict[str, object] = {
        "release_format": FORMAT,
        "modelport_version": version,
        "git": git_state(root),
        "source_date_epoch": epoch,
        "models": [model_name(m) for m in models],
        "targets": targets,
        "platforms": [f"linux/{a}" for a in archs],
        "base": base_ids(archs),
        "images": images,
        "descriptive_files": {"names": list(DESCRIPTIVE),
                              "why": "copied, not hashed: they record validation timings; the files they "
                                     "describe are hashed below and their verdicts recorded"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        artifacts: dict[str, dict[str, object]] = {}
        for m in models:
            name = model_name(m)
            for t in targets:
                art = root / "artifacts" / name / t
                artifacts.setdefault(name, {})[t] = artifact_entry(root, art, images, t)
                shutil.copytree(art, tmp / "artifacts" / name / t, copy_function=shutil.copyfile)
        doc["artifacts"] = artifacts
        index = wheel_index(root / "wheelhouse")
        sboms: dict[str, dict[str, dict[str, str]]] = {}
        for img in image_names:
            for a in (p.split("/", 1)[1] for p in images[img]):
                rel = f"sbom/{img}.linux-{a}.cdx.json"
                text = sbom.dumps(sbom.sbom(root, img, a, images[img][f"linux/{a}"], version, epoch, index))
                (tmp / "sbom").mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_text(text)
                sboms.setdefault(img, {})[f"linux/{a}"] = {"file": rel,
                                                          "sha256": hashlib.sha256(text.encode()).hexdigest()}
        doc["sboms"] = sboms
        (tmp / "release.json").write_text(dumps(doc))
        if out.exists():  # FORCE=1 on a release of ours: swap, then drop the old one
            old = out.parent / f".{out.name}.old.{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_dir(release: Path) -> list[str]:
    """Files of a release folder that do not match its release.json (missing, extra or modified)."""
    doc = json.loads((release / "release.json").read_text())
    want: dict[str, str] = {}
    for name, per_target in doc["artifacts"].items():
        for target, entry in per_target.items():
            for f, h in entry["files"].items():
                want[f"artifacts/{name}/{target}/{f}"] = h
    for per_platform in doc["sboms"].values():
        for entry in per_platform.values():
            want[entry["file"]] = entry["sha256"]
    descriptive = {f"artifacts/{n}/{t}/{f}" for n, pt in doc["artifacts"].items() for t, e in pt.items()
                   for f in e["descriptive"]}
    have = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()} - {"release.json"}
    problems = [f"missing: {f}" for f in sorted(set(want) - have)]
    problems += [f"not in release.json: {f}" for f in sorted(have - set(want) - descriptive)]
    problems += [f"modified: {f}" for f in sorted(set(want) & have) if file_sha256(release / f) != want[f]]
    return problems


# The order differences are reported in: inputs first (a different base explains every image after it).
ORDER = ("release_format", "modelport_version", "git", "source_date_epoch", "models", "targets", "platforms",
         "base", "images", "sboms", "artifacts")


def first_difference(a: dict, b: dict) -> str | None:
    """The first place two release.json documents differ, named for a person: None when equal."""
    keys = [k for k in ORDER if k in a or k in b] + sorted((set(a) | set(b)) - set(ORDER))
    for key in keys:
        found = _walk(a.get(key), b.get(key), [key])
        if found:
            return found
    return None


def _walk(x: object, y: object, path: list[str]) -> str | None:
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            found = _walk(x.get(k), y.get(k), path + [k])
            if found:
                return found
        return None
    if x == y:
        return None
    return f"{_label(path)}: {_short(x)} (release) vs {_short(y)} (rebuild)"


def _label(path: list[str]) -> str:
    if path[0] == "artifacts" and len(path) >= 5 and path[3] == "files":
        return f"artifact file {'/'.join(path[1:3])}/{'/'.join(path[4:])}"
    if path[0] == "artifacts" and len(path) >= 4 and path[3] == "validation":
        return f"validation verdict {'/'.join(path[1:3])} {'.'.join(path[4:])}"
    if path[0] == "images" and len(path) == 3:
        return f"image ID of modelport/{path[1]} ({path[2]})"
    if path[0] == "sboms" and len(path) >= 3:
        return f"SBOM sbom/{path[1]}.{path[2].replace('/', '-')}.cdx.json"
    if path[0] == "base" and len(path) >= 2:
        return f"base image ({path[1]})"
    return f"release.json {'.'.join(path)}"


def _short(v: object) -> str:
    s = json.dumps(v, sort_keys=True) if v is not None else "absent"
    return s if len(s) <= 90 else s[:87] + "..."


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["check-models"]:
            check_models(argv[1:])
            return 0
        if argv[:1] == ["check-dir"] and len(argv) == 2:
            release = Path(argv[1])
            if not (release / "release.json").is_file():
                raise ReleaseError(f"{release}: no release.json (not a release folder)")
            problems = check_dir(release)
            print(f"{release}: " + (problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                                     if problems else "every file matches release.json"))
            return 1 if problems else 0
        if argv[:1] == ["assemble"]:
            opts = _options(argv[1:], {"--out", "--models", "--targets", "--archs", "--version"}, {"--force"})
            targets = opts.get("--targets", "").split()
            if not targets:
                raise ReleaseError("TARGETS is empty: name at least one target (e.g. TARGETS=onnx)")
            out = assemble(ROOT, Path(opts["--out"]), opts.get("--models", "").split(), targets,
                           opts.get("--archs", "").split(), opts.get("--version") or sbom._version(ROOT),
                           int(os.environ.get("SOURCE_DATE_EPOCH", "0")), "--force" in opts)
            doc = json.loads((out / "release.json").read_text())
            n = sum(len(e["files"]) for pt in doc["artifacts"].values() for e in pt.values())
            print(f"release: {out} ({len(doc['artifacts'])} model(s) x {len(targets)} target(s), {n} artifact files, "
                  f"{sum(len(p) for p in doc['sboms'].values())} SBOMs; commit {doc['git']['commit'][:12]}"
                  f"{', DIRTY tree: verify-release will refuse it' if doc['git']['dirty'] else ''})")
            return 0
    except (ReleaseError, LockError) as e:
        print(f"release: {e}", file=sys.stderr)
        return 2
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


def _options(argv: list[str], valued: set[str], flags: set[str]) -> dict[str, str]:
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a in flags:
            opts[a] = "1"
            i += 1
        elif a in valued and i + 1 < len(argv):
            opts[a] = argv[i + 1]
            i += 2
        else:
            raise ReleaseError(f"unexpected argument {a!r}")
    if "--out" not in opts:
        raise ReleaseError("--out DIR is required")
    return opts


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
