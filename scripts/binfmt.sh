#!/usr/bin/env bash
# Let this machine run binaries of another architecture (linux/arm64 images on an amd64 host, or the
# reverse) through Debian's qemu-user-static and binfmt_misc: how BuildKit builds and Docker runs
# a foreign platform's image, and how debootstrap runs the arm64 base's second stage.
#   scripts/binfmt.sh install [ARCH ...]   (root) apt-get install qemu-user-static if missing, mount
#                                          binfmt_misc, register each ARCH (default: arm64 on amd64,
#                                          amd64 on arm64); idempotent: a registered one is left alone
#   scripts/binfmt.sh check ARCH           exit 0 if ARCH binaries run here (native or registered),
#                                          else one line saying what to run
# Registration uses flag F (from /usr/lib/binfmt.d/qemu-*.conf): the interpreter is opened at
# registration, so it also works inside containers and chroots that do not have it. Emulation is
# slow (measured here: the arm64 base 184-200 s; pip installing the arm64 onnx image ~380 s).
#
# qemu >= 8 is required: with bookworm's qemu-user-static 7.2, `import torch` (aarch64 2.13.0) and
# `import onnxruntime` die with "qemu: uncaught target signal 11" and hang (measured 2026-12-05: 11 min,
# 7 s CPU) while reading the CPU's ID registers; qemu 10.0.2 from bookworm-backports imports both
# (torch in 16 s) and converts. So `install` takes qemu from bookworm-backports when the installed one
# is older, and re-registers the interpreter (flag F keeps the old binary open otherwise).
set -euo pipefail
BINFMT=/proc/sys/fs/binfmt_misc
QEMU_MIN_MAJOR=8
HOST_ARCH=$(dpkg --print-architecture)

qemu_name() {  # Debian architecture -> qemu's name
  case $1 in
    arm64) echo aarch64 ;;
    amd64) echo x86_64 ;;
    *) echo "binfmt: unsupported architecture '$1' (known: amd64 arm64)" >&2; return 1 ;;
  esac
}

# The major version of the registered interpreter's package (0 when none is installed).
qemu_major() {
  v=$(dpkg-query -W -f '${Version}' qemu-user 2>/dev/null || true)
  [ -n "$v" ] || v=$(dpkg-query -W -f '${Version}' qemu-user-static 2>/dev/null || true)
  v=${v#*:}; echo "${v%%.*}" | grep -E '^[0-9]+$' || echo 0
}

registered() {
  [ "$1" = "$HOST_ARCH" ] || { grep -qx enabled "$BINFMT/qemu-$(qemu_name "$1")" 2>/dev/null \
    && [ "$(qemu_major)" -ge "$QEMU_MIN_MAJOR" ]; }
}

case "${1:-}" in
  check)
    [ $# -eq 2 ] || { echo "usage: $0 check ARCH" >&2; exit 2; }
    qemu_name "$2" >/dev/null
    if registered "$2"; then exit 0; fi
    echo "binfmt: $2 binaries cannot run on this $HOST_ARCH machine: run 'sudo scripts/binfmt.sh install $2'" \
      "(qemu-user-static + binfmt_misc registration)" >&2
    exit 1
    ;;
  install)
    shift
    arches=("$@")
    if [ ${#arches[@]} -eq 0 ]; then
      if [ "$HOST_ARCH" = amd64 ]; then arches=(arm64); else arches=(amd64); fi
    fi
    todo=()
    for a in "${arches[@]}"; do qemu_name "$a" >/dev/null; registered "$a" || todo+=("$a"); done
    if [ ${#todo[@]} -eq 0 ]; then
      echo "binfmt: ${arches[*]} already registered"
      exit 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
      echo "binfmt: registering ${todo[*]} needs root (qemu-user-static, binfmt_misc): run 'sudo $0 install ${todo[*]}'" >&2
      exit 1
    fi
    if [ "$(qemu_major)" -lt "$QEMU_MIN_MAJOR" ]; then
      # bookworm has 7.2 (see above): bookworm-backports has 10.x. Another release: its own qemu.
      codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
      target=()
      if [ "$codename" = bookworm ]; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/modelport-backports.list
        target=(-t bookworm-backports)
      fi
      echo "binfmt: installing qemu-user-static >= $QEMU_MIN_MAJOR (apt${target:+ ${target[*]}})"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${target[@]}" qemu-user-static >/dev/null
      [ "$(qemu_major)" -ge "$QEMU_MIN_MAJOR" ] || { echo "binfmt: qemu $(qemu_major) installed; need >= $QEMU_MIN_MAJOR" >&2; exit 1; }
    fi
    if [ ! -e "$BINFMT/register" ]; then
      mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || {
        echo "binfmt: no binfmt_misc on this kernel/container (mount -t binfmt_misc failed): foreign-platform" \
          "images cannot be built or run here" >&2
        exit 1
      }
    fi
    for a in "${todo[@]}"; do
      q=$(qemu_name "$a")
      conf=/usr/lib/binfmt.d/qemu-$q.conf
      [ -f "$conf" ] || { echo "binfmt: $conf missing (qemu-user-static without binfmt.d files?)" >&2; exit 1; }
      # One line ':qemu-aarch64:M::magic:mask:interpreter:FLAGS'; the entry may exist but be disabled.
      # An old entry (another interpreter, or disabled) is dropped first: F pinned its binary.
      if [ -e "$BINFMT/qemu-$q" ]; then echo -1 > "$BINFMT/qemu-$q"; fi
      grep -v '^#' "$conf" > "$BINFMT/register"
      registered "$a" || { echo "binfmt: registering $a did not take (see $BINFMT/qemu-$q)" >&2; exit 1; }
      echo "binfmt: $a registered ($(sed -n 's/^interpreter //p' "$BINFMT/qemu-$q"))"
    done
    ;;
  *)
    echo "usage: $0 install [ARCH ...] | check ARCH" >&2
    exit 2
    ;;
esac
