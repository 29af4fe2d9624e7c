#!/usr/bin/env bash
# Installs v2sp as two systemd services. Run as root, either from a release (one line):
#
#   curl -fsSL https://github.com/OWNER/REPO/releases/latest/download/install.sh | sudo bash
#   sudo ./install.sh --from https://github.com/OWNER/REPO/releases/download/v1.2.3
#       downloads SHA256SUMS and this machine's tarball from that release (http(s):// or
#       file://), checks the tarball against SHA256SUMS, unpacks it and installs from it
#
# or from a source checkout or an unpacked release tarball:
#
#   cargo build --release -p v2sp-control -p v2sp-dataplane
#   sudo deploy/install.sh                 # binaries from ./target/release (or, in an unpacked
#                                          # release tarball, the ones next to deploy/)
#   sudo deploy/install.sh /path/to/dir    # binaries v2sp and v2sp-dataplane from that dir
#   sudo deploy/install.sh --uninstall     # remove units and binaries, keep /etc/v2sp
#   DESTDIR=/tmp/pkg deploy/install.sh     # stage the files under /tmp/pkg (packaging): no
#                                          # user, chown, sysctl -p or systemctl
#
# What it does (idempotent; re-running it is how you upgrade):
#   /usr/local/bin/{v2sp,v2sp-dataplane}      binaries (replaced atomically)
#   system user and group `v2sp`              both services run as it
#   /etc/v2sp/config.json                     from deploy/config.example.json if missing (0600)
#   /etc/v2sp/v2sp.env                        from deploy/v2sp.env if missing (0600)
#   /etc/systemd/system/v2sp{,-dataplane}.service
#   /etc/sysctl.d/99-v2sp.conf                from tuning/ (skip with --no-sysctl)
#   /etc/modules-load.d/v2sp-bbr.conf         loads tcp_bbr at boot (BBR in the sysctl file)
#   systemctl daemon-reload; enable both; start them unless the config is the fresh example.
#
# On upgrade the control plane is restarted (no connection is dropped by that) and the data
# plane is reloaded (`v2sp upgrade`: the new binary takes over the listening sockets, the old
# process drains its open connections; none is dropped). --restart-dataplane restarts it
# instead (drops every open connection).
set -Eeuo pipefail

DESTDIR=${DESTDIR:-}
PREFIX_BIN=$DESTDIR/usr/local/bin
ETC=$DESTDIR/etc/v2sp
UNIT_DIR=$DESTDIR/etc/systemd/system
SYSCTL_FILE=$DESTDIR/etc/sysctl.d/99-v2sp.conf
MODULES_FILE=$DESTDIR/etc/modules-load.d/v2sp-bbr.conf
DOC_DIR=$DESTDIR/usr/local/share/doc/v2sp
# A copy of this script, run by `v2sp uninstall`.
SHARE_DIR=$DESTDIR/usr/local/share/v2sp
SVC_USER=v2sp
SHM_DIR=/dev/shm/v2sp

# Filled in by scripts/release.sh in the copy of this script published with a release: where
# `--from` downloads from when the script runs outside a checkout (piped into bash).
DEFAULT_RELEASE_URL=

here=$(cd "$(dirname "${BASH_SOURCE[0]:-.}")" && pwd)
repo=$(dirname "$here")

