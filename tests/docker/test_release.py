"""Docker tier: `make release` + `make verify-release` on a tiny model from two clean clones.

Clone A (a clean checkout of the commit under test: no artifacts or stamps of this tree's) runs
`make release MODELS=tiny-xlm-roberta TARGETS=onnx`; `make verify-release` then clones A's commit
again (clone B), releases there with the same SOURCE_DATE_EPOCH and compares: release.json must be
byte-identical (image IDs, SBOMs, every artifact file's sha256, the verdicts).

What must be rebuilt to prove anything: clone B (made by verify-release) has no stamps, so it builds
the onnx and validator images from its own checkout and normalizes them; with test_docker_tier's
PRUNE_BUILD_CACHE=1 before it, that is a cold build (BuildKit's cache would serve a layer only for
byte-identical inputs anyway; the validator's --no-cache rebuild is test_docker_tier's job). Clone A
takes the images test_docker_tier built from this same commit when the tree is clean (CI), as the
workflow's convert jobs take the images job's: one image build set per run, not two. Both clones
convert and validate from scratch (fresh artifacts/). The houses are hard-link copies (no downloads).
A working tree with uncommitted changes is released as a snapshot commit of it (made in a scratch
repository under build/, never in this one), with HEAD's commit date so SOURCE_DATE_EPOCH is HEAD's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import BASE, DOCKER, ROOT, VERSION, sh

MODEL = "tiny-xlm-roberta"
WORK = ROOT / "build" / "release-test"

pytestmark = pytest.mark.skipif(os.environ.get("MODELPORT_DOCKER_TESTS") != "1",
                                reason="Docker tier: set MODELPORT_DOCKER_TESTS=1 (make test-docker)")


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p.stdout


def source_repo() -> Path:
    """ROOT when its tree is clean (CI: the commit under test); else a scratch repository whose HEAD is
    a snapshot of the working tree (tracked and unignored files) committed with HEAD's dates."""
    if not git("status", "--porcelain", cwd=ROOT).strip():
        return ROOT
    snap = WORK / "snapshot"
    git("clone", "--quiet", str(ROOT), str(snap), cwd=ROOT)
    files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for rel in git("ls-files", "-z", cwd=snap).split("\0"):
        if rel and not (ROOT / rel).exists():
            (snap / rel).unlink()
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, snap / rel)
    date = git("log", "-1", "--format=%ct", cwd=ROOT).strip()
    git("add", "-A", cwd=snap)
    git("-c", "user.name=modelport test", "-c", "user.email=test@modelport", "commit", "-q", "-m",
        "snapshot of the working tree (tests/docker/test_release.py)", cwd=snap,
        env={"GIT_AUTHOR_DATE": f"{date} +0000", "GIT_COMMITTER_DATE": f"{date} +0000"})
    return snap


def seed_images(src: Path, clone: Path) -> bool:
    """Clone A of this very commit (a clean tree) takes the images test_docker_tier built from it,
    as a CI convert job takes the images job's: same commit, same inputs, so the same images. Only
    clone B (verify-release) builds them again, from its own checkout, and must reach the same IDs:
    one image build set per run instead of two (the tier builds with PRUNE_BUILD_CACHE=1, so that
    build is a cold one). Stamps are re-touched in make's order and checked with `make --question`."""
    stamps = [ROOT / "build/stamps" / f"image-{i}" for i in ("onnx", "validator")]
    wheel = ROOT / "build/dist" / f"modelport-{VERSION}-py3-none-any.whl"
    if not (all(p.is_file() for p in stamps) and wheel.is_file()):
        return False
    for p in stamps:
        image_id = p.read_text().split()[0]
        if sh(DOCKER, "image", "inspect", image_id, check=False).returncode != 0:
            return False
    (clone / "build/stamps").mkdir(parents=True)
    (clone / "build/dist").mkdir(parents=True)
    shutil.copyfile(wheel, clone / "build/dist" / wheel.name)  # mtime now: newer than the checkout
    houses = [clone / "build/stamps" / h for h in ("wheelhouse", "debhouse", "npmhouse")]
    for h in houses:
        h.touch()
    time.sleep(1.1)
    for p in stamps:
        (clone / "build/stamps" / p.name).write_text(p.read_text())
    q = make_in(clone, "--question", *(f"build/stamps/{p.name}" for p in stamps), check=False)
    assert q.returncode == 0, "this tree's images do not match the clone's inputs (make would rebuild them)"
    return True


