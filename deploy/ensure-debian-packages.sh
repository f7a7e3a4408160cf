#!/usr/bin/env bash
# Installs the named Debian packages when they are missing (the quick start runs on a fresh machine).
# Uses sudo when not root. Does nothing for packages already installed. Recommends are skipped
# (rtpengine-daemon would otherwise pull in its kernel module build and recording daemon).
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
