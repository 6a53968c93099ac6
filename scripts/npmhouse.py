#!/usr/bin/env python3
"""Download every tarball the JavaScript harnesses' package-lock.json files pin into npmhouse/.

    python3 scripts/npmhouse.py [LOCK ...]     (default: the harnesses' locks and images/node's)
    python3 scripts/npmhouse.py --fill-resolved LOCK ...   add the registry URLs a lock omits

The npm counterpart of the wheelhouse: each `resolved` tarball is checked against the lock's
`integrity` (sha512) and stored once. Image builds add them to a throwaway npm cache and run
`npm ci --offline` (images/npm-install.sh), so node_modules is installed by npm itself, from the
lock, with no network. Tarballs for every platform in the lock are fetched (optional packages such
as sharp's per-OS binaries): the host's OS does not decide what the Linux image gets.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netget.py beside it, also when imported by path
from netget import FetchError, download  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "npmhouse"
REGISTRY = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
LOCKS = ("src/modelport/clients/js/package-lock.json", "src/modelport/targets/mlc/js/package-lock.json",
         "images/node/package-lock.json")


def tarballs(lock: Path) -> dict[str, str]:
    """url -> integrity for every installed package of a lockfile v2/v3."""
    data = json.loads(lock.read_text())
    if data.get("lockfileVersion", 1) < 2:
        raise SystemExit(f"{lock}: lockfileVersion {data.get('lockfileVersion')} (need 2 or 3: npm >= 7)")
    out = {}
    for path, meta in data["packages"].items():
        if not path or meta.get("link") or meta.get("inBundle"):
            continue  # the root project, workspace links, files inside a bundling package's tarball
        if "integrity" not in meta:
            raise SystemExit(f"{lock}: {path} has no integrity (not a registry package)")
        if "resolved" not in meta:  # `npm ci --offline` in the images needs it to find the cached tarball
            raise SystemExit(f"{lock}: {path} has no `resolved` URL (npm's omit-lockfile-registry-resolved was on "
                             f"when it was written): run scripts/npmhouse.py --fill-resolved {lock}")
        out[meta["resolved"]] = meta["integrity"]
    return out


def registry_url(path: str, version: str) -> str:
    """The tarball URL npm derives when a lock omits `resolved` (npm's omit-lockfile-registry-resolved)."""
    name = path.rsplit("node_modules/", 1)[1]
    return f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def fetch(url: str, integrity: str) -> str:
    algo, b64 = integrity.split()[0].split("-", 1)
    want = base64.b64decode(b64)
    name = f"{want.hex()[:16]}-{url.rsplit('/', 1)[1]}"
    return download(url, OUT / name, algo, want, hint="the lock names a tarball the registry no longer serves: "
                    "re-lock with npm install --package-lock-only")


def fill_resolved(lock: Path) -> None:
    """Write the registry URL npm would derive into every entry that lacks `resolved`."""
    data = json.loads(lock.read_text())
    for path, meta in data["packages"].items():
        if path and not meta.get("link") and not meta.get("inBundle") and "resolved" not in meta:
            items = list(meta.items())
            items.insert([k for k, _ in items].index("version") + 1, ("resolved", registry_url(path, meta["version"])))
            data["packages"][path] = dict(items)
    lock.write_text(json.dumps(data, indent=2) + "\n")


def main(locks: list[str], argv_locks: bool = False) -> None:
    OUT.mkdir(exist_ok=True)
    todo: dict[str, str] = {}
    for lock in locks:
        todo.update(tarballs(Path(lock)))
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda kv: fetch(*kv), todo.items()))
    except FetchError as err:  # one line, not a traceback; what was fetched stays for the rerun
        raise SystemExit(f"npmhouse: {err}") from None
    keep = {f"{base64.b64decode(i.split()[0].split('-', 1)[1]).hex()[:16]}-{u.rsplit('/', 1)[1]}" for u, i in todo.items()}
    stale = [] if argv_locks else [p for p in OUT.iterdir() if p.name not in keep]
    for path in stale:  # the folder is the build context's: keep it to what the locks name
        path.unlink()
    print(f"npmhouse: {len(todo)} tarballs, {results.count('fetched')} fetched, {results.count('cached')} already present, {len(stale)} stale removed")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fill-resolved"]:
        for name in sys.argv[2:]:
            fill_resolved(Path(name))
        sys.exit(0)
    main(sys.argv[1:] or [str(ROOT / p) for p in LOCKS], argv_locks=bool(sys.argv[1:]))
