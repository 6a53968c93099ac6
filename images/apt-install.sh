#!/bin/sh
# Install Debian packages inside an image build from the debhouse only (no network):
#   apt-install.sh LOCK SPEC      (bind mounts: the debhouse at /debhouse)
# LOCK (images/<name>/apt.lock) pins the whole closure with sha256, for every architecture the
# image is built for (scripts/lock_apt.py): only the lines of this build's architecture
# (`dpkg --print-architecture`: arm64 under emulation on an amd64 machine) and `all` are used.
# SPEC (apt.in) names what to install. Every locked .deb is hash-checked, a local apt repository is
# built from exactly those files, and apt installs SPEC from it alone, taking from the closure only
# what the base lacks.
# Everything apt/dpkg leave behind that differs between two builds (logs, caches, *-old files) is
# removed, so the layer is reproducible.
set -eu
LOCK=$1
SPEC=$2
REPO=/tmp/modelport-apt
ARCH=$(dpkg --print-architecture)
mkdir -p "$REPO/lists/partial" "$REPO/archives/partial"
ln -s /debhouse "$REPO/debs"
: > "$REPO/Packages"
grep -q "^[^#][^ ]* [^ ]* $ARCH " "$LOCK" || { echo "apt-install: $LOCK has no $ARCH packages: re-lock with ARCHES including $ARCH ('make lock-apt')" >&2; exit 1; }
grep -v '^#' "$LOCK" | while read -r pkg ver arch sha size url; do
  [ "$arch" = "$ARCH" ] || [ "$arch" = all ] || continue
  file=$(basename "$url" | sed 's/%2[bB]/+/g; s/%7[eE]/~/g; s/%3[aA]/:/g')
  deb=/debhouse/$file
  [ -f "$deb" ] || { echo "apt-install: $file is not in the debhouse: run 'make debhouse'" >&2; exit 1; }
  echo "$sha  $deb" | sha256sum -c --quiet - || { echo "apt-install: $file does not match $LOCK" >&2; exit 1; }
  { dpkg-deb -f "$deb"; printf 'Filename: debs/%s\nSize: %s\nSHA256: %s\n\n' "$file" "$size" "$sha"; } >> "$REPO/Packages"
done
echo "deb [trusted=yes] file:$REPO ./" > "$REPO/sources.list"
APT="-q -o Dir::Etc::SourceList=$REPO/sources.list -o Dir::Etc::SourceParts=/dev/null \
 -o Dir::State::Lists=$REPO/lists -o Dir::Cache::Archives=$REPO/archives \
 -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root"
# shellcheck disable=SC2086
apt-get $APT update
# shellcheck disable=SC2046,SC2086
DEBIAN_FRONTEND=noninteractive apt-get $APT install -y --no-install-recommends \
  $(sed 's/#.*//' "$SPEC")
# dbus' postinst writes a random machine ID (/var/lib/dbus/machine-id, /etc/machine-id): the one
# file whose content differs between two builds. Every container of an image shares the baked-in ID
# anyway, so derive it from the lock: same packages, same ID; libdbus still finds a valid one.
for f in /etc/machine-id /var/lib/dbus/machine-id; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then sha256sum "$LOCK" | cut -c1-32 > "$f"; fi
done
rm -rf "$REPO" /var/log/dpkg.log /var/log/apt /var/log/alternatives.log /var/cache/debconf/*-old \
  /var/lib/dpkg/*-old /var/cache/ldconfig/aux-cache /var/cache/fontconfig /var/lib/apt/lists/* \
  /var/cache/apt/*.bin
