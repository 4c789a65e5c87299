#!/bin/sh
# Removes k3rs from this machine: stops everything (k3rs-killall.sh), removes its units, the binary and
# its links, the scripts, and all of k3rs's state (/etc/k3rs, /var/lib/k3rs, /var/lib/kubelet).
set -u
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"

BIN_DIR=@BIN_DIR@
SYSTEMD_DIR=@SYSTEMD_DIR@
DATA_DIR=${K3RS_DATA_DIR:-/var/lib/k3rs}

"$BIN_DIR/k3rs-killall.sh" || true
for unit in k3rs k3rs-agent k3rs-flannel k3rs-kubelet k3rs-scheduler k3rs-controller-manager k3rs-apiserver k3rs-kine; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable "$unit" 2>/dev/null || true
    fi
    rm -f "$SYSTEMD_DIR/$unit.service" "$SYSTEMD_DIR/$unit.service.env"
done
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
for cmd in kubectl ctr crictl; do
    if [ -L "$BIN_DIR/$cmd" ] && [ "$(readlink "$BIN_DIR/$cmd")" = k3rs ]; then
        rm -f "$BIN_DIR/$cmd"
    fi
done
rm -rf /etc/k3rs "$DATA_DIR" /var/lib/kubelet
rm -f "$BIN_DIR/k3rs" "$BIN_DIR/k3rs-killall.sh" "$BIN_DIR/k3rs-uninstall.sh"
echo "k3rs removed"