usage() {
    cat <<EOF
usage: $0 [BIN_DIR] [--no-sysctl] [--no-start] [--restart-dataplane]
       $0 --from URL [--no-sysctl] [--no-start] [--restart-dataplane]
       $0 --uninstall

  BIN_DIR              directory holding v2sp and v2sp-dataplane (default: next to deploy/ in
                       a release tarball, else $repo/target/release)
  --from URL           install the release at URL (the directory holding SHA256SUMS and the
                       tarballs; http(s):// or file://)${DEFAULT_RELEASE_URL:+; default $DEFAULT_RELEASE_URL}
  --no-sysctl          do not install or apply tuning/99-v2sp.conf
  --no-start           install and enable, but do not start or restart anything
  --restart-dataplane  on upgrade, restart v2sp-dataplane instead of reloading it (drops open
                       connections; the reload hands them over without dropping any)
  --uninstall          stop and disable both units, remove units, binaries, sysctl and doc
                       files; keep /etc/v2sp (config, certificates) and /var/lib/v2sp (journal)
EOF
}

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
trap 'printf "install: error: command failed at line %s (exit %s)\n" "$LINENO" "$?" >&2' ERR

if [ -x "$repo/v2sp" ] && [ -x "$repo/v2sp-dataplane" ]; then
    bin_dir=$repo # an unpacked release tarball
else
    bin_dir=$repo/target/release
fi
mode=install
sysctl=1
start=1
restart_dp=0
from=
passthrough=()
while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) mode=uninstall ;;
        --no-sysctl) sysctl=0; passthrough+=("$1") ;;
        --no-start) start=0; passthrough+=("$1") ;;
        --restart-dataplane) restart_dp=1; passthrough+=("$1") ;;
        --from)
            [ $# -ge 2 ] || die "--from needs a URL"
            from=$2
            shift
            ;;
        --from=*) from=${1#--from=} ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) bin_dir=$1 ;;
    esac
    shift
done

# Outside a checkout (piped into bash from a release) install from the release by default.
if [ "$mode" = install ] && [ -z "$from" ] && [ ! -f "$here/v2sp.service" ]; then
    [ -n "$DEFAULT_RELEASE_URL" ] || die "no checkout around $here: give --from URL of a release"
    from=$DEFAULT_RELEASE_URL
fi

# --- release mode: download, verify, unpack, run the install.sh of that release --------------
if [ "$mode" = install ] && [ -n "$from" ]; then
    from=${from%/}
    fetch() { # URL DEST
        if command -v curl >/dev/null 2>&1; then
            curl -fsSL --retry 3 -o "$2" "$1"
        elif command -v wget >/dev/null 2>&1 && [ "${1#file://}" = "$1" ]; then
            wget -q -O "$2" "$1"
        elif [ "${1#file://}" != "$1" ]; then
            cp "${1#file://}" "$2"
        else
            die "neither curl nor wget is installed"
        fi
    }
    case $(uname -m) in
        x86_64 | amd64) cpu=x86_64 ;;
        aarch64 | arm64) cpu=aarch64 ;;
        *) cpu=$(uname -m) ;;
    esac
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    fetch "$from/SHA256SUMS" "$tmp/SHA256SUMS" || die "cannot download $from/SHA256SUMS"
    tarball=$(awk '{print $2}' "$tmp/SHA256SUMS" | sed 's/^\*//' |
        grep -E "^v2sp-v[^/]*-${cpu}-[^/]*linux[^/]*\.tar\.gz$" | head -1 || true)
    [ -n "$tarball" ] || die "$from has no tarball for $cpu Linux (see $from/SHA256SUMS)"
    log "downloading $from/$tarball"
    fetch "$from/$tarball" "$tmp/$tarball" || die "cannot download $from/$tarball"
    (cd "$tmp" && awk -v f="$tarball" '$2 == f || $2 == "*" f' SHA256SUMS | sha256sum -c --status -) ||
        die "$tarball does not match its SHA256SUMS line: not installing"
    log "checksum of $tarball verified"
    tar -xzf "$tmp/$tarball" -C "$tmp"
    name=${tarball%.tar.gz}
    [ -x "$tmp/$name/deploy/install.sh" ] || die "$tarball has no deploy/install.sh"
    bash "$tmp/$name/deploy/install.sh" "$tmp/$name" "${passthrough[@]}"
    exit $?
fi

# Staging (DESTDIR) touches nothing of the running system and needs no root.
live=1
[ -z "$DESTDIR" ] || live=0
[ "$live" = 0 ] || [ "$(id -u)" = 0 ] || die "run as root (sudo $0)"

