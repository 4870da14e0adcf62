#!/usr/bin/env bash
# Set up everything csud needs on a Debian machine: Debian packages, then the virtualenv.
# Idempotent: does nothing that is already done. Run as root for the apt step (CI and the
# developers' machines are root); a non-root user without the packages gets a clear message.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# ffmpeg: ffprobe checks recorded segments in the tests. python3-venv: the virtualenv.
# prometheus: promtool checks the metrics and alert rules. systemd: systemd-analyze verify.
# etcd-server: a real etcd for the cluster tests. chromium + chromium-driver: the wall's browser tests.
APT_PACKAGES=(ffmpeg python3-venv prometheus systemd gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-tools etcd-server chromium chromium-driver)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev,sim]'
echo "setup: ready ($("$VENV/bin/csud" --version))"
