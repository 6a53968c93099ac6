"""Readers for the lock files the images install from, in one place: the SBOM (scripts/sbom.py) and
the release (scripts/release.py) read them; the lock writers are scripts/lock.py, lock_apt.py and npm.

Formats read (both the single-platform ones of before issue #19 and the multi-platform ones after it):
  requirements.lock  `name==version --hash=sha256:H [--hash=sha256:H2 ...]`, optionally with an
                     environment marker before the hashes (`name==version ; platform_machine ==
                     "aarch64" --hash=...`) and pip's `\\` line continuations; `#` comments.
                     One hash per platform's wheel: which wheel a hash is, is found in the wheelhouse.
  apt.lock           `package version architecture sha256 size url` (architecture: amd64, arm64 or all;
                     one file may hold several architectures' closures).
  package-lock.json  npm lockfile v2/v3: every installed package with `resolved` and `integrity`
                     (packages inside a bundling package's tarball and workspace links excluded, as
                     scripts/npmhouse.py excludes them); `os`/`cpu` say which platform installs it.
A line that is none of these raises LockError naming the file, the line number and what is wrong: a
malformed lock must not turn into a silently short SBOM. Standard library only (runs before any venv).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

# Debian architecture <-> the names the other ecosystems use for the same machine.
WHEEL_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
NPM_CPU = {"amd64": "x64", "arm64": "arm64"}
ARCHES = tuple(WHEEL_MACHINE)


class LockError(ValueError):
    """A lock file line that is not in any format we read (the message is one line: file:line: why)."""


@dataclass(frozen=True)
class Requirement:
    name: str
    version: str
    hashes: tuple[str, ...]  # sha256 hex digests, one per platform's wheel
    marker: str = ""  # environment marker text, "" when the line applies to every platform
    line: int = 0

    def applies_to(self, arch: str) -> bool:
        return not self.marker or eval_marker(self.marker, arch)


@dataclass(frozen=True)
class DebPackage:
    package: str
    version: str
    architecture: str
    sha256: str
    size: int
    url: str


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # as in the lock: "sha512-<base64>"
    resolved: str
    os: tuple[str, ...] = ()
    cpu: tuple[str, ...] = ()
    locks: tuple[str, ...] = field(default=(), compare=False)

    @property
    def sha512(self) -> str:
        algo, b64 = self.integrity.split()[0].split("-", 1)
        return base64.b64decode(b64).hex()

    def applies_to(self, arch: str) -> bool:
        return _npm_allows(self.os, "linux") and _npm_allows(self.cpu, NPM_CPU[arch])


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REQ = re.compile(rf"^({_NAME})(?:\[[^\]]*\])?==([^\s;]+)\s*(?:;\s*(.*?))?\s*((?:--hash=\S+\s*)+)$")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})$")


def parse_requirements(path: Path) -> list[Requirement]:
    out, lineno = [], 0
    for lineno, text in _logical_lines(path):
        m = _REQ.match(text)
        if not m:
            raise LockError(f"{path}:{lineno}: not `name==version [; marker] --hash=sha256:...`: {text[:80]!r}")
        name, version, marker, hash_part = m.groups()
        hashes = []
        for token in hash_part.split():
            h = _HASH.match(token)
            if not h:
                raise LockError(f"{path}:{lineno}: {token[:80]!r} is not --hash=sha256:<64 hex digits>")
            hashes.append(h.group(1))
        marker = (marker or "").strip()
        if marker:
            eval_marker(marker, "amd64", where=f"{path}:{lineno}")  # reject what we cannot evaluate now
        out.append(Requirement(name.lower().replace("_", "-"), version, tuple(hashes), marker, lineno))
    return out


def _logical_lines(path: Path):
    """(first line number, text) of each non-comment line, pip's backslash continuations joined."""
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield start, " ".join(buf.split())
        buf = ""
    if buf.strip():
        yield start, " ".join(buf.split())


_MARKER_TERM = re.compile(r'^platform_machine\s*(==|!=)\s*["\']([^"\']+)["\']$')


