# Shared by the setup scripts (sourced): install Debian packages on the host when missing.
#   ensure_debs TAG PACKAGE...   apt-get install the packages (as root, or through sudo); no-op when none given
# Host setup only: images never reach the network (their Debian packages come from the debhouse).
ensure_debs() {
  local tag=$1; shift
  [ $# -gt 0 ] || return 0
  command -v apt-get >/dev/null || { echo "$tag: missing $*, and apt-get is not available: install them" >&2; exit 1; }
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "$tag: missing $*: run as root or install sudo" >&2; exit 1; }
    sudo=sudo
  fi
  echo "$tag: apt-get install $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
