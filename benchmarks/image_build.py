"""Cold and warm build times and sizes of the modelport images.

    python benchmarks/image_build.py [--base modelport/base:bookworm] [IMAGE ...]   (default: validator onnx)

cold  = `docker build --no-cache` from the wheelhouse, debhouse and npmhouse (hermetic, --network
        none), inputs ready
warm  = the same build again with BuildKit's cache (nothing changed)
norm  = scripts/normalize_image.py (content-derived image ID)
Needs a running engine, `make wheelhouse debhouse npmhouse dist` done, and the base image present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", default=["validator", "onnx"])
    ap.add_argument("--base", default="modelport/base:bookworm")
    args = ap.parse_args()
    epoch = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    env = {"DOCKER_BUILDKIT": "1", "SOURCE_DATE_EPOCH": epoch, "DOCKER": DOCKER}
    print(f"{'image':10s} {'cold':>8s} {'warm':>8s} {'norm':>8s} {'size':>9s}  id")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in args.images:
        # As the Makefile builds it: the image's own Dockerfile, else the toolchain template.
        own = ROOT / "images" / name / "Dockerfile"
        dockerfile = ["-f", f"images/{name}/Dockerfile"] if own.is_file() else [
            "-f", "images/toolchain/Dockerfile", "--build-arg", f"TOOLCHAIN={name}"]
        build = [DOCKER, "build", "--network", "none", "--build-arg", f"BASE={args.base}",
                 "--build-arg", f"SOURCE_DATE_EPOCH={epoch}", "--build-arg", f"VERSION={version}", *dockerfile,
                 "-t", f"modelport/{name}:bench-raw", "."]
        cold, _ = timed(build[:2] + ["--no-cache"] + build[2:], env)
        warm, _ = timed(build, env)
        norm, out = timed(["python3", "scripts/normalize_image.py", f"modelport/{name}:bench-raw",
                           f"modelport/{name}:bench"], env)
        info = json.loads(subprocess.run([DOCKER, "image", "inspect", f"modelport/{name}:bench"],
                                         capture_output=True, text=True, check=True).stdout)[0]
        print(f"{name:10s} {cold:7.1f}s {warm:7.1f}s {norm:7.1f}s {info['Size'] / 1e9:7.2f}GB  {out.split()[0][:19]}",
              flush=True)
        subprocess.run([DOCKER, "rmi", f"modelport/{name}:bench-raw", f"modelport/{name}:bench"],
                       capture_output=True)


if __name__ == "__main__":
    main()
