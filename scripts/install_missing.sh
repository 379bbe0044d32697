# Sourced by scripts/dev.sh and scripts/sanitize.sh.
# install_missing TAG PACKAGE...: apt-installs the packages that are not installed yet (as
# root, or through sudo), so a second run on a provisioned machine touches nothing.
install_missing() {
  local tag=$1 missing=() p
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "$tag: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
