#!/usr/bin/env python3
"""Rebuild a release from a clean checkout of its commit and compare (`make verify-release DIR=...`).

    verify_release.py DIR [MAKEVAR=VALUE ...]      prints "verify-release: OK ..." or names the first
                                                   file that differs; exit 0 / 1 (2: cannot verify)

1. DIR's own files are checked against its release.json (a modified artifact is named before any
   rebuild). 2. This repository is cloned into build/verify-<commit>/ and the release's commit checked
   out (a clean checkout: no stamps, artifacts or images of this tree's). The downloaded inputs
   (wheelhouse/, debhouse/, npmhouse/) are hard-link copied (`cp -al`), not re-downloaded; they are
   hash-checked by every build that reads them. Hard links, not symlinks: BuildKit's bind mounts
   cannot follow a symlink out of the build context. Same filesystem as the repository, hence
   build/ and not /tmp. 3. `make release` runs there with the release's MODELS, TARGETS, platforms and
   SOURCE_DATE_EPOCH (MAKEVAR=VALUE pass DOCKER, BASE, PYTHON... through). 4. The two release.json
   are compared: base image, image IDs, SBOMs, artifact files, verdicts — the first difference is
   named. The clone is removed on success and kept on failure (its path is printed).
The rebuild retags modelport/<img>:<version> in the engine: the same IDs when it reproduces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import HOST_ARCH, ReleaseError, check_dir, first_difference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOUSES = ("wheelhouse", "debhouse", "npmhouse")


def run(cmd: list[str], cwd: Path, log=None) -> int:
    return subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT if log else None).returncode


def verify(release: Path, make_vars: list[str], root: Path = ROOT) -> int:
    if not (release / "release.json").is_file():
        raise ReleaseError(f"{release}: no release.json (not a release folder)")
    try:
        doc = json.loads((release / "release.json").read_text())
        commit, dirty = doc["git"]["commit"], doc["git"]["dirty"]
        models, targets, platforms = doc["models"], doc["targets"], doc["platforms"]
        epoch, version = doc["source_date_epoch"], doc["modelport_version"]
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError(f"{release}/release.json: not a modelport release.json ({e!r})") from None
    if dirty:
        raise ReleaseError(f"{release} was made from a working tree with uncommitted changes: commit {commit[:12]} "
                           f"does not hold what was built; release from a clean tree to verify")
    problems = check_dir(release)
    if problems:
        print(f"verify-release: {release} differs from its own release.json: {problems[0]}")
        return 1
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root,
                      capture_output=True).returncode != 0:
        raise ReleaseError(f"commit {commit[:12]} is not in {root} (git fetch it first)")
    clone = root / "build" / f"verify-{commit[:12]}"
    shutil.rmtree(clone, ignore_errors=True)
    clone.parent.mkdir(parents=True, exist_ok=True)
    log_path = root / "build" / f"verify-{commit[:12]}.log"
    with open(log_path, "w") as log:
        if run(["git", "clone", "--quiet", "--no-checkout", str(root), str(clone)], root, log) or \
           run(["git", "checkout", "--quiet", "--detach", commit], clone, log):
            raise ReleaseError(f"could not clone {root} at {commit[:12]} (see {log_path})")
        for house in HOUSES:
            if (root / house).is_dir():
                if run(["cp", "-al", str(root / house), str(clone / house)], root, log):
                    raise ReleaseError(f"cp -al {house} into {clone} failed (see {log_path})")
        archs = [p.split("/", 1)[1] for p in platforms if p != f"linux/{HOST_ARCH}"]
        cmd = ["make", "release", f"MODELS={' '.join(models)}", f"TARGETS={' '.join(targets)}",
               f"RELEASE_ARCHS={' '.join(archs)}", f"SOURCE_DATE_EPOCH={epoch}", *make_vars]
        print(f"verify-release: rebuilding {commit[:12]} in {clone.relative_to(root)} "
              f"(log: {log_path.relative_to(root)})", flush=True)
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        rc = run(cmd, clone, log)
    if rc != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(empty log)"]
        print(f"verify-release: the rebuild failed (make release rc {rc}; clone kept: {clone}; "
              f"log: {log_path}): {tail[0][:200]}")
        return 1
    rebuilt = json.loads((clone / "release" / version / "release.json").read_text())
    diff = first_difference(doc, rebuilt)
    if diff:
        print(f"verify-release: DIFFERS: {diff} (clone kept: {clone})")
        return 1
    if (clone / "release" / version / "release.json").read_bytes() != (release / "release.json").read_bytes():
        print(f"verify-release: DIFFERS: release.json bytes differ with equal content (clone kept: {clone})")
        return 1
    shutil.rmtree(clone)
    n = sum(len(e["files"]) for pt in doc["artifacts"].values() for e in pt.values())
    print(f"verify-release: OK {release}: commit {commit[:12]} rebuilt from a clean checkout gives the same "
          f"{sum(len(p) for p in doc['images'].values())} image IDs, "
          f"{sum(len(p) for p in doc['sboms'].values())} SBOMs and {n} artifact files")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    bad = [a for a in argv[1:] if "=" not in a]
    try:
        if bad:
            raise ReleaseError(f"expected MAKEVAR=VALUE after DIR, got {bad[0]!r}")
        return verify(Path(argv[0]), argv[1:])
    except ReleaseError as e:
        print(f"verify-release: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
