#!/usr/bin/env bash
# Installs the Debian packages the gateway needs: Mosquitto for `make run`, and for
# `make test` also Chromium (dashboard tests) and util-linux (chrt, setpriv, prlimit: a
# service started where the kernel refuses its scheduling policy). Root installs them
# with apt; anyone else gets one line saying what to install.
set -euo pipefail
want=(mosquitto)
[ "${1:-}" = "--test" ] && want+=(mosquitto-clients chromium fonts-liberation util-linux)

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "Missing Debian packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged broker as a system service where systemd runs; our own
# broker (or the test brokers) must not depend on it, so leave it as the admin set it.
