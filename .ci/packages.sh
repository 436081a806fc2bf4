# Sourced by the CI scripts: need_pkg COMMAND PACKAGE installs Debian's
# PACKAGE (apt, as root, as on our machines) when COMMAND is not found.
apt_updated=0
need_pkg() { # need_pkg COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] && return 0
  echo "installing $2 (for $1)"
  if [ "$(id -u)" != 0 ]; then
    echo "FATAL: $1 is missing and this is not root: install Debian's $2 package, then run this again" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
