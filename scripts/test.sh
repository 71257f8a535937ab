#!/usr/bin/env bash
# Runs the whole test suite: installs system packages the tests use (as root, via apt-get) and the test extras into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  for pkg in libtiff6 dcmtk openssl systemd curl orthanc orthanc-dicomweb chromium xfsprogs; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    # orthanc's postinst would start the system service; the tests start their own Orthanc.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
  fi
fi
scripts/bootstrap.sh --test
exec .venv/bin/python -m pytest "$@"
