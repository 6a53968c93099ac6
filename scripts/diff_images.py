#!/usr/bin/env python3
"""Say why two builds of an image got different IDs: which layer, which files.

    diff_images.py IMAGE_A IMAGE_B [--limit N]

Both images are read as `docker save` streams (nothing is written to disk). Layers are compared
by position; for each layer whose diff ID differs, every path whose type, mode, owner, size,
link target or content (sha256) differs is listed, then paths only in one of them. Use it on two
normalized images (scripts/normalize_image.py): their mtimes are already clamped, so what remains
is real content. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from normalize_image import read_saved  # noqa: E402  (the same docker-save reader)

Entry = tuple  # (type, mode, uid, gid, size, linkname, sha256)


def layer_index(fileobj) -> dict[str, Entry]:
    """Path -> what identifies that file in one layer tar (read as a stream)."""
    out: dict[str, Entry] = {}
    with tarfile.open(fileobj=fileobj, mode="r|") as t:
        for m in t:
            digest = ""
            if m.isreg():
                h = hashlib.sha256()
                f = t.extractfile(m)
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                digest = h.hexdigest()[:16]
            out[m.name] = (m.type.decode(), oct(m.mode), m.uid, m.gid, m.size, m.linkname, digest)
    return out


def read_image(image: str) -> tuple[list[str], list[dict[str, Entry]]]:
    """(diff ids, per-layer index) in the image's layer order."""
    _, config, indexes = read_saved(image, lambda stream, _index: layer_index(stream))
    return config["rootfs"]["diff_ids"], indexes


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--limit", type=int, default=40, help="paths listed per layer (default 40)")
    args = ap.parse_args(argv)
    ids_a, layers_a = read_image(args.a)
    ids_b, layers_b = read_image(args.b)
    if len(ids_a) != len(ids_b):
        print(f"layer count differs: {len(ids_a)} vs {len(ids_b)}")
    same = True
    for i, (da, db) in enumerate(zip(ids_a, ids_b)):
        if da == db:
            print(f"layer {i}: same {da[:19]}")
            continue
        same = False
        a, b = layers_a[i], layers_b[i]
        changed = sorted(p for p in a.keys() & b.keys() if a[p] != b[p])
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        print(f"layer {i}: {da[:19]} vs {db[:19]}: {len(changed)} changed, "
              f"{len(only_a)} only in A, {len(only_b)} only in B")
        for p in changed[: args.limit]:
            print(f"  ~ {p}\n      A {a[p]}\n      B {b[p]}")
        for p in only_a[: args.limit]:
            print(f"  - {p}")
        for p in only_b[: args.limit]:
            print(f"  + {p}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
