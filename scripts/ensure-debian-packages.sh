#!/usr/bin/env bash
# Install the named Debian packages when they are missing. Never fails the build: callers fall back.
set -u
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
if command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}" >&2
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1 && exit 0
fi
echo "warning: could not install ${missing[*]}; hotswap falls back where it can" >&2
exit 0
