#!/usr/bin/env python3
"""Give a Docker image an ID that depends only on its content.

BuildKit 0.8 (docker.io 20.10) stamps the build time into the image config and layer tars carry
file mtimes, so two builds of the same inputs get different IDs. This rewrites the image:
every layer tar sorted by name, mtimes clamped to SOURCE_DATE_EPOCH, owner names dropped, pax
atime/ctime removed; the config's timestamps set to SOURCE_DATE_EPOCH. The image ID is the sha256
of the config, which now depends only on the layer contents and the config itself.

    normalize_image.py [--remove-source] SRC_IMAGE DST_TAG
                                                     re-normalize a built image (docker save/load,
                                                     streamed; --remove-source drops SRC before the load)
    normalize_image.py --rootfs ROOTFS.tar DST_TAG [--arch ARCH]
                                                     import a root file system (like `docker import`)
                                                     as a linux/ARCH image (default amd64)
The platform is kept: a re-normalized image keeps its config's architecture/os (an arm64 build
stays arm64: `docker run --platform linux/arm64` and the manifest's image ID depend on it).
Prints the resulting image ID. Standard library only: it runs on the host before any venv exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Callable, TypeVar

DOCKER = os.environ.get("DOCKER", "docker")
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))
T = TypeVar("T")
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


def load_archive(layers: list[tuple[str, Path]], config: dict, tag: str) -> str:
    """Stream a `docker load` archive (fixed entry order and times) into the engine.

    Nothing is written to disk on our side: each normalized layer file is deleted once sent, so the
    peak is the normalized layers themselves, not those plus an archive copy."""
    raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = hashlib.sha256(raw).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag],
                 "Layers": [f"{diff[7:]}/layer.tar" for diff, _ in layers]}]
    load = subprocess.Popen([DOCKER, "load"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        with tarfile.open(fileobj=load.stdin, mode="w|") as t:
            for name, data in ((f"{image_id}.json", raw), ("manifest.json", json.dumps(manifest).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), EPOCH
                t.addfile(info, io.BytesIO(data))
            sent: set[str] = set()
            for diff, path in layers:
                if diff in sent:  # the same layer twice in one image (e.g. two identical empty layers)
                    continue
                sent.add(diff)
                info = t.gettarinfo(str(path), arcname=f"{diff[7:]}/layer.tar")
                info.mtime, info.uname, info.gname = EPOCH, "", ""
                with open(path, "rb") as f:
                    t.addfile(info, f)
                path.unlink()
    finally:
        load.stdin.close()
    if load.wait() != 0:
        raise SystemExit(f"docker load failed ({load.returncode})")
    return f"sha256:{image_id}"


def from_rootfs(rootfs: Path, tag: str, tmp: Path, arch: str = "amd64") -> str:
    layer = tmp / "layer0.tar"
    diff = normalize_layer(rootfs, layer)
    config = {
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
                   "Cmd": ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
        # amd64's text is the one it always had: the same rootfs keeps the same image ID.
        "history": [{"created": CREATED, "created_by": "debootstrap " + ("" if arch == "amd64" else f"--arch={arch} ")
                     + "--variant=minbase bookworm (modelport base)"}],
    }
    return load_archive([(diff, layer)], config, tag)


def read_saved(src: str, per_layer: Callable[[IO[bytes], int], T]) -> tuple[dict, dict, list[T]]:
    """Read `docker save SRC` as a stream; `per_layer(layer tar stream, index)` handles each layer
    as it arrives (the archive itself is never stored). Returns (manifest entry, config, per_layer's
    results in the manifest's layer order). Also used by scripts/diff_images.py."""
    save = subprocess.Popen([DOCKER, "save", src], stdout=subprocess.PIPE)
    small: dict[str, bytes] = {}
    results: dict[str, T] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=save.stdout, mode="r|") as t:
        for m in t:
            if m.issym():  # a layer saved twice is a symlink to the first copy
                links[m.name] = os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname))
            elif m.isreg() and m.name.endswith("/layer.tar"):
                results[m.name] = per_layer(t.extractfile(m), len(results))
            elif m.isreg() and m.name.endswith(".json"):
                small[m.name] = t.extractfile(m).read()
    if save.wait() != 0:
        raise SystemExit(f"docker save {src} failed ({save.returncode})")
    entry = json.loads(small["manifest.json"])[0]
    config = json.loads(small[entry["Config"]])
    return entry, config, [results[links.get(name, name)] for name in entry["Layers"]]


def normalized_layers(tmp: Path) -> Callable[[IO[bytes], int], tuple[str, Path]]:
    """per_layer for read_saved: spool the raw layer (sorting its members needs random access; only
    one raw layer is ever on disk), write it normalized; returns (diff id, normalized file)."""
    def normalize(stream: IO[bytes], index: int) -> tuple[str, Path]:
        spool, out = tmp / "spool.tar", tmp / f"layer{index}.tar"
        with open(spool, "wb") as f:
            shutil.copyfileobj(stream, f, 1 << 20)
        diff = normalize_layer(spool, out)
        spool.unlink()
        return diff, out
    return normalize


def from_image(src: str, tag: str, tmp: Path, remove_source: bool = False) -> str:
    entry, config, layers = read_saved(src, normalized_layers(tmp))
    if remove_source:  # before the load: the raw and the normalized image never coexist
        subprocess.run([DOCKER, "rmi", src], check=True, stdout=subprocess.DEVNULL)
    config["created"] = CREATED
    for h in config.get("history", []):
        h["created"] = CREATED
    for key in ("container", "container_config", "docker_version"):
        config.pop(key, None)
    config["rootfs"] = {"type": "layers", "diff_ids": [d for d, _ in layers]}
    return load_archive(layers, config, tag)


ARCHES = ("amd64", "arm64")


def main(argv: list[str]) -> int:
    remove_source = "--remove-source" in argv
    argv = [a for a in argv if a != "--remove-source"]
    arch = "amd64"
    if "--arch" in argv:
        i = argv.index("--arch")
        if i + 1 >= len(argv) or argv[i + 1] not in ARCHES:
            print(f"normalize_image: --arch takes one of {', '.join(ARCHES)}", file=sys.stderr)
            return 2
        arch = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        if len(argv) == 3 and argv[0] == "--rootfs":
            print(from_rootfs(Path(argv[1]), argv[2], Path(tmp), arch))
        elif len(argv) == 2:
            print(from_image(argv[0], argv[1], Path(tmp), remove_source))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
