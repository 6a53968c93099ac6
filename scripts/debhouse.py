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

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netget.py beside it, also when imported by path
from netget import urlopen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "debhouse"
ARCHIVE = os.environ.get("DEBIAN_ARCHIVE")  # replaces http://deb.debian.org/debian when set


def entries(names: list[str]) -> dict[str, tuple[str, str, int]]:
    """file name -> (url, sha256, size), over the chosen lock files."""
    locks = [ROOT / "images" / n / "apt.lock" for n in names] if names else sorted(ROOT.glob("images/*/apt.lock"))
    out: dict[str, tuple[str, str, int]] = {}
    for lock in locks:
        for line in lock.read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            _pkg, _ver, _arch, sha, size, url = line.split()
            out[unquote(url.rsplit("/", 1)[1])] = (url, sha, int(size))
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, url: str, want: str, size: int) -> str:
    path = OUT / name
    if path.is_file() and path.stat().st_size == size and sha256(path) == want:
        return "cached"
    if ARCHIVE and url.startswith("http://deb.debian.org/debian/"):
        url = ARCHIVE.rstrip("/") + "/" + url[len("http://deb.debian.org/debian/"):]
    tmp = path.with_suffix(".part")
    with urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
        while block := r.read(1 << 20):
            f.write(block)
    got = sha256(tmp)
    if got != want:
        tmp.unlink()
        raise SystemExit(f"debhouse: sha256 mismatch for {url}: got {got}, lock says {want}")
    tmp.replace(path)
    return "fetched"


def main(names: list[str]) -> None:
    OUT.mkdir(exist_ok=True)
    todo = entries(names)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda kv: fetch(kv[0], *kv[1]), todo.items()))
    stale = [] if names else [p for p in OUT.iterdir() if p.name not in todo]
    for path in stale:  # the folder is the build context's: keep it to what the locks name
        path.unlink()
    total = sum(size for _, _, size in todo.values())
    print(f"debhouse: {len(todo)} packages ({total / 1e6:.0f} MB), {results.count('fetched')} fetched, "
          f"{results.count('cached')} already present, {len(stale)} stale removed")


if __name__ == "__main__":
    main(sys.argv[1:])
