#!/usr/bin/env bash
# Debian packages the real-server tests use. Each package's own service is stopped: the tests start
# their own servers on free loopback ports and stop them by PID.
set -euo pipefail
PACKAGES=(prometheus postgresql chromium chromium-driver fonts-dejavu-core git)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if command -v systemctl >/dev/null 2>&1; then
  for svc in prometheus postgresql; do systemctl stop "$svc" >/dev/null 2>&1 || true; done
fi
for svc in prometheus postgresql; do service "$svc" stop >/dev/null 2>&1 || true; done
