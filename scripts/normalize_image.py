#!/usr/bin/env python3
"""Give a Docker image an ID that depends only on its content.

BuildKit 0.8 (docker.io 20.10) stamps the build time into the image config and layer tars carry
file mtimes, so two builds of the same inputs get different IDs. This rewrites the image:
every layer tar sorted by name, mtimes clamped to SOURCE_DATE_EPOCH, owner names dropped, pax
atime/ctime removed; the config's timestamps set to SOURCE_DATE_EPOCH. The image ID is the sha256
of the config, which now depends only on the layer contents and the config itself.

    normalize_image.py SRC_IMAGE DST_TAG             re-normalize a built image (docker save/load)
    normalize_image.py --rootfs ROOTFS.tar DST_TAG   import a root file system (like `docker import`)
Prints the resulting image ID. Standard library only: it runs on the host before any venv exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DOCKER = os.environ.get("DOCKER", "docker")
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))
CREATED = dt.datetime.fromtimestamp(EPOCH, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def normalize_layer(src: Path, dst: Path) -> str:
    """Rewrite one layer tar deterministically; returns its diff id."""
    with tarfile.open(src, "r:") as tin:
        # Hard links must come after the file they point to: emit them last.
        members = sorted(tin.getmembers(), key=lambda m: (m.islnk(), m.name))
        with tarfile.open(dst, "w:", format=tarfile.PAX_FORMAT) as tout:
            for m in members:
                m.mtime = min(int(m.mtime), EPOCH)
                m.uname = m.gname = ""
                for key in ("atime", "ctime", "mtime"):
                    m.pax_headers.pop(key, None)
                tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
    return sha256_path(dst)


def load_archive(tmp: Path, layers: list[tuple[str, Path]], config: dict, tag: str) -> str:
    """Write a `docker load` archive (fixed entry order and times) and load it."""
    raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = hashlib.sha256(raw).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag],
                 "Layers": [f"{diff[7:]}/layer.tar" for diff, _ in layers]}]
    archive = tmp / "image.tar"
    with tarfile.open(archive, "w:") as t:
        for name, data in ((f"{image_id}.json", raw), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), EPOCH
            t.addfile(info, io.BytesIO(data))
        for diff, path in layers:
            info = t.gettarinfo(str(path), arcname=f"{diff[7:]}/layer.tar")
            info.mtime, info.uname, info.gname = EPOCH, "", ""
            with open(path, "rb") as f:
                t.addfile(info, f)
    subprocess.run([DOCKER, "load", "-i", str(archive)], check=True, stdout=subprocess.DEVNULL)
    return f"sha256:{image_id}"


def from_rootfs(rootfs: Path, tag: str, tmp: Path) -> str:
    layer = tmp / "layer0.tar"
    diff = normalize_layer(rootfs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
                   "Cmd": ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
        "history": [{"created": CREATED, "created_by": "debootstrap --variant=minbase bookworm (modelport base)"}],
    }
    return load_archive(tmp, [(diff, layer)], config, tag)


def from_image(src: str, tag: str, tmp: Path) -> str:
    saved = tmp / "saved.tar"
    subprocess.run([DOCKER, "save", "-o", str(saved), src], check=True)
    unpacked = tmp / "saved"
    unpacked.mkdir()
    with tarfile.open(saved) as t:
        t.extractall(unpacked, filter="tar")
    saved.unlink()
    entry = json.loads((unpacked / "manifest.json").read_text())[0]
    config = json.loads((unpacked / entry["Config"]).read_text())
    layers = []
    for i, name in enumerate(entry["Layers"]):
        out = tmp / f"layer{i}.tar"
        layers.append((normalize_layer(unpacked / name, out), out))
        (unpacked / name).unlink()
    config["created"] = CREATED
    for h in config.get("history", []):
        h["created"] = CREATED
    for key in ("container", "container_config", "docker_version"):
        config.pop(key, None)
    config["rootfs"] = {"type": "layers", "diff_ids": [d for d, _ in layers]}
    return load_archive(tmp, layers, config, tag)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--rootfs":
        fn, src, tag = from_rootfs, Path(argv[1]), argv[2]
    elif len(argv) == 2:
        fn, src, tag = from_image, argv[0], argv[1]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        print(fn(src, tag, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
