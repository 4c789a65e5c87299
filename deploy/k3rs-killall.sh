#!/bin/sh
# Stops k3rs and everything it started: its services, containerd and the containers' shims and processes;
# unmounts what pods mounted; removes k3rs's network interfaces and nftables tables. Keeps all data
# (/var/lib/k3rs, /etc/k3rs): starting k3rs again brings the node back.
set -u
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"

BIN_DIR=@BIN_DIR@
DATA_DIR=${K3RS_DATA_DIR:-/var/lib/k3rs}
RUN_DIR=/run/k3rs

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for unit in k3rs k3rs-agent k3rs-flannel k3rs-kubelet k3rs-scheduler k3rs-controller-manager k3rs-apiserver k3rs-kine; do
        systemctl stop "$unit" 2>/dev/null || true
    done
fi

# Processes whose command line names k3rs's containerd socket or state (the shims and the containerd
# k3rs supervises), then k3rs itself.
pids_matching() {
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        case "$cmd" in
            *"$1"*) echo "$pid" ;;
        esac
    done
}
kill_tree() {
    for pid in "$@"; do
        kill -9 "$pid" 2>/dev/null || true
    done
}
# Containers: every process in the kubelet's cgroups (its --cgroup-root, /kubepods by default).
find /sys/fs/cgroup -path '*/kubepods*' -name cgroup.procs 2>/dev/null | while read -r procs; do
    # shellcheck disable=SC2046
    kill_tree $(cat "$procs")
done
# shellcheck disable=SC2046
kill_tree $(pids_matching "$RUN_DIR/containerd")
# shellcheck disable=SC2046
kill_tree $(pids_matching "$BIN_DIR/k3rs ")

# Mounts under k3rs's and the kubelet's directories, deepest first.
for dir in "$RUN_DIR" /var/lib/kubelet/pods "$DATA_DIR/agent/containerd" /run/netns/cni-; do
    awk '{print $5}' /proc/self/mountinfo | grep "^$dir" | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
done
rm -f /run/netns/cni-* 2>/dev/null || true

# Interfaces: the pod bridge, flannel's, and the pods' veths on the bridge.
if command -v ip >/dev/null 2>&1; then
    for dev in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip link delete "$dev" 2>/dev/null || true
    done
    for dev in cni0 flannel.1 flannel-v6.1; do
        ip link delete "$dev" 2>/dev/null || true
    done
fi
# nftables tables k3rs writes.
if command -v nft >/dev/null 2>&1; then
    nft list tables 2>/dev/null | awk '$3 ~ /^k3rs-/ {print $2, $3}' | while read -r family table; do
        nft delete table "$family" "$table" 2>/dev/null || true
    done
fi
rm -rf /var/lib/cni "$RUN_DIR"
echo "k3rs stopped; data kept in $DATA_DIR"
