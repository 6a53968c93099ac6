#!/usr/bin/env python3
"""Resolve images/<name>/requirements.in into a hash-pinned images/<name>/requirements.lock, for
every platform the image is built for (linux/amd64 and linux/arm64 unless images/<name>/platforms
narrows it).

    python3 scripts/lock.py [--upgrade] [NAME ...]     (default: every image with a requirements.in)
    python3 scripts/lock.py --for-machine MACHINE LOCK  print LOCK's lines for one machine (x86_64,
                                                        aarch64), markers dropped (scripts/wheelhouse.sh)

Resolution: `pip install --dry-run --report` for CPython 3.11 binary wheels, once per platform
(manylinux x86_64, manylinux aarch64; glibc <= 2.36, Debian bookworm's), which reads the wheels'
metadata from the index instead of downloading them (the aarch64 torch closure alone is ~3 GB of
CUDA wheels). Lock lines:
    name==version --hash=sha256:A --hash=sha256:B         the same version on every platform: the
                                                          hash of each platform's wheel (pip takes
                                                          the one that fits; pure wheels have one)
    name==version ; platform_machine == "aarch64" --hash=sha256:C
                                                          only where the platforms resolve differently
                                                          (torch: 2.13.0+cpu on x86_64, the PyPI
                                                          build and its CUDA libraries on aarch64)
Images install with `pip install --no-index --require-hashes --no-deps -r requirements.lock`, so a
wheel that changes upstream fails the build instead of slipping in.

Existing pins are kept (every `name==version` of the current lock constrains the new resolution,
like pip-compile): re-locking adds a platform's hashes without moving versions. --upgrade drops
them and takes the newest versions requirements.in allows. An image whose wheels do not exist for a
platform fails here with pip's reason; if that is expected, images/<name>/platforms lists the
platforms it is built for, with why (the Makefile reads the same file). Needs network (the
registries); the build itself never does.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

try:
    from packaging.markers import Marker
except ImportError:  # a bare host python: the copy pip itself vendors (pip is what resolves here anyway)
    from pip._vendor.packaging.markers import Marker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # locks.py beside it, also when imported by path
from locks import WHEEL_MACHINE, LockError, Requirement, parse_requirements  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Docker platform -> the wheel machine it runs. Order: the lock's header and marker order.
PLATFORMS = {f"linux/{arch}": machine for arch, machine in WHEEL_MACHINE.items()}
ARCH_OF = {machine: arch for arch, machine in WHEEL_MACHINE.items()}
# glibc of Debian bookworm (the images' base) is 2.36: accept every manylinux tag up to it.
MAX_GLIBC_MINOR = 36


def pip_target(machine: str) -> list[str]:
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(17, MAX_GLIBC_MINOR + 1)]
    return ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "--platform", "any", "--platform", f"manylinux2014_{machine}", *[a for t in tags for a in ("--platform", t)]]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platforms_of(image: str) -> list[str]:
    """images/<image>/platforms (one Docker platform a line, `#` comments: the reason), else all."""
    spec = ROOT / "images" / image / "platforms"
    if not spec.is_file():
        return list(PLATFORMS)
    chosen = [line.split("#")[0].strip() for line in spec.read_text().splitlines()]
    chosen = [p for p in chosen if p]
    unknown = [p for p in chosen if p not in PLATFORMS]
    if unknown or not chosen:
        raise SystemExit(f"{spec.relative_to(ROOT)}: unknown platform(s) {unknown or '(none listed)'}; "
                         f"known: {' '.join(PLATFORMS)}")
    return chosen


def read_lock(path: Path) -> list[Requirement]:
    """The current lock's lines (scripts/locks.py reads every lock format), none when there is none."""
    try:
        return parse_requirements(path) if path.is_file() else []
    except LockError as e:
        raise SystemExit(f"lock: {e}") from None


def for_machine(path: Path, machine: str) -> list[str]:
    """LOCK's requirement lines that apply on MACHINE, markers dropped (pip evaluates markers against
    the interpreter it runs in, not --platform: `pip download --platform` needs them resolved)."""
    return [f"{r.name}=={r.version} " + " ".join(f"--hash=sha256:{h}" for h in r.hashes)
            for r in read_lock(path) if r.applies_to(ARCH_OF[machine])]


def on_machine(marker: str, machine: str) -> bool:
    return Marker(marker).evaluate({"platform_machine": machine})


def requirements_for(req_in: Path, machine: str, tmp: Path) -> Path:
    """req_in with its `; marker` lines decided for MACHINE (pip decides markers for the interpreter
    it runs in, x86_64 here, even with --platform aarch64): false lines dropped, true ones unmarked."""
    out = []
    for line in req_in.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if ";" in spec:
            requirement, marker = spec.split(";", 1)
            if not on_machine(marker, machine):
                continue
            spec = requirement.strip()
        out.append(spec)
    path = tmp / f"requirements-{machine}.in"
    path.write_text("".join(f"{l}\n" for l in out if l))
    return path


