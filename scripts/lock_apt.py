#!/usr/bin/env python3
"""Resolve images/<name>/apt.in into a pinned images/<name>/apt.lock (Debian packages + sha256).

    python3 scripts/lock_apt.py [NAME ...]      (default: every image with an apt.in)

Resolution runs apt inside a throwaway container of the base image (network: the Debian mirror
only), once per architecture (ARCHES, default "amd64 arm64"), against an *empty* dpkg status: the
lock holds the whole dependency closure, so the same lock installs on any bookworm base, whichever packages that base already has (the debootstrap base
of `make base` or python:3.11-slim-bookworm). At build time apt takes only what the base lacks,
from the debhouse (scripts/debhouse.py), with no network.

Another architecture needs no emulation: apt on the amd64 base resolves arm64's closure with
`-o APT::Architecture=arm64 -o APT::Architectures=arm64` (its own package lists, the same empty
status), so one apt.lock holds both closures; the architecture column (amd64, arm64 or all) tells
images/apt-install.sh which lines its build takes (`dpkg --print-architecture` or all). An `all`
package in both closures is one line.

Lock line: `package version architecture size sha256 url`. Needs a Docker engine and the base
image (BASE, default modelport/base:bookworm); env DEBIAN_MIRROR / DEBIAN_SECURITY pick mirrors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
DOCKER = os.environ.get("DOCKER", "docker")
BASE = os.environ.get("BASE", "modelport/base:bookworm")
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
SUITE = "bookworm"
ARCHES = os.environ.get("ARCHES", "amd64 arm64").split()

# Runs in the container: prints the closure's URIs (`'url' file size hash`), a separator, then the
# apt-cache records of those packages (Python matches them by pool path: url-quoting and epochs aside).
RESOLVE = r"""
set -eu
cat > /tmp/sources.list <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SRC
# ARCH: the architecture resolved for (its own lists folder: the container's are the base's).
mkdir -p /tmp/lists-$ARCH/partial
APT="-qq -o Dir::Etc::SourceList=/tmp/sources.list -o Dir::Etc::SourceParts=/dev/null \
 -o APT::Architecture=$ARCH -o APT::Architectures=$ARCH -o Dir::State::Lists=/tmp/lists-$ARCH"
apt-get $APT update >&2
: > /tmp/empty-status
mkdir -p /tmp/no-archives/partial
# An empty status and an empty archive cache: apt prints every .deb of the closure (debootstrap leaves
# its own .debs in /var/cache/apt/archives, which --print-uris would otherwise skip).
apt-get $APT -o Dir::State::status=/tmp/empty-status -o Dir::Cache::Archives=/tmp/no-archives/ install --no-install-recommends --print-uris "$@" > /tmp/uris
cat /tmp/uris
echo "-- records --"
sed -n "s/^'[^']*\/\([^_/]*\)_[^']*'.*/\1/p" /tmp/uris | sed 's/%2[bB]/+/g' | sort -u | xargs apt-cache $APT show
"""


def parse(output: str) -> list[str]:
    """Lock lines `package version arch sha256 size url` for every URI of the closure."""
    uris, records = output.split("-- records --\n")
    by_path: dict[str, dict[str, str]] = {}
    for stanza in records.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): ?(.*)$", stanza, re.M))
        if "Filename" in fields:
            by_path[fields["Filename"]] = fields
    lines = []
    for m in re.finditer(r"^'([^']+)' \S+ (\d+) ", uris, re.M):
        url, size = m.group(1), m.group(2)
        path = unquote(url.split("/", 3)[3])  # pool/main/... under the archive root
        rec = next((r for p, r in by_path.items() if path.endswith(p)), None)
        if rec is None:
            raise SystemExit(f"no apt-cache record for {url}")
        if rec["Size"] != size:
            raise SystemExit(f"size mismatch for {url}: {size} vs {rec['Size']}")
        lines.append(f"{rec['Package']} {rec['Version']} {rec['Architecture']} {rec['SHA256']} {size} {url}")
    return sorted(set(lines))


def resolve(image: str, arch: str, packages: list[str]) -> list[str]:
    env = ["-e", f"MIRROR={MIRROR}", "-e", f"SECURITY={SECURITY}", "-e", f"SUITE={SUITE}", "-e", f"ARCH={arch}"]
    proc = subprocess.run([DOCKER, "run", "--rm", "--network", "host", *env, BASE, "bash", "-c", RESOLVE,
                           "resolve", *packages], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{image}: apt resolution for {arch} failed in {BASE}:\n{proc.stderr[-3000:]}")
    lines = parse(proc.stdout)
    wrong = [line for line in lines if line.split()[2] not in (arch, "all")]
    if wrong:  # apt ignored the architecture options: never write another architecture's closure
        raise SystemExit(f"{image}: resolving for {arch} gave {wrong[0].split()[2]} packages ({wrong[0].split()[0]})")
    return lines


def lock(image: str) -> Path:
    spec = ROOT / "images" / image / "apt.in"
    packages = [line.split("#")[0].strip() for line in spec.read_text().splitlines()]
    packages = [p for p in packages if p]
    lines = sorted({line for arch in ARCHES for line in resolve(image, arch, packages)})
    for line in lines:  # package version arch sha256 size url
        fields = line.split()
        if len(fields) != 6 or len(fields[3]) != 64:
            raise SystemExit(f"{image}: malformed lock line {line!r}")
    out = spec.with_name("apt.lock")
    header = (f"# generated by scripts/lock_apt.py from apt.in ({SUITE}, closure against an empty dpkg status);"
              f" do not edit\n# architectures: {' '.join(ARCHES)}\n# package version architecture sha256 size url\n")
    tmp = out.with_suffix(".lock.tmp")
    tmp.write_text(header + "\n".join(lines) + "\n")
    tmp.replace(out)
    total = sum(int(line.split()[4]) for line in lines)
    per_arch = ", ".join(f"{a} {sum(1 for l in lines if l.split()[2] in (a, 'all'))}" for a in ARCHES)
    print(f"{image}: {len(lines)} Debian packages ({total / 1e6:.0f} MB; {per_arch}) pinned -> {out.relative_to(ROOT)}")
    return out


def main(names: list[str]) -> None:
    images = names or sorted(p.parent.name for p in (ROOT / "images").glob("*/apt.in"))
    for image in images:
        lock(image)


if __name__ == "__main__":
    main(sys.argv[1:])
