#!/usr/bin/env python3
"""Download every Debian package the image apt.lock files name into debhouse/, checking sha256.

    python3 scripts/debhouse.py [NAME ...]      (default: every images/*/apt.lock)

The apt counterpart of the wheelhouse: image builds install Debian packages from this folder
through a BuildKit bind mount (images/apt-install.sh), with no network. A package already present
with the right hash is not fetched again. Debian keeps only current versions on its mirrors: when a
pinned version has been superseded, re-lock (`make lock-apt`) or point DEBIAN_ARCHIVE at a
snapshot (e.g. http://snapshot.debian.org/archive/debian/20261120T000000Z) to rebuild an old lock
exactly.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netget.py beside it, also when imported by path
from netget import FetchError, download  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "debhouse"
ARCHIVE = os.environ.get("DEBIAN_ARCHIVE")  # replaces http://deb.debian.org/debian when set
SUPERSEDED = ("Debian superseded this version: re-lock (make lock-apt) or set DEBIAN_ARCHIVE to a "
              "snapshot.debian.org date")
# The architectures to fetch (the locks hold every one's closure: scripts/lock_apt.py); `all`
# packages always. Default: every architecture, so one debhouse serves builds of every platform.
ARCHES = os.environ.get("ARCHES", "amd64 arm64").split()


def entries(names: list[str], arches: list[str] | None = None) -> dict[str, tuple[str, str, int]]:
    """file name -> (url, sha256, size), over the chosen lock files (and architectures: None, all)."""
    locks = [ROOT / "images" / n / "apt.lock" for n in names] if names else sorted(ROOT.glob("images/*/apt.lock"))
    out: dict[str, tuple[str, str, int]] = {}
    for lock in locks:
        for line in lock.read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            _pkg, _ver, arch, sha, size, url = line.split()
            if arches is not None and arch not in (*arches, "all"):
                continue
            out[unquote(url.rsplit("/", 1)[1])] = (url, sha, int(size))
    return out


def fetch(name: str, url: str, want: str, size: int) -> str:
    """One .deb into the debhouse: "cached" when present and verified, else downloaded (retried,
    resumed, sha256-checked: scripts/netget.py)."""
    path = OUT / name
    if path.is_file() and path.stat().st_size != size:
        path.unlink()
    if ARCHIVE and url.startswith("http://deb.debian.org/debian/"):
        url = ARCHIVE.rstrip("/") + "/" + url[len("http://deb.debian.org/debian/"):]
    return download(url, path, "sha256", bytes.fromhex(want), hint=SUPERSEDED)


def main(names: list[str]) -> None:
    OUT.mkdir(exist_ok=True)
    todo = entries(names, ARCHES)
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda kv: fetch(kv[0], *kv[1]), todo.items()))
    except FetchError as err:  # one line, not a traceback; what was fetched stays for the rerun
        raise SystemExit(f"debhouse: {err}") from None
    locked = entries(names)  # every architecture's files stay: another platform's build uses them
    stale = [] if names else [p for p in OUT.iterdir() if p.name not in locked]
    for path in stale:  # the folder is the build context's: keep it to what the locks name
        path.unlink()
    total = sum(size for _, _, size in todo.values())
    print(f"debhouse: {' '.join(ARCHES)}: {len(todo)} packages ({total / 1e6:.0f} MB), {results.count('fetched')} fetched, "
          f"{results.count('cached')} already present, {len(stale)} stale removed")


if __name__ == "__main__":
    main(sys.argv[1:])
