#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM of one image for one platform, generated from the locks the image installs.

    sbom.py IMAGE ARCH [--image-id=sha256:...] [--version=V]      prints the SBOM JSON

What an image installs is read from its Dockerfile's bind mounts, the same source of truth the
build uses: every image installs images/<img>/requirements.lock from the wheelhouse and modelport's
wheel (build/dist); one that mounts the debhouse installs images/<img>/apt.lock; one that mounts the
npmhouse installs Node + npm (images/node/package-lock.json) and the harnesses' node_modules (their
package-lock.json files). Components per ecosystem, each with its hash:
  wheel   name, version, sha256, and the wheel file name found in wheelhouse/ by that hash (its
          platform tag says which platform's wheel it is: a multi-platform lock line holds one hash
          per platform, and only the one for ARCH is in this platform's image)
  .deb    package, version, architecture (ARCH's and `all` lines of apt.lock), sha256, size, URL
  npm     name, version, sha512 (the lock's integrity), tarball URL (os/cpu fields honoured)
Deterministic: SOURCE_DATE_EPOCH is the timestamp, the serial number is derived from the image and
platform, components are sorted, JSON keys sorted: the same locks and image give the same bytes.
Not listed: the base image's own packages (debootstrap's minbase, or python:3.11-slim): the release
records the base by its image ID instead (release.json `base`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from locks import (ARCHES, LockError, NpmPackage, parse_apt, parse_npm, parse_requirements,  # noqa: E402
                   file_sha256, wheel_arches, wheel_index)

ROOT = Path(__file__).resolve().parent.parent
# Node + npm, then the harnesses' node_modules (images/validator/Dockerfile, js-install.py).
NPM_LOCKS = ("images/node/package-lock.json", "src/modelport/clients/js/package-lock.json",
             "src/modelport/targets/mlc/js/package-lock.json")


def dockerfile(root: Path, image: str) -> Path:
    own = root / "images" / image / "Dockerfile"
    return own if own.is_file() else root / "images" / "toolchain" / "Dockerfile"


def image_locks(root: Path, image: str) -> dict[str, list[Path]]:
    """The lock files an image's build installs, by kind (see the module docstring)."""
    text = dockerfile(root, image).read_text()
    locks: dict[str, list[Path]] = {"pypi": [root / "images" / image / "requirements.lock"], "deb": [], "npm": []}
    if "source=debhouse" in text:
        locks["deb"].append(root / "images" / image / "apt.lock")
    if "source=npmhouse" in text:
        locks["npm"] += [root / p for p in NPM_LOCKS]
    for kind, paths in locks.items():
        for p in paths:
            if not p.is_file():
                raise LockError(f"{p}: missing ({image}'s Dockerfile installs from it)")
    return locks


def _rel(path: Path, root: Path) -> str:
    """A lock's name as the repository spells it (not the checkout's absolute path: clones differ)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _hash(alg: str, hexdigest: str) -> dict:
    return {"alg": alg, "content": hexdigest}


def _prop(name: str, value: str) -> dict:
    return {"name": f"modelport:{name}", "value": value}


def wheel_components(lock: Path, arch: str, index: dict[str, str], root: Path = ROOT) -> list[dict]:
    out = []
    for req in parse_requirements(lock):
        if not req.applies_to(arch):
            continue
        mine = sorted((index[h], h) for h in req.hashes if h in index and arch in wheel_arches(index[h]))
        if not mine:
            missing = [h for h in req.hashes if h not in index]
            why = (f"{len(missing)} of its {len(req.hashes)} hashes are not in wheelhouse/ (run `make wheelhouse`)"
                   if missing else f"none of its wheels is for {arch}")
            raise LockError(f"{lock}:{req.line}: {req.name}=={req.version}: no wheel for linux/{arch}: {why}")
        for filename, sha in mine:
            purl = f"pkg:pypi/{req.name}@{req.version}?file_name={quote(filename)}"
            props = [_prop("lock", _rel(lock, root)),
                     _prop("wheel", filename)]
            if req.marker:
                props.append(_prop("marker", req.marker))
            out.append({"type": "library", "bom-ref": purl, "name": req.name, "version": req.version,
                        "purl": purl, "hashes": [_hash("SHA-256", sha)], "properties": props})
    return out


def deb_components(lock: Path, arch: str) -> list[dict]:
    out = []
    for deb in parse_apt(lock):
        if deb.architecture not in (arch, "all"):
            continue
        purl = f"pkg:deb/debian/{deb.package}@{quote(deb.version)}?arch={deb.architecture}&distro=debian-12"
        out.append({"type": "library", "bom-ref": purl, "name": deb.package, "version": deb.version,
                    "purl": purl, "hashes": [_hash("SHA-256", deb.sha256)],
                    "externalReferences": [{"type": "distribution", "url": deb.url}],
                    "properties": [_prop("architecture", deb.architecture), _prop("size", str(deb.size))]})
    return out


def npm_components(locks: list[Path], arch: str, root: Path = ROOT) -> list[dict]:
    """npm packages of every lock, once each (the harness locks share many packages), with the locks
    that pin them as properties."""
    seen: dict[tuple[str, str, str], NpmPackage] = {}
    for lock in locks:
        for pkg in parse_npm(lock):
            if not pkg.applies_to(arch):
                continue
            key = (pkg.name, pkg.version, pkg.integrity)
            rel = _rel(lock, root)
            prev = seen.get(key)
            seen[key] = NpmPackage(pkg.name, pkg.version, pkg.integrity, pkg.resolved, pkg.os, pkg.cpu,
                                   tuple(sorted(set((prev.locks if prev else ()) + (rel,)))))
    out = []
    for pkg in seen.values():
        purl = f"pkg:npm/{quote(pkg.name, safe='/')}@{pkg.version}"
        out.append({"type": "library", "bom-ref": f"{purl}#{pkg.sha512[:16]}", "name": pkg.name,
                    "version": pkg.version, "purl": purl, "hashes": [_hash("SHA-512", pkg.sha512)],
                    "externalReferences": [{"type": "distribution", "url": pkg.resolved}],
                    "properties": [_prop("lock", lock) for lock in pkg.locks]})
    return out


def modelport_wheel(root: Path, version: str) -> dict:
    wheel = root / "build" / "dist" / f"modelport-{version}-py3-none-any.whl"
    if not wheel.is_file():
        raise LockError(f"{wheel}: missing (run `make dist`): every image installs it")
    sha = file_sha256(wheel)
    purl = f"pkg:pypi/modelport@{version}?file_name={wheel.name}"
    return {"type": "library", "bom-ref": purl, "name": "modelport", "version": version, "purl": purl,
            "hashes": [_hash("SHA-256", sha)], "properties": [_prop("wheel", wheel.name)]}


def sbom(root: Path, image: str, arch: str, image_id: str, version: str, epoch: int,
         index: dict[str, str]) -> dict:
    if arch not in ARCHES:
        raise LockError(f"architecture {arch!r}: expected one of {', '.join(ARCHES)}")
    locks = image_locks(root, image)
    components = [modelport_wheel(root, version)]
    for lock in locks["pypi"]:
        components += wheel_components(lock, arch, index, root)
    for lock in locks["deb"]:
        components += deb_components(lock, arch)
    components += npm_components(locks["npm"], arch, root)
    components.sort(key=lambda c: (c["purl"].split(":", 1)[1].split("/", 1)[0], c["name"], c["version"],
                                   c["bom-ref"]))
    refs = [c["bom-ref"] for c in components]
    if len(set(refs)) != len(refs):
        dup = next(r for r in refs if refs.count(r) > 1)
        raise LockError(f"{image} ({arch}): {dup} is pinned twice with different hashes")
    name = f"modelport/{image}"
    image_ref = f"{name}:{version}@{image_id}" if image_id else f"{name}:{version}"
    timestamp = dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    container = {"type": "container", "bom-ref": image_ref, "name": name, "version": version,
                 "properties": [_prop("platform", f"linux/{arch}")]}
    if image_id:
        container["hashes"] = [_hash("SHA-256", image_id.split(":", 1)[-1])]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'modelport:{image_ref}:linux/{arch}')}",
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {"components": [{"type": "application", "name": "modelport scripts/sbom.py",
                                      "version": version}]},
            "component": container,
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": refs}],
    }


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if len(args) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    image, arch = args
    version = opts.get("version") or _version(ROOT)
    try:
        doc = sbom(ROOT, image, arch, opts.get("image-id", ""), version,
                   int(os.environ.get("SOURCE_DATE_EPOCH", "0")), wheel_index(ROOT / "wheelhouse"))
    except LockError as e:
        print(f"sbom: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(dumps(doc))
    return 0


def _version(root: Path) -> str:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