def eval_marker(marker: str, arch: str, where: str = "marker") -> bool:
    """The markers the multi-platform locks write: `platform_machine ==|!= "..."` joined by and/or.

    A full PEP 508 evaluator (packaging) is not in the standard library; the lock writer emits only
    platform_machine terms (the images are all CPython 3.11 on Linux), so anything else is refused
    instead of being guessed."""
    machine = WHEEL_MACHINE[arch]
    result = None
    for alternative in re.split(r"\s+or\s+", marker.strip()):
        value = True
        for term in re.split(r"\s+and\s+", alternative.strip().strip("()").strip()):
            m = _MARKER_TERM.match(term.strip())
            if not m:
                raise LockError(f"{where}: unsupported environment marker {marker!r} "
                                f"(only platform_machine ==/!= terms joined by and/or)")
            value = value and ((machine == m.group(2)) == (m.group(1) == "=="))
        result = value if result is None else (result or value)
    return bool(result)


_APT_ARCHES = ("amd64", "arm64", "all")


def parse_apt(path: Path) -> list[DebPackage]:
    out = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 6:
            raise LockError(f"{path}:{n}: {len(parts)} fields, expected 6 (package version architecture "
                            f"sha256 size url): {line[:80]!r}")
        package, version, arch, sha, size, url = parts
        if arch not in _APT_ARCHES:
            raise LockError(f"{path}:{n}: architecture {arch!r} is not one of {', '.join(_APT_ARCHES)}")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise LockError(f"{path}:{n}: {sha[:80]!r} is not a sha256 (64 hex digits)")
        if not size.isdigit():
            raise LockError(f"{path}:{n}: size {size[:40]!r} is not a number of bytes")
        out.append(DebPackage(package, version, arch, sha, int(size), url))
    return out


def parse_npm(path: Path) -> list[NpmPackage]:
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise LockError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("packages"), dict):
        raise LockError(f"{path}: no `packages` object (npm lockfile v2/v3 expected)")
    if data.get("lockfileVersion", 1) < 2:
        raise LockError(f"{path}: lockfileVersion {data.get('lockfileVersion')} (need 2 or 3: npm >= 7)")
    out = []
    for key, meta in data["packages"].items():
        if not key or meta.get("link") or meta.get("inBundle"):
            continue
        name = meta.get("name") or key.rsplit("node_modules/", 1)[-1]
        integrity, resolved, version = meta.get("integrity"), meta.get("resolved"), meta.get("version")
        if not (isinstance(integrity, str) and integrity.startswith("sha512-") and resolved and version):
            raise LockError(f"{path}: {key} lacks version, resolved or a sha512 integrity")
        try:
            base64.b64decode(integrity.split()[0][7:], validate=True)
        except ValueError:
            raise LockError(f"{path}: {key} integrity is not base64") from None
        out.append(NpmPackage(name, version, integrity, resolved, _tuple(meta.get("os")), _tuple(meta.get("cpu")),
                              (str(path),)))
    return out


def _tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _npm_allows(allowed: tuple[str, ...], value: str) -> bool:
    """npm's os/cpu fields: a list of names, or of !names excluded; empty: every platform."""
    if not allowed:
        return True
    if f"!{value}" in allowed:
        return False
    positives = [a for a in allowed if not a.startswith("!")]
    return not positives or value in positives


def wheel_index(wheelhouse: Path) -> dict[str, str]:
    """sha256 hex -> wheel file name, for every wheel in the wheelhouse (both platforms: 120 files,
    3.6 GB; hashing them took 5.3 s here with a warm page cache, once per release)."""
    return {file_sha256(p): p.name for p in (sorted(wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else [])}


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read in 1 MB blocks (wheels and artifacts run to GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_arches(filename: str) -> tuple[str, ...]:
    """The architectures a wheel installs on, from its platform tag (PEP 427 file name)."""
    platform_tag = filename[:-4].split("-")[-1]
    if platform_tag == "any":
        return ARCHES
    return tuple(a for a, machine in WHEEL_MACHINE.items() if machine in platform_tag)
