#!/usr/bin/env bash
# Download every wheel the image lock files name into wheelhouse/, checking each hash.
# Image builds then install from this folder through a BuildKit bind mount, with no network.
#   scripts/wheelhouse.sh [NAME ...]     default: every images/*/requirements.lock
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p wheelhouse
# glibc of Debian bookworm (the images' base) is 2.36: accept every manylinux tag up to it.
PLATFORMS=$(for m in $(seq 17 36); do printf -- '--platform manylinux_2_%s_x86_64 ' "$m"; done)
locks=()
if [ $# -gt 0 ]; then for n in "$@"; do locks+=("images/$n/requirements.lock"); done
else locks=(images/*/requirements.lock); fi
for lockfile in "${locks[@]}"; do
  echo "wheelhouse: $lockfile"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform any --platform manylinux2014_x86_64 $PLATFORMS -d wheelhouse -r "$lockfile"
done
du -sh wheelhouse | awk '{print "wheelhouse: " $1}'
