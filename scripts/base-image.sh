#!/usr/bin/env bash
# Build the air-gapped base image: Debian bookworm minbase + python3 (3.11, like python:3.11-slim)
# from debootstrap, normalized (sorted tar, clamped mtimes, fixed config) so the same packages
# always give the same image ID.
#   scripts/base-image.sh [TAG [ARCH]]   default TAG modelport/base:bookworm, ARCH this host's (dpkg)
# ARCH arm64 on an amd64 host (`make base PLATFORM=linux/arm64`): debootstrap --arch=arm64, whose
# second stage runs the arm64 maintainer scripts in the chroot under qemu-user-static (binfmt_misc,
# scripts/binfmt.sh). Measured here (2 shared cores): 184-200 s for the arm64 base.
# Env: DEBIAN_MIRROR (default: the first deb URI configured on this host), SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-modelport/base:bookworm}
HOST_ARCH=$(dpkg --print-architecture)
ARCH=${2:-$HOST_ARCH}
if [ "$ARCH" != "$HOST_ARCH" ]; then
  scripts/binfmt.sh check "$ARCH" || exit 1
fi
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}"
export SOURCE_DATE_EPOCH
if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
  [ -n "$DEBIAN_MIRROR" ] || DEBIAN_MIRROR=$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
fi
WORK=$(mktemp -d /tmp/modelport-base.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Downloaded .debs are kept in build/debootstrap-cache/<arch> (checked by debootstrap against the
# Release file it verifies): a run that a network hiccup stopped resumes from what it had, and a
# failed attempt is retried from a fresh root with backoff. What still fails ends in one line naming
# debootstrap's own error (it names the URL) and the log, which is kept.
CACHE=$PWD/build/debootstrap-cache/$ARCH
mkdir -p "$CACHE"
LOG=$PWD/build/debootstrap-$ARCH.log
echo "base-image: debootstrap bookworm ($ARCH) from $DEBIAN_MIRROR"
for attempt in 1 2 3; do
  rm -rf "$WORK/root"
  if debootstrap --arch="$ARCH" --variant=minbase --cache-dir="$CACHE" \
      --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$WORK/root" "$DEBIAN_MIRROR" >"$LOG" 2>&1; then
    break
  fi
  why=$(grep -E '^(E|W): ' "$LOG" | tail -1 || true)
  if [ "$attempt" = 3 ]; then
    echo "base-image: debootstrap from $DEBIAN_MIRROR failed 3 times: ${why:-see $LOG}; check the network or" \
      "set DEBIAN_MIRROR, then rerun 'make base' (downloaded packages are kept; log: $LOG)" >&2
    exit 1
  fi
  echo "base-image: ${why:-debootstrap failed} (retry $attempt/2 in $((5 * attempt)) s)" >&2
  sleep $((5 * attempt))
done
R="$WORK/root"
# Drop what differs between two debootstrap runs of the same packages.
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/var/log/* "$R"/tmp/* \
  "$R"/var/cache/ldconfig/aux-cache "$R"/var/lib/dbus/machine-id "$R"/root/.cache
find "$R" -name '__pycache__' -type d -prune -exec rm -rf {} +
: >"$R"/etc/machine-id
tar --sort=name --mtime="@${SOURCE_DATE_EPOCH}" --clamp-mtime --owner=0 --group=0 --numeric-owner \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$R" -cf "$WORK/rootfs.tar" .
python3 scripts/normalize_image.py --rootfs "$WORK/rootfs.tar" "$TAG" --arch "$ARCH"
