#!/usr/bin/env bash
# Builds the Debian package of v2sp from two built binaries (no cargo-deb, no debian/ dir):
#
#   scripts/build-deb.sh --version 1.2.3 --bin-dir target/release [--arch amd64] [--out dist]
#
# Package contents (paths are Debian's, not install.sh's /usr/local):
#   /usr/bin/v2sp, /usr/bin/v2sp-dataplane
#   /usr/lib/systemd/system/v2sp.service, v2sp-dataplane.service   (ExecStart rewritten to /usr/bin)
#   /etc/v2sp/config.json (0600), /etc/v2sp/v2sp.env (0600)    conffiles: never overwritten
#   /etc/sysctl.d/99-v2sp.conf, /etc/modules-load.d/v2sp-bbr.conf   conffiles
#   /usr/share/doc/v2sp/{README.md,config.example.json,tuning.md,copyright}
# Maintainer scripts: postinst creates the system user `v2sp`, hands /etc/v2sp to it, applies
# the sysctl file, enables both units (and, on upgrade, restarts the control plane only);
# prerm stops both units on removal; postrm --purge removes /etc/v2sp, /var/lib/v2sp (the
# accounting journal), /dev/shm/v2sp and the user. Where systemd is not running (containers,
# CI) every systemctl step is skipped.
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

version=
bin_dir=
arch=
out=$repo/dist
while [ $# -gt 0 ]; do
    case $1 in
        --version) version=${2#v}; shift ;;
        --bin-dir) bin_dir=$2; shift ;;
        --arch) arch=$2; shift ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "build-deb: error: $*" >&2; exit 1; }
[ -n "$version" ] || die "--version is required"
[ -n "$bin_dir" ] || die "--bin-dir is required"
# Debian versions may not contain '-' unless there is a revision; a pre-release v1.2.3-rc1
# becomes 1.2.3~rc1 (sorts before 1.2.3).
deb_version=${version/-/\~}
[ -n "$arch" ] || arch=$(dpkg --print-architecture)
for b in v2sp v2sp-dataplane; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b missing"
done
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" \
    "$root/etc/sysctl.d" "$root/etc/modules-load.d" "$root/usr/share/doc/v2sp"
install -d -m 0700 "$root/etc/v2sp"

install -m 0755 "$bin_dir/v2sp" "$bin_dir/v2sp-dataplane" "$root/usr/bin/"
for u in v2sp v2sp-dataplane; do
    sed -e 's|/usr/local/bin/|/usr/bin/|g' \
        -e 's|file:///usr/local/share/doc/v2sp/|file:///usr/share/doc/v2sp/|g' \
        "$repo/deploy/$u.service" >"$root/usr/lib/systemd/system/$u.service"
    chmod 0644 "$root/usr/lib/systemd/system/$u.service"
done
install -m 0600 "$repo/deploy/config.example.json" "$root/etc/v2sp/config.json"
install -m 0600 "$repo/deploy/v2sp.env" "$root/etc/v2sp/v2sp.env"
install -m 0644 "$repo/tuning/99-v2sp.conf" "$root/etc/sysctl.d/99-v2sp.conf"
echo tcp_bbr >"$root/etc/modules-load.d/v2sp-bbr.conf"
chmod 0644 "$root/etc/modules-load.d/v2sp-bbr.conf"
install -m 0644 "$repo/deploy/README.md" "$root/usr/share/doc/v2sp/README.md"
install -m 0644 "$repo/deploy/config.example.json" "$root/usr/share/doc/v2sp/config.example.json"
install -m 0644 "$repo/tuning/README.md" "$root/usr/share/doc/v2sp/tuning.md"
cat >"$root/usr/share/doc/v2sp/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: v2sp
License: MPL-2.0
EOF

cat >"$root/DEBIAN/conffiles" <<'EOF'
/etc/v2sp/config.json
/etc/v2sp/v2sp.env
/etc/sysctl.d/99-v2sp.conf
/etc/modules-load.d/v2sp-bbr.conf
EOF

installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: v2sp
Version: $deb_version
Architecture: $arch
Maintainer: v2sp developers <v2sp@example.invalid>
Installed-Size: $installed_kb
Depends: libc6, passwd
Section: net
Priority: optional
Homepage: https://example.invalid/v2sp
Description: node agent for Xboard/V2board-family proxy panels
 v2sp serves Shadowsocks, VMess, VLESS (REALITY), Trojan, AnyTLS and Hysteria 2
 nodes for a panel: it pulls node settings and users, enforces speed and device
 limits and reports traffic exactly once. Two systemd services: the control
 plane (v2sp.service) and the data plane (v2sp-dataplane.service).
EOF

cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
case "$1" in
configure)
    if ! getent passwd v2sp >/dev/null; then
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --user-group --home-dir /var/lib/v2sp --no-create-home \
            --shell "$nologin" --comment "v2sp node agent" v2sp
    fi
    # The services run as v2sp: they read the config (0600) and write ACME certificates here.
    chown -R v2sp:v2sp /etc/v2sp
    install -d -m 0700 -o v2sp -g v2sp /var/lib/v2sp
    if [ -d /dev/shm/v2sp ]; then chown -R v2sp:v2sp /dev/shm/v2sp; fi
    # V2SP_NO_SYSCTL=1 (tests, containers): install the file but apply nothing now.
    if [ "${V2SP_NO_SYSCTL:-0}" != 1 ]; then
        modprobe tcp_bbr 2>/dev/null || true
        sysctl -q -p /etc/sysctl.d/99-v2sp.conf 2>/dev/null ||
            echo "v2sp: some settings of /etc/sysctl.d/99-v2sp.conf were not applied" >&2
    fi
    if have_systemd; then
        systemctl daemon-reload
        systemctl enable v2sp.service v2sp-dataplane.service >/dev/null 2>&1 || true
        if [ -n "$2" ]; then
            # Upgrade: restarting the control plane drops no connection; reloading the data
            # plane hands its sockets to the new binary (`v2sp upgrade`) and drops none.
            if systemctl is-active --quiet v2sp.service; then systemctl restart v2sp.service; fi
            if systemctl is-active --quiet v2sp-dataplane.service; then
                systemctl reload v2sp-dataplane.service ||
                    echo "v2sp: the new data plane did not take over; the previous binary goes on serving (journalctl -u v2sp-dataplane)"
            fi
        else
            echo "v2sp: edit /etc/v2sp/config.json (ApiHost, ApiKey, NodeID), then: systemctl start v2sp v2sp-dataplane"
        fi
    fi
    ;;
esac
exit 0
EOF

cat >"$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now v2sp-dataplane.service v2sp.service >/dev/null 2>&1 || true
fi
exit 0
EOF

cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
    # Conffiles are removed by dpkg; this removes what the services wrote: certificates,
    # config backups, the accounting journal (traffic not yet acknowledged by the panel) and
    # the shared-memory segments, then the user.
    rm -rf /etc/v2sp /var/lib/v2sp /dev/shm/v2sp
    if getent passwd v2sp >/dev/null; then
        userdel v2sp 2>/dev/null || true
    fi
    if getent group v2sp >/dev/null; then
        groupdel v2sp 2>/dev/null || true
    fi
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb=$out/v2sp_${deb_version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
