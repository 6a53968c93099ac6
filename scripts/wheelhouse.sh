#!/usr/bin/env bash
# Download every wheel the image lock files name into wheelhouse/, checking each hash, for every
# platform the images are built for. Image builds then install from this folder through a BuildKit
# bind mount, with no network (pip picks the wheel of the build's platform by its tags).
#   scripts/wheelhouse.sh [NAME ...]     default: every images/*/requirements.lock
# Env: PLATFORMS (default "linux/amd64 linux/arm64"): the Docker platforms to fetch for. An image
# whose images/<name>/platforms leaves a platform out is skipped there (scripts/lock.py decides).
# Sizes (measured 2026-12-05): amd64 ~0.6 GB; arm64 adds ~3 GB, mostly the CUDA libraries PyPI's
# aarch64 torch 2.13.0 links against (PyTorch's CPU-only aarch64 build is not on PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64}
mkdir -p wheelhouse
locks=()
if [ $# -gt 0 ]; then for n in "$@"; do locks+=("images/$n/requirements.lock"); done
else locks=(images/*/requirements.lock); fi
reqs=$(mktemp /tmp/modelport-wheelhouse.XXXXXX)
err=$(mktemp /tmp/modelport-wheelhouse-err.XXXXXX)
trap 'rm -f "$reqs" "$err"' EXIT
for platform in $PLATFORMS; do
  case $platform in
    linux/amd64) machine=x86_64 ;;
    linux/arm64) machine=aarch64 ;;
    *) echo "wheelhouse: unknown platform '$platform' (known: linux/amd64 linux/arm64)" >&2; exit 2 ;;
  esac
  # glibc of Debian bookworm (the images' base) is 2.36: accept every manylinux tag up to it.
  tags=$(for m in $(seq 17 36); do printf -- '--platform manylinux_2_%s_%s ' "$m" "$machine"; done)
  for lockfile in "${locks[@]}"; do
    # The lock's lines for this machine, markers decided (pip decides them for the host, not --platform).
    "$PY" scripts/lock.py --for-machine "$machine" "$lockfile" > "$reqs"
    if [ ! -s "$reqs" ]; then
      echo "wheelhouse: $lockfile: not built for $platform ($(dirname "$lockfile")/platforms)"
      continue
    fi
    echo "wheelhouse: $lockfile ($platform)"
    # pip keeps every wheel already in wheelhouse/ whose hash matches (a rerun resumes) and retries
    # each connection itself; a run that still fails (DNS gone for a minute: stop 21's failure) is
    # retried whole with backoff, then ends in one line naming the URL pip last tried.
    for attempt in 1 2 3 4; do
      # shellcheck disable=SC2086
      if "$PY" -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
          --only-binary=:all: --python-version 3.11 --implementation cp --retries 3 --timeout 60 \
          --platform any --platform "manylinux2014_$machine" $tags -d wheelhouse -r "$reqs" 2>"$err"; then
        break
      fi
      why=$(grep -E 'ERROR|Error|error' "$err" | tail -1 || true)
      url=$(grep -oE "https?://[^[:space:]'\")]+" "$err" | tail -1 || true)
      if [ "$attempt" = 4 ] || grep -q 'THESE PACKAGES DO NOT MATCH THE HASHES' "$err"; then
        echo "wheelhouse: $lockfile ($platform): ${url:-pip download} failed: ${why:-pip printed no error line}; check the" \
          "network or proxy (pip config), then rerun 'make wheelhouse' (wheels already fetched are kept)" >&2
        exit 1
      fi
      echo "wheelhouse: ${why:-pip download failed} (retry $attempt/3 in $((2 ** attempt)) s)" >&2
      sleep $((2 ** attempt))
    done
  done
done
du -sh wheelhouse | awk '{print "wheelhouse: " $1}'