# systemctl is only usable when systemd is PID 1 (not in most containers or chroots): then
# files are installed and the commands to run are printed instead.
if [ "$live" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    have_systemd=1
else
    have_systemd=0
    log "systemd is not running here: installing files only"
fi
sctl() { if [ "$have_systemd" = 1 ]; then systemctl "$@"; else log "skipped: systemctl $*"; fi; }

if [ "$mode" = uninstall ]; then
    for u in v2sp-dataplane v2sp; do
        if [ "$have_systemd" = 1 ]; then
            systemctl disable --now "$u.service" 2>/dev/null || true
        fi
        rm -f "$UNIT_DIR/$u.service"
        rm -rf "$UNIT_DIR/$u.service.d"
    done
    sctl daemon-reload
    rm -f "$PREFIX_BIN/v2sp" "$PREFIX_BIN/v2sp-dataplane" "$SYSCTL_FILE" "$MODULES_FILE"
    rm -rf "$DOC_DIR" "$SHARE_DIR"
    # Both services are stopped, so their segments are garbage now.
    [ "$have_systemd" = 0 ] || rm -rf "$SHM_DIR"
    log "removed units, binaries, $SYSCTL_FILE (values stay in effect until reboot)"
    log "kept $ETC (config, certificates), /var/lib/v2sp (journal: traffic not yet pushed)"
    log "and the user '$SVC_USER'; remove them by hand if you want them gone"
    exit 0
fi

# --- preflight: everything is checked before anything is changed -----------------------------
for b in v2sp v2sp-dataplane; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found; build with
    cargo build --release -p v2sp-control -p v2sp-dataplane
or give the directory holding both binaries as an argument"
done
for f in "$here/v2sp.service" "$here/v2sp-dataplane.service" "$here/config.example.json" \
    "$here/v2sp.env" "$repo/tuning/99-v2sp.conf"; do
    [ -f "$f" ] || die "$f missing (run from a complete checkout)"
done

upgrade=0
[ -e "$PREFIX_BIN/v2sp" ] && upgrade=1

# --- user -----------------------------------------------------------------------------------
if [ "$live" = 1 ] && ! getent passwd "$SVC_USER" >/dev/null; then
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    useradd --system --user-group --home-dir /var/lib/v2sp --no-create-home \
        --shell "$nologin" --comment "v2sp node agent" "$SVC_USER"
    log "created system user $SVC_USER"
fi

# --- binaries (copy next to the target, then rename: a running binary is never overwritten) --
dp_changed=0
install -d -m 0755 "$PREFIX_BIN"
for b in v2sp v2sp-dataplane; do
    if [ "$b" = v2sp-dataplane ] && ! cmp -s "$bin_dir/$b" "$PREFIX_BIN/$b"; then
        dp_changed=1
    fi
    install -m 0755 "$bin_dir/$b" "$PREFIX_BIN/.$b.new"
    mv -f "$PREFIX_BIN/.$b.new" "$PREFIX_BIN/$b"
done
log "installed $PREFIX_BIN/v2sp and $PREFIX_BIN/v2sp-dataplane"

# --- /etc/v2sp ------------------------------------------------------------------------------
fresh_config=0
install -d -m 0700 "$ETC"
if [ ! -e "$ETC/config.json" ]; then
    install -m 0600 "$here/config.example.json" "$ETC/config.json"
    fresh_config=1
    log "created $ETC/config.json from the example: set ApiHost, ApiKey and NodeID"
fi
if [ ! -e "$ETC/v2sp.env" ]; then
    install -m 0600 "$here/v2sp.env" "$ETC/v2sp.env"
fi
if [ "$live" = 1 ]; then
    # The services run as $SVC_USER and must read the config (0600) and write certificates
    # here. A config left by Go v2sp (root-owned) is handed over too.
    chown -R "$SVC_USER:$SVC_USER" "$ETC"
    # Segments left by a run as root (or as another user) would be unreadable to the services.
    if [ -d "$SHM_DIR" ]; then
        chown -R "$SVC_USER:$SVC_USER" "$SHM_DIR"
    fi
fi

# --- units, docs ----------------------------------------------------------------------------
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$here/v2sp.service" "$UNIT_DIR/v2sp.service"
install -m 0644 "$here/v2sp-dataplane.service" "$UNIT_DIR/v2sp-dataplane.service"
install -d -m 0755 "$DOC_DIR"
for f in "$here/README.md" "$here/config.example.json" "$repo/tuning/README.md"; do
    [ -f "$f" ] || continue
    case $f in */tuning/README.md) dst=$DOC_DIR/tuning.md ;; *) dst=$DOC_DIR/$(basename "$f") ;; esac
    install -m 0644 "$f" "$dst"
done
install -d -m 0755 "$SHARE_DIR"
install -m 0755 "$here/install.sh" "$SHARE_DIR/.install.sh.new"
mv -f "$SHARE_DIR/.install.sh.new" "$SHARE_DIR/install.sh"
log "installed units in $UNIT_DIR"

# --- sysctl ---------------------------------------------------------------------------------
if [ "$sysctl" = 1 ]; then
    install -d -m 0755 "$(dirname "$SYSCTL_FILE")" "$(dirname "$MODULES_FILE")"
    install -m 0644 "$repo/tuning/99-v2sp.conf" "$SYSCTL_FILE"
    echo tcp_bbr >"$MODULES_FILE"
fi
if [ "$sysctl" = 1 ] && [ "$live" = 1 ]; then
    modprobe tcp_bbr 2>/dev/null || log "warning: could not load tcp_bbr; BBR stays off"
    # A read-only /proc/sys (container) or a missing module fails single lines: warn, go on.
    if ! sysctl -q -p "$SYSCTL_FILE"; then
        log "warning: some settings of $SYSCTL_FILE were not applied (see above)"
    fi
    log "applied $SYSCTL_FILE"
fi

# --- systemd --------------------------------------------------------------------------------
sctl daemon-reload
sctl enable v2sp.service v2sp-dataplane.service
if [ "$start" = 0 ]; then
    log "not starting (--no-start): systemctl start v2sp v2sp-dataplane"
elif [ "$fresh_config" = 1 ]; then
    log "not starting: edit $ETC/config.json first, then: systemctl start v2sp v2sp-dataplane"
elif [ "$have_systemd" = 1 ]; then
    if [ "$upgrade" = 1 ] && systemctl is-active --quiet v2sp.service; then
        systemctl restart v2sp.service
        log "restarted v2sp.service (control plane)"
    fi
    if [ "$upgrade" = 1 ] && [ "$dp_changed" = 1 ] && systemctl is-active --quiet v2sp-dataplane.service; then
        if [ "$restart_dp" = 1 ]; then
            systemctl restart v2sp-dataplane.service
            log "restarted v2sp-dataplane.service"
        elif systemctl reload v2sp-dataplane.service; then
            log "reloaded v2sp-dataplane.service: the new binary serves, the old one drains"
        else
            log "the new data plane did not take over; the previous binary goes on serving"
            log "(journalctl -u v2sp-dataplane; retry: systemctl reload v2sp-dataplane)"
        fi
    fi
    systemctl start v2sp.service v2sp-dataplane.service
    log "running: systemctl status v2sp v2sp-dataplane; journalctl -u v2sp -u v2sp-dataplane -f"
else
    log "start them where systemd runs: systemctl start v2sp v2sp-dataplane"
fi
