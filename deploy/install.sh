#!/bin/sh
# k3rs installer: installs a k3rs binary that is already on this machine (no download), the kubectl/ctr/
# crictl links, k3rs-killall.sh and k3rs-uninstall.sh, and a systemd unit for a server or (when K3RS_URL
# is set) an agent, then enables and starts it.
#
#   INSTALL_K3RS_SOURCE       the k3rs binary to install (default: ./k3rs beside this script, then k3rs on PATH)
#   INSTALL_K3RS_BIN_DIR      where to put it and the scripts (default /usr/local/bin)
#   INSTALL_K3RS_SYSTEMD_DIR  where to write the unit (default /etc/systemd/system)
#   INSTALL_K3RS_EXEC         the command and flags: "server …" or "agent …" (default by K3RS_URL)
#   INSTALL_K3RS_SKIP_ENABLE  true: do not enable (nor start) the unit
#   INSTALL_K3RS_SKIP_START   true: do not start the unit
#   INSTALL_K3RS_SYMLINK      skip: no kubectl/ctr/crictl links; force: replace existing commands
#   K3RS_URL, K3RS_TOKEN, K3RS_TOKEN_FILE, K3RS_*   kept in the unit's environment file
# Arguments after the script's name are appended to INSTALL_K3RS_EXEC, as K3s's installer does.
set -eu

info() { echo "[INFO]  $*"; }
fatal() { echo "[ERROR] $*" >&2; exit 1; }

BIN_DIR=${INSTALL_K3RS_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR=${INSTALL_K3RS_SYSTEMD_DIR:-/etc/systemd/system}
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)

# The binary.
SOURCE=${INSTALL_K3RS_SOURCE:-}
if [ -z "$SOURCE" ]; then
    if [ -x "$SCRIPT_DIR/k3rs" ]; then
        SOURCE="$SCRIPT_DIR/k3rs"
    elif command -v k3rs >/dev/null 2>&1; then
        SOURCE=$(command -v k3rs)
    else
        fatal "no k3rs binary: set INSTALL_K3RS_SOURCE or put k3rs beside this script"
    fi
fi
[ -x "$SOURCE" ] || fatal "$SOURCE is not an executable file"

# Server or agent.
EXEC=${INSTALL_K3RS_EXEC:-}
case "$EXEC" in
    server* | agent*) ;;
    *)
        if [ -n "${K3RS_URL:-}" ]; then
            EXEC="agent${EXEC:+ $EXEC}"
        else
            EXEC="server${EXEC:+ $EXEC}"
        fi
        ;;
esac
if [ "$#" -gt 0 ]; then
    for arg in "$@"; do
        EXEC="$EXEC '$(printf '%s' "$arg" | sed "s/'/'\\\\''/g")'"
    done
fi
case "$EXEC" in
    agent*)
        NAME=k3rs-agent
        [ -n "${K3RS_URL:-}" ] || fatal "an agent needs K3RS_URL (the server, https://host:6443)"
        [ -n "${K3RS_TOKEN:-}${K3RS_TOKEN_FILE:-}" ] || fatal "an agent needs K3RS_TOKEN or K3RS_TOKEN_FILE"
        ;;
    *) NAME=k3rs ;;
esac

mkdir -p "$BIN_DIR" "$SYSTEMD_DIR"
if [ "$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")" != "$BIN_DIR/k3rs" ]; then
    info "installing $SOURCE to $BIN_DIR/k3rs"
    cp "$SOURCE" "$BIN_DIR/k3rs.tmp"
    chmod 755 "$BIN_DIR/k3rs.tmp"
    mv -f "$BIN_DIR/k3rs.tmp" "$BIN_DIR/k3rs"
fi

for cmd in kubectl ctr crictl; do
    target="$BIN_DIR/$cmd"
    if [ "${INSTALL_K3RS_SYMLINK:-}" = skip ]; then
        continue
    fi
    if [ -e "$target" ] || [ -L "$target" ]; then
        if [ "${INSTALL_K3RS_SYMLINK:-}" != force ]; then
            info "skipping $target: it exists"
            continue
        fi
    elif [ "${INSTALL_K3RS_SYMLINK:-}" != force ] && command -v "$cmd" >/dev/null 2>&1; then
        info "skipping the $cmd link: $(command -v "$cmd") is installed"
        continue
    fi
    info "linking $target to k3rs"
    ln -sf k3rs "$target"
done

for script in k3rs-killall.sh k3rs-uninstall.sh; do
    [ -f "$SCRIPT_DIR/$script" ] || fatal "$SCRIPT_DIR/$script is missing"
    info "installing $BIN_DIR/$script"
    sed "s#@BIN_DIR@#$BIN_DIR#g; s#@SYSTEMD_DIR@#$SYSTEMD_DIR#g" "$SCRIPT_DIR/$script" >"$BIN_DIR/$script"
    chmod 755 "$BIN_DIR/$script"
done

# The environment file: every K3RS_* variable of this shell (secrets only readable by root).
ENV_FILE="$SYSTEMD_DIR/$NAME.service.env"
info "writing $ENV_FILE"
umask 077
env | grep '^K3RS_' | grep -v '^K3RS_DATA_DIR=$' >"$ENV_FILE" || true
umask 022

UNIT="$SYSTEMD_DIR/$NAME.service"
TEMPLATE="$SCRIPT_DIR/systemd/$NAME.service"
[ -f "$TEMPLATE" ] || fatal "$TEMPLATE is missing"
info "writing $UNIT (ExecStart: k3rs $EXEC)"
sed "s#^ExecStart=.*#ExecStart=$BIN_DIR/k3rs $EXEC#; s#/usr/local/bin/#$BIN_DIR/#g" "$TEMPLATE" >"$UNIT"

if [ "${INSTALL_K3RS_SKIP_ENABLE:-}" = true ]; then
    info "not enabling $NAME (INSTALL_K3RS_SKIP_ENABLE)"
    exit 0
fi
if ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
    info "systemd is not running here: start it with '$BIN_DIR/k3rs $EXEC'"
    exit 0
fi
systemctl daemon-reload
systemctl enable "$NAME"
if [ "${INSTALL_K3RS_SKIP_START:-}" = true ]; then
    info "not starting $NAME (INSTALL_K3RS_SKIP_START)"
    exit 0
fi
info "starting $NAME"
systemctl restart "$NAME"