def make_in(clone: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    p = subprocess.run(["make", f"DOCKER={DOCKER}", f"BASE={BASE}", f"PYTHON={ROOT}/.venv/bin/python", *args],
                       cwd=clone, capture_output=True, text=True)
    print(f"$ make {' '.join(args)}  (in {clone.name}: {time.perf_counter() - t0:.0f}s, rc={p.returncode})")
    if check and p.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def test_two_clean_clones_release_the_same_bytes(engine) -> None:
    t0 = time.perf_counter()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    src = source_repo()
    clone = WORK / "a"
    git("clone", "--quiet", str(src), str(clone), cwd=ROOT)
    for house in ("wheelhouse", "debhouse", "npmhouse"):
        if (ROOT / house).is_dir():
            subprocess.run(["cp", "-al", str(ROOT / house), str(clone / house)], check=True)
    have_base = sh(DOCKER, "image", "inspect", BASE, check=False).returncode == 0
    if not have_base:
        make_in(ROOT, "base")
    seeded = seed_images(src, clone) if src == ROOT else False

    make_in(clone, "release", f"MODELS={MODEL}", "TARGETS=onnx")
    out = clone / "release" / VERSION
    doc = json.loads((out / "release.json").read_text())
    assert doc["git"] == {"commit": git("rev-parse", "HEAD", cwd=clone).strip(), "dirty": False}
    assert doc["source_date_epoch"] == int(git("log", "-1", "--format=%ct", cwd=clone).strip())
    entry = doc["artifacts"][MODEL]["onnx"]
    assert entry["validation"]["status"] == "pass" and set(entry["validation"]["variants"]) >= {"fp32", "q8"}
    # The IDs come from the clone's own builds (its stamps), and its artifacts were made in them.
    host = doc["platforms"][0]
    for img in ("onnx", "validator"):
        stamp = (clone / "build/stamps" / f"image-{img}").read_text().split()[0]
        assert doc["images"][img][host] == stamp
    assert entry["images"]["convert"].endswith(doc["images"]["onnx"][host])
    # Each SBOM lists every locked package the image installs: all wheels of its requirements.lock,
    # (validator) every .deb of apt.lock for this architecture and the npm tarballs.
    arch = host.split("/")[1]
    machine = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
    for img in ("onnx", "validator"):
        bom = json.loads((out / doc["sboms"][img][host]["file"]).read_text())
        kinds = [c["purl"].split("/")[0] for c in bom["components"]]
        # One wheel per lock line this platform installs (a `platform_machine == "<other>"` line is the
        # other platform's), plus modelport's own wheel.
        lines = [ln for ln in (clone / "images" / img / "requirements.lock").read_text().splitlines()
                 if ln.strip() and not ln.startswith("#")]
        mine = [ln for ln in lines if "platform_machine ==" not in ln or f'platform_machine == "{machine}"' in ln]
        assert kinds.count("pkg:pypi") == len(mine) + 1, (img, kinds.count("pkg:pypi"), len(mine))
        assert all(c["hashes"] for c in bom["components"])
    apt = [ln.split() for ln in (clone / "images/validator/apt.lock").read_text().splitlines()
           if ln.strip() and not ln.startswith("#")]
    bom = json.loads((out / doc["sboms"]["validator"][host]["file"]).read_text())
    assert sum(c["purl"].startswith("pkg:deb/") for c in bom["components"]) == \
        sum(f[2] in (arch, "all") for f in apt)
    assert any(c["purl"].startswith("pkg:npm/") for c in bom["components"])
    first = time.perf_counter() - t0

    # A release folder that was changed after the fact is named before any rebuild.
    victim = next(p for p in sorted((out / "artifacts").rglob("*.json")) if p.name != "manifest.json")
    saved = victim.read_bytes()
    victim.write_bytes(saved + b" ")
    p = make_in(clone, "verify-release", f"DIR=release/{VERSION}", check=False)
    assert p.returncode != 0 and f"modified: {victim.relative_to(out)}" in p.stdout, p.stdout + p.stderr
    victim.write_bytes(saved)

    # The second clean clone (clone B, made by verify-release) must give the same bytes.
    p = make_in(clone, "verify-release", f"DIR=release/{VERSION}", check=False)
    assert p.returncode == 0 and "verify-release: OK" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    print(f"release in clone A ({'images of this tree' if seeded else 'images built'}): {first:.0f} s; "
          f"verify-release (clone B, images built): {time.perf_counter() - t0 - first:.0f} s")
    shutil.rmtree(WORK, ignore_errors=True)