def check_markers(report: dict, machine: str) -> None:
    """pip decided every dependency marker for this host's machine, not MACHINE: stop where that
    changes the closure (no case among today's images; torch and cuda-toolkit mark per machine only
    in extras and agree for x86_64 and aarch64)."""
    host = {"platform_machine": platform.machine()}
    for item in report["install"]:
        for dep in item["metadata"].get("requires_dist", []):
            if ";" not in dep or "platform_machine" not in dep or "extra" in dep:
                continue
            marker = dep.split(";", 1)[1]
            if Marker(marker).evaluate({"platform_machine": machine}) != Marker(marker).evaluate(host):
                raise SystemExit(f"lock: {item['metadata']['name']} needs {dep!r}: pip decided that marker for "
                                 f"this host's machine, not {machine}; resolve on a {machine} machine")


def resolve(req_in: Path, machine: str, constraints: list[str], tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, sha256) of every wheel of req_in's closure on MACHINE."""
    cfile = tmp / f"constraints-{machine}.txt"
    cfile.write_text("".join(f"{c}\n" for c in constraints))
    req_in = requirements_for(req_in, machine, tmp)
    report = tmp / f"report-{machine}.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                           "--disable-pip-version-check", "--target", str(tmp / "target"), "--report", str(report),
                           *pip_target(machine), "-c", str(cfile), "-r", str(req_in)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [l for l in proc.stderr.splitlines() if l.startswith("ERROR")] or proc.stderr.splitlines()[-1:]
        raise LookupError(" / ".join(errors))
    data = json.loads(report.read_text())
    check_markers(data, machine)
    out = {}
    for item in data["install"]:
        info = item["download_info"]
        filename = unquote(urlparse(info["url"]).path.rsplit("/", 1)[1])
        if not filename.endswith(".whl"):
            raise SystemExit(f"{req_in.parent.name}: not a wheel: {filename}")
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest is None:  # a local find-links file: no index hash, hash the file itself
            digest = hashlib.sha256(Path(unquote(urlparse(info["url"]).path)).read_bytes()).hexdigest()
        name, version = filename.split("-")[:2]
        out[normalize(name)] = (version, digest)
    return out


def lock(image: str, upgrade: bool = False) -> Path:
    req_in = ROOT / "images" / image / "requirements.in"
    out = req_in.with_name("requirements.lock")
    old = [] if upgrade else read_lock(out)
    platforms = platforms_of(image)
    machines = [PLATFORMS[p] for p in platforms]
    resolved: dict[str, dict[str, tuple[str, str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for platform, machine in zip(platforms, machines):
            # Public versions (`torch==2.13.0` also matches 2.13.0+cpu: PEP 440 ignores the local label).
            pins = sorted({f"{r.name}=={r.version.split('+')[0]}" for r in old if r.applies_to(ARCH_OF[machine])})
            try:
                resolved[machine] = resolve(req_in, machine, pins, Path(tmp))
            except LookupError as e:
                raise SystemExit(f"{image}: no {platform} ({machine}) resolution: {e}. If {image} cannot run on "
                                 f"{platform}, list its platforms in images/{image}/platforms with the reason.")
    lines = []
    for name in sorted({n for r in resolved.values() for n in r}):
        per = {m: resolved[m][name] for m in machines if name in resolved[m]}
        versions = {v for v, _ in per.values()}
        if len(per) == len(machines) and len(versions) == 1:
            hashes = sorted({h for _, h in per.values()})
            lines.append(f"{name}=={versions.pop()} " + " ".join(f"--hash=sha256:{h}" for h in hashes))
        else:
            for machine, (version, digest) in per.items():
                lines.append(f'{name}=={version} ; platform_machine == "{machine}" --hash=sha256:{digest}')
    header = (f"# generated by scripts/lock.py from requirements.in; do not edit\n"
              f"# platforms: {' '.join(f'{p} (manylinux {m})' for p, m in zip(platforms, machines))}; "
              f"CPython 3.11, glibc <= 2.{MAX_GLIBC_MINOR}\n")
    tmp_out = out.with_suffix(".lock.tmp")
    tmp_out.write_text(header + "\n".join(lines) + "\n")
    tmp_out.replace(out)
    split = sum(1 for l in lines if "platform_machine" in l)
    print(f"{image}: {len(lines)} lines ({split} platform-specific) for {' '.join(platforms)} -> {out.relative_to(ROOT)}")
    return out


def main(argv: list[str]) -> None:
    if argv[:1] == ["--for-machine"]:
        if len(argv) != 3 or argv[1] not in PLATFORMS.values():
            raise SystemExit(f"usage: lock.py --for-machine {'|'.join(PLATFORMS.values())} LOCK")
        lock_path = Path(argv[2])
        machine_platforms = [PLATFORMS[p] for p in platforms_of(lock_path.resolve().parent.name)]
        if argv[1] in machine_platforms:  # else: the image is not built there (images/<name>/platforms)
            print("\n".join(for_machine(lock_path, argv[1])))
        return
    upgrade = "--upgrade" in argv
    names = [a for a in argv if a != "--upgrade"]
    images = names or sorted(p.parent.name for p in (ROOT / "images").glob("*/requirements.in"))
    for image in images:
        if not (ROOT / "images" / image / "requirements.in").is_file():
            raise SystemExit(f"lock: no images/{image}/requirements.in")
        lock(image, upgrade)


if __name__ == "__main__":
    main(sys.argv[1:])
