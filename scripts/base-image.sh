#!/usr/bin/env bash
# Build the air-gapped base image: Debian bookworm minbase + python3 (3.11, like python:3.11-slim)
# from debootstrap, normalized (sorted tar, clamped mtimes, fixed config) so the same packages
# always give the same image ID.
#   scripts/base-image.sh [TAG]      default TAG modelport/base:bookworm
# Env: DEBIAN_MIRROR (default: the first deb URI configured on this host), SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-modelport/base:bookworm}
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}"
export SOURCE_DATE_EPOCH
if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
  [ -n "$DEBIAN_MIRROR" ] || DEBIAN_MIRROR=$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
fi
WORK=$(mktemp -d /tmp/modelport-base.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "base-image: debootstrap bookworm from $DEBIAN_MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$WORK/root" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -30 "$WORK/debootstrap.log" >&2
  exit 1
}
R="$WORK/root"
# Drop what differs between two debootstrap runs of the same packages.
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/var/log/* "$R"/tmp/* \
  "$R"/var/cache/ldconfig/aux-cache "$R"/var/lib/dbus/machine-id "$R"/root/.cache
find "$R" -name '__pycache__' -type d -prune -exec rm -rf {} +
: >"$R"/etc/machine-id
tar --sort=name --mtime="@${SOURCE_DATE_EPOCH}" --clamp-mtime --owner=0 --group=0 --numeric-owner \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$R" -cf "$WORK/rootfs.tar" .
python3 scripts/normalize_image.py --rootfs "$WORK/rootfs.tar" "$TAG"
