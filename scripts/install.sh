#!/usr/bin/env bash
# Install csud as a systemd service on a Debian server (`make install-service`). Idempotent:
# run it again after `git pull` to upgrade (the service is restarted only if it was running).
#
#   /opt/csud                  virtualenv with this checkout installed (pip; PIP_INDEX_URL is honoured)
#   /usr/local/bin/csud        symlink to /opt/csud/bin/csud (the unit's ExecStart)
#   csud:csud                  system user and group, no login, home /var/lib/csud
#   /etc/csud/csud.toml        from config/csud.example.toml if absent (never overwritten), 0640 root:csud
#   /var/lib/csud              the store, 0750 csud:csud, made by `csud init` (as csud)
#   /etc/systemd/system/csud.service, then `systemctl daemon-reload`
#
# It does not enable or start the service: edit the config, `csud check-config`, then
# `systemctl enable --now csud` (docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/opt/csud}
PYTHON=${PYTHON:-python3}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
CONF_DIR=/etc/csud
STATE_DIR=/var/lib/csud

if [ "$(id -u)" -ne 0 ]; then
  echo "install-service: must run as root (it creates the csud user, /etc/csud, /var/lib/csud and the unit): sudo make install-service" >&2
  exit 1
fi

if ! getent group csud >/dev/null; then
  groupadd --system csud
fi
if ! getent passwd csud >/dev/null; then
  useradd --system --gid csud --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
    --comment "csud recording daemon" csud
  echo "install-service: created system user csud"
fi

if [ ! -x "$PREFIX/bin/python" ]; then
  "$PYTHON" -m venv "$PREFIX"
fi
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check --upgrade .
ln -sfn "$PREFIX/bin/csud" /usr/local/bin/csud

install -d -m 0750 -o root -g csud "$CONF_DIR"
if [ ! -e "$CONF_DIR/csud.toml" ]; then
  install -m 0640 -o root -g csud config/csud.example.toml "$CONF_DIR/csud.toml"
  echo "install-service: wrote $CONF_DIR/csud.toml from config/csud.example.toml: edit it, then csud check-config"
fi
install -d -m 0750 -o csud -g csud "$STATE_DIR"
# The store: csud init creates it (identity marker and index, root 0750), or finds it made
# already and changes nothing. csud run never creates one: an unmounted disk is refused.
# Mount the store's disk on storage.root before running this.
runuser -u csud -- /usr/local/bin/csud init --config "$CONF_DIR/csud.toml"
install -d -m 0755 /usr/local/share/doc/csud
install -m 0644 docs/operations.md /usr/local/share/doc/csud/operations.md

install -m 0644 systemd/csud.service "$UNIT_DIR/csud.service"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if systemctl is-active --quiet csud; then
    systemctl restart csud
    echo "install-service: csud restarted with $(/usr/local/bin/csud --version)"
  fi
else
  echo "install-service: systemd is not running here; run systemctl daemon-reload on the target"
fi
echo "install-service: $(/usr/local/bin/csud --version) installed; next: systemctl enable --now csud"
